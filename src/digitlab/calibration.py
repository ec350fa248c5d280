"""Calibrated probabilities: temperature scaling, and how far a model's confidence is from its accuracy.

    T = fit_temperature(val_logits, val_labels)           # minimises validation NLL over T > 0
    probs = softmax_t(logits, T)                          # what every front end shows
    expected_calibration_error(probs, labels)             # top-label ECE, 15 equal-width bins
    assess(logits, labels, T)                             # NLL, ECE and reliability bins before and after

A model trained with label smoothing never says more than about 91% (the shipped model's "91.4% sure" for a
perfect 7), whatever it sees: its softmax is not a probability. Temperature scaling divides the logits by one
number T fitted on held-out images, so the labels never change, only how sure each answer says it is. T is
fitted on a run's validation hold-out (never on test, never on images it trained on) and travels in the weights'
metadata as a Calibration record (`calibration` key); checkpoint.py reads it, the Predictor applies it.

Numpy only: the Predictor on ONNX Runtime reads the record without importing PyTorch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from digitlab.errors import RunError

ECE_BINS = 15
T_MIN, T_MAX = 0.02, 50.0  # the search interval; a fitted T at either end is suspicious and reported as such
META_KEY = "calibration"  # the weights' metadata key of the Calibration record
METHODS = ("temperature", "none")
NOT_FITTED = "no temperature was fitted for this model (`digitlab calibrate` fits one on its validation split)"
NO_HOLD_OUT = "the run has no validation split (val_size 0), so nothing unseen to fit a temperature on"


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise log-softmax of logits / temperature in float64, shifted by the row maximum."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities, float32: softmax(logits / temperature)."""
    return np.exp(log_softmax(logits, temperature)).astype(np.float32)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels (no label smoothing): what temperature scaling minimises."""
    labels = np.asarray(labels, dtype=np.int64)
    return float(-log_softmax(logits, temperature)[np.arange(labels.size), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, tol: float = 1e-6) -> float:
    """The T in [T_MIN, T_MAX] minimising nll(logits / T): golden-section search on log T.

    NLL is convex in 1/T, so it is unimodal in log T and the search cannot be trapped; no gradients, no step
    size, the same answer on every machine."""
    if np.asarray(labels).size == 0:
        raise ValueError("fit_temperature needs at least one image")
    ratio = (math.sqrt(5) - 1) / 2
    low, high = math.log(T_MIN), math.log(T_MAX)
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    while high - low > tol:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(logits, labels, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((low + high) / 2)


@dataclass(frozen=True)
class Bin:
    """One bin of a reliability diagram: confidences in (low, high], how many, their mean and their accuracy."""

    low: float
    high: float
    count: int
    confidence: float  # mean top-label probability in the bin (0 when empty)
    accuracy: float  # share of the bin's predictions that are right (0 when empty)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[Bin]:
    """Top-label confidence against accuracy in `bins` equal-width bins over (0, 1]."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    confidence, right = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        member = index == b
        count = int(member.sum())
        out.append(Bin(b / bins, (b + 1) / bins, count, float(confidence[member].mean()) if count else 0.0,
                       float(right[member].mean()) if count else 0.0))
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the bins' |accuracy - confidence|, weighted by the share of images in each."""
    table = reliability_bins(probs, labels, bins)
    total = sum(b.count for b in table)
    return sum(b.count / total * abs(b.accuracy - b.confidence) for b in table) if total else 0.0


def assess(logits: np.ndarray, labels: np.ndarray, temperature: float, bins: int = ECE_BINS) -> dict:
    """NLL, ECE and reliability bins of raw (T = 1) and calibrated (T = temperature) probabilities."""
    out = {}
    for name, t in (("before", 1.0), ("after", temperature)):
        probs = softmax_t(logits, t)
        out[name] = {"temperature": t, "nll": nll(logits, labels, t),
                     "ece": expected_calibration_error(probs, labels, bins),
                     "bins": [asdict(b) for b in reliability_bins(probs, labels, bins)]}
    return out


@dataclass(frozen=True)
class Calibration:
    """What the weights' metadata says about their temperature: fitted (method "temperature") or not (T = 1)."""

    temperature: float = 1.0
    method: str = "none"
    reason: str = NOT_FITTED  # why there is no temperature (method "none")
    dataset: str | None = None  # what it was fitted on: the dataset and its validation hold-out
    val_size: int = 0
    validation: dict = field(default_factory=dict)  # nll_before, nll_after, ece_before, ece_after on that hold-out
    abstain: dict | None = None  # when to refuse to name a digit (abstain.Abstention.to_meta), fitted beside T

    @property
    def fitted(self) -> bool:
        return self.method == "temperature"

    @property
    def abstention(self):
        """The refusal rules fitted with T (abstain.Abstention), or abstain.NEVER: a model without refuses nothing."""
        from digitlab.abstain import NEVER, Abstention

        return NEVER if self.abstain is None else Abstention.from_meta(self.abstain)

    def note(self) -> str:
        """One line for wherever probabilities are shown."""
        if self.fitted:
            return (f"calibrated: temperature {self.temperature:.4g}, fitted on {self.val_size:,} {self.dataset} "
                    "validation images")
        return f"uncalibrated (temperature 1): {self.reason}"

    def describe(self) -> dict:
        """Plain data for GET /api/model and --json output."""
        return {"calibrated": self.fitted, "temperature": self.temperature, "note": self.note(),
                "abstain": self.abstention.describe() if self.abstain is not None else None}

    def to_meta(self) -> dict:
        return asdict(self)

    @classmethod
    def fitted_on(cls, logits: np.ndarray, labels: np.ndarray, dataset: str, val_size: int) -> "Calibration":
        """Fit T on a validation split's logits and record what it did there."""
        temperature = fit_temperature(logits, labels)
        report = assess(logits, labels, temperature)
        validation = {f"{key}_{when}": report[when][key] for key in ("nll", "ece") for when in ("before", "after")}
        return cls(temperature, "temperature", "", dataset, int(val_size), validation)

    @classmethod
    def from_meta(cls, meta: dict, source: str) -> "Calibration":
        """The record in a weights file's (or an ONNX file's) metadata; none: uncalibrated. A record that is not
        what digitlab writes is a RunError: a file's metadata is anyone's."""
        raw = meta.get(META_KEY)
        if raw is None:
            return cls()
        try:
            record = cls(**raw) if isinstance(raw, dict) else None
        except TypeError:
            record = None
        if record is None or not record.well_formed():
            raise RunError(f"{source}: its {META_KEY!r} metadata is not a temperature digitlab wrote")
        return record

    def well_formed(self) -> bool:
        """Types and ranges a front end relies on: a finite T in [T_MIN, T_MAX], exactly 1 when not fitted."""
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not T_MIN <= t <= T_MAX:
            return False
        try:
            self.abstention
        except (TypeError, ValueError):
            return False
        return (self.method in METHODS and isinstance(self.reason, str) and isinstance(self.validation, dict)
                and isinstance(self.val_size, int) and (self.fitted or t == 1.0)
                and (self.dataset is None or isinstance(self.dataset, str)))


UNCALIBRATED = Calibration()
