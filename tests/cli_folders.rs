//! Model folders: one writer per output, nothing left behind, a failed or cut-short run leaving the model
//! as it was, folders of other files left alone; `nflow info`, and folders that cannot be read (corrupt
//! files, another program's folder, no folder).

mod common;

use common::*;

#[test]
fn a_failed_run_leaves_the_good_model_as_it_was() {
    let d = tmp("failed-run");
    let model = d.join("m");
    ok(&train_small("toy:moons:1000", &model, &[]));
    let before = std::fs::read(model.join("weights.safetensors")).unwrap();
    let bad = d.join("bad.csv");
    std::fs::write(&bad, "x,y\n1,2\n3,abc\n").unwrap();
    fails(&train_small(s(&bad), &model, &[]), &["line 3"]);
    assert_eq!(
        before,
        std::fs::read(model.join("weights.safetensors")).unwrap()
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// An output that is not a model folder is refused at once, before training, and its files stay.
#[test]
fn a_folder_of_other_files_is_refused_at_once_and_kept() {
    let d = tmp("other-files");
    let precious = d.join("precious");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    fails(
        &train_small("toy:moons:300", &precious, &[]),
        &["not an nflow model folder"],
    );
    assert!(precious.join("notes.txt").exists());
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

/// A run holding the output (this test's own process stands for it): refused at once, naming the holder.
#[test]
fn a_held_output_is_refused_naming_its_holder() {
    let d = tmp("held");
    let out = d.join("model");
    std::fs::write(d.join(".model.lock"), std::process::id().to_string()).unwrap();
    let o = train_small("toy:moons", &out, &[]);
    let holder = format!("process {}", std::process::id());
    fails(&o, &["another nflow run", &holder]);
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

/// A dead run's lock is taken over; a successful run removes its checkpoint and its lock.
#[test]
fn a_dead_runs_lock_is_taken_over_and_nothing_left_behind() {
    let d = tmp("dead-lock");
    let out = d.join("model");
    std::fs::write(d.join(".model.lock"), "4294967").unwrap();
    ok(&train_small(
        "toy:moons",
        &out,
        &["--checkpoint-every", "10"],
    ));
    assert!(out.join("weights.safetensors").exists());
    assert!(!d.join("model.ckpt").exists() && !d.join(".model.lock").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

/// A run killed between the two steps of a replacement left the model aside: the next reader puts it back,
/// and the next run clears the leftovers.
#[test]
fn a_replacement_cut_short_is_put_back_by_the_next_reader() {
    let d = tmp("cut-short");
    let out = d.join("model");
    copy_dir(moons_model(), &d.join(".model.old-4294967"));
    std::fs::create_dir_all(d.join(".model.tmp-4294967")).unwrap();
    ok(&cmd("info --model {}", &[&out]));
    assert!(out.join("config.json").exists());
    ok(&train_small("toy:moons", &out, &[]));
    assert!(!d.join(".model.tmp-4294967").exists() && !d.join(".model.old-4294967").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn info_describes_the_model() {
    let info = ok(&cmd("info --model {}", &[&realnvp_model()]));
    assert!(
        info.contains("realnvp") && info.contains("parameters") && info.contains("AffineCoupling"),
        "{info}"
    );
}

#[test]
fn corrupt_weights_and_config_are_named() {
    let d = tmp("corrupt");
    let corrupt = d.join("corrupt");
    copy_dir(moons_model(), &corrupt);
    std::fs::write(
        corrupt.join("weights.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    fails(
        &cmd("info --model {}", &[&corrupt]),
        &["corrupt", "weights.safetensors"],
    );
    std::fs::write(corrupt.join("config.json"), "{ not json").unwrap();
    fails(
        &cmd("eval --model {} --data toy:moons:10", &[&corrupt]),
        &["config.json"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn another_programs_folder_and_a_missing_one_are_refused() {
    let d = tmp("foreign");
    let foreign = d.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(
        foreign.join("config.json"),
        "{\"format\": \"something-else\"}",
    )
    .unwrap();
    fails(
        &cmd("sample --model {} --out x.csv", &[&foreign]),
        &["not an nflow model"],
    );
    fails(
        &cmd("info --model {}", &[&d.join("nothing")]),
        &["no such folder"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}
