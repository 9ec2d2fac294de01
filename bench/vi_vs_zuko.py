#!/usr/bin/env python3
"""Reverse KL in nflow (from Python) and zuko, one script: the energies U1-U4 and the training-step speed.

    PEERS-VENV/bin/python bench/vi_vs_zuko.py fit --steps 1000 --seeds 0 1 2   # KL(q || p) on U1-U4, realnvp, nsf-c
    PEERS-VENV/bin/python bench/vi_vs_zuko.py step --bin target/release/nflow   # ms per step, D = 2 and 64

Needs torch, zuko and nflow (pip install ./python). zuko's flows are ../shared/bench/peers.py's `build`
(RealNVP; NSF with passes=2 for nsf-c), trained with `rsample_and_log_prob`: the same layers, conditioner
widths (2 x 128), batch (256), Adam, learning rate and cosine schedule as nflow, the best weights by the ELBO on a
fixed set of 4096 draws at 20 evaluations (as nflow keeps them). The energies are written here in torch and
checked against nflow's (`nflow.vi.target_log_prob`) before anything runs; log Z is nflow's fine-grid quadrature.
KL = log Z - ELBO on 4096 fresh samples. One JSON line per run.
"""
import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "bench"))

import torch  # noqa: E402

import nflow  # noqa: E402
import nflow.vi  # noqa: E402


