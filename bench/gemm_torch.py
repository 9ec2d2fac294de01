"""PyTorch's GEMM (its bundled BLAS) on the same shapes as bench/gemm (f32, best of repeats), as the reference rate.
Usage: python bench/gemm_torch.py [THREADS]"""
import json, sys, time
import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
torch.set_num_threads(threads)
shapes = []
for i, o in [(392, 1024), (1024, 1024), (1024, 784)]:
    shapes += [("w3", 256, i, o, False, True), ("w3", o, 256, i, True, False), ("w3", 256, o, i, False, False)]
for i, o in [(64, 512), (512, 512), (512, 128)]:
    shapes += [("w2", 256, i, o, False, True), ("w2", o, 256, i, True, False), ("w2", 256, o, i, False, False)]
shapes += [("w1", 512, 128, 128, False, True), ("w1", 128, 512, 128, True, False), ("w1", 512, 128, 128, False, False)]
tot = {}
with torch.no_grad():
    for w, m, k, n, ta, tb in shapes:
        a = torch.rand(k, m) if ta else torch.rand(m, k)
        b = torch.rand(n, k) if tb else torch.rand(k, n)
        A = a.t() if ta else a
        B = b.t() if tb else b
        out = torch.empty(m, n)
        flops = 2.0 * m * k * n
        reps = max(5, min(400, int(2e9 / flops)))
        torch.mm(A, B, out=out)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(A, B, out=out)
            best = min(best, time.perf_counter() - t0)
        print(json.dumps({"provider": "torch", "workload": w, "m": m, "k": k, "n": n,
                          "op": ("T" if ta else "N") + ("T" if tb else "N"), "threads": threads,
                          "gflops": round(flops / best / 1e9, 1)}))
        f, s = tot.get(w, (0.0, 0.0))
        tot[w] = (f + flops, s + best)
for w in ("w1", "w2", "w3"):
    f, s = tot[w]
    print(json.dumps({"provider": "torch", "workload": w, "summary": True, "threads": threads,
                      "gflops": round(f / s / 1e9, 1)}))
