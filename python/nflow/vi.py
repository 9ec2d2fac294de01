"""Variational inference: fit a flow q to a density known up to a constant, ``log p~(x)``, by minimising the
reverse KL ``KL(q || p) = E_q[log q(x) - log p~(x)] + log Z`` with reparameterised samples (Rezende & Mohamed
2015), and read the fit off importance weights.

    import nflow, nflow.vi
    def log_p(x):                                    # x: (n, d) float64
        lp = -0.5 * (x**2).sum(1) - 2.0 * np.cos(x[:, 0])
        grad = -x.copy(); grad[:, 0] += 2.0 * np.sin(x[:, 0])
        return lp, grad                             # (n,), (n, d)
    flow = nflow.Flow("nsf-c", layers=5).fit_vi(log_p, dim=2, steps=2000)
    flow.vi_diagnostics                             # ELBO ± SE, IS log Z ± SE, ESS on fresh samples
    x, w = nflow.vi.importance_sample(flow, log_p, 10_000, seed=0)   # self-normalised weights

Built-in targets by name: ``"u1"`` .. ``"u4"`` (the 2-D energies of Rezende & Mohamed; U2-U4 with a wide
Gaussian factor on z1 so they are normalisable), ``"gauss:D[:RHO[:SCALE]]"`` and ``"mix:D:K[:RADIUS[:SCALE]]"``
(K Gaussians on a circle).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from . import _nflow

TargetFn = Callable[..., Tuple[np.ndarray, np.ndarray]]


def checked_target(f: TargetFn, dim: int) -> TargetFn:
    """``f`` with its outputs made float64 arrays of the right shapes (a clear ValueError otherwise)."""

    def g(x: np.ndarray, *context: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        out = f(x, *context)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("the target must return (log_prob, grad): log p~(x) of shape (n,) and d log p~/dx of shape (n, d)")
        lp = np.ascontiguousarray(out[0], dtype=np.float64).reshape(-1)
        grad = np.ascontiguousarray(out[1], dtype=np.float64)
        n = x.shape[0]
        if lp.shape != (n,) or grad.shape != (n, dim):
            raise ValueError(
                f"the target returned log_prob of shape {np.shape(out[0])} and grad of shape {np.shape(out[1])} "
                f"for x of shape {x.shape}: expected ({n},) and ({n}, {dim})"
            )
        return lp, grad

    g.__name__ = getattr(f, "__name__", "target")
    return g


def target_log_prob(name: str, x: Any) -> Tuple[np.ndarray, np.ndarray]:
    """A built-in target's ``(log p~(x), d log p~ / dx)``."""
    (lp, g), _ = _nflow.target_log_prob(name, np.ascontiguousarray(x, dtype=np.float64))
    return lp, g


def target_log_z(name: str) -> Optional[float]:
    """A built-in target's ``log Z`` (analytic, or fine-grid quadrature for U1-U4)."""
    return _nflow.target_info(name)[1]


def _log_target(target: Union[str, TargetFn], x: np.ndarray, context: Optional[np.ndarray]) -> np.ndarray:
    if isinstance(target, str):
        return target_log_prob(target, x)[0]
    out = target(x) if context is None else target(x, context)
    return np.asarray(out[0], dtype=np.float64).reshape(-1)


def diagnostics(flow, target: Union[str, TargetFn], n: int = 4096, seed: int = 0, context: Any = None) -> Dict[str, Any]:
    """From ``n`` fresh samples of ``flow``: the ELBO and its standard error, the importance-sampling estimate of
    ``log Z`` and its standard error, the effective sample size and its fraction of ``n``."""
    x, lq = flow.sample_and_log_prob(n, context=context, seed=seed)
    c = None if context is None else np.asarray(context, dtype=np.float64)
    lp = _log_target(target, x, c)
    return json.loads(_nflow.diagnostics(lp.tolist(), lq.tolist()))


def importance_sample(
    flow, target: Union[str, TargetFn], n: int, seed: int = 0, context: Any = None
) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` samples of ``flow`` and their self-normalised importance weights towards the target (they sum to
    one): unbiased-in-the-limit estimates of target expectations are ``(w[:, None] * h(x)).sum(0)``."""
    x, lq = flow.sample_and_log_prob(n, context=context, seed=seed)
    c = None if context is None else np.asarray(context, dtype=np.float64)
    lw = _log_target(target, x, c) - lq
    lw = np.where(np.isfinite(lw), lw, -np.inf)
    w = np.exp(lw - lw.max())
    return x, w / w.sum()


def resample(weights: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` draws by systematic resampling of normalised ``weights`` (equal-weight samples)."""
    u = (np.random.default_rng(seed).random() + np.arange(n)) / n
    return np.minimum(np.searchsorted(np.cumsum(weights), u), len(weights) - 1)


__all__ = ["checked_target", "target_log_prob", "target_log_z", "diagnostics", "importance_sample", "resample"]
