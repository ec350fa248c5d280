"""Every registered model: shapes, finite values, gradients; the registry's errors; the summary."""
from __future__ import annotations

import pytest
import torch

from digitlab.errors import ConfigError
from digitlab.models import count_parameters, create_model, list_models, model_defaults
from digitlab.summary import layer_summary

EXPECTED_PARAMETERS = {  # from the layer sizes in each recipe, computed by hand
    "mlp": 784 * 300 + 300 + 2 * 300 + 300 * 100 + 100 + 2 * 100 + 100 * 10 + 10,
    "lenet5": (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10),
    "cnn": (10 * 25 + 10) + 20 + (20 * 10 * 25 + 20) + 40 + (500 * 60 + 60) + (60 * 20 + 20) + (20 * 10 + 10),
}


@pytest.mark.quick
def test_registry_has_every_family():
    assert {"mlp", "lenet5", "cnn", "alexnet", "rnn", "lstm", "gru", "digitnet"} <= set(list_models())


@pytest.mark.parametrize("name", [name if name == "alexnet" else pytest.param(name, marks=pytest.mark.quick)
                                  for name in list_models()])  # alexnet's 57M parameters take seconds
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    logits = model(x)
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.quick
@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_parameter_counts_match_the_recipes(name):
    assert count_parameters(create_model(name)) == EXPECTED_PARAMETERS[name]


def test_alexnet_feature_map_is_9216():
    shapes = {row["name"]: row["output_shape"] for row in layer_summary(create_model("alexnet"))}
    assert shapes["features.12"] == [1, 256, 6, 6]
    assert shapes["classifier.2"] == [1, 4096]


@pytest.mark.quick
def test_lenet5_is_sigmoid_avgpool_with_xavier_init():
    model = create_model("lenet5")
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("Sigmoid") == 4 and kinds.count("AvgPool2d") == 2 and "ReLU" not in kinds
    conv = model.features[0]
    bound = (6 / (1 * 25 + 6 * 25)) ** 0.5  # Xavier-uniform bound for fan_in 25, fan_out 150
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.8 * bound
    assert conv.bias.abs().sum() == 0
    relu = create_model("lenet5", activation="relu", pool="max")
    assert "MaxPool2d" in [type(m).__name__ for m in relu.modules()]


@pytest.mark.quick
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_options_and_row_order_matters(cell):
    model = create_model(cell, hidden_size=32, num_layers=2).eval()
    assert model.rnn.hidden_size == 32 and model.rnn.num_layers == 2
    x = torch.rand(2, 1, 28, 28)
    # rows are time steps: reversing the rows changes the output, transposing features does too
    assert not torch.allclose(model(x), model(x.flip(2)))


@pytest.mark.quick
def test_unknown_model_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model 'resnet9'; choose one of"):
        create_model("resnet9")
    with pytest.raises(ConfigError, match="has no option"):
        create_model("mlp", hidden_size=3)
    assert model_defaults("lstm") == {"hidden_size": 128, "num_layers": 1}


@pytest.mark.quick
def test_summary_reports_every_leaf_layer():
    rows = layer_summary(create_model("cnn"))
    assert rows[0]["output_shape"] == [1, 10, 26, 26]
    assert [r["output_shape"] for r in rows if r["type"] == "BatchNorm2d"] == [[1, 10, 13, 13], [1, 20, 5, 5]]
    assert rows[-1]["output_shape"] == [1, 10]
    assert sum(r["parameters"] for r in rows) == EXPECTED_PARAMETERS["cnn"]
