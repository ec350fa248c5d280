"""The search space of a sweep: which recipe fields a trial samples, and from what.

    --param lr=1e-4:1e-2:log          a float between LOW and HIGH, log-uniform (an int field: an int range)
    --param weight_decay=0:1e-3       uniform
    --param batch_size=64,128,256     one of the listed values
    --param model_args.width=8:32     a model option: any key the model's builder takes

or the same in a TOML file (`--space FILE.toml`), one table per parameter:

    [lr]
    low = 1e-4
    high = 1e-2
    log = true
    [batch_size]
    choices = [64, 128, 256]

Names are TrainConfig fields or model_args.KEY; every value is checked against the field's type here, before any
trial runs, and model options when the first trial's recipe is made (config.validate builds the model on the meta
device, so that costs nothing).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from digitlab.config import coerce, field_types
from digitlab.errors import ConfigError

# Fields a sweep owns or that say where and how a trial runs, never what it learns: not searchable.
NOT_SEARCHABLE = ("out", "preset", "data_dir", "device", "threads", "eval_test", "plot", "tensorboard", "seed")


@dataclass(frozen=True)
class Param:
    """One searched field: a range (low, high, log) or a list of choices."""

    name: str  # a TrainConfig field or model_args.KEY
    kind: type  # float, int, or for choices whatever the values are
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        """This parameter's value for an Optuna trial."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.choices:
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"


def field_type(name: str) -> type | None:
    """The type a parameter's values must have: the TrainConfig field's, or None for a model option (any JSON
    value the builder accepts); a ConfigError for anything else."""
    if name.startswith("model_args."):
        if not name.removeprefix("model_args."):
            raise ConfigError(f"--param {name}: name the model option, e.g. model_args.width")
        return None
    types = field_types()
    if name not in types:
        raise ConfigError(f"--param {name}: not a recipe field (see `digitlab train --help`) nor model_args.KEY")
    if name in NOT_SEARCHABLE or types[name] is dict:
        raise ConfigError(f"--param {name}: not searchable (it says where or how a trial runs, or the sweep sets it)")
    return types[name]


def parse_value(name: str, text: str, kind: type | None):
    """One value from the command line, typed as the field wants (a model option: JSON, else the string)."""
    if kind is None:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return coerce(name, text, kind)


def make_range(name: str, low, high, log: bool, kind: type | None) -> Param:
    """A checked range: numbers, low below high, positive for a log scale."""
    number = int if kind is int or (kind is None and isinstance(low, int) and isinstance(high, int)) else float
    if kind not in (None, int, float):
        raise ConfigError(f"--param {name}: a {kind.__name__} field takes a list of values (a,b,c), not a range")
    try:
        low, high = number(low), number(high)
    except (TypeError, ValueError):
        raise ConfigError(f"--param {name}: range ends must be numbers, got {low!r} and {high!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ConfigError(f"--param {name}: empty range {low:g}:{high:g} (LOW must be below HIGH)")
    if log and low <= 0:
        raise ConfigError(f"--param {name}: a log range needs LOW > 0, got {low:g}")
    return Param(name, number, low, high, log)


def make_choices(name: str, values: list, kind: type | None) -> Param:
    """A checked list of choices: at least one, each of the field's type, no repeats."""
    if kind is not None:
        values = [coerce(name, v, kind) for v in values]
    if not values:
        raise ConfigError(f"--param {name}: no values to choose from")
    if len(set(map(json.dumps, values))) < len(values):
        raise ConfigError(f"--param {name}: a value is listed twice")
    if any(isinstance(v, (dict, list)) for v in values):
        raise ConfigError(f"--param {name}: choices must be numbers, strings or booleans")
    return Param(name, kind or object, choices=tuple(values))


def parse_param(text: str) -> Param:
    """NAME=LOW:HIGH[:log] or NAME=a,b,c."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name or not spec.strip():
        raise ConfigError(f"--param {text!r}: expected NAME=LOW:HIGH[:log] or NAME=a,b,c")
    kind = field_type(name)
    parts = spec.split(":")
    if len(parts) in (2, 3) and "," not in spec:
        if len(parts) == 3 and parts[2] != "log":
            raise ConfigError(f"--param {text!r}: the third part of a range can only be 'log'")
        return make_range(name, parse_value(name, parts[0], float), parse_value(name, parts[1], float),
                          len(parts) == 3, kind)
    return make_choices(name, [parse_value(name, v.strip(), kind) for v in spec.split(",")], kind)


def read_space_file(path: str | Path) -> list[Param]:
    """The parameters of a TOML space file: one table per name with low/high[/log] or choices."""
    from digitlab.config_files import tomllib

    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"space file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read space file {path} ({e})") from None
    params = []
    for name, table in flatten_model_args(tables).items():
        kind = field_type(name)
        if not isinstance(table, dict) or not ({"low", "high"} <= set(table) or "choices" in table):
            raise ConfigError(f"{path}: [{name}] needs low and high (and optionally log = true), or choices = [...]")
        extra = set(table) - {"low", "high", "log", "choices"}
        if extra:
            raise ConfigError(f"{path}: [{name}] has unknown key(s) {', '.join(sorted(extra))}")
        if "choices" in table:
            params.append(make_choices(name, list(table["choices"]), kind))
        else:
            params.append(make_range(name, table["low"], table["high"], bool(table.get("log", False)), kind))
    return params


def flatten_model_args(tables: dict) -> dict:
    """[model_args.width] is read by TOML as a nested table: name it model_args.width like --param does."""
    out = dict(tables)
    nested = out.pop("model_args", None)
    if isinstance(nested, dict):
        out.update({f"model_args.{key}": value for key, value in nested.items()})
    return out


def search_space(param_texts: list[str], space_file: str | None) -> list[Param]:
    """Every searched parameter from --space and --param (a name given twice is an error)."""
    params = (read_space_file(space_file) if space_file else []) + [parse_param(t) for t in param_texts]
    names = [p.name for p in params]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"searched twice: {', '.join(twice)}")
    if not params:
        raise ConfigError("nothing to search: give --param NAME=LOW:HIGH or NAME=a,b,c, or --space FILE.toml")
    return params


def apply_params(base: dict, values: dict) -> dict:
    """A recipe dict with a trial's sampled values: fields replaced, model_args.KEY merged into model_args."""
    recipe = dict(base)
    options = dict(recipe.get("model_args") or {})
    for name, value in values.items():
        if name.startswith("model_args."):
            options[name.removeprefix("model_args.")] = value
        else:
            recipe[name] = value
    recipe["model_args"] = options
    return recipe
