//! A model on disk is a folder: `config.json` (format version, the architecture, column names, data
//! normalisation, training summary) + `weights.safetensors` (every parameter and buffer, by name) +
//! `train_log.jsonl`.
//!
//! Versions: 2 stores the architecture as a list of layers (`flow`, a [`FlowConfig`]) and the preset's options
//! it came from, if any (`preset`); 1 (nflow before layer lists) stored only the preset's options (`flow`, a
//! [`FlowSpec`]), which are turned into the same layers on loading.
//! Folders are written atomically: into a temporary sibling folder, then renamed into place, so an
//! interrupted save never leaves a half-written model where a good one was.

pub mod output;

pub use output::OutputLock;

use crate::data::{Preprocess, Standardizer, Table};
use crate::engine::{rng, Mat};
use crate::flows::{Flow, FlowConfig, FlowSpec};
use crate::{Error, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FORMAT: &str = "nflow-model";
pub const VERSION: u32 = 2;
/// The oldest version this nflow reads.
pub const OLDEST_VERSION: u32 = 1;
const CONFIG: &str = "config.json";
/// Dequantisation noise of evaluations (a seed of its own: not the training default's noise stream), so
/// repeated evaluations agree.
const EVAL_NOISE_SEED: u64 = 0x6576_616c;
const WEIGHTS: &str = "weights.safetensors";
const LOG: &str = "train_log.jsonl";

/// Per-column standardisation as stored in `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// What training did, stored with the model and shown by `nflow info`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub data: String,
    pub n_train: usize,
    pub n_val: usize,
    pub steps: usize,
    pub best_step: usize,
    pub seconds: f64,
    /// Validation mean log-likelihood (nats per example, data units) of the saved weights.
    pub best_val_log_prob: Option<f64>,
    pub final_train_nll: f64,
    pub stopped_early: bool,
    /// Validation mean log-likelihood of the untrained flow (fresh runs with a validation split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_val_log_prob: Option<f64>,
    pub config: serde_json::Value,
    /// Log-densities of the held-out validation rows under the saved weights, ascending: all of them, or
    /// evenly spaced order statistics of them when there are more than
    /// [`crate::train::scores::REFERENCE_POINTS`] (`nflow score` ranks new rows among them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_log_probs: Vec<f64>,
    /// Fitted by the weighted likelihood (a weight per row); the validation figures are weighted means.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weighted: bool,
    /// Learning-rate reductions made by the plateau schedule.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lr_decays: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ConfigFile {
    format: String,
    version: u32,
    dtype: String,
    flow: FlowConfig,
    /// The preset's options the architecture was made from (none for an architecture composed by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preset: Option<FlowSpec>,
    columns: Vec<String>,
    #[serde(default)]
    context_columns: Vec<String>,
    normalization: Normalization,
    #[serde(default)]
    context_normalization: Option<Normalization>,
    /// Categorical context: classes per context column (fed one-hot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    context_classes: Vec<usize>,
    /// Dequantisation / logit applied before the normalisation.
    #[serde(default)]
    preprocess: Option<Preprocess>,
    #[serde(default)]
    training: Option<TrainSummary>,
    /// The other files' sizes and checksums: a load that overlaps a save could otherwise pair this config with
    /// the other save's weights (folders written before it have none, and load unchecked).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    files: BTreeMap<String, FileSum>,
}

/// A file's size and CRC-32 as `config.json` records them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct FileSum {
    bytes: u64,
    crc32: String,
}

impl FileSum {
    fn of(bytes: &[u8]) -> FileSum {
        FileSum {
            bytes: bytes.len() as u64,
            crc32: format!("{:08x}", crc32fast::hash(bytes)),
        }
    }
}

/// Only the checksums of a `config.json` (read before the files they cover).
#[derive(Deserialize)]
struct FileSums {
    #[serde(default)]
    files: BTreeMap<String, FileSum>,
}

/// A trained flow with everything needed to use it on raw data: the density is reported in the units of
/// the data the user gave (the standardisation Jacobian is included).
pub struct Model {
    /// The architecture (what [`Model::load`] rebuilds before reading the weights).
    pub arch: FlowConfig,
    /// The preset it was made from, if any.
    pub preset: Option<FlowSpec>,
    pub flow: Flow<f32>,
    pub columns: Vec<String>,
    pub norm: Standardizer,
    pub context_columns: Vec<String>,
    pub context_norm: Option<Standardizer>,
    /// Classes of each context column when the context is categorical (fed one-hot; empty: numeric context).
    pub context_classes: Vec<usize>,
    /// Dequantisation / logit applied to the data before the normalisation; its Jacobian is part of every
    /// reported log-likelihood, and samples are mapped back through it.
    pub preprocess: Option<Preprocess>,
    pub summary: Option<TrainSummary>,
    /// JSON lines of the training log, saved as `train_log.jsonl`.
    pub log: Vec<String>,
}

