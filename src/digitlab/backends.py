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

An .onnx file is untrusted input. Creating its session can itself take seconds and gigabytes, so
Predictor.from_onnx first tries a file in a capped probe process (digitlab.onnx_guard); OnnxBackend itself
trusts its caller for that. Its graph can loop for ever (a `Loop` of 10^12 iterations), so every
OnnxBackend call runs under a deadline, enforced by onnxruntime itself (RunOptions.terminate, checked between
graph nodes) and set by one watchdog thread. Whether its output makes sense (shape, class count, finite
numbers) is checked by the Predictor, for every backend, on load (a probe) and on every call.
"""
from __future__ import annotations

import heapq
import itertools
import json
import os
import threading
import time
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from digitlab.errors import ModelError, RunError
from digitlab.extras import require
from digitlab.normalize import NORMALIZATIONS

if TYPE_CHECKING:
    import torch

ONNX_FORMAT = "digitlab-onnx-1"  # metadata marker, beside checkpoint.py's "digitlab-checkpoint-1"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
DEADLINE_S = 5.0  # default limit for one ONNX call of up to DEADLINE_IMAGES images (see deadline_for)
DEADLINE_IMAGES = 64  # a call on more images gets proportionally longer: 1,000 images, 78 s by default


def encode_metadata(meta: dict) -> dict[str, str]:
    """Metadata values as JSON strings (ONNX metadata_props are string to string), plus the marker."""
    return {"format": ONNX_FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}


def decode_metadata(raw: dict[str, str], source: str) -> dict:
    """The digitlab metadata of an ONNX file; a RunError if the file was not written by digitlab."""
    if raw.get("format") != ONNX_FORMAT:
        raise RunError(f"{source} was not exported by digitlab (no {ONNX_FORMAT!r} metadata); "
                       "write one with `digitlab export RUN`")
    try:  # NaN and Infinity (a metric, say) read as null: they would leave GET /api/model as invalid JSON
        meta = {k: json.loads(v, parse_constant=lambda _: None) for k, v in raw.items() if k != "format"}
    except json.JSONDecodeError as e:
        raise RunError(f"{source} has corrupted digitlab metadata ({e})") from None
    missing = {"model", "normalization", "classes"} - set(meta)
    if missing or meta["normalization"] not in NORMALIZATIONS:
        raise RunError(f"{source}: digitlab metadata lacks or mangles {', '.join(sorted(missing)) or 'normalization'}")
    wrong = [key for key, ok in metadata_checks(meta).items() if not ok]
    if wrong:
        raise RunError(f"{source}: digitlab metadata has a {wrong[0]!r} of the wrong type or size")
    return meta


def metadata_checks(meta: dict) -> dict[str, bool]:
    """Each key the Predictor reads -> whether its value has the type it must (a file's metadata is anyone's)."""
    classes = meta["classes"]
    return {"model": isinstance(meta["model"], str),
            "classes": isinstance(classes, list) and 2 <= len(classes) <= 100_000
            and all(isinstance(c, str) for c in classes),
            "model_args": isinstance(meta.get("model_args", {}), dict),
            "dataset": isinstance(meta.get("dataset", "mnist"), str),
            "metrics": isinstance(meta.get("metrics"), (dict, type(None)))}


def check_deadline(deadline_s: float) -> None:
    """A RunError unless `deadline_s` is a positive number of seconds (NaN is not)."""
    if not deadline_s > 0:
        raise RunError(f"the inference deadline must be a positive number of seconds, got {deadline_s!r}")


def deadline_for(deadline_s: float, images: int) -> float:
    """Seconds one call on `images` images may take: `deadline_s` up to DEADLINE_IMAGES, proportionally more above."""
    return deadline_s * max(1.0, images / DEADLINE_IMAGES)


class Watchdog:
    """Sets `terminate` on onnxruntime RunOptions whose deadline has passed: one thread for all calls. A
    threading.Timer per call starts a thread per inference: +120 us on a 140 us single-image call, against
    +8 us here (side by side, 2 busy cores). A forked child starts its own thread on first use: threads do
    not survive fork, and the parent's lock may have been held at the time."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int]] = []  # (deadline, token), soonest first
        self._runs: dict[int, object] = {}  # token -> RunOptions still running
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, options: object, seconds: float) -> int:
        """Terminate `options`' run in `seconds` unless release() comes first; returns the token for release()."""
        deadline = time.monotonic() + seconds
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="digitlab-onnx-watchdog", daemon=True)
                self._thread.start()
            token = next(self._tokens)
            self._runs[token] = options
            wake = not self._heap or deadline < self._heap[0][0]  # sooner than what the thread waits for
            heapq.heappush(self._heap, (deadline, token))
            if wake:
                self._cond.notify()
        return token

    def release(self, token: int) -> None:
        with self._cond:
            self._runs.pop(token, None)  # its heap entry is dropped when its time comes

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][1] not in self._runs):
                    _, token = heapq.heappop(self._heap)
                    options = self._runs.pop(token, None)
                    if options is not None:
                        options.terminate = True  # onnxruntime stops the run before its next node
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


WATCHDOG = Watchdog()


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
    """onnxruntime on CPU, the session created once; `meta` is the digitlab metadata stored in the file.
    Each call runs under a deadline (deadline_for): past it, onnxruntime stops the run and logits() raises."""

    def __init__(self, model: str | Path | bytes, threads: int = 0, source: str | None = None,
                 deadline_s: float = DEADLINE_S):
        """`model` is an .onnx path or its bytes; `source` names bytes in messages; `deadline_s` as deadline_for."""
        self.source = source or (str(model) if not isinstance(model, bytes) else "<onnx bytes>")
        check_deadline(deadline_s)
        self.ort = ort = require("onnx", "onnxruntime", "predicting with ONNX Runtime")
        if not isinstance(model, bytes) and not Path(model).is_file():
            what = "is not a regular file" if Path(model).exists() else "does not exist"
            raise RunError(f"{model} {what} (expected an .onnx file written by `digitlab export`)")
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                onnx_session_options(ort, threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own pybind exception types, with long messages
            raise RunError(f"{self.source} is not a readable ONNX model ({first_line(e)})") from None
        self.meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map, self.source)
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([INPUT_NAME], [OUTPUT_NAME]):
            raise RunError(f"{self.source}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got {names}")
        self.threads = threads
        self.deadline_s = deadline_s
        self.runtime = f"onnxruntime {ort.__version__}"

    takes_numpy = True  # logits() takes a numpy batch as it is, or a tensor

    def logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Run the graph under its deadline; a ModelError if it runs past it or onnxruntime fails."""
        x = x if isinstance(x, np.ndarray) else x.numpy()
        feed = {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}
        options = self.ort.RunOptions()
        options.log_severity_level = 4  # fatal only: a stopped or failed run is reported once, as a ModelError
        limit = deadline_for(self.deadline_s, x.shape[0])
        token = WATCHDOG.watch(options, limit)
        try:
            return self.session.run([OUTPUT_NAME], feed, options)[0]
        except Exception as e:  # onnxruntime's pybind exceptions: a failed or terminated run
            if options.terminate:
                raise ModelError(f"{Path(self.source).name}: inference on {x.shape[0]} image(s) ran past its "
                                 f"{limit:g} s deadline and was stopped") from None
            raise ModelError(f"{Path(self.source).name}: onnxruntime failed ({first_line(e)})") from None
        finally:
            WATCHDOG.release(token)


def first_line(e: Exception) -> str:
    """An exception's message cut to one short line (onnxruntime's run to many lines)."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
