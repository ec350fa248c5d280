"""Recipe files: a TrainConfig written as TOML reads back to the same config; `train --config` takes the file over
--preset and under the flags; a bad file is one line."""
from __future__ import annotations

import json

import pytest

import digitlab.training as train_module
from digitlab.cli import main
from digitlab.config import make_config
from digitlab.config_files import config_toml, read_config_file
from digitlab.errors import ConfigError
from digitlab.presets import preset_config
from helpers import one_line_error, run_cli


@pytest.mark.quick
@pytest.mark.parametrize("preset", ["default", "fast", "lstm-2x128", "best-fashion"])
def test_a_recipe_reads_back_as_it_was_written(preset, tmp_path):
    cfg = make_config(preset_config(preset), seed=7, data_dir="/some where/\"quoted\"")
    path = tmp_path / "r.toml"
    path.write_text(config_toml(cfg, "a comment\non two lines"))
    assert make_config(read_config_file(path)) == cfg


@pytest.mark.quick
@pytest.mark.parametrize("text, words", [
    ("lrr = 1\n", "unknown config key(s): lrr"),
    ("lr = \n", "is not valid TOML"),
    ("model_args = 3\n", "model_args must be a table"),
])
def test_bad_files_are_config_errors(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_config_file(path)


@pytest.mark.quick
def test_train_takes_the_file_over_the_preset_and_under_the_flags(tmp_path, monkeypatch):
    """The config `digitlab train --preset fast --config FILE --lr 0.5` hands to training."""
    handed = []
    monkeypatch.setattr(train_module, "train",
                        lambda cfg, **kw: handed.append(cfg) or (_ for _ in ()).throw(SystemExit(0)))
    path = tmp_path / "r.toml"
    path.write_text('model = "mlp"\nepochs = 3\nweight_decay = 0.01\n')
    with pytest.raises(SystemExit):
        main(["train", "--preset", "fast", "--config", str(path), "--lr", "0.5"])
    cfg = handed[0]
    assert (cfg.model, cfg.epochs, cfg.weight_decay, cfg.lr) == ("mlp", 3, 0.01, 0.5)
    assert cfg.model_args == {}  # fast's DigitNet options do not carry over to the file's model
    assert cfg.batch_size == preset_config("fast")["batch_size"]  # what the file leaves, the preset gives


def test_a_missing_file_and_a_resume_with_a_file_are_one_line(tmp_path):
    one_line_error(run_cli("train", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path), "does not exist")
    (tmp_path / "r.toml").write_text("epochs = 1\n")
    one_line_error(run_cli("train", "--resume", str(tmp_path), "--config", str(tmp_path / "r.toml"), cwd=tmp_path),
                   "drop --preset and --config")
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == '["r.toml"]'
