"""The faster `fast`: the pieces it is built from do what they claim.

- LeanAdamW computes AdamW exactly as torch.optim.AdamW does and reads and writes its checkpoint layout, and a
  training run with it never imports torch._dynamo (what building a torch.optim optimiser costs: ~1.1 s of CPU);
- DigitNet's pool_first and whiten options build the nets they describe;
- eval_amp scores the run under the training autocast, and only when asked."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import digitlab.training as train_module
from digitlab.config import make_config
from digitlab.models import create_model
from digitlab.optim import LeanAdamW
from digitlab.training import train

from helpers import mnist_slice

ROOT = Path(__file__).resolve().parents[1]


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


def take_steps(model: torch.nn.Module, optimizer, steps: int, seed: int = 1) -> None:
    """`steps` optimiser steps on fixed random batches, with the learning rate changed before each (as set_lr does)."""
    generator = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * (i + 1) / steps
        optimizer.zero_grad(set_to_none=True)
        model(torch.randn(4, 5, generator=generator)).pow(2).sum().backward()
        optimizer.step()


@pytest.mark.quick
def test_lean_adamw_matches_torch_adamw_step_for_step():
    ours, theirs = small_net(), small_net()
    take_steps(ours, LeanAdamW(ours.parameters(), lr=1e-2, weight_decay=5e-4), 25)
    take_steps(theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=5e-4), 25)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours[0].weight, small_net()[0].weight)  # it did train


@pytest.mark.quick
@pytest.mark.parametrize("first, then", [(LeanAdamW, torch.optim.AdamW), (torch.optim.AdamW, LeanAdamW)])
def test_lean_and_torch_adamw_resume_from_each_others_state(first, then):
    """Ten steps with one optimiser, its state_dict loaded into the other, ten more: the same weights as twenty
    steps with torch's AdamW alone."""
    model, reference = small_net(), small_net()
    opt = first(model.parameters(), lr=1e-2, weight_decay=5e-4)
    take_steps(model, opt, 10)
    resumed = then(model.parameters(), lr=1e-2, weight_decay=5e-4)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    take_steps(model, resumed, 10, seed=2)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=5e-4)
    take_steps(reference, ref_opt, 10)
    take_steps(reference, ref_opt, 10, seed=2)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.quick
def test_lean_adamw_refuses_a_state_for_other_parameters():
    opt = LeanAdamW(small_net().parameters())
    with pytest.raises(ValueError):
        opt.load_state_dict(LeanAdamW(torch.nn.Linear(2, 2).parameters()).state_dict())


@pytest.mark.quick
def test_lean_adamw_leaves_frozen_parameters_alone():
    model = small_net()
    model[0].weight.requires_grad_(False)
    before = model[0].weight.clone()
    take_steps(model, LeanAdamW(model.parameters(), lr=1e-2, weight_decay=0.5), 3)
    assert torch.equal(model[0].weight, before)


def test_a_lean_run_never_imports_torch_dynamo(tmp_path):
    """A whole small training run with adamw-lean, in a fresh interpreter: torch._dynamo stays unimported (torch's
    AdamW imports it when built), and the run folder is a normal one."""
    script = f"""
import sys
from digitlab.config import make_config
from digitlab.data import load_dataset
from digitlab.training import train
cfg = make_config(model="digitnet", model_args={{"width": 4, "depth": 1, "pool_first": True}}, optimizer="adamw-lean",
                  batch_size=32, max_steps=3, val_size=100, eval_amp=True, cpu_amp=True, plot=False,
                  out={str(tmp_path / 'run')!r}, threads=1)
train(cfg, progress=False, log=lambda *_: None)
print("dynamo imported:", "torch._dynamo" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "dynamo imported: False" in out.stdout
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optimizer"] == "adamw-lean"
    assert (tmp_path / "run" / "last.safetensors").is_file()


@pytest.mark.quick
def test_pool_first_is_the_same_layers_with_the_pool_moved():
    plain, pooled = create_model("digitnet", width=4, depth=1), create_model("digitnet", width=4, depth=1,
                                                                               pool_first=True)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in pooled.parameters())
    first = pooled.features[0]
    assert [type(m).__name__ for m in first] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert pooled(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_whiten_sets_fixed_filters_from_the_data():
    net = create_model("digitnet", width=4, depth=1, whiten=True)
    conv = net.first_conv
    assert not conv.weight.requires_grad
    images = torch.nn.functional.avg_pool2d(5 * torch.randn(64, 1, 30, 30), 3, stride=1)  # correlated pixels
    net.init_from_data(images)
    filters = conv.weight.reshape(4, 9)
    torch.testing.assert_close(filters[:2], -filters[2:])  # each component and its negation
    patches = torch.nn.functional.unfold(images, 3, padding=1).transpose(1, 2).reshape(-1, 9)
    whitened = patches @ filters[:2].T
    variances = whitened.var(0)
    assert ((variances - 1).abs() < 0.05).all()  # unit variance along each kept component (eps aside)


def test_eval_amp_scores_under_the_training_autocast(mnist, tmp_path, monkeypatch):
    """With eval_amp the run's evaluation runs inside the training autocast; without it, outside."""
    seen = []
    real = train_module.sharded_eval

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "sharded_eval", spy)
    monkeypatch.setattr(train_module, "training_autocast",
                        lambda device, amp, cpu_amp: torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_amp))
    for eval_amp in (False, True):
        cfg = make_config(model="digitnet", model_args={"width": 2, "depth": 1}, batch_size=64, max_steps=2,
                          val_size=50, cpu_amp=True, eval_amp=eval_amp, plot=False, threads=1,
                          out=str(tmp_path / f"run{eval_amp}"))
        train(cfg, dataset=mnist_slice(mnist, 256, 100), progress=False, log=lambda *_: None)
    assert seen == [False, False, True, True]  # val and test, each run


def test_a_lean_whitened_run_resumes_where_it_would_have_been(mnist, tmp_path):
    """1 epoch + resume ends where 2 uninterrupted epochs do with adamw-lean and the whitening conv: the
    optimiser's moments and step counts come back from the checkpoint, and the fixed first conv is the saved one."""
    from digitlab.runs import load_run
    from digitlab.resume import resume_config

    small = mnist_slice(mnist, 512, 300)
    base = {"model": "digitnet", "model_args": {"width": 4, "depth": 1, "pool_first": True, "whiten": True},
            "optimizer": "adamw-lean", "batch_size": 128, "epochs": 2, "schedule": "onecycle", "lr": 1e-2,
            "weight_decay": 5e-4, "threads": 1, "device": "cpu", "plot": False}
    quiet = {"progress": False, "log": lambda *_: None}
    whole = train(make_config(base, out=str(tmp_path / "whole")), small, **quiet)
    train(make_config(base, out=str(tmp_path / "split"), max_steps=4), small, **quiet)  # stops after epoch 1
    split = train(resume_config(tmp_path / "split", max_steps=0), small, resume=True, **quiet)
    assert [r["test_accuracy"] for r in split.history] == [r["test_accuracy"] for r in whole.history]
    a, b = load_run(whole.run_dir, "last").model, load_run(split.run_dir, "last").model
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    assert whole.final["test_accuracy"] > 0.3
