#!/bin/bash
# Issue 28's cases, each run once: the exit code and the first lines of what nflow says, as markdown table
# rows; then the contended-machine measure (the demo on the default threads and on one, the other core kept
# busy by a shell loop). Usage: bench/robustness.sh [NFLOW_BINARY]  (default target/release/nflow)
set -u
B=$(realpath "${1:-target/release/nflow}")
W=$(mktemp -d)
trap 'rm -rf "$W"; kill $(jobs -p) 2>/dev/null' EXIT
cd "$W"
row() {
    local name="$1"; shift
    local out rc
    out=$("$@" 2>&1); rc=$?
    local said
    said=$(echo "$out" | grep -E "error|warning|note|wrote|saved|median|trained|scored|log-likelihood|wall" | head -2)
    [ -z "$said" ] && said=$(echo "$out" | head -2)
    echo "| $name | $rc | $(echo "$said" | tr '\n' ' ' | tr '|' '/' | cut -c1-300) |"
}
# a billion rows asked for on standard output, the reader stopping after two lines: nflow's exit code, and
# how long it ran on
stream_head() {
    local t0=$(date +%s.%N)
    "$B" sample --model m -n 1000000000 | head -2 | tr '\n' ' '
    local rc=${PIPESTATUS[0]}
    echo "wall $(echo "$(date +%s.%N) - $t0" | bc) s"
    return $rc
}
$B train --data toy:moons --steps 200 --quiet --out m >/dev/null 2>&1
printf 'a,b\n1e300,1\n-1e300,2\n5e299,3\n-7e299,4\n2e300,5\n1e299,6\n' > big.csv
printf 'a,b\n1,2\n3,5\n' > two.csv
printf 'a,b,label\n1,2,cat\n3,5,dog\n2,2,cat\n4,1,dog\n5,3,cat\n1,1,dog\n2,4,cat\n3,3,dog\n' > text.csv
printf 'a,b\n1,2\n3,NA\n2,\n4,1\n5,3\n1,1\n2,4\n3,3\n2,2\n4,4\n' > miss.csv
printf 'PAR1\025\004\025\020\025\024L\025\002\025\000\022\000\000' > d.parquet
printf 'x,y\n0.5,0.2\n1.0,-0.3\n0.1,0.9\n-0.8,0.4\n0.3,0.1\n1.5,-0.4\n0.2,0.3\n40,40\n' > far.csv
touch afile
echo "| case | exit | what nflow says |"
echo "|---|---|---|"
row "plot --samples 0" $B plot --model m --samples 0 --out p.png
row "sample -n 1e11 --out s.csv" $B sample --model m -n 100000000000 --out s.csv
row "sample -n 1e9 to standard output, read by head -2" stream_head
row "train --hidden 100000" $B train --data toy:moons --hidden 100000 --out h
row "plot --grid 100000" $B plot --model m --grid 100000 --out g.png
row "--threads 10000 eval (wall time)" bash -c "/usr/bin/time -f 'wall %e s' $B --threads 10000 eval --model m --data toy:moons 2>&1 | grep -E 'warning|wall'"
$B train --data toy:moons --steps 20000 --quiet --out two >/dev/null 2>&1 &
sleep 1
row "second train, same --out" $B train --data toy:moons --steps 100 --out two
kill %1 2>/dev/null; wait 2>/dev/null
row "next run after a killed one (leftovers: $(ls -a | grep -cE '^\.two'))" $B train --data toy:moons --steps 100 --quiet --out two
row "leftovers after it" bash -c "ls -a | grep -E '^\.two|two.ckpt' | wc -l"
row "checkpointed run, finished" $B train --data toy:moons --steps 300 --checkpoint-every 100 --quiet --out ck
row "its checkpoint folder afterwards" bash -c "ls -d ck.ckpt 2>&1 | head -1"
row "--out under /proc (unwritable)" $B train --data toy:moons --steps 100 --out /proc/m
row "--out is a file" $B train --data toy:moons --steps 100 --out afile
row "--lr 1e10" $B train --data toy:moons --steps 300 --lr 1e10 --out lr1
row "--lr 0.1" $B train --data toy:moons --steps 1000 --lr 0.1 --out lr2
row "--lr 0.1 --strict" $B train --data toy:moons --steps 1000 --lr 0.1 --strict --out lr3
row "values near 1e300" $B train --data big.csv --steps 50 --out big
row "two distinct rows" $B train --data two.csv --steps 50 --out two2
row "--drop label (a text column)" $B train --data text.csv --drop label --steps 50 --out txt
row "a text column kept" $B train --data text.csv --steps 50 --out txt2
row "missing cells" $B train --data miss.csv --steps 50 --out mi
row "missing cells, --drop-missing" $B train --data miss.csv --drop-missing --steps 50 --out mi2
row "a Parquet file" $B train --data d.parquet --steps 50 --out pq
$B train --data toy:moons:2000 --steps 200 --checkpoint-every 100 --keep-checkpoint --quiet --out rs >/dev/null 2>&1
row "--resume on other data, same rows" $B train --data toy:circles:2000 --steps 200 --checkpoint-every 100 --resume --out rs
row "--resume --steps 400 (extend 200)" $B train --data toy:moons:2000 --steps 400 --checkpoint-every 100 --resume --keep-checkpoint --out rs
row "--resume --lr 0.01 (other option)" $B train --data toy:moons:2000 --steps 400 --lr 0.01 --checkpoint-every 100 --resume --out rs
row "sample without --out" bash -c "$B sample --model m -n 2 | tr '\n' ' '"
row "unknown option" $B train --bogus
row "eval with one far row" $B eval --model m --data far.csv

