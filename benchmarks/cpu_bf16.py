"""Training speed with and without bf16 autocast on this CPU, per model, measured side by side.

    python benchmarks/cpu_bf16.py                 # every faithful preset's model, plus best's and fast's
    python benchmarks/cpu_bf16.py --threads 1 --steps 30

On CPUs with AMX or AVX512-BF16, oneDNN runs bf16 convolutions and matmuls in hardware; elsewhere it
emulates them, slower than fp32. This is the measurement behind TrainConfig.cpu_amp and the presets
that turn it on. Each model trains on random batches of its preset's size for --steps steps in fp32
and then in bf16, alternately for --rounds rounds; the figure is the best round of each (the least
disturbed by other processes) and their ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

from digitlab.config import make_config
from digitlab.device import cpu_has_native_bf16
from digitlab.models import create_model
from digitlab.optim import build_optimizer
from digitlab.presets import preset_config

PRESETS = ("mlp-bn", "cnn-bn", "lenet5-fashion", "lstm-64", "lstm-2x128", "fast", "best")


def images_per_second(preset: str, bf16: bool, steps: int) -> float:
    """Training images per second of the preset's model, optimiser and batch size on random data."""
    cfg = make_config(preset_config(preset))
    torch.manual_seed(0)
    model = create_model(cfg.model, **cfg.model_args)
    optimizer = build_optimizer(model, cfg)
    x = torch.randn(cfg.batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (cfg.batch_size,))
    for i in range(steps + 3):
        if i == 3:  # the first steps warm up oneDNN's kernel cache
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return cfg.batch_size * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="presets whose models to time")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating fp32/bf16 rounds; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"native bf16: {cpu_has_native_bf16()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'preset':<16}{'model':<10}{'batch':>6} | {'fp32 img/s':>11}{'bf16 img/s':>11} | {'bf16/fp32':>9}")
    for preset in args.presets:
        cfg = make_config(preset_config(preset))
        fp32 = bf16 = 0.0
        for _ in range(args.rounds):
            fp32 = max(fp32, images_per_second(preset, False, args.steps))
            bf16 = max(bf16, images_per_second(preset, True, args.steps))
        print(f"{preset:<16}{cfg.model:<10}{cfg.batch_size:>6} | {fp32:>11.0f}{bf16:>11.0f} | {bf16 / fp32:>8.2f}x",
              flush=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
