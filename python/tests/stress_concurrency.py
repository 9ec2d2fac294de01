"""Concurrency stress scenarios for the binding (issue 36, items 5-8), one per process.

    python python/tests/stress_concurrency.py SCENARIO [--rounds N]

Each scenario exits 0 when every check passed; a hang is caught by the caller's hard timeout
(``test_concurrency.py`` runs each scenario in a subprocess), and ``faulthandler`` prints every thread's stack
shortly before that timeout so a hang shows where it waits. Scenarios:

- ``threads_x_methods``: 6 threads x every reading method (log_prob, sample, grad_log_prob, transform_to_noise,
  percentile, to_bytes / pickling) on one shared flow, plus a small fit of their own, at pool sizes 1, 2 and 4;
  every result equals the one computed alone.
- ``concurrent_fits``: 4 threads fitting their own flows at once (pool sizes 1, 2, auto): the same models as
  fitted one after the other (the kernels' results do not depend on the threads).
- ``nested_callbacks``: a fit whose callback calls log_prob / sample / grad_log_prob of another flow and of the
  flow being refitted, and runs a nested fit whose own callback scores (two levels), at pool sizes 1 and 2;
  also fit_vi with a Python target that scores another flow from the training thread.
- ``readers_vs_grad``: log_prob and grad_log_prob on one flow from many threads at once (item 7), pool 1 and 2.
- ``fit_while_reading``: one thread refits a shared flow while others read it: every read sees one whole model.
- ``fork``: after the parent used its pools (and while another thread of it is in the middle of a fit), a
  ``multiprocessing`` pool with the fork start method scores, samples and fits in its children (item 8).
- ``interrupts``: Ctrl-C (SIGINT) during a fit on the main thread while two other threads fit: the main fit
  stops with KeyboardInterrupt keeping its best weights, the others finish; an exception raised in a callback
  reaches the caller; a KeyboardInterrupt raised in a callback too.
"""

from __future__ import annotations

import argparse
import faulthandler
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List

import numpy as np

import nflow

CHECKS = {"n": 0}


def check(cond: bool, what: str) -> None:
    CHECKS["n"] += 1
    if not cond:
        raise AssertionError(what)


def data(n: int = 600, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    x0 = r.normal(size=n)
    return np.stack([2.0 * x0 + 1.0, 0.5 * x0**2 + 0.3 * r.normal(size=n)], axis=1)


def tiny(seed: int = 0, kind: str = "realnvp") -> nflow.Flow:
    return nflow.Flow(kind, layers=2, hidden=8, seed=seed)


FIT = dict(steps=40, batch_size=64, eval_every=10, verbose=False)


def run_threads(n: int, target: Callable[[int], Any]) -> List[Any]:
    """Run target(i) on n threads at once; re-raise the first failure."""
    out: List[Any] = [None] * n
    errors: List[BaseException] = []
    go = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            go.wait()
            out[i] = target(i)
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)

    ts = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return out


def reference(f: nflow.Flow, x: np.ndarray) -> Dict[str, Any]:
    return {
        "log_prob": f.log_prob(x),
        "sample": f.sample(50, seed=7),
        "grad": f.grad_log_prob(x),
        "noise": f.transform_to_noise(x),
        "percentile": f.percentile(x),
    }


def same(a: Dict[str, Any], b: Dict[str, Any], what: str) -> None:
    for k in a:
        check(np.array_equal(a[k], b[k]), f"{what}: {k} differs")


def threads_x_methods(rounds: int) -> None:
    x = data()
    for threads in (1, 2, 4):
        nflow.set_num_threads(threads)
        shared = tiny().fit(x, **FIT)
        ref = reference(shared, x[:64])
        own_ref = tiny(seed=3).fit(x, **FIT).log_prob(x[:16])

        def worker(i: int) -> None:
            r = np.random.default_rng(i)
            for _ in range(rounds):
                m = r.integers(0, 7)
                if m == 0:
                    check(np.array_equal(shared.log_prob(x[:64]), ref["log_prob"]), "log_prob")
                elif m == 1:
                    check(np.array_equal(shared.sample(50, seed=7), ref["sample"]), "sample")
                elif m == 2:
                    check(np.array_equal(shared.grad_log_prob(x[:64]), ref["grad"]), "grad_log_prob")
                elif m == 3:
                    check(np.array_equal(shared.transform_to_noise(x[:64]), ref["noise"]), "noise")
                elif m == 4:
                    check(np.array_equal(shared.percentile(x[:64]), ref["percentile"]), "percentile")
                elif m == 5:
                    g = pickle.loads(pickle.dumps(shared))
                    check(np.array_equal(g.log_prob(x[:64]), ref["log_prob"]), "pickled log_prob")
                else:
                    own = tiny(seed=3).fit(x, **FIT)
                    check(np.array_equal(own.log_prob(x[:16]), own_ref), "own fit")

        run_threads(6, worker)


