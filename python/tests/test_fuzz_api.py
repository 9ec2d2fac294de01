"""A bounded run of ``fuzz_api.py`` (random arguments, shapes and dtypes against every public method) in a
subprocess with a hard timeout: a crash (abort, segfault), a hang or an exception other than a clean one
(ValueError, TypeError, ...; never KeyError, IndexError or a Rust panic) fails it. Run it longer by hand:
``python python/tests/fuzz_api.py --minutes 10 --seed N``."""

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent / "fuzz_api.py"


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzz_the_python_api(seed):
    with tempfile.TemporaryDirectory() as d:
        trace = os.path.join(d, "last_call.txt")
        cmd = [sys.executable, str(SCRIPT), "--iterations", "300", "--seed", str(seed), "--trace", trace, "--call-timeout", "60"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            last = open(trace).read() if os.path.exists(trace) else "?"
            pytest.fail(f"the fuzz run hung; last call: {last}")
        last = open(trace).read() if os.path.exists(trace) else "?"
    assert p.returncode == 0, f"exit {p.returncode}; last call: {last}\n{p.stdout[-6000:]}\n{p.stderr[-4000:]}"
    assert "0 findings" in p.stdout
