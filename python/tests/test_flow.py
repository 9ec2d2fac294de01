"""nflow.Flow: fit, score, sample, the score's gradient, saving, pickling, errors, threads."""

import json
import pickle
import threading
import time

import numpy as np
import pytest

import nflow
from nflow.layers import Affine, Coupling, MLP, Normal, Permutation, RqSpline

FAST = dict(steps=150, batch_size=256, verbose=False)


def small(kind="realnvp", **kw):
    return nflow.Flow(kind, layers=3, hidden=16, **kw)


def test_fit_log_prob_sample_shapes_and_dtypes(banana):
    f = small().fit(banana.astype(np.float32), **FAST)
    for x in (banana[:7], banana[:7].astype(np.float32), banana[:7].tolist()):
        lp = f.log_prob(x)
        assert lp.dtype == np.float64 and lp.shape == (7,)
        assert np.all(np.isfinite(lp))
    s = f.sample(11, seed=3)
    assert s.dtype == np.float64 and s.shape == (11, 2)
    np.testing.assert_array_equal(s, f.sample(11, seed=3))
    assert not np.array_equal(s, f.sample(11, seed=4))
    assert f.sample(0, seed=1).shape == (0, 2)


def test_same_seed_same_model_and_float32_input_matches_float64(banana):
    a = small(seed=5).fit(banana, **FAST)
    b = small(seed=5).fit(banana, **FAST)
    np.testing.assert_array_equal(a.log_prob(banana[:50]), b.log_prob(banana[:50]))
    c = small(seed=6).fit(banana, **FAST)
    assert not np.array_equal(a.log_prob(banana[:50]), c.log_prob(banana[:50]))


def test_training_improves_the_held_out_likelihood(banana):
    f = small("nsf-c").fit(banana[:2500], steps=400, verbose=False)
    h = f.history
    assert h[-1]["val_nll"] < h[0]["val_nll"] - 0.2
    # a Gaussian fit is the floor a flow must beat on curved data
    test = banana[2500:]
    mu, cov = test.mean(0), np.cov(test.T)
    d = test - mu
    gauss = -0.5 * np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d) - 0.5 * np.log(np.linalg.det(2 * np.pi * cov))
    assert f.score(test) > gauss.mean() + 0.1


