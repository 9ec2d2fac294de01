#!/usr/bin/env bash
# Issue 25's table: nflow with no options but the data (`nflow train --data F --out M`) against the best
# hand-set configuration found and zuko's NSF at 5000 steps, on the shared toy sets and the magic04 / digits
# splits (bench/tabular_split.py --seed 0). One thread each, one run at a time.
# Usage: bench/defaults.sh DIR [zuko]   (DIR gets the splits; JSON lines on stdout; `zuko` also runs zuko)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1; py=${PYTHON:-../peers-venv/bin/python}
mkdir -p "$dir"
for t in moons 8gaussians checkerboard rings; do
  cp "../shared/data/toy/$t-train.csv" "$dir/$t-train.csv"; cp "../shared/data/toy/$t-test.csv" "$dir/$t-test.csv"
done
python3 bench/tabular_split.py ../shared/data/tabular/magic04.csv.gz --drop class --test-fraction 0.2 --seed 0 \
  --out "$dir/magic04" > /dev/null
python3 bench/tabular_split.py ../shared/data/tabular/sklearn_digits.csv.gz --drop label --dequantize \
  --test-fraction 0.2 --seed 0 --out "$dir/digits" > /dev/null
cargo build --release -q
b=./target/release/nflow
run() { # name data [options...]
  local name=$1 d=$2; shift 2
  local m; m=$(mktemp -d)
  local s; s=$(date +%s.%N)
  $b --threads 1 train --data "$dir/$d-train.csv" --quiet --out "$m/model" "$@" 2> "$m/err"
  local e; e=$(date +%s.%N)
  local r; r=$($b --threads 1 eval --model "$m/model" --data "$dir/$d-test.csv" --json)
  python3 - "$name" "$d" "$(echo "$e - $s" | bc)" "$r" "$m/model/config.json" "$*" <<'PY'
import json, sys
name, d, secs, ev, cfg, opts = sys.argv[1:7]
ev = json.loads(ev); c = json.load(open(cfg)); t = c["training"]
print(json.dumps({"lib": "nflow", "run": name, "data": d, "options": opts, "flow": c["preset"]["kind"],
                  "mean_log_prob": round(ev["mean_log_prob"], 4), "stderr": round(ev["stderr"], 4),
                  "train_seconds": round(float(secs), 1), "steps": t["steps"], "best_step": t["best_step"],
                  "lr_decays": t.get("lr_decays", 0)}))
PY
  rm -rf "$m"
}
for d in moons 8gaussians checkerboard rings magic04 digits; do
  run defaults "$d"
done
for d in moons 8gaussians checkerboard rings magic04; do
  run hand-set "$d" --flow nsf-ar --bins 16
done
run hand-set digits --flow nsf-ar --hidden 256
# the issue's MAF: the old default budget (50 epochs, constant rate, patience 10) against the chosen one
run maf-old-budget magic04 --flow maf --epochs 50 --schedule constant
run maf-new-budget magic04 --flow maf
if [ "${2:-}" = zuko ]; then
  for d in moons 8gaussians checkerboard rings magic04 digits; do
    echo "{\"lib\": \"zuko\", \"data\": \"$d\", \"fit\": $("$py" ../shared/bench/peers.py fit --lib zuko --flow nsf \
      --train "$dir/$d-train.csv" --test "$dir/$d-test.csv" --layers 5 --hidden 128 --hidden-layers 2 --steps 5000 \
      --batch 256 --lr 1e-3 --threads 1)}"
  done
fi
