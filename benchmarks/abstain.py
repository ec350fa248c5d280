"""Not a digit: which score refuses letters, scribbles, shapes, dots and lines while sparing real digits.

Validation (what chooses): MNIST's 5,000-image hold-out (split.py; the shipped model never trained on it) and the
validation part of digitlab.non_digits. Each candidate score gets the threshold that refuses at most 1% of the
validation digits (with the "too small" rule's refusals counted in), and the one refusing most validation
non-digits is chosen (abstain.fit_abstention, what `digitlab calibrate` runs). Printed per candidate: the share of
validation digits and non-digits refused, per kind. Then, once, test: the chosen rule on the test part of
non_digits, MNIST's 10,000 test digits, scikit-learn's 1,797 digits read as files (benchmarks/real_writers.py's
form), 1,000 digits drawn the page's way (pen.py's styles on the page's canvas: the page's format, not MNIST's),
and Fashion-MNIST's 10,000 test pictures: non-digits that no generator of digitlab's made.

    python benchmarks/abstain.py                     # the shipped model
    python benchmarks/abstain.py --run runs/<run>    # another
    python benchmarks/abstain.py --json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from digitlab import non_digits  # noqa: E402
from digitlab.abstain import NOT_A_DIGIT, TOO_SMALL, Abstention, Scored, fit_abstention, thickness  # noqa: E402
from digitlab.calibrate import abstain_fitted_on, digit_extents, validation_split  # noqa: E402
from digitlab.predict import Predictor  # noqa: E402


def reasons_by_kind(record: Abstention, p: Predictor, images: np.ndarray, extents, kinds: list[str]) -> dict:
    """The share of each kind refused, and as which reason."""
    reasons = np.array(record.reasons(images, p.logits(images), p.temperature, extents), dtype=object)
    kinds_a = np.array(kinds)
    out = {}
    for kind in list(non_digits.KINDS) + ["all"]:
        m = kinds_a == kind if kind != "all" else np.ones(len(kinds_a), bool)
        out[kind] = {"refused": float(np.mean(reasons[m] != None)),  # noqa: E711 (object array)
                     "too_small": float(np.mean(reasons[m] == TOO_SMALL)),
                     "not_a_digit": float(np.mean(reasons[m] == NOT_A_DIGIT)), "count": int(m.sum())}
    return out


def digits_refused(record: Abstention, p: Predictor, images: np.ndarray, extents) -> float:
    """The share of real digits refused."""
    return float(np.mean([r is not None for r in record.reasons(images, p.logits(images), p.temperature, extents)]))


def sklearn_digits() -> np.ndarray:
    """scikit-learn's digits as files would hold them (real_writers.as_picture), through to_mnist."""
    from real_writers import as_picture, load_writers

    from digitlab.preprocess import to_mnist

    return np.stack([to_mnist(as_picture(d)) for d in load_writers()[0]])


def validation(p: Predictor, n: int) -> tuple[Abstention, dict, dict]:
    """Fit on validation; every candidate's figures, and the chosen one's per kind."""
    images, _ = validation_split(p.dataset, 5000)
    images = images.numpy()
    extents = digit_extents(images)
    others, other_extents, kinds = non_digits.validation_set(n)
    record, candidates = fit_abstention(Scored(images, p.logits(images), extents),
                                        Scored(others, p.logits(others), other_extents), p.temperature,
                                        abstain_fitted_on(p.dataset, len(images), n))
    per_kind = {name: reasons_by_kind(Abstention(name, c["threshold"], record.min_extent,
                                                 max_thickness=record.max_thickness), p, others, other_extents, kinds)
                for name, c in candidates.items()}
    per_kind["ink rules alone"] = reasons_by_kind(Abstention(min_extent=record.min_extent,
                                                             max_thickness=record.max_thickness),
                                                  p, others, other_extents, kinds)
    per_kind["score alone (energy)"] = reasons_by_kind(Abstention("energy", candidates["energy"]["threshold"]),
                                                       p, others, other_extents, kinds)
    depth = {"mnist": np.bincount(thickness(images), minlength=9).tolist(),
             **{k: np.bincount(thickness(others[np.array(kinds) == k]), minlength=9).tolist()
                for k in non_digits.KINDS}}
    return record, {"candidates": candidates, "per_kind": per_kind, "thickness": depth}, {}


def test(p: Predictor, record: Abstention, n: int) -> dict:
    """The chosen rule, once, on test data."""
    from digitlab.data import load_dataset

    others, extents, kinds = non_digits.test_set(n)
    ds = load_dataset(p.dataset, progress=False)
    mnist = ds.test_images.numpy()
    sk = sklearn_digits()
    page, page_extents, _ = non_digits.page_digits(1000)
    # Pictures no generator of ours made: Fashion-MNIST's test clothes, already in MNIST's format. A model
    # trained on generated non-digits (outlier exposure) is tested on its own generator's kind above; this is
    # how far that learning reaches past it.
    clothes = load_dataset("fashion-mnist", progress=False).test_images.numpy()
    return {"non_digits": reasons_by_kind(record, p, others, extents, kinds),
            "fashion_refused": digits_refused(record, p, clothes, None),
            "mnist_test_refused": digits_refused(record, p, mnist, digit_extents(mnist)),
            "sklearn_refused": digits_refused(record, p, sk, None),  # files: the score alone
            "page_digits_refused": digits_refused(record, p, page, page_extents)}


def print_report(record: Abstention, val: dict, tested: dict) -> None:
    print(f"validation: {record.fitted_on}")
    print(f"too small: ink extent under {record.min_extent:.3f} of the canvas, or thickness over "
          f"{record.max_thickness:g}")
    print(f"{'score':<12}{'threshold':>10}{'digits':>8}" + "".join(f"{k:>10}" for k in [*non_digits.KINDS, "all"]))
    for name, kinds in val["per_kind"].items():
        c = val["candidates"].get(name, {"threshold": float("nan"), "digits": {"refused": float("nan")}})
        print(f"{name:<12}{c['threshold']:>10.4f}{c['digits']['refused']:>8.2%}"
              + "".join(f"{kinds[k]['refused']:>10.1%}" for k in [*non_digits.KINDS, "all"]))
    print("thickness (3x3 erosions the ink survives) counts, 0..8:")
    for k, v in val["thickness"].items():
        print(f"  {k:<10}{v}")
    print(f"chosen: {record.score} > {record.threshold:.4f}")
    t = tested["non_digits"]
    print("test non-digits refused: " + ", ".join(f"{k} {t[k]['refused']:.1%} (too small {t[k]['too_small']:.1%})"
                                                   for k in [*non_digits.KINDS, "all"]))
    print(f"test digits refused: MNIST {tested['mnist_test_refused']:.2%}, scikit-learn "
          f"{tested['sklearn_refused']:.2%}, page-drawn pen digits {tested['page_digits_refused']:.2%}")
    print(f"Fashion-MNIST test pictures (no generator of ours) refused: {tested['fashion_refused']:.2%}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run folder or .safetensors (default: the shipped model)")
    ap.add_argument("--count", type=int, default=1000, help="non-digits per split")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    p = Predictor.from_run(args.run)
    record, val, _ = validation(p, args.count)
    tested = test(p, record, args.count)
    if args.json:
        print(json.dumps({"chosen": record.to_meta(), "validation": val, "test": tested}))
    else:
        print_report(record, val, tested)
    return 0


if __name__ == "__main__":
    sys.exit(main())
