//! Nothing lost, nothing overwritten: outputs replace only what nflow wrote, temporary files cannot be
//! redirected through links planted at their names, and a load that overlaps saves sees one save, never a mix.

use nflow::data::{toy, write_csv, Table};
use nflow::flows::{FlowKind, FlowSpec};
use nflow::train::{TrainConfig, Trainer};
use nflow::Model;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nflow-safety-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn model(seed: u64) -> Model {
    let t = toy("moons", 2000, seed).unwrap();
    let mut spec = FlowSpec::preset(FlowKind::Realnvp, 2);
    spec.layers = 2;
    spec.hidden = 16;
    spec.seed = seed;
    let cfg = TrainConfig {
        steps: Some(30),
        batch_size: 64,
        seed,
        ..TrainConfig::default()
    };
    Trainer::new(cfg).fit(spec, &t, None, |_| {}).unwrap().model
}

fn bits(m: &Model, t: &Table) -> Vec<u64> {
    m.log_prob_table(t)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn a_folder_nflow_did_not_write_is_never_replaced() {
    let d = scratch("replace");
    let m = model(1);
    // a Hugging Face model folder: its config.json is not nflow's
    let hf = d.join("hf");
    fs::create_dir_all(&hf).unwrap();
    fs::write(hf.join("config.json"), "{}").unwrap();
    fs::write(hf.join("pytorch_model.bin"), "weights").unwrap();
    let e = m.save(&hf).unwrap_err().to_string();
    assert!(e.contains("not an nflow model folder"), "{e}");
    assert_eq!(
        fs::read_to_string(hf.join("pytorch_model.bin")).unwrap(),
        "weights"
    );
    // a regular file where the folder would go
    fs::write(d.join("file"), "mine").unwrap();
    assert!(m.save(&d.join("file")).is_err());
    assert_eq!(fs::read_to_string(d.join("file")).unwrap(), "mine");
    // nflow's own folder is replaced; with a file of the user's added it is not
    let own = d.join("own");
    m.save(&own).unwrap();
    model(2).save(&own).unwrap();
    fs::write(own.join("notes.txt"), "mine").unwrap();
    let e = m.save(&own).unwrap_err().to_string();
    assert!(e.contains("notes.txt"), "{e}");
    assert_eq!(fs::read_to_string(own.join("notes.txt")).unwrap(), "mine");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
#[cfg(unix)]
fn links_planted_at_the_old_temporary_names_are_not_followed() {
    let d = scratch("links");
    let victim = d.join("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("important"), "keep").unwrap();
    let pid = std::process::id();
    // the names a save and a table write used before: `.NAME.tmp-PID`
    std::os::unix::fs::symlink(&victim, d.join(format!(".m.tmp-{pid}"))).unwrap();
    std::os::unix::fs::symlink(
        victim.join("important"),
        d.join(format!(".out.csv.tmp-{pid}")),
    )
    .unwrap();
    let m = model(1);
    m.save(&d.join("m")).unwrap();
    write_csv(&d.join("out.csv"), &toy("moons", 10, 0).unwrap()).unwrap();
    assert_eq!(
        fs::read_to_string(victim.join("important")).unwrap(),
        "keep"
    );
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 1);
    assert!(Model::load(&d.join("m")).is_ok());
    assert_eq!(
        fs::read_to_string(d.join("out.csv"))
            .unwrap()
            .lines()
            .count(),
        11
    );
    fs::remove_dir_all(&d).unwrap();
}

/// Two models saved in turn into one folder while another thread loads it: every load is one of the two.
#[test]
fn loads_racing_saves_see_one_save_or_the_other() {
    let d = scratch("race");
    let dir = d.join("m");
    let (a, b) = (model(1), model(2));
    let probe = toy("moons", 64, 9).unwrap();
    let (ba, bb) = (bits(&a, &probe), bits(&b, &probe));
    assert_ne!(ba, bb);
    a.save(&dir).unwrap();
    let stop = AtomicBool::new(false);
    let (mut loads, mut mixed, mut saves) = (0usize, 0usize, 0usize);
    std::thread::scope(|s| {
        let saver = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let m = if n % 2 == 0 { &b } else { &a };
                m.save(&dir).unwrap();
                n += 1;
            }
            n
        });
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) || loads < 200 {
            let m = Model::load(&dir).unwrap_or_else(|e| panic!("load {loads}: {e}"));
            let got = bits(&m, &probe);
            if got != ba && got != bb {
                mixed += 1;
            }
            loads += 1;
        }
        stop.store(true, Ordering::Relaxed);
        saves = saver.join().unwrap();
    });
    eprintln!("{loads} loads during {saves} saves, {mixed} mixed");
    assert!(saves >= 20, "only {saves} saves overlapped the loads");
    assert_eq!(mixed, 0, "{mixed} of {loads} loads matched neither model");
    fs::remove_dir_all(&d).unwrap();
}

