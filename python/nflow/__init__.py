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
from ._nflow import __version__, get_num_threads, presets, set_num_threads
from .flow import Flow, load

__all__ = ["Flow", "load", "layers", "vi", "presets", "set_num_threads", "get_num_threads", "__version__"]
