#!/usr/bin/env bash
# Tabular quality table of issue 3: nflow's MAF(5), MAF(10), RealNVP(5), RealNVP(10), MAF MoG, MADE MoG against zuko's MAF and
# RealNVP with the same sizes (MADE / MLP 2 x HIDDEN) and budget (STEPS steps of batch 256, Adam lr 1e-3).
# Usage: bench/tabular.sh PREFIX STEPS [PYTHON]   with PREFIX-train.csv / PREFIX-test.csv from bench/tabular_split.py
# nflow holds out 10% of the training rows and keeps the best weights on them (early stopping, patience 10
# evaluations); a second MAF(5) run trains on every row for all the steps, as peers.py does.
# Prints JSON lines (appended to PREFIX-results.jsonl) and a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=$1; steps=$2; py=${3:-../peers-venv/bin/python}
hidden=${HIDDEN:-128}
peers=../shared/bench/peers.py
cargo build --release -q
out="$prefix-results.jsonl"; : > "$out"
run_nflow() { # name, extra args...
  local name=$1; shift
  local m; m=$(mktemp -d)
  local t0; t0=$(date +%s.%N)
  ./target/release/nflow train --data "$prefix-train.csv" --steps "$steps" --hidden "$hidden" --depth 2 \
      --batch-size 256 --lr 1e-3 --quiet --out "$m/model" "$@" 2>/dev/null
  local t1; t1=$(date +%s.%N)
  ./target/release/nflow eval --model "$m/model" --data "$prefix-test.csv" --json |
    python3 -c "import json,sys; o=json.load(sys.stdin); print(json.dumps({'lib':'nflow','flow':'$name','mean_log_prob':round(o['mean_log_prob'],4),'stderr':round(o['stderr'],4),'train_seconds':round($t1-$t0,1)}))" | tee -a "$out"
  rm -rf "$m"
}
run_peer() { # lib flow layers
  "$py" "$peers" fit --lib "$1" --flow "$2" --train "$prefix-train.csv" --test "$prefix-test.csv" --layers "$3" \
      --hidden "$hidden" --hidden-layers 2 --steps "$steps" --batch 256 --lr 1e-3 |
    python3 -c "import json,sys; o=json.load(sys.stdin); print(json.dumps({'lib':'$1','flow':'$2($3)','mean_log_prob':o['mean_log_prob'],'stderr':o['stderr'],'train_seconds':o['train_seconds']}))" | tee -a "$out"
}
run_nflow "MAF(5)" --flow maf --layers 5
run_nflow "MAF(10)" --flow maf --layers 10
run_nflow "RealNVP(5)" --flow realnvp --layers 5
run_nflow "RealNVP(10)" --flow realnvp --layers 10
run_nflow "MAF MoG(5), 10 components" --flow maf-mog --layers 5 --components 10
run_nflow "MADE MoG, 10 components" --flow maf-mog --layers 0 --components 10
run_nflow "MAF(5), tanh conditioners" --flow maf --layers 5 --activation tanh
run_nflow "MAF(5), all rows, no early stopping" --flow maf --layers 5 --val-fraction 0
run_peer zuko maf 5
run_peer zuko maf 10
run_peer zuko realnvp 5
run_peer zuko realnvp 10
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| library | flow | test log-likelihood (nats) | train s |\n|---|---|---|---|")
for r in rows:
    print(f"| {r['lib']} | {r['flow']} | {r['mean_log_prob']:.3f} ± {r['stderr']:.3f} | {r['train_seconds']} |")
PY
