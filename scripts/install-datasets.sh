#!/usr/bin/env bash
# Installs the datasets the tests and benchmarks read: Fashion-MNIST from Debian's
# dataset-fashion-mnist (into /usr/share/datasets/fashion-mnist), when we may install
# packages. Prints a warning and exits 0 otherwise: what needs it says so when it runs.
set -euo pipefail
if [[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]]; then
  echo "installing dataset-fashion-mnist" >&2
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; })
else
  echo "warning: dataset-fashion-mnist is not installed and this is not root (install it with: sudo apt-get install dataset-fashion-mnist)" >&2
fi
