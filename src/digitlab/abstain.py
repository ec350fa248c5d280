"""Refusing to name a digit: a dot, a letter or a scribble gets "not a digit" or "too small", not "4, 53.6% sure".

Three rules:
  too small   the ink's extent in the picture before preprocessing enlarged it (preprocess.ink_extent: the ink
              box's longer side over the canvas's): a dot on the page's canvas is 2-3 of its 28 pixels. Under
              `min_extent` is refused. Only for canvas drawings (the page, JSON pixels to the API): a picture
              file's scale is unknown, and a 12-pixel digit on a scanned page is still a digit. Reason: TOO_SMALL.
  a blob      `thickness` after preprocessing over `max_thickness`: a dot in a picture file is enlarged to a
              20-pixel disk, many pixels thick, while a digit's strokes stay 2-4 (3x3 erosions until no pixel
              >= 128 is left). For every input. Reason: TOO_SMALL (a dot).
  not a digit one of SCORES over the logits (chosen by measurement, benchmarks/abstain.py): the calibrated top
              probability, the energy -T*logsumexp(logits/T) or the max logit, each negated where needed so that
              higher means less like a digit; above `threshold` is refused. Reason: NOT_A_DIGIT.

Thresholds are fitted on validation data only (fit_abstention): a digit validation hold-out the model never
trained on fixes each threshold so that at most `max_refused` (1%) of real digits are refused, both rules
together (the ink rules may take SMALL_SHARE each); the generated non-digits' validation part
(digitlab.non_digits) chooses which score. The record
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
MAX_REFUSED = 0.01  # the share of real validation digits the rules may refuse together
SMALL_SHARE = 0.002  # of which each ink rule (extent, thickness) may take at most this much
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
    """The refusal rules as fitted: the score and its threshold, the ink rules' limits, what they were fitted on."""

    score: str = "probability"
    threshold: float = math.inf  # refuse as NOT_A_DIGIT when score > threshold (inf: never)
    min_extent: float = 0.0  # refuse as TOO_SMALL when a canvas drawing's extent is below this share (0: never)
    fitted_on: str = ""  # e.g. "mnist validation hold-out (5,000) and 1,000 generated non-digits (validation)"
    validation: dict = field(default_factory=dict)  # refused shares on the data it was fitted on
    max_thickness: float = math.inf  # refuse as TOO_SMALL when thickness() is above this (inf: never)

    @property
    def fitted(self) -> bool:
        return math.isfinite(self.threshold) or self.min_extent > 0 or math.isfinite(self.max_thickness)

    def reasons(self, images: np.ndarray, logits: np.ndarray, temperature: float, extents=None) -> list[str | None]:
        """Why each image (uint8, 28x28, as the model saw it) is refused (TOO_SMALL before NOT_A_DIGIT), or None
        where it is read as a digit; `extents`: each canvas drawing's ink extent, None where not a canvas."""
        odd = model_score(self.score, logits, temperature) > self.threshold
        blob = thickness(images) > self.max_thickness
        extents = [None] * len(odd) if extents is None else extents
        small = [b or (e is not None and e < self.min_extent) for b, e in zip(blob, extents)]
        return [TOO_SMALL if s else NOT_A_DIGIT if o else None for s, o in zip(small, odd)]

    def to_meta(self) -> dict:
        """Plain JSON data: an infinite limit (never refuse) as None."""
        return {**asdict(self), "threshold": _finite(self.threshold), "max_thickness": _finite(self.max_thickness)}

    @classmethod
    def from_meta(cls, raw: dict) -> "Abstention":
        """The record to_meta wrote; TypeError or ValueError for anything else."""
        if not isinstance(raw, dict):
            raise TypeError("not a record")
        record = cls(**{**raw, "threshold": _infinite(raw.get("threshold")),
                        "max_thickness": _infinite(raw.get("max_thickness"))})
        if record.score not in SCORES or not isinstance(record.validation, dict):
            raise ValueError(f"unknown score {record.score!r}")
        if isinstance(record.min_extent, bool) or not isinstance(record.min_extent, (int, float)) \
                or not 0 <= record.min_extent < 1:
            raise ValueError(f"min_extent must be a share in [0, 1), not {record.min_extent!r}")
        return record

    def describe(self) -> dict:
        """Plain data for GET /api/model and --json output."""
        return {"score": self.score, "threshold": _finite(self.threshold), "min_extent": self.min_extent,
                "max_thickness": _finite(self.max_thickness), "fitted_on": self.fitted_on}


NEVER = Abstention()


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _infinite(x: object) -> float:
    if x is None:
        return math.inf
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"a threshold must be a finite number or null, not {x!r}")
    return float(x)


@dataclass
class Scored:
    """A set of images as the model saw them, its logits, and the canvas extents (None: not canvas drawings)."""

    images: np.ndarray
    logits: np.ndarray
    extents: np.ndarray | None = None


def refused_shares(record: Abstention, data: Scored, temperature: float) -> dict:
    """The share refused by each reason and by any, on one set of images."""
    reasons = record.reasons(data.images, data.logits, temperature, data.extents)
    n = max(len(reasons), 1)
    small = sum(r == TOO_SMALL for r in reasons) / n
    odd = sum(r == NOT_A_DIGIT for r in reasons) / n
    return {"too_small": small, "not_a_digit": odd, "refused": small + odd, "count": len(reasons)}


def fit_min_extent(digit_extents: np.ndarray, max_share: float = SMALL_SHARE) -> float:
    """The largest of EXTENTS that refuses at most `max_share` of real digits as too small."""
    extents = np.asarray(digit_extents, np.float64)
    fits = [e for e in EXTENTS if (extents < e).mean() <= max_share]
    return max(fits, default=0.0)


def fit_abstention(digits: Scored, others: Scored, temperature: float, fitted_on: str,
                   max_refused: float = MAX_REFUSED, scores: tuple[str, ...] = SCORES) -> tuple[Abstention, dict]:
    """Fit the rules on validation data: limits from real digits (`digits`: at most `max_refused` refused, all
    rules together), the score that refuses most validation non-digits (`others`). Returns the record and each
    candidate score's figures."""
    min_extent = fit_min_extent(digits.extents)
    depth = thickness(digits.images)
    max_thickness = threshold_for(depth, int(SMALL_SHARE * len(depth)))
    kept = (np.asarray(digits.extents) >= min_extent) & (depth <= max_thickness)
    allowed = max(int(max_refused * len(kept)) - int((~kept).sum()), 0)
    candidates = {}
    for name in scores:
        cut = threshold_for(model_score(name, digits.logits, temperature)[kept], allowed)
        record = Abstention(name, cut, min_extent, fitted_on, max_thickness=max_thickness)
        candidates[name] = {"threshold": cut, "digits": refused_shares(record, digits, temperature),
                            "non_digits": refused_shares(record, others, temperature)}
    best = max(candidates, key=lambda k: candidates[k]["non_digits"]["refused"])
    chosen = candidates[best]
    validation = {"digits_refused": chosen["digits"]["refused"], "non_digits_refused": chosen["non_digits"]["refused"]}
    return Abstention(best, chosen["threshold"], min_extent, fitted_on, validation, max_thickness), candidates