def concurrent_fits(rounds: int) -> None:
    x = data()
    for threads in (1, 2, None):
        if threads is not None:
            nflow.set_num_threads(threads)
        alone = [tiny(seed=s).fit(x, **FIT).log_prob(x[:32]) for s in range(4)]
        for _ in range(rounds):
            got = run_threads(4, lambda i: tiny(seed=i).fit(x, **FIT).log_prob(x[:32]))
            for s in range(4):
                check(np.array_equal(got[s], alone[s]), f"fit with seed {s} at {threads} threads differs when run at once")


def nested_callbacks(rounds: int) -> None:
    x = data()
    for threads in (1, 2):
        nflow.set_num_threads(threads)
        other = tiny(seed=1).fit(x, **FIT)
        ref = other.log_prob(x[:32])
        me = tiny(seed=2).fit(x, **FIT)
        mine = me.log_prob(x[:32])
        for _ in range(rounds):
            seen = {"outer": 0, "inner": 0}

            def inner_cb(info: Dict[str, Any]) -> bool:
                seen["inner"] += 1
                check(np.array_equal(other.log_prob(x[:32]), ref), "log_prob in a nested callback")
                return False

            def outer_cb(info: Dict[str, Any]) -> bool:
                seen["outer"] += 1
                check(np.array_equal(other.log_prob(x[:32]), ref), "log_prob in a callback")
                check(other.sample(5, seed=1).shape == (5, 2), "sample in a callback")
                check(other.grad_log_prob(x[:8]).shape == (8, 2), "grad_log_prob in a callback")
                # the flow being refitted still answers with its previous model
                check(np.array_equal(me.log_prob(x[:32]), mine), "the refitted flow's old model")
                if seen["outer"] == 1:
                    tiny(seed=4).fit(x, callback=inner_cb, **FIT)
                return False

            me.fit(x, callback=outer_cb, **FIT)
            mine = me.log_prob(x[:32])
            check(seen["outer"] >= 2 and seen["inner"] >= 2, f"callbacks ran {seen}")

        # a Python target, called on the training thread, scores another flow
        def target(z: np.ndarray):
            check(other.log_prob(x[:4]).shape == (4,), "log_prob in a target")
            return -0.5 * (z**2).sum(1), -z

        f = nflow.Flow("realnvp", layers=2, hidden=8).fit_vi(target, dim=2, steps=20, batch_size=32, eval_samples=64, verbose=False)
        check(np.all(np.isfinite(f.log_prob(x[:4]))), "fit_vi with a scoring target")


def readers_vs_grad(rounds: int) -> None:
    x = data()
    big = np.repeat(x, 10, axis=0)
    for threads in (1, 2):
        nflow.set_num_threads(threads)
        f = tiny(kind="nsf-c").fit(x, **FIT)
        lp, g = f.log_prob(big), f.grad_log_prob(big)

        def worker(i: int) -> None:
            for _ in range(rounds):
                if i % 2:
                    check(np.array_equal(f.grad_log_prob(big), g), "grad_log_prob at once with log_prob")
                else:
                    check(np.array_equal(f.log_prob(big), lp), "log_prob at once with grad_log_prob")

        run_threads(6, worker)


def fit_while_reading(rounds: int) -> None:
    x = data()
    nflow.set_num_threads(2)
    f = tiny(seed=0).fit(x, **FIT)
    models = {0: f.log_prob(x[:32])}
    for s in range(1, 3):
        models[s] = tiny(seed=s).fit(x, **FIT).log_prob(x[:32])
    stop = threading.Event()

    def worker(i: int) -> None:
        if i == 0:
            for k in range(rounds):
                f.fit(x, seed=1 + k % 2, **{k2: v for k2, v in FIT.items()})
            stop.set()
            return
        while not stop.is_set():
            lp = f.log_prob(x[:32])
            check(any(np.array_equal(lp, m) for m in models.values()), "a read saw no whole model")
            check(f.sample(3, seed=1).shape == (3, 2), "sample during a refit")

    run_threads(4, worker)


