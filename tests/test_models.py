"""Every registered model: shapes, finite values, gradients; the registry's errors; the summary."""
from __future__ import annotations

import pytest
import torch

from digitlab.errors import ConfigError
from digitlab.models import check_model_args, count_parameters, create_model, list_models, model_defaults
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


# Every registered model's parameters at MNIST's shape, as counted before models took a shape: the defaults must
# build the same tensors, so existing checkpoints, presets and the shipped weights still load.
MNIST_PARAMETERS = {"alexnet": 56_826_570, "cnn": 36_830, "digitnet": 298_410, "gru": 61_962, "lenet5": 61_706,
                    "lstm": 82_186, "mlp": 267_410, "rnn": 21_514}
LETTERS = {"num_classes": 26, "in_chans": 3, "image_size": (32, 32)}  # a colour 32x32 alphabet


@pytest.mark.quick
@pytest.mark.parametrize("name", sorted(MNIST_PARAMETERS))
def test_default_shape_keeps_the_parameter_counts(name):
    explicit = create_model(name, num_classes=10, in_chans=1, image_size=(28, 28))
    assert count_parameters(create_model(name)) == count_parameters(explicit) == MNIST_PARAMETERS[name]


@pytest.mark.parametrize("name", [name if name == "alexnet" else pytest.param(name, marks=pytest.mark.quick)
                                  for name in list_models()])
def test_every_model_builds_for_another_shape(name):
    model = create_model(name, **LETTERS).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 26)
    wide = create_model(name, num_classes=5, in_chans=2, image_size=[20, 36]).eval()  # JSON's list, not square
    with torch.no_grad():
        assert wide(torch.randn(3, 2, 20, 36)).shape == (3, 5)


@pytest.mark.quick
def test_digitnet_whitening_reads_every_channel():
    model = create_model("digitnet", width=16, depth=1, whiten=True, **LETTERS)
    model.init_from_data(torch.randn(64, 3, 32, 32))
    assert model.first_conv.weight.shape == (16, 3, 3, 3) and model.first_conv.weight.abs().sum() > 0


@pytest.mark.quick
def test_shape_errors_are_config_errors():
    with pytest.raises(ConfigError, match="too small"):
        create_model("lenet5", image_size=(8, 8))
    with pytest.raises(ConfigError, match="in_chans must be a whole number"):
        create_model("cnn", in_chans=0)
    with pytest.raises(ConfigError, match="the dataset decides"):
        check_model_args("cnn", {"num_classes": 26})
    assert "num_classes" not in model_defaults("cnn")  # options, not the shape


@pytest.mark.quick
def test_a_shape_beyond_the_limits_is_refused_before_building():
    with pytest.raises(ConfigError, match="beyond digitlab's limits"):
        create_model("mlp", in_chans=3, image_size=(100_000, 100_000))
