"""Hostile .onnx files against `digitlab predict --onnx` and `digitlab serve FILE.onnx`: run by attack.py (its
--onnx-files, on by default) or alone (`python benchmarks/onnx_attacks.py`, about a minute):

1. 990 MatMuls of one constant 512x512 matrix by itself (a 1 MB file; 990 keeps the graph under the static
   check's 1,000 nodes): onnxruntime folds them while it creates the session, before any call and its deadline
   (300 of them took 10.6 s on a busy machine, 2.2 s on an idle one);
2. a Tile of 1,024 constant floats repeated 600,000 times (a 36 KB file): 2.4 GB once computed.
(`--control` first measures what each does to onnxruntime alone, without digitlab: the Tile takes its 2.6 GB.)

Each file goes to `predict --onnx FILE DIGIT.png` and to `serve FILE`, which must refuse it before it listens.
For each: the exit status and the one-line error, the seconds from start to refusal, and the largest peak RSS
(VmHWM) among the command's processes, the probe process included, read from /proc every 10 ms.
Thresholds: refused with one line, at most 1.5 GB of RSS, and within 30 s of the command's own start-up: the
time the same command takes to refuse a file that does not exist, measured first (`serve` imports PyTorch and
the web stack before it looks at a file: 2-3 s on an idle machine, 20 s on 2 cores shared with a test suite).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from server_process import REPO, free_port, process_tree

MAX_SECONDS = 30.0
MAX_RSS_MB = 1536.0
KILL_AFTER_S = 120.0  # a command still running then is stopped (and fails its row)


def hostile_files(folder: Path) -> dict[str, Path]:
    """The two files, with digitlab's metadata so that they get past the format check to onnxruntime."""
    from onnx import TensorProto, helper, numpy_helper

    from digitlab.backends import encode_metadata

    def const(name: str, value) -> object:
        return numpy_helper.from_array(np.asarray(value), name)

    def write(name: str, nodes: list, inits: list) -> Path:
        w = (np.random.default_rng(0).normal(size=(784, 10)) * 0.01).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["raw"]), *nodes,
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
             helper.make_node("Mul", ["total", "zero"], ["nothing"]),
             helper.make_node("Add", ["raw", "nothing"], ["logits"])],
            name, [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 28, 28])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
            [const("w", w), const("zero", np.float32(0)), *inits])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        helper.set_model_props(model, encode_metadata({"model": name, "normalization": "standard",
                                                       "classes": list("0123456789")}))
        path = folder / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        return path

    matrix = (np.random.default_rng(1).normal(size=(512, 512)) / 23).astype(np.float32)
    matmuls = [helper.make_node("MatMul", ["c" if i == 0 else f"m{i - 1}", "c"], ["big" if i == 989 else f"m{i}"])
               for i in range(990)]
    return {"990 constant MatMuls": write("matmuls", matmuls, [const("c", matrix)]),
            "Tile to 2.4 GB": write("tile", [helper.make_node("Tile", ["ones", "repeats"], ["big"])],
                                    [const("ones", np.ones(1024, np.float32)),
                                     const("repeats", np.array([600_000], np.int64))])}


@dataclass
class Outcome:
    status: int
    stderr: str
    seconds: float
    peak_rss_mb: float  # the largest VmHWM among the command's processes


def vm_hwm_mb(pid: int) -> float:
    """A process's peak RSS so far (VmHWM, of its memory since its last exec), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_measured(args: list[str]) -> Outcome:
    """`python -m digitlab ARGS` (or `python ARGS...` when ARGS starts with "-c"): its exit status, stderr, wall time, and the largest peak RSS among it and its
    descendants (each one's VmHWM, read every 10 ms while it lives: wait4's ru_maxrss would start from this
    script's own size, which a forked child inherits as its high-water mark); its group is killed after
    KILL_AFTER_S."""
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        command = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "digitlab", *args]
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=err, start_new_session=True)
        peaks: dict[int, float] = {}
        while process.poll() is None:
            if time.monotonic() - started > KILL_AFTER_S:
                os.killpg(process.pid, signal.SIGKILL)
            for pid in process_tree(process.pid):
                peaks[pid] = max(peaks.get(pid, 0.0), vm_hwm_mb(pid))
            time.sleep(0.01)  # the sampling interval
        seconds = time.monotonic() - started
        err.seek(0)
        return Outcome(process.returncode, err.read().decode(errors="replace"), seconds,
                       max(peaks.values(), default=0.0))


def attack_hostile_onnx(number: int, make_row: Callable[..., object]) -> list:
    """Attack `number` of attack.py: each hostile file through `predict --onnx` and `serve`; rows made by
    `make_row(attack, threshold, measured, ok)`."""
    from PIL import Image

    from digitlab.data import load_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ds = load_dataset("mnist", progress=False)
        digit = folder / "seven.png"
        Image.fromarray(255 - ds.test_images[0].numpy()).save(digit)
        commands = {"predict --onnx": lambda path: ["predict", "--onnx", str(path), str(digit)],
                    "serve": lambda path: ["serve", str(path), "--host", "127.0.0.1", "--port", str(free_port())]}
        startup = {command: run_measured(args(folder / "missing.onnx")).seconds for command, args in commands.items()}
        for name, path in hostile_files(folder).items():
            size = f"{path.stat().st_size / 1000:,.0f} KB"
            for command, args in commands.items():
                outcome = run_measured(args(path))
                lines = outcome.stderr.strip().splitlines()
                refused = outcome.status == 1 and len(lines) == 1 and lines[0].startswith("digitlab: error: refusing")
                beyond = outcome.seconds - startup[command]
                ok = refused and beyond < MAX_SECONDS and outcome.peak_rss_mb < MAX_RSS_MB
                said = lines[-1][len("digitlab: error: "):] if lines else "(nothing)"
                rows.append(make_row(f"{number}. {name} ({size}) in `{command}`",
                                     f"refused in one line, < {MAX_SECONDS:g} s after start-up, peak RSS "
                                     f"< {MAX_RSS_MB:,.0f} MB",
                                     f"exit {outcome.status} after {outcome.seconds:.1f} s (a missing file: "
                                     f"{startup[command]:.1f} s), peak RSS {outcome.peak_rss_mb:,.0f} MB: "
                                     f"\"{said.split(': ', 1)[-1][:120]}\"", ok))
    return rows


CONTROL = """import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
session.run(None, {"images": np.zeros((2, 1, 28, 28), np.float32)})
"""


def control() -> None:
    """What each file does to onnxruntime alone, with no digitlab in the way: the session and one call of two
    images, in a process of its own (the Tile one takes its 2.6 GB: run only with --control)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in hostile_files(Path(tmp)).items():
            outcome = run_measured(["-c", CONTROL, str(path)])
            print(f"control, onnxruntime alone: {name}: session and one call {outcome.seconds:.1f} s "
                  f"(exit {outcome.status}), peak RSS {outcome.peak_rss_mb:,.0f} MB")


def main() -> int:
    @dataclass
    class Row:
        attack: str
        threshold: str
        measured: str
        ok: bool

    print(f"machine: {os.cpu_count()} logical CPUs; load average (1 min) before: {os.getloadavg()[0]:.2f}\n")
    if "--control" in sys.argv[1:]:
        control()
    rows = attack_hostile_onnx(1, Row)
    print("| attack | threshold | measured | pass |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row.attack} | {row.threshold} | {row.measured} | {'pass' if row.ok else '**FAIL**'} |")
    print(f"\nload average (1 min) after: {os.getloadavg()[0]:.2f}")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