fn to_norm(s: &Standardizer) -> Normalization {
    Normalization {
        mean: s.mean.clone(),
        std: s.std.clone(),
    }
}

fn from_norm(n: &Normalization) -> Standardizer {
    Standardizer {
        mean: n.mean.clone(),
        std: n.std.clone(),
    }
}

impl Model {
    pub fn dim(&self) -> usize {
        self.arch.dim
    }

    /// The model's columns of a table: by name when the table has them all (a label column, say, is left
    /// out), else the table as is if it has the right number of columns; otherwise an error naming both.
    pub fn select_columns(&self, t: Table) -> Result<Table> {
        if t.columns != self.columns && self.columns.iter().all(|c| t.columns.contains(c)) {
            return Ok(t.select(Some(&self.columns), &[])?);
        }
        if t.cols != self.dim() {
            return Err(self.column_mismatch(&t));
        }
        // matched by position: a text column among them would shift the others
        t.check_numeric()?;
        Ok(t)
    }

    /// The context columns of a conditional model, read from `t` by name (`None` for an unconditional model).
    pub fn select_context(&self, t: &Table) -> Result<Option<Table>> {
        if self.context_columns.is_empty() {
            return Ok(None);
        }
        let missing: Vec<&str> = self
            .context_columns
            .iter()
            .filter(|c| !t.columns.contains(c))
            .map(|c| c.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Shape(format!(
                "{}: the model is conditional on {}, but the file has no column {}",
                t.source,
                self.context_columns.join(", "),
                missing.join(", ")
            )));
        }
        Ok(Some(t.select(Some(&self.context_columns), &[])?))
    }

    fn column_mismatch(&self, t: &Table) -> Error {
        Error::Shape(format!(
            "{}: has {} columns ({}), the model expects {} ({})",
            t.source,
            t.cols,
            t.columns.join(", "),
            self.dim(),
            self.columns.join(", ")
        ))
    }

    /// Standardised `f32` matrix of a table's rows, after checking its column count.
    fn prepare(&self, t: &Table) -> Result<Mat<f32>> {
        if t.cols != self.dim() {
            return Err(self.column_mismatch(t));
        }
        t.check_finite()?;
        let mut v = t.data.clone();
        self.norm.apply(&mut v);
        Ok(Mat::from_f64(t.rows, t.cols, &v))
    }

    fn prepare_ctx(&self, ctx: Option<&Table>, rows: usize) -> Result<Option<Mat<f32>>> {
        let expanded;
        let ctx = match ctx {
            Some(c) if !self.context_classes.is_empty() => {
                if c.cols != self.context_classes.len() {
                    return Err(Error::Shape(format!(
                        "{}: context has {} columns, the model's is {} ({})",
                        c.source,
                        c.cols,
                        self.context_classes.len(),
                        self.context_columns.join(", ")
                    )));
                }
                expanded = crate::data::one_hot(c, &self.context_classes)?;
                Some(&expanded)
            }
            c => c,
        };
        match (ctx, self.arch.context_dim) {
            (None, 0) => Ok(None),
            (Some(c), k) if k > 0 => {
                if c.cols != k || c.rows != rows {
                    return Err(Error::Shape(format!(
                        "{}: context is {}x{}, expected {rows}x{k} ({})",
                        c.source,
                        c.rows,
                        c.cols,
                        self.context_columns.join(", ")
                    )));
                }
                c.check_finite()?;
                let mut v = c.data.clone();
                if let Some(n) = &self.context_norm {
                    n.apply(&mut v);
                }
                Ok(Some(Mat::from_f64(c.rows, c.cols, &v)))
            }
            (None, k) => Err(Error::Shape(format!(
                "the model is conditional: it needs {k} context columns ({})",
                self.context_columns.join(", ")
            ))),
            (Some(c), _) => Err(Error::Shape(format!(
                "{}: the model takes no context",
                c.source
            ))),
        }
    }

    /// Log-density of each row in the data's own units (nats), computed in chunks in parallel.
    pub fn log_prob_table(&self, t: &Table) -> Result<Vec<f64>> {
        self.log_prob_ctx(t, None)
    }

    pub fn log_prob_ctx(&self, t: &Table, ctx: Option<&Table>) -> Result<Vec<f64>> {
        Ok(self.log_prob_parts(t, ctx)?.0)
    }

    /// `(log p(x) in the data's units, log|det| of the preprocessing)` per row: the difference is the
    /// log-density in the preprocessed space (e.g. logit space, the MAF paper's MNIST figure). Dequantisation
    /// noise is drawn from a fixed seed, so repeated evaluations agree.
    pub fn log_prob_parts(&self, t: &Table, ctx: Option<&Table>) -> Result<(Vec<f64>, Vec<f64>)> {
        match self.preprocessed(t)? {
            None => Ok((self.log_prob_inner(t, ctx)?, vec![0.0; t.rows])),
            Some((tp, ld)) => {
                let mut lp = self.log_prob_inner(&tp, ctx)?;
                lp.iter_mut().zip(&ld).for_each(|(a, b)| *a += b);
                Ok((lp, ld))
            }
        }
    }

    /// The rows through the model's preprocessing (dequantisation with the fixed evaluation noise, logit) and
    /// its log-Jacobian per row; `None` for a model without preprocessing.
    fn preprocessed(&self, t: &Table) -> Result<Option<(Table, Vec<f64>)>> {
        let Some(p) = &self.preprocess else {
            return Ok(None);
        };
        if t.cols != self.dim() {
            return Err(self.column_mismatch(t));
        }
        t.check_finite()?;
        let mut tp = t.clone();
        let ld = p.apply(&mut tp, EVAL_NOISE_SEED)?;
        Ok(Some((tp, ld)))
    }

    fn log_prob_inner(&self, t: &Table, ctx: Option<&Table>) -> Result<Vec<f64>> {
        use rayon::prelude::*;
        let x = self.prepare(t)?;
        let c = self.prepare_ctx(ctx, t.rows)?;
        let shift = self.norm.log_abs_det();
        // image flows' convolutions keep a neighbourhood matrix of 9 x width values per pixel: small chunks
        let ch = if self.arch.is_image() { 128 } else { 4096 };
        let chunks: Vec<Vec<f64>> = (0..x.rows.div_ceil(ch))
            .into_par_iter()
            .map(|k| {
                let (a, b) = (k * ch, ((k + 1) * ch).min(x.rows));
                let xs = x.slice_rows(a, b);
                let cs = c.as_ref().map(|c| c.slice_rows(a, b));
                self.flow
                    .log_prob(&xs, cs.as_ref())
                    .into_iter()
                    .map(|v| v as f64 + shift)
                    .collect()
            })
            .collect();
        let lp: Vec<f64> = chunks.concat();
        if let Some(i) = lp.iter().position(|v| v.is_nan()) {
            return Err(Error::NonFinite {
                layer: format!("the log-density of {} row {i}", t.source),
            });
        }
        Ok(lp)
    }

    /// The score `d log p(x) / dx` of every row in the data's units (row-major, `rows x dim`), with
    /// `log p(x)`. Not defined for a model with dequantisation / logit preprocessing.
    pub fn grad_log_prob(
        &mut self,
        t: &Table,
        ctx: Option<&Table>,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        if self.preprocess.is_some() {
            return Err(Error::Config(
                "the score is not available for a model trained with dequantisation / logit \
                 preprocessing"
                    .into(),
            ));
        }
        let x = self.prepare(t)?;
        let c = self.prepare_ctx(ctx, t.rows)?;
        let shift = self.norm.log_abs_det();
        let (mut lp, mut g) = (
            Vec::with_capacity(t.rows),
            Vec::with_capacity(t.rows * t.cols),
        );
        // chunks bound the memory the layers' caches take
        let ch = if self.arch.is_image() { 128 } else { 4096 };
        for a in (0..x.rows).step_by(ch) {
            let b = (a + ch).min(x.rows);
            let cs = c.as_ref().map(|c| c.slice_rows(a, b));
            let (l, d) = self.flow.grad_log_prob(&x.slice_rows(a, b), cs.as_ref())?;
            lp.extend(l.iter().map(|&v| v as f64 + shift));
            // x_std = (x - mean) / std: the chain rule divides by std
            g.extend(
                d.data
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| v as f64 / self.norm.std[k % t.cols]),
            );
        }
        Ok((lp, g))
    }

    /// The noise `z = f(x)` of every row (row-major, `rows x dim`), after the model's preprocessing and
    /// standardisation.
    pub fn to_noise(&self, t: &Table, ctx: Option<&Table>) -> Result<Vec<f64>> {
        let pre = self.preprocessed(t)?;
        let t = pre.as_ref().map_or(t, |(tp, _)| tp);
        let x = self.prepare(t)?;
        let c = self.prepare_ctx(ctx, t.rows)?;
        let (z, _) = self.flow.transform_to_noise(&x, c.as_ref());
        Ok(z.to_f64())
    }

    /// The rows `x = f^{-1}(z)` in the data's units for noise rows `z` (row-major, `rows x dim`, the flow's
    /// coordinates as [`Model::to_noise`] gives them): what sampling does after drawing the noise.
    pub fn from_noise(&self, z: &[f64], ctx: Option<&Table>) -> Result<Table> {
        let d = self.dim();
        if !z.len().is_multiple_of(d) || z.iter().any(|v| !v.is_finite()) {
            return Err(Error::Shape(format!(
                "noise rows: {} values are not finite rows of the model's {d} columns",
                z.len()
            )));
        }
        let rows = z.len() / d;
        let c = self.prepare_ctx(ctx, rows)?;
        Ok(self.noise_to_data(&Mat::<f32>::from_f64(rows, d, z), c.as_ref()))
    }

    fn noise_to_data(&self, z: &Mat<f32>, ctx: Option<&Mat<f32>>) -> Table {
        let x = self.flow.inverse(z, ctx).0;
        let mut v = x.to_f64();
        self.norm.invert(&mut v);
        let mut t = Table::new(self.columns.clone(), z.rows, v, "samples");
        if let Some(p) = &self.preprocess {
            p.invert(&mut t);
        }
        t
    }

    /// `n` samples in the data's units (for a conditional model, one per context row; `n` is then ignored).
    pub fn sample(&self, n: usize, seed: u64, ctx: Option<&Table>) -> Result<Table> {
        self.sample_with_temperature(n, seed, ctx, 1.0)
    }

    /// Samples from the base scaled by `temperature` (Glow sec. 5: `z ~ N(0, T^2 I)`), mapped to data: `n`
    /// rows, or one per row of `ctx` for a conditional model. All in memory (checked to fit first); the same
    /// rows as [`Model::sample_chunks`].
    pub fn sample_with_temperature(
        &self,
        n: usize,
        seed: u64,
        ctx: Option<&Table>,
        temperature: f64,
    ) -> Result<Table> {
        let rows = ctx.map(|c| c.rows).unwrap_or(n);
        // the samples in f64, and one chunk's working memory
        crate::engine::check_fits(
            (rows as u128).saturating_mul(8 * self.dim() as u128),
            &format!("sampling {rows} rows at once"),
        )
        .map_err(|m| Error::Config(format!("{m}: draw fewer (and repeat with other seeds)")))?;
        let mut data = Vec::with_capacity(rows * self.dim());
        let per = ctx.map(|_| 1).unwrap_or(n);
        self.sample_chunks(per, seed, ctx, temperature, |t, _| {
            data.extend_from_slice(&t.data);
            Ok(true)
        })?;
        Ok(Table::new(self.columns.clone(), rows, data, "samples"))
    }

    /// Rows per chunk of [`Model::sample_chunks`]: at most 64k, and at most ~256 MB of working memory (the
    /// noise, the samples in f32 and f64, the widest layer's activations). It depends on the model only, so
    /// the samples do not depend on the machine.
    pub fn sample_chunk_rows(&self) -> usize {
        let per_row = 24 * self.dim() + 8 * self.arch.max_width();
        ((256 << 20) / per_row.max(1)).clamp(1, 1 << 16)
    }

    /// `n` samples (for a conditional model: `n` per row of `ctx`, row 1's first) drawn and mapped to data in
    /// chunks of [`Model::sample_chunk_rows`] rows with one random stream, each chunk handed to `each` with
    /// its context rows as it is made (bounded memory for any `n`); `each` returns `false` to stop early.
    pub fn sample_chunks(
        &self,
        n: usize,
        seed: u64,
        ctx: Option<&Table>,
        temperature: f64,
        mut each: impl FnMut(Table, Option<Table>) -> Result<bool>,
    ) -> Result<()> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::Config(format!(
                "temperature must be positive, got {temperature}"
            )));
        }
        if temperature != 1.0 && self.arch.base.kind() != crate::dist::BaseKind::Normal {
            return Err(Error::Config(format!(
                "a temperature needs a standard normal base; this model's base is {}",
                self.flow.base.kind()
            )));
        }
        let rows = match ctx {
            Some(c) => c.rows.checked_mul(n).ok_or_else(|| {
                Error::Config(format!("{n} samples for each of {} context rows", c.rows))
            })?,
            None => n,
        };
        if self.arch.context_dim > 0 && ctx.is_none() {
            // the same message as for a whole batch
            self.prepare_ctx(None, rows)?;
        }
        let chunk = self.sample_chunk_rows();
        let mut r = rng(seed);
        let mut a = 0;
        while a < rows {
            let b = (a + chunk).min(rows);
            let cr = ctx.map(|c| c.take_rows(&(a..b).map(|i| i / n).collect::<Vec<_>>()));
            let c = self.prepare_ctx(cr.as_ref(), b - a)?;
            let mut z = self.flow.sample_noise(b - a, &mut r, c.as_ref());
            if temperature != 1.0 {
                let t = temperature as f32;
                z.data.iter_mut().for_each(|v| *v *= t);
            }
            if !each(self.noise_to_data(&z, c.as_ref()), cr)? {
                break;
            }
            a = b;
        }
        Ok(())
    }

    fn config(&self, files: BTreeMap<String, FileSum>) -> ConfigFile {
        ConfigFile {
            format: FORMAT.into(),
            version: VERSION,
            dtype: "f32".into(),
            flow: self.arch.clone(),
            preset: self.preset.clone(),
            columns: self.columns.clone(),
            context_columns: self.context_columns.clone(),
            normalization: to_norm(&self.norm),
            context_normalization: self.context_norm.as_ref().map(to_norm),
            context_classes: self.context_classes.clone(),
            preprocess: self.preprocess.clone(),
            training: self.summary.clone(),
            files,
        }
    }

    /// Write the model folder atomically (temporary folder, then rename over any previous model).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_with(dir, &[])
    }

    /// [`Model::save`] with extra files written into the folder before it is put in place (checkpoints).
    pub fn save_with(&self, dir: &Path, extras: &[(&str, Vec<u8>)]) -> Result<()> {
        let io = |path: &Path| {
            let p = path.display().to_string();
            move |source| Error::Io { path: p, source }
        };
        let (parent, _) = output::split(dir)?;
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        output::recover(dir)?;
        output::check_replaceable(dir)?;
        let tmp = crate::data::temp_dir_beside(dir).map_err(io(dir))?;
        let write = || -> Result<()> {
            let mut files: Vec<(String, Vec<u8>)> = Vec::new();
            let mut meta = HashMap::new();
            meta.insert("format".to_string(), FORMAT.to_string());
            files.push((WEIGHTS.into(), self.weights_bytes(meta)));
            let mut log = self.log.join("\n");
            if !log.is_empty() {
                log.push('\n');
            }
            files.push((LOG.into(), log.into_bytes()));
            for (name, bytes) in extras {
                files.push((name.to_string(), bytes.clone()));
            }
            let sums = files
                .iter()
                .map(|(n, b)| (n.clone(), FileSum::of(b)))
                .collect();
            let cfg = serde_json::to_string_pretty(&self.config(sums)).expect("config serialises");
            files.push((CONFIG.into(), cfg.into_bytes()));
            // each file written and synced, then the folder: what is put in place is on disk
            for (name, bytes) in &files {
                let path = tmp.join(name);
                let mut f = std::fs::File::create(&path).map_err(io(&path))?;
                std::io::Write::write_all(&mut f, bytes).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
            }
            output::sync_path(&tmp)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_dir_all(&tmp);
            // name the output the user asked for, not the temporary folder
            return Err(match e {
                Error::Io { source, .. } => Error::Io {
                    path: dir.display().to_string(),
                    source,
                },
                e => e,
            });
        }
        output::replace(&tmp, dir)
    }

    /// Load a model folder; every inconsistency is an error naming the folder and the field or tensor.
    ///
    /// A save may replace the folder while it is read: the files' checksums in `config.json` tell a config
    /// from one save read with the weights of another, and the load is then tried again (the folder is swapped
    /// whole, so a later try sees one save); a mismatch that stays is an error.
    pub fn load(dir: &Path) -> Result<Model> {
        let mut wait = std::time::Duration::from_millis(1);
        let mut tries = 0;
        loop {
            match Self::load_once(dir) {
                Err(Changed(_)) if tries < 20 => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(std::time::Duration::from_millis(100));
                    tries += 1;
                }
                Err(Changed(e)) | Ok(Err(e)) => return Err(e),
                Ok(Ok(m)) => return Ok(m),
            }
        }
    }

    fn load_once(dir: &Path) -> std::result::Result<Result<Model>, Changed> {
        let bad = |msg: String| Error::Model {
            path: dir.display().to_string(),
            msg,
        };
        if !dir.exists() {
            // a model a killed run left beside its place during a replacement is put back
            let _ = output::recover(dir);
        }
        if !dir.is_dir() {
            return Ok(Err(bad("no such folder".into())));
        }
        let text = match read_regular(&dir.join(CONFIG), output::MAX_CONFIG_BYTES) {
            Ok(b) => match String::from_utf8(b) {
                Ok(t) => t,
                Err(_) => return Ok(Err(bad(format!("{CONFIG} is not UTF-8 text")))),
            },
            Err(ReadFail::Missing) => {
                return Ok(Err(bad(format!(
                    "cannot read {CONFIG}: no such file (not an nflow model folder?)"
                ))))
            }
            Err(ReadFail::Other(m)) => return Ok(Err(bad(format!("cannot read {CONFIG}: {m}")))),
        };
        // the checksums the other files must have (none in folders written before them)
        let sums = serde_json::from_str::<FileSums>(&text)
            .map(|f| f.files)
            .unwrap_or_default();
        // a file that went missing or does not match: another save in between
        let changed = |name: &str| {
            Changed(bad(format!(
                "{name} does not match the size and checksum config.json gives it: the folder was \
                 changed by something other than nflow, or is corrupt"
            )))
        };
        // a file's bytes, or why it could not be read; `Changed` where it does not match its checksum
        let read_checked = |name: &str| -> std::result::Result<_, Changed> {
            match read_regular(&dir.join(name), u64::MAX) {
                Ok(b) if sums.get(name).is_some_and(|s| *s != FileSum::of(&b)) => {
                    Err(changed(name))
                }
                Err(ReadFail::Missing) if sums.contains_key(name) => Err(changed(name)),
                r => Ok(r),
            }
        };
        let log = match read_checked(LOG)? {
            Ok(b) => String::from_utf8_lossy(&b)
                .lines()
                .map(String::from)
                .collect(),
            Err(_) => Vec::new(),
        };
        // the weights are read once the config is known to be good (its errors come first)
        let mut mismatch = None;
        let weights = || match read_checked(WEIGHTS) {
            Ok(Ok(b)) => Ok(std::borrow::Cow::Owned(b)),
            Ok(Err(ReadFail::Missing)) => Err(bad(format!("cannot read {WEIGHTS}: no such file"))),
            Ok(Err(ReadFail::Other(m))) => Err(bad(format!("cannot read {WEIGHTS}: {m}"))),
            Err(c) => {
                mismatch = Some(c);
                Err(bad(String::new()))
            }
        };
        let r = Self::from_parts(&dir.display().to_string(), &text, weights, log);
        match mismatch {
            Some(c) => Err(c),
            None => Ok(r),
        }
    }

    /// The whole model as one byte string (what pickling and sending to worker processes use): the
    /// weights' safetensors with `config.json` and the training log in its metadata. [`Model::from_bytes`]
    /// reads it back; the model evaluates to the same bits.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        let cfg = serde_json::to_string(&self.config(BTreeMap::new())).expect("config serialises");
        meta.insert(CONFIG.to_string(), cfg);
        meta.insert(LOG.to_string(), self.log.join("\n"));
        self.weights_bytes(meta)
    }

    /// The model in the bytes of [`Model::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        let what = "model bytes";
        let bad = |msg: String| Error::Model {
            path: what.into(),
            msg,
        };
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not an nflow model ({e})")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let text = meta
            .get(CONFIG)
            .ok_or_else(|| bad(format!("no {CONFIG} inside (not an nflow model?)")))?;
        let log = meta
            .get(LOG)
            .map(|s| s.lines().map(String::from).collect())
            .unwrap_or_default();
        Self::from_parts(what, text, || Ok(std::borrow::Cow::Borrowed(bytes)), log)
    }

    /// Every parameter and buffer as safetensors, with `meta` as its metadata.
    fn weights_bytes(&self, meta: HashMap<String, String>) -> Vec<u8> {
        let named = self.flow.named_params();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = named
            .iter()
            .map(|(n, p)| (n.clone(), p.shape.clone(), f32::to_le(p.value())))
            .collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).expect("consistent shape"),
                )
            })
            .collect();
        safetensors::serialize(views, Some(meta)).expect("weights serialise")
    }

    /// A model from the text of its `config.json` and the bytes of its weights (`path`: for messages).
    fn from_parts<'a>(
        path: &str,
        text: &str,
        weights: impl FnOnce() -> Result<std::borrow::Cow<'a, [u8]>>,
        log: Vec<String>,
    ) -> Result<Model> {
        let bad = |msg: String| Error::Model {
            path: path.into(),
            msg,
        };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "{CONFIG} is not valid JSON: {}",
                crate::json_error(&e)
            ))
        })?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(format!(
                "{CONFIG}: field 'format' is not \"{FORMAT}\" (not an nflow model)"
            )));
        }
        let ver = v.get("version").and_then(|f| f.as_u64()).unwrap_or(0);
        if !(OLDEST_VERSION as u64..=VERSION as u64).contains(&ver) {
            return Err(bad(format!(
                "{CONFIG}: format version {ver} is not supported (this nflow reads versions \
                 {OLDEST_VERSION} to {VERSION})"
            )));
        }
        let cfg: ConfigFile = if ver == 1 {
            upgrade_v1(v).map_err(|e| bad(format!("{CONFIG}: {e}")))?
        } else {
            serde_json::from_value(v)
                .map_err(|e| bad(format!("{CONFIG}: {}", crate::json_error(&e))))?
        };
        let d = cfg.flow.dim;
        if let Some(p) = &cfg.preset {
            if p.dim != d || p.context_dim != cfg.flow.context_dim {
                return Err(bad(format!(
                    "{CONFIG}: 'preset' does not match 'flow' (dim / context_dim)"
                )));
            }
        }
        if cfg.columns.len() != d
            || cfg.normalization.mean.len() != d
            || cfg.normalization.std.len() != d
        {
            return Err(bad(format!(
                "{CONFIG}: 'columns' / 'normalization' do not match flow.dim = {d}"
            )));
        }
        if cfg
            .normalization
            .std
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(bad(format!("{CONFIG}: normalization.std must be positive")));
        }
        let mut flow: Flow<f32> = cfg
            .flow
            .build()
            .map_err(|e| bad(format!("{CONFIG}: {e}")))?;
        let bytes = weights()?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("{WEIGHTS} is corrupt: {e}")))?;
        let expected = flow.named_params().len();
        if st.len() != expected {
            return Err(bad(format!(
                "{WEIGHTS} holds {} tensors, the architecture in {CONFIG} has {expected}",
                st.len()
            )));
        }
        for (name, p) in flow.named_params_mut() {
            let t = st
                .tensor(&name)
                .map_err(|_| bad(format!("{WEIGHTS}: tensor '{name}' is missing")))?;
            if t.dtype() != Dtype::F32 || t.shape() != p.shape.as_slice() {
                return Err(bad(format!(
                    "{WEIGHTS}: tensor '{name}' is {:?} {:?}, expected F32 {:?}",
                    t.dtype(),
                    t.shape(),
                    p.shape
                )));
            }
            let vals = f32::from_le(t.data());
            if vals.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("{WEIGHTS}: tensor '{name}' holds NaN/Inf")));
            }
            if !p.trainable {
                check_buffer(&name, p.value(), &vals)
                    .map_err(|m| bad(format!("{WEIGHTS}: tensor '{name}' {m}")))?;
            }
            p.set_value(vals);
        }
        flow.reload();
        flow.set_training(false);
        Ok(Model {
            arch: cfg.flow,
            preset: cfg.preset,
            flow,
            columns: cfg.columns,
            norm: from_norm(&cfg.normalization),
            context_columns: cfg.context_columns,
            context_norm: cfg.context_normalization.as_ref().map(from_norm),
            context_classes: cfg.context_classes.clone(),
            preprocess: cfg.preprocess.clone(),
            summary: cfg.training,
            log,
        })
    }
}

