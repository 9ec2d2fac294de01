#!/usr/bin/env bash
# Run nflow's and the PyTorch peers' step benchmarks one after the other, in the same session, and print ratios.
# Usage: bench/compare.sh [PYTHON] [WORKLOADS...]   (PYTHON: a python with torch, zuko, nflows; see shared/bench)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-../peers-venv/bin/python}
shift || true
workloads=${*:-w1 w3}
peers=../shared/bench/peers.py
cargo build --release -q
for w in $workloads; do
  ours=$(./target/release/nflow bench --workload "$w")
  z=$("$py" "$peers" step --lib zuko --workload "$w")
  n=$("$py" "$peers" step --lib nflows --workload "$w")
  echo "$ours"; echo "$z"; echo "$n"
  python3 - "$ours" "$z" "$n" <<'PY'
import json, sys
o, z, n = (json.loads(a) for a in sys.argv[1:4])
for k in ("train_step_ms", "log_prob_ms", "sample_ms"):
    best = min(z[k], n[k])
    print(f"{o['workload']} {k:14s} nflow {o[k]:9.3f}  zuko {z[k]:9.3f}  nflows {n[k]:9.3f}  speed-up vs faster peer {best / o[k]:.2f}x")
PY
done
