"""TrainConfig: every knob of a training run in one flat dataclass, saved as the run's config.json.

A preset (presets.py) is a partial TrainConfig; CLI flags override fields by name. Unknown keys and
values of the wrong type or range are a ConfigError that says which field and what it accepts.
"""
from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields

from digitlab.augment_spec import AUGMENTATIONS
from digitlab.errors import ConfigError
from digitlab.normalize import NORMALIZATIONS

OPTIMIZERS = ("sgd", "adam", "adamw", "adamw-lean", "adadelta", "rmsprop")
SCHEDULES = ("constant", "step", "onecycle", "cosine")


@dataclass
class TrainConfig:
    # --- what to train
    preset: str | None = None  # the preset these values started from (informational)
    dataset: str = "mnist"  # mnist | fashion-mnist
    data_dir: str | None = None  # folder holding the IDX files; default: the search order in data.py
    model: str = "cnn"  # any name from `digitlab models`
    model_args: dict = field(default_factory=dict)  # builder options, e.g. {"hidden_size": 128}
    normalization: str = "standard"  # none | unit ([0,1]) | standard (MNIST mean/std) | symmetric ([-1,1])
    # --- optimisation
    optimizer: str = "adamw"  # sgd | adam | adamw | adamw-lean (AdamW, no torch.optim import) | adadelta | rmsprop
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.0  # SGD/RMSprop momentum; 0.9 is the usual alternative
    nesterov: bool = False  # Nesterov momentum (SGD only)
    weight_decay: float = 0.0  # L2 (SGD/Adam) or decoupled (AdamW) weight decay
    schedule: str = "constant"  # constant | step (x gamma every step_epochs) | onecycle | cosine
    step_epochs: int = 1  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    warmup: float = 0.2  # onecycle: fraction of training spent rising to the peak lr
    label_smoothing: float = 0.0  # cross-entropy label smoothing; 0.1 helps the bigger nets
    batch_size: int = 64  # global batch size (split across ranks under torchrun)
    epochs: int = 1  # passes over the training set
    schedule_epochs: float = 0.0  # length of the lr schedule in epochs, may be fractional; 0: `epochs`
    augment: str = "none"  # none | affine (rotate/scale/shift on the device) | affine+elastic | flip+shift
    ema: float = 0.0  # weight averaging decay per step (e.g. 0.999); 0 turns it off
    pen_digits: int = 0  # MNIST only: append this many procedural pen digits (seeds 0.., synthetic.py) to training
    non_digits: int = 0  # MNIST only: outlier exposure, this many generated non-digits (+ half as many page-drawn
    # digits) in training, their answer pushed towards uniform so that "not a digit" can be told (abstain.py)
    outlier_weight: float = 0.5  # with non_digits: the weight of their loss (cross-entropy to uniform)
    # --- evaluation and logging
    val_size: int = 0  # training images held out for validation (stratified, same for every seed); 0: none
    # With a hold-out, the best checkpoint and target_accuracy go by validation accuracy and the test set is
    # only reported; without one they go by test accuracy, as the faithful recipes' sources do (split.py).
    fixed_schedule: bool = False  # select nothing: no best.safetensors, the model is last; test only reported
    # For a schedule tuned on a hold-out, then trained on every training image (val_size 0).
    eval_test: bool = True  # score the test set at each evaluation; off in sweep trials, whose choices never see it
    eval_every: int = 0  # also evaluate (validation and the full test set) every N steps; 0: only at epoch end
    log_every: int = 100  # refresh the progress bar's loss/accuracy every N steps
    eval_batch_size: int = 1000  # batch size for evaluation (no gradients, so larger is fine)
    tta: bool = False  # test-time augmentation at evaluation (average over small shifts)
    tta_mirror: bool = False  # with tta, the mirror images of those views too (clothes, never digits): 2x the cost
    eval_amp: bool = False  # evaluate under the training autocast too (bf16 where amp/cpu_amp has it on): ~2x cheaper
    target_accuracy: float = 0.0  # stop as soon as validation (without val_size: test) accuracy reaches this; 0: never
    max_steps: int = 0  # stop after this many optimiser steps (0: no limit); smoke tests, and `fast`'s fixed length
    # --- machine
    seed: int = 0  # seeds python, numpy and torch; also fixes the data order of every epoch
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:1 | mps
    threads: int = 0  # CPU threads for torch; 0: as many CPUs as are idle at the start, at most torch's default
    amp: bool = True  # bf16 autocast on CUDA
    cpu_amp: bool = False  # bf16 autocast on CPUs with bf16 in hardware (AMX, AVX512-BF16): 1.1-2.5x for conv nets
    channels_last: bool = True  # channels_last memory format: conv nets on CUDA, DigitNet everywhere (device.py)
    compile: bool = False  # torch.compile the model (worth it for long CUDA runs)
    plot: bool = True  # redraw curves.png after every epoch (matplotlib: ~0.7 s of `fast`'s few seconds, so off there)
    tensorboard: bool = True  # TensorBoard event files in the run folder (`tensorboard --logdir runs`; extra `track`)
    out: str | None = None  # run folder; default runs/<time>-<name>

    def validate(self) -> "TrainConfig":
        """Check ranges, choices and the model's options (before any run folder exists, so a bad value leaves
        nothing behind); returns self so calls chain."""
        from digitlab.data import DATASETS
        from digitlab.models import check_model_args, list_models

        choices = {"dataset": tuple(DATASETS), "normalization": tuple(NORMALIZATIONS),
                   "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": tuple(AUGMENTATIONS),
                   "model": tuple(list_models())}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} {getattr(self, key)!r} is not one of: {', '.join(allowed)}")
        positive = ("lr", "batch_size", "epochs", "eval_batch_size", "step_epochs", "log_every")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)!r}")
        non_negative = ("momentum", "weight_decay", "eval_every", "max_steps", "threads", "ema", "schedule_epochs",
                        "val_size", "pen_digits", "non_digits", "outlier_weight")
        for key in non_negative:
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be zero or positive, got {getattr(self, key)!r}")
        unit = ("label_smoothing", "target_accuracy", "warmup", "ema", "gamma")
        for key in unit:
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key} must be between 0 and 1, got {getattr(self, key)!r}")
        if self.ema >= 1:
            raise ConfigError("ema must be below 1")
        if self.pen_digits and self.dataset != "mnist":
            raise ConfigError(f"pen_digits are handwritten digits: they only go with mnist, not {self.dataset}")
        if self.non_digits and self.dataset != "mnist":
            raise ConfigError(f"non_digits teach a digit reader to refuse: they only go with mnist, not {self.dataset}")
        if self.non_digits > 10**6:  # non_digits.TRAIN_SEEDS holds 10^6 seeds
            raise ConfigError(f"non_digits can be at most 1000000 (the training seeds), got {self.non_digits}")
        if self.pen_digits > 10**6:  # pen.TRAIN_SEEDS holds 10^6 seeds; the rest are the benchmark's
            raise ConfigError(f"pen_digits can be at most 1000000 (the training seeds), got {self.pen_digits}")
        if self.fixed_schedule and self.target_accuracy:
            raise ConfigError("target_accuracy stops a run on a measured accuracy; a fixed_schedule selects nothing "
                              "and runs every epoch: use one or the other")
        if not self.eval_test and (not self.val_size or self.fixed_schedule):
            raise ConfigError("eval_test off leaves only the validation split to evaluate and select on: it needs "
                              "val_size > 0 and no fixed_schedule")
        if self.tta_mirror and not self.tta:
            raise ConfigError("tta_mirror adds mirror images to test-time augmentation: it needs tta too")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ConfigError("nesterov needs optimizer sgd with a positive momentum "
                              f"(got optimizer {self.optimizer!r}, momentum {self.momentum})")
        check_model_args(self.model, self.model_args)  # on the meta device: nothing is allocated
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def field_types() -> dict[str, type]:
    """Field name -> the concrete type a value must have (Optional[X] gives X)."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = args[0]
        out[name] = typing.get_origin(hint) or hint
    return out


def coerce(key: str, value, expected: type):
    """Check (and for CLI strings, convert) one value; ints are accepted where floats are."""
    if value is None:
        return None
    if isinstance(value, str) and expected is not str:
        try:
            if expected is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if expected is dict:
                return parse_model_args(value)
            return expected(value)
        except ValueError:
            raise ConfigError(f"{key} expects {expected.__name__}, got {value!r}") from None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key} expects {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_model_args(text: str) -> dict:
    """'hidden_size=128,num_layers=2' or a JSON object -> dict with JSON-typed values."""
    text = text.strip()
    if text.startswith("{"):
        return json_object(text, "model_args")
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ConfigError(f"model_args: expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def make_config(base: dict | None = None, **overrides) -> TrainConfig:
    """A validated TrainConfig from a base dict (a preset or a saved config) plus overrides."""
    types_ = field_types()
    merged = dict(base or {})
    merged.update(overrides)
    unknown = set(merged) - set(types_)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(sorted(unknown))}")
    values = {k: coerce(k, v, types_[k]) for k, v in merged.items()}
    base_model = (base or {}).get("model")
    if "model" in overrides and overrides["model"] != base_model and "model_args" not in overrides:
        values.pop("model_args", None)  # a preset's model options do not carry over to another model
    return TrainConfig(**values).validate()


def config_from_json(text: str) -> TrainConfig:
    """Rebuild a TrainConfig from a run's config.json; unknown keys are an error, not ignored."""
    return make_config(json_object(text, "config.json"))


def json_object(text: str, what: str) -> dict:
    """Parse `text` as a JSON object, or a ConfigError naming `what`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must hold a JSON object")
    return value


def config_fields() -> list[tuple[str, type, object]]:
    """(name, type, default) of every field, for building CLI flags."""
    types_ = field_types()
    defaults = TrainConfig()
    return [(f.name, types_[f.name], getattr(defaults, f.name)) for f in fields(TrainConfig)]
