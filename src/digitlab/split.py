"""The validation hold-out: a fixed, stratified part of the training set used to pick checkpoints and stop.

With TrainConfig.val_size = n > 0, training holds out n training images chosen by stratified_split with
SPLIT_SEED, so the hold-out is the same for every run of a dataset whatever its --seed (seeds vary the
model, never which images it may learn from), and resuming a run finds the same split. Each class gets
its share of the n images in proportion to its frequency in the training set, so the validation
accuracy weighs the classes as the training set does.
"""
from __future__ import annotations

import torch

from digitlab.errors import ConfigError

SPLIT_SEED = 20_240_901  # fixed on purpose: not the run's seed (see the module docstring)


def class_quotas(counts: torch.Tensor, n: int) -> torch.Tensor:
    """How many of n held-out images each class gives: proportional to `counts` (largest remainder, so they
    add up to exactly n), and at least one for every class present."""
    total = int(counts.sum())
    exact = counts.double() * n / total
    quotas = exact.floor().long()
    remainder = n - int(quotas.sum())
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - quotas[c]).item(), c))  # ties: lower class
    for c in order[:remainder]:
        quotas[c] += 1
    for c in range(len(counts)):  # a rare class still gets one image, taken from the largest quota
        if counts[c] > 0 and quotas[c] == 0:
            quotas[int(quotas.argmax())] -= 1
            quotas[c] = 1
    return quotas


def stratified_split(labels: torch.Tensor, n: int, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): sorted, disjoint int64 indices into `labels` covering all of it, with n of them in
    val_idx, each class in proportion to its frequency. The same (labels, n, seed) always gives the same split.

    A ConfigError when n is not below the number of examples or is smaller than the number of classes (a
    validation set without some class would not measure it)."""
    labels = labels.long().cpu()
    size = labels.numel()
    counts = torch.bincount(labels)
    present = int((counts > 0).sum())
    if n >= size:
        raise ConfigError(f"val_size {n} must be smaller than the training set ({size:,} images)")
    if n < present:
        raise ConfigError(f"val_size {n} must be at least the number of classes ({present}), so each class is "
                          "in the validation set")
    generator = torch.Generator().manual_seed(seed)
    quotas = class_quotas(counts, n)
    held_out = []
    for c, quota in enumerate(quotas.tolist()):
        members = (labels == c).nonzero().flatten()
        held_out.append(members[torch.randperm(members.numel(), generator=generator)[:quota]])
    val_idx = torch.cat(held_out).sort().values
    is_val = torch.zeros(size, dtype=torch.bool)
    is_val[val_idx] = True
    return (~is_val).nonzero().flatten(), val_idx
