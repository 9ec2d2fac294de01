#!/usr/bin/env bash
# The figures under docs/figures: the layer-by-layer change of variables for moons, checkerboard and rings with
# realnvp and nsf-c (3000 steps each on the shared toy CSVs) and for magic04 (10-D: a plane through the median
# row), one model's learning curve and density plot, a pairs plot, a class-conditional Glow on MNIST (11 minutes
# of training: captioned samples per class, a test digit's latents per level, its report), and three report
# pages with their screenshots (headless Chromium, where installed).
# Usage: bench/figures.sh   (writes docs/figures/*; about 20 minutes on two cores)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
b=./target/release/nflow
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p docs/figures
for d in moons checkerboard rings; do
  for f in realnvp nsf-c; do
    $b train --data "../shared/data/toy/$d-train.csv" --flow $f --steps 3000 --quiet \
      --test "../shared/data/toy/$d-test.csv" --monitor 2000 --out "$tmp/$d-$f" > /dev/null 2>&1
    $b plot --model "$tmp/$d-$f" --layers --data "../shared/data/toy/$d-test.csv" --grid 150 \
      --out "docs/figures/layers-$d-$f.png"
  done
done
$b curve --model "$tmp/moons-realnvp" --png docs/figures/curve-moons-realnvp.png
$b plot --model "$tmp/moons-realnvp" --data ../shared/data/toy/moons-test.csv --out docs/figures/density-moons-realnvp.png
# the report pages (a 2-D model and a tabular one) and, where Chromium is installed, their screenshots
$b report --model "$tmp/moons-realnvp" --data ../shared/data/toy/moons-test.csv --out docs/figures/report-moons-realnvp.html
python3 bench/tabular_split.py ../shared/data/tabular/magic04.csv.gz --drop class --test-fraction 0.2 --seed 0 \
  --out "$tmp/magic04" > /dev/null
$b train --data "$tmp/magic04-train.csv" --flow maf --test "$tmp/magic04-test.csv" --monitor 1000 --quiet \
  --out "$tmp/magic04-maf" > /dev/null 2>&1
$b report --model "$tmp/magic04-maf" --data "$tmp/magic04-test.csv" --out docs/figures/report-magic04-maf.html
$b plot --model "$tmp/magic04-maf" --data "$tmp/magic04-test.csv" --max-dims 4 --out docs/figures/pairs-magic04-maf.png
$b plot --model "$tmp/magic04-maf" --layers --data "$tmp/magic04-test.csv" --axes fLength,fWidth --grid 120 \
  --out docs/figures/layers-magic04-maf.png
# an image model: class-conditional Glow on MNIST, a time-bounded run
mnist=../shared/data/mnist
$b train --data "idx:$mnist:train:both" --context label --context-one-hot --test "idx:$mnist:test:both" \
  --monitor 2000 --flow glow --layers 4 --hidden 48 --scales 2 --dequantize --logit 1e-6 --batch-size 64 --lr 1e-3 \
  --schedule cosine --warmup 100 --steps 100000 --time-limit 11 --eval-every 500 --quiet --out "$tmp/mnist-cglow" \
  > /dev/null 2>&1
printf 'label\n0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n' > "$tmp/classes.csv"
$b sample --model "$tmp/mnist-cglow" --context-file "$tmp/classes.csv" -n 10 --temperature 0.7 \
  --grid docs/figures/samples-mnist-cglow.png > /dev/null
$b plot --model "$tmp/mnist-cglow" --layers --data "idx:$mnist:test" --context 7 \
  --out docs/figures/latents-mnist-cglow.png
$b report --model "$tmp/mnist-cglow" --data "idx:$mnist:test:both" --out docs/figures/report-mnist-cglow.html
if command -v chromium > /dev/null; then
  for r in moons-realnvp magic04-maf mnist-cglow; do
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
      --disable-component-update --disable-sync --user-data-dir="$tmp/chromium" --hide-scrollbars \
      --window-size=1300,2400 --screenshot="docs/figures/report-$r.png" "file://$PWD/docs/figures/report-$r.html" \
      > /dev/null 2>&1
  done
fi
# training as an animation
$b train --data ../shared/data/toy/checkerboard-train.csv --flow nsf-c --steps 3000 --frames 60 --quiet \
  --out "$tmp/anim" > /dev/null 2>&1
cp "$tmp/anim/training.gif" docs/figures/training-checkerboard-nsf-c.gif