/// A load that saw a folder change under it (or a folder whose files do not match their checksums).
struct Changed(Error);

pub(crate) enum ReadFail {
    Missing,
    Other(String),
}

/// The bytes of `path`, which must be a regular file (a link to one is fine) of at most `limit` bytes that fit
/// in memory: a pipe, a device or a folder where a model file belongs is an error, never a wait or an
/// endless read.
pub(crate) fn read_regular(path: &Path, limit: u64) -> std::result::Result<Vec<u8>, ReadFail> {
    use std::io::Read;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    // opening a FIFO for reading would wait for a writer
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NONBLOCK);
    let mut f = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadFail::Missing),
        Err(e) => return Err(ReadFail::Other(e.to_string())),
    };
    let meta = f.metadata().map_err(|e| ReadFail::Other(e.to_string()))?;
    if !meta.is_file() {
        return Err(ReadFail::Other(
            "not a regular file (a folder, pipe or device)".into(),
        ));
    }
    let len = meta.len();
    if len > limit {
        return Err(ReadFail::Other(format!(
            "{len} bytes, more than the {limit} such a file can have"
        )));
    }
    crate::engine::check_fits(u128::from(len), "reading it").map_err(ReadFail::Other)?;
    let mut buf = Vec::with_capacity(len as usize);
    // never more than the size it had when opened (a file still growing is another writer's)
    f.by_ref()
        .take(len)
        .read_to_end(&mut buf)
        .map_err(|e| ReadFail::Other(e.to_string()))?;
    Ok(buf)
}

