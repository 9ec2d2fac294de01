//! Models saved by earlier versions keep loading and give the same bits.
//!
//! `tests/fixtures/v1/NAME/model` are version-1 model folders written by nflow before flows became lists of
//! layer configs; beside each, `eval.csv` (rows to score), `log_prob.csv` (their log-densities as that nflow
//! wrote them, `nflow eval --per-sample`) and `samples.csv` (`nflow sample -n 10 --seed 5`, `--context 0.5`
//! for the conditional ones). Every value must come out bit for bit the same.
//!
//! `tests/fixtures/v2/NAME` are version-2 folders in the same layout, written by the nflow of commit cd44f8b
//! (the first with the vectorised spline kernel and the direct convolution in the config) before the
//! convolution's AVX2 tiles: a Glow whose couplings' last convolutions run directly (hidden width 16, digits
//! as 1x8x8 images, `--dequantize --levels 17`) and nsf-ar / nsf-c with the vectorised spline kernel (magic04),
//! each trained 100-150 steps so that no layer is the identity.

use nflow::{data, Model};
use std::path::{Path, PathBuf};

const V1: &[&str] = &[
    "realnvp",
    "nice",
    "maf-ctx",
    "mafmog-embed",
    "nsfar-mix",
    "nsfc",
    "iaf",
    "glow",
    "rnvpms",
];

const V2: &[&str] = &["glow-direct", "nsfar-vec", "nsfc-vec"];

fn dir(version: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(version)
        .join(name)
}

fn column(path: &Path) -> Vec<f64> {
    data::load_source(path.to_str().unwrap(), 0, 0)
        .unwrap()
        .data
}

#[test]
fn version_1_models_give_the_same_log_probs_and_samples() {
    same_bits("v1", V1);
}

#[test]
fn version_2_models_give_the_same_log_probs_and_samples() {
    same_bits("v2", V2);
}

fn same_bits(version: &str, names: &[&str]) {
    for name in names {
        let d = dir(version, name);
        let model = Model::load(&d.join("model")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let full = data::load_source(d.join("eval.csv").to_str().unwrap(), 0, 0).unwrap();
        let ctx = model.select_context(&full).unwrap();
        let t = model.select_columns(full).unwrap();
        let lp = model.log_prob_ctx(&t, ctx.as_ref()).unwrap();
        let want = column(&d.join("log_prob.csv"));
        assert_eq!(lp.len(), want.len(), "{name}");
        for (i, (a, b)) in lp.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}: row {i}: {a} != {b}");
        }
        let ctx = (!model.context_columns.is_empty()).then(|| {
            let k = model.context_columns.len();
            data::Table::new(model.context_columns.clone(), 10, vec![0.5; 10 * k], "ctx")
        });
        let s = model.sample(10, 5, ctx.as_ref()).unwrap();
        // (the CLI writes a conditional model's context columns beside the samples)
        let want = data::load_source(d.join("samples.csv").to_str().unwrap(), 0, 0)
            .unwrap()
            .select(Some(&model.columns), &[])
            .unwrap();
        assert_eq!(s.columns, want.columns, "{name}");
        for (i, (a, b)) in s.data.iter().zip(&want.data).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name}: sample value {i}: {a} != {b}"
            );
        }
    }
}
