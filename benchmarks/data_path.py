"""How much of a training step goes into getting the batch ready: digitlab's tensor slicing against the
PyTorch example's per-sample Dataset + DataLoader (uint8 -> PIL image -> tensor, one sample at a time).

    python benchmarks/data_path.py                      # every faithful preset, 1 thread
    python benchmarks/data_path.py --presets mlp-bn --steps 200 --threads 2

For each preset both paths train the same model (same seed, optimiser, batch size and normalisation)
for --steps optimiser steps (fewer if --max-seconds runs out first, but at least 5), one after the other in this
process. Reported per path: milliseconds per step, the fraction of it spent on the batch, and one
epoch extrapolated from the measured steps (steps per epoch x time per step; whole epochs are not
run, to bound the runtime). The speed-up is the reference's time per step over digitlab's.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from digitlab.config import make_config
from digitlab.data import load_dataset
from digitlab.models import create_model
from digitlab.normalize import NORMALIZATIONS, normalize
from digitlab.optim import build_optimizer
from digitlab.presets import preset_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_example import MNISTPerSample, to_tensor_normalized  # noqa: E402  (the example's data path)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FAITHFUL = ("mlp-bn", "cnn-bn", "lstm-64", "lstm-2x128", "lenet5-fashion", "alexnet")


class PerSampleWithNormalization(MNISTPerSample):
    """The example's Dataset with the preset's normalisation in place of MNIST's mean/std."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, kind: str):
        super().__init__(images, labels)
        self.shift, self.scale = NORMALIZATIONS[kind]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[index], int(self.targets[index])
        return to_tensor_normalized(Image.fromarray(img.numpy(), mode="L"), self.shift, self.scale), target


def time_steps(model, optimizer, batches, steps: int, max_seconds: float, min_steps: int = 5) -> dict:
    """Train on batches from the iterator; time getting each batch and the whole step."""
    model.train()
    data_s = step_s = 0.0
    done = 0
    deadline = time.perf_counter() + max_seconds
    for i in range(steps + 2):
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t2 = time.perf_counter()
        if i >= 2:  # the first two steps warm up allocators and kernels
            data_s, step_s, done = data_s + t1 - t0, step_s + t2 - t0, done + 1
            if t2 > deadline and done >= min_steps:
                break
    return {"steps": done, "step_ms": 1000 * step_s / done, "data_fraction": data_s / step_s}


def digitlab_batches(images: torch.Tensor, labels: torch.Tensor, batch: int, kind: str, seed: int):
    """training.py's data path: a seeded permutation, index slices, normalise the whole batch at once."""
    epoch = 0
    while True:
        perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, images.shape[0] - batch + 1, batch):
            idx = perm[i:i + batch]
            yield normalize(images.index_select(0, idx), kind), labels.index_select(0, idx)
        epoch += 1


def reference_batches(images: torch.Tensor, labels: torch.Tensor, batch: int, kind: str):
    """The example's data path: per-sample PIL Dataset through a shuffling DataLoader (CPU: no workers)."""
    ds = PerSampleWithNormalization(images.numpy(), labels.numpy(), kind)
    while True:
        yield from torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)


def measure(preset: str, steps: int, max_seconds: float) -> dict:
    cfg = make_config(preset_config(preset))
    ds = load_dataset(cfg.dataset, cfg.data_dir or (SHARED_DATA if cfg.dataset != "mnist" else None), progress=False)
    result = {"preset": preset, "model": cfg.model, "batch": cfg.batch_size,
              "steps_per_epoch": -(-ds.train_images.shape[0] // cfg.batch_size)}
    sources = {"digitlab": digitlab_batches(ds.train_images, ds.train_labels, cfg.batch_size, cfg.normalization, 0),
               "reference": reference_batches(ds.train_images, ds.train_labels, cfg.batch_size, cfg.normalization)}
    for name, batches in sources.items():
        torch.manual_seed(0)
        model = create_model(cfg.model, **cfg.model_args)
        result[name] = time_steps(model, build_optimizer(model, cfg), batches, steps, max_seconds)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(FAITHFUL), help="presets to measure")
    parser.add_argument("--steps", type=int, default=100, help="timed optimiser steps per path")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="stop a path's timing after this")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(f"{'preset':<16}{'batch':>6}{'steps':>10} | {'digitlab ms/step':>16}{'data ms':>8}{'data':>7}"
          f"{'epoch s':>9} | {'reference ms/step':>17}{'data ms':>8}{'data':>7}{'epoch s':>9} | {'speed-up':>8}")
    for preset in args.presets:
        r = measure(preset, args.steps, args.max_seconds)
        cells = []
        for path in (r["digitlab"], r["reference"]):
            width = 17 if cells else 16
            cells.append(f"{path['step_ms']:>{width}.1f}{path['step_ms'] * path['data_fraction']:>8.1f}"
                         f"{path['data_fraction']:>7.1%}{path['step_ms'] * r['steps_per_epoch'] / 1000:>9.1f}")
        steps = f"{r['digitlab']['steps']}/{r['reference']['steps']}"
        speed_up = r["reference"]["step_ms"] / r["digitlab"]["step_ms"]
        print(f"{preset:<16}{r['batch']:>6}{steps:>10} | {cells[0]} | {cells[1]} | {speed_up:>7.1f}x", flush=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("epoch s: time per step x steps per epoch, extrapolated from the timed steps (not a full epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
