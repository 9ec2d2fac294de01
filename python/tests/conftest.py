import os
import pathlib
import shutil

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def nflow_bin():
    """The CLI built from this checkout (`cargo build --release`), for the interoperability tests."""
    cand = os.environ.get("NFLOW_BIN") or str(ROOT / "target" / "release" / "nflow")
    if not os.path.exists(cand):
        cand = shutil.which("nflow")
    if not cand:
        pytest.skip("the nflow CLI is not built (cargo build --release) and NFLOW_BIN is not set")
    return cand


@pytest.fixture(scope="session")
def banana():
    """2-D data with a curved dependence and scales far from 1 (so a missing standardisation shows)."""
    r = np.random.default_rng(0)
    x0 = r.normal(size=3000)
    x1 = 0.5 * x0**2 + 0.3 * r.normal(size=3000)
    return np.stack([5.0 * x0 + 3.0, 0.2 * x1 - 1.0], axis=1)
