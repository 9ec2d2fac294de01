//! `nflow sample`: CSV and NPY files, the same rows for the same seed, standard output (streamed, stopping
//! with its reader), output formats and sizes it refuses, and the thread count it caps.

mod common;

use common::*;

#[test]
fn sample_writes_csv_and_the_same_seed_gives_the_same_rows() {
    let d = tmp("csv");
    let m = realnvp_model();
    let (s1, s2) = (d.join("s.csv"), d.join("s2.csv"));
    ok(&cmd(
        "sample --model {} -n 50 --seed 3 --out {}",
        &[&m, &s1],
    ));
    let body = std::fs::read_to_string(&s1).unwrap();
    assert_eq!(body.lines().count(), 51);
    assert_eq!(body.lines().next().unwrap(), "x,y");
    ok(&cmd(
        "sample --model {} -n 50 --seed 3 --out {}",
        &[&m, &s2],
    ));
    assert_eq!(
        body,
        std::fs::read_to_string(&s2).unwrap(),
        "same seed, same samples"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn sample_writes_npy() {
    let d = tmp("npy");
    let npy = d.join("s.npy");
    ok(&cmd(
        "sample --model {} -n 20 --out {}",
        &[&realnvp_model(), &npy],
    ));
    let back = nflow::data::read_npy(&npy).unwrap();
    assert_eq!((back.rows, back.cols), (20, 2));
    std::fs::remove_dir_all(&d).unwrap();
}

/// `sample` without `--out` writes CSV to standard output: a header, then `-n` rows, the same as `--out`
/// writes (and then nothing goes to standard output).
#[test]
fn sample_to_standard_output_is_what_out_writes() {
    let d = tmp("stdout");
    let m = moons_model();
    let out = ok(&cmd("sample --model {} -n 7 --seed 3", &[&m]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    assert_eq!(lines[0], "x,y");
    let f = d.join("s.csv");
    std::fs::write(&f, &out).unwrap();
    let back = ok(&cmd("sample --model {} -n 7 --seed 3 --out {}", &[&m, &f]));
    assert!(back.is_empty());
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        out,
        "stdout and --out differ"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// An absurd thread count is capped with a warning, and the run finishes.
#[test]
fn an_absurd_thread_count_is_capped() {
    let o = cmd("--threads 10000 sample --model {} -n 2", &[&moons_model()]);
    ok(&o);
    assert!(stderr(&o).contains("capped"));
}

/// `sample` without `--out` streams CSV to standard output: a reader that stops after a few lines (as
/// `| head` does) ends a run of a billion rows at once, with exit code 0.
#[test]
fn sample_streams_to_standard_output_and_stops_with_its_reader() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_nflow"))
        .args(args("sample --model {} -n 1000000000", &[&moons_model()]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "x,y");
    let row = lines.next().unwrap().unwrap();
    assert_eq!(
        row.split(',').filter(|v| v.parse::<f64>().is_ok()).count(),
        2,
        "{row}"
    );
    drop(lines);
    let t0 = std::time::Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        t0.elapsed().as_secs() < 20,
        "the run went on after its reader left"
    );
}

/// A sample too large for the disk is refused before any work, and leaves nothing behind.
#[test]
fn a_sample_too_large_is_refused_and_leaves_nothing() {
    let d = tmp("too-large");
    fails(
        &cmd(
            "sample --model {} -n 100000000000 --out {}",
            &[&moons_model(), &d.join("s.csv")],
        ),
        &["s.csv", "100000000000 rows need about", "GB free"],
    );
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "nothing left");
    std::fs::remove_dir_all(&d).unwrap();
}

/// An output name of no known format is refused (the Parquet test checks that the error lists the formats).
#[test]
fn an_unknown_output_format_is_named() {
    let d = tmp("format");
    fails(
        &cmd(
            "sample --model {} --out {}",
            &[&moons_model(), &d.join("s.xlsx")],
        ),
        &["unknown output format"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}
