//! Data going into `nflow`: bad CSV files named by line and column, columns matched by name, standard input,
//! Parquet and Arrow, per-column supports (`--bounds`, `--positive`, `--integer`) and per-row weights.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A missing file, a cell that is not a number, a NaN and a ragged row: each named by file, line and column.
#[test]
fn bad_csv_cells_are_named_by_file_line_and_column() {
    let d = tmp("bad-csv");
    let model = d.join("m");
    fails(
        &train_small(s(&d.join("missing.csv")), &model, &[]),
        &["missing.csv"],
    );
    let bad = d.join("bad.csv");
    std::fs::write(&bad, "x,y\n1,2\n3,abc\n").unwrap();
    fails(
        &train_small(s(&bad), &model, &[]),
        &["bad.csv", "line 3", "'y'", "abc"],
    );
    std::fs::write(&bad, "x,y\n1,2\nNaN,4\n5,6\n").unwrap();
    fails(
        &train_small(s(&bad), &model, &[]),
        &["bad.csv", "line 3", "'x'", "NaN"],
    );
    std::fs::write(&bad, "x,y\n1,2\n3\n").unwrap();
    fails(
        &train_small(s(&bad), &model, &[]),
        &["line 3", "expected 2 fields"],
    );
    assert!(!model.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn empty_csv_files_are_refused() {
    let d = tmp("empty-csv");
    let model = d.join("m");
    let bad = d.join("bad.csv");
    std::fs::write(&bad, "x,y\n").unwrap();
    fails(
        &train_small(s(&bad), &model, &[]),
        &["bad.csv", "no data rows"],
    );
    std::fs::write(&bad, "").unwrap();
    fails(&train_small(s(&bad), &model, &[]), &["bad.csv", "empty"]);
    assert!(!model.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

/// `eval` on a CSV file with an extra label column: columns are matched by name.
#[test]
fn eval_matches_columns_by_name() {
    let d = tmp("by-name");
    let csv = d.join("data.csv");
    let mut text = String::from("label,x,y\n");
    for i in 0..50 {
        let t = i as f64 * 0.1;
        text.push_str(&format!("{},{},{}\n", i % 2, t.sin(), t.cos() * 0.5));
    }
    std::fs::write(&csv, text).unwrap();
    ok(&cmd("eval --model {} --data {}", &[&realnvp_model(), &csv]));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn data_from_standard_input() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let out = moons_model();
    let run = |input: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nflow"))
            .args(args("eval --model {} --data - --json", &[&out]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let v = json(&ok(&run("x,y\n0.5,0.2\n1.0,-0.3\n")));
    assert_eq!(v["n"], 2);
    assert_eq!(v["data"], "standard input");
    fails(&run("x,y\n0.5,zz\n"), &["standard input line 2", "'zz'"]);
}

/// Sample a table to Parquet, train on it, score it per row to Parquet and Arrow, compare with the CSV way.
#[test]
fn parquet_and_arrow_in_and_out() {
    let d = tmp("parquet");
    let (csv, pq, m) = (d.join("d.csv"), d.join("s.parquet"), d.join("m"));
    ok(&train_small("toy:moons:800", &m, &["--flow", "maf"]));
    ok(&cmd(
        "sample --model {} -n 300 --seed 4 --out {}",
        &[&m, &pq],
    ));
    ok(&cmd(
        "sample --model {} -n 300 --seed 4 --out {}",
        &[&m, &csv],
    ));
    assert_eq!(&std::fs::read(&pq).unwrap()[..4], b"PAR1");
    let per = |data: &Path, out: &Path| {
        let line = "eval --model {} --data {} --per-sample {} --json";
        ok(&cmd(line, &[&m, &data, &out]))
    };
    let a = per(&pq, &d.join("lp.arrow"));
    let b = per(&csv, &d.join("lp.csv"));
    let mean = |s: &str| json(s)["mean_log_prob"].as_f64().unwrap();
    // CSV keeps 17 significant digits: the same rows either way
    assert!((mean(&a) - mean(&b)).abs() < 1e-9, "{a} vs {b}");
    assert_eq!(&std::fs::read(d.join("lp.arrow")).unwrap()[..6], b"ARROW1");
    ok(&train_small(s(&pq), &d.join("m2"), &["--flow", "maf"]));
    fails(
        &cmd("sample --model {} -n 3 --out {}", &[&m, &d.join("s.xlsx")]),
        &["s.xlsx", ".parquet"],
    );
}

/// 400 rows: a real column, a share in (0, 1), a count from 0 and a rating from 1 to 5.
fn support_data() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let mut text = String::from("a,share,count,rating\n");
        let mut r = 7u64;
        let mut u = || {
            r = r
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        for _ in 0..400 {
            let a = u() * 4.0 - 2.0;
            let (share, count) = (u().powi(2), (u() * 6.0).floor());
            text += &format!("{a},{share},{count},{}\n", 1.0 + (u() * 5.0).floor());
        }
        let data = tmp("support-data").join("d.csv");
        std::fs::write(&data, &text).unwrap();
        data
    })
}

/// A maf trained on `support_data` with a bound, two integer columns and a positive one.
fn supported_model() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let m = tmp("supported").join("m");
        ok(&cmd(
            "train --data {} --flow maf --steps 30 --bounds share=0:1,rating=1:5 \
             --integer count,rating --positive count --out {}",
            &[&support_data(), &m],
        ));
        m
    })
}

/// Without `--integer` the integer columns get a hint.
#[test]
fn integer_columns_get_a_hint() {
    let d = tmp("hint");
    let o = cmd(
        "train --data {} --flow maf --steps 30 --out {}",
        &[&support_data(), &d.join("m")],
    );
    ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("hint") && err.contains("--integer count,rating"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn column_supports_are_kept_and_shown() {
    let info = ok(&cmd("info --model {}", &[&supported_model()]));
    assert!(
        info.contains("support        share: in [0, 1]")
            && info.contains("count: integer (dequantised), at least 0")
            && info.contains("rating: integer (dequantised), in [1, 5]"),
        "{info}"
    );
}

#[test]
fn samples_stay_inside_the_column_supports() {
    let d = tmp("support-samples");
    let s = d.join("s.csv");
    ok(&cmd(
        "sample --model {} --n 500 --out {}",
        &[&supported_model(), &s],
    ));
    let st = std::fs::read_to_string(&s).unwrap();
    for line in st.lines().skip(1) {
        let v: Vec<f64> = line.split(',').map(|x| x.parse().unwrap()).collect();
        assert!((0.0..=1.0).contains(&v[1]), "{line}");
        assert!(v[2] >= 0.0 && v[2].fract() == 0.0, "{line}");
        assert!((1.0..=5.0).contains(&v[3]) && v[3].fract() == 0.0, "{line}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// The training data evaluates; a value outside the support is named by row and column.
#[test]
fn eval_names_a_value_outside_the_support() {
    let d = tmp("support-eval");
    let m = supported_model();
    ok(&cmd("eval --model {} --data {}", &[&m, &support_data()]));
    let bad = d.join("bad.csv");
    std::fs::write(&bad, "a,share,count,rating\n0,0.5,1,1\n0,1.5,1,1\n").unwrap();
    fails(
        &cmd("eval --model {} --data {}", &[&m, &bad]),
        &["row 1", "'share'", "[0, 1]"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn training_data_outside_the_bounds_is_named() {
    let d = tmp("support-train");
    fails(
        &cmd(
            "train --data {} --bounds share=0:0.5 --steps 5 --out {}",
            &[&support_data(), &d.join("x")],
        ),
        &["'share'", "outside the bounds"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_support_options_are_named() {
    let d = tmp("support-options");
    for (flag, val, needle) in [
        ("--bounds", "nope=0:1", "no such column"),
        ("--bounds", "share=1", "COLUMN=LOW:HIGH"),
        ("--bounds", "share=1:0", "low < high"),
        ("--positive", "a", "positive"),
        ("--integer", "share", "not an integer"),
    ] {
        fails(
            &cmd(
                "train --data {} {} {} --steps 5 --out {}",
                &[&support_data(), &flag, &val, &d.join("y")],
            ),
            &[needle],
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--weights COL` fits the weighted likelihood: rows of weight 0 (a cluster far from the others) get a low
/// density, the column is not part of the model, and `info` says the fit was weighted.
#[test]
fn weights_per_row_shape_the_fit() {
    let d = tmp("weights");
    let mut text = String::from("x,y,w\n");
    let mut r = 1u64;
    let mut u = || {
        r = r
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (r >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    for i in 0..1200 {
        let (cx, w) = if i % 2 == 0 { (0.0, 1) } else { (6.0, 0) };
        text += &format!("{},{},{w}\n", cx + u(), cx + u());
    }
    let (data, m) = (d.join("d.csv"), d.join("m"));
    std::fs::write(&data, &text).unwrap();
    let line = "train --data {} --weights w --layers 4 --hidden 32 --steps 800 --quiet --out {}";
    ok(&cmd(line, &[&data, &m]));
    let info = ok(&cmd("info --model {}", &[&m]));
    assert!(info.contains("weighted mean log-likelihood"), "{info}");
    let (near, far) = (d.join("near.csv"), d.join("far.csv"));
    std::fs::write(&near, "x,y\n0.1,-0.2\n-0.3,0.2\n0.2,0.3\n").unwrap();
    std::fs::write(&far, "x,y\n6.1,5.8\n5.7,6.2\n6.2,6.3\n").unwrap();
    let lp = |f: &Path| -> f64 {
        let o = ok(&cmd("eval --model {} --data {} --json", &[&m, &f]));
        json(&o)["mean_log_prob"].as_f64().unwrap()
    };
    let (a, b) = (lp(&near), lp(&far));
    assert!(a > b + 5.0, "weighted-in rows {a}, weighted-out rows {b}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_negative_weight_is_named_by_row() {
    let d = tmp("negative-weight");
    let data = d.join("d.csv");
    std::fs::write(&data, "x,y,w\n1,2,1\n2,1,-1\n3,3,1\n1,1,1\n2,2,1\n3,1,1\n").unwrap();
    fails(
        &cmd(
            "train --data {} --weights w --steps 10 --out {}",
            &[&data, &d.join("m")],
        ),
        &["weight of row 1", "at least 0"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}
