"""ONNXPredictor: Predictor's surface (predict, probabilities, describe) on an exported .onnx file.

    p = ONNXPredictor("runs/<run>/model.onnx")     # written by `digitlab export runs/<run>`
    p.predict(["my7.png", pil_image, array])        # -> [Prediction(label=7, probability=0.99, ...)]
    p = ONNXPredictor.from_run("runs/<run>")        # export in memory, check it, load it

The .onnx file alone is enough: export.py stores the model's name, options, normalisation, dataset and
classes in the file's metadata_props, one JSON value per key, the way checkpoint.py stores them in a
safetensors header. Inference runs in onnxruntime on numpy arrays: no autograd, no torch tensors on the
hot path. Images go through the same digitlab.preprocess.to_mnist and the same NORMALIZATIONS constants
as PyTorch's Predictor, so both answer the same for the same picture.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from digitlab.errors import RunError
from digitlab.normalize import NORMALIZATIONS
from digitlab.predict import Prediction, prediction_from_probs

ONNX_FORMAT = "digitlab-onnx-1"  # metadata marker, beside checkpoint.py's "digitlab-checkpoint-1"
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def encode_metadata(meta: dict) -> dict[str, str]:
    """Metadata values as JSON strings (ONNX metadata_props are string to string), plus the marker."""
    return {"format": ONNX_FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}


def decode_metadata(raw: dict[str, str], source: str) -> dict:
    """The digitlab metadata of an ONNX file; a RunError if the file was not written by digitlab."""
    if raw.get("format") != ONNX_FORMAT:
        raise RunError(f"{source} was not exported by digitlab (no {ONNX_FORMAT!r} metadata); "
                       "write one with `digitlab export RUN`")
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
    except json.JSONDecodeError as e:
        raise RunError(f"{source} has corrupted digitlab metadata ({e})") from None
    missing = {"model", "normalization", "classes"} - set(meta)
    if missing or meta["normalization"] not in NORMALIZATIONS:
        raise RunError(f"{source}: digitlab metadata lacks or mangles {', '.join(sorted(missing)) or 'normalization'}")
    return meta


def session_options(threads: int = 0) -> ort.SessionOptions:
    """Sequential execution, all graph optimisations, `threads` intra-op threads (0: onnxruntime's default,
    one per physical core). One inter-op thread: these graphs are chains, nothing runs in parallel."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no per-session warnings on stderr
    return options


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, shifted by the row maximum so large logits do not overflow."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class ONNXPredictor:
    """Inference with onnxruntime on CPU, the model session created once."""

    def __init__(self, model: str | Path | bytes, threads: int = 0, source: str | None = None):
        """`model` is an .onnx path or its bytes; `source` names bytes in messages and describe()."""
        self.source = source or (str(model) if not isinstance(model, bytes) else "<onnx bytes>")
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise RunError(f"{model} does not exist (expected an .onnx file written by `digitlab export`)")
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own pybind exception types, with long messages
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise RunError(f"{self.source} is not a readable ONNX model ({detail})") from None
        self.meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map, self.source)
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([INPUT_NAME], [OUTPUT_NAME]):
            raise RunError(f"{self.source}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got {names}")
        self.threads = threads
        self.normalization = self.meta["normalization"]

    @classmethod
    def from_run(cls, path: str | Path | None = None, checkpoint: str = "best", threads: int = 0) -> "ONNXPredictor":
        """Export a run (no path: the shipped model) to ONNX in memory, check it against PyTorch, load it."""
        from digitlab.export import check_parity, onnx_model_bytes, random_images
        from digitlab.predict import DEFAULT_WEIGHTS
        from digitlab.checkpoint import load_run

        loaded = load_run(path if path is not None else DEFAULT_WEIGHTS, checkpoint)
        predictor = cls(onnx_model_bytes(loaded), threads, source=f"{loaded.source} (exported to ONNX)")
        # Noise images, not digits: enough to check the numbers without needing the dataset at startup.
        check_parity(loaded, predictor.logits, random_images(64), require_same_argmax=False).raise_if_failed()
        return predictor

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    def describe(self) -> dict:
        """What is loaded, as plain data: the same keys as Predictor.describe(), plus the runtime."""
        metrics = self.meta.get("metrics") or {}
        return {"name": self.meta["model"], "args": self.meta.get("model_args", {}),
                "normalization": self.normalization, "dataset": self.meta.get("dataset", "mnist"),
                "classes": list(self.classes), "source": Path(self.source).name,
                "test_accuracy": metrics.get("test_accuracy"), "runtime": f"onnxruntime {ort.__version__}"}

    def logits(self, images) -> np.ndarray:
        """uint8 MNIST-like images (N, 28, 28) (numpy or CPU tensor) -> float32 logits (N, 10)."""
        shift, scale = NORMALIZATIONS[self.normalization]
        pixels = np.asarray(images, dtype=np.uint8).reshape(-1, 1, 28, 28)
        # Same float32 operations, in the same order, as normalize.normalize: (x / 255 - shift) / scale.
        x = (pixels.astype(np.float32) / np.float32(255.0) - np.float32(shift)) / np.float32(scale)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def probabilities(self, images) -> np.ndarray:
        """uint8 MNIST-like images (N, 28, 28) -> probabilities (N, 10), a float32 numpy array."""
        return softmax(self.logits(images))

    def predict(self, images, top_k: int = 3, preprocess: bool = True) -> list[Prediction]:
        """Predict one image or a list: paths, bytes, PIL images, numpy arrays or tensors."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        batch = np.stack([self.to_input(image, preprocess) for image in images])
        return [self.describe_probs(p, top_k) for p in self.probabilities(batch)]

    @staticmethod
    def to_input(image, preprocess: bool = True) -> np.ndarray:
        """One image -> uint8 (28, 28); `preprocess=False` only for images already MNIST-like."""
        if not preprocess:
            return np.ascontiguousarray(np.asarray(image), dtype=np.uint8).reshape(28, 28)
        from digitlab.preprocess import to_mnist

        return to_mnist(image)

    def describe_probs(self, probs, top_k: int = 3) -> Prediction:
        return prediction_from_probs(probs, self.classes, top_k)
