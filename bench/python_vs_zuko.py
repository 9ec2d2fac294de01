#!/usr/bin/env python3
"""nflow from Python against zuko, in one script: the same flow and budget on the shared magic04 split.

    python3 bench/tabular_split.py ../shared/data/tabular/magic04.csv.gz --drop class --test-fraction 0.2 \\
        --seed 0 --out /tmp/magic04
    PEERS-VENV/bin/python bench/python_vs_zuko.py /tmp/magic04 --steps 2000 --flows maf nsf-ar

Needs a Python with torch, zuko and nflow (pip install ./python). zuko's flows come from
../shared/bench/peers.py (its `build` and `fit`, the same ones the CLI comparisons used). Both libraries run on
the same number of threads, one after the other. One JSON line per fit: test mean log-likelihood (nats, data
units) ± standard error, training seconds.
"""
import argparse
import contextlib
import io
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "bench"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--flows", nargs="+", default=["maf", "nsf-ar"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--libs", nargs="+", default=["nflow", "zuko"])
    a = p.parse_args()
    import nflow
    import peers
    import torch

    torch.set_num_threads(a.threads)
    nflow.set_num_threads(a.threads)
    train = np.loadtxt(a.prefix + "-train.csv", delimiter=",", skiprows=1)
    test = np.loadtxt(a.prefix + "-test.csv", delimiter=",", skiprows=1)
    for flow in a.flows:
        for lib in a.libs:
            if lib == "nflow":
                t0 = time.perf_counter()
                f = nflow.Flow(flow, layers=5, hidden=128, depth=2).fit(
                    train, steps=a.steps, batch_size=256, lr=1e-3, verbose=False
                )
                secs = time.perf_counter() - t0
                lp = f.log_prob(test)
                out = {"lib": "nflow (python)", "flow": flow, "mean_log_prob": round(float(lp.mean()), 4),
                       "stderr": round(float(lp.std() / np.sqrt(len(lp))), 4), "train_seconds": round(secs, 2),
                       "params": f.num_params}
            else:
                ns = argparse.Namespace(lib="zuko", flow=flow, train=a.prefix + "-train.csv",
                                        test=a.prefix + "-test.csv", drop=[], layers=5, hidden=128,
                                        hidden_layers=2, steps=a.steps, batch=256, lr=1e-3, seed=0)
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    peers.fit(ns)
                r = json.loads(buf.getvalue().strip().splitlines()[-1])
                out = {"lib": "zuko", "flow": flow, "mean_log_prob": r["mean_log_prob"], "stderr": r["stderr"],
                       "train_seconds": r["train_seconds"], "params": r["params"]}
            out.update(steps=a.steps, threads=a.threads)
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
