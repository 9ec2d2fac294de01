//! The fuzz targets' minimised corpora (`fuzz/corpus/TARGET/`, made by `cargo fuzz cmin` after the runs that
//! `docs/fuzzing.md` reports) and their crash regressions, run as ordinary tests: every file goes through the
//! same code as its target (`fuzz/fuzz_targets/*.rs`) and must give a value or an error, never a panic.

use std::path::PathBuf;

fn files(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "{}: empty corpus", dir.display());
    v
}

#[test]
fn csv_corpus() {
    for f in files("csv") {
        let _ = nflow::data::read_csv(&f);
    }
}

#[test]
fn npy_corpus() {
    for f in files("npy") {
        let _ = nflow::data::read_npy(&f);
    }
}

#[test]
fn idx_corpus() {
    for f in files("idx") {
        let _ = nflow::data::read_idx(&f);
    }
}

#[test]
fn model_bytes_corpus() {
    for f in files("model_bytes") {
        let data = std::fs::read(&f).unwrap();
        if let Ok(m) = nflow::Model::from_bytes(&data) {
            let t =
                nflow::data::Table::new(m.columns.clone(), 1, vec![0.5; m.columns.len()], "fuzz");
            let _ = m.log_prob_table(&t);
        }
    }
}

#[test]
fn flow_config_corpus() {
    for f in files("flow_config") {
        let data = std::fs::read(&f).unwrap();
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        let Ok(cfg) = serde_json::from_str::<nflow::flows::FlowConfig>(text) else {
            continue;
        };
        if cfg.approx_params().0 > 5_000_000 || cfg.dim > 4096 {
            continue;
        }
        if let Ok(flow) = cfg.build::<f32>() {
            let x = nflow::Mat::zeros(2, cfg.dim);
            let c = (cfg.context_dim > 0).then(|| nflow::Mat::zeros(2, cfg.context_dim));
            let _ = flow.log_prob(&x, c.as_ref());
        }
    }
}

#[test]
fn png_corpus() {
    let d = std::env::temp_dir().join(format!("nflow-png-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let mut read = 0;
    for f in files("png") {
        std::fs::copy(&f, d.join("a.png")).unwrap();
        read += nflow::data::load_png_folder(&d).is_ok() as usize;
    }
    assert!(read >= 4, "the seed images did not read");
    std::fs::remove_dir_all(&d).unwrap();
}