# Issue 36: data safety, temporary files, sizes, options (PY: the Python package's interpreter, if installed)
PY=${PY:-$(dirname "$B")/../../.venv/bin/python}
echo
echo "| issue 36 case | exit | what nflow says |"
echo "|---|---|---|"
mkdir hf; echo '{}' > hf/config.json; echo w > hf/pytorch_model.bin
row "train --out a Hugging Face folder" $B train --data toy:moons --steps 50 --out hf
row "vi --out a Hugging Face folder" $B vi --target u1 --steps 50 --out hf
row "  the folder afterwards" bash -c "ls hf | tr '\n' ' '"
cp -r m mnotes; echo mine > mnotes/notes.txt
row "train --out a model folder with a file added" $B train --data toy:moons --steps 50 --out mnotes
if [ -x "$PY" ]; then
    row "Python Flow.save onto a regular file" "$PY" -c "
import nflow, numpy as np
f = nflow.Flow('maf').fit(np.random.default_rng(0).normal(size=(300, 2)), steps=20)
open('pyfile', 'w').write('mine')
try:
    f.save('pyfile')
except Exception as e:
    print('error:', type(e).__name__, e)
print('pyfile holds', open('pyfile').read())"
fi
# the old predictable temporary names, planted for the next 3000 process ids, each holding a link to a
# victim file
mkdir -p plant victim; echo keep > victim/important
me=$$
for i in $(seq 1 3000); do
    d=plant/nflow-report-$((me + i)); mkdir -p "$d"; ln -s "$PWD/victim/important" "$d/curve.png"
    d=plant/nflow-frames-$((me + i)); mkdir -p "$d"; ln -s "$PWD/victim/important" "$d/frame-00000000.png"
done
row "report, links planted at /tmp/nflow-report-PID" env TMPDIR="$PWD/plant" $B report --model m --out r.html
row "train --frames, links planted at /tmp/nflow-frames-PID" env TMPDIR="$PWD/plant" $B train --data toy:moons --steps 100 --frames 50 --out fr
row "  the victim file afterwards" cat victim/important
row "train --base mixture --components 1e12" $B train --data toy:moons --base mixture --components 1000000000000 --out c1
row "train --flow maf-mog --components 1e12" $B train --data toy:moons --flow maf-mog --components 1000000000000 --out c2
row "train --data toy:moons:1e12" $B train --data toy:moons:1000000000000 --out c3
row "vi --target mix:2:1e12" $B vi --target mix:2:1000000000000 --out c4
cp -r m big; sed -i 's/"type": "normal"/"type": "mixture", "components": 1000000000000/' big/config.json
row "eval of a folder asking for a 1e12-component base" $B eval --model big --data toy:moons
if [ -x "$PY" ]; then
    row "Python base=Mixture(components=10**12)" "$PY" -c "