/// A folder whose weights were replaced by something else fails to load, naming the file.
#[test]
fn weights_that_do_not_match_their_checksum_are_refused() {
    let d = scratch("sum");
    let (a, b) = (model(1), model(2));
    a.save(&d.join("a")).unwrap();
    b.save(&d.join("b")).unwrap();
    fs::copy(
        d.join("b").join("weights.safetensors"),
        d.join("a").join("weights.safetensors"),
    )
    .unwrap();
    let e = Model::load(&d.join("a")).err().unwrap().to_string();
    assert!(e.contains("weights.safetensors does not match"), "{e}");
    fs::remove_dir_all(&d).unwrap();
}

/// A pipe or a device where a model file belongs is an error at once, never a wait or an endless read.
#[test]
#[cfg(target_os = "linux")]
fn special_files_in_a_model_folder_are_refused_without_waiting() {
    let d = scratch("special");
    let m = model(1);
    m.save(&d.join("m")).unwrap();
    let w = d.join("m").join("weights.safetensors");
    fs::remove_file(&w).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &w).unwrap();
    let e = Model::load(&d.join("m")).err().unwrap().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let c = d.join("m").join("config.json");
    fs::remove_file(&c).unwrap();
    let fifo = std::ffi::CString::new(c.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let t0 = Instant::now();
    let e = Model::load(&d.join("m")).err().unwrap().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    fs::remove_dir_all(&d).unwrap();
}

/// A FIFO (or any pipe) given as data is read once, whole: nothing sniffs its first bytes away.
#[test]
#[cfg(target_os = "linux")]
fn a_fifo_as_data_is_read_whole() {
    let d = scratch("fifo");
    let fifo = d.join("rows.csv");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let text: String = std::iter::once("x,y\n".to_string())
        .chain((0..500).map(|i| format!("{i},{}\n", i * 2)))
        .collect();
    let writer = {
        let (f, t) = (fifo.clone(), text.clone());
        std::thread::spawn(move || fs::write(f, t).unwrap())
    };
    let t = nflow::data::load_source(fifo.to_str().unwrap(), 0, 0).unwrap();
    writer.join().unwrap();
    assert_eq!(
        (t.rows, t.columns.clone()),
        (500, vec!["x".into(), "y".into()])
    );
    assert_eq!(t.row(0), &[0.0, 0.0]);
    fs::remove_dir_all(&d).unwrap();
}

/// Sizes no machine holds are refused before any allocation, with the size in the message.
#[test]
fn sizes_past_memory_are_refused_up_front() {
    use nflow::dist::BaseKind;
    for (kind, base) in [
        (FlowKind::Maf, BaseKind::Mixture),
        (FlowKind::Maf, BaseKind::MadeMog),
    ] {
        let spec = FlowSpec {
            base: Some(base),
            components: 1_000_000_000_000,
            ..FlowSpec::preset(kind, 2)
        };
        let e = spec.build::<f32>().err().unwrap().to_string();
        assert!(e.contains("GB") && e.contains("the base"), "{e}");
    }
    let e = nflow::data::load_source("toy:moons:1000000000000", 0, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("GB"), "{e}");
    let e = nflow::train::targets::by_name::<f32>("mix:2:1000000000000")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("GB"), "{e}");
}

/// Options outside their range are errors naming the option, not silently wrong results.
#[test]
fn options_out_of_range_are_errors_naming_them() {
    let t = toy("moons", 500, 0).unwrap();
    let fit = |cfg: TrainConfig, spec: FlowSpec| {
        Trainer::new(cfg)
            .fit(spec, &t, None, |_| {})
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let small = || FlowSpec {
        layers: 1,
        hidden: 8,
        ..FlowSpec::preset(FlowKind::NsfC, 2)
    };
    let steps = || TrainConfig {
        steps: Some(5),
        ..TrainConfig::default()
    };
    for clip in [-1.0, 0.0, f64::NAN] {
        let e = fit(
            TrainConfig {
                clip: Some(clip),
                ..steps()
            },
            small(),
        );
        assert!(e.contains("clip"), "clip {clip}: {e}");
    }
    for tail in [1e10, 1e5, 0.0, -1.0] {
        let e = fit(
            steps(),
            FlowSpec {
                tail_bound: tail,
                ..small()
            },
        );
        assert!(e.contains("tail bound"), "tail bound {tail}: {e}");
    }
    for bins in [0, 1000] {
        let e = fit(steps(), FlowSpec { bins, ..small() });
        assert!(e.contains("bins"), "bins {bins}: {e}");
    }
    let e = fit(
        steps(),
        FlowSpec {
            scale: nflow::transforms::ScaleBound::SoftClamp { bound: 1e3 },
            ..FlowSpec::preset(FlowKind::Realnvp, 2)
        },
    );
    assert!(e.contains("scale bound"), "{e}");
    let mut bad_beta = steps();
    bad_beta.optim.beta1 = 1.0;
    assert!(fit(bad_beta, small()).contains("beta1"));
    // the largest tail bound is accepted
    assert!(fit(
        steps(),
        FlowSpec {
            tail_bound: 100.0,
            ..small()
        }
    )
    .is_empty());
}
