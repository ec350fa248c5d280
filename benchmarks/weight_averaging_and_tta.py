"""What weight averaging (EMA) and test-time augmentation (TTA) each add to a finished run, measured
on the test set without retraining.

    python benchmarks/weight_averaging_and_tta.py RUN [RUN ...] [--data-dir ../shared/data]

A run trained with `ema` keeps both weights in its last checkpoint: the average in last.safetensors
(what digitlab evaluates and serves) and the optimiser's own weights in last.state.pt (kept for
resuming). Each is scored with and without TTA (the mean of the logits over the image and its four
1-pixel shifts), so one table shows the four combinations side by side for every run.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from digitlab.checkpoint import load_training_checkpoint
from digitlab.data import load_dataset
from digitlab.evaluation import predict_logits
from digitlab.runs import load_run


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, normalization: str,
             tta: bool) -> float:
    logits = predict_logits(model, images, normalization, batch_size=100, tta=tta)
    return (logits.argmax(1) == labels).float().mean().item()


def score_run(run: Path, data_dir: str | None) -> dict[str, float]:
    """Test accuracy of {optimiser weights, EMA} x {no TTA, TTA} for one run folder."""
    loaded = load_run(run, "last")
    _, _, state = load_training_checkpoint(run, "last")
    if "train_weights" not in state:
        raise SystemExit(f"{run} was trained without ema, so it has no second set of weights to compare")
    ds = load_dataset(loaded.dataset, data_dir, progress=False)
    averaged = loaded.model
    raw = copy.deepcopy(averaged)  # same architecture; the optimiser's weights go in below
    raw.load_state_dict(state["train_weights"])
    scores = {}
    for name, model in (("weights", raw), ("ema", averaged)):
        for tta in (False, True):
            key = f"{name}{' + tta' if tta else ''}"
            scores[key] = accuracy(model, ds.test_images, ds.test_labels, loaded.normalization, tta)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders trained with ema")
    parser.add_argument("--data-dir", default=None, help="where the dataset's IDX files are")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    columns = ("weights", "weights + tta", "ema", "ema + tta")
    print(f"{'run':<28}" + "".join(f"{c:>15}" for c in columns))
    for run in args.runs:
        scores = score_run(run, args.data_dir)
        print(f"{run.name:<28}" + "".join(f"{scores[c]:>15.2%}" for c in columns), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
