"""digitlab: train, compare, explain and serve handwritten-digit classifiers."""
import importlib.metadata

from digitlab.config import TrainConfig, make_config
from digitlab.data import Dataset, load_dataset
from digitlab.errors import DigitlabError
from digitlab.evaluate import evaluate
from digitlab.models import create_model, list_models, register_model
from digitlab.checkpoint import load_run
from digitlab.predict import Predictor
from digitlab.presets import PRESETS, preset_config
from digitlab.train import train

try:  # pyproject.toml holds the one version number; the installed metadata carries it here
    __version__ = importlib.metadata.version("digitlab")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path that was never pip-installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    """digitlab.explain, imported on first use, so `import digitlab` stays as quick as it was. The package is
    callable: digitlab.explain(images, run=None, method="ig") is digitlab.explain.explain(...)."""
    if name == "explain":
        import digitlab.explain

        return digitlab.explain
    raise AttributeError(f"module 'digitlab' has no attribute {name!r}")


__all__ = ["TrainConfig", "make_config", "Dataset", "load_dataset", "DigitlabError", "evaluate",
           "create_model", "list_models", "register_model", "PRESETS", "preset_config", "load_run",
           "train", "Predictor", "explain"]
