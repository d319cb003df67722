#!/usr/bin/env bash
# Convolutional networks against PyTorch on the same weights and batches: the forward
# pass and the SGD training step of the small Fashion-MNIST CNN, a narrow and the full
# CIFAR ResNet-18. Installs torch (and numpy) from PyPI into .tools/torch on first use
# (several GB: it is never part of the test command), builds rote, runs `rote bench cnn`.
# Extra arguments go to every `rote bench cnn` call (e.g. --json, --repeats 5).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! PYTHONPATH=.tools/torch python3 -c "import torch, numpy" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/torch torch numpy
fi
cargo build --release --quiet
export PYTHONPATH=.tools/torch
target/release/rote bench cnn --model cnn:c32-bn-relu-p2-c64-bn-relu-p2-c128-bn-relu-gap-fc10 --input 1x28x28 --batch 128 "$@"
target/release/rote bench cnn --model resnet18-cifar:classes=100,width=16 --input 3x32x32 --batch 64 "$@"
target/release/rote bench cnn --model resnet18-cifar:classes=100 --input 3x32x32 --batch 32 "$@"
