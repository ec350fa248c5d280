"""Vetting an untrusted .onnx file before this process loads it: a static look at its bytes, then a probe process.

    data = read_onnx("model.onnx")                 # the bytes, refused over MAX_BYTES
    digest = vet(data, "model.onnx", 5.0)          # a RunError or ModelError (one line), else the bytes' sha256

Why a probe process: onnxruntime does its heaviest work on a file while creating the InferenceSession (constant
folding, pre-packing weights), before any per-call deadline can apply. A graph of 300 MatMuls over constant
512x512 matrices kept `InferenceSession` busy for 10.6 s on a busy 2-core machine (990 of them: 13-17 s); a
36 KB file whose Tile node repeats a constant 600,000 times takes 2.5 GB of memory. So the session is first
created, and the Predictor's load check (two fixed images under the call deadline) run, in a child process (`python -m digitlab.onnx_guard`) whose address
space is capped (RLIMIT_AS: what it has once onnxruntime is imported, plus MEMORY_MB and 4x the file) and which
ends itself if creating the session takes more than load_limit_s (2 s plus 0.05 s per MB); the two images then
have the call deadline. Only a file that passes is loaded here, from the same bytes (never re-read from disk,
which another process may have changed meanwhile), so a file just under the limits costs about twice them.

Why a static look first (onnx_static.static_check): well under a millisecond, it refuses at once what no
exported file holds (more than 1,000 nodes, custom operators, local functions, tensor data in other files),
before a probe process is started for it.

What this does not bound: a file that behaves on the probe's two images but allocates without end for another
input. Each call's time is bounded (backends.deadline_for); its memory is bounded in `serve`'s worker processes
(serve/worker.py caps their address space), not in `predict --onnx`'s own process.
"""
from __future__ import annotations

import hashlib
import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

from digitlab.errors import ModelError, RunError
from digitlab.onnx_static import static_check

MAX_BYTES = 512 * 2**20  # the largest .onnx file read (AlexNet, the largest registered model, exports 227 MB)
LOAD_LIMIT_S = 2.0  # creating the session in the probe process (the shipped model's: 0.02 s), plus LOAD_S_PER_MB
LOAD_S_PER_MB = 0.05  # of file (AlexNet's 227 MB export: about 3 s on 2 busy cores); the probe's call has its deadline
STARTUP_S = 30.0  # the probe process's interpreter start and imports (0.5-2 s on 2 busy cores): a backstop only
MEMORY_MB = 1024  # address space the probe process may add once onnxruntime is imported, beyond 4x the file


