"""Inference backends: small objects that turn a normalised batch into logits, one per runtime.

    TorchBackend(model)              # a torch.nn.Module (or a TorchScript module), on a device
    OnnxBackend("model.onnx")        # an .onnx file (or its bytes) written by `digitlab export`, in onnxruntime

Both take float32 (N, 1, 28, 28) already normalised (digitlab.normalize, the one place that does it) and return
float32 logits (N, 10) as a numpy array; OnnxBackend also takes the numpy array itself (`takes_numpy`), so a
Predictor on it never imports PyTorch. Everything else (preprocessing, softmax, top-k, describe) is the
Predictor's, once, whatever the backend.

The ONNX format's names and metadata live here too, so export.py (which writes .onnx files) and OnnxBackend
(which reads them) share them without importing each other's heavy dependencies. onnxruntime is imported only
when an OnnxBackend is created: the `onnx` extra is optional.
"""
from __future__ import annotations

import json
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from digitlab.errors import RunError
from digitlab.extras import require
from digitlab.normalize import NORMALIZATIONS

if TYPE_CHECKING:
    import torch

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


class TorchBackend:
    """Eager PyTorch (or TorchScript): the module in eval mode on `device`, no autograd."""

    takes_numpy = False  # logits() wants a torch tensor

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu"):
        import torch

        from digitlab.device import use_channels_last

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.memory_format = use_channels_last(self.model, self.device)  # as in training (device.py)
        self.runtime = f"torch {torch.__version__}"

    def logits(self, x: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(self.memory_format(x.to(self.device))).float().cpu().numpy()


def onnx_session_options(ort, threads: int = 0):
    """Sequential execution, all graph optimisations, `threads` intra-op threads (0: onnxruntime's default,
    one per physical core). One inter-op thread: these graphs are chains, nothing runs in parallel."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no per-session warnings on stderr
    return options


class OnnxBackend:
    """onnxruntime on CPU, the session created once; `meta` is the digitlab metadata stored in the file."""

    def __init__(self, model: str | Path | bytes, threads: int = 0, source: str | None = None):
        """`model` is an .onnx path or its bytes; `source` names bytes in messages."""
        self.source = source or (str(model) if not isinstance(model, bytes) else "<onnx bytes>")
        ort = require("onnx", "onnxruntime", "predicting with ONNX Runtime")
        if not isinstance(model, bytes) and not Path(model).is_file():
            what = "is not a regular file" if Path(model).exists() else "does not exist"
            raise RunError(f"{model} {what} (expected an .onnx file written by `digitlab export`)")
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                onnx_session_options(ort, threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own pybind exception types, with long messages
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise RunError(f"{self.source} is not a readable ONNX model ({detail})") from None
        self.meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map, self.source)
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([INPUT_NAME], [OUTPUT_NAME]):
            raise RunError(f"{self.source}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got {names}")
        self.threads = threads
        self.runtime = f"onnxruntime {ort.__version__}"

    takes_numpy = True  # logits() takes a numpy batch as it is, or a tensor

    def logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        x = x if isinstance(x, np.ndarray) else x.numpy()
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]