def energy(k, z):
    """U_k(z) of Rezende & Mohamed (2015), U2-U4 times N(z1; 0, 4^2) (as nflow's built-in targets)."""
    z1, z2 = z[:, 0], z[:, 1]
    w1 = torch.sin(math.pi * z1 / 2)
    if k == 1:
        r = torch.sqrt(z1**2 + z2**2)
        return 0.5 * ((r - 2) / 0.4) ** 2 - torch.logaddexp(-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2)
    if k == 2:
        u = 0.5 * ((z2 - w1) / 0.4) ** 2
    elif k == 3:
        w2 = 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
        u = -torch.logaddexp(-0.5 * ((z2 - w1) / 0.35) ** 2, -0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
    else:
        w3 = 3 * torch.sigmoid((z1 - 1) / 0.3)
        u = -torch.logaddexp(-0.5 * ((z2 - w1) / 0.4) ** 2, -0.5 * ((z2 - w1 + w3) / 0.35) ** 2)
    return u + 0.5 * (z1 / 4.0) ** 2


def check_energies():
    x = np.random.default_rng(0).normal(scale=2.0, size=(500, 2))
    for k in range(1, 5):
        ref, _ = nflow.vi.target_log_prob(f"u{k}", x)
        got = -energy(k, torch.from_numpy(x)).numpy()
        assert np.allclose(got, ref, rtol=1e-9, atol=1e-9), f"U{k}: torch and nflow energies differ"


def zuko_fit(flow, k, steps, lr, batch, layers, seed):
    import peers

    torch.manual_seed(seed)
    m, _, _ = peers.build("zuko", flow, 2, layers, 128, 2)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    every = max(1, steps // 20)
    torch.manual_seed(seed + 1)
    fixed = None
    best = (-math.inf, None)
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        x, lq = m().rsample_and_log_prob((batch,))
        loss = (lq + energy(k, x)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if s % every == 0 or s == steps:
            with torch.no_grad():
                if fixed is None:
                    fixed = torch.randn(4096, 2, generator=torch.Generator().manual_seed(seed + 2))
                # the ELBO on a fixed noise set: the flow's inverse of fixed base draws
                x, lq = _from_noise(m, fixed)
                elbo = float((-energy(k, x) - lq).mean())
            if elbo > best[0]:
                best = (elbo, copy.deepcopy(m.state_dict()))
    secs = time.perf_counter() - t0
    m.load_state_dict(best[1])
    with torch.no_grad():
        torch.manual_seed(seed + 3)
        x, lq = m().rsample_and_log_prob((4096,))
        lw = (-energy(k, x) - lq).double().numpy()
    return lw, secs, sum(p.numel() for p in m.parameters())


def _from_noise(m, z):
    d = m()
    x = d.transform.inv(z)
    lq = d.log_prob(x)
    return x, lq


def fit(a):
    check_energies()
    for seed in a.seeds:
        a.seed = seed
        fit_seed(a)


def fit_seed(a):
    for flow in a.flows:
        layers = 8 if flow == "realnvp" else 5
        for k in range(1, 5):
            true = nflow.vi.target_log_z(f"u{k}")
            t0 = time.perf_counter()
            f = nflow.Flow(flow, layers=layers, hidden=128, depth=2).fit_vi(
                f"u{k}", steps=a.steps, lr=a.lr, schedule="cosine", batch_size=256, seed=a.seed, verbose=False
            )
            secs = time.perf_counter() - t0
            d = nflow.vi.diagnostics(f, f"u{k}", n=4096, seed=a.seed + 3)
            print(json.dumps({"lib": "nflow (python)", "flow": flow, "target": f"U{k}", "kl": round(true - d["elbo"], 4),
                              "elbo": round(d["elbo"], 4), "elbo_se": round(d["elbo_se"], 4), "log_z": round(d["log_z"], 4),
                              "log_z_se": round(d["log_z_se"], 4), "true_log_z": round(true, 4),
                              "ess_fraction": round(d["ess_fraction"], 3), "train_seconds": round(secs, 2),
                              "params": f.num_params, "steps": a.steps, "seed": a.seed}), flush=True)
            lw, secs, params = zuko_fit(flow, k, a.steps, a.lr, 256, layers, a.seed)
            d = json.loads(nflow._nflow.diagnostics(lw.tolist(), [0.0] * len(lw)))
            print(json.dumps({"lib": "zuko", "flow": flow, "target": f"U{k}", "kl": round(true - d["elbo"], 4),
                              "elbo": round(d["elbo"], 4), "elbo_se": round(d["elbo_se"], 4), "log_z": round(d["log_z"], 4),
                              "log_z_se": round(d["log_z_se"], 4), "true_log_z": round(true, 4),
                              "ess_fraction": round(d["ess_fraction"], 3), "train_seconds": round(secs, 2),
                              "params": params, "steps": a.steps, "seed": a.seed}), flush=True)


def step(a):
    import peers

    res = subprocess.run([a.bin, "--threads", str(a.threads), "bench", "--workload", "vi"], check=True,
                         capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            print(line, flush=True)
    for flow in ("realnvp", "nsf-c"):
        for d in (2, 64):
            torch.manual_seed(0)
            m, _, _ = peers.build("zuko", flow, d, 5, 128, 2)
            opt = torch.optim.Adam(m.parameters(), lr=1e-4)
            ts = []
            for s in range(a.warmup + a.repeats):
                t0 = time.perf_counter()
                x, lq = m().rsample_and_log_prob((256,))
                loss = (lq + 0.5 * (x**2).sum(1)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss.item()
                if s >= a.warmup:
                    ts.append(1e3 * (time.perf_counter() - t0))
            with torch.no_grad():
                sm = []
                for _ in range(max(5, a.repeats // 2)):
                    t0 = time.perf_counter()
                    m().rsample_and_log_prob((256,))[1].sum().item()
                    sm.append(1e3 * (time.perf_counter() - t0))
            print(json.dumps({"mode": "vi", "lib": "zuko", "flow": flow, "dim": d, "batch": 256,
                              "params": sum(p.numel() for p in m.parameters()),
                              "vi_step_ms": round(float(np.median(ts)), 3), "sample_log_prob_ms": round(float(np.median(sm)), 3),
                              "threads": torch.get_num_threads()}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--steps", type=int, default=1000)
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--seeds", type=int, nargs="+", default=[0])
    f.add_argument("--flows", nargs="+", default=["realnvp", "nsf-c"])
    s = sub.add_parser("step")
    s.add_argument("--bin", default="target/release/nflow")
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    nflow.set_num_threads(a.threads)
    fit(a) if a.mode == "fit" else step(a)


if __name__ == "__main__":
    main()
