#!/usr/bin/env bash
# Issue 6's table, all in one session on this machine: nflow against zuko and nflows (PyTorch) on the step
# workloads of shared/bench/peers.py (w1 RealNVP D=2, w2 MAF D=64, w3 RealNVP D=784), at 2 threads and at 1;
# speed-up over the faster peer; thread scaling; peak memory of a w3 run; the GEMM rates the machine attains
# (bench/gemm: the Rust providers; bench/gemm_torch.py: PyTorch's BLAS) and w3's achieved rate as a fraction.
# Usage: bench/speed.sh [PYTHON] [WORKLOADS]   (PYTHON: a python with torch, zuko, nflows; see shared/bench)
#   ROUNDS (default 2) interleaved rounds, best of each taken; GEMM=0 skips the GEMM rates; OUT the raw lines;
#   peak memory is measured for the workloads run (MEMORY="w3" names others). The spline table:
#   GEMM=0 ROUNDS=3 OUT=docs/results/speed-splines.jsonl bench/speed.sh ../peers-venv/bin/python "w4 w5"
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-../peers-venv/bin/python}
workloads=${2:-w1 w2 w3}
peers=../shared/bench/peers.py
out=${OUT:-bench/speed-results.jsonl}
cargo build --release -q
: > "$out"
# the GEMM rates (GEMM=0 skips them: the spline workloads' table does not use them)
if [ "${GEMM:-1}" = 1 ]; then
  (cd bench/gemm && cargo build --release -q)
  for t in 2 1; do
    bench/gemm/target/release/gemm-compare "$t" | grep summary >> "$out"
    "$py" bench/gemm_torch.py "$t" | grep summary >> "$out"
  done
fi
# Timings on a shared machine drift by tens of percent from minute to minute: the three libraries run
# interleaved, ROUNDS times, and the table takes each one's best round.
for round in $(seq "${ROUNDS:-2}"); do
  for w in $workloads; do
    for t in 2 1; do
      ./target/release/nflow --threads "$t" bench --workload "$w" >> "$out"
      # w1 also with its conditioners' dense front layers (the general path the piecewise front replaces)
      if [ "$w" = w1 ]; then
        ./target/release/nflow --threads "$t" bench --workload w1 --no-piecewise >> "$out"
      fi
      for lib in zuko nflows; do
        "$py" "$peers" step --lib "$lib" --workload "$w" --threads "$t" >> "$out"
      done
    done
  done
done
# peak resident memory of a whole benchmark run (training steps, log-prob, sampling), 2 threads: w3 and the
# workloads asked for (MEMORY names others)
for w in ${MEMORY:-$workloads}; do
  for who in nflow zuko nflows; do
    if [ "$who" = nflow ]; then cmd=(./target/release/nflow --threads 2 bench --workload "$w" --repeats 10)
    else cmd=("$py" "$peers" step --lib "$who" --workload "$w" --threads 2 --repeats 10); fi
    # (time's report is the last line on standard error, after any warnings of the run)
    kb=$( { /usr/bin/time -f "%M" "${cmd[@]}" > /dev/null; } 2>&1 | tail -1)
    echo "{\"mode\":\"memory\",\"lib\":\"$who\",\"workload\":\"$w\",\"peak_rss_mb\":$((kb / 1024))}" >> "$out"
  done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
step = [r for r in rows if r.get("mode") == "step"]
for r in step:
    if r["lib"] == "nflow" and r.get("piecewise") is False:
        r["lib"] = "nflow-dense"
gemm = {(r["provider"], r["workload"], r["threads"]): r["gflops"] for r in rows if r.get("summary")}
def get(lib, w, t):
    # best round of each measure
    rs = [r for r in step if r["lib"] == lib and r["workload"] == w and r["threads"] == t]
    if not rs:
        return None
    return {k: min(r[k] for r in rs) for k in ("train_step_ms", "log_prob_ms", "sample_ms")}
print("| workload | threads | measure | nflow ms | zuko ms | nflows ms | speed-up vs faster peer |")
print("|---|---|---|---|---|---|---|")
for w in sorted({r["workload"] for r in step}):
    for t in (2, 1):
        o, z, n = get("nflow", w, t), get("zuko", w, t), get("nflows", w, t)
        if not (o and z and n):
            continue
        for k in ("train_step_ms", "log_prob_ms", "sample_ms"):
            best = min(z[k], n[k])
            print(f"| {w} | {t} | {k[:-3]} | {o[k]:.2f} | {z[k]:.2f} | {n[k]:.2f} | **{best / o[k]:.2f}x** |")
if get("nflow-dense", "w1", 1):
    print("\nw1 with dense front layers (`--no-piecewise`: the general path, as for conditioners with more than one input):")
    print("\n| threads | measure | nflow dense ms | speed-up vs faster peer |\n|---|---|---|---|")
for t in (2, 1):
    o, z, n = get("nflow-dense", "w1", t), get("zuko", "w1", t), get("nflows", "w1", t)
    if o and z and n:
        for k in ("train_step_ms", "log_prob_ms", "sample_ms"):
            print(f"| {t} | {k[:-3]} | {o[k]:.2f} | **{min(z[k], n[k]) / o[k]:.2f}x** |")
print("\n| workload | nflow train step 1 -> 2 threads | zuko | nflows |\n|---|---|---|---|")
for w in sorted({r["workload"] for r in step}):
    cells = []
    for lib in ("nflow", "zuko", "nflows"):
        a, b = get(lib, w, 1), get(lib, w, 2)
        cells.append(f"{a['train_step_ms'] / b['train_step_ms']:.2f}x" if a and b else "-")
    print(f"| {w} | " + " | ".join(cells) + " |")
if gemm:
  print("\n| GEMM provider (f32, flow shapes) | threads | w1 GFLOP/s | w2 GFLOP/s | w3 GFLOP/s |\n|---|---|---|---|---|")
for p in ("gemm", "gemm-slabs", "sgemm", "matrixmultiply", "faer", "blis", "torch"):
    for t in (2, 1):
        if (p, "w3", t) in gemm:
            print(f"| {p} | {t} | " + " | ".join(f"{gemm.get((p, w, t), 0):.1f}" for w in ("w1", "w2", "w3")) + " |")
# w3's training step: 6 couplings, MLP 392 -> 1024 -> 1024 -> 784, batch 256; forward + two backward products
flops = 6 * 3 * 2 * 256 * (392 * 1024 + 1024 * 1024 + 1024 * 784)
for t in (2, 1):
    o = get("nflow", "w3", t)
    if o and gemm:
        best = max(v for (p, w, tt), v in gemm.items() if w == "w3" and tt == t)
        rate = flops / (o["train_step_ms"] / 1e3) / 1e9
        print(f"\nw3 at {t} thread(s): {rate:.1f} GFLOP/s achieved in a training step = {100 * rate / best:.0f}% of the "
              f"best GEMM rate measured on its shapes ({best:.1f})")
for r in rows:
    if r.get("mode") == "memory":
        print(f"peak RSS, {r['workload']} benchmark run: {r['lib']} {r['peak_rss_mb']} MB")
PY
