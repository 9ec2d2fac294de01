"""The Python package and the CLI read and write the same model folders, with the same numbers."""

import json
import subprocess

import numpy as np

import nflow


def test_python_model_evaluates_to_the_same_bits_in_the_cli(nflow_bin, banana, tmp_path):
    f = nflow.Flow("nsf-c", layers=2, hidden=16).fit(banana, steps=100, verbose=False)
    f.save(tmp_path / "m")
    np.savetxt(tmp_path / "x.csv", banana[:300], delimiter=",", header="x0,x1", comments="", fmt="%.17g")
    subprocess.run(
        [nflow_bin, "eval", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "x.csv"),
         "--per-sample", str(tmp_path / "lp.csv")],
        check=True, capture_output=True,
    )
    cli = np.loadtxt(tmp_path / "lp.csv", delimiter=",", skiprows=1, ndmin=2)[:, -1]
    np.testing.assert_array_equal(cli, f.log_prob(banana[:300]))


def test_cli_and_python_train_the_same_model_from_the_same_options(nflow_bin, banana, tmp_path):
    csv = tmp_path / "train.csv"
    np.savetxt(csv, banana, delimiter=",", header="a,b", comments="", fmt="%.17g")
    subprocess.run(
        [nflow_bin, "train", "--data", str(csv), "--flow", "maf", "--layers", "3", "--hidden", "32",
         "--steps", "200", "--seed", "4", "--out", str(tmp_path / "cli"), "--quiet"],
        check=True, capture_output=True,
    )
    cli = nflow.load(tmp_path / "cli")
    x = np.loadtxt(csv, delimiter=",", skiprows=1)
    py = nflow.Flow("maf", layers=3, hidden=32, seed=4).fit(x, steps=200, verbose=False)
    np.testing.assert_array_equal(cli.log_prob(x), py.log_prob(x))
    assert cli.architecture == py.architecture
    assert cli.summary["steps"] == py.summary["steps"] == 200
