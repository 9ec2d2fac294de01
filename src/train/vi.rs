//! Training through the sampling direction: the reverse KL divergence
//! `KL(q || p) = E_q[log q(x) - log p~(x)] + log Z` against a density known up to its normaliser `Z`
//! (variational inference, Boltzmann generators), with reparameterised samples `x = f^-1(z)`, `z ~ p_Z`
//! (Rezende & Mohamed 2015): the gradients flow through the samples and through `log q`.

use super::diagnostics::{diagnostics, Diagnostics};
use super::{
    checkpoint_word_pos, read_checkpoint_state, read_checkpoint_tensors, write_checkpoint, StopFlag,
};
use crate::data::Standardizer;
use crate::engine::{rng, Float, Mat};
use crate::flows::{Flow, FlowDef};
use crate::io::{Model, TrainSummary};
use crate::optim::{clip_grad_norm, Adam, OptimConfig, Schedule};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// An unnormalised target density.
pub trait Target<F: Float>: Sync {
    /// Number of features.
    fn dim(&self) -> usize;
    /// `log p~(x)` per row and its gradient `d log p~ / dx` (given the context, for an amortised target).
    fn log_prob_and_grad(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Vec<F>, Mat<F>);
    /// `log Z = log ∫ p~` where it is known (analytically or by quadrature), to report `KL = log Z - ELBO`.
    fn log_z(&self) -> Option<f64> {
        None
    }
}

/// One reverse-KL pass on the noise `z` (rows drawn from the flow's base): the estimate
/// `mean(log q(x) - log p~(x))` over the rows, and its gradients accumulated into the flow's parameters.
pub fn reverse_kl_backward<F: Float>(
    flow: &mut Flow<F>,
    target: &dyn Target<F>,
    z: &Mat<F>,
    ctx: Option<&Mat<F>>,
) -> Result<F, Error> {
    if target.dim() != flow.dim() {
        return Err(Error::Shape(format!(
            "the target has {} dimensions, the flow {}",
            target.dim(),
            flow.dim()
        )));
    }
    let (x, lq) = flow.rsample_train(z, ctx)?;
    let (lp, mut dx) = target.log_prob_and_grad(&x, ctx);
    if lp.iter().any(|v| !v.is_finite()) || dx.first_non_finite().is_some() {
        return Err(Error::NonFinite {
            layer: "the target's log-density or its gradient".into(),
        });
    }
    let n = F::c(x.rows as f64);
    let loss = lq.iter().zip(&lp).map(|(&a, &b)| a - b).sum::<F>() / n;
    dx.data.iter_mut().for_each(|v| *v = -*v / n);
    flow.rsample_backward(&dx, &vec![F::one() / n; x.rows])?;
    Ok(loss)
}

/// Options of reverse-KL training ([`ViConfig::fit`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViConfig {
    pub steps: usize,
    /// Samples per step.
    pub batch_size: usize,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value.
    pub clip: Option<f64>,
    /// Steps between evaluations (`None`: 20 per run): the ELBO on `eval_samples` draws of one fixed noise
    /// set, the best weights kept.
    pub eval_every: Option<usize>,
    pub eval_samples: usize,
    pub seed: u64,
    /// Set from anywhere to stop after the current step (with a last evaluation; the best weights are kept).
    #[serde(skip)]
    pub stop: StopFlag,
    /// Write a checkpoint every so many steps, and/or continue from one.
    #[serde(skip)]
    pub checkpoint: Option<ViCheckpoint>,
}

/// Checkpoints of reverse-KL training: the model folder `dir` (the current weights) with the optimiser's
/// state, the noise stream's position, the best weights so far and the log beside them, written every `every`
/// steps; with `resume`, training continues from the one there and ends with the same weights as a run that
/// was never interrupted.
#[derive(Clone, Debug, PartialEq)]
pub struct ViCheckpoint {
    pub dir: PathBuf,
    pub every: usize,
    pub resume: bool,
}

