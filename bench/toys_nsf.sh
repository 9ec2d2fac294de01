#!/usr/bin/env bash
# Spline flows against RealNVP and MAF on the shared toy sets, same budget for every flow (5 layers, conditioners
# 2 x 128, batch 256, Adam lr 1e-3, STEPS steps; nflow's validation split and best weights), test mean
# log-likelihood and the gap to the best possible value in limits.json.
#   bench/toys_nsf.sh [STEPS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-3000}
threads=${2:-0}
toy=../shared/data/toy
bin=${NFLOW:-./target/release/nflow}
t=(); [ "$threads" -gt 0 ] && t=(--threads "$threads")
out=$(mktemp -d)
echo "| data | limit | realnvp | maf | nsf-c | nsf-ar |"
echo "|---|---|---|---|---|---|"
for d in moons 8gaussians checkerboard rings; do
  row="| $d | $(python3 -c "import json;print(f\"{json.load(open('$toy/limits.json'))['$d']['best_mean_log_prob']:.4f}\")") |"
  for f in realnvp maf nsf-c nsf-ar; do
    s=$(date +%s.%N)
    "$bin" "${t[@]}" train --data "$toy/$d-train.csv" --flow "$f" --layers 5 --hidden 128 --depth 2 --steps "$steps" \
      --batch-size 256 --lr 1e-3 --quiet --out "$out/$d-$f" 2>/dev/null
    e=$(date +%s.%N)
    lp=$("$bin" "${t[@]}" eval --model "$out/$d-$f" --data "$toy/$d-test.csv" --json |
      python3 -c "import json,sys;print(f\"{json.load(sys.stdin)['mean_log_prob']:.4f}\")")
    row="$row $lp ($(printf '%.0f' "$(echo "$e - $s" | bc)") s) |"
  done
  echo "$row"
done
rm -rf "$out"