def test_sample_and_log_prob_agree_with_log_prob(banana):
    f = small("maf").fit(banana, **FAST)
    x, lp = f.sample_and_log_prob(200, seed=1)
    np.testing.assert_allclose(lp, f.log_prob(x), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(x, f.sample(200, seed=1))


def test_density_integrates_to_one_on_a_grid(banana):
    f = small("nsf-c").fit(banana, **FAST)
    lo, hi, g = np.array([-25.0, -2.5]), np.array([31.0, 5.0]), 400
    xs = [np.linspace(lo[i], hi[i], g, endpoint=False) + (hi[i] - lo[i]) / g / 2 for i in range(2)]
    grid = np.stack(np.meshgrid(*xs), -1).reshape(-1, 2)
    mass = np.exp(f.log_prob(grid)).sum() * np.prod((hi - lo) / g)
    assert abs(mass - 1.0) < 0.02, mass


def test_grad_log_prob_matches_finite_differences(banana):
    # smooth layers (tanh conditioners, affine maps): finite differences across a ReLU's or a spline knot's
    # kink are off by O(h); the f64 check of every layer kind is in tests/flows.rs
    f = small("maf", activation="tanh").fit(banana, steps=300, verbose=False)
    x = banana[:20]
    g = f.grad_log_prob(x)
    assert g.shape == x.shape and g.dtype == np.float64
    for j, h in ((0, 5e-2), (1, 2e-3)):  # steps relative to each column's scale
        e = np.zeros(2)
        e[j] = h
        fd = (f.log_prob(x + e) - f.log_prob(x - e)) / (2 * h)
        np.testing.assert_allclose(g[:, j], fd, rtol=2e-2, atol=2e-3 / banana[:, j].std())


def test_transform_to_noise_is_standard_normal_after_training(banana):
    f = small("nsf-c").fit(banana, steps=400, verbose=False)
    z = f.transform_to_noise(banana)
    assert z.shape == banana.shape
    assert np.all(np.abs(z.mean(0)) < 0.15) and np.all(np.abs(z.std(0) - 1) < 0.15)


def test_composed_flow_mirrors_the_rust_layers(banana):
    layers = [
        Coupling(map=RqSpline(bins=6), net=MLP(hidden=16)),
        Permutation(),
        Coupling(map=Affine(), net=MLP(hidden=16, depth=1), index=1),
    ]
    f = nflow.Flow(layers=layers, base=Normal(), seed=2).fit(banana, **FAST)
    arch = f.architecture
    assert [l["type"] for l in arch["layers"]] == ["coupling", "permutation", "coupling"]
    assert arch["layers"][0]["map"]["bins"] == 6 and arch["layers"][2]["net"]["depth"] == 1
    assert np.all(np.isfinite(f.log_prob(banana[:10])))
    # the preset is a list of layers too: composing its own list gives the same model
    preset = small("nsf-c", seed=2)
    same = nflow.Flow(layers=[nflow.layers.Layer(**l) for l in preset.architecture_for(2)["layers"]], seed=2)
    a = preset.fit(banana, **FAST).log_prob(banana[:20])
    b = same.fit(banana, **FAST).log_prob(banana[:20])
    np.testing.assert_array_equal(a, b)


def test_bad_input_raises_the_usual_exceptions(banana, tmp_path):
    f = small().fit(banana, **FAST)
    bad = banana[:5].copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3.*x1"):
        f.log_prob(bad)
    with pytest.raises(ValueError, match="2-D"):
        f.log_prob(banana[0])
    with pytest.raises(ValueError, match="columns"):
        f.log_prob(np.ones((3, 5)))
    with pytest.raises(ValueError, match="expected numbers"):
        f.log_prob(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="unknown option 'hiden'"):
        nflow.Flow("maf", 2, hiden=3)
    with pytest.raises(ValueError, match="unknown flow"):
        nflow.Flow("not-a-flow")
    with pytest.raises(ValueError, match=r"layers\[0\].*bogus"):
        nflow.Flow(layers=[Coupling(map=RqSpline(bogus=1))], dim=2)
    with pytest.raises(ValueError, match="learning rate"):
        small().fit(banana, lr=-1, verbose=False)
    with pytest.raises(ValueError, match="NaN"):
        small().fit(bad, verbose=False)
    with pytest.raises(FileNotFoundError):
        nflow.load(tmp_path / "missing")
    with pytest.raises(RuntimeError, match="not fitted"):
        small().log_prob(banana)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json"):
        nflow.load(tmp_path / "junk")
    with pytest.raises(ValueError, match="not an nflow model"):
        nflow.Flow.from_bytes(b"garbage")


def test_save_load_and_pickle_give_identical_log_probs(banana, tmp_path):
    f = small("maf").fit(banana, **FAST)
    f.save(tmp_path / "m")
    g = nflow.load(tmp_path / "m")
    np.testing.assert_array_equal(f.log_prob(banana), g.log_prob(banana))
    np.testing.assert_array_equal(f.sample(50, seed=2), g.sample(50, seed=2))
    p = pickle.loads(pickle.dumps(f))
    np.testing.assert_array_equal(f.log_prob(banana), p.log_prob(banana))
    assert p.summary["steps"] == 150 and len(p.history) == len(f.history)
    u = pickle.loads(pickle.dumps(small()))
    with pytest.raises(RuntimeError):
        u.log_prob(banana)
    np.testing.assert_array_equal(u.fit(banana, **FAST).log_prob(banana[:9]), small().fit(banana, **FAST).log_prob(banana[:9]))


def test_pandas_columns_and_context_by_name():
    pd = pytest.importorskip("pandas")
    r = np.random.default_rng(1)
    c = r.integers(0, 2, size=2000).astype(float)
    x = r.normal(size=(2000, 2)) + 3 * c[:, None]
    df = pd.DataFrame({"a": x[:, 0], "label": c, "b": x[:, 1]})
    f = small("maf").fit(df, context=["label"], steps=300, verbose=False)
    assert f.columns == ["a", "b"] and f.context_columns == ["label"]
    lp = f.log_prob(df)  # the context is found by name
    shuffled = df[["b", "label", "a"]]
    np.testing.assert_array_equal(lp, f.log_prob(shuffled))
    np.testing.assert_array_equal(lp, f.log_prob(x, context=c[:, None]))
    # conditional: samples follow their context
    s = f.sample(0, context=np.repeat([[0.0], [1.0]], 500, axis=0), seed=1)
    assert s.shape == (1000, 2)
    assert s[:500].mean() < 1.0 < 2.0 < s[500:].mean()
    with pytest.raises(ValueError, match="context"):
        f.log_prob(x)


def test_callback_stops_training_and_keeps_the_best_weights(banana):
    seen = []

    def cb(info):
        seen.append(info)
        return info["step"] >= 40

    f = small().fit(banana, steps=2000, eval_every=20, callback=cb, verbose=False)
    assert [i["step"] for i in seen] == [20, 40]
    assert f.summary["steps"] == 40
    # the weights kept are those of the better of the two evaluations that ran
    best = max(seen, key=lambda i: i["val_log_prob"])
    assert f.summary["best_step"] == best["step"]
    assert f.summary["best_val_log_prob"] == pytest.approx(best["val_log_prob"], abs=1e-12)


def test_a_callback_exception_propagates_after_training_stops(banana):
    def cb(info):
        raise ZeroDivisionError("from the callback")

    f = small()
    with pytest.raises(ZeroDivisionError, match="from the callback"):
        f.fit(banana, steps=2000, eval_every=10, callback=cb, verbose=False)
    assert f.summary["steps"] == 10 and np.all(np.isfinite(f.log_prob(banana[:5])))


def test_ctrl_c_stops_within_a_second_and_keeps_the_best_weights(banana):
    import os
    import signal

    # The interrupt is sent from inside training (the callback at step 100), not by a timer: a timer raced the
    # end of training on a loaded machine. No patience: the run cannot end before step 1_000_000 on its own.
    sent = {}

    def at_step_100(info):
        if info["step"] >= 100 and not sent:
            sent["at"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)
        return False

    f = nflow.Flow("nsf-ar", layers=5, hidden=256)
    with pytest.raises(KeyboardInterrupt):
        f.fit(banana, steps=1_000_000, eval_every=50, patience=0, callback=at_step_100, verbose=False)
    elapsed = time.monotonic() - sent["at"]
    assert elapsed < 1.0, elapsed
    assert 100 <= f.summary["steps"] < 1_000_000
    assert np.all(np.isfinite(f.log_prob(banana[:5])))


def test_ctrl_c_while_training_waits_for_the_next_evaluation_stops_it(banana):
    import _thread

    # Ctrl-C arriving while the main thread waits in Rust (between evaluations, not in the callback): sent by a
    # thread the callback starts at step 100, which cannot race the end of training (no patience, 10^6 steps).
    started = {}

    def at_step_100(info):
        if info["step"] >= 100 and not started:
            started["at"] = time.monotonic()
            threading.Thread(target=_thread.interrupt_main).start()
        return False

    f = nflow.Flow("nsf-ar", layers=5, hidden=256)
    with pytest.raises(KeyboardInterrupt):
        f.fit(banana, steps=1_000_000, eval_every=50, patience=0, callback=at_step_100, verbose=False)
    assert time.monotonic() - started["at"] < 1.0
    assert 100 <= f.summary["steps"] < 1_000_000


def test_the_gil_is_released_while_training_and_scoring(banana):
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.005)

    t = threading.Thread(target=count)
    f = small("nsf-ar")
    t.start()
    t0 = time.monotonic()
    f.fit(banana, steps=400, verbose=False)
    big = np.repeat(banana, 100, axis=0)
    f.log_prob(big)
    t1 = time.monotonic()
    stop.set()
    t.join()
    during = [x for x in ticks if t0 <= x <= t1]
    # the other thread ran all along (a held GIL would leave it a handful of ticks)
    assert len(during) > 0.5 * (t1 - t0) / 0.005 * 0.5, (len(during), t1 - t0)


def test_set_num_threads_keeps_results(banana):
    f = small().fit(banana, **FAST)
    before = f.log_prob(banana)
    n = nflow.get_num_threads()
    try:
        nflow.set_num_threads(1)
        assert nflow.get_num_threads() == 1
        np.testing.assert_array_equal(before, f.log_prob(banana))
    finally:
        nflow.set_num_threads(n)
    with pytest.raises(ValueError):
        nflow.set_num_threads(0)


def test_sample_weight_fits_the_weighted_likelihood():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 0.3, size=(600, 2))
    b = rng.normal(6.0, 0.3, size=(600, 2))
    X = np.vstack([a, b])
    w = np.r_[np.ones(600), np.zeros(600)]
    f = nflow.Flow("realnvp", layers=4, hidden=32, seed=1)
    f.fit(X, sample_weight=w, steps=800, verbose=False)
    near, far = f.log_prob(a[:50]).mean(), f.log_prob(b[:50]).mean()
    assert near > far + 5.0, (near, far)
    with pytest.raises(ValueError, match="sample_weight has 3 values"):
        nflow.Flow("realnvp", seed=1).fit(X, sample_weight=[1.0, 2.0, 3.0], steps=5, verbose=False)
    with pytest.raises(Exception, match="at least 0"):
        nflow.Flow("realnvp", seed=1).fit(X, sample_weight=-w, steps=5, verbose=False)


