#!/usr/bin/env bash
# The test command: installs what the tests need, builds (kernels compiled for sm_80 and
# sm_90 — a kernel that does not compile fails here), and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. The CUDA compiler from PyPI (pinned 13.0.x) into .tools/cuda.
scripts/install-cuda-toolchain.sh

# 2. Fashion-MNIST from Debian, when we may install packages.
if [[ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    echo "installing dataset-fashion-mnist" >&2
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; })
  else
    echo "warning: dataset-fashion-mnist is not installed and this is not root; its test will skip" >&2
  fi
fi
if [[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  export ROTE_REQUIRE_FASHION_MNIST=1
fi

# 3. Build with nvcc required, then test. Keep the user's cache out of the tests.
export ROTE_REQUIRE_NVCC=1
export ROTE_CACHE="${ROTE_CACHE:-$PWD/target/rote-cache}"
cargo build --release
cargo test --release -- --nocapture
