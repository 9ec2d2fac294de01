//! Conditional flows, p(x, y | angle): training with `--context`, eval, sampling given one context row or a
//! file of them, the report's densities at several contexts, and the mistakes named.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// 1500 points on the unit circle at the given angle (a little noise on the radius), with a label column.
fn circle_data() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let mut csv = String::from("x,y,angle,label\n");
        for i in 0..1500 {
            let a = -3.0 + 6.0 * (i as f64 * 0.618_034).fract();
            let r = 1.0 + 0.05 * ((i * 7919 % 97) as f64 / 97.0 - 0.5);
            csv += &format!("{},{},{a},{}\n", r * a.cos(), r * a.sin(), i % 3);
        }
        let data = tmp("circle").join("c.csv");
        std::fs::write(&data, csv).unwrap();
        data
    })
}

/// Trains `flow` (3 layers, 300 steps) on `circle_data` given the angle into a fresh folder; `info` shows the
/// context (and the embedding when `extra` asks for one) and `eval` counts only the data columns.
fn train_conditional(flow: &str, extra: &[&str]) -> PathBuf {
    let m = tmp(&format!("m-{flow}")).join("m");
    let line = "train --data {} --flow {} --context angle --drop label --layers 3 --steps 300 \
                --hidden 32 --batch-size 128 --quiet --out {}";
    let mut a = args(line, &[&circle_data(), &flow, &m]);
    a.extend(extra.iter().map(Into::into));
    ok(&nflow(&a));
    let info = ok(&cmd("info --model {}", &[&m]));
    assert!(info.contains("context        angle"), "{info}");
    assert_eq!(
        info.contains("ContextEmbedding"),
        !extra.is_empty(),
        "{info}"
    );
    let out = ok(&cmd(
        "eval --model {} --data {} --json",
        &[&m, &circle_data()],
    ));
    assert_eq!(
        json(&out)["dim"],
        2,
        "{flow}: the context column is not a data column"
    );
    m
}

/// The maf, trained once: its own test, the report and the errors use it.
fn maf() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| train_conditional("maf", &[]))
}

/// 200 samples given the angle 1.2 carry that angle; when `learned`, they sit near (cos 1.2, sin 1.2).
fn samples_given_one_row(m: &Path, flow: &str, learned: bool) {
    let s = m.with_file_name("s.csv");
    let line = "sample --model {} --context 1.2 -n 200 --out {}";
    ok(&cmd(line, &[&m, &s]));
    let text = std::fs::read_to_string(&s).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("x,y,angle"));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 200);
    let mx = rows.iter().map(|r| r[0]).sum::<f64>() / 200.0;
    let my = rows.iter().map(|r| r[1]).sum::<f64>() / 200.0;
    assert!(rows.iter().all(|r| r[2] == 1.2));
    if learned {
        // the conditional was learned: samples sit near (cos 1.2, sin 1.2) = (0.36, 0.93)
        assert!(
            (mx - 0.36).abs() < 0.25 && (my - 0.93).abs() < 0.25,
            "{flow}: mean ({mx}, {my})"
        );
    }
}

/// `-n 4` samples per row of a context file (its angle column found by name): 4 at angle 0, then 4 at 3.
fn samples_given_a_file(m: &Path) {
    let cf = m.with_file_name("ctx.csv");
    std::fs::write(&cf, "label,angle\n0,0.0\n1,3.0\n").unwrap();
    let s2 = m.with_file_name("s2.csv");
    let line = "sample --model {} --context-file {} -n 4 --out {}";
    ok(&cmd(line, &[&m, &cf, &s2]));
    let text = std::fs::read_to_string(&s2).unwrap();
    let ang: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap())
        .collect();
    assert_eq!(ang, ["0", "0", "0", "0", "3", "3", "3", "3"]);
}

#[test]
fn conditional_maf() {
    samples_given_one_row(maf(), "maf", true);
    samples_given_a_file(maf());
}

#[test]
fn conditional_iaf() {
    let m = train_conditional("iaf", &[]);
    samples_given_one_row(&m, "iaf", true);
    samples_given_a_file(&m);
}

#[test]
fn conditional_maf_mog() {
    let m = train_conditional("maf-mog", &[]);
    samples_given_one_row(&m, "maf-mog", true);
    samples_given_a_file(&m);
}

/// The one flow whose sample mean is not checked against the circle.
#[test]
fn conditional_realnvp() {
    let m = train_conditional("realnvp", &[]);
    samples_given_one_row(&m, "realnvp", false);
    samples_given_a_file(&m);
}

#[test]
fn conditional_nsf_ar_with_a_context_embedding() {
    let extra = ["--context-embed", "8", "--embed-hidden", "16"];
    let m = train_conditional("nsf-ar", &extra);
    samples_given_one_row(&m, "nsf-ar", true);
    samples_given_a_file(&m);
}

/// The report of a conditional model: its density given three context rows spread over the data's.
#[test]
fn conditional_report_shows_several_contexts() {
    let d = tmp("report");
    let html = d.join("r.html");
    let line = "report --model {} --data {} --drop label --samples 200 --out {}";
    ok(&cmd(line, &[&maf(), &circle_data(), &html]));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("Samples at several contexts"));
    let given: Vec<&str> = page
        .split("<figcaption>given angle = ")
        .skip(1)
        .map(|c| c.split('<').next().unwrap())
        .collect();
    assert_eq!(given.len(), 3, "{given:?}");
    let ang: Vec<f64> = given.iter().map(|v| v.parse().unwrap()).collect();
    assert!(
        ang[0] < -2.5 && ang[1].abs() < 1.0 && ang[2] > 2.5,
        "{ang:?}"
    );
    assert_eq!(
        inline_images(&page).len(),
        4,
        "the curve and three contexts"
    );
}

#[test]
fn a_conditional_model_needs_its_context() {
    let d = tmp("needs-context");
    let (ms, s) = (maf(), d.join("bad.csv"));
    fails(
        &cmd("sample --model {} -n 3 --out {}", &[&ms, &s]),
        &["conditional on angle", "--context"],
    );
    fails(
        &cmd("sample --model {} --context 1,2 --out {}", &[&ms, &s]),
        &["2 values", "1 columns"],
    );
    fails(
        &cmd("sample --model {} --context nan --out {}", &[&ms, &s]),
        &["not a finite number"],
    );
    fails(
        &cmd("eval --model {} --data toy:moons", &[&ms]),
        &["toy:moons", "no column angle"],
    );
}

#[test]
fn bad_context_options_are_named() {
    let d = tmp("context-options");
    let (data, x) = (s(circle_data()), d.join("x"));
    fails(
        &train_small(data, &x, &["--flow", "maf", "--context", "speed"]),
        &["speed"],
    );
    fails(
        &train_small(data, &x, &["--columns", "x,angle", "--context", "angle"]),
        &["both in --columns and in --context"],
    );
    fails(
        &train_small("toy:moons", &x, &["--context-embed", "4"]),
        &["--context"],
    );
}

#[test]
fn an_unconditional_model_refuses_a_context() {
    let d = tmp("unconditional");
    fails(
        &cmd(
            "sample --model {} --context 1 --out {}",
            &[&moons_model(), &d.join("bad.csv")],
        ),
        &["takes no context"],
    );
}
