"""Predictor: a loaded model plus its normalisation, answering label and probabilities for images.

    p = Predictor.from_run("runs/<run>")                    # or Predictor.from_run() for the shipped model
    p = Predictor.from_run("runs/<run>", runtime="onnx")    # the same model, exported in memory, in onnxruntime
    p = Predictor.from_onnx("runs/<run>/model.onnx")        # a file written by `digitlab export`, alone
    p = Predictor.from_path("model.onnx")                   # a run, a .safetensors or an .onnx file: serve, eval
    p = Predictor.from_shipped()                            # the shipped model, on ONNX Runtime when it can be
    p.predict(["my7.png", pil_image, array])                # -> [Prediction(label=7, probability=0.99, ...)]
    for r in p.predict_files(paths):                        # a folder's worth: FileResult(path, image, prediction,
        print(r.path, r.prediction or r.error)              #   error), in order, streamed in chunks

One class whatever runs the model: a backend (digitlab.backends: TorchBackend, OnnxBackend) turns normalised
batches into logits; preprocessing, normalisation, softmax, top-k and describe() are here, once, so both
runtimes answer the same for the same picture. Images that are not already MNIST tensors go through
digitlab.preprocess (grey, polarity, crop to a 20 px box, centre of mass at the centre), the same function the
web page and REST API use. Softmax lives here, in one place: models and backends return logits, and the
probabilities are softmax(logits / T) with the temperature T stored in the model's metadata (calibration.py; 1 for
a model without one), so every front end shows the same calibrated numbers.

A model is checked, not trusted: on load, a probe runs two fixed images (blank, a plain stroke) and refuses
the model (ModelError, one line) unless it answers one row per image and one finite logit per class named in
its metadata; every later call is checked the same way, so a NaN never becomes a label or a JSON
`NaN`. ONNX calls also run under a deadline (backends.deadline_for; `deadline_s`), the probe included, so a
graph that loops for ever is refused at load in bounded time. The probe costs 1-2 ms (one model call). An .onnx
file (from_onnx, and from_path for `serve` and `eval`) is first tried in a capped probe process
(digitlab.onnx_guard): creating its session can take seconds and gigabytes before any call has a deadline.

PyTorch is imported only by what needs it (a TorchBackend, loading a checkpoint): a Predictor on ONNX Runtime,
such as `digitlab predict`'s shipped model (from_shipped), runs on numpy alone and starts about 1.5 s of CPU sooner.
"""
from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from digitlab.backends import DEADLINE_S, OnnxBackend, TorchBackend
from digitlab.calibration import UNCALIBRATED, Calibration
from digitlab.cpus import cpu_count
from digitlab.errors import ConfigError, DigitlabError, ModelError
from digitlab.normalize import normalize, normalize_array
from digitlab.preprocess.reading import _is_tensor
from digitlab.shapes import MNIST_SHAPE, InputShape

if TYPE_CHECKING:
    import torch

    from digitlab.checkpoint import LoadedModel

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default.safetensors"
# The same model exported to ONNX by scripts/export_shipped_onnx.py, with DEFAULT_WEIGHTS' sha256 in its metadata
DEFAULT_ONNX = DEFAULT_WEIGHTS.with_suffix(".onnx")
WEIGHTS_SHA256 = "weights_sha256"  # the metadata key that ties DEFAULT_ONNX to the weights it was exported from
RUNTIMES = ("torch", "onnx")
BATCH = 1000  # images per backend call: bounds memory for large batches, one call for the usual few
CHUNK = 256  # files per step of predict_files: results stream out chunk by chunk, memory stays bounded
POOL_MIN_FILES = 64  # below this, starting worker processes costs more than it saves (benchmarks/predict_folder.py)


