//! Image flows (glow, realnvp-multiscale) on 8x8 grey pictures: training and resuming, grids of samples, the
//! report, a picture's latents, the training curve, class-conditional models, and the mistakes named.

mod common;

use common::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The training and test pictures, and the model folder the image flows are trained into.
struct Images {
    data: PathBuf,
    test: PathBuf,
    model: PathBuf,
}

/// Trains `flow` on the pictures with a checkpoint every 4 steps (kept), then continues from the last
/// checkpoint (step 8): the same model.
fn train_and_resume(im: &Images, flow: &str) {
    let line = "train --data {} --test {} --flow {} --layers 1 --hidden 8 --depth 1 --dequantize \
                --steps 12 --batch-size 32 --eval-every 4 --monitor 20 --checkpoint-every 4 \
                --keep-checkpoint --out {} --quiet";
    let args = args(line, &[&im.data, &im.test, &flow, &im.model]);
    let text = ok(&nflow(&args));
    assert!(text.contains("bits/dim"), "{text}");
    let first = std::fs::read(im.model.join("weights.safetensors")).unwrap();
    let mut resume = args.clone();
    resume.push("--resume".into());
    ok(&nflow(&resume));
    assert_eq!(
        first,
        std::fs::read(im.model.join("weights.safetensors")).unwrap(),
        "{flow}"
    );
}

/// A glow, then a realnvp-multiscale in the same folder (2 levels): the model the other tests read.
fn images() -> &'static Images {
    static I: OnceLock<Images> = OnceLock::new();
    I.get_or_init(|| {
        let d = tmp("images");
        let im = Images {
            data: d.join("img.csv"),
            test: d.join("test.csv"),
            model: d.join("glow"),
        };
        write_images(&im.data, 200, 1);
        write_images(&im.test, 40, 2);
        for flow in ["glow", "realnvp-multiscale"] {
            train_and_resume(&im, flow);
        }
        im
    })
}

#[test]
fn image_flows_train_and_resume_to_the_same_model() {
    assert!(images().model.join("config.json").exists());
}

#[test]
fn sample_draws_a_grid_of_pictures() {
    let d = tmp("grid");
    let grid = d.join("grid.png");
    let line = "sample --model {} -n 12 --grid {} --grid-cols 6 --temperature 0.7";
    ok(&cmd(line, &[&images().model, &grid]));
    let bytes = std::fs::read(&grid).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    // 6 x 2 images of 8x8 drawn 7x (56 pixels) with 3-pixel gaps under a title: 374 x 172 pixels (PNG
    // header: width, height at 16..24)
    let size = (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    );
    assert_eq!(size, (374, 172));
}

/// The report of an image model: samples at four temperatures, a test picture's latents, bits/dim.
#[test]
fn image_report_has_bits_per_dim_samples_and_latents() {
    let d = tmp("report");
    let (im, html) = (images(), d.join("r.html"));
    ok(&cmd(
        "report --model {} --data {} --out {}",
        &[&im.model, &im.test, &html],
    ));
    let page = std::fs::read_to_string(&html).unwrap();
    has_sections(&page, &["card", "curve", "test", "samples", "latents"]);
    assert!(page.contains("<th>bits/dim</th>") && page.contains("A line per temperature"));
    assert_eq!(inline_images(&page).len(), 3, "curve, samples, latents");
}

/// A picture's latents per level and pictures rebuilt from them; a negative temperature is named.
#[test]
fn plot_layers_shows_a_pictures_latents_and_rebuilt_pictures() {
    let d = tmp("latents");
    let (im, lat) = (images(), d.join("latents.png"));
    let line = "plot --model {} --layers --data {} --temperatures 0,0.7,1 --out {}";
    ok(&cmd(line, &[&im.model, &im.test, &lat]));
    let img = image::open(&lat).unwrap().to_rgb8();
    // two rows of rebuilt pictures (coarsest level kept, none kept) under the picture and its latents
    assert!(
        img.width() > 3 * 56 && img.height() > 3 * 56,
        "{:?}",
        img.dimensions()
    );
    fails(
        &cmd(
            "plot --model {} --layers --temperatures 0,-1 --out {}",
            &[&im.model, &lat],
        ),
        &["--temperatures", "'-1'"],
    );
}

