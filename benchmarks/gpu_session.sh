#!/usr/bin/env bash
# `fast`, `best` and `best-fashion` measured once on a GPU machine (about 8.5 minutes; give the run a 600 s limit):
#   bash benchmarks/gpu_session.sh              # results in $OUT (default ./gpu_out)
#   bash benchmarks/gpu_session.sh --budget 420 # a shorter run; any benchmarks/gpu_session.py flag passes on
# Fashion-MNIST is not in the repo: copy it beside it first, as a carried folder (here, in the repo root:
#   mkdir -p .data && cp -r /path/to/fashion-mnist .data/ && echo /.data/ >> .git/info/exclude; carry ".data"),
# or pass --fashion-dir PARENT; without it the best-fashion part is skipped and says so.
# torch: the machine's own CUDA build. That machine reaches no package registry, and `pip install torch==2.13.0`
# (the README's pin) would at best bring the CPU wheel, so nothing is installed: digitlab runs from src/ on
# PYTHONPATH, and its other needs (numpy, pillow, safetensors, matplotlib, tqdm) are checked first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
export OUT
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
    date -u
    nvidia-smi -L 2>&1 || true
    "$PY" - <<'PYEOF' || exit 3
import importlib.util, sys
missing = [m for m in ("torch", "numpy", "PIL", "safetensors", "matplotlib", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (carry them as wheels, see the device README)")
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
PYEOF
    "$PY" benchmarks/gpu_session.py --out "$OUT" "$@"
} 2>&1 | tee "$OUT/session.log"