class Backend(Protocol):
    runtime: str  # e.g. "torch 2.5.1", "onnxruntime 1.20.0"

    def logits(self, x: torch.Tensor) -> np.ndarray:
        """Normalised float32 (N, C, H, W) -> float32 logits (N, classes): (N, 1, 28, 28) -> (N, 10) for MNIST."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model is and how to feed it: from a checkpoint's metadata or an exported file's."""

    name: str
    args: dict
    normalization: str
    dataset: str
    classes: tuple[str, ...]
    source: str  # the file it came from, for describe() and messages
    metrics: dict | None = None
    calibration: Calibration = UNCALIBRATED  # the temperature every probability is computed with
    shape: InputShape = MNIST_SHAPE  # the images it reads (channels, size) and its classes, from the metadata

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> "ModelInfo":
        return cls(loaded.model_name, loaded.model_args, loaded.normalization, loaded.dataset, loaded.classes,
                   str(loaded.source), loaded.meta.get("metrics"), loaded.calibration, loaded.shape)

    @classmethod
    def from_meta(cls, meta: dict, source: str) -> "ModelInfo":
        """From metadata as export.model_metadata writes it (checked by backends.decode_metadata)."""
        return cls(meta["model"], meta.get("model_args", {}), meta["normalization"], meta.get("dataset", "mnist"),
                   tuple(meta["classes"]), source, meta.get("metrics"), Calibration.from_meta(meta, source),
                   shape_of(meta, source))


def shape_of(meta: dict, source: str) -> InputShape:
    """The input shape an exported file's metadata records (MNIST's when it predates the keys), or a ModelError."""
    try:
        return InputShape.from_meta(meta)
    except ConfigError as e:
        raise ModelError(f"{Path(source).name}: its metadata has an unusable shape ({e})") from None


@dataclass
class Prediction:
    label: int | None  # None: refused, and `reason` says why (abstain.py: "not a digit", "too small: ...")
    probability: float
    probabilities: list[float]
    class_name: str | None
    top_k: list[tuple[int, float]] = field(default_factory=list)
    reason: str | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "class_name": self.class_name, "probability": self.probability,
                "probabilities": self.probabilities, "top_k": [list(t) for t in self.top_k], "reason": self.reason}

    def refused(self, reason: str | None) -> "Prediction":
        """This prediction with no label where `reason` says the image is not a digit (the probabilities stay)."""
        if reason is None:
            return self
        return Prediction(None, self.probability, self.probabilities, None, self.top_k, reason)


@dataclass
class FileResult:
    """One file of predict_files: its MNIST-style image and prediction, or why it could not be read."""

    path: Path
    image: np.ndarray | None  # the uint8 image the model saw: (28, 28) for MNIST's shape
    prediction: Prediction | None
    error: str | None = None


def _preprocess_file(path: Path) -> tuple[np.ndarray | None, str | None]:
    """Read and preprocess one file (in a worker process for big folders): the image, or the error's message."""
    from digitlab.preprocess import to_mnist

    try:
        return to_mnist(path), None
    except DigitlabError as e:
        return None, str(e)


def _read_for_shape(path: Path, shape: InputShape) -> tuple[np.ndarray | None, str | None]:
    """_preprocess_file for a model of another shape than MNIST's: the picture converted and resized
    (preprocess.resize), not made MNIST-like."""
    from digitlab.preprocess.resize import to_shape

    try:
        return to_shape(path, shape), None
    except DigitlabError as e:
        return None, str(e)


def _onnxruntime_installed() -> bool:
    """Whether onnxruntime imports (the optional `onnx` extra); importing it is what using it costs anyway."""
    try:
        import onnxruntime  # noqa: F401 (imported to see that it can be)
    except ImportError:
        return False
    return True


def is_onnx_file(path: str | Path | None) -> bool:
    """Whether `path` names an .onnx file (an exported model) rather than a run folder or a checkpoint."""
    return path is not None and Path(path).suffix.lower() == ".onnx" and not Path(path).is_dir()


def weights_sha256(path: Path) -> str:
    """The file's sha256, hex: what ties an exported copy of the shipped model to the weights it came from."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pool(workers: int):
    """A pool of worker processes; forked where the OS can (no re-import of torch in each worker)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None).Pool(workers)


