//! Checkpoints of a training run: the trainer's state record ([`TrainState`]) and what a resume checks it
//! against (the data's fingerprint, the options that differ), and the files shared with reverse-KL training
//! (`vi.rs`): writing a checkpoint folder (the model, a JSON state record, a safetensors file of Adam's moments
//! and the best weights) and reading its parts back.

use super::{LogEntry, TrainConfig};
use crate::data::Table;
use crate::flows::FlowConfig;
use crate::io::Model;
use crate::optim::Adam;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// What a checkpoint holds besides the model (weights and buffers are in the model folder).
#[derive(Serialize, Deserialize)]
pub(super) struct TrainState {
    pub(super) flow: FlowConfig,
    pub(super) cfg: TrainConfig,
    pub(super) step: usize,
    pub(super) adam_t: i32,
    pub(super) rng_word_pos: String,
    pub(super) order: Vec<usize>,
    pub(super) pos: usize,
    pub(super) best_step: Option<usize>,
    pub(super) best_val: Option<f64>,
    pub(super) since_best: usize,
    pub(super) acc: (f64, usize),
    pub(super) last_train: f64,
    pub(super) seconds: f64,
    pub(super) log: Vec<LogEntry>,
    /// A hash of the training rows (and context), so a resume on other data of the same size is refused.
    #[serde(default)]
    pub(super) data_fingerprint: Option<String>,
    /// The plateau schedule's reductions so far.
    #[serde(default)]
    pub(super) lr_decays: usize,
}

/// FNV-1a over the column names and the values' bits of the tables: what a checkpoint remembers of its data.
pub(super) fn fingerprint(tables: &[Option<&Table>]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for t in tables.iter().flatten() {
        for c in &t.columns {
            eat(c.as_bytes());
            eat(&[0]);
        }
        for v in &t.data {
            eat(&v.to_le_bytes());
        }
    }
    format!("{h:016x}")
}

/// The options in which two training configurations differ, by name (for a refused resume).
pub(super) fn differing_options(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    let (va, vb) = (
        serde_json::to_value(a).expect("config serialises"),
        serde_json::to_value(b).expect("config serialises"),
    );
    let mut out = Vec::new();
    if let (Some(ma), Some(mb)) = (va.as_object(), vb.as_object()) {
        for (k, x) in ma {
            if mb.get(k) != Some(x) {
                out.push(format!(
                    "{k} ({x} in the checkpoint, {} now)",
                    mb.get(k).unwrap_or(&serde_json::Value::Null)
                ));
            }
        }
    }
    out
}

/// A checkpoint's model folder (the weights when it was written) and its state record `json`, read back;
/// errors name the folder and the file.
pub(crate) fn read_checkpoint_state<S: serde::de::DeserializeOwned>(
    dir: &std::path::Path,
    json: &str,
) -> Result<(Model, S)> {
    let bad = |msg: String| Error::Model {
        path: dir.display().to_string(),
        msg,
    };
    let model = Model::load(dir)?;
    let text = std::fs::read_to_string(dir.join(json)).map_err(|e| bad(format!("{json}: {e}")))?;
    let st = serde_json::from_str(&text)
        .map_err(|e| bad(format!("{json}: {}", crate::json_error(&e))))?;
    Ok((model, st))
}

/// A checkpoint's tensors file: Adam's two moments and the best weights so far, by group.
pub(crate) struct CheckpointTensors {
    pub adam_m: Vec<Vec<f32>>,
    pub adam_v: Vec<Vec<f32>>,
    pub best: Vec<Vec<f32>>,
}

pub(crate) fn read_checkpoint_tensors(
    dir: &std::path::Path,
    name: &str,
) -> Result<CheckpointTensors> {
    let bad = |msg: String| Error::Model {
        path: dir.display().to_string(),
        msg,
    };
    let bytes = std::fs::read(dir.join(name)).map_err(|e| bad(format!("{name}: {e}")))?;
    let ts =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{name}: {e}")))?;
    Ok(CheckpointTensors {
        adam_m: read_group(&ts, "adam_m"),
        adam_v: read_group(&ts, "adam_v"),
        best: read_group(&ts, "best"),
    })
}

/// The noise stream's position as a checkpoint stores it (a decimal string: it does not fit JSON's numbers).
pub(crate) fn checkpoint_word_pos(dir: &std::path::Path, s: &str) -> Result<u128> {
    s.parse().map_err(|_| Error::Model {
        path: dir.display().to_string(),
        msg: "rng_word_pos is not a number".into(),
    })
}

/// Write a checkpoint: `model` (the current weights) as the folder `dir`, with the state record as `json` and
/// the optimiser's moments and the best weights so far as `tensors` beside it.
pub(crate) fn write_checkpoint<S: Serialize>(
    model: &Model,
    dir: &std::path::Path,
    (json, tensors): (&str, &str),
    state: &S,
    opt: &Adam<f32>,
    best: Option<&Vec<Vec<f32>>>,
) -> Result<()> {
    let (m, v, _) = opt.state();
    let empty: Vec<Vec<f32>> = Vec::new();
    let t = tensors_bytes(&[
        ("adam_m", m),
        ("adam_v", v),
        ("best", best.unwrap_or(&empty)),
    ]);
    let j = serde_json::to_vec(state).expect("state serialises");
    model.save_with(dir, &[(json, j), (tensors, t)])
}

pub(crate) const STATE_JSON: &str = "trainer_state.json";
pub(crate) const STATE_TENSORS: &str = "trainer_state.safetensors";

fn tensors_bytes(groups: &[(&str, &[Vec<f32>])]) -> Vec<u8> {
    use safetensors::{tensor::TensorView, Dtype};
    let bytes: Vec<(String, Vec<u8>)> = groups
        .iter()
        .flat_map(|(g, vs)| {
            vs.iter().enumerate().map(move |(i, v)| {
                (
                    format!("{g}.{i}"),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, vec![b.len() / 4], b).expect("consistent shape"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serialisable tensors")
}

fn read_group(st: &safetensors::SafeTensors, g: &str) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    while let Ok(t) = st.tensor(&format!("{g}.{}", out.len())) {
        out.push(
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        );
    }
    out
}
