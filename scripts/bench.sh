#!/usr/bin/env bash
# Every benchmark with its baseline, side by side, one table: installs the baselines'
# Python packages into .tools/ (numpy and faiss-cpu into .tools/py, JAX into
# .tools/pyjax) and the datasets the benchmarks read (Fashion-MNIST), builds rote, and
# runs `rote bench` (extra arguments go to it, e.g. --json or --device cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-datasets.sh
if [[ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz && -z "${ROTE_FASHION_MNIST_DIR:-}" ]]; then
  echo "error: the benchmarks read Fashion-MNIST: install dataset-fashion-mnist (as root), or point ROTE_FASHION_MNIST_DIR at its four .gz files" >&2
  exit 1
fi
if ! PYTHONPATH=.tools/py python3 -c "import numpy, faiss" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/py numpy faiss-cpu
fi
if ! PYTHONPATH=.tools/pyjax python3 -c "import jax" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/pyjax jax
fi
cargo build --release --quiet
PYTHONPATH=.tools/py:.tools/pyjax exec target/release/rote bench "$@"
