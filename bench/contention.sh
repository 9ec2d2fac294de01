#!/usr/bin/env bash
# Small and image flows on a busier machine: w1's training (RealNVP, 8 couplings, MLP 2x128, D=2, batch 512, as
# `nflow train` on toy:moons) and w6's step, at --threads 1, --threads 2 and with the thread count left to
# nflow (a Tuner picks it by measurement), in three conditions:
#   idle   - nothing else running;
#   busy   - a shell busy loop pinned to CPU 1 (another program using one core);
#   quota  - this run capped at 1.5 CPUs by a cgroup-v1 CFS quota (a host that gives the VM less than its
#            cores; needs root and /sys/fs/cgroup/cpu, skipped otherwise).
# Prints JSON lines (OUT keeps them, default docs/results/contention.jsonl) and a markdown table.
# Usage: bench/contention.sh   (ROUNDS: interleaved rounds, default 2, the best of each taken)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-docs/results/contention.jsonl}
cargo build --release -q
# the cores' distance (bench/pingpong.c) once a round: the multi-threaded timings follow it on these VMs
cc -O2 -pthread -o target/pingpong bench/pingpong.c 2> /dev/null || rm -f target/pingpong
pingpong() { if [ -x target/pingpong ]; then target/pingpong; fi; }
bin=$PWD/target/release/nflow
: > "$out"
cg=/sys/fs/cgroup/cpu/nflow-contention
busy_pid=
cleanup() {
  [ -n "$busy_pid" ] && kill "$busy_pid" 2> /dev/null || true
  [ -d "$cg" ] && rmdir "$cg" 2> /dev/null || true
}
trap cleanup EXIT
# run CMD... under the current condition
under() {
  case $cond in
    quota) bash -c "echo \$\$ > $cg/tasks && exec \"\$@\"" _ "$@" ;;
    *) "$@" ;;
  esac
}
w1_train() { # $1: thread flag (empty: nflow's choice); prints ms per step
  local t=$1 s
  s=$(under "$bin" train --data toy:moons --toy-n 20000 --flow realnvp --layers 8 --hidden 128 --depth 2 \
    --batch-size 512 --steps 2000 --eval-every 1000 --quiet --out /tmp/nflow-contention-model $t 2>&1 |
    sed -n 's/^trained 2000 steps in \([0-9.]*\)s.*/\1/p')
  echo "$s" | awk '{printf "%.3f", $1 * 1000 / 2000}'
}
for cond in idle busy quota; do
  if [ "$cond" = quota ]; then
    if ! mkdir -p "$cg" 2> /dev/null || ! echo 150000 > "$cg/cpu.cfs_quota_us" 2> /dev/null; then
      echo "quota: no writable cgroup-v1 cpu controller, skipped" >&2
      continue
    fi
    echo 100000 > "$cg/cpu.cfs_period_us"
  fi
  if [ "$cond" = busy ]; then
    taskset -c 1 bash -c 'while :; do :; done' &
    busy_pid=$!
  fi
  for round in $(seq "${ROUNDS:-2}"); do
    pingpong | sed "s/^{/{\"condition\":\"$cond\",/" >> "$out"
    for t in "--threads 1" "--threads 2" ""; do
      name=${t:-auto}
      name=${name#--threads }
      ms=$(w1_train "$t")
      echo "{\"condition\":\"$cond\",\"workload\":\"w1-train\",\"threads\":\"$name\",\"ms_per_step\":$ms}" >> "$out"
    done
    for t in 1 2; do
      line=$(under "$bin" --threads "$t" bench --workload w6 --repeats 10)
      echo "{\"condition\":\"$cond\",\"workload\":\"w6-step\",\"threads\":\"$t\",\"ms_per_step\":$(
        echo "$line" | sed 's/.*"train_step_ms":\([0-9.]*\).*/\1/')}" >> "$out"
    done
  done
  if [ -n "$busy_pid" ]; then
    kill "$busy_pid"
    wait "$busy_pid" 2> /dev/null || true
    busy_pid=
  fi
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
pp = [r["pingpong_ns"] for r in rows if "pingpong_ns" in r]
rows = [r for r in rows if "workload" in r]
best = {}
for r in rows:
    k = (r["condition"], r["workload"], r["threads"])
    best[k] = min(best.get(k, float("inf")), r["ms_per_step"])
print("| condition | workload | 1 thread ms | 2 threads ms | nflow's choice ms |\n|---|---|---|---|---|")
for cond in ("idle", "busy", "quota"):
    for w in ("w1-train", "w6-step"):
        v = [best.get((cond, w, t)) for t in ("1", "2", "auto")]
        if any(x is not None for x in v):
            print(f"| {cond} | {w} | " + " | ".join("-" if x is None else f"{x:.2f}" for x in v) + " |")
if pp:
    print(f"\ncore-to-core round trip (bench/pingpong.c), once a round: {', '.join(f'{v:.0f}' for v in pp)} ns")
PY
