"""Threads, callbacks, pool sizes and fork (issue 36, items 5-8): each scenario of ``stress_concurrency.py``
runs in a subprocess with a hard timeout, so a deadlock fails the test instead of freezing the run."""

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
SCRIPT = HERE / "stress_concurrency.py"

# (scenario, rounds); the timeouts are generous for a loaded 2-core machine, a hang never finishes
SCENARIOS = [
    ("threads_x_methods", 30),
    ("concurrent_fits", 3),
    ("nested_callbacks", 3),
    ("readers_vs_grad", 10),
    ("fit_while_reading", 20),
    ("interrupts", 2),
    pytest.param(
        "fork",
        2,
        marks=pytest.mark.skipif(sys.platform != "linux", reason="the fork start method is Linux's default"),
    ),
]
TIMEOUT = 240


def run_scenario(name: str, rounds: int, timeout: float = TIMEOUT) -> str:
    cmd = [sys.executable, str(SCRIPT), name, "--rounds", str(rounds), "--stacks-after", str(timeout - 20)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{name} hung (killed after {timeout}s)\n{out}\n{err[-8000:]}")
    assert p.returncode == 0, f"{name} failed (exit {p.returncode})\n{p.stdout}\n{p.stderr[-8000:]}"
    return p.stdout


@pytest.mark.parametrize("name,rounds", SCENARIOS)
def test_concurrency_scenario(name, rounds):
    out = run_scenario(name, rounds)
    assert "checks passed" in out