def _child(task: str) -> Any:
    x = data()
    f = tiny(seed=0).fit(x, **FIT) if task == "fit" else CHILD_FLOW
    return task, f.log_prob(x[:32]), f.sample(10, seed=1), nflow.get_num_threads()


CHILD_FLOW: Any = None


def fork(rounds: int) -> None:
    global CHILD_FLOW
    x = data()
    for threads in (1, 2):
        nflow.set_num_threads(threads)
        CHILD_FLOW = tiny(seed=0).fit(x, **FIT)
        want_lp, want_s = CHILD_FLOW.log_prob(x[:32]), CHILD_FLOW.sample(10, seed=1)
        # another thread trains while the processes fork
        busy = threading.Thread(target=lambda: tiny(seed=5).fit(x, steps=400, batch_size=64, verbose=False), daemon=True)
        busy.start()
        ctx = mp.get_context("fork")
        for _ in range(rounds):
            with ctx.Pool(2) as pool:
                got = pool.map(_child, ["inherited", "fit", "inherited", "fit"], chunksize=1)
            for task, lp, s, n in got:
                check(np.array_equal(lp, want_lp), f"child ({task}) log_prob differs")
                check(np.array_equal(s, want_s), f"child ({task}) sample differs")
                check(n == threads, f"child ({task}) has {n} threads, the parent chose {threads}")
        busy.join()
        # and the parent still works after forking
        check(np.array_equal(CHILD_FLOW.log_prob(x[:32]), want_lp), "parent after fork")


def interrupts(rounds: int) -> None:
    x = data()
    for threads in (1, 2):
        nflow.set_num_threads(threads)
        for _ in range(rounds):
            others: List[Any] = []
            ts = [
                threading.Thread(
                    target=lambda s=s: others.append(tiny(seed=s).fit(x, steps=300, batch_size=64, eval_every=10, verbose=False)),
                    daemon=True,
                )
                for s in (1, 2)
            ]
            for t in ts:
                t.start()
            f = tiny(seed=0)
            sent = {}

            def cb(info: Dict[str, Any]) -> bool:
                if info["step"] >= 20 and not sent:
                    sent["at"] = time.monotonic()
                    os.kill(os.getpid(), signal.SIGINT)
                return False

            try:
                f.fit(x, steps=1_000_000, batch_size=64, eval_every=10, patience=0, callback=cb, verbose=False)
                check(False, "no KeyboardInterrupt")
            except KeyboardInterrupt:
                pass
            check(time.monotonic() - sent["at"] < 1.0, "the interrupt took over a second")
            check(0 < f.summary["steps"] < 1_000_000, "the interrupted fit kept no model")
            check(np.all(np.isfinite(f.log_prob(x[:8]))), "the interrupted fit's model")
            for t in ts:
                t.join()
            check(len(others) == 2, "the other threads' fits did not finish")

            class Boom(Exception):
                pass

            def bad(info: Dict[str, Any]) -> bool:
                raise Boom()

            try:
                tiny().fit(x, callback=bad, **FIT)
                check(False, "the callback's exception was lost")
            except Boom:
                pass

            def kb(info: Dict[str, Any]) -> bool:
                raise KeyboardInterrupt

            g = tiny()
            try:
                g.fit(x, callback=kb, **FIT)
                check(False, "the callback's KeyboardInterrupt was lost")
            except KeyboardInterrupt:
                pass
            check(np.all(np.isfinite(g.log_prob(x[:8]))), "the model after the callback's KeyboardInterrupt")


SCENARIOS: Dict[str, Callable[[int], None]] = {
    "threads_x_methods": threads_x_methods,
    "concurrent_fits": concurrent_fits,
    "nested_callbacks": nested_callbacks,
    "readers_vs_grad": readers_vs_grad,
    "fit_while_reading": fit_while_reading,
    "fork": fork,
    "interrupts": interrupts,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stacks-after", type=float, default=0, help="print every thread's stack after this many seconds")
    a = ap.parse_args()
    if a.stacks_after > 0:
        faulthandler.dump_traceback_later(a.stacks_after, exit=True)
    t0 = time.monotonic()
    SCENARIOS[a.scenario](a.rounds)
    print(f"{a.scenario}: {CHECKS['n']} checks passed in {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    main()
