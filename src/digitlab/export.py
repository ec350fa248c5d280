"""Export a trained run to ONNX (or TorchScript), its metadata inside, checked against PyTorch first.

    digitlab export runs/<run>                         # -> runs/<run>/model.onnx
    digitlab export runs/<run> --format torchscript    # -> runs/<run>/model.pt
    export_run("runs/<run>", "onnx")                   # the same from Python -> ExportResult

The ONNX graph takes `images`, float (B, C, H, W) already normalised, and returns `logits` (B, classes): (B, 1,
28, 28) and (B, 10) for MNIST, the shape the checkpoint's metadata records (LoadedModel.shape) otherwise;
the batch axis is dynamic. The model's name and options, its shape (num_classes, in_chans, image_size),
normalisation, dataset, classes, metrics and
temperature (`calibration`: probabilities are softmax(logits / T), calibration.py) travel in the file's
metadata_props (TorchScript: in `_extra_files["digitlab.json"]`), so the file alone is enough to predict: see
Predictor.from_onnx. `predict --onnx`, `eval` and `serve` take the .onnx file, as untrusted input (onnx_guard).

The TorchScript file is for users' own deployments (libtorch in C++, torch.jit.load in Python), of files they
made themselves: no digitlab command loads one, because loading TorchScript runs the code serialised in it, and
digitlab never runs code from a model file (a TorchScript file given to a command is refused by name,
checkpoint.not_safetensors). Only export_run's own check loads it, right after writing it.

Every export is checked before it lands: on real test images of the run's dataset, onnxruntime (or
torch.jit.load) must give logits within 1e-4 of PyTorch's and the same argmax for every image. The file
is written to `<file>.tmp` and renamed only when the check passes; a failed check is an ExportError.

Exporter: torch.onnx's TorchScript-based exporter (dynamo=False), opset 17. The dynamo exporter
(dynamo=True) also exports every registered model with matching logits, but takes 2-11 s per small model
on a 2-core CPU instead of 0.1-0.7 s, and logs warnings while it works; `dynamo=True` (or
`digitlab export --dynamo`) selects it, under the same parity check.

onnx is imported only to write ONNX (and onnxruntime only to check it): `--format torchscript` works without
the `onnx` extra. This module never imports digitlab.predict; the Predictor imports it to export in memory.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from digitlab.backends import INPUT_NAME, OUTPUT_NAME, OnnxBackend, TorchBackend, encode_metadata
from digitlab.atomic import commit, write_tmp
from digitlab.errors import ConfigError, DigitlabError
from digitlab.evaluation import predict_logits
from digitlab.extras import require
from digitlab.onnx_static import static_check
from digitlab.normalize import normalize
from digitlab.checkpoint import LoadedModel
from digitlab.runs import load_run
from digitlab.shapes import MNIST_SHAPE

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # format -> file suffix of the default output
OPSET = 17
TOLERANCE = 1e-4  # largest absolute logit difference accepted between PyTorch and the exported model


class Backend(Protocol):  # digitlab.backends.TorchBackend or OnnxBackend
    def logits(self, x: torch.Tensor) -> np.ndarray: ...


class ExportError(DigitlabError):
    """An export could not be written, or disagrees with the PyTorch model it came from."""


@dataclass
class Parity:
    """How closely an exported model reproduces PyTorch's logits on some images."""

    images: int
    max_abs_diff: float
    same_argmax: int
    require_same_argmax: bool = True

    @property
    def ok(self) -> bool:
        return self.max_abs_diff < TOLERANCE and (self.same_argmax == self.images or not self.require_same_argmax)

    def __str__(self) -> str:
        return (f"max |logit difference| {self.max_abs_diff:.2e} (limit {TOLERANCE:g}), "
                f"same prediction for {self.same_argmax:,}/{self.images:,} images")

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise ExportError(f"exported model disagrees with PyTorch: {self}")


