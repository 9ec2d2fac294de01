#!/usr/bin/env bash
# The figures under docs/figures: the layer-by-layer change of variables for moons, checkerboard and rings with
# realnvp and nsf-c (3000 steps each on the shared toy CSVs), and one model's learning curve and density plot.
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