def probe_images(shape: InputShape = MNIST_SHAPE) -> np.ndarray:
    """What the load check feeds a model: a blank image and a plain stroke (a 1), uint8 (2, 28, 28) for MNIST's
    shape, (2, *shape.pixels) for another: the stroke spans the middle 5/7 of the height, 3 columns wide."""
    images = np.zeros((2, *shape.pixels), np.uint8)
    height, width = shape.image_size
    images[1, ..., height // 7:height - height // 7, width // 2 - 1:width // 2 + 2] = 255
    return images


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, shifted by the row maximum so large logits do not overflow."""
    logits = np.asarray(logits, dtype=np.float32)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Predictor:
    """Inference with a model loaded once, on whichever backend runs it."""

    def __init__(self, backend: Backend, info: ModelInfo, probe: bool = True):
        """`probe`: run the load check (probe_images) now; a ModelError if the model fails it."""
        self.backend = backend
        self.info = info
        if probe:
            self.probe()

    def probe(self) -> None:
        """Refuse a model that does not answer probe_images() with finite logits, one row per image and one column
        per class in its metadata (the checks of logits(); ONNX runs under its deadline, so an endless graph is
        stopped too). One call of two images: a second call of one image doubled the cost under PyTorch (its
        kernels are set up again for each new batch size) and only catches graphs fixed to a batch of two."""
        images = probe_images(self.info.shape)
        if getattr(self.backend, "takes_numpy", False):  # as logits(): no torch import for an ONNX model
            batch = normalize_array(images, self.normalization)
        else:
            import torch

            batch = normalize(torch.from_numpy(images), self.normalization)
        try:  # straight to the backend: logits() is the callers' (tests count its calls)
            self.checked(self.backend.logits(batch), images.shape[0])
        except ModelError as e:  # the message already names the file; say it is refused, with the whole path
            detail = str(e).removeprefix(f"{Path(self.info.source).name}: ")
            raise ModelError(f"refusing the model {self.info.source}: {detail}") from None

    @classmethod
    def from_loaded(cls, loaded: "LoadedModel", runtime: str = "torch", threads: int = 0,
                    device: "str | torch.device" = "cpu", deadline_s: float = DEADLINE_S) -> "Predictor":
        """A model already loaded by load_run. `runtime="onnx"` exports it in memory and checks the export
        against PyTorch first; `threads` are onnxruntime's (PyTorch's are process-wide: torch.set_num_threads).
        `deadline_s`: ONNX calls only (backends.deadline_for); eager PyTorch runs our own code and cannot be
        stopped midway."""
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of: {', '.join(RUNTIMES)}; got {runtime!r}")
        info = ModelInfo.from_loaded(loaded)
        if runtime == "torch":
            return cls(TorchBackend(loaded.model, device), info)
        from digitlab.export import check_parity, onnx_model_bytes, random_images

        backend = OnnxBackend(onnx_model_bytes(loaded), threads, source=f"{loaded.source} (exported to ONNX)",
                              deadline_s=deadline_s)
        predictor = cls(backend, info)  # the probe first: NaN weights are a clearer message than a parity failure
        # Noise images, not digits: enough to check the numbers without needing the dataset at startup.
        check_parity(loaded, backend, random_images(64, pixels=loaded.shape.pixels),
                     require_same_argmax=False).raise_if_failed()
        return predictor

    @classmethod
    def from_run(cls, path: str | Path | None = None, checkpoint: str = "best", runtime: str = "torch",
                 threads: int = 0, device: str | torch.device = "cpu", deadline_s: float = DEADLINE_S) -> "Predictor":
        """Load a run folder or .safetensors file; no path means the model shipped with digitlab."""
        if runtime not in RUNTIMES:  # before loading anything
            raise ConfigError(f"runtime must be one of: {', '.join(RUNTIMES)}; got {runtime!r}")
        from digitlab.runs import load_run

        loaded = load_run(path if path is not None else DEFAULT_WEIGHTS, checkpoint)
        return cls.from_loaded(loaded, runtime, threads, device, deadline_s)

    @classmethod
    def from_path(cls, path: str | Path | None = None, checkpoint: str = "best", runtime: str = "torch",
                  threads: int = 0, device: str | torch.device = "cpu", deadline_s: float = DEADLINE_S,
                  vetted_sha256: str | None = None) -> "Predictor":
        """What `serve` and `eval` take: a run folder or .safetensors file (from_run; None: the shipped model) or an
        .onnx file from `digitlab export` (from_onnx, vetted unless its bytes have `vetted_sha256`), which runs in
        ONNX Runtime only: the file holds a graph, not the PyTorch model's weights."""
        if not is_onnx_file(path):
            return cls.from_run(path, checkpoint, runtime, threads, device, deadline_s)
        if runtime != "onnx":
            raise ConfigError(f"{path} is an ONNX file: it runs in ONNX Runtime only, not with runtime {runtime!r}")
        return cls.from_onnx(path, threads, deadline_s=deadline_s, vetted_sha256=vetted_sha256)

    @classmethod
    def from_shipped(cls, threads: int = 1) -> "Predictor":
        """The shipped model: on ONNX Runtime (`threads` intra-op threads) when it is installed and DEFAULT_ONNX
        was exported from the DEFAULT_WEIGHTS beside it, else in PyTorch as from_run() loads it.

        Same labels; probabilities agree to about 1e-7. ONNX Runtime needs no PyTorch, whose import is most of
        `digitlab predict`'s start-up (1.5 s of CPU against 0.05 s). A DEFAULT_ONNX left behind by a retrained
        DEFAULT_WEIGHTS (its recorded sha256 differs) is never used."""
        if DEFAULT_ONNX.is_file() and _onnxruntime_installed():
            predictor = cls.from_onnx(DEFAULT_ONNX, threads, vet=False)  # installed with digitlab, not a download
            if predictor.backend.meta.get(WEIGHTS_SHA256) == weights_sha256(DEFAULT_WEIGHTS):
                return predictor
        return cls.from_run(None)

    @classmethod
    def from_onnx(cls, model: str | Path | bytes, threads: int = 0, source: str | None = None,
                  deadline_s: float = DEADLINE_S, vet: bool = True, vetted_sha256: str | None = None) -> "Predictor":
        """An .onnx file written by `digitlab export` (or its bytes): the file alone says how to feed it. The file
        is untrusted: with `vet` it is first loaded and probed in a capped child process (onnx_guard.vet: creating a
        hostile file's session can take many seconds and gigabytes, out of any call's deadline), then loaded here
        from the same bytes and probed again; each call runs under `deadline_s` (backends.deadline_for).
        `vetted_sha256`: the sha256 of bytes already vetted (by a serving parent process): the same bytes skip the
        child, any others are vetted. `vet=False` is for files digitlab wrote itself (the shipped model)."""
        if vet:
            model, source = cls._vetted_bytes(model, source, deadline_s, vetted_sha256)
        backend = OnnxBackend(model, threads, source, deadline_s)
        return cls(backend, ModelInfo.from_meta(backend.meta, backend.source))

    @staticmethod
    def _vetted_bytes(model: str | Path | bytes, source: str | None, deadline_s: float,
                      vetted_sha256: str | None) -> tuple[bytes, str]:
        """The model's bytes, read once (what is vetted is what is loaded), and its name, after onnx_guard.vet."""
        from digitlab import onnx_guard
        from digitlab.backends import check_deadline
        from digitlab.extras import require

        require("onnx", "onnxruntime", "predicting with ONNX Runtime")
        check_deadline(deadline_s)
        source = source or (str(model) if not isinstance(model, bytes) else "<onnx bytes>")
        data = model if isinstance(model, bytes) else onnx_guard.read_onnx(model)
        if vetted_sha256 is None or hashlib.sha256(data).hexdigest() != vetted_sha256:
            onnx_guard.vet(data, source, deadline_s)
        return data, source

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def normalization(self) -> str:
        return self.info.normalization

    @property
    def dataset(self) -> str:
        return self.info.dataset

    @property
    def temperature(self) -> float:
        """What logits are divided by before the softmax: fitted on validation, 1 for an uncalibrated model."""
        return self.info.calibration.temperature

    def describe(self) -> dict:
        """What is loaded, as plain data (for `GET /api/model` and --json output)."""
        return {"name": self.info.name, "args": self.info.args, "normalization": self.info.normalization,
                "dataset": self.info.dataset, "classes": list(self.classes), "source": Path(self.info.source).name,
                "test_accuracy": (self.info.metrics or {}).get("test_accuracy"), "runtime": self.backend.runtime,
                "calibration": self.info.calibration.describe()}

    def logits(self, images) -> np.ndarray:
        """uint8 images of the model's shape ((N, 28, 28) MNIST-like, (N, C, H, W) for colour), numpy or tensor ->
        float32 logits (N, classes); a ModelError if the model answers anything else (another shape, NaN or
        infinity)."""
        if getattr(self.backend, "takes_numpy", False):  # no tensors, no torch import
            pixels = images.detach().cpu().numpy() if _is_tensor(images) else np.asarray(images, np.uint8)
            prepare = normalize_array
        else:
            import torch

            pixels = images if _is_tensor(images) else torch.from_numpy(np.asarray(images, np.uint8))
            prepare = normalize
        pixels = pixels.reshape(-1, *self.info.shape.pixels)
        if pixels.shape[0] == 0:
            return np.empty((0, len(self.classes)), np.float32)
        if _is_tensor(pixels):
            pixels = pixels.cpu()
        return np.concatenate([self.checked(self.backend.logits(prepare(pixels[i:i + BATCH], self.normalization)),
                                            min(BATCH, pixels.shape[0] - i), i)
                               for i in range(0, pixels.shape[0], BATCH)])

    def checked(self, logits, images: int, first: int = 0) -> np.ndarray:
        """A backend's answer for `images` images as float32 (images, classes), or a ModelError saying what is
        wrong with it; `first` numbers the images in the message."""
        name = Path(self.info.source).name  # not the whole path: the message may reach an HTTP client
        out = np.asarray(logits)
        expected = (images, len(self.classes))
        if out.shape != expected:
            raise ModelError(f"{name}: the model answered an array of shape {out.shape} for {images} image(s); "
                             f"expected {expected}, one logit per class in its metadata")
        if out.dtype.kind != "f":
            raise ModelError(f"{name}: the model answered {out.dtype} numbers, not floating-point logits")
        finite = np.isfinite(out).all(axis=1)
        if not finite.all():
            raise ModelError(f"{name}: the model answered NaN or infinity for image {first + int(np.argmin(finite))}")
        return out.astype(np.float32, copy=False)

    def probabilities(self, images) -> np.ndarray:
        """uint8 images as logits() takes them -> calibrated probabilities (N, classes), a float32 numpy array."""
        return self.calibrated(self.logits(images))

    def calibrated(self, logits) -> np.ndarray:
        """softmax(logits / T): the model's temperature applied, here only, whatever the backend."""
        return softmax(np.asarray(logits, dtype=np.float32) / np.float32(self.temperature))

    @property
    def abstention(self):
        """When this model refuses to name a digit (abstain.Abstention, fitted beside its temperature)."""
        return self.info.calibration.abstention

    def predict(self, images, top_k: int = 3, preprocess: bool = True) -> list[Prediction]:
        """Predict one image or a list: paths, bytes, PIL images, numpy arrays or tensors. One the model's abstention
        refuses as not a digit gets label None and a reason (a picture's scale is unknown: "too small" is for
        canvas drawings, whose extent judge() is given)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self.judge(np.stack([self.to_input(image, preprocess, self.info.shape) for image in images]), None,
                          top_k)

    def judge(self, images, extents: list[float | None] | None = None, top_k: int = 3) -> list[Prediction]:
        """uint8 images of the model's shape ((N, 28, 28) for MNIST's) -> Predictions, refused (label None, reason)
        where the model's abstention says;
        `extents`: each canvas drawing's ink extent (canvas_to_mnist_measured; None where not a canvas)."""
        return self.judged(images, self.logits(images), extents, top_k)

    def judged(self, images, logits: np.ndarray, extents: list[float | None] | None = None,
               top_k: int = 3) -> list[Prediction]:
        """judge() with the images' logits already computed (the server calls logits() itself)."""
        reasons = self.refusals(images, logits, extents)
        return [self.prediction_from_probs(p, top_k).refused(r) for p, r in zip(self.calibrated(logits), reasons)]

    def predict_files(self, paths: Iterable[str | Path], top_k: int = 3, workers: int | None = None,
                      chunk: int | None = None) -> Iterator[FileResult]:
        """Predict image files in their given order, streamed: a FileResult per file, chunk by chunk.

        An unreadable file is a FileResult with `error` set; the others are still predicted. Each chunk's images
        go through the model in one batch (per-image calls cost ~2x on CPU). Reading and preprocessing, most of
        the time, is spread over `workers` processes (None: one per CPU) for more than POOL_MIN_FILES files;
        the next chunk is preprocessed while the current one is predicted. `chunk`: files per step (CHUNK).
        """
        paths, chunk = [Path(p) for p in paths], chunk or CHUNK
        read = _preprocess_file if self.info.shape.is_mnist else partial(_read_for_shape, shape=self.info.shape)
        workers = cpu_count() if workers is None else workers
        if workers <= 1 or len(paths) < POOL_MIN_FILES:
            for start in range(0, len(paths), chunk):
                part = paths[start:start + chunk]
                yield from self._predict_chunk(part, [read(p) for p in part], top_k)
            return
        with _pool(min(workers, len(paths))) as pool:
            chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
            pending = pool.map_async(read, chunks[0], chunksize=8)
            for i, part in enumerate(chunks):
                done = pending.get()
                if i + 1 < len(chunks):  # keep the workers busy while this chunk is predicted and printed
                    pending = pool.map_async(read, chunks[i + 1], chunksize=8)
                yield from self._predict_chunk(part, done, top_k)

    def _predict_chunk(self, paths: list[Path], done: list[tuple[np.ndarray | None, str | None]],
                       top_k: int) -> Iterator[FileResult]:
        """One model call for a chunk's readable images, then the results in the files' order."""
        good = [image for image, _ in done if image is not None]
        judged = iter(self.judge(np.stack(good), None, top_k) if good else [])
        for path, (image, error) in zip(paths, done):
            yield FileResult(path, image, next(judged) if image is not None else None, error)

    @staticmethod
    def to_input(image, preprocess: bool = True, shape: InputShape = MNIST_SHAPE) -> np.ndarray:
        """One image -> uint8 of `shape.pixels`, (28, 28) for MNIST's; `preprocess=False` only for images already
        as the model reads them. Pictures for MNIST's shape are made MNIST-like (preprocess.to_mnist); for another
        shape they are only converted and resized (preprocess.resize says why)."""
        if not preprocess:
            array = image.numpy() if _is_tensor(image) else np.asarray(image)
            return np.array(array, dtype=np.uint8).reshape(shape.pixels)  # a copy: the input may be read-only
        if not shape.is_mnist:
            from digitlab.preprocess.resize import to_shape

            return to_shape(image, shape)
        from digitlab.preprocess import to_mnist

        return to_mnist(image)

    def refusals(self, images, logits: np.ndarray, extents: list[float | None] | None = None) -> list[str | None]:
        """The abstention's reason for each image, or None. It measures ink on MNIST-like 28x28 images (and is
        fitted on those): a model of another shape never refuses."""
        if not self.info.shape.is_mnist:
            return [None] * len(logits)
        pixels = images.numpy() if _is_tensor(images) else np.asarray(images)
        return self.abstention.reasons(pixels.reshape(-1, 28, 28), logits, self.temperature, extents)

    def prediction_from_logits(self, logits, top_k: int = 3, image=None) -> Prediction:
        """One image's logits (from logits()) -> a Prediction, for callers that show the logits too; refused where
        the abstention says when `image` (the 28x28 the model saw) is given."""
        if image is None:
            return self.prediction_from_probs(self.calibrated(logits), top_k)
        reason = self.refusals(image, np.asarray(logits)[None])[0]
        return self.prediction_from_probs(self.calibrated(logits), top_k).refused(reason)

    def prediction_from_probs(self, probs, top_k: int = 3) -> Prediction:
        """Ten probabilities -> a Prediction with the `top_k` most probable classes."""
        probs = np.asarray(probs, dtype=np.float32)
        order = np.argsort(-probs, kind="stable")[:max(1, min(top_k, probs.size))]
        label = int(order[0])
        return Prediction(label, float(probs[label]), [round(float(p), 6) for p in probs],
                          self.classes[label], [(int(i), float(probs[i])) for i in order])