@dataclass
class ExportResult:
    path: Path
    format: str
    size_bytes: int
    parity: Parity
    parity_images: str  # what the parity images were, e.g. "the first 1,000 mnist test images"
    how: str  # format and exporter, e.g. "ONNX opset 17, TorchScript-based exporter, dynamic batch axis"


def model_metadata(loaded: LoadedModel) -> dict:
    """Everything needed to feed and read the model, plus the checkpoint's own metadata (step, metrics)."""
    from digitlab import __version__

    return {**loaded.meta, "model": loaded.model_name, "model_args": loaded.model_args, **loaded.shape.to_meta(),
            "normalization": loaded.normalization, "dataset": loaded.dataset, "classes": list(loaded.classes),
            "checkpoint": loaded.source.name, "digitlab_version": __version__}


def example_input(loaded: LoadedModel) -> torch.Tensor:
    """A batch of 2 of the model's input shape for tracing: not 1, so nothing in the graph specialises to a
    single image."""
    return torch.zeros(2, loaded.shape.in_chans, *loaded.shape.image_size)


def onnx_model_bytes(loaded: LoadedModel, dynamo: bool = False) -> bytes:
    """The run's model as a serialised ONNX model with a dynamic batch axis and digitlab metadata."""
    onnx = require("onnx", "onnx", "exporting to ONNX")
    if dynamo:
        require("onnx", "onnxscript", "the dynamo exporter")
    model = loaded.model.cpu().eval()
    try:
        example = example_input(loaded)
        proto = _export_dynamo(model, example) if dynamo else _export_torchscript(model, example)
    except Exception as e:  # the exporters raise many types; a model that cannot be exported is the user's to know
        raise ExportError(f"torch.onnx.export failed for {loaded.model_name}: {str(e).splitlines()[0][:200]}") from None
    onnx.helper.set_model_props(proto, encode_metadata(model_metadata(loaded)))
    return proto.SerializeToString()


def quiet_tracing() -> None:
    """Inside warnings.catch_warnings(): silence what tracing says about every model here and never matters.

    torch.jit and the TorchScript-based exporter announce their deprecation; nn.RNN's input and hidden-size
    checks become constants of the trace (the sizes are fixed: channels x width features, hidden from the
    checkpoint), and the exporter notes that RNN sequence lengths may vary (ours are always the image's rows).
    Batch sizes 1 and many are checked against PyTorch in tests/test_export.py.
    """
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor):
    onnx = require("onnx", "onnx", "exporting to ONNX")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        quiet_tracing()
        torch.onnx.export(model, (example,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _export_dynamo(model: torch.nn.Module, example: torch.Tensor):
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # it warns about every optional operator library it does not find
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        dynamo=True, external_data=False, verbose=False)
    finally:
        onnx_logger.setLevel(level)
    return program.model_proto


def torchscript_model_bytes(loaded: LoadedModel) -> bytes:
    """The run's model traced to TorchScript, with digitlab metadata in `_extra_files`."""
    model = loaded.model.cpu().eval()
    with warnings.catch_warnings():
        quiet_tracing()
        traced = torch.jit.trace(model, example_input(loaded))
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={"digitlab.json": json.dumps(model_metadata(loaded))})
    return buf.getvalue()


def load_torchscript(path: Path) -> tuple[TorchBackend, str]:
    """A TorchScript file written by torchscript_model_bytes, as a backend, and the normalisation it stores."""
    extra = {"digitlab.json": ""}
    with warnings.catch_warnings():
        quiet_tracing()
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return TorchBackend(module), json.loads(extra["digitlab.json"])["normalization"]


