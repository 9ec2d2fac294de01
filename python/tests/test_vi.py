"""Variational inference from Python: Flow.fit_vi against built-in and Python targets, diagnostics, weights."""

import numpy as np
import pytest

import nflow
import nflow.vi


def gauss(mean, scale):
    """A diagonal Gaussian's unnormalised log-density (dropping its log Z) and its gradient."""
    mean, scale = np.asarray(mean, float), np.asarray(scale, float)

    def log_p(x):
        u = (x - mean) / scale
        return -0.5 * (u**2).sum(1), -u / scale

    log_z = 0.5 * len(mean) * np.log(2 * np.pi) + np.log(scale).sum()
    return log_p, log_z


def test_builtin_targets_by_name():
    assert nflow.vi.target_log_z("mix:2:8") == 0.0 and nflow.vi.target_log_z("gauss:3") == 0.0
    lp, g = nflow.vi.target_log_prob("mix:2:4:3:0.5", np.array([[3.0, 0.0], [0.0, 0.0]]))
    # at a component's mean the density is (almost only) that component's peak over 4
    assert lp[0] == pytest.approx(np.log(0.25 / (2 * np.pi * 0.25)), abs=1e-6)
    assert g.shape == (2, 2) and np.allclose(g[1], 0.0)


def test_fit_vi_on_a_builtin_energy_gets_close_to_the_truth():
    f = nflow.Flow("nsf-c", layers=4, hidden=32).fit_vi("u1", steps=500, lr=2e-3, schedule="cosine", verbose=False)
    d = f.vi_diagnostics
    assert d["true_log_z"] == pytest.approx(nflow.vi.target_log_z("u1"))
    assert 0 <= d["kl"] < 0.05, d
    assert abs(d["log_z"] - d["true_log_z"]) < 4 * d["log_z_se"] + 0.01
    # samples and densities of a VI model work like any model's
    x, lq = f.sample_and_log_prob(500, seed=1)
    np.testing.assert_allclose(lq, f.log_prob(x), atol=1e-9)


def test_a_python_target_recovers_log_z_within_three_standard_errors():
    log_p, log_z = gauss([1.0, -2.0, 0.5], [0.5, 2.0, 1.0])
    f = nflow.Flow("realnvp", layers=4, hidden=32).fit_vi(log_p, dim=3, steps=600, lr=2e-3, verbose=False)
    d = f.vi_diagnostics
    assert d["true_log_z"] is None and d["kl"] is None
    assert abs(d["log_z"] - log_z) < 3 * d["log_z_se"] + 1e-3, (d, log_z)
    assert d["ess_fraction"] > 0.8
    again = nflow.vi.diagnostics(f, log_p, n=4096, seed=5)
    assert abs(again["log_z"] - log_z) < 3 * again["log_z_se"] + 1e-3
    x = f.sample(20000, seed=2)
    np.testing.assert_allclose(x.mean(0), [1.0, -2.0, 0.5], atol=0.1)


def test_python_and_builtin_targets_train_alike():
    # gauss:2:0.5 is the equicorrelated Gaussian; the same density written in numpy
    cov = np.array([[1.0, 0.5], [0.5, 1.0]])
    prec = np.linalg.inv(cov)

    def log_p(x):
        return -0.5 * np.einsum("ij,jk,ik->i", x, prec, x), -x @ prec

    lp, g = nflow.vi.target_log_prob("gauss:2:0.5", np.array([[0.3, -1.2], [2.0, 0.1]]))
    ref_lp, ref_g = log_p(np.array([[0.3, -1.2], [2.0, 0.1]]))
    np.testing.assert_allclose(g, ref_g, rtol=1e-12)
    np.testing.assert_allclose(lp - lp[0], ref_lp - ref_lp[0], rtol=1e-12)
    a = nflow.Flow("realnvp", layers=2, hidden=16).fit_vi("gauss:2:0.5", steps=200, verbose=False)
    b = nflow.Flow("realnvp", layers=2, hidden=16).fit_vi(log_p, dim=2, steps=200, verbose=False)
    assert a.vi_diagnostics["elbo"] - lp[0] + ref_lp[0] == pytest.approx(b.vi_diagnostics["elbo"], abs=1e-3)


def test_amortised_vi_follows_the_context():
    def log_p(x, c):
        u = x - c  # mean c, unit scale
        return -0.5 * (u**2).sum(1), -u

    contexts = np.random.default_rng(0).uniform(-3, 3, size=(2000, 2))
    f = nflow.Flow("maf", layers=3, hidden=32).fit_vi(log_p, dim=2, contexts=contexts, steps=800, lr=2e-3, verbose=False)
    c = np.repeat([[-2.0, 1.0], [2.5, -0.5]], 2000, axis=0)
    s = f.sample(0, context=c, seed=3)
    np.testing.assert_allclose(s[:2000].mean(0), [-2.0, 1.0], atol=0.15)
    np.testing.assert_allclose(s[2000:].mean(0), [2.5, -0.5], atol=0.15)


def test_target_errors_reach_python():
    def broken(x):
        raise ZeroDivisionError("inside the target")

    with pytest.raises(ZeroDivisionError, match="inside the target"):
        nflow.Flow("realnvp", layers=2, hidden=8).fit_vi(broken, dim=2, steps=50, verbose=False)

    def wrong_shape(x):
        return np.zeros(len(x)), np.zeros((len(x), 3))

    with pytest.raises(ValueError, match=r"expected \(256,\) and \(256, 2\)"):
        nflow.Flow("realnvp", layers=2, hidden=8).fit_vi(wrong_shape, dim=2, steps=50, verbose=False)
    with pytest.raises(ValueError, match="needs dim"):
        nflow.Flow("realnvp").fit_vi(lambda x: (x[:, 0], x), steps=5, verbose=False)
    with pytest.raises(ValueError, match="unknown"):
        nflow.Flow("realnvp").fit_vi("u9", steps=5, verbose=False)


def test_callback_stops_vi_and_importance_weights_are_normalised():
    seen = []

    def cb(info):
        seen.append(info)
        return True

    log_p, _ = gauss([0.0, 0.0], [1.0, 3.0])
    f = nflow.Flow("realnvp", layers=2, hidden=8).fit_vi(log_p, dim=2, steps=5000, eval_every=25, callback=cb, verbose=False)
    assert [i["step"] for i in seen] == [25] and "elbo" in seen[0]
    assert f.summary["steps"] == 25
    x, w = nflow.vi.importance_sample(f, log_p, 5000, seed=1)
    assert x.shape == (5000, 2) and w.shape == (5000,)
    assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
    idx = nflow.vi.resample(w, 5000, seed=2)
    assert idx.min() >= 0 and idx.max() < 5000
    # resampled draws follow the target better than the flow's own samples (scale 3 on the second axis)
    assert abs(x[idx, 1].std() - 3.0) <= abs(x[:, 1].std() - 3.0) + 0.05
