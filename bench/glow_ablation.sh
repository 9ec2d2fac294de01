#!/usr/bin/env bash
# Glow's ablation (Kingma & Dhariwal 2018, fig. 3) as a table: {reverse, shuffle, 1x1 conv} x {additive, affine}
# on MNIST at a small size (K=4 steps per level, width 32, 2 levels), the same number of steps (images seen) for
# each, test bits/dim on the 10000 test images.
#   bench/glow_ablation.sh [STEPS] [OUTDIR]
# MNIST IDX files are read from $MNIST (default ../shared/data/mnist). JOBS runs go side by side, each with
# THREADS threads (default 1 job x all cores; JOBS=2 THREADS=1 uses two cores better at these small sizes).
set -euo pipefail
STEPS=${1:-2000}
OUT=${2:-ablation-out}
MNIST=${MNIST:-../shared/data/mnist}
BIN=${NFLOW:-./target/release/nflow}
JOBS=${JOBS:-1}
THREADS=${THREADS:-0}
mkdir -p "$OUT"
one() {
  local permute=$1 coupling=$2 name="$1-$2" t=()
  [ "$THREADS" -gt 0 ] && t=(--threads "$THREADS")
  local start end
  start=$(date +%s.%N)
  "$BIN" "${t[@]}" train --data "idx:$MNIST" --test "idx:$MNIST:test" --flow glow --layers 4 --hidden 32 \
    --scales 2 --permute "$permute" --coupling "$coupling" --dequantize --logit 1e-6 --batch-size 64 --lr 1e-3 \
    --schedule cosine --warmup 100 --steps "$STEPS" --eval-every "$STEPS" --val-fraction 0.02 --patience 0 \
    --quiet --out "$OUT/$name" > "$OUT/$name.log" 2>&1
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l > "$OUT/$name.seconds"
}
export -f one
export BIN MNIST STEPS OUT THREADS
printf '%s\n' "reverse additive" "random additive" "1x1 additive" "reverse affine" "random affine" "1x1 affine" |
  xargs -P "$JOBS" -L 1 bash -c 'one $0 $1'
echo "| permutation | coupling | test bits/dim | wall minutes (incl. test evaluation) |"
echo "|---|---|---|---|"
for coupling in additive affine; do
  for permute in reverse random 1x1; do
    name="$permute-$coupling"
    bpd=$(grep -o '[0-9.]* bits/dim' "$OUT/$name.log" | tail -1 | cut -d' ' -f1)
    label=$permute; [ "$permute" = random ] && label="shuffle"; [ "$permute" = 1x1 ] && label="1x1 conv"
    printf '| %s | %s | %s | %.1f |\n' "$label" "$coupling" "$bpd" "$(echo "$(cat "$OUT/$name.seconds") / 60" | bc -l)"
  done
done