def random_images(n: int, seed: int = 0, pixels: tuple[int, ...] | None = None) -> torch.Tensor:
    """n uint8 noise images, seeded, of `pixels` (an InputShape's .pixels; MNIST's (28, 28) by default): parity
    inputs when the dataset is not at hand."""
    pixels = pixels or MNIST_SHAPE.pixels
    return torch.randint(0, 256, (n, *pixels), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def check_parity(loaded: LoadedModel, exported: Backend, images: torch.Tensor, batch_size: int = 250,
                 require_same_argmax: bool = True, normalization: str | None = None) -> Parity:
    """Compare PyTorch's logits on uint8 images (N, H, W) or (N, C, H, W) with an exported model's, fed through its
    backend with `normalization` (default: the run's; pass the one the exported file stores, to check that too)."""
    reference = predict_logits(loaded.model, images, loaded.normalization, batch_size).numpy()
    normalization = normalization or loaded.normalization
    exported = np.concatenate([np.asarray(exported.logits(normalize(images[i:i + batch_size], normalization)))
                               for i in range(0, images.shape[0], batch_size)])
    return Parity(images=int(images.shape[0]), max_abs_diff=float(np.abs(exported - reference).max()),
                  same_argmax=int((exported.argmax(1) == reference.argmax(1)).sum()),
                  require_same_argmax=require_same_argmax)


def default_output(loaded: LoadedModel, fmt: str) -> Path:
    """RUN/model.onnx (or model.pt), next to the checkpoint."""
    return loaded.source.parent / f"model{FORMATS[fmt]}"


def export_run(run: str | Path, fmt: str = "onnx", output: str | Path | None = None, checkpoint: str = "best",
               check_images: int = 1000, data_dir: str | None = None, dynamo: bool = False) -> ExportResult:
    """Export a run's checkpoint, check it on `check_images` real test images (parity_images), then move it into
    place."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of: {', '.join(FORMATS)}; got {fmt!r}")
    if check_images < 1:
        raise ConfigError(f"check_images must be at least 1, got {check_images}")
    if dynamo and fmt != "onnx":
        raise ConfigError("the dynamo exporter writes ONNX only; drop --dynamo or use --format onnx")
    if fmt == "onnx":  # before the slow part: writing needs onnx, checking needs onnxruntime
        for module in ("onnx", "onnxruntime"):
            require("onnx", module, "exporting to ONNX")
    loaded = load_run(run, checkpoint)
    output = Path(output) if output is not None else default_output(loaded, fmt)
    images, described = parity_images(loaded, check_images, data_dir)
    data = onnx_model_bytes(loaded, dynamo) if fmt == "onnx" else torchscript_model_bytes(loaded)
    if fmt == "onnx":  # a file the loaders would refuse (an exporter that changed) fails here, not at load
        static_check(data, str(output))
    tmp = output.with_name(output.name + ".tmp")
    try:
        write_tmp(output, lambda path: path.write_bytes(data))
        if fmt == "onnx":
            backend = OnnxBackend(tmp)
            normalization = backend.meta["normalization"]
        else:
            backend, normalization = load_torchscript(tmp)
        parity = check_parity(loaded, backend, images, normalization=normalization)
        parity.raise_if_failed()
        commit((tmp, output))
    except OSError as e:
        raise ExportError(f"cannot write {output}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    how = {"onnx": f"ONNX opset {OPSET}, {'dynamo' if dynamo else 'TorchScript-based'} exporter, dynamic batch axis",
           "torchscript": "TorchScript, torch.jit.trace"}[fmt]
    return ExportResult(output, fmt, len(data), parity, described, how)


def parity_images(loaded: LoadedModel, n: int, data_dir: str | None) -> tuple[torch.Tensor, str]:
    """The images an export is checked on, and how the result names them: the first n test images of the run's
    dataset when digitlab knows it by name, else (a dataset built in code, of any shape) n seeded noise images
    of the model's shape, which still compare every logit."""
    from digitlab.data import DATASETS, load_dataset

    if loaded.dataset in DATASETS:
        dataset = load_dataset(loaded.dataset, data_dir, progress=False)
        images = dataset.test_images[:n]
        return images, f"the first {len(images):,} {dataset.name} test images"
    return random_images(n, pixels=loaded.shape.pixels), f"{n:,} random {loaded.shape} (no {loaded.dataset} files)"
