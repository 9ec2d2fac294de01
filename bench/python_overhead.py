#!/usr/bin/env python3
"""The cost of calling nflow through Python instead of the CLI, same machine, same run.

    python bench/python_overhead.py --bin target/release/nflow --rows 1000000 --steps 2000

Measures (best of --repeats, alternating the two sides): `log_prob` of ROWS rows of 10-D data through
`Flow.log_prob` against `nflow eval` on the same rows in an .npy file (the CLI's time minus its time on a 1-row
file, so reading the model is not counted against it; file reading of the big table is, and is reported), and a
STEPS-step fit of MAF (5 layers, 2x128) on 20000 rows through `Flow.fit` against `nflow train` (its own reported
training seconds). One JSON line per measurement.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np

import nflow


def run(cmd):
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return r.stdout + r.stderr


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/release/nflow")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    r = np.random.default_rng(0)
    n0 = r.normal(size=(20000, 10))
    train = n0.copy()
    train[:, 1:] += 0.5 * (n0[:, :-1] ** 2 - 1)
    with tempfile.TemporaryDirectory() as d:
        csv = os.path.join(d, "train.csv")
        np.savetxt(csv, train, delimiter=",", header=",".join(f"x{j}" for j in range(10)), comments="", fmt="%.17g")
        opts = ["--flow", "maf", "--layers", "5", "--hidden", "128", "--steps", str(a.steps), "--seed", "0", "--quiet"]
        x = np.loadtxt(csv, delimiter=",", skiprows=1)
        fit_py, fit_cli, tr_py, tr_cli = [], [], [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            f = nflow.Flow("maf", layers=5, hidden=128).fit(x, steps=a.steps, verbose=False)
            fit_py.append(time.perf_counter() - t0)
            tr_py.append(f.summary["seconds"])
            t0 = time.perf_counter()
            run([a.bin, "train", "--data", csv, *opts, "--out", os.path.join(d, "cli")])
            fit_cli.append(time.perf_counter() - t0)
            cli = nflow.load(os.path.join(d, "cli"))
            tr_cli.append(cli.summary["seconds"])
        same = bool(np.array_equal(f.log_prob(train[:1000]), cli.log_prob(train[:1000])))
        # the trainer's own clock (same code, so this is the cost of the binding's thread and callbacks), and
        # wall time: fit() on an array in memory against the CLI process (which also parses its CSV)
        print(json.dumps({"what": "fit", "flow": "maf 5x(2x128)", "steps": a.steps,
                          "python_trainer_s": round(min(tr_py), 3), "cli_trainer_s": round(min(tr_cli), 3),
                          "trainer_ratio": round(min(tr_py) / min(tr_cli), 4),
                          "python_wall_s": round(min(fit_py), 3), "cli_wall_s": round(min(fit_cli), 3),
                          "wall_ratio": round(min(fit_py) / min(fit_cli), 4), "same_weights": same}), flush=True)
        big = np.repeat(train, a.rows // len(train) + 1, axis=0)[: a.rows] + r.normal(scale=1e-3, size=(a.rows, 10))
        npy = os.path.join(d, "big.npy")
        np.save(npy, big)
        one = os.path.join(d, "one.npy")
        np.save(one, big[:1])
        model = os.path.join(d, "cli")
        py, cl, base = [], [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            lp = cli.log_prob(big)
            py.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run([a.bin, "eval", "--model", model, "--data", npy, "--json"])
            cl.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run([a.bin, "eval", "--model", model, "--data", one, "--json"])
            base.append(time.perf_counter() - t0)
        cli_s = min(cl) - min(base)
        print(json.dumps({"what": "log_prob", "rows": a.rows, "dim": 10, "python_s": round(min(py), 3),
                          "cli_eval_s": round(cli_s, 3), "cli_process_s": round(min(base), 3),
                          "ratio": round(min(py) / cli_s, 4), "python_rows_per_s": round(a.rows / min(py))}), flush=True)


if __name__ == "__main__":
    main()
