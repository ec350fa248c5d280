"""Write src/digitlab/weights/default.onnx: the shipped model (default.safetensors) exported to ONNX.

`digitlab predict` runs the shipped model on ONNX Runtime from this file, which needs no PyTorch at start-up
(Predictor.from_shipped). The file records the sha256 of the weights it was exported from; a default.onnx whose
weights have since changed is ignored (PyTorch is used instead) and tests/test_predict_startup.py fails, so rerun
this after retraining the shipped model:

    python scripts/export_shipped_onnx.py

It exports with `digitlab export`'s exporter (TorchScript-based, dynamic batch axis, digitlab metadata) and checks
the file against PyTorch on 2,000 MNIST test digits before writing it.
"""
from __future__ import annotations

import sys

import torch

from digitlab.backends import OnnxBackend
from digitlab.data import load_dataset
from digitlab.export import check_parity, onnx_model_bytes
from digitlab.predict import DEFAULT_ONNX, DEFAULT_WEIGHTS, WEIGHTS_SHA256, weights_sha256
from digitlab.runs import load_run


def main() -> int:
    loaded = load_run(DEFAULT_WEIGHTS)
    loaded.meta[WEIGHTS_SHA256] = weights_sha256(DEFAULT_WEIGHTS)  # travels in the ONNX metadata
    data = onnx_model_bytes(loaded)
    backend = OnnxBackend(data, threads=1, source=str(DEFAULT_ONNX))
    images = load_dataset(loaded.dataset, progress=False).test_images[:2000]
    parity = check_parity(loaded, backend, images)
    parity.raise_if_failed()
    DEFAULT_ONNX.write_bytes(data)
    print(f"wrote {DEFAULT_ONNX} ({len(data) / 1e3:.0f} kB) from {DEFAULT_WEIGHTS.name} "
          f"(sha256 {loaded.meta[WEIGHTS_SHA256][:12]}...); parity with PyTorch on {len(images)} test digits: {parity}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
