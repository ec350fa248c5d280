"""Refusing to name a digit: a dot, a letter or a scribble gets "not a digit" or "too small", not "4, 53.6% sure".

Two rules:
  too small   the ink's extent in the picture before preprocessing enlarged it (preprocess.ink_extent: the ink
              box's longer side over the picture's): a dot on the page's canvas is 2-3 of its 28 pixels. Under
              `min_extent` is refused (where the extent is known: not for images given already 28x28 MNIST-like).
              Reason: TOO_SMALL.
  not a digit one of SCORES over the logits (chosen by measurement, benchmarks/abstain.py): the calibrated top
              probability, the energy -T*logsumexp(logits/T) or the max logit, each negated where needed so that
              higher means less like a digit; above `threshold` is refused. Reason: NOT_A_DIGIT.

Thresholds are fitted on validation data only (fit_abstention): a digit validation hold-out the model never
trained on fixes each threshold so that at most `max_refused` (1%) of real digits are refused, both rules
together; the generated non-digits' validation part (digitlab.non_digits) chooses which score. `thickness`
(how deep the ink is after preprocessing) was a candidate for "too small" too; it is kept for the comparison. The record
(Abstention) travels in the weights' metadata inside the `calibration` record, beside the temperature, so
`digitlab calibrate` refits both. Numpy only: the Predictor on ONNX Runtime applies it without PyTorch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from digitlab.calibration import log_softmax

TOO_SMALL = "too small: draw it larger"
NOT_A_DIGIT = "not a digit"
INK = 128  # a pixel at least this bright is ink for `thickness`
SCORES = ("probability", "energy", "max_logit")  # candidates for "not a digit"
MAX_REFUSED = 0.01  # the share of real validation digits the two rules may refuse together
SMALL_SHARE = 0.002  # of which the "too small" rule may take at most this much
EXTENTS = tuple(k / 28 for k in range(2, 8))  # candidate min_extent: at most a quarter of the page's canvas


def thickness(images: np.ndarray) -> np.ndarray:
    """How many 3x3 erosions the ink (>= INK) survives, per image: 1-3 for a digit's strokes, 5+ for a blob."""
    ink = np.asarray(images).reshape(-1, 28, 28) >= INK
    depth = np.zeros(ink.shape[0], np.int64)
    while ink.any():
        depth += ink.any(axis=(1, 2))
        padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
        ink = np.all([padded[:, 1 + dy:29 + dy, 1 + dx:29 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    return depth


def model_score(name: str, logits: np.ndarray, temperature: float) -> np.ndarray:
    """Score `name` of SCORES from logits (N, classes): higher is less like a digit."""
    z = np.asarray(logits, np.float64)
    if name == "probability":
        return -np.exp(log_softmax(z, temperature).max(axis=1))
    if name == "energy":
        top = z.max(axis=1, keepdims=True) / temperature
        return -temperature * (top[:, 0] + np.log(np.exp(z / temperature - top).sum(axis=1)))
    if name == "max_logit":
        return -z.max(axis=1)
    raise ValueError(f"unknown score {name!r}; choose from {', '.join(SCORES)}")


def threshold_for(scores: np.ndarray, allowed: int) -> float:
    """The lowest threshold that refuses (score > threshold) at most `allowed` of these scores."""
    ordered = np.sort(np.asarray(scores, np.float64))[::-1]
    if allowed >= ordered.size:
        return -math.inf
    return float(ordered[allowed])


@dataclass(frozen=True)
class Abstention:
    """The two refusal rules as fitted: score names, thresholds, and what they were fitted and measured on."""

    score: str = "probability"
    threshold: float = math.inf  # refuse as NOT_A_DIGIT when score > threshold (inf: never)
    min_extent: float = 0.0  # refuse as TOO_SMALL when the ink's extent is below this share (0: never)
    fitted_on: str = ""  # e.g. "mnist validation hold-out (5,000) and 1,000 generated non-digits (validation)"
    validation: dict = field(default_factory=dict)  # refused shares on the data it was fitted on

    @property
    def fitted(self) -> bool:
        return math.isfinite(self.threshold) or self.min_extent > 0

    def reasons(self, logits: np.ndarray, temperature: float, extents=None) -> list[str | None]:
        """Why each image is refused (TOO_SMALL before NOT_A_DIGIT), or None where it is read as a digit;
        `extents`: each picture's ink extent, None where unknown (then only the score decides)."""
        odd = model_score(self.score, logits, temperature) > self.threshold
        extents = [None] * len(odd) if extents is None else extents
        small = [e is not None and e < self.min_extent for e in extents]
        return [TOO_SMALL if s else NOT_A_DIGIT if o else None for s, o in zip(small, odd)]

    def to_meta(self) -> dict:
        """Plain JSON data: an infinite threshold (never refuse) as None."""
        return {**asdict(self), "threshold": _finite(self.threshold)}

    @classmethod
    def from_meta(cls, raw: dict) -> "Abstention":
        """The record to_meta wrote; TypeError or ValueError for anything else."""
        if not isinstance(raw, dict):
            raise TypeError("not a record")
        record = cls(**{**raw, "threshold": _infinite(raw.get("threshold"))})
        if record.score not in SCORES or not isinstance(record.validation, dict):
            raise ValueError(f"unknown score {record.score!r}")
        if isinstance(record.min_extent, bool) or not isinstance(record.min_extent, (int, float)) \
                or not 0 <= record.min_extent < 1:
            raise ValueError(f"min_extent must be a share in [0, 1), not {record.min_extent!r}")
        return record

    def describe(self) -> dict:
        """Plain data for GET /api/model and --json output."""
        return {"score": self.score, "threshold": _finite(self.threshold), "min_extent": self.min_extent,
                "fitted_on": self.fitted_on}


NEVER = Abstention()


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _infinite(x: object) -> float:
    if x is None:
        return math.inf
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"a threshold must be a finite number or null, not {x!r}")
    return float(x)


def refused_shares(record: Abstention, logits: np.ndarray, temperature: float, extents=None) -> dict:
    """The share refused by each rule and by either, on one set of images."""
    reasons = record.reasons(logits, temperature, extents)
    n = max(len(reasons), 1)
    small = sum(r == TOO_SMALL for r in reasons) / n
    odd = sum(r == NOT_A_DIGIT for r in reasons) / n
    return {"too_small": small, "not_a_digit": odd, "refused": small + odd, "count": len(reasons)}


def fit_min_extent(digit_extents: np.ndarray, max_share: float = SMALL_SHARE) -> float:
    """The largest of EXTENTS that refuses at most `max_share` of real digits as too small."""
    extents = np.asarray(digit_extents, np.float64)
    fits = [e for e in EXTENTS if (extents < e).mean() <= max_share]
    return max(fits, default=0.0)


def fit_abstention(digit_logits: np.ndarray, digit_extents: np.ndarray, other_logits: np.ndarray,
                   other_extents: np.ndarray, temperature: float, fitted_on: str, max_refused: float = MAX_REFUSED,
                   scores: tuple[str, ...] = SCORES) -> tuple[Abstention, dict]:
    """Fit both rules on validation data: thresholds from real digits (at most `max_refused` refused, both rules
    together), the score that refuses most validation non-digits. Returns the record and each candidate's figures."""
    min_extent = fit_min_extent(digit_extents)
    kept = np.asarray(digit_extents) >= min_extent
    allowed = max(int(max_refused * len(kept)) - int((~kept).sum()), 0)
    candidates = {}
    for name in scores:
        cut = threshold_for(model_score(name, digit_logits, temperature)[kept], allowed)
        record = Abstention(name, cut, min_extent, fitted_on)
        candidates[name] = {"threshold": cut,
                            "digits": refused_shares(record, digit_logits, temperature, digit_extents),
                            "non_digits": refused_shares(record, other_logits, temperature, other_extents)}
    best = max(candidates, key=lambda k: candidates[k]["non_digits"]["refused"])
    chosen = candidates[best]
    validation = {"digits_refused": chosen["digits"]["refused"], "non_digits_refused": chosen["non_digits"]["refused"]}
    return Abstention(best, chosen["threshold"], min_extent, fitted_on, validation), candidates
