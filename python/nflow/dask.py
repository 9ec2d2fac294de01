"""Scoring a large table on Dask: every partition scored by a flow that each worker process loads once.

    import dask.dataframe as dd, nflow.dask
    scores = nflow.dask.score_samples(flow, dd.read_parquet("big/*.parquet"))   # a dask Series
    scores.to_frame("log_prob").to_parquet("scores/")

The model travels to the workers as one task of its own (its bytes, once per worker) rather than inside
every partition's task.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .flow import Flow


def _score_partition(part, flow: Flow, columns: Optional[Sequence[str]]):
    import pandas as pd

    x = part[list(columns)] if columns is not None else part
    return pd.Series(flow.log_prob(x), index=part.index, name="log_prob", dtype="float64")


def score_samples(flow: Flow, frame, columns: Optional[Sequence[str]] = None):
    """``log p(x)`` of every row of a ``dask.dataframe.DataFrame`` (columns matched by name; ``columns``
    selects them explicitly), as a dask Series aligned with ``frame``'s partitions."""
    import dask

    flow._fitted()
    model = dask.delayed(flow, pure=True, traverse=False)
    meta = ("log_prob", np.float64)
    return frame.map_partitions(_score_partition, model, columns, meta=meta)
