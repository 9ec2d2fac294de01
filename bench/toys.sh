#!/usr/bin/env bash
# RealNVP on the shared toy sets with zuko's settings (8 layers, MLP 2x128, batch 256, lr 1e-3), then the same
# fits in zuko, printing test mean log-likelihoods beside the best possible values in limits.json.
# Usage: bench/toys.sh [PYTHON] [STEPS]   (PYTHON with torch + zuko; skip the peer with PYTHON=none)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-../peers-venv/bin/python}
steps=${2:-4000}
toy=../shared/data/toy
out=$(mktemp -d)
cargo build --release -q
for d in moons 8gaussians checkerboard rings; do
  ours=$(./target/release/nflow train --data "$toy/$d-train.csv" --flow realnvp --layers 8 --hidden 128 --depth 2 \
    --steps "$steps" --batch-size 256 --lr 1e-3 --quiet --out "$out/$d" 2>/dev/null &&
    ./target/release/nflow eval --model "$out/$d" --data "$toy/$d-test.csv" --json)
  theirs='{}'
  if [ "$py" != none ]; then
    theirs=$("$py" ../shared/bench/peers.py fit --lib zuko --flow realnvp --train "$toy/$d-train.csv" \
      --test "$toy/$d-test.csv" --layers 8 --hidden 128 --steps "$steps" --batch 256 --lr 1e-3)
  fi
  python3 - "$d" "$ours" "$theirs" "$toy/limits.json" <<'PY'
import json, sys
d, o, z, lim = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.load(open(sys.argv[4]))
best = lim[d]["best_mean_log_prob"]
zs = f"{z['mean_log_prob']:.4f}" if z else "-"
print(f"{d:13s} limit {best:.4f}  nflow {o['mean_log_prob']:.4f} (gap {best - o['mean_log_prob']:.4f})  zuko {zs}")
PY
done
rm -rf "$out"
