#!/usr/bin/env bash
# LSSVM against the two memory machines (MIMM, WIMM) with cross-validated
# hyper-parameters, on digits and a Fashion-MNIST subset: test accuracy and times.
#
#   scripts/lssvm-memory-table.sh [OUT_DIR]      # default: target/lssvm-memory-table
#
# Each machine: 5-fold cross-validation over the RBF width, γ and (memory machines)
# the memory's weight μ and Gaussian width, then a fit on all the training samples
# with the best cell, scored on the held-out or test split. Prints a Markdown table
# (bench/RESULTS.md has the one this produced); the models and JSON stay in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/lssvm-memory-table}
rote=${ROTE:-target/release/rote}
mkdir -p "$out"

# name | data | extra data flags | σ grid | γ grid | memory widths (μ: 0.01, 0.1, 1, 10)
datasets=(
  "digits|digits|--holdout 0.2|2,4,8|10,100,1000|1,2,4"
  "fashion-2000|fashion-mnist:subset=200||4,8,16|1,10,100|2,4,8"
)
echo "| data | machine | chosen σ, γ, memory | CV accuracy | test accuracy | CV s | fit s |"
echo "|---|---|---|---|---|---|---|"
for entry in "${datasets[@]}"; do
  IFS='|' read -r name data extra sigmas gammas widths <<<"$entry"
  for machine in none mimm wimm; do
    memory=()
    if [[ $machine != none ]]; then
      memory=(--memory "$machine" --memory-fn gauss:sigma=1 --grid-memory-weight 0.01,0.1,1,10 --grid-memory-width "$widths")
    fi
    model="$out/$name-$machine"
    rm -rf "$model"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$rote" lssvm fit --data "$data" $extra --kernel rbf:sigma=1 --cv 5 --grid-sigma "$sigmas" --grid-gamma "$gammas" \
      "${memory[@]}" --out "$model" --json >"$model.json"
    end=$(date +%s.%N)
    python3 - "$name" "$machine" "$model.json" "$start" "$end" <<'EOF'
import json, sys
name, machine, path = sys.argv[1], sys.argv[2], sys.argv[3]
total = float(sys.argv[5]) - float(sys.argv[4])
v = json.load(open(path))
best = max(c["accuracy"] for c in v["cv"])
m = v.get("memory")
mem = "—" if not m else f"μ {m['weight']:g}, δ σ {m['function'].get('sigma')}"
label = {"none": "LSSVM", "mimm": "MIMM", "wimm": "WIMM"}[machine]
print(f"| {name} | {label} | σ {v['kernel']['sigma']:g}, γ {v['gamma']:g}, {mem} | {best:.4f} | {v['test_accuracy']:.4f} | {total - v['fit_seconds']:.1f} | {v['fit_seconds']:.2f} |")
EOF
  done
done
