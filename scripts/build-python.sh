#!/usr/bin/env bash
# Builds the Python package (python/: PyO3 + maturin, an abi3 wheel for CPython ≥ 3.9)
# into target/wheels and installs it into the virtual environment .tools/pyvenv (made
# here, with maturin, numpy and pytest, on first use). Prints the wheel's path.
# Elsewhere: `pip install ./python` builds and installs it into any environment.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/pyvenv
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
if ! $venv/bin/python -c "import maturin, numpy, pytest" 2>/dev/null; then
  $venv/bin/python -m pip install --quiet --disable-pip-version-check maturin numpy pytest
fi
rm -f target/wheels/rote-*.whl
(cd python && ../$venv/bin/maturin build --release --quiet --out ../target/wheels >&2)
wheel=$(ls target/wheels/rote-*.whl)
$venv/bin/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
echo "$wheel"