/// A buffer that indexes (a permutation, a mask, an autoregressive order, MADE's degrees, an LU sign, an
/// initialised flag) must hold what the architecture can use: the same values as the freshly built one in
/// some order (another permutation, another placement of a mask's ones), or signs / flags. Anything else
/// would index out of bounds or break a layer's shapes later.
fn check_buffer(name: &str, built: &[f32], loaded: &[f32]) -> std::result::Result<(), String> {
    let last = name.rsplit('.').next().unwrap_or(name);
    let sorted = |v: &[f32]| {
        let mut v = v.to_vec();
        v.sort_by(f32::total_cmp);
        v
    };
    let same_values = || {
        if sorted(built) == sorted(loaded) {
            Ok(())
        } else {
            Err(
                "is not a rearrangement of the values the architecture gives it (corrupt?)"
                    .to_string(),
            )
        }
    };
    match last {
        "perm" | "mask" | "order" => same_values(),
        _ if name.contains("degrees") => {
            // MADE's hidden degrees: integers within the range the architecture uses, in ascending order
            let (lo, hi) = (
                built.iter().copied().fold(f32::INFINITY, f32::min).min(1.0),
                built.iter().copied().fold(0.0f32, f32::max),
            );
            let ok = loaded
                .iter()
                .all(|v| v.fract() == 0.0 && *v >= lo && *v <= hi)
                && loaded.windows(2).all(|w| w[0] <= w[1]);
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "must hold ascending integers in [{lo}, {hi}] (corrupt?)"
                ))
            }
        }
        "sign" if loaded.iter().any(|v| v.abs() != 1.0) => {
            Err("must hold signs, ±1 (corrupt?)".into())
        }
        "initialized" if loaded.iter().any(|v| *v != 0.0 && *v != 1.0) => {
            Err("must hold a flag, 0 or 1 (corrupt?)".into())
        }
        _ => Ok(()),
    }
}

