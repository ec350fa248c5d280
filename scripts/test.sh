#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run the whole suite: the quick subset first
# (`pytest -m quick`, about a minute), so that a broken commit fails there, then every other test.
#   bash scripts/test.sh [pytest args...]   (with arguments: one `pytest ARGS` run instead)
# torch==2.13.0 is the CPU build; with a GPU, install your CUDA build of torch first and drop the pin.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev]"

# From Debian (apt; through sudo when not root): Chromium, which the browser test drives through Playwright (no
# browser download); Fashion-MNIST, which lands in /usr/share/datasets/fashion-mnist, one of the folders digitlab
# reads datasets from; and PostgreSQL's server, for the tests of sweeps that share one Optuna study between
# machines. Debian keeps initdb and postgres under /usr/lib/postgresql/<version>/bin, off PATH. Those tests start a
# throwaway server of their own (tests/postgres_server.py): the cluster the package may start on port 5432 is unused.
packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || packages+=(dataset-fashion-mnist)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
if [ ${#packages[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if [ $# -gt 0 ]; then
    exec python -m pytest "$@"
fi
python -m pytest -m quick
python -m pytest -m "not quick"
