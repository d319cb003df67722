#!/usr/bin/env bash
# GPU verification in two halves.
#
#   scripts/gpu-check.sh          (here, with Rust): builds the release binary and the
#                                 test binaries, copies them into .gpu/, and prints the
#                                 one command to run on the GPU machine.
#   scripts/gpu-check.sh --run    (there, no Rust): runs every CPU↔GPU agreement test
#                                 and the GPU benchmarks with the GPU required (a missing
#                                 GPU fails), then prints a summary.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--run" ]]; then
  set -e
  scripts/install-cuda-toolchain.sh
  export ROTE_REQUIRE_NVCC=1
  cargo build --release
  rm -rf .gpu && mkdir -p .gpu/tests
  cp target/release/rote .gpu/rote
  cargo test --release --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        if m["target"]["name"] in ("gpu", "rote"):
            shutil.copy(m["executable"], ".gpu/tests/" + m["target"]["name"])
'
  strip --strip-debug .gpu/rote .gpu/tests/*
  ls .gpu/tests
  du -sh .gpu
  echo
  echo "Now run on the GPU machine:  bash scripts/gpu-check.sh --run   (carry: .gpu)"
  exit 0
fi

export ROTE_REQUIRE_GPU=1
# cuBLAS (curvature products) is loaded at run time: make sure the loader finds it.
cublas=$(find /usr/local /usr/lib /opt -name 'libcublas.so*' 2>/dev/null | head -n1)
if [[ -n "$cublas" ]]; then
  export LD_LIBRARY_PATH="$(dirname "$cublas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
log=${OUT:-/tmp}/gpu-check.log
: > "$log"
status=0
echo "== device" | tee -a "$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$log"
echo "cuBLAS: ${cublas:-not found}" | tee -a "$log"
.gpu/rote device 2>&1 | tee -a "$log" || status=1
for t in .gpu/tests/*; do
  echo "== tests: $(basename "$t")" | tee -a "$log"
  timeout 300 "$t" --test-threads=1 --nocapture 2>&1 | tee -a "$log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
done
echo "== bench frame" | tee -a "$log"
timeout 120 .gpu/rote bench frame --device cuda --scale 4 --repeats 5 2>&1 | tee -a "$log" || status=1
echo "== bench construct" | tee -a "$log"
timeout 120 .gpu/rote bench construct --cases moons,moons-1m --python none --device cuda --repeats 5 2>&1 | tee -a "$log" || status=1
echo "== bench curvature" | tee -a "$log"
timeout 120 .gpu/rote bench curvature --python none --device cuda --batch 4096 --repeats 5 2>&1 | tee -a "$log" || status=1
timeout 120 .gpu/rote bench curvature --model mlp:784-512-512-10,act=gelu --python none --device cuda --batch 2048 --repeats 3 2>&1 | tee -a "$log" || status=1
echo "== bench construct cifar-like (GPU only)" | tee -a "$log"
timeout 240 .gpu/rote bench construct --cases cifar-like --python none --device cuda --skip-cpu --repeats 1 2>&1 | tee -a "$log" || status=1
echo "== bench denoise (GPU only; N=60000, D=784, B=4096)" | tee -a "$log"
timeout 240 .gpu/rote bench denoise --data blobs:n=60000,dim=784,centers=10,seed=3 --batch 4096 --python none --device cuda --skip-cpu --repeats 2 2>&1 | tee -a "$log" || status=1
echo "== bench knn" | tee -a "$log"
timeout 120 .gpu/rote bench knn --data blobs:n=60000,dim=784,centers=10,seed=3 --queries 10000 --python none --device cuda --repeats 3 2>&1 | tee -a "$log" || status=1
echo "== denoise sample + memratio on digits (cuda)" | tee -a "$log"
timeout 120 .gpu/rote denoise sample --data digits --samples 2000 --device cuda --out "${OUT:-/tmp}/digits-samples" 2>&1 | tee -a "$log" || status=1
timeout 60 .gpu/rote memratio --generated "${OUT:-/tmp}/digits-samples/samples.npy" --data digits --device cuda 2>&1 | tee -a "$log" || status=1
echo "== denoiser training (cuda) and EMM on digits" | tee -a "$log"
timeout 120 .gpu/rote bench denoise-train --python none --device cuda --steps 500 2>&1 | tee -a "$log" || status=1
timeout 180 .gpu/rote emm --data digits --sizes 20,200 --steps 2000 --samples 500 --device cuda --out "${OUT:-/tmp}/emm" 2>&1 | tee -a "$log" || status=1
echo "== text: Bloom filters of a 1e9-token corpus (random u16 ids, documents of ~2000) on the GPU" | tee -a "$log"
big=${OUT:-/tmp}/../text-big
rm -rf "$big" && mkdir -p "$big"
python3 -c '
import numpy as np, sys
rng = np.random.default_rng(7)
t = rng.integers(0, 50000, size=1_000_000_000, dtype=np.uint16)
t[rng.integers(0, t.size, size=t.size // 2000)] = 65535
t.tofile(sys.argv[1])
' "$big/tokens.u16" 2>&1 | tee -a "$log"
timeout 120 .gpu/rote text import --raw "$big/tokens.u16" --dtype u16 --separator 65535 --out "$big/c" 2>&1 | tee -a "$log" || status=1
/usr/bin/time -f "index wall %e s" timeout 180 .gpu/rote text index "$big/c" -n 13 --device cuda 2>&1 | tee -a "$log" || status=1
echo "== bench text (1e8 tokens, CPU and GPU)" | tee -a "$log"
head -c 200000000 "$big/tokens.u16" > "$big/small.u16"
timeout 60 .gpu/rote text import --raw "$big/small.u16" --dtype u16 --separator 65535 --out "$big/s" 2>&1 | tee -a "$log" || status=1
timeout 240 .gpu/rote bench text "$big/s" -n 13 --python none --device cuda --repeats 3 2>&1 | tee -a "$log" || status=1
rm -rf "$big"

echo
echo "================ GPU CHECK SUMMARY ================"
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | sed 's/^/device: /'
grep -E '^GPU-CHECK' "$log" | sed 's/^GPU-CHECK //' | column -t 2>/dev/null || grep -E '^GPU-CHECK' "$log"
grep -E '^test result|FAILED|panicked' "$log"
echo "bench:"
sed -n '/== bench frame/,$p' "$log" | grep -E 'cpu|cuda|workload|numpy|cublas|faiss|memorization ratio|samples from|EMM|Bloom|index wall|^ +[0-9]+ +[0-9.]+$'
[[ $status -eq 0 ]] && echo "RESULT: PASS" || echo "RESULT: FAIL"
exit $status