def test_percentile_ranks_rows_among_the_held_out_ones():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 2))
    f = nflow.Flow("realnvp", layers=4, hidden=32, seed=2).fit(X, steps=400, verbose=False)
    fresh = rng.normal(size=(2000, 2))
    far = rng.normal(size=(50, 2)) * 0.3 + np.array([6.0, -6.0])
    p_in, p_out = f.percentile(fresh), f.percentile(far)
    assert p_in.shape == (2000,) and p_in.min() >= 0 and p_in.max() <= 100
    # about 5% of rows like the training data fall below the 5th percentile; the far rows all do
    assert 0.02 < (p_in < 5).mean() < 0.09
    assert (p_out < 1).all()
    # the same numbers as `nflow score` uses: kept through pickling
    import pickle

    g = pickle.loads(pickle.dumps(f))
    np.testing.assert_array_equal(g.percentile(far), p_out)
    with pytest.raises(Exception, match="keeps no held-out scores"):
        nflow.Flow("realnvp", seed=1).fit(X, steps=20, validation=0.0, verbose=False).percentile(X[:3])


def test_auto_flow_and_budget_match_the_cli_defaults(banana):
    # Flow() is the flow `nflow train` chooses; fit without a budget uses the plateau schedule
    f = nflow.Flow(seed=3).fit(banana[:1000], patience=2, verbose=False)
    assert "SplineAR" in f.describe()
    s = f.summary
    assert s["lr_decays"] == 3 and s["stopped_early"]
    lrs = [h["lr"] for h in f.history]
    assert lrs[0] == 1e-3 and lrs[-1] == 1.25e-4
    assert s["config"]["eval_every"] == 50 and s["config"]["schedule"]["kind"] == "plateau"
    # an explicit budget keeps a constant rate
    g = nflow.Flow("maf", layers=2, hidden=16).fit(banana[:500], steps=30, verbose=False)
    assert g.summary["config"]["schedule"]["kind"] == "constant"
    with pytest.raises(ValueError, match="plateau"):
        nflow.Flow("maf").fit(banana[:500], steps=30, schedule="plateau", validation=0.0, verbose=False)


