"""An Explainer: a trained PyTorch model plus its normalisation, answering "why this class?" for 28x28 images.

    ex = Explainer.from_run()                        # the shipped model; or from_run("runs/<run>")
    result = ex.explain(images28, method="ig")[0]    # Explanation: label, probabilities, targets, maps (k, 28, 28)
    explain_image(ex, image28, "ig")                 # the same as plain JSON-ready data (REST API, --json)

Images are uint8 MNIST-style 28x28 arrays: what Predictor.to_input (digitlab.preprocess) makes of any picture,
so an explanation is always of exactly what `predict` and the web page feed the model. By default each image
gets two maps: its predicted class and the runner-up ("why 4 and not 9"); `target` asks for one class instead.
Attributions need gradients, so an Explainer always holds the PyTorch model, even when the server predicts
through ONNX Runtime (for_predictor loads the same weights file again).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digitlab.backends import TorchBackend
from digitlab.checkpoint import LoadedModel
from digitlab.device import use_channels_last
from digitlab.errors import ConfigError
from digitlab.attribution.attributions import METHOD_NAMES, ExplainError, attribute, check_gradcam, check_method
from digitlab.normalize import normalize
from digitlab.predict import DEFAULT_WEIGHTS, Predictor, softmax
from digitlab.runs import load_run

JSON_DECIMALS = 6  # attribution values in JSON: enough to rank every pixel, a third of float32's repr


@dataclass
class Explanation:
    """One image's explanation; every array is numpy."""

    image: np.ndarray  # (28, 28) uint8: what the model saw
    probabilities: np.ndarray  # (classes,) float32
    label: int  # the predicted class
    targets: list[int]  # the class each map explains: [predicted, runner-up] or [target]
    maps: np.ndarray  # (len(targets), 28, 28) float32 attributions
    method: str
    classes: tuple[str, ...]

    def to_dict(self, decimals: int = JSON_DECIMALS) -> dict:
        """Plain data for strict JSON: every number finite (attribute() already zeroes non-finite values)."""
        return {"label": self.label, "class_name": self.classes[self.label],
                "probability": round(float(self.probabilities[self.label]), 6),
                "probabilities": [round(float(p), 6) for p in self.probabilities], "method": self.method,
                "maps": [{"class": t, "class_name": self.classes[t],
                          "probability": round(float(self.probabilities[t]), 6),
                          "attribution": rounded(m, decimals)}
                         for t, m in zip(self.targets, self.maps)]}


def rounded(attribution: np.ndarray, decimals: int) -> list:
    """A map as nested lists, `decimals` places below its largest magnitude's first digit: a saliency map peaking
    at 3e-5 keeps its shape instead of rounding to zeros."""
    peak = float(np.abs(attribution).max())
    extra = max(0, -math.floor(math.log10(peak))) if peak > 0 else 0
    return np.round(attribution.astype(np.float64), decimals + extra).tolist()


