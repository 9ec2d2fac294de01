#!/usr/bin/env bash
# Glow's ablation (Kingma & Dhariwal 2018, fig. 3) as a table: {reverse, shuffle, 1x1 conv} x {additive, affine}
# on MNIST at a small size, the same number of steps (images seen) each, test bits/dim on the 10000 test images.
#   bench/glow_ablation.sh [STEPS] [OUTDIR]      (MNIST IDX files in ../shared/data/mnist or $MNIST)
set -euo pipefail
STEPS=${1:-2000}
OUT=${2:-ablation-out}
MNIST=${MNIST:-../shared/data/mnist}
BIN=${NFLOW:-./target/release/nflow}
mkdir -p "$OUT"
echo "| permutation | coupling | test bits/dim | train minutes |"
echo "|---|---|---|---|"
for coupling in additive affine; do
  for permute in reverse random 1x1; do
    name="$permute-$coupling"
    start=$(date +%s.%N)
    "$BIN" train --data "idx:$MNIST" --test "idx:$MNIST:test" --flow glow --layers 4 --hidden 32 --scales 2 \
      --permute "$permute" --coupling "$coupling" --dequantize --logit 1e-6 --batch-size 64 --lr 1e-3 \
      --schedule cosine --warmup 100 --steps "$STEPS" --eval-every "$STEPS" --val-fraction 0.02 --patience 0 \
      --quiet --out "$OUT/$name" > "$OUT/$name.log" 2>&1
    end=$(date +%s.%N)
    bpd=$(grep -o '[0-9.]* bits/dim' "$OUT/$name.log" | tail -1 | cut -d' ' -f1)
    label=$permute; [ "$permute" = random ] && label="shuffle"; [ "$permute" = 1x1 ] && label="1x1 conv"
    echo "| $label | $coupling | $bpd | $(echo "($end - $start) / 60" | bc -l | xargs printf '%.1f') |"
  done
done