def read_onnx(path: str | Path) -> bytes:
    """The file's bytes, refused (RunError) if it is not a regular file or larger than MAX_BYTES."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise RunError(f"{path} {what} (expected an .onnx file written by `digitlab export`)")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # bounded, whatever the file grew to since is_file()
    except OSError as e:
        raise RunError(f"cannot read {path} ({e.strerror or e})") from None
    if len(data) > MAX_BYTES:
        raise RunError(f"{path} is larger than any model digitlab exports (limit {MAX_BYTES / 2**20:,.0f} MB)")
    return data


def vet(data: bytes, source: str, deadline_s: float) -> str:
    """Refuse `data` unless it passes static_check and the probe process; returns its sha256 (hex), which lets a
    process that reads the same file later (a serving worker) skip the probe for the very same bytes."""
    static_check(data, source)
    probe_in_child(data, source, deadline_s)
    return hashlib.sha256(data).hexdigest()


#### The probe process


def load_limit_s(size: int) -> float:
    """Seconds the probe process may spend creating the session of a file of `size` bytes."""
    return LOAD_LIMIT_S + LOAD_S_PER_MB * size / 2**20


def probe_in_child(data: bytes, source: str, deadline_s: float) -> None:
    """Create the session and run the Predictor's load check in a capped child; raise what it refused with. The
    child times its own session creation (SIGALRM, whose default action ends it even inside onnxruntime); this
    process kills it only past all its limits together, should the child's timer somehow not fire."""
    load_s, memory_mb = load_limit_s(len(data)), MEMORY_MB + 4 * len(data) // 2**20
    slow = (f"refusing the model {source}: onnxruntime took more than {load_s:.3g} s to create its session "
            f"(limit for a {len(data) / 2**20:.2g} MB file)")
    command = [sys.executable, "-m", "digitlab.onnx_guard", source, repr(deadline_s), str(memory_mb), repr(load_s)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.communicate(data, timeout=STARTUP_S + load_s + 2 * deadline_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise ModelError(slow) from None
    verdict = last_json_line(out)
    if verdict.get("ok"):
        return
    if not verdict and child.returncode == -signal.SIGALRM:
        raise ModelError(slow)
    if verdict.get("memory"):
        raise ModelError(f"refusing the model {source}: loading it and answering two images needed more than "
                         f"{memory_mb:,} MB of memory")
    if "message" not in verdict:  # a crash that says nothing: name how it ended
        raise ModelError(f"refusing the model {source}: the process that tried it {how_it_ended(child, err)} "
                         f"(its memory limit: {memory_mb:,} MB)")
    error = ModelError if verdict.get("error") == "ModelError" else RunError
    raise error(str(verdict["message"]).splitlines()[0])


def how_it_ended(child: subprocess.Popen, err: bytes) -> str:
    """A crashed probe process's end in a few words: the signal that killed it (onnxruntime aborts on some failed
    allocations) or its last line on stderr."""
    if child.returncode < 0:
        try:
            return f"was killed by {signal.Signals(-child.returncode).name}"
        except ValueError:
            return f"was killed by signal {-child.returncode}"
    tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
    return f"failed ({tail[0][:200]})"


def last_json_line(out: bytes) -> dict:
    """The child's verdict (its last stdout line, a JSON object), or {} if it wrote none."""
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}
    return verdict if isinstance(verdict, dict) else {}


def vm(key: str) -> int:
    """This process's address space in bytes, now ("VmSize") or at its largest ("VmPeak"); 0 without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cap_memory(extra_mb: int) -> int:
    """Cap this process's address space at its current size plus `extra_mb`; returns the cap in bytes (0: no
    /proc to measure from, and no cap: the time limit still holds)."""
    size = vm("VmSize")
    if not size:
        return 0
    cap = size + extra_mb * 2**20
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:  # a lower limit set from outside (ulimit -v) stays
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


def out_of_memory(error: Exception, cap: int) -> bool:
    """Whether a refusal in the probe process came from its memory cap: onnxruntime reports a failed allocation
    as any other failure, naming its arena or the allocation; or the process grew to within 64 MB of the cap."""
    text = str(error).lower()
    return bool(cap) and (any(word in text for word in ("alloc", "bfc_arena")) or vm("VmPeak") > cap - 64 * 2**20)


def child_main(argv: list[str]) -> int:
    """The probe process: model bytes on stdin, one JSON verdict line on stdout; killed by its own SIGALRM if
    creating the session takes more than `load_s`, the argument after the memory cap."""
    source, deadline_s, memory_mb, load_s = argv[0], float(argv[1]), int(argv[2]), float(argv[3])
    cpu = int(STARTUP_S + load_s + 2 * deadline_s) + 1  # should the parent be gone: CPU seconds, then SIGXCPU
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    data = sys.stdin.buffer.read()
    import onnxruntime  # noqa: F401 (before the cap: what it maps is not the file's doing)

    from digitlab.backends import OnnxBackend
    from digitlab.errors import DigitlabError
    from digitlab.predict import ModelInfo, Predictor

    cap = cap_memory(memory_mb)
    try:
        signal.setitimer(signal.ITIMER_REAL, load_s)  # SIGALRM's default action: the process ends
        backend = OnnxBackend(data, threads=1, source=source, deadline_s=deadline_s)
        signal.setitimer(signal.ITIMER_REAL, 0)
        Predictor(backend, ModelInfo.from_meta(backend.meta, backend.source))  # the load check, under its deadline
        verdict: dict = {"ok": True}
    except MemoryError:
        verdict = {"memory": True}
    except DigitlabError as e:
        verdict = {"memory": True} if out_of_memory(e, cap) else {"error": type(e).__name__, "message": str(e)}
    print(json.dumps(verdict), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
