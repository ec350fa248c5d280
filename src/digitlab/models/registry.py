"""The model registry: register_model, create_model, and the checks every builder's options go through.

Models are registered by name with @register_model and built with create_model(name, num_classes, in_chans,
image_size, **kwargs): the shape comes from the dataset (shapes.InputShape), the options from the recipe. A run
folder stores that name, those options and the shape, so a checkpoint is rebuilt through this registry and
never by unpickling code. Softmax lives in one place, the predictor: models return logits.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn as nn

from digitlab.errors import ConfigError
from digitlab.shapes import MNIST_SHAPE, SHAPE_KEYS, InputShape

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# The largest model a config may ask for: 4 GB of fp32 weights, far beyond anything that learns 28x28 digits,
# and small enough that a config.json asking for more is refused before anything is allocated.
MAX_PARAMETERS = 1_000_000_000


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add a model builder to the registry under its function name. A taken name is refused: run folders name
    their model, and a second builder under that name would silently rebuild other runs' checkpoints."""
    if fn.__name__ in _MODELS:
        raise ConfigError(f"a model named {fn.__name__!r} is already registered; choose another name")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered model."""
    return sorted(_MODELS)


def model_defaults(name: str) -> dict:
    """The options a model builder accepts, with their default values: its own options, not the shape
    (num_classes, in_chans, image_size), which comes from the dataset."""
    builder = get_builder(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values() if p.name not in SHAPE_KEYS}


def takes_shape(name: str) -> bool:
    """Whether a builder takes num_classes, in_chans and image_size. Every built-in one does; a user's builder
    registered without them still builds MNIST's shape."""
    parameters = inspect.signature(get_builder(name)).parameters
    return all(key in parameters for key in SHAPE_KEYS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, num_classes: int = 10, in_chans: int = 1,
                 image_size: tuple[int, int] | list[int] = (28, 28), **kwargs) -> nn.Module:
    """Build a registered model for `num_classes` classes of `in_chans`-channel images of `image_size` (height,
    width); the defaults are MNIST's, so existing runs, presets and the shipped weights build unchanged.
    Unknown names or options, and a shape a model cannot take, are a ConfigError, not a TypeError."""
    builder = get_builder(name)
    unknown = set(kwargs) - set(model_defaults(name))
    if unknown:
        raise ConfigError(f"model {name!r} has no option(s) {', '.join(sorted(unknown))}; "
                          f"it takes: {', '.join(model_defaults(name)) or 'none'}")
    shape = InputShape.checked(num_classes, in_chans, image_size)
    if takes_shape(name):
        return builder(**kwargs, num_classes=shape.num_classes, in_chans=shape.in_chans, image_size=shape.image_size)
    if shape != MNIST_SHAPE:
        raise ConfigError(f"model {name!r} builds MNIST's shape only (its builder takes no num_classes, in_chans "
                          f"and image_size), not {shape}")
    return builder(**kwargs)


def check_model_args(name: str, args: dict, shape: InputShape = MNIST_SHAPE) -> nn.Module:
    """Build the model for `shape` on the meta device (shapes only, no memory) to check its options, and refuse
    one of more than MAX_PARAMETERS parameters; returns that shape-only model. Every problem is a one-line
    ConfigError; the shape is the dataset's, so model_args naming it is one too."""
    if not isinstance(args, dict):
        raise ConfigError(f"model_args must be a dict of options, got {type(args).__name__}")
    named = [key for key in SHAPE_KEYS if key in args]
    if named:
        raise ConfigError(f"model_args cannot set {', '.join(named)}: the dataset decides the model's shape")
    try:
        with torch.device("meta"):
            probe = create_model(name, **args, **shape.to_meta())
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"model {name!r} cannot be built with {args} ({detail})") from None
    count = count_parameters(probe)
    if count > MAX_PARAMETERS:
        raise ConfigError(f"model {name!r} with {args} would have {count:,} parameters, more than digitlab's "
                          f"limit of {MAX_PARAMETERS:,}")
    return probe


def flat_features(model: str, channels: int, height: int, width: int) -> int:
    """Channels x height x width of the feature map a model flattens into its head, refused (a ConfigError)
    when the image is too small to leave a map at all."""
    if height < 1 or width < 1:
        raise ConfigError(f"{model}: the image is too small for its layers (they leave a {height}x{width} map)")
    return channels * height * width


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """One side of a conv's or pool's output (a pool's stride is its kernel: pass it), as PyTorch computes it:
    no dilation, rounded down."""
    return (size + 2 * padding - kernel) // stride + 1


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def positive_int(model: str, key: str, value) -> int:
    """A builder option that must be a whole number above zero (JSON gives 1e3 as a float: refused too)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{model}: {key} must be a whole number of at least 1, got {value!r}")
    return value


def probability(model: str, key: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ConfigError(f"{model}: {key} must be a number from 0 up to (not including) 1, got {value!r}")
    return float(value)


def choice(model: str, key: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{model}: {key} must be one of {', '.join(allowed)}, got {value!r}")
    return value
