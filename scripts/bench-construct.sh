#!/usr/bin/env bash
# The construction benchmark: installs numpy (for the baseline) into .tools/py, builds
# rote, and times both on the same data in one run. Extra arguments go to
# `rote bench construct` (e.g. --cases moons,moons-1m,fashion --repeats 10).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! PYTHONPATH=.tools/py python3 -c "import numpy" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/py numpy
fi
cargo build --release --quiet
PYTHONPATH=.tools/py exec target/release/rote bench construct "$@"
