#!/usr/bin/env bash
# Installs the CUDA compiler (nvcc + NVVM + headers) from PyPI into .tools/cuda,
# pinned to 13.0.x: PTX from a newer nvcc does not load under a CUDA 13.0 driver.
# Idempotent: prints nothing and does nothing when the pinned versions are present.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.tools/cuda"
stamp="$dest/.installed-13.0"
packages=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
)
want="${packages[*]}"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "installing the CUDA 13.0 compiler from PyPI into $dest" >&2
rm -rf "$dest"
mkdir -p "$dest"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest/site" "${packages[@]}"
# The wheels put the toolkit under nvidia/cu13/; nvcc expects bin/, include/, nvvm/ side by side.
toolkit="$(dirname "$(dirname "$(find "$dest/site" -path '*/bin/nvcc' -type f | head -n1)")")"
if [[ ! -x "$toolkit/bin/nvcc" ]]; then
  echo "error: nvcc not found in the installed wheels under $dest/site" >&2
  exit 1
fi
ln -sfn "$toolkit" "$dest/toolkit"
chmod +x "$toolkit"/bin/* "$toolkit"/nvvm/bin/* 2>/dev/null || true
echo "$want" > "$stamp"
"$dest/toolkit/bin/nvcc" --version | tail -n 2 >&2
