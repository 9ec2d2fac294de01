"""nflow: normalizing flows in Rust, from Python.

    import nflow
    flow = nflow.Flow("nsf-ar", layers=5, hidden=128).fit(X_train, steps=2000)
    flow.log_prob(X_test)            # nats, in the data's units
    flow.sample(1000, seed=0)
    flow.save("model")               # the same folder `nflow train` writes; nflow.load("model")

Modules: ``nflow.layers`` (hand-composed flows), ``nflow.vi`` (variational inference: ``Flow.fit_vi``,
diagnostics, importance weights), ``nflow.sklearn`` (``FlowDensity`` estimator), ``nflow.dask`` (scoring on a
Dask cluster).
"""

from . import layers, vi
from ._nflow import __version__, get_num_threads, presets
from .flow import Flow, _uint, load


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for training, scoring and sampling from now on (default: all cores; at most 4 x the
    cores). Each operation running at the same time (fits and calls from other threads or from a fit's
    callback) gets a pool of ``n`` threads of its own."""
    from . import _nflow

    _nflow.set_num_threads(_uint(n, "set_num_threads: n", 1))

__all__ = ["Flow", "load", "layers", "vi", "presets", "set_num_threads", "get_num_threads", "__version__"]
