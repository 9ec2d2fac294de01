"""w6 in PyTorch: a Glow of the size of `nflow bench --workload w6`, built from normflows' Glow blocks the way
normflows' own multi-scale example builds one (GlowBlock = affine coupling with a 3x3 -> 1x1 -> 3x3 ConvNet2d
conditioner, invertible 1x1 convolution (LU), ActNorm; Squeeze; Merge; a diagonal Gaussian per level).

What matches nflow's w6: 1x28x28 images, 2 levels, 8 steps per level, conditioners 64 channels wide, Glow's
sigmoid-bounded affine couplings on half the channels, LU 1x1 convolutions, ActNorm with data initialisation,
batch 64, pixels uniform in [0, 1), Adam at lr 1e-4; train step = forward KL, backward, Adam step.
What does not: normflows' prior on each level is a diagonal Gaussian with a learned mean and scale per position
(nflow: a standard normal), and normflows squeezes after each level's steps where nflow squeezes before them
(the same shapes and work per step; normflows' first level runs on the 8-channel 7x7 side).
Usage: python bench/glow_normflows.py [--threads T] [--repeats N]   -> one JSON line like nflow bench's.
"""
import argparse, json, statistics, time

import numpy as np
import torch
import normflows as nf


def build(l_levels=2, k=8, hidden=64, shape=(1, 28, 28)):
    c = shape[0]
    q0, merges, flows = [], [], []
    for i in range(l_levels):
        fl = [nf.flows.GlowBlock(c * 2 ** (l_levels + 1 - i), hidden, split_mode="channel", scale=True)
              for _ in range(k)]
        fl += [nf.flows.Squeeze()]
        flows += [fl]
        if i > 0:
            merges += [nf.flows.Merge()]
            latent = (c * 2 ** (l_levels - i), shape[1] // 2 ** (l_levels - i), shape[2] // 2 ** (l_levels - i))
        else:
            latent = (c * 2 ** (l_levels + 1), shape[1] // 2 ** l_levels, shape[2] // 2 ** l_levels)
        q0 += [nf.distributions.DiagGaussian(latent)]
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    b = 64
    x = torch.rand(b, 1, 28, 28)
    m = build()
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    ts = []
    for s in range(a.warmup + a.repeats):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = m.forward_kld(x)
        loss.backward()
        opt.step()
        loss.item()
        if s >= a.warmup:
            ts.append(1e3 * (time.perf_counter() - t0))
    m.eval()
    with torch.no_grad():
        tf, tsm = [], []
        for _ in range(max(5, a.repeats // 2)):
            t0 = time.perf_counter(); m.log_prob(x, None).sum().item(); tf.append(1e3 * (time.perf_counter() - t0))
            t0 = time.perf_counter(); m.sample(b)[0].sum().item(); tsm.append(1e3 * (time.perf_counter() - t0))
    step = statistics.median(ts)
    print(json.dumps({"mode": "step", "lib": "normflows", "workload": "w6", "train_step_ms": round(step, 3),
                      "log_prob_ms": round(statistics.median(tf), 3), "sample_ms": round(statistics.median(tsm), 3),
                      "train_images_per_s": round(b / step * 1e3), "batch": b,
                      "params": sum(q.numel() for q in m.parameters()), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
