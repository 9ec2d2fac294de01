"""FlowDensity follows scikit-learn's conventions: the estimator checks, clone, GridSearchCV."""

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from nflow.sklearn import FlowDensity  # noqa: E402

# Checks that cannot hold for a density estimator, each with its reason (the list is what the closing note
# reports; everything else must pass).
EXPECTED_FAILED = {}


@parametrize_with_checks(
    [FlowDensity(flow="realnvp", layers=2, hidden=8, steps=30, random_state=0)],
    expected_failed_checks=lambda est: EXPECTED_FAILED,
)
def test_estimator_checks(estimator, check):
    check(estimator)


def test_clone_and_params_round_trip():
    est = FlowDensity(flow="nsf-c", hidden=32, options={"bins": 6}, random_state=3)
    c = clone(est)
    assert c.get_params() == est.get_params()
    c.set_params(hidden=16)
    assert c.hidden == 16 and est.hidden == 32


def test_grid_search_chooses_by_held_out_likelihood():
    r = np.random.default_rng(0)
    x0 = r.choice([-2.0, 2.0], size=2000) + 0.3 * r.normal(size=2000)
    X = np.stack([x0, 0.5 * x0**2 + 0.2 * r.normal(size=2000)], axis=1)
    # both marginals are far from Gaussian: one coupling leaves one of them as it is, so the search must
    # prefer more layers, and a wider conditioner over a 2-unit one
    grid = GridSearchCV(
        FlowDensity(flow="nsf-c", steps=300, random_state=0),
        {"layers": [1, 4], "hidden": [2, 32]},
        cv=3,
    )
    grid.fit(X)
    scores = dict(zip(map(str, grid.cv_results_["params"]), grid.cv_results_["mean_test_score"]))
    assert grid.best_params_ == {"layers": 4, "hidden": 32}, scores
    assert grid.best_score_ == pytest.approx(grid.best_estimator_.score(X), abs=0.3)


def test_sample_follows_random_state():
    X = np.random.default_rng(1).normal(size=(500, 3))
    est = FlowDensity(layers=2, hidden=8, steps=50, random_state=0).fit(X)
    np.testing.assert_array_equal(est.sample(5, random_state=7), est.sample(5, random_state=7))
    assert est.sample(5).shape == (5, 3)
