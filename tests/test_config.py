"""Presets carry their recipes exactly; config overrides are type-checked."""
from __future__ import annotations

import json

import pytest

from digitlab.config import make_config, parse_model_args
from digitlab.errors import ConfigError
from digitlab.optim import lr_at
from digitlab.presets import PRESETS, preset_config

pytestmark = pytest.mark.quick  # every test here is in the quick subset

FAITHFUL = {
    "lstm-64": dict(model="lstm", model_args={"hidden_size": 64, "num_layers": 1}, optimizer="adam", lr=0.01,
                    batch_size=64, epochs=1, normalization="unit", eval_every=100, dataset="mnist"),
    "lstm-2x128": dict(model="lstm", model_args={"hidden_size": 128, "num_layers": 2}, optimizer="adam", lr=1e-3,
                       batch_size=100, epochs=30, normalization="unit", dataset="mnist"),
    "cnn-bn": dict(model="cnn", optimizer="sgd", lr=0.01, momentum=0.0, batch_size=64, epochs=50,
                   normalization="unit", dataset="mnist"),
    "alexnet": dict(model="alexnet", optimizer="sgd", lr=0.01, momentum=0.0, batch_size=64, epochs=50,
                    normalization="unit", dataset="mnist"),
    "lenet5-fashion": dict(model="lenet5", model_args={"activation": "sigmoid", "pool": "avg"},
                           dataset="fashion-mnist", optimizer="sgd", lr=0.9, batch_size=256, epochs=10,
                           normalization="unit"),
    "mlp-bn": dict(model="mlp", optimizer="sgd", lr=0.01, momentum=0.5, schedule="step", step_epochs=5,
                   gamma=0.1, normalization="symmetric", batch_size=64, epochs=20, dataset="mnist"),
}


@pytest.mark.parametrize("name", sorted(FAITHFUL))
def test_faithful_preset_hyperparameters(name):
    cfg = make_config(preset_config(name))
    for key, value in FAITHFUL[name].items():
        assert getattr(cfg, key) == value, key
    assert cfg.schedule == FAITHFUL[name].get("schedule", "constant")
    assert cfg.label_smoothing == 0 and cfg.augment == "none" and cfg.weight_decay == 0


def test_every_preset_builds():
    for name in PRESETS:
        assert make_config(preset_config(name)).preset == name


def test_mlp_bn_lr_drops_tenfold_every_five_epochs():
    cfg = make_config(preset_config("mlp-bn"))
    spe = 938
    assert lr_at(0, cfg, spe) == pytest.approx(0.01)
    assert lr_at(5 * spe - 1, cfg, spe) == pytest.approx(0.01)
    assert lr_at(5 * spe, cfg, spe) == pytest.approx(0.001)
    assert lr_at(10 * spe, cfg, spe) == pytest.approx(0.0001)


def test_onecycle_rises_then_falls():
    cfg = make_config(schedule="onecycle", lr=1.0, epochs=1, warmup=0.25)
    lrs = [lr_at(s, cfg, 100) for s in range(100)]
    assert lrs[0] < 0.1 and max(lrs) == pytest.approx(1.0, abs=0.05) and lrs[-1] < 0.05
    assert lrs.index(max(lrs)) == 25


def test_schedule_can_end_before_the_last_epoch():
    cfg = make_config(schedule="onecycle", lr=1.0, epochs=1, schedule_epochs=0.5, warmup=0.2)
    lrs = [lr_at(s, cfg, 100) for s in range(100)]
    assert max(lrs) == pytest.approx(1.0, abs=0.05) and lrs.index(max(lrs)) == 10
    assert lrs[50] == 0.0 and lrs[99] == 0.0  # past the schedule's end: its final lr


def test_overrides_win_and_are_type_checked():
    cfg = make_config(preset_config("lstm-2x128"), epochs="2", lr=3e-3)
    assert cfg.epochs == 2 and cfg.lr == 3e-3 and cfg.model_args == {"hidden_size": 128, "num_layers": 2}
    with pytest.raises(ConfigError, match="epochs expects int"):
        make_config(epochs="two")
    with pytest.raises(ConfigError, match="lr must be positive"):
        make_config(lr=0)
    with pytest.raises(ConfigError, match="unknown config key"):
        make_config(learning_rate=0.1)
    with pytest.raises(ConfigError, match="optimizer 'lion' is not one of"):
        make_config(optimizer="lion")
    with pytest.raises(ConfigError, match="batch_size expects int"):
        make_config(batch_size=True)


def test_switching_model_drops_preset_model_args():
    cfg = make_config(preset_config("lstm-64"), model="gru")
    assert cfg.model == "gru" and cfg.model_args == {}


def test_model_args_parsing():
    assert parse_model_args("hidden_size=64,num_layers=2") == {"hidden_size": 64, "num_layers": 2}
    assert parse_model_args('{"activation": "relu"}') == {"activation": "relu"}
    with pytest.raises(ConfigError):
        parse_model_args("hidden_size")


def test_config_round_trips_through_json():
    cfg = make_config(preset_config("lenet5-fashion"), seed=3)
    from digitlab.config import config_from_json

    assert config_from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["lr"] == 0.9
