"""Fuzz the Python API: random arguments, shapes and dtypes against every public method (``nflow.Flow``, the
scikit-learn estimator, the module functions, ``nflow.vi``, the binding's own functions, model bytes).

    python python/tests/fuzz_api.py --iterations 5000 --seed 1          # or --minutes 10
    python python/tests/fuzz_api.py --iterations 300 --seed 0 --trace /tmp/last_call.txt

A call may return or raise a clean Python exception (``ALLOWED``); anything else is a finding: another
exception type (KeyError, IndexError, AttributeError, pyo3's PanicException, SystemError, ...), a crash (the
process dies: abort, segfault; ``--trace`` then holds the call that killed it) or a hang (a call running past
``--call-timeout`` seconds: every thread's stack is printed and the process exits with status 1). Prints a
summary (calls, seconds, exceptions by type) and exits 1 when there was a finding.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import io
import math
import os
import pickle
import random
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

import nflow
from nflow import _nflow, vi
from nflow.sklearn import FlowDensity

# Clean, documented failures of bad arguments: wrong values or types, a number too big for its type, a model
# that is not fitted or that diverged, a bad path, a request larger than memory.
ALLOWED = (ValueError, TypeError, OverflowError, FloatingPointError, RuntimeError, OSError, MemoryError)
# RuntimeError is allowed, but not pyo3's PanicException (a BaseException) and not these subclasses of it:
NOT_ALLOWED = (NotImplementedError, RecursionError)

# ---------------------------------------------------------------------------------------------------------
# Random values


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.np = np.random.default_rng(seed)

    def choice(self, xs):
        return xs[self.r.randrange(len(xs))]

    def maybe(self, p: float = 0.5) -> bool:
        return self.r.random() < p

    def int_(self) -> Any:
        return self.choice([0, 1, 2, 3, 5, 16, -1, -7, 2**31, 2**32 + 1, 2**63, 2**64, -(2**63), 10**30, True, np.int64(3), np.uint8(2)])

    def small_int(self) -> Any:
        if self.maybe(0.5):
            return self.choice([1, 2, 3, 4, 8])
        return self.choice([0, 1, 2, 3, 4, 8, -1, -100, 2**40, np.int32(2), 2.0, 2.5, True, None, "3", float("nan")])

    def float_(self) -> Any:
        if self.maybe(0.4):
            return self.choice([0.1, 0.2, 1e-3, 0.01])
        return self.choice([0.0, -0.0, 0.5, 1.0, -1.0, 1e-300, 1e300, float("nan"), float("inf"), -float("inf"), 2, np.float32(0.1), 1e-3, "0.1", None])

    def str_(self) -> Any:
        return self.choice(
            ["", "x", "auto", "realnvp", "maf", "nsf-c", "nsf-ar", "glow", "u1", "u4", "gauss:2", "gauss:0", "gauss:-1", "gauss:2:0.9:3",
             "gauss:100000000000", "mix:2:3", "mix:0:0", "mix:2:1000000000", "gauss:2:nan", "\u00e9\U0001f4a5", "a" * 1000, "x0", "c0", "\x00"]
        )

    def array(self, dim: int = 2, rows: Any = None) -> Any:
        n = self.choice([0, 1, 2, 3, 7, 64]) if rows is None else rows
        if self.maybe(0.5):
            # well-formed half of the time, so that calls get past the argument checks
            return self.np.normal(size=(n, dim)) * [3.0, 0.5, 1.0][:dim] + [1.0, -2.0, 0.0][:dim] if dim <= 3 else self.np.normal(size=(n, dim))
        shape = self.choice([(n, dim), (n, dim), (n, dim), (n, dim + 1), (n, max(dim - 1, 0)), (n,), (), (0, dim), (n, 0), (n, dim, 2), (1, n, dim)])
        dtype = self.choice([np.float64, np.float64, np.float32, np.float16, np.int64, np.int8, np.uint8, bool, np.complex128, object, "U3", "datetime64[s]", "V4"])
        scale = self.choice([1.0, 1e-30, 1e30, 1e300, 0.0])
        v = np.asarray(self.np.normal(size=shape) * scale)
        if self.maybe(0.2) and v.size:
            v.flat[self.r.randrange(v.size)] = self.choice([np.nan, np.inf, -np.inf])
        try:
            a = v.astype(dtype)
        except (ValueError, TypeError):
            a = v
        if self.maybe(0.15) and a.ndim == 2:
            a = np.asfortranarray(a)
        if self.maybe(0.15) and a.ndim == 2:
            a = a[::-1, ::-1]
        if self.maybe(0.05):
            a = a.tolist()
        if self.maybe(0.05) and a is not None and np.ndim(a) == 2:
            import pandas as pd

            a = pd.DataFrame(np.asarray(a), columns=[self.choice(["x0", "x1", "a", 0, 1.5]) for _ in range(np.shape(a)[1])])
        return a

    def any_(self, dim: int = 2) -> Any:
        k = self.r.randrange(9)
        return [self.int_, self.float_, self.str_, lambda: self.array(dim), lambda: None,
                lambda: [self.float_() for _ in range(3)], lambda: {"a": 1}, lambda: object(), lambda: b"\x00\x01"][k]()


# ---------------------------------------------------------------------------------------------------------
# Fixtures: fitted flows of each kind

FAST = dict(steps=5, batch_size=32, verbose=False)


def fixtures() -> Dict[str, Any]:
    r = np.random.default_rng(0)
    x = r.normal(size=(200, 2)) * [3.0, 0.5] + [1.0, -2.0]
    c = r.normal(size=(200, 1))
    fx = {
        "x": x,
        "plain": nflow.Flow("realnvp", layers=2, hidden=8).fit(x, **FAST),
        "maf": nflow.Flow("maf", layers=2, hidden=8).fit(x, **FAST),
        "cond": nflow.Flow("realnvp", layers=2, hidden=8).fit(x, context=c, **FAST),
        "bounded": nflow.Flow("maf", layers=2, hidden=8).fit(np.abs(x), positive=[0], **FAST),
        "unfitted": nflow.Flow("maf", layers=2, hidden=8),
        "sk": FlowDensity("maf", layers=2, hidden=8, steps=5).fit(x),
    }
    fx["bytes"] = fx["plain"].to_bytes()
    return fx


# ---------------------------------------------------------------------------------------------------------
# The calls


def flow_any(g: Gen, fx) -> Any:
    return fx[g.choice(["plain", "maf", "cond", "bounded", "unfitted"])]


def kw_fit(g: Gen) -> Dict[str, Any]:
    kw: Dict[str, Any] = {"verbose": False, "max_seconds": 2.0}
    keys = ["validation", "steps", "epochs", "batch_size", "lr", "seed", "patience", "eval_every", "max_seconds", "optimizer",
            "weight_decay", "schedule", "decays", "warmup", "clip", "context_one_hot", "sample_weight", "bounds", "positive", "integer"]
    for k in g.r.sample(keys, g.r.randrange(4)):
        if k in ("steps", "epochs", "batch_size", "patience", "eval_every", "decays", "warmup", "seed"):
            kw[k] = g.small_int()
        elif k in ("validation", "lr", "weight_decay", "clip", "max_seconds"):
            kw[k] = g.float_()
        elif k in ("optimizer", "schedule"):
            kw[k] = g.choice(["adam", "adamw", "sgd", "constant", "cosine", "plateau", "warmup", "", None, 3])
        elif k == "sample_weight":
            kw[k] = g.choice([g.array(1), [1.0, 2.0], np.ones(7), -np.ones(7), None])
        elif k == "bounds":
            kw[k] = g.choice([{0: (0, 1)}, {0: (1, 0)}, {5: (0, 1)}, {"x0": (-1e300, 1e300)}, {0: (0,)}, {0: (np.nan, 1)}, {0: "ab"}, []])
        elif k in ("positive", "integer"):
            kw[k] = g.choice([[0], [1], [7], ["x9"], [-1], [True], "x0", [None]])
        else:
            kw[k] = g.any_()
    if kw.get("steps") is None and kw.get("epochs") is None:
        kw["steps"] = g.choice([1, 2, 5])
    if not isinstance(kw.get("max_seconds"), (int, float)) or not (0 < kw["max_seconds"] <= 2):
        kw["max_seconds"] = 2.0
    for k in ("steps", "epochs"):
        if isinstance(kw.get(k), (int, np.integer)) and kw[k] > 20:
            kw[k] = 20
    return kw


def call_new_flow(g: Gen, fx):
    kw: Dict[str, Any] = {}
    for k in g.r.sample(["layers", "hidden", "depth", "bins", "tail_bound", "activation", "base", "components", "seed", "scale_bound",
                         "sigmoid_scale", "batch_norm", "mask", "order", "map", "bogus", "image_shape"], g.r.randrange(4)):
        kw[k] = g.choice([g.small_int(), g.small_int(), g.float_(), g.str_(), [1, 2], (1, 2, 2), True, {"type": "x"}])
    for k in ("layers", "hidden", "depth", "bins", "components"):
        if isinstance(kw.get(k), (int, np.integer)) and kw[k] > 64:
            kw[k] = 64
    dim = g.choice([None, None, 1, 2, 2, 3, 0, -1, 2.5, "2"])
    f = nflow.Flow(g.choice([None, "auto", "realnvp", "maf", "nsf-ar", "nsf-c", "nice", "iaf", "maf-mog", "glow", "x", 3]), dim, **kw)
    if g.maybe(0.5):
        f.architecture_for(g.choice([1, 2, 3, 0, -1, 2**70]), g.choice([0, 1, -1]))
    if g.maybe(0.5):
        f.fit(g.array(g.choice([1, 2, 3]), rows=g.choice([1, 2, 20, 50])), **kw_fit(g))
        f.log_prob(fx["x"][:3, : f.dim])
    return f


def call_fit(g: Gen, fx):
    f = nflow.Flow(g.choice(["maf", "realnvp", "nsf-ar", "auto"]), layers=2, hidden=8)
    x = g.array(2, rows=g.choice([0, 1, 2, 3, 40, 100]))
    ctx = None
    if g.maybe(0.3):
        ctx = g.choice([g.array(1, rows=np.shape(x)[0] if np.ndim(x) >= 1 else 3), ["x0"], ["zz"], g.any_()])
    f.fit(x, ctx, **kw_fit(g))
    f.sample(3, seed=0)


class TargetFailed(Exception):
    """Raised by a fuzzed target function: it must reach the caller of fit_vi as it is."""


def _raising_target(x):
    raise TargetFailed("the target failed")


def call_fit_vi(g: Gen, fx):
    f = nflow.Flow(g.choice(["maf", "realnvp", "iaf", "nsf-ar"]), layers=2, hidden=8)
    target = g.choice(["u1", "u2", "gauss:2", "gauss:3:0.5", "mix:2:3", g.str_(), 3, None,
                       lambda x: (-0.5 * (x**2).sum(1), -x),
                       lambda x: ((x**2).sum(1), x[:, :1]),
                       lambda x: (np.full(len(x), np.nan), x),
                       lambda x: "nope",
                       _raising_target])
    kw = dict(steps=g.choice([1, 3, 0, -1, 2.5, "5"]), batch_size=g.choice([8, 1, 0, -1, 2**40]), verbose=False,
              eval_samples=g.choice([16, 1, 0, 2**40]))
    if g.maybe(0.3):
        kw["lr"] = g.float_()
    if g.maybe(0.3):
        kw["contexts"] = g.array(1)
    if isinstance(kw["batch_size"], int) and kw["batch_size"] > 4096:
        kw["batch_size"] = 4096
    if isinstance(kw["eval_samples"], int) and kw["eval_samples"] > 4096:
        kw["eval_samples"] = 4096
    try:
        f.fit_vi(target, g.choice([None, 2, 3, 0, -1]), **kw)
    except TargetFailed:
        pass


def call_method(g: Gen, fx):
    f = flow_any(g, fx)
    m = g.choice(["log_prob", "sample", "sample_and_log_prob", "grad_log_prob", "transform_to_noise", "percentile", "score",
                  "describe", "props", "pickle", "to_bytes", "save", "repr"])
    ctx = g.choice([None, None, g.array(1), g.array(2), g.any_()])
    if m in ("log_prob", "grad_log_prob", "transform_to_noise", "percentile", "score"):
        return getattr(f, m)(g.array(2), ctx)
    if m in ("sample", "sample_and_log_prob"):
        n = g.choice([0, 1, 5, -1, 2.5, "3", None, 2**40, 2**62, 2**64, np.int64(4), float("nan")])
        kw = {"seed": g.choice([None, 0, -1, 2**64, "s", 1.5])}
        if m == "sample":
            kw["temperature"] = g.float_()
        return getattr(f, m)(n, ctx, **kw)
    if m == "describe":
        return f.describe()
    if m == "props":
        return (f.columns, f.context_columns, f.history, f.summary, f.num_params, f.architecture)
    if m == "pickle":
        return pickle.loads(pickle.dumps(f))
    if m == "to_bytes":
        return f.to_bytes()
    if m == "save":
        with tempfile.TemporaryDirectory() as d:
            path = g.choice([os.path.join(d, "m"), d, "", os.path.join(d, "no", "such", "m"), "/proc/self/nope", "\x00"])
            f.save(path)
            if g.maybe(0.5):
                return nflow.load(path)
        return None
    return repr(f)


def call_bytes(g: Gen, fx):
    b = bytearray(fx["bytes"])
    k = g.r.randrange(6)
    if k == 0:
        b = b[: g.r.randrange(len(b) + 1)]
    elif k == 1:
        for _ in range(g.r.randrange(1, 20)):
            b[g.r.randrange(len(b))] = g.r.randrange(256)
    elif k == 2:
        # the header's length field and the JSON header
        for _ in range(g.r.randrange(1, 4)):
            b[g.r.randrange(min(len(b), 400))] = g.r.randrange(256)
    elif k == 3:
        b = bytearray(g.r.randbytes(g.r.randrange(64)))
    elif k == 4:
        # the numbers inside config JSON
        s = bytes(b)
        i = s.find(b'"hidden"')
        if i >= 0:
            b[i + 9 : i + 11] = str(g.choice([0, 10**9, -1, 99])).encode()[:2]
    f = nflow.Flow.from_bytes(bytes(b))
    f.log_prob(fx["x"][:4, : f.dim])
    f.sample(2, seed=0)


def call_load(g: Gen, fx):
    with tempfile.TemporaryDirectory() as d:
        fx["plain"].save(os.path.join(d, "m"))
        files = sorted(os.listdir(os.path.join(d, "m")))
        victim = os.path.join(d, "m", g.choice(files))
        data = bytearray(open(victim, "rb").read())
        if data and g.maybe(0.7):
            for _ in range(g.r.randrange(1, 10)):
                data[g.r.randrange(len(data))] = g.r.randrange(256)
        else:
            data = data[: g.r.randrange(len(data) + 1)]
        open(victim, "wb").write(bytes(data))
        f = nflow.load(g.choice([os.path.join(d, "m"), os.path.join(d, "m"), d, victim, "/nonexistent"]))
        f.log_prob(fx["x"][:4])


def call_sklearn(g: Gen, fx):
    k = g.r.randrange(4)
    if k == 0:
        est = FlowDensity(g.choice(["maf", "realnvp", "auto", "x", None]), layers=g.choice([1, 2, 0, None]), hidden=g.choice([8, 0, None]),
                          steps=g.choice([1, 3, 0, -1]), batch_size=g.choice([8, 0, 2**40]), lr=g.float_(), validation=g.float_(),
                          random_state=g.choice([None, 0, -1, np.random.RandomState(0), "x"]))
        return est.fit(g.array(g.choice([1, 2]), rows=g.choice([0, 1, 2, 30])))
    est = fx["sk"]
    if k == 1:
        return est.score_samples(g.array(2))
    if k == 2:
        return est.score(g.array(2))
    return est.sample(g.choice([1, 0, -1, 2.5, 2**62, None]), g.choice([None, 0, -1, "x"]))


def call_module(g: Gen, fx):
    k = g.r.randrange(9)
    if k == 0:
        return nflow.presets(), nflow.get_num_threads()
    if k == 1:
        n = g.choice([1, 2, 0, -1, 3, 2**40, 2.0, "2", None])
        try:
            return nflow.set_num_threads(n)
        finally:
            nflow.set_num_threads(2)
    if k == 2:
        return vi.target_log_prob(g.str_(), g.array(g.choice([1, 2, 3])))
    if k == 3:
        return vi.target_log_z(g.str_())
    if k == 4:
        return vi.diagnostics(fx[g.choice(["plain", "maf", "unfitted"])], g.choice(["u1", "gauss:2", "gauss:3", g.str_()]),
                              n=g.choice([16, 1, 0, -1, 2]), seed=g.choice([0, -1]))
    if k == 5:
        return vi.importance_sample(fx["plain"], g.choice(["u1", "gauss:2", g.str_()]), n=g.choice([8, 0, -1, 1]), seed=0)
    if k == 6:
        return vi.resample(g.choice([g.array(1), np.ones(4), np.array([np.nan, 1.0]), np.zeros(3), -np.ones(3), g.any_()]),
                           g.choice([3, 0, -1, 2.5]), seed=g.choice([0, -1]))
    if k == 7:
        n = g.choice([0, 1, 2, 5])
        return _nflow.diagnostics([g.float_() if g.maybe(0.2) else 0.5 for _ in range(n)], [g.float_() if g.maybe(0.2) else 0.1 for _ in range(g.choice([n, n + 1]))])
    return _nflow.architecture(g.choice(["preset", "composed", "x"]),
                               g.choice(['{"flow": "maf"}', '{"flow": "maf", "layers": 0}', '{"flow": "realnvp", "hidden": -1}', "{", "[]", "null",
                                         '{"layers": []}', '{"layers": [{"type": "x"}]}', '{"flow": "maf", "bogus": 1}', '{"flow": "nsf-ar", "bins": 0}',
                                         '{"flow": "maf", "layers": 1e9}', '{"layers": [{"type": "affine"}], "dim": 5}']),
                               g.choice([2, 1, 0, 3, 2**40]), g.choice([0, 1]), g.choice([0, 2**63]))


CALLS: List[Tuple[str, Callable[[Gen, Any], Any], int]] = [
    ("Flow()", call_new_flow, 3),
    ("Flow.fit", call_fit, 3),
    ("Flow.fit_vi", call_fit_vi, 2),
    ("Flow methods", call_method, 8),
    ("Flow.from_bytes", call_bytes, 2),
    ("nflow.load", call_load, 1),
    ("FlowDensity", call_sklearn, 2),
    ("module functions", call_module, 3),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=0, help="run this long instead (iterations then ignored)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--call-timeout", type=float, default=60.0)
    ap.add_argument("--trace", default=None, help="write each call's description here before making it")
    ap.add_argument("--messages", action="store_true", help="also print each distinct exception message (first 100 characters)")
    a = ap.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    nflow.set_num_threads(2)
    fx = fixtures()
    g = Gen(a.seed)
    weights = [w for _, _, w in CALLS]
    seen: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    findings: List[str] = []
    messages: collections.Counter = collections.Counter()
    t0 = time.monotonic()
    i = 0
    while (time.monotonic() - t0 < 60 * a.minutes) if a.minutes > 0 else (i < a.iterations):
        name, fn, _ = g.r.choices(CALLS, weights)[0]
        state = g.r.getstate()
        if a.trace:
            with open(a.trace, "w") as t:
                t.write(f"iteration {i} seed {a.seed}: {name} (random state hash {hash(str(state)) & 0xFFFFFFFF:x})\n")
        faulthandler.dump_traceback_later(a.call_timeout, exit=True)
        err = io.StringIO()
        saved = sys.stderr
        sys.stderr = err
        try:
            fn(g, fx)
            seen[name]["ok"] += 1
        except ALLOWED as e:
            if isinstance(e, NOT_ALLOWED):
                findings.append(f"iteration {i} {name}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            seen[name][type(e).__name__] += 1
            messages[f"{name}: {type(e).__name__}: {str(e)[:100]}"] += 1
        except BaseException as e:  # noqa: BLE001 - that is the finding
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            seen[name][type(e).__name__] += 1
            findings.append(f"iteration {i} {name}: {type(e).__module__}.{type(e).__name__}: {e}\n{traceback.format_exc()}")
        finally:
            sys.stderr = saved
            faulthandler.cancel_dump_traceback_later()
        i += 1
    dt = time.monotonic() - t0
    print(f"fuzz_api: {i} calls in {dt:.1f}s (seed {a.seed}), {len(findings)} findings")
    for name, c in sorted(seen.items()):
        print(f"  {name}: {dict(c)}")
    if a.messages:
        for m, k in sorted(messages.items()):
            print(f"  {k:5d} x {m}")
    for f in findings[:20]:
        print("FINDING", f)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
