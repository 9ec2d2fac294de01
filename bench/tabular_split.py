#!/usr/bin/env python3
"""Seeded train/test split of a tabular CSV(.gz) and a full-covariance Gaussian baseline (standard library only).

    python3 bench/tabular_split.py ../shared/data/tabular/magic04.csv.gz --drop class --test-fraction 0.2 \
        --seed 0 --out /tmp/magic04
(add --dequantize for integer data such as the 8x8 digits) writes /tmp/magic04-train.csv and /tmp/magic04-test.csv (columns kept as given, minus --drop) and prints one
JSON line with the Gaussian maximum-likelihood fit's test mean log-likelihood (nats per example).
"""
import argparse, csv, gzip, json, math, random


def read(path, drop):
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rt") as f:
        rows = list(csv.reader(f))
    keep = [i for i, h in enumerate(rows[0]) if h not in drop]
    return [rows[0][i] for i in keep], [[float(r[i]) for i in keep] for r in rows[1:]]


def cholesky(a):
    n = len(a)
    l = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            s = a[i][j] - sum(l[i][k] * l[j][k] for k in range(j))
            l[i][j] = math.sqrt(s) if i == j else s / l[j][j]
    return l


def gaussian_loglik(train, test):
    n, d = len(train), len(train[0])
    mu = [sum(r[j] for r in train) / n for j in range(d)]
    cov = [[sum((r[i] - mu[i]) * (r[j] - mu[j]) for r in train) / n for j in range(d)] for i in range(d)]
    l = cholesky(cov)
    logdet = 2 * sum(math.log(l[i][i]) for i in range(d))
    out = []
    for r in test:
        y = [r[j] - mu[j] for j in range(d)]
        z = [0.0] * d  # solve L z = y
        for i in range(d):
            z[i] = (y[i] - sum(l[i][k] * z[k] for k in range(i))) / l[i][i]
        out.append(-0.5 * (d * math.log(2 * math.pi) + logdet + sum(v * v for v in z)))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path"); p.add_argument("--drop", action="append", default=[])
    p.add_argument("--test-fraction", type=float, default=0.2); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--dequantize", action="store_true",
                   help="add U(0,1) noise (seeded) to every value of both parts: integer data such as 8x8 digits")
    a = p.parse_args()
    head, rows = read(a.path, a.drop)
    if a.dequantize:
        noise = random.Random(a.seed + 1)
        rows = [[v + noise.random() for v in r] for r in rows]
    idx = list(range(len(rows)))
    random.Random(a.seed).shuffle(idx)
    k = round(len(rows) * a.test_fraction)
    test, train = [rows[i] for i in idx[:k]], [rows[i] for i in idx[k:]]
    for name, part in (("train", train), ("test", test)):
        with open(f"{a.out}-{name}.csv", "w", newline="") as f:
            w = csv.writer(f); w.writerow(head); w.writerows([[repr(v) for v in r] for r in part])
    lp = gaussian_loglik(train, test)
    m = sum(lp) / len(lp)
    se = math.sqrt(sum((v - m) ** 2 for v in lp) / (len(lp) - 1) / len(lp))
    print(json.dumps({"baseline": "full-covariance Gaussian", "n_train": len(train), "n_test": len(test),
                      "dim": len(head), "mean_log_prob": round(m, 4), "stderr": round(se, 4)}))


if __name__ == "__main__":
    main()
