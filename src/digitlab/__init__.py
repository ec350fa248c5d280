"""digitlab: train, compare, explain and serve handwritten-digit classifiers.

The names below are imported on first use (PEP 562), not with the package: most of them need PyTorch, whose
import is about 1.5 s of CPU, and `digitlab predict` with the shipped model runs on ONNX Runtime without it.
"""
import importlib
import importlib.metadata

try:  # pyproject.toml holds the one version number; the installed metadata carries it here
    __version__ = importlib.metadata.version("digitlab")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path that was never pip-installed
    __version__ = "0+unknown"

_WHERE = {"TrainConfig": "config", "make_config": "config", "Dataset": "data", "load_dataset": "data",
          "DigitlabError": "errors", "evaluate": "evaluation", "create_model": "models", "list_models": "models",
          "register_model": "models", "PRESETS": "presets", "preset_config": "presets", "load_run": "runs",
          "train": "training", "Predictor": "predict", "Subscriber": "events", "explain": "attribution"}
__all__ = [*_WHERE]


def __getattr__(name: str):
    """`digitlab.Predictor` and the others: the attribute from its module, imported now."""
    if name not in _WHERE:
        raise AttributeError(f"module 'digitlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"digitlab.{_WHERE[name]}"), name)
    globals()[name] = value  # once found, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])