def test_student_t_base_keeps_far_rows_finite_and_sensible(banana):
    kw = dict(layers=3, hidden=32, seed=4)
    t = nflow.Flow("maf", base="student-t", **kw).fit(banana, steps=600, verbose=False)
    n = nflow.Flow("maf", **kw).fit(banana, steps=600, verbose=False)
    far = banana[:5] * 40.0
    lt, ln = t.log_prob(far), n.log_prob(far)
    assert np.isfinite(lt).all() and (lt > ln).all(), (lt, ln)
    # on rows like the training data the two are close
    assert abs(t.log_prob(banana).mean() - n.log_prob(banana).mean()) < 0.3


def test_column_supports_from_python():
    r = np.random.default_rng(5)
    a = r.normal(size=2000)
    share = 1 / (1 + np.exp(-(a + r.normal(size=2000))))
    count = r.poisson(3.0, size=2000).astype(float)
    X = np.stack([a, share, count], axis=1)
    f = nflow.Flow("maf", layers=2, hidden=16, seed=1).fit(
        X, steps=200, bounds={1: (0, 1)}, positive=[2], integer=[2], verbose=False
    )
    s = f.sample(2000, seed=2)
    assert ((s[:, 1] >= 0) & (s[:, 1] <= 1)).all()
    assert (s[:, 2] >= 0).all() and (s[:, 2] == np.floor(s[:, 2])).all()
    assert np.isfinite(f.log_prob(X[:50])).all()
    with pytest.raises(ValueError, match="outside the bounds"):
        f.log_prob(np.array([[0.0, 1.5, 1.0]]))
    with pytest.raises(ValueError, match="not a column"):
        nflow.Flow("maf").fit(X, steps=5, positive=["nope"], verbose=False)
    # saved with the model: the same log-densities after a round trip through bytes
    import pickle

    g = pickle.loads(pickle.dumps(f))
    np.testing.assert_array_equal(g.log_prob(X[:20]), f.log_prob(X[:20]))


@pytest.mark.parametrize(
    "kind,opts,ctx",
    [("realnvp", dict(batch_norm=True), False), ("maf-mog", {}, False), ("nsf-c", dict(actnorm=True), False), ("realnvp", {}, True)],
)
def test_the_score_runs_on_a_copy_with_the_same_weights_and_buffers(banana, kind, opts, ctx):
    # grad_log_prob works on a copy of the model (rebuilt from the architecture, every parameter and buffer
    # copied): its log p must be the model's own, batch-norm statistics, actnorm and a context embedding included
    c = np.sin(banana[:, :1]) if ctx else None
    f = nflow.Flow(kind, layers=3, hidden=16, **opts).fit(banana, c, steps=200, verbose=False)
    x, cx = banana[:50], (None if c is None else c[:50])
    lp, g = f._model.grad_log_prob(np.ascontiguousarray(x), cx)
    np.testing.assert_allclose(lp, f.log_prob(x, cx), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(g, f.grad_log_prob(x, cx))


def test_a_presets_base_keeps_its_options_or_refuses_them(banana):
    # the mixture's components reach the preset (they were dropped before: a 10**12-component base trained)
    f = nflow.Flow("maf", layers=1, hidden=8, base=nflow.layers.Mixture(components=3)).fit(banana, steps=3, verbose=False)
    assert '"components": 3' in json.dumps(f.architecture)
    with pytest.raises(ValueError, match="GB"):
        nflow.Flow("maf", base=nflow.layers.Mixture(components=10**12)).fit(banana, steps=3, verbose=False)
    with pytest.raises(ValueError, match="components and init only"):
        nflow.Flow("maf", base=nflow.layers.MadeMog(components=4, order="reversed"))


def test_saving_over_something_nflow_did_not_write_is_refused(banana, tmp_path):
    f = nflow.Flow("maf", layers=1, hidden=8).fit(banana, steps=3, verbose=False)
    (tmp_path / "file").write_text("mine")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "pytorch_model.bin").write_text("weights")
    for target in (tmp_path / "file", hf):
        with pytest.raises(ValueError, match="refusing to replace it"):
            f.save(str(target))
    assert (tmp_path / "file").read_text() == "mine"
    assert (hf / "pytorch_model.bin").read_text() == "weights"