/// Every spline config in `v` (an object with `min_derivative`) set to the reference kernel, every image
/// coupling (an object with `net` and `width`) to im2col convolutions: what version 1 computed with.
fn reference_kernels(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if m.contains_key("min_derivative") {
                m.insert("kernel".into(), "reference".into());
            }
            if m.contains_key("net") && m.contains_key("width") && m.contains_key("mask") {
                m.insert("conv".into(), "im2col".into());
            }
            m.values_mut().for_each(reference_kernels);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(reference_kernels),
        _ => {}
    }
}

/// A version-1 `config.json` (its `flow` holds a preset's options) as a version-2 one.
fn upgrade_v1(mut v: serde_json::Value) -> Result<ConfigFile> {
    let spec: FlowSpec = serde_json::from_value(v["flow"].take())
        .map_err(|e| Error::Config(format!("flow: {}", crate::json_error(&e))))?;
    v["flow"] = serde_json::to_value(spec.architecture_v1()?).expect("architecture serialises");
    // its splines and convolutions evaluate with the kernels they were written with
    reference_kernels(&mut v["flow"]);
    v["preset"] = serde_json::to_value(&spec).expect("spec serialises");
    serde_json::from_value(v).map_err(|e| Error::Config(crate::json_error(&e)))
}

use crate::engine::Float as _;