#[test]
fn curve_writes_the_log_as_csv_and_png() {
    let d = tmp("curve");
    let (csv, png) = (d.join("curve.csv"), d.join("curve.png"));
    ok(&cmd(
        "curve --model {} --csv {} --png {}",
        &[&images().model, &csv, &png],
    ));
    let c = std::fs::read_to_string(&csv).unwrap();
    assert!(
        c.starts_with("step,minutes,epoch,train_bits_per_dim,val_bits_per_dim,test_bits_per_dim")
    );
    assert_eq!(c.lines().count(), 4, "{c}");
}

/// No image shape, a shape that does not fit, an odd size for the squeezes, a zero temperature, and
/// `--resume` without checkpoints: each named.
#[test]
fn image_mistakes_are_named() {
    let d = tmp("mistakes");
    let (im, csv) = (images(), d.join("curve.csv"));
    let (data, out) = (&im.data, &im.model);
    fails(
        &cmd(
            "train --data toy:moons --flow glow --steps 2 --out {}",
            &[&out],
        ),
        &["image shape", "--image-shape"],
    );
    let line = "train --data {} --flow glow --image-shape 1,4,4 --steps 2 --out {}";
    fails(&cmd(line, &[&data, &out]), &["1x4x4", "64 columns"]);
    let line = "train --data {} --flow glow --scales 4 --steps 2 --out {}";
    fails(&cmd(line, &[&data, &out]), &["multiples of 16"]);
    fails(
        &cmd("sample --model {} --out {} --temperature 0", &[&out, &csv]),
        &["temperature"],
    );
    let line = "train --data {} --flow glow --steps 2 --resume --out {}";
    fails(&cmd(line, &[&data, &out]), &["--checkpoint-every"]);
}

/// 120 pictures with a label column (the blob kind), and a glow given the label one-hot.
fn class_model() -> &'static (PathBuf, PathBuf) {
    static M: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    M.get_or_init(|| {
        let d = tmp("classcond");
        let data = d.join("img.csv");
        write_images(&data, 120, 3);
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
        let line = "train --data {} --flow glow --layers 1 --hidden 8 --context label \
                    --context-one-hot --dequantize --steps 6 --batch-size 30 --out {} --quiet";
        ok(&cmd(line, &[&data, &model]));
        (data, model)
    })
}

#[test]
fn class_conditional_image_flow_samples_given_a_label() {
    let d = tmp("class-grid");
    let model = &class_model().1;
    let cfg = std::fs::read_to_string(model.join("config.json")).unwrap();
    assert!(cfg.contains("\"context_dim\": 2"), "{cfg}");
    let grid = d.join("g.png");
    ok(&cmd(
        "sample --model {} --context 1 -n 4 --grid {}",
        &[&model, &grid],
    ));
    assert!(grid.exists());
}

/// The report of a class-conditional image model: samples per class, a picture's latents.
#[test]
fn class_conditional_report_has_samples_per_class() {
    let d = tmp("class-report");
    let ((data, model), html) = (class_model(), d.join("r.html"));
    ok(&cmd(
        "report --model {} --data {} --out {}",
        &[&model, &data, &html],
    ));
    let page = std::fs::read_to_string(&html).unwrap();
    has_sections(&page, &["card", "test", "samples", "latents"]);
    assert!(page.contains("A line per context row of the data (2 of them)"));
    assert!(page.contains("bits/dim"));
    for im in inline_images(&page) {
        assert!(im.width() > 200 && im.height() > 100);
    }
}

/// `eval` reads the label column by name; a label the model never saw is an error naming it.
#[test]
fn class_labels_are_read_by_name_and_unknown_ones_named() {
    let d = tmp("class-labels");
    let (data, model) = class_model();
    let text = ok(&cmd("eval --model {} --data {}", &[&model, &data]));
    assert!(text.contains("bits/dim"));
    fails(
        &cmd(
            "sample --model {} --context 2 -n 2 --out {}",
            &[&model, &d.join("s.csv")],
        ),
        &["'label'", "class label"],
    );
}

#[test]
fn context_one_hot_needs_a_context() {
    let (data, model) = class_model();
    fails(
        &cmd(
            "train --data {} --context-one-hot --steps 2 --out {}",
            &[&data, &model],
        ),
        &["--context"],
    );
}
