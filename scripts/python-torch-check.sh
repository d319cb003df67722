#!/usr/bin/env bash
# rote.torch against real PyTorch (python/tests/torch_check.py): installs torch into
# .tools/torch on first use (the PyPI wheel is large: never part of the test command) and
# runs the check with the wheel scripts/test.sh builds into .tools/pyvenv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! PYTHONPATH=.tools/torch python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/torch torch numpy
fi
scripts/build-python.sh >/dev/null
ROTE_DISABLE_CUDA="${ROTE_DISABLE_CUDA:-1}" PYTHONPATH=.tools/torch exec .tools/pyvenv/bin/python python/tests/torch_check.py
