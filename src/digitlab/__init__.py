"""digitlab: train, compare, explain and serve handwritten-digit classifiers."""
from digitlab.config import TrainConfig, make_config
from digitlab.data import Dataset, load_dataset
from digitlab.errors import DigitlabError
from digitlab.evaluate import evaluate
from digitlab.models import create_model, list_models, register_model
from digitlab.presets import PRESETS
from digitlab.checkpoint import load_run
from digitlab.train import train

__version__ = "0.1.0"
__all__ = ["TrainConfig", "make_config", "Dataset", "load_dataset", "DigitlabError", "evaluate",
           "create_model", "list_models", "register_model", "PRESETS", "load_run", "train"]
