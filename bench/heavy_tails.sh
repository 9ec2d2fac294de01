#!/usr/bin/env bash
# Issue 25's heavy-tail comparison: the default flow on magic04 with its Gaussian base and with the Student-t
# base (learned degrees of freedom), scored on the test rows and on planted outliers (test rows moved 10 and
# 100 standard deviations out along every column). One thread each, one run at a time.
# Usage: bench/heavy_tails.sh DIR   (DIR holds magic04-train.csv / magic04-test.csv from bench/defaults.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
cargo build --release -q
b=./target/release/nflow
python3 - "$dir" <<'PY'
import csv, statistics, sys
d = sys.argv[1]
rows = list(csv.reader(open(f"{d}/magic04-test.csv")))
head, body = rows[0], [[float(v) for v in r] for r in rows[1:]]
sd = [statistics.pstdev(c) for c in zip(*body)]
for k in (10, 100):
    with open(f"{d}/magic04-out{k}.csv", "w", newline="") as f:
        w = csv.writer(f); w.writerow(head)
        for r in body[:200]:
            w.writerow([v + k * s for v, s in zip(r, sd)])
PY
for base in normal student-t; do
  m=$(mktemp -d); s=$(date +%s.%N)
  $b --threads 1 train --data "$dir/magic04-train.csv" --base $base --quiet --out "$m/model" 2>/dev/null
  e=$(date +%s.%N)
  for t in test out10 out100; do
    r=$($b --threads 1 eval --model "$m/model" --data "$dir/magic04-$t.csv" --json)
    python3 -c "
import json,sys; o=json.loads(sys.argv[1])
print(json.dumps({'base':'$base','rows':'$t','mean_log_prob':round(o['mean_log_prob'],3),'median_log_prob':round(o['median_log_prob'],3),
 'lowest':round(o['worst_rows'][0]['log_prob'],1),'train_seconds':round($e-$s,1)}))" "$r"
  done
  $b info --model "$m/model" | grep -i "^base" || true
  rm -rf "$m"
done
