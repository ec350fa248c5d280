"""Damaged run folders give one line, never a traceback or an allocation failure: a tampered last.state.pt on
resume, a config.json asking for a model of 10^11-wide layers, a metrics.csv holding words; and the model
registry refuses a second model under a taken name.

The CLI cases run `python -m digitlab` in a real subprocess.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from digitlab.errors import ConfigError
from digitlab.models import MAX_PARAMETERS, check_model_args, create_model, register_model
from helpers import one_line_error, run_cli, snapshot

# Epoch 1 of 2, stopped by --max-steps 3: `--resume RUN --max-steps 6` has work to do.
TINY = ["--model", "mlp", "--batch-size", "32", "--epochs", "2", "--max-steps", "3", "--threads", "1",
        "--device", "cpu", "--eval-batch-size", "5000", "--no-progress"]
HUGE = 100_000_000_000


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "run"
    proc = run_cli("train", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    shutil.copytree(good_run, tmp_path / "run")
    return tmp_path / "run"


def tamper_state(run: Path, change: Callable[[dict], None]) -> None:
    path = run / "last.state.pt"
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def first_param_state(state: dict) -> dict:
    return state["optimizer"]["state"][0]


TAMPERED = {
    "no optimizer": (lambda s: s.pop("optimizer"), "optimizer"),
    "no history": (lambda s: s.pop("history"), "history"),
    "epoch as text": (lambda s: s.update(epoch="one"), "epoch"),
    "history not rows": (lambda s: s.update(history=["x"]), "history"),
    "optimizer without groups": (lambda s: s["optimizer"].update(param_groups=[]), "optimizer"),
    "optimizer state of another shape": (lambda s: first_param_state(s).update(exp_avg=torch.zeros(3)),
                                         "exp_avg"),
    "optimizer state as text": (lambda s: first_param_state(s).update(exp_avg="zeros"), "exp_avg"),
    "rng of another size": (lambda s: s["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)), "rng"),
    "raw weights of another model": (lambda s: s.update(train_weights={"w": torch.zeros(2)}), "weights"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_state_file_is_one_line_on_resume_and_nothing_is_written(run, case):
    change, fragment = TAMPERED[case]
    tamper_state(run, change)
    before = snapshot(run)
    line = one_line_error(run_cli("train", "--resume", str(run), "--max-steps", "6", "--no-progress"), fragment)
    assert "last.state.pt" in line
    assert snapshot(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("hidden, fragment", [([HUGE], "parameters"), ([1e11], "hidden")])
def test_a_config_asking_for_a_huge_model_is_one_line(run, hidden, fragment):
    config = json.loads((run / "config.json").read_text())
    config["model_args"] = {"hidden": hidden}
    (run / "config.json").write_text(json.dumps(config))
    before = snapshot(run)
    for command in (["train", "--resume", str(run), "--max-steps", "6", "--no-progress"], ["eval", str(run)]):
        line = one_line_error(run_cli(*command), fragment)
        assert "config.json" in line
    assert snapshot(run) == before


def test_summary_of_a_huge_model_is_one_line_not_an_allocation():
    one_line_error(run_cli("summary", "mlp", "--model-args", f"hidden=[{HUGE}]"), "parameters", f"{MAX_PARAMETERS:,}")
    assert run_cli("summary", "mlp", "--model-args", "hidden=[20]").returncode == 0


@pytest.mark.quick
def test_check_model_args_builds_nothing_and_counts_parameters():
    probe = check_model_args("mlp", {"hidden": [300, 100]})
    assert all(p.device.type == "meta" for p in probe.parameters())
    with pytest.raises(ConfigError, match=r"100,000,000,000.*parameters|parameters.*limit"):
        check_model_args("mlp", {"hidden": [HUGE]})


def word_in_test_accuracy(text: str) -> str:
    lines = text.splitlines()
    cells = lines[1].split(",")
    cells[5] = "ninety"  # test_accuracy
    return "\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("damage, fragment", [
    (lambda text: word_in_test_accuracy(text), "ninety"),
    (lambda text: "step,epoch\n3,0.0016\n", "test_accuracy"),
])
def test_a_metrics_csv_with_words_is_one_line_in_plot_and_compare(run, tmp_path, damage, fragment):
    path = run / "metrics.csv"
    path.write_text(damage(path.read_text()))
    for command in (["plot", str(run), "-o", str(tmp_path / "p.png")],
                    ["compare", str(run), "-o", str(tmp_path / "c.png")]):
        line = one_line_error(run_cli(*command), "metrics.csv", fragment)
        assert "line 2" in line or "column" in line
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "c.png").exists()


@pytest.mark.quick
def test_register_model_refuses_a_taken_name():
    def mlp() -> torch.nn.Module:
        return torch.nn.Linear(784, 10)

    with pytest.raises(ConfigError, match="'mlp' is already registered"):
        register_model(mlp)
    assert type(create_model("mlp")).__name__ == "MLP"  # the original builder still answers
