#!/usr/bin/env bash
# Issue 5's tabular table: nflow's nsf-ar, nsf-c and maf against zuko's NSF, same sizes (5 layers, conditioners
# 2 x HIDDEN) and budget (STEPS steps of batch 256, Adam lr 1e-3), one thread each.
# Usage: bench/tabular_nsf.sh PREFIX STEPS [PYTHON]   with PREFIX-train.csv / PREFIX-test.csv from bench/tabular_split.py
# (magic04: 5000 steps, digits: 2000). nflow holds out 10% of the training rows for early stopping (its default);
# zuko trains on every row.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=$1; steps=$2; py=${3:-../peers-venv/bin/python}
hidden=${HIDDEN:-128}
cargo build --release -q
b=./target/release/nflow
for f in nsf-ar nsf-c maf; do
  m=$(mktemp -d); s=$(date +%s.%N)
  $b --threads 1 train --data "$prefix-train.csv" --flow $f --layers 5 --hidden "$hidden" --depth 2 --steps "$steps" \
     --batch-size 256 --lr 1e-3 --quiet --out "$m/model" 2>/dev/null
  e=$(date +%s.%N)
  echo "nflow $f $($b --threads 1 eval --model "$m/model" --data "$prefix-test.csv" --json) secs $(echo "$e - $s" | bc)"
  rm -rf "$m"
done
echo "zuko nsf $("$py" ../shared/bench/peers.py fit --lib zuko --flow nsf --train "$prefix-train.csv" \
  --test "$prefix-test.csv" --layers 5 --hidden "$hidden" --hidden-layers 2 --steps "$steps" --batch 256 --lr 1e-3 --threads 1)"
