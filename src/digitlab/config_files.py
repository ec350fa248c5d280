"""Recipe files: a TrainConfig as TOML, for `digitlab train --config FILE` and a sweep's best trial.

    # best.toml
    model = "digitnet"
    lr = 0.0042
    epochs = 2
    model_args = { width = 24 }

A file holds TrainConfig fields by name (any subset); `digitlab train --config FILE` starts from the file, then
applies the command line's flags. Unknown keys and wrong types are a ConfigError naming the file, as for flags.
Fields whose value is None (no data_dir, no out) are left out: TOML has no null, and None is their default.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

from digitlab.config import TrainConfig, field_types
from digitlab.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

MAX_CONFIG_BYTES = 1 << 20  # a recipe is a few hundred bytes; a megabyte is not a recipe


def read_config_file(path: str | Path) -> dict:
    """The TrainConfig fields a TOML file sets, checked against the field names (values are checked when the
    config is made); a ConfigError naming the file for anything else."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is not a recipe file: over {MAX_CONFIG_BYTES:,} bytes")
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path} ({getattr(e, 'strerror', None) or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e})") from None
    unknown = sorted(set(values) - set(field_types()))
    if unknown:
        raise ConfigError(f"{path}: unknown config key(s): {', '.join(unknown)} (see `digitlab train --help`)")
    if "model_args" in values and not isinstance(values["model_args"], dict):
        raise ConfigError(f"{path}: model_args must be a table, e.g. model_args = {{ width = 16 }}")
    return values


def config_toml(cfg: TrainConfig, comment: str = "") -> str:
    """cfg as a TOML recipe file that read_config_file reads back to the same TrainConfig."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for key, value in asdict(cfg).items():
        if value is None:
            continue
        lines.append(f"{key} = {toml_value(value, key)}")
    return "\n".join(lines) + "\n"


def write_config_file(cfg: TrainConfig, path: str | Path, comment: str = "") -> Path:
    """Write config_toml(cfg) to path (atomically: a reader never sees half a recipe)."""
    from digitlab.atomic import write_text_atomic

    path = Path(path)
    write_text_atomic(path, config_toml(cfg, comment))
    return path


def toml_value(value, key: str) -> str:
    """One TOML value: strings as JSON-escaped basic strings (valid TOML), numbers, booleans, inline tables and
    arrays; anything else (a float that TOML cannot hold) is a ConfigError naming the key."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: {value} cannot be written to a recipe file")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(str(k))} = {toml_value(v, f'{key}.{k}')}" for k, v in value.items()
                          if v is not None)
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v, key) for v in value) + "]"
    raise ConfigError(f"{key}: a {type(value).__name__} cannot be written to a recipe file")
