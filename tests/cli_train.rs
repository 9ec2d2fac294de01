//! `nflow train`: what a run writes, the names and sizes it refuses, a run that made the model worse, the
//! defaults it chooses, architecture files and `--map`, and the training animation (model folders, their
//! locks and leftovers are in cli_folders.rs).

mod common;

use common::*;
use std::sync::OnceLock;

#[test]
fn train_writes_config_weights_and_a_log() {
    let model = realnvp_model();
    for f in ["config.json", "weights.safetensors", "train_log.jsonl"] {
        assert!(model.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(model.join("train_log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(first["val_nll"].is_number() && first["step"].is_number());
}

#[test]
fn unknown_names_are_refused_and_leave_no_folder() {
    let d = tmp("names");
    let model = d.join("m");
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
    fails(
        &train_small("toy:moons:500", &model, &["--drop", "zz"]),
        &["unknown column 'zz'"],
    );
    assert!(!model.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_run_that_ends_worse_than_it_started_is_reported() {
    let d = tmp("worse");
    let out = d.join("m");
    // a learning rate far too large: finishes, but below the untrained flow's validation log-likelihood
    let o = train_small("toy:moons", &out, &["--lr", "1"]);
    ok(&o);
    let err = stderr(&o);
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
    assert!(!stderr(&o).contains("made the model worse"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_model_too_large_for_memory_is_refused_before_any_work() {
    let d = tmp("too-large");
    let out = d.join("m");
    fails(
        &cmd("train --data toy:moons --hidden 1000000 --out {}", &[&out]),
        &["parameters", "GB", "memory available", "layers[0]"],
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn defaults_choose_a_flow_and_a_budget_and_say_so() {
    let d = tmp("auto");
    let m = d.join("m");
    let o = cmd("train --data toy:moons:600 --patience 2 --out {}", &[&m]);
    ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("chose nsf-ar with 5 layers")
            && err.contains("validation every 50 steps")
            && err.contains("stop at the plateau after 3 reductions"),
        "{err}"
    );
    // the plateau schedule ended the run (2 evaluations per plateau, 4 plateaus) well before the cap
    let info = ok(&cmd("info --model {}", &[&m]));
    assert!(
        info.contains("nsf-ar")
            && info.contains("stopped at a plateau after 3 learning-rate halvings"),
        "{info}"
    );
    let log = std::fs::read_to_string(m.join("train_log.jsonl")).unwrap();
    let lrs: Vec<f64> = log
        .lines()
        .map(|l| json(l)["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs[0], 1e-3);
    assert_eq!(*lrs.last().unwrap(), 1.25e-4, "three halvings");
    assert!(lrs.len() < 10_000 / 50);
    std::fs::remove_dir_all(&d).unwrap();
}

/// An explicit budget keeps the old behaviour: no chosen-flow line for a named flow.
#[test]
fn a_named_flow_and_budget_print_no_choice() {
    let d = tmp("named");
    let o = cmd(
        "train --data toy:moons:300 --flow maf --steps 20 --out {}",
        &[&d.join("n")],
    );
    ok(&o);
    assert!(!stderr(&o).contains("chose"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_plateau_schedule_needs_validation_rows() {
    let d = tmp("plateau");
    fails(
        &cmd(
            "train --data toy:moons:300 --schedule plateau --val-fraction 0 --out {}",
            &[&d.join("p")],
        ),
        &["plateau", "validation"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A maf with `--map sinh-arcsinh`, trained once for the tests of `--map` and `--arch`.
fn sinh_arcsinh_model() -> &'static std::path::Path {
    static M: OnceLock<std::path::PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let m = tmp("sas").join("sas");
        ok(&train_small(
            "toy:moons",
            &m,
            &["--flow", "maf", "--map", "sinh-arcsinh"],
        ));
        m
    })
}

/// `--map` swaps a preset's element-wise map.
#[test]
fn map_swaps_a_presets_elementwise_map() {
    let info = ok(&cmd("info --model {}", &[&sinh_arcsinh_model()]));
    assert!(
        info.contains("SinhArcsinhAR") && info.contains("map            sinh-arcsinh"),
        "{info}"
    );
}

/// The model's own `flow` (from config.json, with dim left out) trains again as an architecture file.
#[test]
fn a_saved_flow_trains_again_as_an_architecture_file() {
    let d = tmp("arch-json");
    let m = sinh_arcsinh_model();
    let cfg = json(&std::fs::read_to_string(m.join("config.json")).unwrap());
    let mut flow = cfg["flow"].clone();
    flow.as_object_mut().unwrap().remove("dim");
    let arch = d.join("flow.json");
    std::fs::write(&arch, flow.to_string()).unwrap();
    let a = d.join("from-json");
    ok(&cmd(
        "train --data toy:moons --arch {} --steps 40 --quiet --out {}",
        &[&arch, &a],
    ));
    let cfg2 = json(&std::fs::read_to_string(a.join("config.json")).unwrap());
    assert_eq!(cfg2["flow"]["layers"], cfg["flow"]["layers"]);
    assert!(cfg2.get("preset").is_none());
    let _ = std::fs::remove_dir_all(&d);
}

/// `--arch` trains a layer list from TOML, and the model evaluates.
#[test]
fn a_toml_architecture_trains_and_evaluates() {
    let d = tmp("arch-toml");
    let toml = d.join("flow.toml");
    std::fs::write(
        &toml,
        "[[layers]]\ntype = \"coupling\"\nmap = { type = \"rq-spline\", bins = 4 }\n\n\
         [[layers]]\ntype = \"coupling\"\nindex = 1\n",
    )
    .unwrap();
    let t = d.join("from-toml");
    ok(&cmd(
        "train --data toy:moons --arch {} --steps 40 --quiet --out {}",
        &[&toml, &t],
    ));
    ok(&cmd("eval --model {} --data toy:moons:500", &[&t]));
    let _ = std::fs::remove_dir_all(&d);
}

/// A bad architecture file names the file and the layer; a bad `--map` names the known maps.
#[test]
fn bad_architecture_files_and_maps_are_named() {
    let d = tmp("arch-bad");
    let arch = d.join("flow.json");
    std::fs::write(
        &arch,
        r#"{"layers": [{"type": "coupling"}, {"type": "frobnicate"}]}"#,
    )
    .unwrap();
    let o = cmd(
        "train --data toy:moons --arch {} --out {}",
        &[&arch, &d.join("x")],
    );
    fails(
        &o,
        &["flow.json", "layers[1]", "unknown layer type 'frobnicate'"],
    );
    let o = cmd(
        "train --data toy:moons --map spline --out {}",
        &[&d.join("y")],
    );
    fails(&o, &["--map spline", "rq-spline"]);
    let _ = std::fs::remove_dir_all(&d);
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
    ok(&cmd("info --model {}", &[&m]));
}

/// `--frames 0` is refused, and so is an animation of data that is not 2-D.
#[test]
fn training_animation_options_are_checked() {
    let d = tmp("frames-bad");
    fails(
        &train_small("toy:moons:600", &d.join("x"), &["--frames", "0"]),
        &["--frames 0"],
    );
    let csv = d.join("three.csv");
    write_three_columns(&csv);
    fails(
        &train_small(s(&csv), &d.join("y"), &["--frames", "5", "--flow", "maf"]),
        &["2-D"],
    );
}
