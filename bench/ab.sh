#!/usr/bin/env bash
# This nflow against another build of it (a base binary, e.g. an earlier commit's), interleaved in one run, on
# `nflow bench` workloads at 1 and 2 threads: the best of ROUNDS rounds of each, and the ratio base / this.
# Usage: bench/ab.sh BASE_BINARY [WORKLOADS]   (default workloads: w1 w2 w6; OUT keeps the raw lines)
#   A base built from an earlier commit: git worktree add /tmp/base REV && (cd /tmp/base &&
#   CARGO_TARGET_DIR=/tmp/base-target cargo build --release) -> /tmp/base-target/release/nflow
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/ab.sh BASE_BINARY [WORKLOADS]}
workloads=${2:-w1 w2 w6}
out=${OUT:-bench/ab-results.jsonl}
cargo build --release -q
# the cores' distance (bench/pingpong.c) once a round: the multi-threaded timings follow it on these VMs
cc -O2 -pthread -o target/pingpong bench/pingpong.c 2> /dev/null || rm -f target/pingpong
pingpong() { if [ -x target/pingpong ]; then target/pingpong; fi; }
: > "$out"
for round in $(seq "${ROUNDS:-3}"); do
  pingpong >> "$out"
  for w in $workloads; do
    reps=30
    [ "$w" = w6 ] && reps=10
    for t in 1 2; do
      for who in base this; do
        bin=./target/release/nflow
        [ "$who" = base ] && bin=$base
        "$bin" --threads "$t" bench --workload "$w" --repeats "$reps" |
          sed "s/^{/{\"build\":\"$who\",/" >> "$out"
      done
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
pp = [r["pingpong_ns"] for r in rows if "pingpong_ns" in r]
rows = [r for r in rows if "workload" in r]
best = {}
for r in rows:
    for m in ("train_step_ms", "log_prob_ms", "sample_ms"):
        k = (r["workload"], r["threads"], m, r["build"])
        best[k] = min(best.get(k, float("inf")), r[m])
print("| workload | threads | measure | base ms | this ms | base / this |\n|---|---|---|---|---|---|")
for w, t, m in sorted({k[:3] for k in best}):
    b, n = best.get((w, t, m, "base")), best.get((w, t, m, "this"))
    if b and n:
        print(f"| {w} | {t} | {m[:-3]} | {b:.3f} | {n:.3f} | {b / n:.2f}x |")
if pp:
    print(f"\ncore-to-core round trip (bench/pingpong.c), once a round: {', '.join(f'{v:.0f}' for v in pp)} ns")
PY