/// What a VI checkpoint holds besides the model folder.
#[derive(Serialize, Deserialize)]
struct ViState {
    flow: crate::flows::FlowConfig,
    cfg: serde_json::Value,
    target: String,
    step: usize,
    adam_t: i32,
    rng_word_pos: String,
    best_step: Option<usize>,
    best_elbo: Option<f64>,
    acc: (f64, usize),
    last_loss: f64,
    seconds: f64,
    log: Vec<String>,
}

const VI_STATE_JSON: &str = "vi_state.json";
const VI_STATE_TENSORS: &str = "vi_state.safetensors";

impl Default for ViConfig {
    fn default() -> Self {
        ViConfig {
            steps: 2000,
            batch_size: 256,
            optim: OptimConfig::default(),
            schedule: Schedule::Constant,
            clip: None,
            eval_every: None,
            eval_samples: 4096,
            seed: 0,
            stop: StopFlag::default(),
            checkpoint: None,
        }
    }
}

/// Where reverse-KL training is, for progress reports.
#[derive(Clone, Debug)]
pub struct ViProgress {
    pub step: usize,
    pub total: usize,
    /// Mean reverse-KL estimate `E[log q - log p~]` since the last evaluation.
    pub loss: f64,
    /// The held-out ELBO, when this step evaluated.
    pub elbo: Option<f64>,
}

/// A flow fitted by reverse KL: the model (an ordinary model folder when saved), the diagnostics of its
/// best weights on fresh samples, and the divergence that stopped training early, if any.
pub struct ViFitted {
    pub model: Model,
    pub diagnostics: Diagnostics,
    pub diverged: Option<Error>,
}

/// `(log p~, log q)` of `n` fresh samples of `flow` drawn with `seed`, in f64.
fn sample_weights(
    flow: &Flow<f32>,
    target: &dyn Target<f32>,
    n: usize,
    seed: u64,
    ctx: Option<&Mat<f32>>,
) -> (Vec<f64>, Vec<f64>) {
    let (x, lq) = flow.sample_and_log_prob(n, &mut rng(seed), ctx);
    let (lp, _) = target.log_prob_and_grad(&x, ctx);
    let f = |v: Vec<f32>| v.into_iter().map(f64::from).collect();
    (f(lp), f(lq))
}

