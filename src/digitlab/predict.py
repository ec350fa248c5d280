"""Predictor: a loaded model plus its normalisation, answering label and probabilities for images.

    p = Predictor.from_run("runs/<run>")          # or Predictor.from_run() for the shipped model
    p.predict(["my7.png", pil_image, array])        # -> [Prediction(label=7, probability=0.99, ...)]

Images that are not already MNIST tensors go through digitlab.preprocess (grey, polarity, crop to
a 20 px box, centre of mass at the centre), the same function the web page and REST API use.
Softmax lives here, in one place: models return logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from digitlab.normalize import normalize
from digitlab.checkpoint import LoadedModel, load_run

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default.safetensors"


@dataclass
class Prediction:
    label: int
    probability: float
    probabilities: list[float]
    class_name: str
    top_k: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"label": self.label, "class_name": self.class_name, "probability": self.probability,
                "probabilities": self.probabilities, "top_k": [list(t) for t in self.top_k]}


class Predictor:
    """Inference on CPU (or a given device) with a model loaded once."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu"):
        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()

    @classmethod
    def from_run(cls, path: str | Path | None = None, checkpoint: str = "best",
                 device: str | torch.device = "cpu") -> "Predictor":
        """Load a run folder or .safetensors file; no path means the model shipped with digitlab."""
        return cls(load_run(path if path is not None else DEFAULT_WEIGHTS, checkpoint), device)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.loaded.classes

    def describe(self) -> dict:
        """What is loaded, as plain data (for `GET /api/model` and --json output)."""
        metrics = self.loaded.meta.get("metrics") or {}
        return {"name": self.loaded.model_name, "args": self.loaded.model_args,
                "normalization": self.loaded.normalization, "dataset": self.loaded.dataset,
                "classes": list(self.classes), "source": self.loaded.source.name,
                "test_accuracy": metrics.get("test_accuracy")}

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 MNIST-like images (N, 28, 28) -> probabilities (N, 10) on CPU."""
        x = normalize(images.to(self.device), self.loaded.normalization)
        return self.model(x).float().softmax(1).cpu()

    def predict(self, images, top_k: int = 3, preprocess: bool = True) -> list[Prediction]:
        """Predict one image or a list: paths, bytes, PIL images, numpy arrays or tensors."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        batch = torch.stack([self.to_input(image, preprocess) for image in images])
        return [self.describe_probs(p, top_k) for p in self.probabilities(batch)]

    @staticmethod
    def to_input(image, preprocess: bool = True) -> torch.Tensor:
        """One image -> uint8 (28, 28); `preprocess=False` only for images already MNIST-like."""
        if not preprocess:
            array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            return torch.from_numpy(np.array(array, dtype=np.uint8).reshape(28, 28))  # a copy: input may be read-only
        from digitlab.preprocess import to_mnist

        return torch.from_numpy(to_mnist(image))

    def describe_probs(self, probs: torch.Tensor, top_k: int = 3) -> Prediction:
        return prediction_from_probs(probs.numpy(), self.classes, top_k)


def prediction_from_probs(probs, classes: tuple[str, ...], top_k: int = 3) -> Prediction:
    """Ten probabilities -> a Prediction with the top k; shared by the PyTorch and ONNX predictors."""
    probs = np.asarray(probs, dtype=np.float32)
    order = np.argsort(-probs, kind="stable")[:max(1, min(top_k, probs.size))]
    label = int(order[0])
    return Prediction(label, float(probs[label]), [round(float(p), 6) for p in probs],
                      classes[label], [(int(i), float(probs[i])) for i in order])
