"""Which test-time views, and whether averaging several runs, pay: scored on the validation hold-out, where a
recipe may be chosen, with the test figure beside it to be reported for the choice only.

    python benchmarks/tta_and_ensembles.py RUN [RUN ...] [--checkpoint best] [--data-dir ../shared/data]

For each run (trained with a validation hold-out, `--val-size N`) it scores the checkpoint on the same
hold-out the run used and on the test set, with three kinds of test-time augmentation (`digitlab.evaluation.
tta_views`): none, the image and its four 1-pixel shifts, and those five with their mirror images. Then the
mean over the runs, and the runs averaged as one model (the mean of their log-probabilities), which is what
multi-model averaging would give for the runs' total training time.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from digitlab.data import load_dataset
from digitlab.evaluation import tta_views
from digitlab.normalize import normalize
from digitlab.runs import load_run, read_config
from digitlab.split import stratified_split

VIEWS = {"none": 1, "shifts": 5, "shifts+mirror": 10}  # each kind: the first N of tta_views(mirror=True)


def held_out_sets(run: Path, data_dir: str | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The run's validation hold-out (as training chose it) and the test set."""
    cfg = read_config(run)
    if not cfg.val_size:
        raise SystemExit(f"{run} was trained without a validation hold-out, so nothing can be chosen on it")
    ds = load_dataset(cfg.dataset, data_dir, progress=False)
    _, val_idx = stratified_split(ds.train_labels, cfg.val_size)
    return {"val": (ds.train_images[val_idx], ds.train_labels[val_idx]), "test": (ds.test_images, ds.test_labels)}


@torch.inference_mode()
def log_probs_by_kind(model: torch.nn.Module, images: torch.Tensor, normalization: str,
                      batch_size: int = 100) -> dict[str, torch.Tensor]:
    """Log-probabilities under each kind of VIEWS, from one pass over the ten views (the kinds share theirs),
    averaging the logits as `predict_logits` does."""
    model.eval()
    parts = {kind: [] for kind in VIEWS}
    for i in range(0, images.shape[0], batch_size):
        logits = [model(view).float() for view in tta_views(normalize(images[i:i + batch_size], normalization), True)]
        for kind, n in VIEWS.items():
            parts[kind].append((sum(logits[:n]) / n).log_softmax(1))
    return {kind: torch.cat(chunks) for kind, chunks in parts.items()}


def accuracy(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (log_probs.argmax(1) == labels).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of one recipe, trained with --val-size")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--data-dir", default=None, help="where the dataset's IDX files are")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = held_out_sets(args.runs[0], args.data_dir)
    columns = [f"{split} {view}" for view in VIEWS for split in sets]
    print(f"{'run':<24}" + "".join(f"{c:>22}" for c in columns))
    summed = {c: 0.0 for c in columns}
    ensemble = {c: None for c in columns}
    for run in args.runs:
        loaded = load_run(run, args.checkpoint)
        scores = {}
        for split, (images, labels) in sets.items():
            for view, log_probs in log_probs_by_kind(loaded.model, images, loaded.normalization).items():
                column = f"{split} {view}"
                scores[column] = accuracy(log_probs, labels)
                summed[column] += scores[column]
                ensemble[column] = log_probs if ensemble[column] is None else ensemble[column] + log_probs
        print(f"{run.name:<24}" + "".join(f"{scores[c]:>22.2%}" for c in columns), flush=True)
    print(f"{'mean':<24}" + "".join(f"{summed[c] / len(args.runs):>22.3%}" for c in columns))
    labels = {split: y for split, (_, y) in sets.items()}
    print(f"{'all runs averaged':<24}" + "".join(f"{accuracy(ensemble[c], labels[c.split()[0]]):>22.2%}"
                                                for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