impl ViConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.steps == 0 || self.batch_size == 0 || self.eval_samples < 2 {
            return Err(Error::Config(
                "reverse-KL training needs steps >= 1, batch size >= 1 and eval samples >= 2"
                    .into(),
            ));
        }
        self.optim.validate().map_err(Error::Config)?;
        crate::optim::check_clip(self.clip).map_err(Error::Config)?;
        if matches!(self.schedule, Schedule::Plateau { .. }) {
            return Err(Error::Config(
                "the plateau schedule follows a validation split, which reverse-KL training has not: use \
                 constant, warmup or cosine"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Fit a flow to `target` (named `target_name` in the model's summary) by reverse KL.
    pub fn fit(
        &self,
        flow: impl Into<FlowDef>,
        target: &dyn Target<f32>,
        target_name: &str,
        on_step: impl FnMut(&ViProgress),
    ) -> Result<ViFitted, Error> {
        self.fit_amortised(flow, target, target_name, None, on_step)
    }

    /// Amortised variational inference: fit a conditional flow `q(x | c)` to the target `p~(x | c)` for the
    /// contexts of `contexts` (one per row; each step draws its batch's contexts from these rows, with
    /// replacement). The conditioners see the contexts as given (no standardisation). Without contexts, as
    /// [`ViConfig::fit`].
    pub fn fit_amortised(
        &self,
        flow: impl Into<FlowDef>,
        target: &dyn Target<f32>,
        target_name: &str,
        contexts: Option<&Mat<f32>>,
        mut on_step: impl FnMut(&ViProgress),
    ) -> Result<ViFitted, Error> {
        self.validate()?;
        let (arch, preset) = flow.into().resolve()?;
        if arch.dim != target.dim() {
            return Err(Error::Shape(format!(
                "the target {target_name} has {} dimensions, the flow {}",
                target.dim(),
                arch.dim
            )));
        }
        match (contexts, arch.context_dim) {
            (None, 0) => {}
            (Some(c), k) if k > 0 && c.cols == k && c.rows > 0 => {
                if let Some((r, j)) = c.first_non_finite() {
                    return Err(Error::Shape(format!("contexts: row {r}, column {j} is NaN/Inf")));
                }
            }
            (Some(c), k) => {
                return Err(Error::Shape(format!(
                    "contexts are {}x{}, the flow takes {k} context columns (and needs at least one row)",
                    c.rows, c.cols
                )))
            }
            (None, k) => {
                return Err(Error::Shape(format!(
                    "the flow is conditional ({k} context columns): give contexts"
                )))
            }
        }
        // the held-out ELBO's contexts: a fixed draw of the given rows
        let pick = |n: usize, r: &mut crate::engine::Rng| {
            contexts.map(|c| {
                let idx: Vec<usize> = (0..n).map(|_| rand::Rng::gen_range(r, 0..c.rows)).collect();
                c.take_rows(&idx)
            })
        };
        let eval_ctx = pick(self.eval_samples, &mut rng(self.seed ^ 0x0063_7478));
        let mut flow = arch.build::<f32>()?;
        flow.set_training(true);
        let total = self.steps;
        let every = self.eval_every.unwrap_or((total / 20).max(1)).max(1);
        let eval_seed = self.seed ^ 0x6576_616c;
        let mut opt = Adam::new(self.optim);
        let mut r = rng(self.seed ^ 0x7669);
        let mut t0 = Instant::now();
        let (mut best, mut diverged, mut log) =
            (None::<(f64, usize, Vec<Vec<f32>>)>, None, Vec::new());
        let (mut acc, mut last_loss, mut step) = ((0.0f64, 0usize), f64::NAN, 0);
        let cfg_json = serde_json::to_value(self).expect("config serialises");
        if let Some(ck) = self.checkpoint.as_ref().filter(|c| c.resume) {
            let dir = &ck.dir;
            let bad = |msg: String| Error::Model {
                path: dir.display().to_string(),
                msg,
            };
            let (model, st): (Model, ViState) = read_checkpoint_state(dir, VI_STATE_JSON)?;
            if st.flow != arch {
                return Err(bad("the checkpoint was made with a different flow".into()));
            }
            if st.cfg != cfg_json || st.target != target_name {
                return Err(bad(format!(
                    "the checkpoint was made for target {} with different training options (steps, batch \
                     size, learning rate, schedule, seed, ...)",
                    st.target
                )));
            }
            let ts = read_checkpoint_tensors(dir, VI_STATE_TENSORS)?;
            flow = model.flow;
            flow.set_training(true);
            opt.set_state(ts.adam_m, ts.adam_v, st.adam_t);
            if let Some(bs) = st.best_step {
                best = Some((st.best_elbo.unwrap_or(f64::NEG_INFINITY), bs, ts.best));
            }
            r.set_word_pos(checkpoint_word_pos(dir, &st.rng_word_pos)?);
            (acc, last_loss, step, log) = (st.acc, st.last_loss, st.step, st.log);
            t0 = Instant::now() - std::time::Duration::from_secs_f64(st.seconds);
        }
        let mut tuner = crate::engine::pool::Tuner::new();
        while step < total {
            step += 1;
            let cb = pick(self.batch_size, &mut r);
            let z = flow.sample_noise(self.batch_size, &mut r, cb.as_ref());
            flow.zero_grad();
            let loss = match tuner.step(|| reverse_kl_backward(&mut flow, target, &z, cb.as_ref()))
            {
                Ok(l) => f64::from(l),
                Err(Error::NonFinite { layer }) => {
                    diverged = Some(Error::Diverged { step, layer });
                    break;
                }
                Err(e) => return Err(e),
            };
            let lr = self.optim.lr * self.schedule.factor(step - 1, total);
            {
                let mut ps: Vec<_> = flow
                    .named_params_mut()
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect();
                if let Some(c) = self.clip {
                    clip_grad_norm(&mut ps, c);
                }
                opt.step(&mut ps, lr);
            }
            acc = (acc.0 + loss, acc.1 + 1);
            let mut elbo = None;
            let stopping = self.stop.is_set();
            if step % every == 0 || step == total || stopping {
                last_loss = acc.0 / acc.1 as f64;
                acc = (0.0, 0);
                flow.set_training(false);
                let (lp, lq) = sample_weights(
                    &flow,
                    target,
                    self.eval_samples,
                    eval_seed,
                    eval_ctx.as_ref(),
                );
                flow.set_training(true);
                let d = diagnostics(&lp, &lq);
                let e = if d.elbo.is_finite() {
                    d.elbo
                } else {
                    f64::NEG_INFINITY
                };
                if best.as_ref().is_none_or(|b| e > b.0) {
                    best = Some((e, step, flow.snapshot()));
                }
                log.push(serde_json::json!({
                    "step": step, "seconds": t0.elapsed().as_secs_f64(), "lr": lr, "train_loss": last_loss,
                    "elbo": d.elbo, "elbo_se": d.elbo_se, "log_z": d.log_z, "ess_fraction": d.ess_fraction,
                }).to_string());
                elbo = Some(d.elbo);
            }
            on_step(&ViProgress {
                step,
                total,
                loss: if elbo.is_some() { last_loss } else { loss },
                elbo,
            });
            if let Some(ck) = &self.checkpoint {
                if step % ck.every.max(1) == 0 && step < total {
                    let st = ViState {
                        flow: arch.clone(),
                        cfg: cfg_json.clone(),
                        target: target_name.to_string(),
                        step,
                        adam_t: opt.state().2,
                        rng_word_pos: r.get_word_pos().to_string(),
                        best_step: best.as_ref().map(|b| b.1),
                        best_elbo: best.as_ref().map(|b| b.0).filter(|v| v.is_finite()),
                        acc,
                        last_loss,
                        seconds: t0.elapsed().as_secs_f64(),
                        log: log.clone(),
                    };
                    let model = vi_model(arch.clone(), preset.clone(), flow, None, Vec::new());
                    let res = write_checkpoint(
                        &model,
                        &ck.dir,
                        (VI_STATE_JSON, VI_STATE_TENSORS),
                        &st,
                        &opt,
                        best.as_ref().map(|b| &b.2),
                    );
                    flow = model.flow;
                    res?;
                }
            }
            if stopping || (elbo.is_some() && self.stop.is_set()) {
                break;
            }
        }
        let best_step = match &best {
            Some((_, s, snap)) => {
                flow.restore(snap);
                *s
            }
            None => return Err(diverged.unwrap_or(Error::Config("no step was trained".into()))),
        };
        flow.set_training(false);
        // the final diagnostics on fresh noise (not the set the best weights were chosen on)
        let final_ctx = pick(self.eval_samples, &mut rng(self.seed ^ 0x6663_7478));
        let (lp, lq) = sample_weights(
            &flow,
            target,
            self.eval_samples,
            eval_seed ^ 0x66,
            final_ctx.as_ref(),
        );
        let d = diagnostics(&lp, &lq);
        let mut config = serde_json::to_value(self).expect("config serialises");
        config["target"] = serde_json::json!(target_name);
        let summary = TrainSummary {
            data: format!("target:{target_name}"),
            n_train: 0,
            n_val: 0,
            steps: step,
            best_step,
            seconds: t0.elapsed().as_secs_f64(),
            best_val_log_prob: None,
            final_train_nll: last_loss,
            stopped_early: diverged.is_some(),
            initial_val_log_prob: None,
            config,
            reference_log_probs: Vec::new(),
            weighted: false,
            lr_decays: 0,
        };
        Ok(ViFitted {
            model: vi_model(arch, preset, flow, Some(summary), log),
            diagnostics: d,
            diverged,
        })
    }
}

/// A flow fitted by reverse KL as a model: columns `x0..`, contexts `c0..`, no standardisation.
fn vi_model(
    arch: crate::flows::FlowConfig,
    preset: Option<crate::flows::FlowSpec>,
    flow: Flow<f32>,
    summary: Option<TrainSummary>,
    log: Vec<String>,
) -> Model {
    let (dim, k) = (arch.dim, arch.context_dim);
    Model {
        arch,
        preset,
        flow,
        columns: (0..dim).map(|j| format!("x{j}")).collect(),
        norm: Standardizer::identity(dim),
        context_columns: (0..k).map(|j| format!("c{j}")).collect(),
        context_norm: None,
        context_classes: Vec::new(),
        preprocess: None,
        summary,
        log,
    }
}

#[cfg(test)]
mod tests {
    /// The checkpoint files' names are among those an output folder may hold (else a checkpoint folder
    /// could not be replaced by the next checkpoint).
    #[test]
    fn checkpoint_files_are_known_to_the_output_check() {
        for name in [
            VI_STATE_JSON,
            VI_STATE_TENSORS,
            super::super::STATE_JSON,
            super::super::STATE_TENSORS,
        ] {
            assert!(crate::io::output::MODEL_FILES.contains(&name), "{name}");
        }
    }

    use super::*;
    use crate::engine::{randn, rng};
    use crate::flows::{
        ActNormConfig, BaseConfig, CouplingConfig, FlowConfig, Layer, LuLinearConfig, MapConfig,
        MlpConfig,
    };
    use crate::optim::{Adam, OptimConfig};
    use crate::transforms::RqSpline;
    use rand::Rng as _;

    /// `N(m, S)` in 2-D with `S = [[1, r], [r, 1]] * s^2`, unnormalised by `log Z` (known).
    struct Gauss2 {
        m: [f64; 2],
        s: f64,
        r: f64,
        log_z: f64,
    }

    impl Target<f64> for Gauss2 {
        fn dim(&self) -> usize {
            2
        }
        fn log_prob_and_grad(&self, x: &Mat<f64>, _c: Option<&Mat<f64>>) -> (Vec<f64>, Mat<f64>) {
            let (s2, r) = (self.s * self.s, self.r);
            let det = s2 * s2 * (1.0 - r * r);
            // precision = S^-1
            let (a, b) = (s2 / det, -r * s2 / det);
            let mut g = Mat::zeros(x.rows, 2);
            let lp = (0..x.rows)
                .map(|i| {
                    let (u, v) = (x.at(i, 0) - self.m[0], x.at(i, 1) - self.m[1]);
                    let (pu, pv) = (a * u + b * v, b * u + a * v);
                    g.data[2 * i] = -pu;
                    g.data[2 * i + 1] = -pv;
                    -0.5 * (u * pu + v * pv) + self.log_z
                })
                .collect();
            (lp, g)
        }
    }

    impl Gauss2 {
        /// The target's true normaliser: `log Z` of `exp(log p~)`, i.e. `log_z` plus the Gaussian's.
        fn true_log_norm(&self) -> f64 {
            let det = self.s.powi(4) * (1.0 - self.r * self.r);
            self.log_z + (2.0 * std::f64::consts::PI).ln() + 0.5 * det.ln()
        }
    }

    fn mixed_flow(seed: u64) -> FlowConfig {
        let coupling = |index, map| {
            Layer::Coupling(CouplingConfig {
                map,
                index,
                net: MlpConfig {
                    hidden: 8,
                    ..MlpConfig::default()
                },
                ..CouplingConfig::default()
            })
        };
        FlowConfig::new(2)
            .layer(Layer::ActNorm(ActNormConfig::default()))
            .layer(coupling(0, MapConfig::default()))
            .layer(Layer::LuLinear(LuLinearConfig {
                random_permutation: true,
            }))
            .layer(coupling(
                1,
                MapConfig::RqSpline(RqSpline {
                    bins: 4,
                    ..RqSpline::default()
                }),
            ))
            .layer(coupling(0, MapConfig::SinhArcsinh {}))
            .layer(Layer::Scaling {})
            .base(BaseConfig::Normal {})
            .seed(seed)
    }

    /// The reverse-KL estimate's gradient (fixed noise) against central differences, for every parameter of
    /// a flow of several layer kinds.
    #[test]
    fn reverse_kl_gradients_match_finite_differences() {
        let target = Gauss2 {
            m: [0.5, -0.3],
            s: 1.3,
            r: 0.6,
            log_z: 0.7,
        };
        let mut flow = mixed_flow(4).build::<f64>().unwrap();
        let mut r = rng(5);
        for (_, p) in flow.named_params_mut() {
            if p.trainable {
                for k in 0..p.value().len() {
                    p.value_mut()[k] += 0.3 * r.gen_range(-1.0..1.0);
                }
            }
        }
        let z: Mat<f64> = randn(&mut r, 7, 2);
        flow.zero_grad();
        reverse_kl_backward(&mut flow, &target, &z, None).unwrap();
        let grads: Vec<(String, Vec<f64>)> = flow
            .named_params()
            .iter()
            .filter(|(_, p)| p.trainable)
            .map(|(n, p)| (n.clone(), p.grad().to_vec()))
            .collect();
        let h = 1e-6;
        let mut checked = 0;
        for (name, g) in &grads {
            for k in (0..g.len()).step_by((g.len() / 6).max(1)) {
                let mut loss_at = |d: f64| {
                    for (n, p) in flow.named_params_mut() {
                        if &n == name {
                            p.value_mut()[k] += d;
                        }
                    }
                    flow.reload();
                    let l = reverse_kl_backward(&mut flow, &target, &z, None).unwrap();
                    flow.zero_grad();
                    l
                };
                let lp = loss_at(h);
                let lm = loss_at(-2.0 * h);
                loss_at(h);
                let fd = (lp - lm) / (2.0 * h);
                assert!(
                    (fd - g[k]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "{name}[{k}]: analytic {} vs finite difference {fd}",
                    g[k]
                );
                checked += 1;
            }
        }
        assert!(checked > 30, "only {checked} entries checked");
    }

    /// Reverse-KL training fits a correlated Gaussian known up to its normaliser: the KL estimate
    /// `E_q[log q - log p~] + log Z` goes to about zero, and the importance-sampling estimate of `log Z`
    /// recovers the true one.
    #[test]
    fn reverse_kl_training_fits_a_gaussian_and_estimates_log_z() {
        let target = Gauss2 {
            m: [1.0, -2.0],
            s: 1.5,
            r: 0.8,
            log_z: 3.0,
        };
        let mut flow = mixed_flow(1).build::<f64>().unwrap();
        let mut opt = Adam::new(OptimConfig {
            lr: 5e-3,
            ..OptimConfig::default()
        });
        let mut r = rng(2);
        for _ in 0..1500 {
            let z: Mat<f64> = randn(&mut r, 128, 2);
            flow.zero_grad();
            reverse_kl_backward(&mut flow, &target, &z, None).unwrap();
            let mut ps: Vec<_> = flow
                .named_params_mut()
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            opt.step(&mut ps, 5e-3);
        }
        flow.set_training(false);
        let n = 20_000;
        let (x, lq) = flow.sample_and_log_prob(n, &mut rng(3), None);
        let (lp, _) = target.log_prob_and_grad(&x, None);
        let lw: Vec<f64> = lp.iter().zip(&lq).map(|(a, b)| a - b).collect();
        let kl = -lw.iter().sum::<f64>() / n as f64 + target.true_log_norm();
        let m = lw.iter().cloned().fold(f64::MIN, f64::max);
        let log_z = m + (lw.iter().map(|w| (w - m).exp()).sum::<f64>() / n as f64).ln();
        assert!((-0.01..0.02).contains(&kl), "KL(q || p) = {kl}");
        assert!(
            (log_z - target.true_log_norm()).abs() < 0.01,
            "log Z {log_z} vs {}",
            target.true_log_norm()
        );
    }

    /// `ViConfig::fit` on a 10-D correlated Gaussian (normalised: log Z = 0) with a preset flow: the
    /// importance-sampling log Z falls within 3 standard errors of 0, the KL (= -ELBO) is small, and the
    /// model saves and loads like any other.
    #[test]
    fn resumed_vi_ends_with_the_weights_of_an_uninterrupted_run() {
        use crate::flows::{FlowKind, FlowSpec};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let target = crate::train::targets::Gaussian::new(2, 0.5, 1.0).unwrap();
        let spec = FlowSpec {
            layers: 2,
            hidden: 8,
            ..FlowSpec::preset(FlowKind::NsfC, 2)
        };
        let dir = std::env::temp_dir().join(format!("nflow-vi-ck-{}", std::process::id()));
        let base = ViConfig {
            steps: 60,
            batch_size: 32,
            eval_every: Some(10),
            eval_samples: 64,
            schedule: Schedule::Cosine { warmup: 5 },
            ..ViConfig::default()
        };
        let whole = base.fit(spec.clone(), &target, "g", |_| {}).unwrap();
        // interrupted after step 45: the checkpoint of step 40 stays behind
        let flag = Arc::new(AtomicBool::new(false));
        let ck = |resume| {
            Some(ViCheckpoint {
                dir: dir.clone(),
                every: 20,
                resume,
            })
        };
        let first = ViConfig {
            checkpoint: ck(false),
            stop: StopFlag::new(flag.clone()),
            ..base.clone()
        };
        let cut = first
            .fit(spec.clone(), &target, "g", |p| {
                if p.step == 45 {
                    flag.store(true, Ordering::Relaxed);
                }
            })
            .unwrap();
        assert!(cut.model.summary.unwrap().steps < 60);
        let resumed = ViConfig {
            checkpoint: ck(true),
            ..base.clone()
        }
        .fit(spec.clone(), &target, "g", |_| {})
        .unwrap();
        assert_eq!(whole.model.flow.snapshot(), resumed.model.flow.snapshot());
        assert_eq!(whole.diagnostics, resumed.diagnostics);
        let s = resumed.model.summary.unwrap();
        assert_eq!((s.steps, s.best_step), {
            let w = whole.model.summary.unwrap();
            (w.steps, w.best_step)
        });
        // other options or another target are refused, naming the checkpoint
        let other = ViConfig {
            checkpoint: ck(true),
            batch_size: 16,
            ..base.clone()
        };
        let e = other.fit(spec.clone(), &target, "g", |_| {}).err().unwrap();
        assert!(e.to_string().contains("different training options"), "{e}");
        let e = ViConfig {
            checkpoint: ck(true),
            ..base
        }
        .fit(spec, &target, "h", |_| {})
        .err()
        .unwrap();
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vi_trainer_recovers_log_z_of_a_10d_gaussian() {
        use crate::flows::{FlowKind, FlowSpec};
        let target = crate::train::targets::Gaussian::new(10, 0.5, 1.5).unwrap();
        let spec = FlowSpec {
            layers: 4,
            hidden: 32,
            ..FlowSpec::preset(FlowKind::Realnvp, 10)
        };
        let cfg = ViConfig {
            steps: 1500,
            optim: OptimConfig {
                lr: 3e-3,
                ..OptimConfig::default()
            },
            eval_samples: 8192,
            ..ViConfig::default()
        };
        let fitted = cfg.fit(spec, &target, "gauss:10:0.5:1.5", |_| {}).unwrap();
        let d = fitted.diagnostics;
        assert!(fitted.diverged.is_none());
        assert!(d.log_z.abs() < 3.0 * d.log_z_se, "{d:?}");
        assert!(-d.elbo < 0.05, "KL {} ({d:?})", -d.elbo);
        let dir = std::env::temp_dir().join(format!("nflow-vi-{}", std::process::id()));
        fitted.model.save(&dir).unwrap();
        let back = Model::load(&dir).unwrap();
        let s = back.sample(5, 1, None).unwrap();
        assert_eq!(s, fitted.model.sample(5, 1, None).unwrap());
        assert_eq!(back.summary.unwrap().data, "target:gauss:10:0.5:1.5");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Amortised VI: one conditional flow for the family `p(x | c) = N((c, -c/2), I)` (normalised, so
    /// `log Z = 0` for every `c`), trained on contexts drawn from [-2, 2]; at contexts inside the range the
    /// KL is small and the importance-sampling log Z within 3 standard errors of 0.
    #[test]
    fn amortised_vi_fits_a_family_of_gaussians() {
        struct Shifted;
        impl Target<f32> for Shifted {
            fn dim(&self) -> usize {
                2
            }
            fn log_prob_and_grad(
                &self,
                x: &Mat<f32>,
                c: Option<&Mat<f32>>,
            ) -> (Vec<f32>, Mat<f32>) {
                let c = c.expect("a context");
                let mut g = Mat::zeros(x.rows, 2);
                let lp = (0..x.rows)
                    .map(|i| {
                        let (u, v) = (x.at(i, 0) - c.at(i, 0), x.at(i, 1) + 0.5 * c.at(i, 0));
                        g.data[2 * i] = -u;
                        g.data[2 * i + 1] = -v;
                        -0.5 * (u * u + v * v) - (2.0 * std::f32::consts::PI).ln()
                    })
                    .collect();
                (lp, g)
            }
        }
        use crate::flows::{FlowKind, FlowSpec};
        let spec = FlowSpec {
            layers: 4,
            hidden: 32,
            context_dim: 1,
            ..FlowSpec::preset(FlowKind::Realnvp, 2)
        };
        let ctx = Mat::from_vec(401, 1, (0..401).map(|i| -2.0 + i as f32 / 100.0).collect());
        let cfg = ViConfig {
            steps: 1500,
            optim: OptimConfig {
                lr: 3e-3,
                ..OptimConfig::default()
            },
            ..ViConfig::default()
        };
        let fitted = cfg
            .fit_amortised(spec, &Shifted, "shifted", Some(&ctx), |_| {})
            .unwrap();
        let flow = &fitted.model.flow;
        for c in [-1.5f32, 0.0, 1.2] {
            let cm = Mat::from_vec(4096, 1, vec![c; 4096]);
            let (lp, lq) = sample_weights(flow, &Shifted, 4096, 5, Some(&cm));
            let d = diagnostics(&lp, &lq);
            assert!(-d.elbo < 0.05, "c = {c}: KL {}", -d.elbo);
            assert!(d.log_z.abs() < 3.0 * d.log_z_se, "c = {c}: {d:?}");
        }
        assert_eq!(fitted.model.context_columns, vec!["c0"]);
        // the trainer refuses a conditional flow without contexts, and contexts of the wrong width
        let e = cfg
            .fit(spec_ctx(), &Shifted, "s", |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("give contexts"), "{e}");
        let wide = Mat::zeros(3, 2);
        let e = cfg
            .fit_amortised(spec_ctx(), &Shifted, "s", Some(&wide), |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("3x2"), "{e}");
    }

    fn spec_ctx() -> crate::flows::FlowSpec {
        crate::flows::FlowSpec {
            context_dim: 1,
            ..crate::flows::FlowSpec::preset(crate::flows::FlowKind::Realnvp, 2)
        }
    }

    #[test]
    fn layers_without_a_sampling_pass_and_bad_targets_are_named() {
        let target = Gauss2 {
            m: [0.0, 0.0],
            s: 1.0,
            r: 0.0,
            log_z: 0.0,
        };
        let z: Mat<f64> = randn(&mut rng(1), 4, 2);
        let mut bn = FlowConfig::new(2)
            .layer(Layer::BatchNorm {})
            .build::<f64>()
            .unwrap();
        let e = reverse_kl_backward(&mut bn, &target, &z, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 0 (BatchNorm)"), "{e}");
        let mut diag = mixed_flow(0)
            .base(BaseConfig::DiagNormal {})
            .build::<f64>()
            .unwrap();
        let e = reverse_kl_backward(&mut diag, &target, &z, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("base distribution"), "{e}");
        struct Nan;
        impl Target<f64> for Nan {
            fn dim(&self) -> usize {
                2
            }
            fn log_prob_and_grad(
                &self,
                x: &Mat<f64>,
                _: Option<&Mat<f64>>,
            ) -> (Vec<f64>, Mat<f64>) {
                (vec![f64::NAN; x.rows], Mat::zeros(x.rows, 2))
            }
        }
        let mut f = mixed_flow(0).build::<f64>().unwrap();
        let e = reverse_kl_backward(&mut f, &Nan, &z, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("target"), "{e}");
    }
}
