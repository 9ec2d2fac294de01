//! What the `nflow` command's test files share: running the binary, a fresh folder per test, assertions on
//! exit codes and messages, and small trained models made once per test binary and only read after.

#![allow(dead_code)] // each test file uses part of this module

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Runs `nflow` with these arguments and waits for it.
pub fn nflow<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nflow"))
        .args(args)
        .output()
        .expect("run nflow")
}

/// Runs `nflow` with the arguments of `line` split at white space, each `{}` replaced by the next of `subs`
/// (paths and values passed whole, so spaces in a path are kept): `cmd("eval --model {}", &[&m])`.
pub fn cmd(line: &str, subs: &[&dyn AsRef<Path>]) -> Output {
    nflow(&args(line, subs))
}

/// The argument list `cmd` runs.
pub fn args(line: &str, subs: &[&dyn AsRef<Path>]) -> Vec<OsString> {
    let mut subs = subs.iter();
    let v: Vec<OsString> = line
        .split_whitespace()
        .map(|w| match w {
            "{}" => subs.next().expect("a value for each {}").as_ref().into(),
            w => w.into(),
        })
        .collect();
    assert!(subs.next().is_none(), "more values than {{}} in {line:?}");
    v
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh, empty folder for one test: `name` must be unique within its test binary.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nflow-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The command succeeded; its standard output.
pub fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "nflow failed: {err}");
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The command's standard error.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The command fails with exit code 1 and an error message containing every `needle`, without a panic.
pub fn fails(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "error message {err:?} does not mention {n:?}"
        );
    }
}

/// Parses a command's JSON output.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap()
}

/// Trains a small flow (2 layers of 16 units, 40 steps) on `data` into `out`, with `extra` options.
pub fn train_small(data: &str, out: &Path, extra: &[&str]) -> Output {
    let o = out.to_str().unwrap();
    let mut args = vec![
        "train",
        "--data",
        data,
        "--layers",
        "2",
        "--hidden",
        "16",
        "--steps",
        "40",
        "--batch-size",
        "64",
        "--quiet",
        "--out",
        o,
    ];
    args.extend_from_slice(extra);
    nflow(&args)
}

/// A model trained once per test binary, under a folder of its own, by `train_small(data, .., extra)`;
/// tests only read it (a test that changes a model copies it first with `copy_dir`).
fn trained_once(
    cell: &'static OnceLock<PathBuf>,
    name: &str,
    data: &str,
    extra: &[&str],
) -> &'static Path {
    cell.get_or_init(|| {
        let m = tmp(&format!("fixture-{name}")).join("model");
        ok(&train_small(data, &m, extra));
        m
    })
}

/// `train_small("toy:moons", .., &[])`: the default flow, on the default number of moons rows.
pub fn moons_model() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    trained_once(&M, "moons", "toy:moons", &[])
}

/// A realnvp trained on 2000 moons rows with 500 test rows (its log has validation figures per step).
pub fn realnvp_model() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    trained_once(
        &M,
        "realnvp",
        "toy:moons:2000",
        &["--test", "toy:moons:500", "--flow", "realnvp"],
    )
}

/// Copies the files of a model folder.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Writes a small CSV of three columns a, b, c (6 rows).
pub fn write_three_columns(path: &Path) {
    std::fs::write(path, "a,b,c\n1,2,3\n2,1,3\n3,3,1\n0,1,2\n1,0,2\n2,2,0\n").unwrap();
}

/// A CSV of 8x8 grey "images" (two kinds of blob), with the pixel column names image data carries.
pub fn write_images(path: &Path, n: usize, seed: u64) {
    let mut s = String::new();
    let cols: Vec<String> = (0..64)
        .map(|k| format!("c0_y{}_x{}", k / 8, k % 8))
        .collect();
    s.push_str(&cols.join(","));
    s.push('\n');
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    for i in 0..n {
        let row: Vec<String> = (0..64)
            .map(|k| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = (state >> 60) as usize;
                let (y, x) = (k / 8, k % 8);
                let on = if i % 2 == 0 { y < 4 } else { x >= 4 };
                ((if on { 200 } else { 20 }) + noise * 3).to_string()
            })
            .collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Every inline PNG of a report page, decoded.
pub fn inline_images(page: &str) -> Vec<image::DynamicImage> {
    use base64::Engine as _;
    page.split("src=\"data:image/png;base64,")
        .skip(1)
        .map(|b64| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.split('"').next().unwrap())
                .unwrap();
            image::load_from_memory(&bytes).unwrap()
        })
        .collect()
}

/// The report page has a `<section id="..">` for each of `ids`.
pub fn has_sections(page: &str, ids: &[&str]) {
    for id in ids {
        assert!(
            page.contains(&format!("<section id=\"{id}\">")),
            "section {id} missing"
        );
    }
}

/// The file begins with the PNG signature.
pub fn is_png(path: &Path) {
    assert_eq!(&std::fs::read(path).unwrap()[..4], b"\x89PNG", "{path:?}");
}
