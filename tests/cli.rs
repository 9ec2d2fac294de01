//! The `nflow` command end to end, and every bad input getting a clear error (never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn nflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nflow"))
        .args(args)
        .output()
        .expect("run nflow")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nflow-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "nflow failed: {err}");
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The command fails with exit code 1 and an error message containing every `needle`, without a panic.
fn fails(o: &Output, needles: &[&str]) {
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

fn train_small(data: &str, out: &Path, extra: &[&str]) -> Output {
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

#[test]
fn train_eval_sample_plot_info_end_to_end() {
    let d = tmp("e2e");
    let model = d.join("model");
    ok(&train_small(
        "toy:moons:2000",
        &model,
        &["--test", "toy:moons:500", "--flow", "realnvp"],
    ));
    for f in ["config.json", "weights.safetensors", "train_log.jsonl"] {
        assert!(model.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(model.join("train_log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(first["val_nll"].is_number() && first["step"].is_number());
    let m = model.to_str().unwrap();

    // eval --json and --per-sample
    let per = d.join("lp.csv");
    let out = ok(&nflow(&[
        "eval",
        "--model",
        m,
        "--data",
        "toy:moons:300",
        "--json",
        "--per-sample",
        per.to_str().unwrap(),
    ]));
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
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

    // eval on a CSV file with an extra label column: columns are matched by name
    let csv = d.join("data.csv");
    let mut text = String::from("label,x,y\n");
    for i in 0..50 {
        text.push_str(&format!(
            "{},{},{}\n",
            i % 2,
            (i as f64 * 0.1).sin(),
            (i as f64 * 0.1).cos() * 0.5
        ));
    }
    std::fs::write(&csv, text).unwrap();
    ok(&nflow(&[
        "eval",
        "--model",
        m,
        "--data",
        csv.to_str().unwrap(),
    ]));

    // sample to CSV and NPY
    let s = d.join("s.csv");
    ok(&nflow(&[
        "sample",
        "--model",
        m,
        "-n",
        "50",
        "--seed",
        "3",
        "--out",
        s.to_str().unwrap(),
    ]));
    let body = std::fs::read_to_string(&s).unwrap();
    assert_eq!(body.lines().count(), 51);
    assert_eq!(body.lines().next().unwrap(), "x,y");
    let s2 = d.join("s2.csv");
    ok(&nflow(&[
        "sample",
        "--model",
        m,
        "-n",
        "50",
        "--seed",
        "3",
        "--out",
        s2.to_str().unwrap(),
    ]));
    assert_eq!(
        body,
        std::fs::read_to_string(&s2).unwrap(),
        "same seed, same samples"
    );
    let npy = d.join("s.npy");
    ok(&nflow(&[
        "sample",
        "--model",
        m,
        "-n",
        "20",
        "--out",
        npy.to_str().unwrap(),
    ]));
    let back = nflow::data::read_npy(&npy).unwrap();
    assert_eq!((back.rows, back.cols), (20, 2));

    // plot (2-D heat map) and info
    let png = d.join("p.png");
    ok(&nflow(&[
        "plot",
        "--model",
        m,
        "--data",
        "toy:moons:500",
        "--grid",
        "40",
        "--out",
        png.to_str().unwrap(),
    ]));
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    let info = ok(&nflow(&["info", "--model", m]));
    assert!(
        info.contains("realnvp") && info.contains("parameters") && info.contains("AffineCoupling"),
        "{info}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn higher_dimensional_csv_and_pairs_plot() {
    let d = tmp("hd");
    let csv = d.join("d.csv.gz");
    let rows = 400;
    let mut v = Vec::new();
    for i in 0..rows {
        let t = i as f64 * 0.37;
        v.extend_from_slice(&[
            t.sin(),
            t.cos() + 0.1 * t.sin(),
            (2.0 * t).sin(),
            (i % 3) as f64,
        ]);
    }
    let table = nflow::data::Table::new(
        ["a", "b", "c", "class"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows,
        v,
        "d",
    );
    nflow::data::write_csv(&csv, &table).unwrap();
    let model = d.join("m");
    ok(&train_small(
        csv.to_str().unwrap(),
        &model,
        &["--drop", "class", "--flow", "nice"],
    ));
    let cfg = std::fs::read_to_string(model.join("config.json")).unwrap();
    assert!(cfg.contains("\"nice\""));
    let png = d.join("pairs.png");
    ok(&nflow(&[
        "plot",
        "--model",
        model.to_str().unwrap(),
        "--data",
        csv.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]));
    assert!(png.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_inputs_get_clear_errors() {
    let d = tmp("bad");
    let model = d.join("m");
    let ms = model.to_str().unwrap();

    // unknown flow name / option values
    fails(
        &train_small("toy:moons:500", &model, &["--flow", "glowish"]),
        &["unknown flow 'glowish'", "realnvp"],
    );
    fails(
        &train_small("toy:moons:500", &model, &["--activation", "sigmoidz"]),
        &["unknown activation"],
    );
    fails(
        &train_small("toy:nosuch", &model, &[]),
        &["unknown toy data set 'nosuch'"],
    );
    assert!(!model.exists(), "a failed run left a model folder");

    // missing file
    fails(
        &train_small(d.join("missing.csv").to_str().unwrap(), &model, &[]),
        &["missing.csv"],
    );

    // CSV with a non-number: names line and column
    let bad = d.join("bad.csv");
    std::fs::write(&bad, "x,y\n1,2\n3,abc\n").unwrap();
    fails(
        &train_small(bad.to_str().unwrap(), &model, &[]),
        &["bad.csv", "line 3", "'y'", "abc"],
    );
    // NaN cell
    std::fs::write(&bad, "x,y\n1,2\nNaN,4\n5,6\n").unwrap();
    fails(
        &train_small(bad.to_str().unwrap(), &model, &[]),
        &["bad.csv", "line 3", "'x'", "NaN"],
    );
    // ragged row
    std::fs::write(&bad, "x,y\n1,2\n3\n").unwrap();
    fails(
        &train_small(bad.to_str().unwrap(), &model, &[]),
        &["line 3", "expected 2 fields"],
    );
    // empty data
    std::fs::write(&bad, "x,y\n").unwrap();
    fails(
        &train_small(bad.to_str().unwrap(), &model, &[]),
        &["bad.csv", "no data rows"],
    );
    std::fs::write(&bad, "").unwrap();
    fails(
        &train_small(bad.to_str().unwrap(), &model, &[]),
        &["bad.csv", "empty"],
    );
    // unknown column
    fails(
        &train_small("toy:moons:500", &model, &["--drop", "zz"]),
        &["unknown column 'zz'"],
    );
    assert!(!model.exists());

    // a good model, then inputs that do not fit it
    ok(&train_small("toy:moons:1000", &model, &[]));
    let three = d.join("three.csv");
    std::fs::write(&three, "p,q,r\n1,2,3\n4,5,6\n").unwrap();
    fails(
        &nflow(&["eval", "--model", ms, "--data", three.to_str().unwrap()]),
        &["three.csv", "3 columns", "expects 2"],
    );

    // a failed training run does not touch the good model folder
    let before = std::fs::read(model.join("weights.safetensors")).unwrap();
    std::fs::write(&bad, "x,y\n1,2\n3,abc\n").unwrap();
    fails(
        &train_small(bad.to_str().unwrap(), &model, &[]),
        &["line 3"],
    );
    assert_eq!(
        before,
        std::fs::read(model.join("weights.safetensors")).unwrap()
    );

    // corrupt weights
    let corrupt = d.join("corrupt");
    copy_dir(&model, &corrupt);
    std::fs::write(
        corrupt.join("weights.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    fails(
        &nflow(&["info", "--model", corrupt.to_str().unwrap()]),
        &["corrupt", "weights.safetensors"],
    );
    // corrupt config
    std::fs::write(corrupt.join("config.json"), "{ not json").unwrap();
    fails(
        &nflow(&[
            "eval",
            "--model",
            corrupt.to_str().unwrap(),
            "--data",
            "toy:moons:10",
        ]),
        &["config.json"],
    );
    // foreign folder
    let foreign = d.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(
        foreign.join("config.json"),
        "{\"format\": \"something-else\"}",
    )
    .unwrap();
    fails(
        &nflow(&[
            "sample",
            "--model",
            foreign.to_str().unwrap(),
            "--out",
            "x.csv",
        ]),
        &["not an nflow model"],
    );
    fails(
        &nflow(&["info", "--model", d.join("nothing").to_str().unwrap()]),
        &["no such folder"],
    );
    // training into a non-model folder that has files is refused, and the files stay
    let precious = d.join("precious");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    fails(
        &train_small("toy:moons:300", &precious, &[]),
        &["not an nflow model folder"],
    );
    assert!(precious.join("notes.txt").exists());
    // unknown sample format
    fails(
        &nflow(&[
            "sample",
            "--model",
            ms,
            "--out",
            d.join("s.xlsx").to_str().unwrap(),
        ]),
        &["unknown output format"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn conditional_train_eval_sample() {
    // p(x, y | angle): points on the unit circle at the given angle
    let d = tmp("cond");
    let mut csv = String::from("x,y,angle,label\n");
    for i in 0..1500 {
        let a = -3.0 + 6.0 * (i as f64 * 0.618_034).fract();
        let r = 1.0 + 0.05 * ((i * 7919 % 97) as f64 / 97.0 - 0.5);
        csv += &format!("{},{},{a},{}\n", r * a.cos(), r * a.sin(), i % 3);
    }
    let data = d.join("c.csv");
    std::fs::write(&data, csv).unwrap();
    let data = data.to_str().unwrap();
    for (flow, extra) in [
        ("maf", &[][..]),
        ("iaf", &[]),
        ("maf-mog", &[]),
        ("realnvp", &[]),
        ("nsf-ar", &["--context-embed", "8", "--embed-hidden", "16"]),
    ] {
        let m = d.join(format!("m-{flow}"));
        let ms = m.to_str().unwrap();
        let mut args = vec![
            "train",
            "--data",
            data,
            "--flow",
            flow,
            "--context",
            "angle",
            "--drop",
            "label",
            "--layers",
            "3",
            "--steps",
            "300",
            "--hidden",
            "32",
            "--batch-size",
            "128",
            "--quiet",
            "--out",
            ms,
        ];
        args.extend_from_slice(extra);
        ok(&nflow(&args));
        let info = ok(&nflow(&["info", "--model", ms]));
        assert!(info.contains("context        angle"), "{info}");
        assert_eq!(
            info.contains("ContextEmbedding"),
            !extra.is_empty(),
            "{info}"
        );
        let out = ok(&nflow(&["eval", "--model", ms, "--data", data, "--json"]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(
            v["dim"], 2,
            "{flow}: the context column is not a data column"
        );
        // sampling given one context row and given a file of rows
        let s = d.join(format!("s-{flow}.csv"));
        ok(&nflow(&[
            "sample",
            "--model",
            ms,
            "--context",
            "1.2",
            "-n",
            "200",
            "--out",
            s.to_str().unwrap(),
        ]));
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
        if flow != "realnvp" {
            // the conditional was learned: samples sit near (cos 1.2, sin 1.2) = (0.36, 0.93)
            assert!(
                (mx - 0.36).abs() < 0.25 && (my - 0.93).abs() < 0.25,
                "{flow}: mean ({mx}, {my})"
            );
        }
        let cf = d.join("ctx.csv");
        std::fs::write(&cf, "label,angle\n0,0.0\n1,3.0\n").unwrap();
        let s2 = d.join("s2.csv");
        ok(&nflow(&[
            "sample",
            "--model",
            ms,
            "--context-file",
            cf.to_str().unwrap(),
            "-n",
            "4",
            "--out",
            s2.to_str().unwrap(),
        ]));
        let text = std::fs::read_to_string(&s2).unwrap();
        let ang: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.rsplit(',').next().unwrap())
            .collect();
        assert_eq!(ang, ["0", "0", "0", "0", "3", "3", "3", "3"]);
    }
    let ms = d.join("m-maf");
    let ms = ms.to_str().unwrap();
    // the report of a conditional model: its density given three context rows spread over the data's
    let html = d.join("r.html");
    ok(&nflow(&[
        "report",
        "--model",
        ms,
        "--data",
        data,
        "--drop",
        "label",
        "--samples",
        "200",
        "--out",
        html.to_str().unwrap(),
    ]));
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
    let s = d.join("bad.csv");
    let s = s.to_str().unwrap();
    fails(
        &nflow(&["sample", "--model", ms, "-n", "3", "--out", s]),
        &["conditional on angle", "--context"],
    );
    fails(
        &nflow(&["sample", "--model", ms, "--context", "1,2", "--out", s]),
        &["2 values", "1 columns"],
    );
    fails(
        &nflow(&["sample", "--model", ms, "--context", "nan", "--out", s]),
        &["not a finite number"],
    );
    fails(
        &nflow(&["eval", "--model", ms, "--data", "toy:moons"]),
        &["toy:moons", "no column angle"],
    );
    fails(
        &train_small(data, &d.join("x"), &["--flow", "maf", "--context", "speed"]),
        &["speed"],
    );
    fails(
        &train_small(
            data,
            &d.join("x"),
            &["--columns", "x,angle", "--context", "angle"],
        ),
        &["both in --columns and in --context"],
    );
    fails(
        &train_small("toy:moons", &d.join("x"), &["--context-embed", "4"]),
        &["--context"],
    );
    // an unconditional model refuses a context
    let u = d.join("u");
    ok(&train_small("toy:moons", &u, &[]));
    fails(
        &nflow(&[
            "sample",
            "--model",
            u.to_str().unwrap(),
            "--context",
            "1",
            "--out",
            s,
        ]),
        &["takes no context"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A CSV of 8x8 grey "images" (two kinds of blob), with the pixel column names image data carries.
fn write_images(path: &Path, n: usize, seed: u64) {
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

#[test]
fn image_flows_train_resume_sample_grid_curve() {
    let d = tmp("images");
    let data = d.join("img.csv");
    let test = d.join("test.csv");
    write_images(&data, 200, 1);
    write_images(&test, 40, 2);
    let out = d.join("glow");
    let (data_s, test_s, out_s) = (
        data.to_str().unwrap(),
        test.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    for flow in ["glow", "realnvp-multiscale"] {
        let args = [
            "train",
            "--data",
            data_s,
            "--test",
            test_s,
            "--flow",
            flow,
            "--layers",
            "1",
            "--hidden",
            "8",
            "--depth",
            "1",
            "--dequantize",
            "--steps",
            "12",
            "--batch-size",
            "32",
            "--eval-every",
            "4",
            "--monitor",
            "20",
            "--checkpoint-every",
            "4",
            "--keep-checkpoint",
            "--out",
            out_s,
            "--quiet",
        ];
        let text = ok(&nflow(&args));
        assert!(text.contains("bits/dim"), "{text}");
        // continuing from the last checkpoint (step 8) reproduces the same model
        let first = std::fs::read(out.join("weights.safetensors")).unwrap();
        let mut resume = args.to_vec();
        resume.push("--resume");
        ok(&nflow(&resume));
        assert_eq!(
            first,
            std::fs::read(out.join("weights.safetensors")).unwrap(),
            "{flow}"
        );
    }
    let grid = d.join("grid.png");
    let o = nflow(&[
        "sample",
        "--model",
        out_s,
        "-n",
        "12",
        "--grid",
        grid.to_str().unwrap(),
        "--grid-cols",
        "6",
        "--temperature",
        "0.7",
    ]);
    ok(&o);
    let bytes = std::fs::read(&grid).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    // 6 x 2 images of 8x8 drawn 7x (56 pixels) with 3-pixel gaps under a title: 374 x 172 pixels (PNG
    // header: width, height at 16..24)
    let size = |bytes: &[u8]| {
        (
            u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
            u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
        )
    };
    assert_eq!(size(&bytes), (374, 172));
    // the report of an image model: samples at four temperatures, a test picture's latents, bits/dim
    let html = d.join("r.html");
    ok(&nflow(&[
        "report",
        "--model",
        out_s,
        "--data",
        test_s,
        "--out",
        html.to_str().unwrap(),
    ]));
    let page = std::fs::read_to_string(&html).unwrap();
    for id in ["card", "curve", "test", "samples", "latents"] {
        assert!(page.contains(&format!("<section id=\"{id}\">")), "{id}");
    }
    assert!(page.contains("<th>bits/dim</th>") && page.contains("A line per temperature"));
    assert_eq!(inline_images(&page).len(), 3, "curve, samples, latents");
    // a picture's latents per level and pictures rebuilt from them (realnvp-multiscale, 2 levels)
    let lat = d.join("latents.png");
    let o = nflow(&[
        "plot",
        "--model",
        out_s,
        "--layers",
        "--data",
        test_s,
        "--temperatures",
        "0,0.7,1",
        "--out",
        lat.to_str().unwrap(),
    ]);
    ok(&o);
    let img = image::open(&lat).unwrap().to_rgb8();
    // two rows of rebuilt pictures (coarsest level kept, none kept) under the picture and its latents
    assert!(
        img.width() > 3 * 56 && img.height() > 3 * 56,
        "{:?}",
        img.dimensions()
    );
    fails(
        &nflow(&[
            "plot",
            "--model",
            out_s,
            "--layers",
            "--temperatures",
            "0,-1",
            "--out",
            lat.to_str().unwrap(),
        ]),
        &["--temperatures", "'-1'"],
    );
    let csv = d.join("curve.csv");
    let png = d.join("curve.png");
    ok(&nflow(&[
        "curve",
        "--model",
        out_s,
        "--csv",
        csv.to_str().unwrap(),
        "--png",
        png.to_str().unwrap(),
    ]));
    let c = std::fs::read_to_string(&csv).unwrap();
    assert!(
        c.starts_with("step,minutes,epoch,train_bits_per_dim,val_bits_per_dim,test_bits_per_dim")
    );
    assert_eq!(c.lines().count(), 4, "{c}");
    // errors: no image shape, a shape that does not fit, an odd size for the squeezes, temperature
    fails(
        &nflow(&[
            "train",
            "--data",
            "toy:moons",
            "--flow",
            "glow",
            "--steps",
            "2",
            "--out",
            out_s,
        ]),
        &["image shape", "--image-shape"],
    );
    fails(
        &nflow(&[
            "train",
            "--data",
            data_s,
            "--flow",
            "glow",
            "--image-shape",
            "1,4,4",
            "--steps",
            "2",
            "--out",
            out_s,
        ]),
        &["1x4x4", "64 columns"],
    );
    fails(
        &nflow(&[
            "train", "--data", data_s, "--flow", "glow", "--scales", "4", "--steps", "2", "--out",
            out_s,
        ]),
        &["multiples of 16"],
    );
    fails(
        &nflow(&[
            "sample",
            "--model",
            out_s,
            "--out",
            csv.to_str().unwrap(),
            "--temperature",
            "0",
        ]),
        &["temperature"],
    );
    fails(
        &nflow(&[
            "train", "--data", data_s, "--flow", "glow", "--steps", "2", "--resume", "--out", out_s,
        ]),
        &["--checkpoint-every"],
    );
}

#[test]
fn class_conditional_image_flow() {
    let d = tmp("classcond");
    let data = d.join("img.csv");
    write_images(&data, 120, 3);
    // append a label column: the blob kind (row parity)
    let text = std::fs::read_to_string(&data).unwrap();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        out.push_str(line);
        out.push_str(&if i == 0 {
            ",label".to_string()
        } else {
            format!(",{}", (i - 1) % 2)
        });
        out.push('\n');
    }
    std::fs::write(&data, out).unwrap();
    let model = d.join("m");
    let (data_s, model_s) = (data.to_str().unwrap(), model.to_str().unwrap());
    ok(&nflow(&[
        "train",
        "--data",
        data_s,
        "--flow",
        "glow",
        "--layers",
        "1",
        "--hidden",
        "8",
        "--context",
        "label",
        "--context-one-hot",
        "--dequantize",
        "--steps",
        "6",
        "--batch-size",
        "30",
        "--out",
        model_s,
        "--quiet",
    ]));
    let cfg = std::fs::read_to_string(model.join("config.json")).unwrap();
    assert!(cfg.contains("\"context_dim\": 2"), "{cfg}");
    let grid = d.join("g.png");
    ok(&nflow(&[
        "sample",
        "--model",
        model_s,
        "--context",
        "1",
        "-n",
        "4",
        "--grid",
        grid.to_str().unwrap(),
    ]));
    assert!(grid.exists());
    // the report of a class-conditional image model: samples per class, a picture's latents
    let html = d.join("r.html");
    ok(&nflow(&[
        "report",
        "--model",
        model_s,
        "--data",
        data_s,
        "--out",
        html.to_str().unwrap(),
    ]));
    let page = std::fs::read_to_string(&html).unwrap();
    for id in ["card", "test", "samples", "latents"] {
        assert!(page.contains(&format!("<section id=\"{id}\">")), "{id}");
    }
    assert!(page.contains("A line per context row of the data (2 of them)"));
    assert!(page.contains("bits/dim"));
    for im in inline_images(&page) {
        assert!(im.width() > 200 && im.height() > 100);
    }
    // eval reads the label column by name; a label the model never saw is an error naming it
    assert!(ok(&nflow(&["eval", "--model", model_s, "--data", data_s])).contains("bits/dim"));
    fails(
        &nflow(&[
            "sample",
            "--model",
            model_s,
            "--context",
            "2",
            "-n",
            "2",
            "--out",
            d.join("s.csv").to_str().unwrap(),
        ]),
        &["'label'", "class label"],
    );
    fails(
        &nflow(&[
            "train",
            "--data",
            data_s,
            "--context-one-hot",
            "--steps",
            "2",
            "--out",
            model_s,
        ]),
        &["--context"],
    );
}

/// `--map` swaps a preset's element-wise map; `--arch` trains any layer list from JSON or TOML, and the
/// model's own `flow` (from config.json) trains again as an architecture file; bad files name the layer.
#[test]
fn maps_and_architecture_files() {
    let d = tmp("arch");
    let m = d.join("sas");
    ok(&train_small(
        "toy:moons",
        &m,
        &["--flow", "maf", "--map", "sinh-arcsinh"],
    ));
    let info = ok(&nflow(&["info", "--model", m.to_str().unwrap()]));
    assert!(
        info.contains("SinhArcsinhAR") && info.contains("map            sinh-arcsinh"),
        "{info}"
    );
    // the saved architecture, as a file, with dim left out
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.join("config.json")).unwrap()).unwrap();
    let mut flow = cfg["flow"].clone();
    flow.as_object_mut().unwrap().remove("dim");
    let arch = d.join("flow.json");
    std::fs::write(&arch, flow.to_string()).unwrap();
    let a = d.join("from-json");
    let o = nflow(&[
        "train",
        "--data",
        "toy:moons",
        "--arch",
        arch.to_str().unwrap(),
        "--steps",
        "40",
        "--quiet",
        "--out",
        a.to_str().unwrap(),
    ]);
    ok(&o);
    let cfg2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg2["flow"]["layers"], cfg["flow"]["layers"]);
    assert!(cfg2.get("preset").is_none());
    let toml = d.join("flow.toml");
    std::fs::write(
        &toml,
        "[[layers]]\ntype = \"coupling\"\nmap = { type = \"rq-spline\", bins = 4 }\n\n\
         [[layers]]\ntype = \"coupling\"\nindex = 1\n",
    )
    .unwrap();
    let t = d.join("from-toml");
    ok(&nflow(&[
        "train",
        "--data",
        "toy:moons",
        "--arch",
        toml.to_str().unwrap(),
        "--steps",
        "40",
        "--quiet",
        "--out",
        t.to_str().unwrap(),
    ]));
    ok(&nflow(&[
        "eval",
        "--model",
        t.to_str().unwrap(),
        "--data",
        "toy:moons:500",
    ]));
    std::fs::write(
        &arch,
        r#"{"layers": [{"type": "coupling"}, {"type": "frobnicate"}]}"#,
    )
    .unwrap();
    let o = nflow(&[
        "train",
        "--data",
        "toy:moons",
        "--arch",
        arch.to_str().unwrap(),
        "--out",
        d.join("x").to_str().unwrap(),
    ]);
    fails(
        &o,
        &["flow.json", "layers[1]", "unknown layer type 'frobnicate'"],
    );
    let o = nflow(&[
        "train",
        "--data",
        "toy:moons",
        "--map",
        "spline",
        "--out",
        d.join("y").to_str().unwrap(),
    ]);
    fails(&o, &["--map spline", "rq-spline"]);
    let _ = std::fs::remove_dir_all(&d);
}

/// `nflow vi` fits a built-in target by reverse KL, prints its diagnostics, and writes a model folder that
/// `sample`, `eval` and `info` use like any other; a bad target is a clear error.
#[test]
fn vi_writes_an_ordinary_model() {
    let d = tmp("vi");
    let m = d.join("u1");
    let out = ok(&nflow(&[
        "vi",
        "--target",
        "u1",
        "--steps",
        "60",
        "--hidden",
        "16",
        "--layers",
        "2",
        "--eval-samples",
        "256",
        "--json",
        "--quiet",
        "--out",
        m.to_str().unwrap(),
    ]));
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
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
    let s = d.join("s.csv");
    ok(&nflow(&[
        "sample",
        "--model",
        m.to_str().unwrap(),
        "-n",
        "20",
        "--out",
        s.to_str().unwrap(),
    ]));
    ok(&nflow(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--data",
        s.to_str().unwrap(),
    ]));
    let info = ok(&nflow(&["info", "--model", m.to_str().unwrap()]));
    assert!(info.contains("target:u1"), "{info}");
    let o = nflow(&[
        "vi",
        "--target",
        "banana",
        "--out",
        d.join("x").to_str().unwrap(),
    ]);
    fails(&o, &["target 'banana'", "u1", "gauss:D"]);
    let o = nflow(&[
        "vi",
        "--target",
        "gauss:3",
        "--flow",
        "glow",
        "--out",
        d.join("y").to_str().unwrap(),
    ]);
    fails(&o, &["--flow glow"]);
    let _ = std::fs::remove_dir_all(&d);
}

/// `sample` without `--out` writes CSV to standard output (header, then `-n` rows that `eval` reads back), and
/// `plot --samples 0` is an error, not a panic.
#[test]
fn sample_to_standard_output_and_plot_sizes() {
    let d = tmp("stdout");
    let m = d.join("m");
    ok(&train_small("toy:moons", &m, &[]));
    let out = ok(&nflow(&[
        "sample",
        "--model",
        m.to_str().unwrap(),
        "-n",
        "7",
        "--seed",
        "3",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    assert_eq!(lines[0], "x,y");
    let f = d.join("s.csv");
    std::fs::write(&f, &out).unwrap();
    let back = ok(&nflow(&[
        "sample",
        "--model",
        m.to_str().unwrap(),
        "-n",
        "7",
        "--seed",
        "3",
        "--out",
        f.to_str().unwrap(),
    ]));
    assert!(back.is_empty());
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        out,
        "stdout and --out differ"
    );
    let o = nflow(&[
        "plot",
        "--model",
        m.to_str().unwrap(),
        "--samples",
        "0",
        "--out",
        d.join("p.png").to_str().unwrap(),
    ]);
    fails(&o, &["--samples must be at least 1"]);
    // an absurd thread count is capped with a warning, and the run finishes
    let o = nflow(&[
        "--threads",
        "10000",
        "sample",
        "--model",
        m.to_str().unwrap(),
        "-n",
        "2",
    ]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("capped"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn one_writer_per_output_and_nothing_left_behind() {
    let d = tmp("writers");
    let out = d.join("model");
    let out_s = out.to_str().unwrap();
    // a run holding the output (this test's own process stands for it): refused at once, naming the holder
    std::fs::write(d.join(".model.lock"), std::process::id().to_string()).unwrap();
    let o = train_small("toy:moons", &out, &[]);
    fails(
        &o,
        &[
            "another nflow run",
            &format!("process {}", std::process::id()),
        ],
    );
    assert!(!out.exists());
    // a dead run's lock is taken over; a successful run removes its checkpoint and its lock
    std::fs::write(d.join(".model.lock"), "4294967").unwrap();
    ok(&train_small(
        "toy:moons",
        &out,
        &["--checkpoint-every", "10"],
    ));
    assert!(out.join("weights.safetensors").exists());
    assert!(!d.join("model.ckpt").exists() && !d.join(".model.lock").exists());
    // a run killed between the two steps of a replacement left the model aside: the next reader puts it back
    std::fs::rename(&out, d.join(".model.old-4294967")).unwrap();
    std::fs::create_dir_all(d.join(".model.tmp-4294967")).unwrap();
    ok(&nflow(&["info", "--model", out_s]));
    assert!(out.join("config.json").exists());
    ok(&train_small("toy:moons", &out, &[]));
    assert!(!d.join(".model.tmp-4294967").exists() && !d.join(".model.old-4294967").exists());
    // an output that is not a model folder is refused before training
    let photos = d.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::write(photos.join("a.jpg"), "x").unwrap();
    let t0 = std::time::Instant::now();
    fails(
        &train_small("toy:moons", &photos, &[]),
        &["not an nflow model folder"],
    );
    assert!(t0.elapsed().as_secs() < 5);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn eval_reports_robust_figures_and_names_the_worst_rows() {
    let d = tmp("robust-eval");
    let out = d.join("m");
    ok(&train_small("toy:moons", &out, &[]));
    // 200 ordinary rows and one far outside the training data, at row 57
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
    let o = nflow(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(ok(&o).trim()).unwrap();
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
    let text = ok(&nflow(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]));
    assert!(
        text.contains("median")
            && text.contains("far in the lower tail")
            && text.contains("row 57"),
        "{text}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_run_that_ends_worse_than_it_started_is_reported() {
    let d = tmp("worse");
    let out = d.join("m");
    // a learning rate far too large: finishes, but below the untrained flow's validation log-likelihood
    let o = train_small("toy:moons", &out, &["--lr", "1"]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: training made the model worse"),
        "{err}"
    );
    let o = train_small("toy:moons", &out, &["--lr", "1", "--strict"]);
    fails(&o, &["training made the model worse", "saved"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out.join("weights.safetensors").exists());
    // a sensible rate: no warning
    let o = train_small("toy:moons", &out, &[]);
    ok(&o);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("made the model worse"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn sizes_that_cannot_fit_are_refused_before_any_work() {
    let d = tmp("sizes");
    let out = d.join("m");
    let out_s = out.to_str().unwrap();
    fails(
        &nflow(&[
            "train",
            "--data",
            "toy:moons",
            "--hidden",
            "1000000",
            "--out",
            out_s,
        ]),
        &["parameters", "GB", "memory available", "layers[0]"],
    );
    assert!(!out.exists());
    ok(&train_small("toy:moons", &out, &[]));
    fails(
        &nflow(&[
            "sample",
            "--model",
            out_s,
            "-n",
            "100000000000",
            "--out",
            d.join("s.csv").to_str().unwrap(),
        ]),
        &["s.csv", "100000000000 rows need about", "GB free"],
    );
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "only the model");
    fails(
        &nflow(&[
            "plot",
            "--model",
            out_s,
            "--grid",
            "1000000",
            "--out",
            d.join("p.png").to_str().unwrap(),
        ]),
        &["--grid 1000000", "memory available"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn data_from_standard_input() {
    use std::io::Write as _;
    let d = tmp("stdin");
    let out = d.join("m");
    ok(&train_small("toy:moons", &out, &[]));
    let run = |input: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nflow"))
            .args([
                "eval",
                "--model",
                out.to_str().unwrap(),
                "--data",
                "-",
                "--json",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let o = run("x,y\n0.5,0.2\n1.0,-0.3\n");
    let v: serde_json::Value = serde_json::from_str(ok(&o).trim()).unwrap();
    assert_eq!(v["n"], 2);
    assert_eq!(v["data"], "standard input");
    fails(&run("x,y\n0.5,zz\n"), &["standard input line 2", "'zz'"]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// `sample` without `--out` streams CSV to standard output: a reader that stops after a few lines (as
/// `| head` does) ends a run of a billion rows at once, with exit code 0; a file output appears only whole.
#[test]
fn sample_streams_to_standard_output_and_stops_with_its_reader() {
    use std::io::{BufRead, BufReader};
    let d = tmp("stream");
    let out = d.join("m");
    ok(&train_small("toy:moons", &out, &[]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_nflow"))
        .args([
            "sample",
            "--model",
            out.to_str().unwrap(),
            "-n",
            "1000000000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        t0.elapsed().as_secs() < 20,
        "the run went on after its reader left"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// `score` ranks rows among the held-out rows kept with the model: fresh rows like the training data are
/// flagged at about the asked false-positive rate, planted outliers are found (the detection AUC of the
/// log-density), the data's columns are copied beside the scores, and a model with no kept scores is an error.
#[test]
fn score_flags_planted_outliers() {
    let d = tmp("score");
    let out = d.join("m");
    let m = out.to_str().unwrap();
    ok(&nflow(&[
        "train",
        "--data",
        "toy:moons",
        "--layers",
        "4",
        "--hidden",
        "32",
        "--steps",
        "600",
        "--quiet",
        "--out",
        m,
    ]));
    // 40 outliers on a ring of radius 3.5 around the moons (whose points lie within about 2 of (0.5, 0.25))
    let mut text = String::from("x,y,id\n");
    for k in 0..40 {
        let a = k as f64 * std::f64::consts::TAU / 40.0;
        text += &format!("{},{},{k}\n", 0.5 + 3.5 * a.cos(), 0.25 + 3.5 * a.sin());
    }
    let far = d.join("far.csv");
    std::fs::write(&far, text).unwrap();
    let read = |p: &Path| -> Vec<Vec<f64>> {
        let t = nflow::data::read_csv(p).unwrap();
        (0..t.rows).map(|r| t.row(r).to_vec()).collect()
    };
    let (si, so) = (d.join("in.csv"), d.join("out.csv"));
    let args = |data: &str, o: &Path| {
        vec![
            "score".to_string(),
            "--model".into(),
            m.into(),
            "--data".into(),
            data.into(),
            "--toy-n".into(),
            "2000".into(),
            "--flag-fpr".into(),
            "0.05".into(),
            "--out".into(),
            o.to_str().unwrap().into(),
        ]
    };
    let run = |v: Vec<String>| nflow(&v.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&run(args("toy:moons", &si)));
    ok(&run(args(far.to_str().unwrap(), &so)));
    let (inl, outl) = (read(&si), read(&so));
    assert_eq!(inl[0].len(), 5, "log_prob, percentile, flagged, x, y");
    assert_eq!(outl[0].len(), 6, "and the id column");
    assert_eq!(outl[7][5], 7.0);
    let fpr = inl.iter().filter(|r| r[2] == 1.0).count() as f64 / inl.len() as f64;
    assert!(
        (0.02..0.09).contains(&fpr),
        "false-positive rate {fpr} at 0.05"
    );
    let found = outl.iter().filter(|r| r[2] == 1.0).count();
    assert!(found >= 36, "{found} of 40 outliers flagged");
    // AUC: the chance that an inlier scores higher than an outlier
    let mut wins = 0.0;
    for a in &inl {
        for b in &outl {
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
    // a model without kept scores (a reverse-KL fit)
    let vi = d.join("vi");
    ok(&nflow(&[
        "vi",
        "--target",
        "u1",
        "--steps",
        "20",
        "--out",
        vi.to_str().unwrap(),
    ]));
    fails(
        &nflow(&[
            "score",
            "--model",
            vi.to_str().unwrap(),
            "--data",
            "toy:moons",
        ]),
        &["keeps no held-out scores", "eval --per-sample"],
    );
    fails(
        &nflow(&[
            "score",
            "--model",
            m,
            "--data",
            "toy:moons",
            "--flag-fpr",
            "5",
        ]),
        &["--flag-fpr must be between 0 and 1"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--weights COL` fits the weighted likelihood: rows of weight 0 (a cluster far from the others) get a low
/// density, the column is not part of the model, `info` says the fit was weighted, and a negative weight is
/// an error naming its row.
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
    let data = d.join("d.csv");
    std::fs::write(&data, &text).unwrap();
    let m = d.join("m");
    let ms = m.to_str().unwrap();
    let ds = data.to_str().unwrap();
    ok(&nflow(&[
        "train",
        "--data",
        ds,
        "--weights",
        "w",
        "--layers",
        "4",
        "--hidden",
        "32",
        "--steps",
        "800",
        "--quiet",
        "--out",
        ms,
    ]));
    let info = ok(&nflow(&["info", "--model", ms]));
    assert!(info.contains("weighted mean log-likelihood"), "{info}");
    let near = d.join("near.csv");
    let far = d.join("far.csv");
    std::fs::write(&near, "x,y\n0.1,-0.2\n-0.3,0.2\n0.2,0.3\n").unwrap();
    std::fs::write(&far, "x,y\n6.1,5.8\n5.7,6.2\n6.2,6.3\n").unwrap();
    let lp = |f: &Path| -> f64 {
        let o = ok(&nflow(&[
            "eval",
            "--model",
            ms,
            "--data",
            f.to_str().unwrap(),
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
        v["mean_log_prob"].as_f64().unwrap()
    };
    let (a, b) = (lp(&near), lp(&far));
    assert!(a > b + 5.0, "weighted-in rows {a}, weighted-out rows {b}");
    std::fs::write(&data, "x,y,w\n1,2,1\n2,1,-1\n3,3,1\n1,1,1\n2,2,1\n3,1,1\n").unwrap();
    fails(
        &nflow(&[
            "train",
            "--data",
            ds,
            "--weights",
            "w",
            "--steps",
            "10",
            "--out",
            ms,
        ]),
        &["weight of row 1", "at least 0"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn defaults_choose_a_flow_and_a_budget_and_say_so() {
    let d = tmp("auto");
    let m = d.join("m");
    let o = nflow(&[
        "train",
        "--data",
        "toy:moons:600",
        "--patience",
        "2",
        "--out",
        m.to_str().unwrap(),
    ]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("chose nsf-ar with 5 layers")
            && err.contains("validation every 50 steps")
            && err.contains("stop at the plateau after 3 reductions"),
        "{err}"
    );
    // the plateau schedule ended the run (2 evaluations per plateau, 4 plateaus) well before the cap
    let info = ok(&nflow(&["info", "--model", m.to_str().unwrap()]));
    assert!(
        info.contains("nsf-ar")
            && info.contains("stopped at a plateau after 3 learning-rate halvings"),
        "{info}"
    );
    let log = std::fs::read_to_string(m.join("train_log.jsonl")).unwrap();
    let lrs: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(lrs[0], 1e-3);
    assert_eq!(*lrs.last().unwrap(), 1.25e-4, "three halvings");
    assert!(lrs.len() < 10_000 / 50);
    // an explicit budget keeps the old behaviour: constant rate, no chosen-flow line for a named flow
    let o = nflow(&[
        "train",
        "--data",
        "toy:moons:300",
        "--flow",
        "maf",
        "--steps",
        "20",
        "--out",
        d.join("n").to_str().unwrap(),
    ]);
    ok(&o);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("chose"));
    fails(
        &nflow(&[
            "train",
            "--data",
            "toy:moons:300",
            "--schedule",
            "plateau",
            "--val-fraction",
            "0",
            "--out",
            d.join("p").to_str().unwrap(),
        ]),
        &["plateau", "validation"],
    );
}

#[test]
fn column_supports_are_kept_shown_and_checked() {
    let d = tmp("support");
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
        text += &format!(
            "{a},{},{},{}\n",
            u().powi(2),
            (u() * 6.0).floor(),
            1.0 + (u() * 5.0).floor()
        );
    }
    let data = d.join("d.csv");
    std::fs::write(&data, &text).unwrap();
    let ds = data.to_str().unwrap();
    let m = d.join("m");
    let ms = m.to_str().unwrap();
    // without --integer the integer columns get a hint
    let o = nflow(&[
        "train", "--data", ds, "--flow", "maf", "--steps", "30", "--out", ms,
    ]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("hint") && err.contains("--integer count,rating"),
        "{err}"
    );
    ok(&nflow(&[
        "train",
        "--data",
        ds,
        "--flow",
        "maf",
        "--steps",
        "30",
        "--bounds",
        "share=0:1,rating=1:5",
        "--integer",
        "count,rating",
        "--positive",
        "count",
        "--out",
        ms,
    ]));
    let info = ok(&nflow(&["info", "--model", ms]));
    assert!(
        info.contains("support        share: in [0, 1]")
            && info.contains("count: integer (dequantised), at least 0")
            && info.contains("rating: integer (dequantised), in [1, 5]"),
        "{info}"
    );
    let s = d.join("s.csv");
    ok(&nflow(&[
        "sample",
        "--model",
        ms,
        "--n",
        "500",
        "--out",
        s.to_str().unwrap(),
    ]));
    let st = std::fs::read_to_string(&s).unwrap();
    for line in st.lines().skip(1) {
        let v: Vec<f64> = line.split(',').map(|x| x.parse().unwrap()).collect();
        assert!((0.0..=1.0).contains(&v[1]), "{line}");
        assert!(v[2] >= 0.0 && v[2].fract() == 0.0, "{line}");
        assert!((1.0..=5.0).contains(&v[3]) && v[3].fract() == 0.0, "{line}");
    }
    ok(&nflow(&["eval", "--model", ms, "--data", ds]));
    // a value outside the support, at eval and at training, is named by row and column
    let bad = d.join("bad.csv");
    std::fs::write(&bad, "a,share,count,rating\n0,0.5,1,1\n0,1.5,1,1\n").unwrap();
    fails(
        &nflow(&["eval", "--model", ms, "--data", bad.to_str().unwrap()]),
        &["row 1", "'share'", "[0, 1]"],
    );
    fails(
        &nflow(&[
            "train",
            "--data",
            ds,
            "--bounds",
            "share=0:0.5",
            "--steps",
            "5",
            "--out",
            d.join("x").to_str().unwrap(),
        ]),
        &["'share'", "outside the bounds"],
    );
    for (flag, val, needle) in [
        ("--bounds", "nope=0:1", "no such column"),
        ("--bounds", "share=1", "COLUMN=LOW:HIGH"),
        ("--bounds", "share=1:0", "low < high"),
        ("--positive", "a", "positive"),
        ("--integer", "share", "not an integer"),
    ] {
        fails(
            &nflow(&[
                "train",
                "--data",
                ds,
                flag,
                val,
                "--steps",
                "5",
                "--out",
                d.join("y").to_str().unwrap(),
            ]),
            &[needle],
        );
    }
}

#[test]
fn parquet_and_arrow_in_and_out() {
    let d = tmp("parquet");
    let csv = d.join("d.csv");
    // sample a table to Parquet, train on it, score it per row to Parquet and Arrow, compare with the CSV way
    let m = d.join("m");
    ok(&train_small("toy:moons:800", &m, &["--flow", "maf"]));
    let ms = m.to_str().unwrap();
    let pq = d.join("s.parquet");
    ok(&nflow(&[
        "sample",
        "--model",
        ms,
        "-n",
        "300",
        "--seed",
        "4",
        "--out",
        pq.to_str().unwrap(),
    ]));
    ok(&nflow(&[
        "sample",
        "--model",
        ms,
        "-n",
        "300",
        "--seed",
        "4",
        "--out",
        csv.to_str().unwrap(),
    ]));
    assert_eq!(&std::fs::read(&pq).unwrap()[..4], b"PAR1");
    let per = |data: &Path, out: &Path| {
        ok(&nflow(&[
            "eval",
            "--model",
            ms,
            "--data",
            data.to_str().unwrap(),
            "--per-sample",
            out.to_str().unwrap(),
            "--json",
        ]))
    };
    let a = per(&pq, &d.join("lp.arrow"));
    let b = per(&csv, &d.join("lp.csv"));
    let mean = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s).unwrap()["mean_log_prob"]
            .as_f64()
            .unwrap()
    };
    // CSV keeps 17 significant digits: the same rows either way
    assert!((mean(&a) - mean(&b)).abs() < 1e-9, "{a} vs {b}");
    assert_eq!(&std::fs::read(d.join("lp.arrow")).unwrap()[..6], b"ARROW1");
    ok(&train_small(
        pq.to_str().unwrap(),
        &d.join("m2"),
        &["--flow", "maf"],
    ));
    fails(
        &nflow(&[
            "sample",
            "--model",
            ms,
            "-n",
            "3",
            "--out",
            d.join("s.xlsx").to_str().unwrap(),
        ]),
        &["s.xlsx", ".parquet"],
    );
}

#[test]
fn layer_by_layer_figure() {
    let d = tmp("layers");
    let m = d.join("m");
    ok(&train_small("toy:moons:600", &m, &["--flow", "nsf-c"]));
    let png = d.join("layers.png");
    let o = nflow(&[
        "plot",
        "--model",
        m.to_str().unwrap(),
        "--layers",
        "--grid",
        "40",
        "--out",
        png.to_str().unwrap(),
    ]);
    ok(&o);
    // nsf-c with 2 layers: spline coupling, LU, spline coupling, plus the data stage
    assert!(String::from_utf8_lossy(&o.stderr).contains("(4 stages)"));
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    let m3 = d.join("m3");
    let csv = d.join("three.csv");
    std::fs::write(&csv, "a,b,c\n1,2,3\n2,1,3\n3,3,1\n0,1,2\n1,0,2\n2,2,0\n").unwrap();
    ok(&train_small(
        csv.to_str().unwrap(),
        &m3,
        &["--flow", "maf", "--val-fraction", "0"],
    ));
    // three columns: the plane of two of them through a reference row; bad axes are named
    let o = nflow(&[
        "plot",
        "--model",
        m3.to_str().unwrap(),
        "--layers",
        "--axes",
        "c,a",
        "--reference",
        "1,2,3",
        "--grid",
        "30",
        "--out",
        png.to_str().unwrap(),
    ]);
    ok(&o);
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    for (axes, needle) in [
        ("c,z", "no column 'z'"),
        ("a,a", "two different"),
        ("a", "two column"),
    ] {
        fails(
            &nflow(&[
                "plot",
                "--model",
                m3.to_str().unwrap(),
                "--layers",
                "--axes",
                axes,
                "--out",
                png.to_str().unwrap(),
            ]),
            &["--axes", needle],
        );
    }
    fails(
        &nflow(&[
            "plot",
            "--model",
            m3.to_str().unwrap(),
            "--layers",
            "--reference",
            "1,2",
            "--out",
            png.to_str().unwrap(),
        ]),
        &["--reference has 2 values", "3 columns"],
    );
}

/// Every inline PNG of a report page, decoded.
fn inline_images(page: &str) -> Vec<image::DynamicImage> {
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

#[test]
fn report_page_has_every_section_and_decodable_images() {
    let d = tmp("report");
    let m = d.join("m");
    ok(&train_small("toy:moons:800", &m, &["--flow", "nsf-c"]));
    let html = d.join("r.html");
    ok(&nflow(&[
        "report",
        "--model",
        m.to_str().unwrap(),
        "--data",
        "toy:moons:500",
        "--samples",
        "300",
        "--out",
        html.to_str().unwrap(),
    ]));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    for id in ["card", "curve", "test", "samples", "layers"] {
        assert!(
            page.contains(&format!("<section id=\"{id}\">")),
            "section {id} missing"
        );
    }
    assert!(page.contains("nsf-c") && page.contains("mean log-likelihood"));
    // no network: every image inline, and each one a PNG that decodes
    assert!(!page.contains("http://") && !page.contains("https://"));
    let imgs = inline_images(&page);
    assert_eq!(imgs.len(), 3, "curve, samples, layers");
    for im in imgs {
        assert!(im.width() > 200 && im.height() > 200);
    }
    // a 3-D model: pairs instead of the density, no layer figure; a name that is not .html is refused
    let csv = d.join("three.csv");
    let mut text = String::from("a,b,c\n");
    for i in 0..300 {
        let v = i as f64 / 30.0;
        text += &format!("{},{},{}\n", v.sin(), v.cos() + 0.1 * v, v / 10.0);
    }
    std::fs::write(&csv, text).unwrap();
    let m3 = d.join("m3");
    ok(&train_small(csv.to_str().unwrap(), &m3, &["--flow", "maf"]));
    ok(&nflow(&[
        "report",
        "--model",
        m3.to_str().unwrap(),
        "--out",
        html.to_str().unwrap(),
    ]));
    let page = std::fs::read_to_string(&html).unwrap();
    // a 3-D model: pairs instead of the density, the layer figure on the plane of its first two columns
    assert!(page.contains("<section id=\"samples\">") && page.contains("<section id=\"layers\">"));
    assert!(page.contains("through the median row"));
    fails(
        &nflow(&[
            "report",
            "--model",
            m3.to_str().unwrap(),
            "--out",
            d.join("r.txt").to_str().unwrap(),
        ]),
        &["r.txt", ".html"],
    );
}

#[test]
fn training_animation_frames() {
    use image::AnimationDecoder as _;
    let d = tmp("frames");
    let m = d.join("m");
    ok(&train_small(
        "toy:moons:600",
        &m,
        &["--flow", "realnvp", "--frames", "10"],
    ));
    let gif = std::fs::File::open(m.join("training.gif")).unwrap();
    let frames = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(gif))
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    // steps 0, 10, 20, 30, 40: the density changes as the flow learns
    assert_eq!(frames.len(), 5);
    assert_ne!(frames[0].buffer(), frames[4].buffer());
    // the model folder still loads (the animation is an extra file in it)
    ok(&nflow(&["info", "--model", m.to_str().unwrap()]));
    fails(
        &train_small("toy:moons:600", &d.join("x"), &["--frames", "0"]),
        &["--frames 0"],
    );
    let csv = d.join("three.csv");
    std::fs::write(&csv, "a,b,c\n1,2,3\n2,1,3\n3,3,1\n0,1,2\n1,0,2\n2,2,0\n").unwrap();
    fails(
        &train_small(
            csv.to_str().unwrap(),
            &d.join("y"),
            &["--frames", "5", "--flow", "maf"],
        ),
        &["2-D"],
    );
}
