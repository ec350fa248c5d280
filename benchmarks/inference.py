"""Inference speed of every registered model on this CPU: PyTorch eager against ONNX Runtime.

    python benchmarks/inference.py                     # all models, all cores; a few minutes on 2 cores
    python benchmarks/inference.py --models cnn lstm --threads 1

For each model (default options, seeded random weights: speed does not depend on what was learnt) it
prints one markdown row:
- throughput in images/s on batches of 1,000 normalised images, the best of up to 5 passes (1 s at least):
  PyTorch under torch.inference_mode(), and the same model exported by digitlab.export run by onnxruntime;
- single-image latency, p50 and p99 over --runs calls after a warm-up, both runtimes, model call only;
- end to end, p50: Predictor.predict("digit.png") on each backend (TorchBackend, OnnxBackend), which read
  the PNG, run digitlab.preprocess.to_mnist, normalise, run the model and build the Prediction.
AlexNet (57M parameters, about 100 ms an image on 2 cores) gets a tenth of the runs.
Paste the output into docs/benchmarks.md under "Inference".
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from digitlab.data import get_spec, load_dataset
from digitlab.export import onnx_model_bytes
from digitlab.models import count_parameters, create_model, list_models
from digitlab.backends import INPUT_NAME, OUTPUT_NAME, OnnxBackend
from digitlab.normalize import normalize
from digitlab.predict import ModelInfo, Predictor
from digitlab.preprocess import to_mnist
from digitlab.checkpoint import LoadedModel

from machine import cpu_name

BATCH = 1000
HEAVY = {"alexnet": 10}  # model -> divisor of the number of runs, for models that take ~100 ms an image


def untrained(name: str) -> LoadedModel:
    torch.manual_seed(0)
    model = create_model(name).eval()
    return LoadedModel(model, name, {}, "standard", "mnist", get_spec("mnist").classes,
                       Path(f"untrained-{name}.safetensors"), {})


def timings_ms(fn, runs: int, warmup: int) -> list[float]:
    """Wall time of `runs` calls of fn() in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def images_per_s(fn, n_images: int, min_s: float = 1.0, max_passes: int = 5) -> float:
    """Best throughput of fn() over passes until min_s has elapsed (at least one, at most max_passes)."""
    fn()  # warm-up: allocations, onnxruntime's first-run optimisations
    best, start, passes = 0.0, time.perf_counter(), 0
    while passes < max_passes and (passes == 0 or time.perf_counter() - start < min_s):
        t = time.perf_counter()
        fn()
        best = max(best, n_images / (time.perf_counter() - t))
        passes += 1
    return best


def p50_p99(ms: list[float]) -> tuple[float, float]:
    return statistics.median(ms), float(np.percentile(ms, 99))


def bench_model(name: str, images: torch.Tensor, png: str, runs: int, threads: int) -> dict:
    loaded = untrained(name)
    model = loaded.model
    predictor = Predictor.from_loaded(loaded)
    onnx_backend = OnnxBackend(onnx_model_bytes(loaded), threads=threads, source=f"{name}.onnx")
    onnx_predictor = Predictor(onnx_backend, ModelInfo.from_loaded(loaded))
    runs = max(5, runs // HEAVY.get(name, 1))
    batch = normalize(images[:BATCH], loaded.normalization)
    one = batch[:1]
    batch_np, one_np = batch.numpy(), one.numpy()

    def torch_call(x):
        with torch.inference_mode():
            return model(x)

    def ort_call(x):
        return onnx_backend.session.run([OUTPUT_NAME], {INPUT_NAME: x})

    row = {"model": name, "params": count_parameters(model)}
    row["torch_ips"] = images_per_s(lambda: torch_call(batch), BATCH)
    row["ort_ips"] = images_per_s(lambda: ort_call(batch_np), BATCH)
    row["torch_p50"], row["torch_p99"] = p50_p99(timings_ms(lambda: torch_call(one), runs, warmup=max(5, runs // 10)))
    row["ort_p50"], row["ort_p99"] = p50_p99(timings_ms(lambda: ort_call(one_np), runs, warmup=max(5, runs // 10)))
    e2e_runs = max(5, runs // 2)
    row["torch_png"] = statistics.median(timings_ms(lambda: predictor.predict(png), e2e_runs, warmup=3))
    row["ort_png"] = statistics.median(timings_ms(lambda: onnx_predictor.predict(png), e2e_runs, warmup=3))
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| model | params | PyTorch img/s (batch 1,000) | ORT img/s (batch 1,000) | PyTorch 1-image p50 / p99 ms "
            "| ORT 1-image p50 / p99 ms | Predictor.predict(PNG) p50 ms, torch | Predictor.predict(PNG) p50 ms, onnx |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['torch_ips']:,.0f} | {r['ort_ips']:,.0f} "
                     f"| {r['torch_p50']:.3f} / {r['torch_p99']:.3f} | {r['ort_p50']:.3f} / {r['ort_p99']:.3f} "
                     f"| {r['torch_png']:.2f} | {r['ort_png']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models(), metavar="MODEL")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads and onnxruntime intra-op threads")
    parser.add_argument("--runs", type=int, default=200, help="timed single-image calls per model and runtime")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    images = load_dataset("mnist", progress=False).test_images
    with tempfile.TemporaryDirectory() as tmp:
        png = str(Path(tmp) / "digit.png")
        Image.fromarray(images[0].numpy()).save(png)  # a real test digit (a 7)
        preprocess_ms = statistics.median(timings_ms(lambda: to_mnist(png), 100, warmup=5))
        load = os.getloadavg()[0]
        start = time.perf_counter()
        rows = []
        for name in args.models:
            rows.append(bench_model(name, images, png, args.runs, args.threads))
            print(f"  {name} done", flush=True)
        elapsed = time.perf_counter() - start

    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
          f"torch.get_num_threads() = {torch.get_num_threads()}; onnxruntime {ort.__version__}, "
          f"intra_op_num_threads = {args.threads}, sequential, all graph optimisations")
    print(f"load average (1 min) before / after: {load:.2f} / {os.getloadavg()[0]:.2f}; "
          f"{args.runs} single-image runs per model (alexnet {max(5, args.runs // HEAVY['alexnet'])}); "
          f"took {elapsed:.0f} s\n")
    print(markdown(rows))
    print(f"\nto_mnist(PNG) alone, p50: {preprocess_ms:.2f} ms (inside both end-to-end columns)")


if __name__ == "__main__":
    main()
