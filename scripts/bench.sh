#!/usr/bin/env bash
# Every benchmark with its baseline, side by side, one table: installs the baselines'
# Python packages into .tools/ (numpy and faiss-cpu into .tools/py, JAX into
# .tools/pyjax), builds rote, and runs `rote bench` (extra arguments go to it, e.g.
# --json or --device cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! PYTHONPATH=.tools/py python3 -c "import numpy, faiss" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/py numpy faiss-cpu
fi
if ! PYTHONPATH=.tools/pyjax python3 -c "import jax" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/pyjax jax
fi
cargo build --release --quiet
PYTHONPATH=.tools/py:.tools/pyjax exec target/release/rote bench "$@"
