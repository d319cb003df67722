#!/usr/bin/env bash
# The test command: installs what the tests need, builds (kernels compiled for sm_80 and
# sm_90 — a kernel that does not compile fails here), and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. The CUDA compiler from PyPI (pinned 13.0.x) into .tools/cuda.
scripts/install-cuda-toolchain.sh

# 2. Fashion-MNIST from Debian, when we may install packages.
scripts/install-datasets.sh
if [[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  export ROTE_REQUIRE_FASHION_MNIST=1
fi

# 3. The real-text corpus (Perl's standard library, from perl-modules-5.xx).
text_corpus=$(scripts/install-text-corpus.sh)
if [[ -n "$text_corpus" ]]; then
  export ROTE_TEXT_CORPUS="$text_corpus"
fi

# 4. Build with nvcc required, then test. Keep the user's cache out of the tests.
export ROTE_REQUIRE_NVCC=1
export ROTE_CACHE="${ROTE_CACHE:-$PWD/target/rote-cache}"
cargo build --release
cargo test --release -- --nocapture

# 5. The Python package: the wheel built into .tools/pyvenv, its tests against the CLI,
#    with Ray (from PyPI, into the same venv) for rote.ray's local-cluster test.
scripts/build-python.sh
if ! .tools/pyvenv/bin/python -c "import ray" 2>/dev/null; then
  .tools/pyvenv/bin/python -m pip install --quiet --disable-pip-version-check ray
fi
ROTE_BIN="$PWD/target/release/rote" ROTE_DISABLE_CUDA=1 ROTE_REQUIRE_RAY=1 .tools/pyvenv/bin/python -m pytest -q python/tests
