//! `nflow vi` fits a built-in target by reverse KL, prints its diagnostics, and writes a model folder that
//! `sample`, `eval` and `info` use like any other; a bad target is a clear error.

mod common;

use common::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The model folder and the `--json` output of a fit of the `u1` target, made once.
fn u1() -> &'static (PathBuf, String) {
    static V: OnceLock<(PathBuf, String)> = OnceLock::new();
    V.get_or_init(|| {
        let m = tmp("u1").join("u1");
        let line = "vi --target u1 --steps 60 --hidden 16 --layers 2 --eval-samples 256 \
                    --json --quiet --out {}";
        let out = ok(&cmd(line, &[&m]));
        (m, out)
    })
}

#[test]
fn vi_prints_its_diagnostics() {
    let out = &u1().1;
    let j = json(out);
    for k in [
        "elbo",
        "elbo_se",
        "log_z",
        "log_z_se",
        "ess_fraction",
        "true_log_z",
        "kl",
    ] {
        assert!(j[k].is_number(), "{k} missing in {out}");
    }
    let kl = j["kl"].as_f64().unwrap();
    assert!(
        kl > 0.0
            && (kl - (j["true_log_z"].as_f64().unwrap() - j["elbo"].as_f64().unwrap())).abs()
                < 1e-12
    );
}

#[test]
fn vi_writes_an_ordinary_model() {
    let d = tmp("ordinary");
    let m = &u1().0;
    let s = d.join("s.csv");
    ok(&cmd("sample --model {} -n 20 --out {}", &[&m, &s]));
    ok(&cmd("eval --model {} --data {}", &[&m, &s]));
    let info = ok(&cmd("info --model {}", &[&m]));
    assert!(info.contains("target:u1"), "{info}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_vi_targets_and_flows_are_named() {
    let d = tmp("vi-bad");
    let o = cmd("vi --target banana --out {}", &[&d.join("x")]);
    fails(&o, &["target 'banana'", "u1", "gauss:D"]);
    let o = cmd("vi --target gauss:3 --flow glow --out {}", &[&d.join("y")]);
    fails(&o, &["--flow glow"]);
    let _ = std::fs::remove_dir_all(&d);
}
