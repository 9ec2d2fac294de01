"""``FlowDensity``: a normalizing flow as a scikit-learn density estimator (like ``KernelDensity`` /
``GaussianMixture``): ``fit``, ``score_samples``, ``score``, ``sample``; clonable, usable in ``GridSearchCV``
(the score is the held-out mean log-likelihood) and in pipelines."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .flow import Flow


_COUPLING_PRESETS = ("nice", "realnvp", "nsf-c", "glow", "realnvp-multiscale")


class FlowDensity(DensityMixin, BaseEstimator):
    """Density estimation with a normalizing flow.

    Parameters mirror ``nflow train``: ``flow`` (a preset name; ``"auto"``, the default, chooses from the data's
    shape as ``nflow train`` does), ``layers``, ``hidden``, ``depth`` (None: the preset's); training ``steps`` (or
    ``epochs``; neither: the budget chosen for the rows, with the plateau schedule), ``batch_size``, ``lr``,
    ``validation``, ``patience``; ``options``: any other preset option (``{"bins": 16, "base": "mixture"}``);
    ``random_state`` seeds the weights and training.
    """

    def __init__(
        self,
        flow: str = "auto",
        layers: Optional[int] = None,
        hidden: Optional[int] = None,
        depth: Optional[int] = None,
        steps: Optional[int] = None,
        epochs: Optional[int] = None,
        batch_size: int = 256,
        lr: float = 1e-3,
        validation: float = 0.1,
        patience: int = 10,
        options: Optional[Dict[str, Any]] = None,
        random_state: Optional[int] = None,
        verbose: bool = False,
    ) -> None:
        self.flow = flow
        self.layers = layers
        self.hidden = hidden
        self.depth = depth
        self.steps = steps
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation = validation
        self.patience = patience
        self.options = options
        self.random_state = random_state
        self.verbose = verbose

    def _seed(self) -> int:
        if self.random_state is None or isinstance(self.random_state, (int, np.integer)):
            return 0 if self.random_state is None else int(self.random_state)
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def fit(self, X: Any, y: Any = None) -> "FlowDensity":
        """Fit the flow to the rows of ``X`` (``y`` is ignored)."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        if X.shape[1] == 1 and self.flow in _COUPLING_PRESETS:
            raise ValueError(
                f"FlowDensity(flow={self.flow!r}) needs 2 or more features, got n_features = 1: couplings split "
                "the features in two; use flow='maf' or flow='nsf-ar' for one-dimensional data"
            )
        seed = self._seed()
        flow = Flow(
            self.flow,
            layers=self.layers,
            hidden=self.hidden,
            depth=self.depth,
            seed=seed,
            **(self.options or {}),
        )
        # a validation split needs rows to hold out; tiny data sets train on everything
        validation = self.validation if X.shape[0] * self.validation >= 1 else 0.0
        flow.fit(
            X,
            steps=self.steps,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            validation=validation,
            patience=self.patience,
            verbose=self.verbose,
        )
        self.flow_ = flow
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of each row (nats, in the data's units)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self.flow_.log_prob(X)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood of the rows (higher is better: what ``GridSearchCV`` maximises)."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples: int = 1, random_state: Any = None) -> np.ndarray:
        """``n_samples`` draws, float64 ``(n_samples, n_features)``."""
        check_is_fitted(self)
        seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
        return self.flow_.sample(n_samples, seed=seed)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags
