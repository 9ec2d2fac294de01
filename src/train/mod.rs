//! Minibatch maximum-likelihood training: Adam/AdamW, schedules, clipping, validation split, early stopping
//! on the validation NLL (the best weights are kept), a NaN/Inf guard that names the layer and step, and a
//! per-evaluation log (JSON lines), an optional monitor set (e.g. part of the test data) evaluated at every
//! evaluation for learning curves, and checkpoints every N steps from which a run resumes exactly where it
//! stopped (weights, Adam moments, batch order, RNG position, best weights, log and elapsed time).

use crate::data::{split_indices, Preprocess, Standardizer, Table};
use crate::engine::{rng, Mat};
use crate::flows::FlowDef;
use crate::io::{Model, TrainSummary};
use crate::optim::{clip_grad_norm, Adam, Schedule};
use crate::{Error, Result};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub mod auto;
mod checkpoint;
mod config;
pub mod diagnostics;
pub mod scores;
mod shards;
pub mod targets;
pub mod vi;
pub(crate) use checkpoint::{
    checkpoint_word_pos, read_checkpoint_state, read_checkpoint_tensors, write_checkpoint,
    STATE_JSON, STATE_TENSORS,
};
use checkpoint::{differing_options, fingerprint, TrainState};
pub use config::TrainConfig;
pub use shards::DataParallel;
pub use vi::{reverse_kl_backward, Target, ViCheckpoint, ViConfig, ViFitted, ViProgress};

/// `-log p / (D ln 2)`: bits per dimension of a mean log-likelihood `log_lik` (nats per example, data units)
/// over `dim` values. For dequantised integer data (pixels `0..K`) the data-unit density is a density over
/// `[0, K)^D`, so this is the bits/dim of the `log2 K`-bit data with every Jacobian (logit, standardisation)
/// already inside `log_lik`.
pub fn bits_per_dim(log_lik: f64, dim: usize) -> f64 {
    -log_lik / (dim as f64 * std::f64::consts::LN_2)
}

/// A flag set from anywhere (another thread, a signal handler, a progress callback) to stop training after the
/// current step; not part of what a run is (two configs that differ only in it are equal).
#[derive(Clone, Debug, Default)]
pub struct StopFlag(pub Option<Arc<AtomicBool>>);

impl StopFlag {
    pub fn new(flag: Arc<AtomicBool>) -> Self {
        StopFlag(Some(flag))
    }
    pub fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

impl PartialEq for StopFlag {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What the trainer reports to its caller after every step.
#[derive(Clone, Debug)]
pub struct Progress {
    pub step: usize,
    pub total: usize,
    /// Mean training NLL (standardised space) over the steps since the last evaluation.
    pub train_nll: f64,
    /// Validation mean log-likelihood in data units, when this step evaluated.
    pub val_log_prob: Option<f64>,
    /// Monitor-set mean log-likelihood in data units, when this step evaluated and a monitor set is given.
    pub monitor_log_prob: Option<f64>,
    /// Number of data columns (for bits/dim).
    pub dim: usize,
}

/// One evaluation, written as a JSON line to `train_log.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntry {
    pub step: usize,
    pub epoch: f64,
    pub seconds: f64,
    pub lr: f64,
    /// Training NLL in the data's units (nats per example), averaged since the previous entry.
    pub train_nll: f64,
    pub val_nll: Option<f64>,
    /// Mean log-likelihood of the monitor set (data units), if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_log_prob: Option<f64>,
    /// Its bits/dim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_bits_per_dim: Option<f64>,
    pub best: bool,
}

/// Result of a run: the model (best weights) and, if training diverged, the error that stopped it.
pub struct Fitted {
    pub model: Model,
    pub log: Vec<LogEntry>,
    pub diverged: Option<Error>,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    /// Dequantisation / logit applied to the raw rows; with dequantisation, fresh noise for every batch.
    pub preprocess: Option<Preprocess>,
    /// Rows (and context) evaluated at every evaluation, logged as `monitor_log_prob` (learning curves).
    pub monitor: Option<(Table, Option<Table>)>,
    /// Write a checkpoint into this folder every `n` steps.
    pub checkpoint: Option<(PathBuf, usize)>,
    /// Continue from the checkpoint folder instead of starting afresh.
    pub resume: bool,
    /// Categorical context: classes per context column; the context is fed one-hot (not standardised).
    pub context_classes: Vec<usize>,
    /// A weight per row: the weighted likelihood is fitted, and validation figures are weighted means.
    pub weights: Option<Vec<f64>>,
    /// Set from anywhere (another thread, a signal handler, the step callback) to stop after the current
    /// step: a final validation runs and the best weights are kept, as with `max_seconds`.
    pub stop: StopFlag,
    /// Every `n` steps (and before the first) the flow in evaluation mode and the data's standardisation are
    /// handed to this function (frames of a training animation).
    pub frames: Option<(usize, Frames)>,
}

/// The frame function of [`Trainer::frames`]: `(step, flow, standardisation)`.
pub type Frames =
    std::sync::Mutex<Box<dyn FnMut(usize, &crate::flows::Flow<f32>, &Standardizer) + Send>>;

impl Trainer {
    pub fn new(cfg: TrainConfig) -> Self {
        Trainer {
            cfg,
            preprocess: None,
            monitor: None,
            checkpoint: None,
            resume: false,
            context_classes: Vec::new(),
            weights: None,
            stop: StopFlag::default(),
            frames: None,
        }
    }

    /// Hand the flow to `f` every `every` steps and before the first (see [`Trainer::frames`]).
    pub fn with_frames(
        mut self,
        every: usize,
        f: impl FnMut(usize, &crate::flows::Flow<f32>, &Standardizer) + Send + 'static,
    ) -> Self {
        self.frames = Some((every.max(1), std::sync::Mutex::new(Box::new(f))));
        self
    }

    /// Fit the weighted likelihood `sum_i w_i log p(x_i) / sum_i w_i`, a weight per row of the data (finite,
    /// at least 0, some above 0); validation figures are weighted the same way.
    pub fn with_weights(mut self, w: Vec<f64>) -> Self {
        self.weights = Some(w);
        self
    }

    /// Stop training (keeping the best weights) once `flag` is set; see [`Trainer::stop`].
    pub fn with_stop(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = StopFlag::new(flag);
        self
    }

    /// Treat the context columns as class labels `0..K-1` (one `K` per column), fed to the conditioners
    /// one-hot: the flow's `context_dim` is the sum of the `K`s.
    pub fn with_context_classes(mut self, classes: Vec<usize>) -> Self {
        self.context_classes = classes;
        self
    }

    /// Evaluate `t` (with context `c`) at every evaluation and log its log-likelihood and bits/dim.
    pub fn with_monitor(mut self, t: Table, c: Option<Table>) -> Self {
        self.monitor = Some((t, c));
        self
    }

    /// Checkpoint into `dir` every `every` steps; with `resume`, start from the checkpoint there.
    pub fn with_checkpoints(mut self, dir: PathBuf, every: usize, resume: bool) -> Self {
        self.checkpoint = Some((dir, every.max(1)));
        self.resume = resume;
        self
    }

    /// Train on raw data through `p` (stored with the model). Dequantisation noise is drawn afresh for every
    /// training batch (the validation rows get one fixed draw), so the flow cannot fit one particular noise.
    pub fn with_preprocess(mut self, p: Option<Preprocess>) -> Self {
        self.preprocess = p;
        self
    }

    /// Fit a flow (a preset's [`crate::flows::FlowSpec`] or any [`FlowConfig`](crate::flows::FlowConfig)) to the
    /// rows of `table` (and `context`, for a conditional flow), data name `table.source`.
    pub fn fit(
        &self,
        flow: impl Into<FlowDef>,
        table: &Table,
        context: Option<&Table>,
        mut on_step: impl FnMut(&Progress),
    ) -> Result<Fitted> {
        let cfg = &self.cfg;
        cfg.validate()?;
        let (arch, preset) = flow.into().resolve()?;
        // a categorical context is expanded to one-hot columns here (the model keeps the raw column names)
        let raw_ctx_columns = context.map(|c| c.columns.clone()).unwrap_or_default();
        let raw_context = context;
        let one_hot = !self.context_classes.is_empty();
        let expanded_ctx;
        let context = match context {
            Some(c) if one_hot => {
                expanded_ctx = crate::data::one_hot(c, &self.context_classes)?;
                Some(&expanded_ctx)
            }
            c => c,
        };
        if arch.dim != table.cols {
            return Err(Error::Shape(format!(
                "{}: {} columns, the flow has dim = {}",
                table.source, table.cols, arch.dim
            )));
        }
        table.check_finite()?;
        if let Some(c) = context {
            c.check_finite()?;
            if c.rows != table.rows || c.cols != arch.context_dim {
                return Err(Error::Shape(format!(
                    "{}: context is {}x{}, expected {}x{}",
                    c.source, c.rows, c.cols, table.rows, arch.context_dim
                )));
            }
        } else if arch.context_dim > 0 {
            return Err(Error::Shape(
                "conditional flow needs context columns".into(),
            ));
        }
        if let Some(w) = &self.weights {
            if w.len() != table.rows {
                return Err(Error::Shape(format!(
                    "{}: {} weights for {} rows",
                    table.source,
                    w.len(),
                    table.rows
                )));
            }
            if let Some(i) = w.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(Error::Config(format!(
                    "{}: the weight of row {i} (counted from 0) is {}: weights must be finite and at least 0",
                    table.source, w[i]
                )));
            }
        }
        let (tr_idx, va_idx) = split_indices(table.rows, cfg.val_fraction, cfg.seed)?;
        let w_train: Option<Vec<f32>> = self
            .weights
            .as_ref()
            .map(|w| tr_idx.iter().map(|&i| w[i] as f32).collect());
        let w_val: Option<Vec<f64>> = self
            .weights
            .as_ref()
            .map(|w| va_idx.iter().map(|&i| w[i]).collect());
        if self.weights.is_some() && self.preprocess.is_some() {
            return Err(Error::Config(
                "weights per row with preprocessing (dequantisation, logit, per-column supports) are not supported"
                    .into(),
            ));
        }
        if w_train
            .as_ref()
            .is_some_and(|w| w.iter().all(|&v| v == 0.0))
        {
            return Err(Error::Config(format!(
                "{}: every training row has weight 0",
                table.source
            )));
        }
        if tr_idx.len() < 2 {
            return Err(Error::Shape(format!(
                "{}: {} training row(s) after holding out {} for validation; a density needs at least 2 \
                 (give more rows, or a smaller validation fraction)",
                table.source,
                tr_idx.len(),
                va_idx.len()
            )));
        }
        let raw_train = table.take_rows(&tr_idx);
        let mut train_t = raw_train.clone();
        let mut val_t = table.take_rows(&va_idx);
        // preprocessing log-Jacobians (means), so reported figures are in the data's units like `eval`'s
        let (mut ld_train, mut ld_val) = (0.0, 0.0);
        if let Some(p) = &self.preprocess {
            let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
            ld_train = mean(p.apply(&mut train_t, cfg.seed)?);
            ld_val = mean(p.apply(&mut val_t, cfg.seed ^ 0x0076_616c)?);
        }
        let fresh = self.preprocess.as_ref().filter(|p| p.dequantizes());
        // image flows see the pixels as they are (ActNorm normalises per channel); a per-pixel
        // standardisation would give every pixel its own scale and break the convolutions' weight sharing
        let norm = if arch.is_image() {
            Standardizer::identity(train_t.cols)
        } else {
            Standardizer::fit(&train_t)?
        };
        let to_mat = |t: &Table, n: &Standardizer| {
            let mut v = t.data.clone();
            n.apply(&mut v);
            Mat::<f32>::from_f64(t.rows, t.cols, &v)
        };
        // with fresh dequantisation every batch is made from the raw rows; otherwise standardise once
        let xtr = fresh.is_none().then(|| to_mat(&train_t, &norm));
        drop(train_t);
        let xva = to_mat(&val_t, &norm);
        let (ctr, cva, cnorm) = match context {
            Some(c) => {
                let ct = c.take_rows(&tr_idx);
                let cn = if one_hot {
                    Standardizer::identity(ct.cols)
                } else {
                    Standardizer::fit(&ct)?
                };
                (
                    Some(to_mat(&ct, &cn)),
                    Some(to_mat(&c.take_rows(&va_idx), &cn)),
                    (!one_hot).then_some(cn),
                )
            }
            None => (None, None, None),
        };
        let shift = norm.log_abs_det();
        // the monitor rows, preprocessed once (a fixed dequantisation draw, like the validation rows)
        let monitor = match &self.monitor {
            Some((t, c)) => {
                let mut m = t.clone();
                let ld = match &self.preprocess {
                    Some(p) => {
                        let v = p.apply(&mut m, cfg.seed ^ 0x006d_6f6e)?;
                        v.iter().sum::<f64>() / v.len().max(1) as f64
                    }
                    None => 0.0,
                };
                let cm = match (c, &cnorm) {
                    (Some(c), _) if one_hot => Some(to_mat(
                        &crate::data::one_hot(c, &self.context_classes)?,
                        &Standardizer::identity(arch.context_dim),
                    )),
                    (Some(c), Some(n)) => Some(to_mat(c, n)),
                    _ => None,
                };
                Some((to_mat(&m, &norm), cm, ld))
            }
            None => None,
        };
        let mut flow = arch.build::<f32>()?;
        flow.set_training(true);
        let n = raw_train.rows;
        let batch = cfg.batch_size.min(n);
        let per_epoch = (n / batch).max(1);
        let total = cfg.steps.unwrap_or(cfg.epochs * per_epoch);
        let eval_every = cfg
            .eval_every
            .unwrap_or(if cfg.steps.is_some() {
                (total / 20).max(1)
            } else {
                per_epoch
            })
            .max(1);
        let mut opt = Adam::new(cfg.optim);
        let mut shards = DataParallel::new();
        let mut tuner = crate::engine::pool::Tuner::new();
        let mut r = rng(cfg.seed ^ 0x5eed);
        let mut order: Vec<usize> = (0..n).collect();
        let mut pos = n; // forces a shuffle on the first step
        let mut t0 = Instant::now();
        let mut log = Vec::new();
        let mut best: Option<(f64, usize, Vec<Vec<f32>>)> = None;
        let mut since_best = 0;
        let mut acc = (0.0f64, 0usize);
        let mut last_train = f64::NAN;
        let mut diverged = None;
        let mut stopped_early = false;
        let mut step = 0;
        // the plateau schedule's reductions so far (each multiplies the rate by its decay)
        let mut lr_decays = 0usize;
        let plateau_scale = |k: usize| match cfg.schedule {
            Schedule::Plateau { decay, .. } => decay.powi(k as i32),
            _ => 1.0,
        };
        // (hashing the rows costs a pass over them: only for runs that checkpoint)
        let data_fp = if self.checkpoint.is_some() {
            let w = self
                .weights
                .as_ref()
                .map(|w| Table::new(vec!["weight".into()], w.len(), w.clone(), "weights"));
            fingerprint(&[Some(table), context, w.as_ref()])
        } else {
            String::new()
        };
        if self.resume {
            let (dir, _) = self
                .checkpoint
                .as_ref()
                .ok_or_else(|| Error::Config("resume needs a checkpoint folder".into()))?;
            let bad = |msg: String| Error::Model {
                path: dir.display().to_string(),
                msg,
            };
            let (ck, st): (Model, TrainState) = read_checkpoint_state(dir, STATE_JSON)?;
            if st.flow != arch {
                return Err(bad(
                    "the checkpoint was made with a different flow (architecture options differ)"
                        .into(),
                ));
            }
            // a run may be extended: more steps (or epochs) than the checkpoint's run had, nothing else changed
            let extends = TrainConfig {
                steps: cfg.steps,
                epochs: cfg.epochs,
                ..st.cfg.clone()
            } == *cfg
                && total > st.step;
            if st.cfg != *cfg && !extends {
                return Err(bad(format!(
                    "the checkpoint was made with other training options: {} (only steps or epochs may \
                     grow on a resume)",
                    differing_options(&st.cfg, cfg).join(", ")
                )));
            }
            if let Some(f) = &st.data_fingerprint {
                if *f != data_fp {
                    return Err(bad(
                        "the checkpoint was made on other data (the same number of rows, other values or \
                         columns)"
                            .into(),
                    ));
                }
            }
            if st.order.len() != n {
                return Err(bad(format!(
                    "the checkpoint was made on {} training rows, this data has {n}",
                    st.order.len()
                )));
            }
            flow = ck.flow;
            flow.set_training(true);
            let ts = read_checkpoint_tensors(dir, STATE_TENSORS)?;
            opt.set_state(ts.adam_m, ts.adam_v, st.adam_t);
            if let (Some(bs), Some(bv)) = (st.best_step, st.best_val) {
                best = Some((bv, bs, ts.best));
            } else if let Some(bs) = st.best_step {
                best = Some((f64::NEG_INFINITY, bs, ts.best));
            }
            r.set_word_pos(checkpoint_word_pos(dir, &st.rng_word_pos)?);
            order = st.order;
            pos = st.pos;
            since_best = st.since_best;
            acc = st.acc;
            last_train = st.last_train;
            log = st.log;
            step = st.step;
            lr_decays = st.lr_decays;
            t0 = Instant::now() - std::time::Duration::from_secs_f64(st.seconds);
        }
        // the (weighted) mean log-likelihood of rows `x`
        let val_lp = |flow: &mut crate::flows::Flow<f32>,
                      x: &Mat<f32>,
                      c: Option<&Mat<f32>>,
                      ld: f64,
                      w: Option<&[f64]>|
         -> f64 {
            flow.set_training(false);
            let mut s = 0.0;
            let ch = if arch.is_image() { 128 } else { 1024 };
            for a in (0..x.rows).step_by(ch) {
                let b = (a + ch).min(x.rows);
                let cs = c.map(|c| c.slice_rows(a, b));
                let lp = flow.log_prob(&x.slice_rows(a, b), cs.as_ref());
                s += match w {
                    Some(w) => lp
                        .iter()
                        .zip(&w[a..b])
                        .map(|(&v, &w)| w * v as f64)
                        .sum::<f64>(),
                    None => lp.iter().map(|&v| v as f64).sum::<f64>(),
                };
            }
            flow.set_training(true);
            let total = w.map_or(x.rows as f64, |w| w.iter().sum());
            s / total + shift + ld
        };
        // validation: weighted like training (an all-zero validation weight falls back to the plain mean)
        let w_val = w_val.filter(|w| w.iter().sum::<f64>() > 0.0);
        // the untrained flow's validation figure: a run that ends below it made the model worse (a learning
        // rate far too large, typically), which the caller is told
        let initial_val = (step == 0 && xva.rows > 0)
            .then(|| val_lp(&mut flow, &xva, cva.as_ref(), ld_val, w_val.as_deref()))
            .filter(|v| v.is_finite());
        let frame = |flow: &mut crate::flows::Flow<f32>, step: usize| {
            if let Some((every, f)) = &self.frames {
                if step.is_multiple_of(*every) {
                    flow.set_training(false);
                    if let Ok(mut f) = f.lock() {
                        f(step, flow, &norm);
                    }
                    flow.set_training(true);
                }
            }
        };
        frame(&mut flow, step);
        while step < total {
            if pos + batch > n {
                order.shuffle(&mut r);
                pos = 0;
            }
            let idx = &order[pos..pos + batch];
            pos += batch;
            let xb = match fresh {
                // a new dequantisation of this batch's raw rows
                Some(p) => {
                    let mut t = raw_train.take_rows(idx);
                    p.apply(
                        &mut t,
                        cfg.seed ^ (step as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    )?;
                    to_mat(&t, &norm)
                }
                None => xtr.as_ref().expect("standardised rows").take_rows(idx),
            };
            let cb = ctr.as_ref().map(|c| c.take_rows(idx));
            let wb: Option<Vec<f32>> = w_train
                .as_ref()
                .map(|w| idx.iter().map(|&i| w[i]).collect());
            flow.zero_grad();
            // a batch whose rows all weigh 0 has nothing to fit (its gradient is zero)
            let loss = match wb.as_ref().is_some_and(|w| w.iter().all(|&v| v == 0.0)) {
                true => Ok(0.0),
                false => tuner.step(|| {
                    shards.nll_backward_weighted(&mut flow, &xb, cb.as_ref(), wb.as_deref())
                }),
            };
            let loss = match loss {
                Ok(l) => l as f64,
                Err(Error::NonFinite { layer }) => {
                    diverged = Some(Error::Diverged { step, layer });
                    break;
                }
                Err(e) => return Err(e),
            };
            {
                let mut ps: Vec<_> = flow
                    .named_params_mut()
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect();
                if let Some(c) = cfg.clip {
                    clip_grad_norm(&mut ps, c);
                }
                let lr = cfg.optim.lr * cfg.schedule.factor(step, total) * plateau_scale(lr_decays);
                opt.step(&mut ps, lr);
            }
            step += 1;
            frame(&mut flow, step);
            acc.0 += loss;
            acc.1 += 1;
            let out_of_time = cfg
                .max_seconds
                .is_some_and(|m| t0.elapsed().as_secs_f64() >= m)
                || self.stop.is_set();
            let evaluate = step % eval_every == 0 || step == total || out_of_time;
            let mut val = None;
            let mut mon = None;
            if evaluate {
                last_train = acc.0 / acc.1 as f64 - shift - ld_train;
                acc = (0.0, 0);
                let vl = if xva.rows > 0 {
                    Some(val_lp(
                        &mut flow,
                        &xva,
                        cva.as_ref(),
                        ld_val,
                        w_val.as_deref(),
                    ))
                } else {
                    None
                };
                let ml = monitor
                    .as_ref()
                    .map(|(x, c, ld)| val_lp(&mut flow, x, c.as_ref(), *ld, None));
                if vl.is_some_and(|v| !v.is_finite()) {
                    diverged = Some(Error::Diverged {
                        step,
                        layer: "the validation log-likelihood".into(),
                    });
                    break;
                }
                let improved = match (vl, &best) {
                    (Some(v), Some((b, _, _))) => v > *b,
                    (Some(_), None) => true,
                    (None, _) => true,
                };
                if improved {
                    best = Some((vl.unwrap_or(f64::NEG_INFINITY), step, flow.snapshot()));
                    since_best = 0;
                } else {
                    since_best += 1;
                }
                log.push(LogEntry {
                    step,
                    epoch: step as f64 / per_epoch as f64,
                    seconds: t0.elapsed().as_secs_f64(),
                    lr: cfg.optim.lr
                        * cfg.schedule.factor(step - 1, total)
                        * plateau_scale(lr_decays),
                    train_nll: last_train,
                    val_nll: vl.map(|v| -v),
                    monitor_log_prob: ml,
                    monitor_bits_per_dim: ml.map(|m| bits_per_dim(m, arch.dim)),
                    best: improved,
                });
                val = vl;
                mon = ml;
            }
            on_step(&Progress {
                step,
                total,
                train_nll: if evaluate {
                    last_train
                } else {
                    loss - shift - ld_train
                },
                val_log_prob: val,
                monitor_log_prob: mon,
                dim: arch.dim,
            });
            if let Some((dir, every)) = &self.checkpoint {
                if step % every == 0 && step < total {
                    let st = TrainState {
                        flow: arch.clone(),
                        cfg: cfg.clone(),
                        step,
                        adam_t: opt.state().2,
                        rng_word_pos: r.get_word_pos().to_string(),
                        order: order.clone(),
                        pos,
                        best_step: best.as_ref().map(|b| b.1),
                        best_val: best.as_ref().map(|b| b.0).filter(|v| v.is_finite()),
                        since_best,
                        acc,
                        last_train,
                        seconds: t0.elapsed().as_secs_f64(),
                        log: log.clone(),
                        data_fingerprint: Some(data_fp.clone()),
                        lr_decays,
                    };
                    let model = Model {
                        arch: arch.clone(),
                        preset: preset.clone(),
                        flow,
                        columns: table.columns.clone(),
                        norm: norm.clone(),
                        context_columns: raw_ctx_columns.clone(),
                        context_norm: cnorm.clone(),
                        context_classes: self.context_classes.clone(),
                        preprocess: self.preprocess.clone(),
                        summary: None,
                        log: Vec::new(),
                    };
                    let res = write_checkpoint(
                        &model,
                        dir,
                        (STATE_JSON, STATE_TENSORS),
                        &st,
                        &opt,
                        best.as_ref().map(|b| &b.2),
                    );
                    flow = model.flow;
                    res?;
                }
            }
            if evaluate && cfg.patience.is_some_and(|p| since_best >= p) && xva.rows > 0 {
                match cfg.schedule {
                    // a plateau with reductions left: a smaller rate from the best weights so far (the
                    // steps since were no better, and on small data they have begun to overfit), and the
                    // patience starts again
                    Schedule::Plateau { decays, .. } if lr_decays < decays => {
                        lr_decays += 1;
                        since_best = 0;
                        if let Some((_, _, snap)) = &best {
                            flow.restore(snap);
                        }
                    }
                    _ => {
                        stopped_early = true;
                        break;
                    }
                }
            }
            // a stop asked for during this evaluation's report ends the run here, not a step later
            if out_of_time || (evaluate && self.stop.is_set()) {
                break;
            }
        }
        let (best_val, best_step) = match best {
            Some((v, s, snap)) => {
                flow.restore(&snap);
                (if v.is_finite() { Some(v) } else { None }, s)
            }
            None => {
                if let Some(e) = diverged {
                    return Err(e);
                }
                (None, step)
            }
        };
        flow.set_training(false);
        let summary = TrainSummary {
            data: table.source.clone(),
            n_train: tr_idx.len(),
            n_val: va_idx.len(),
            steps: step,
            best_step,
            seconds: t0.elapsed().as_secs_f64(),
            best_val_log_prob: best_val,
            final_train_nll: last_train,
            stopped_early,
            initial_val_log_prob: initial_val,
            config: serde_json::to_value(cfg).expect("config serialises"),
            reference_log_probs: Vec::new(),
            weighted: self.weights.is_some(),
            lr_decays,
        };
        let lines = log
            .iter()
            .map(|e| serde_json::to_string(e).expect("log serialises"))
            .collect();
        let mut model = Model {
            arch,
            preset,
            flow,
            columns: table.columns.clone(),
            norm,
            context_columns: raw_ctx_columns,
            context_norm: cnorm,
            context_classes: self.context_classes.clone(),
            preprocess: self.preprocess.clone(),
            summary: Some(summary),
            log: lines,
        };
        // the held-out rows' scores under the kept weights: what `nflow score` ranks new rows against
        if !va_idx.is_empty() {
            let c = raw_context.map(|c| c.take_rows(&va_idx));
            let lp = model.log_prob_ctx(&table.take_rows(&va_idx), c.as_ref())?;
            if let Some(s) = model.summary.as_mut() {
                s.reference_log_probs = scores::reference_quantiles(lp);
            }
        }
        Ok(Fitted {
            model,
            log,
            diverged,
        })
    }
}
