#!/usr/bin/env bash
# The figures under docs/figures: the layer-by-layer change of variables for moons, checkerboard and rings with
# realnvp and nsf-c (3000 steps each on the shared toy CSVs), one model's learning curve and density plot, a pairs
# plot, and two report pages with their screenshots (headless Chromium, where installed).
# Usage: bench/figures.sh   (writes docs/figures/*.png; a few minutes on two cores)
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
if command -v chromium > /dev/null; then
  for r in moons-realnvp magic04-maf; do
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