import nflow, numpy as np
from nflow.layers import Mixture
try:
    nflow.Flow('maf', base=Mixture(components=10**12)).fit(np.zeros((100, 2)) + np.arange(100)[:, None], steps=5)
except Exception as e:
    print('error:', type(e).__name__, e)"
fi
"$PY" -c "
import gzip
with gzip.open('bomb.csv.gz', 'wb', compresslevel=9) as f:
    f.write(b'a,b\n')
    for _ in range(100):
        f.write(b'0,0\n' * 1000000)
" 2>/dev/null
row "a .csv.gz that expands to 1e8 rows, ulimit -v 3 GB" bash -c "ulimit -v 3000000; $B train --data bomb.csv.gz --steps 5 --out gz"
"$PY" -c "
import pyarrow as pa, pyarrow.parquet as pq
t = pa.table({'a': pa.array([0.0] * 1000000), 'b': pa.array([0.0] * 1000000)})
w = pq.ParquetWriter('bomb.parquet', t.schema, compression='zstd')
for _ in range(200):
    w.write_table(t)
w.close()
" 2>/dev/null
row "a Parquet file of 2e8 rows ($(du -k bomb.parquet 2>/dev/null | cut -f1) KB), ulimit -v 3 GB" bash -c "ulimit -v 3000000; $B train --data bomb.parquet --steps 5 --out pqb"
row "--tail-bound 1e10" $B train --data toy:moons --flow nsf-c --tail-bound 1e10 --steps 100 --out tb
row "--tail-bound 1e5" $B train --data toy:moons --flow nsf-c --tail-bound 1e5 --steps 100 --out tb
row "--tail-bound 100 (the largest)" $B train --data toy:moons --flow nsf-c --tail-bound 100 --steps 300 --out tb
row "--clip=-1" $B train --data toy:moons --steps 50 --clip=-1 --out cl
row "--clip=0" $B train --data toy:moons --steps 50 --clip=0 --out cl
if [ -x "$PY" ]; then
    row "Python fit(clip=-1.0)" "$PY" -c "
import nflow, numpy as np
try:
    nflow.Flow('maf').fit(np.random.default_rng(0).normal(size=(300, 2)), steps=20, clip=-1.0)
except Exception as e:
    print('error:', type(e).__name__, e)"
fi
row "--map with an unknown option (additive)" $B train --data toy:moons --steps 50 --flow realnvp --map '{"type":"additive","bins":3}' --out mp
row "--map with an unknown option (sinh-arcsinh)" $B train --data toy:moons --steps 50 --flow maf --map '{"type":"sinh-arcsinh","tail":3}' --out mp
echo '{"format": "nflow-model", "version": 2, "api_key": "SECRET123", "flow": "SECRETFLOW"}' > secret.json
mkdir sl; ln -s ../secret.json sl/config.json
row "config.json a link to another JSON file" $B eval --model sl --data toy:moons
$B sample --model m -n 200 --out rows.csv >/dev/null 2>&1
row "--data from a pipe (cat |)" bash -c "cat rows.csv | $B eval --model m --data -"
row "--data a process substitution" bash -c "$B eval --model m --data <(cat rows.csv)"
mkfifo ff; (cat rows.csv > ff &)
row "--data a FIFO" $B eval --model m --data ff
row "--data /dev/zero" timeout 20 $B eval --model m --data /dev/zero
cp -r m mz; rm mz/weights.safetensors; ln -s /dev/zero mz/weights.safetensors
row "weights.safetensors a link to /dev/zero" timeout 20 $B eval --model mz --data toy:moons
cp -r m mf; rm mf/config.json; mkfifo mf/config.json
row "config.json a FIFO" timeout 20 $B eval --model mf --data toy:moons

echo
echo "contended: the demo, the other core kept busy"
(while :; do :; done) &
sleep 0.5
for t in "" "--threads 1" "" "--threads 1"; do
    /usr/bin/time -f "demo ${t:-default threads}: %e s" $B $t demo --out d 2>&1 | grep -E "demo|note"
    rm -rf d
done
