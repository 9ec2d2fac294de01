#!/usr/bin/env bash
# w6 side by side: nflow's Glow (`nflow bench --workload w6`) against the same-size PyTorch Glow built from
# normflows' blocks (bench/glow_normflows.py, which says what matches and what not), ROUNDS interleaved rounds at
# 2 threads and at 1, the best round of each; then a markdown table of ratios.
# Usage: bench/glow_vs_normflows.sh [PYTHON]   (PYTHON: a python with torch and normflows)
#   OUT (default docs/results/speed-images.jsonl) keeps the raw lines.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-../peers-venv/bin/python}
out=${OUT:-docs/results/speed-images.jsonl}
cargo build --release -q
: > "$out"
for round in $(seq "${ROUNDS:-3}"); do
  for t in 2 1; do
    ./target/release/nflow --threads "$t" bench --workload w6 --repeats 10 >> "$out"
    "$py" bench/glow_normflows.py --threads "$t" --repeats 10 2> /dev/null >> "$out"
  done
done
for who in nflow normflows; do
  if [ "$who" = nflow ]; then cmd=(./target/release/nflow --threads 2 bench --workload w6 --repeats 5)
  else cmd=("$py" bench/glow_normflows.py --threads 2 --repeats 5); fi
  kb=$( { /usr/bin/time -f "%M" "${cmd[@]}" > /dev/null; } 2>&1 | tail -1)
  echo "{\"mode\":\"memory\",\"lib\":\"$who\",\"workload\":\"w6\",\"peak_rss_mb\":$((kb / 1024))}" >> "$out"
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
step = [r for r in rows if r.get("mode") == "step"]
def best(lib, t):
    rs = [r for r in step if r["lib"] == lib and r["threads"] == t]
    return {k: min(r[k] for r in rs) for k in ("train_step_ms", "log_prob_ms", "sample_ms")} if rs else None
print("| threads | measure | nflow ms | normflows ms | speed-up |\n|---|---|---|---|---|")
for t in (2, 1):
    o, n = best("nflow", t), best("normflows", t)
    if o and n:
        for k in ("train_step_ms", "log_prob_ms", "sample_ms"):
            print(f"| {t} | {k[:-3]} | {o[k]:.1f} | {n[k]:.1f} | **{n[k] / o[k]:.2f}x** |")
        print(f"| {t} | training images/s | {64e3 / o['train_step_ms']:.0f} | {64e3 / n['train_step_ms']:.0f} | |")
for r in rows:
    if r.get("mode") == "memory":
        print(f"peak RSS, w6 benchmark run: {r['lib']} {r['peak_rss_mb']} MB")
PY