class Explainer:
    """Attributions, activations and features of one PyTorch model, in eval mode on CPU."""

    def __init__(self, model: nn.Module, name: str, normalization: str, classes: tuple[str, ...], dataset: str,
                 temperature: float = 1.0):
        self.model = model.eval()
        self.name, self.normalization, self.classes, self.dataset = name, normalization, tuple(classes), dataset
        self.temperature = temperature  # the model's calibration: its probabilities read as the Predictor's do
        self.memory_format = use_channels_last(self.model, "cpu")  # as Predictor and training run it
        self.background = float(self.to_input(np.zeros((1, 28, 28), np.uint8)).flatten()[0])

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> "Explainer":
        """The explainer of a loaded checkpoint; its maps, sanity checks and figures are drawn on 28x28 grey
        images, so a model of another shape is a one-line ConfigError here rather than a reshape error later."""
        if not loaded.shape.is_mnist:
            raise ConfigError(f"explain draws 1x28x28 images; {loaded.source} reads {loaded.shape}")
        return cls(loaded.model, loaded.model_name, loaded.normalization, loaded.classes, loaded.dataset,
                   loaded.calibration.temperature)

    @classmethod
    def from_run(cls, path: str | Path | None = None, checkpoint: str = "best") -> "Explainer":
        """A run folder or .safetensors file, as Predictor.from_run; no path: the model shipped with digitlab."""
        return cls.from_loaded(load_run(path if path is not None else DEFAULT_WEIGHTS, checkpoint))

    @classmethod
    def for_predictor(cls, predictor: Predictor) -> "Explainer":
        """The model behind a Predictor: its own module if it runs eager PyTorch, else its weights reloaded."""
        info = predictor.info
        backend = predictor.backend
        if isinstance(backend, TorchBackend) and not isinstance(backend.model, torch.jit.ScriptModule):
            return cls(backend.model, info.name, info.normalization, info.classes, info.dataset, predictor.temperature)
        source = Path(info.source)
        if source.suffix != ".safetensors" or not source.is_file():
            raise ExplainError(f"explanations need the model's PyTorch weights; {source.name} is not a "
                               ".safetensors checkpoint (serve or explain a run folder instead)")
        return cls.from_loaded(load_run(source))

    def memory_format_model(self, model: nn.Module) -> nn.Module:
        """Another model (e.g. a randomised copy) in this one's memory format, so to_input's batches fit it."""
        use_channels_last(model, "cpu")
        return model.eval()

    def to_input(self, images28) -> torch.Tensor:
        """uint8 (N, 28, 28) -> the normalised float batch (N, 1, 28, 28) the model was trained on."""
        pixels = torch.from_numpy(np.ascontiguousarray(images28, dtype=np.uint8)).reshape(-1, 28, 28)
        return self.memory_format(normalize(pixels, self.normalization))

    def probabilities(self, images28) -> np.ndarray:
        """softmax(logits / T): calibrated with the model's temperature, the numbers predict and the page show."""
        with torch.inference_mode():
            return softmax(self.model(self.to_input(images28)).float().numpy() / np.float32(self.temperature))

    def check_target(self, target: int | None) -> int | None:
        if target is not None and not (isinstance(target, int) and 0 <= target < len(self.classes)):
            raise ExplainError(f"target must be a class in 0..{len(self.classes) - 1}, got {target!r}")
        return target

    def check_method(self, method: str) -> str:
        check_method(method)
        if method == "gradcam":
            check_gradcam(self.model, f"model {self.name!r}")
        return method

    def explain(self, images28, method: str = "ig", target: int | None = None) -> list[Explanation]:
        """Explanations of uint8 (N, 28, 28) images, all attributions in one batched call."""
        self.check_method(method)
        self.check_target(target)
        images = np.ascontiguousarray(images28, dtype=np.uint8).reshape(-1, 28, 28)
        if images.shape[0] == 0:
            raise ExplainError("no images to explain")
        probs = self.probabilities(images)
        order = np.argsort(-probs, axis=1, kind="stable")
        targets = [[int(o[0]), int(o[1])] if target is None else [target] for o in order]
        flat = [t for ts in targets for t in ts]
        x = self.to_input(np.repeat(images, [len(ts) for ts in targets], axis=0))
        maps = attribute(self.model, x, flat, method, self.background, f"model {self.name!r}")
        out, k = [], 0
        for image, p, o, ts in zip(images, probs, order, targets):
            out.append(Explanation(image, p, int(o[0]), ts, maps[k:k + len(ts)], method, self.classes))
            k += len(ts)
        return out


def explain_image(explainer: Explainer, image28: np.ndarray, method: str = "ig", target: int | None = None,
                  layers: bool = False) -> dict:
    """One 28x28 uint8 image -> plain data: label, probabilities, the map(s), and optionally each layer's
    activations, small (digitlab.attribution.activations.compact). What POST /api/explain answers."""
    result = explainer.explain(image28[None], method, target)[0].to_dict(decimals=4)
    result["method_name"] = METHOD_NAMES[method]
    if layers:
        from digitlab.attribution.activations import compact, layer_activations

        result["layers"] = compact(layer_activations(explainer, image28))
    return result


def explain(images, run: str | Path | None = None, method: str = "ig", target: int | None = None,
            checkpoint: str = "best", preprocess: bool = True) -> list[Explanation]:
    """digitlab.explain: explanations of images (paths, bytes, PIL images, arrays; one or a list) by a run's
    model, or the shipped one. Each picture goes through digitlab.preprocess as in Predictor.predict."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ExplainError("no images to explain")
    explainer = Explainer.from_run(run, checkpoint)
    explainer.check_method(method)
    explainer.check_target(target)
    return explainer.explain(np.stack([Predictor.to_input(im, preprocess) for im in images]), method, target)
