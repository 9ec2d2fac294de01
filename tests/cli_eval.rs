//! `nflow eval` (its figures, per-row output and robust summaries) and `nflow score` (rows ranked among the
//! held-out rows kept with the model).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `eval --json` has the summary figures, and `--per-sample` writes one log-density per row with that mean.
#[test]
fn eval_json_and_per_sample_agree() {
    let d = tmp("eval-json");
    let per = d.join("lp.csv");
    let out = ok(&cmd(
        "eval --model {} --data toy:moons:300 --json --per-sample {}",
        &[&realnvp_model(), &per],
    ));
    let j = json(&out);
    for k in ["n", "dim", "mean_log_prob", "stderr", "nll"] {
        assert!(!j[k].is_null(), "eval --json lacks {k}: {out}");
    }
    assert_eq!(j["n"], 300);
    assert_eq!(j["dim"], 2);
    let mean = j["mean_log_prob"].as_f64().unwrap();
    assert!((j["nll"].as_f64().unwrap() + mean).abs() < 1e-12);
    let lines: Vec<String> = std::fs::read_to_string(&per)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 301);
    let mean_file: f64 = lines[1..]
        .iter()
        .map(|l| l.parse::<f64>().unwrap())
        .sum::<f64>()
        / 300.0;
    assert!((mean_file - mean).abs() < 1e-9);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn eval_refuses_data_of_another_width() {
    let d = tmp("width");
    let three = d.join("three.csv");
    std::fs::write(&three, "p,q,r\n1,2,3\n4,5,6\n").unwrap();
    fails(
        &cmd("eval --model {} --data {}", &[&moons_model(), &three]),
        &["three.csv", "3 columns", "expects 2"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// 200 ordinary rows and one far outside the training data, at row 57.
fn rows_with_one_far(d: &Path) -> PathBuf {
    let mut csv = String::from("x,y\n");
    for i in 0..200 {
        let t = i as f64 / 200.0 * std::f64::consts::PI;
        if i == 57 {
            csv.push_str("400.0,-300.0\n");
        }
        csv.push_str(&format!("{},{}\n", t.cos(), t.sin()));
    }
    let data = d.join("rows.csv");
    std::fs::write(&data, csv).unwrap();
    data
}

#[test]
fn eval_json_has_robust_figures_and_the_worst_rows() {
    let d = tmp("robust-json");
    let data = rows_with_one_far(&d);
    let o = cmd("eval --model {} --data {} --json", &[&moons_model(), &data]);
    let v = json(&ok(&o));
    assert_eq!(v["n"], 201);
    assert!(v["far_tail_rows"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["worst_rows"][0]["row"], 57, "{v}");
    let (mean, median) = (
        v["mean_log_prob"].as_f64().unwrap(),
        v["median_log_prob"].as_f64().unwrap(),
    );
    assert!(
        median - mean > 5.0,
        "one far row must pull the mean, not the median: {v}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn eval_text_names_the_median_and_the_far_rows() {
    let d = tmp("robust-text");
    let data = rows_with_one_far(&d);
    let text = ok(&cmd("eval --model {} --data {}", &[&moons_model(), &data]));
    assert!(
        text.contains("median")
            && text.contains("far in the lower tail")
            && text.contains("row 57"),
        "{text}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A flow of 4 layers of 32 units trained 600 steps on the moons: the model `score` ranks rows against.
fn score_model() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let m = tmp("score-model").join("m");
        let line = "train --data toy:moons --layers 4 --hidden 32 --steps 600 --quiet --out {}";
        ok(&cmd(line, &[&m]));
        m
    })
}

/// The rows of a CSV file, as numbers.
type Rows = Vec<Vec<f64>>;

/// The rows of `score --flag-fpr 0.05` on 2000 fresh moons rows (inliers) and on 40 outliers with an id
/// column, on a ring of radius 3.5 around the moons (whose points lie within about 2 of (0.5, 0.25)).
fn scored() -> &'static (Rows, Rows) {
    static S: OnceLock<(Rows, Rows)> = OnceLock::new();
    S.get_or_init(|| {
        let d = tmp("scored");
        let mut text = String::from("x,y,id\n");
        for k in 0..40 {
            let a = k as f64 * std::f64::consts::TAU / 40.0;
            text += &format!("{},{},{k}\n", 0.5 + 3.5 * a.cos(), 0.25 + 3.5 * a.sin());
        }
        let far = d.join("far.csv");
        std::fs::write(&far, text).unwrap();
        let score = |data: &dyn AsRef<Path>, out: &Path| -> Rows {
            let line = "score --model {} --data {} --toy-n 2000 --flag-fpr 0.05 --out {}";
            ok(&cmd(line, &[&score_model(), data, &out]));
            let t = nflow::data::read_csv(out).unwrap();
            (0..t.rows).map(|r| t.row(r).to_vec()).collect()
        };
        let inl = score(&"toy:moons", &d.join("in.csv"));
        let outl = score(&far, &d.join("out.csv"));
        std::fs::remove_dir_all(&d).unwrap();
        (inl, outl)
    })
}

/// The data's columns are copied beside the scores: log_prob, percentile, flagged, then x, y (and id).
#[test]
fn score_copies_the_data_columns_beside_the_scores() {
    let (inl, outl) = scored();
    assert_eq!(inl[0].len(), 5, "log_prob, percentile, flagged, x, y");
    assert_eq!(outl[0].len(), 6, "and the id column");
    assert_eq!(outl[7][5], 7.0);
}

/// Fresh rows like the training data are flagged at about the asked false-positive rate, planted outliers
/// are flagged, and the log-density tells them apart (the detection AUC).
#[test]
fn score_flags_planted_outliers() {
    let (inl, outl) = scored();
    let fpr = inl.iter().filter(|r| r[2] == 1.0).count() as f64 / inl.len() as f64;
    assert!(
        (0.02..0.09).contains(&fpr),
        "false-positive rate {fpr} at 0.05"
    );
    let found = outl.iter().filter(|r| r[2] == 1.0).count();
    assert!(found >= 36, "{found} of 40 outliers flagged");
    // AUC: the chance that an inlier scores higher than an outlier
    let mut wins = 0.0;
    for a in inl {
        for b in outl {
            wins += if a[0] > b[0] {
                1.0
            } else if a[0] == b[0] {
                0.5
            } else {
                0.0
            };
        }
    }
    let auc = wins / (inl.len() * outl.len()) as f64;
    assert!(auc > 0.97, "detection AUC {auc}");
    eprintln!(
        "score: AUC {auc:.4}, false-positive rate {fpr:.4} at 0.05, {found}/40 outliers flagged"
    );
}

/// A model without kept scores (a reverse-KL fit) cannot score.
#[test]
fn score_needs_held_out_scores_kept_with_the_model() {
    let d = tmp("score-vi");
    let vi = d.join("vi");
    ok(&cmd("vi --target u1 --steps 20 --out {}", &[&vi]));
    fails(
        &cmd("score --model {} --data toy:moons", &[&vi]),
        &["keeps no held-out scores", "eval --per-sample"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn score_checks_its_false_positive_rate() {
    fails(
        &cmd(
            "score --model {} --data toy:moons --flag-fpr 5",
            &[&score_model()],
        ),
        &["--flag-fpr must be between 0 and 1"],
    );
}
