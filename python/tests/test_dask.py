"""Scoring on a Dask cluster of worker processes gives the same numbers as one process."""

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import nflow  # noqa: E402
import nflow.dask  # noqa: E402


def test_dask_scores_equal_one_process(banana):
    f = nflow.Flow("nsf-c", layers=2, hidden=16).fit(pd.DataFrame(banana, columns=["u", "v"]), steps=100, verbose=False)
    r = np.random.default_rng(2)
    big = pd.DataFrame(np.repeat(banana, 4, axis=0) + r.normal(scale=0.01, size=(12000, 2)), columns=["u", "v"])
    big["id"] = np.arange(len(big))
    frame = dd.from_pandas(big, npartitions=6)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        with distributed.Client(cl) as client:
            assert len(client.scheduler_info()["workers"]) == 2
            got = nflow.dask.score_samples(f, frame).compute()
            # the work was spread over both worker processes
            owners = client.run(lambda: __import__("os").getpid())
            assert len(set(owners.values())) == 2
    np.testing.assert_array_equal(got.to_numpy(), f.log_prob(big[["u", "v"]]))
    assert got.index.equals(big.index)
