//! Optimisers (Adam, AdamW), global gradient-norm clipping and learning-rate schedules.

use crate::engine::kernels::PacksWriter;
use crate::engine::Float;
use crate::nn::Param;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Adam (Kingma & Ba 2015) or AdamW (Loshchilov & Hutter 2019: decoupled weight decay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    #[default]
    Adam,
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the gradient (Adam) or decoupled decay (AdamW).
    pub weight_decay: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: OptimKind::Adam,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl OptimConfig {
    /// Wrong options, as a message naming the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!(
                "learning rate (lr) must be positive, got {}",
                self.lr
            ));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(format!(
                    "{name} must be in [0, 1), got {b} (a moving average's decay)"
                ));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!(
                "eps must be positive, got {} (it keeps Adam's division finite)",
                self.eps
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight decay must be zero or positive, got {} (a negative decay grows the weights)",
                self.weight_decay
            ));
        }
        Ok(())
    }
}

/// Gradient clipping's norm, where one is given: a positive number (0 would stop learning, a negative one
/// turn the gradient around).
pub fn check_clip(clip: Option<f64>) -> Result<(), String> {
    match clip {
        Some(c) if !(c.is_finite() && c > 0.0) => Err(format!(
            "gradient clipping norm (clip) must be a positive number, got {c}: it caps the gradient's length \
             (0 would stop learning, a negative value turns the gradient around); leave it out for no clipping"
        )),
        _ => Ok(()),
    }
}

/// Learning-rate schedule over the run's total number of steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Schedule {
    #[default]
    Constant,
    /// Linear warm-up over `warmup` steps, then constant.
    Warmup { warmup: usize },
    /// Linear warm-up over `warmup` steps, then cosine decay to zero at the last step.
    Cosine { warmup: usize },
    /// Reduce on plateau: the rate is multiplied by `decay` each time the validation log-likelihood has not
    /// improved for the trainer's patience (evaluations); the run stops at the plateau after `decays` such
    /// reductions. Adapts the length of a run to its data: small sets that overfit soon stop soon, large ones
    /// keep improving at smaller rates. The trainer keeps the reductions; `factor` gives only the warm-up.
    Plateau {
        warmup: usize,
        decay: f64,
        decays: usize,
    },
}

impl Schedule {
    pub fn parse(s: &str, warmup: usize) -> Option<Self> {
        Some(match s {
            "constant" => Schedule::Constant,
            "warmup" => Schedule::Warmup { warmup },
            "cosine" => Schedule::Cosine { warmup },
            "plateau" => Schedule::Plateau {
                warmup,
                decay: 0.5,
                decays: 3,
            },
            _ => return None,
        })
    }
    /// Multiplier of the base learning rate at `step` (0-based) of `total`.
    pub fn factor(&self, step: usize, total: usize) -> f64 {
        let warm = |w: usize| {
            if w > 0 && step < w {
                Some((step + 1) as f64 / w as f64)
            } else {
                None
            }
        };
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Warmup { warmup } | Schedule::Plateau { warmup, .. } => {
                warm(warmup).unwrap_or(1.0)
            }
            Schedule::Cosine { warmup } => warm(warmup).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup).max(1) as f64;
                let p = ((step - warmup.min(step)) as f64 / span).min(1.0);
                0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }),
        }
    }
}

/// Adam state: first and second moments per parameter tensor.
pub struct Adam<F> {
    pub cfg: OptimConfig,
    m: Vec<Vec<F>>,
    v: Vec<Vec<F>>,
    t: i32,
}

impl<F: Float> Adam<F> {
    pub fn new(cfg: OptimConfig) -> Self {
        Adam {
            cfg,
            m: Vec::new(),
            v: Vec::new(),
            t: 0,
        }
    }
    /// The moments and step count (for checkpoints).
    pub fn state(&self) -> (&[Vec<F>], &[Vec<F>], i32) {
        (&self.m, &self.v, self.t)
    }
    /// Continue from a saved state.
    pub fn set_state(&mut self, m: Vec<Vec<F>>, v: Vec<Vec<F>>, t: i32) {
        self.m = m;
        self.v = v;
        self.t = t;
    }
    /// One update of every trainable parameter with learning rate `lr`.
    pub fn step(&mut self, params: &mut [&mut Param<F>], lr: f64) {
        let params: Vec<&mut &mut Param<F>> = params.iter_mut().filter(|p| p.trainable).collect();
        if self.m.is_empty() {
            // (the moments live as long as the optimiser and are streamed every step: huge pages where allowed)
            let zeros = || {
                params
                    .iter()
                    .map(|p| vec![F::zero(); p.value().len()])
                    .collect()
            };
            self.m = crate::engine::lasting(zeros);
            self.v = crate::engine::lasting(zeros);
        }
        self.t += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        let (b1, b2) = (F::c(c.beta1), F::c(c.beta2));
        let k = Coefs {
            b1,
            b2,
            a1: F::one() - b1,
            a2: F::one() - b2,
            step: F::c(lr / bc1),
            inv_bc2: F::c(1.0 / bc2),
            eps: F::c(c.eps),
            wd: F::c(c.weight_decay),
            lr_wd: F::c(lr) * F::c(c.weight_decay),
            decoupled: c.kind == OptimKind::Adamw,
        };
        // one fused pass, element-wise (so the result does not depend on the thread count), over fixed chunks of
        // every tensor in one parallel region (one region per tensor waited for each tensor's last chunk, and ran
        // the tensors of one chunk or less on one thread while the others waited)
        // (a weight whose packed forms are kept in step, [`Param::step_parts`]: chunks of whole groups of rows,
        // each repacked right after its update, while it is in cache)
        const CHUNK: usize = 1 << 15;
        let mut tasks = Vec::new();
        let mut total = 0;
        for ((p, m), v) in params.into_iter().zip(&mut self.m).zip(&mut self.v) {
            let p: &mut Param<F> = p;
            let (w, g, packs) = p.step_parts();
            total += w.len();
            let (chunk, row) = match packs {
                Some(pw) => {
                    let row = pw.row_len();
                    let group = PacksWriter::ROWS * row;
                    ((CHUNK / group).max(1) * group, row)
                }
                None => (CHUNK, 1),
            };
            tasks.extend(
                w.chunks_mut(chunk)
                    .zip(g.chunks(chunk))
                    .zip(m.chunks_mut(chunk))
                    .zip(v.chunks_mut(chunk))
                    .enumerate()
                    .map(|(c, (((w, g), m), v))| {
                        let r0 = c * chunk / row;
                        let rows = packs.map(|p| (p, r0, r0 + w.len() / row));
                        (w, g, m, v, rows)
                    }),
            );
        }
        let run = |(w, g, m, v, rows): Task<'_, F>| {
            update(k, w, g, m, v);
            if let Some((packs, r0, r1)) = rows {
                // SAFETY: the chunks, hence the rows, of one tensor are disjoint, and nothing reads the packs
                // during the step
                unsafe { packs.rows(w, r0, r1) };
            }
        };
        if total > CHUNK && crate::engine::pool::threads() > 1 {
            tasks.into_par_iter().for_each(run);
        } else {
            tasks.into_iter().for_each(run);
        }
    }
}

/// A chunk of one tensor for one step: weights, gradients, moments, and, for a weight with packed forms, the
/// writer and the chunk's rows.
type Task<'a, F> = (
    &'a mut [F],
    &'a [F],
    &'a mut [F],
    &'a mut [F],
    Option<(PacksWriter, usize, usize)>,
);

/// Adam's coefficients for one step.
#[derive(Clone, Copy)]
struct Coefs<F> {
    b1: F,
    b2: F,
    a1: F,
    a2: F,
    /// `lr` over the first moment's bias correction.
    step: F,
    /// One over the second moment's bias correction.
    inv_bc2: F,
    eps: F,
    wd: F,
    lr_wd: F,
    decoupled: bool,
}

/// One Adam step over a slice of a tensor: weights `w`, gradients `g`, moments `m`, `v`.
fn update<F: Float>(k: Coefs<F>, w: &mut [F], g: &[F], m: &mut [F], v: &mut [F]) {
    #[cfg(target_arch = "x86_64")]
    if crate::engine::sgemm::available() {
        // SAFETY: the CPU has AVX2 and FMA
        return unsafe { update_avx2(k, w, g, m, v) };
    }
    update_impl(k, w, g, m, v)
}

/// [`update_impl`] compiled for AVX2: eight lanes for its square roots and divisions (the crate's baseline,
/// SSE2, has four). The same operations (no fused multiply-adds), so the same bits.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_avx2<F: Float>(k: Coefs<F>, w: &mut [F], g: &[F], m: &mut [F], v: &mut [F]) {
    update_impl(k, w, g, m, v)
}

#[inline(always)]
fn update_impl<F: Float>(k: Coefs<F>, w: &mut [F], g: &[F], m: &mut [F], v: &mut [F]) {
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = if k.decoupled {
            *w -= k.lr_wd * *w;
            g
        } else {
            g + k.wd * *w
        };
        *m = k.b1 * *m + k.a1 * g;
        *v = k.b2 * *v + k.a2 * g * g;
        *w -= k.step * *m / ((*v * k.inv_bc2).sqrt() + k.eps);
    }
}

/// Scale all gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm<F: Float>(params: &mut [&mut Param<F>], max_norm: f64) -> f64 {
    // one running sum over every entry, in order (the gradients borrowed first: a zeroed one is a temporary)
    let grads: Vec<_> = params
        .iter()
        .filter(|p| p.trainable)
        .map(|p| p.grad())
        .collect();
    let norm = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|g| g.f64() * g.f64())
        .sum::<f64>()
        .sqrt();
    if norm > max_norm && norm.is_finite() {
        let s = F::c(max_norm / (norm + 1e-12));
        for p in params.iter_mut().filter(|p| p.trainable) {
            p.grad_mut().iter_mut().for_each(|g| *g *= s);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step by hand (Kingma & Ba's Algorithm 1, with and without weight decay, decoupled or not), and the
    /// AVX2 compilation equal to the baseline one bit for bit.
    #[test]
    fn adam_update_matches_the_formula_and_compilations_agree() {
        let mut r = crate::engine::rng(3);
        let n = 1000;
        let draw = |r: &mut crate::engine::Rng| -> Vec<f32> {
            (0..n)
                .map(|_| rand::Rng::gen_range(r, -1.0f32..1.0))
                .collect()
        };
        let (w0, g) = (draw(&mut r), draw(&mut r));
        let (m0, v0): (Vec<f32>, Vec<f32>) =
            (draw(&mut r), draw(&mut r).iter().map(|v| v.abs()).collect());
        for (wd, decoupled) in [(0.0f32, false), (0.1, false), (0.1, true)] {
            let k = Coefs {
                b1: 0.9,
                b2: 0.999,
                a1: 1.0 - 0.9,
                a2: 1.0 - 0.999,
                step: 0.01 / (1.0 - 0.9f32.powi(3)),
                inv_bc2: 1.0 / (1.0 - 0.999f32.powi(3)),
                eps: 1e-8,
                wd,
                lr_wd: 0.01 * wd,
                decoupled,
            };
            let (mut w, mut m, mut v) = (w0.clone(), m0.clone(), v0.clone());
            update(k, &mut w, &g, &mut m, &mut v);
            let (mut w2, mut m2, mut v2) = (w0.clone(), m0.clone(), v0.clone());
            update_impl(k, &mut w2, &g, &mut m2, &mut v2);
            assert_eq!((&w, &m, &v), (&w2, &m2, &v2));
            for i in 0..n {
                let (wi, gi) = (w0[i] as f64, g[i] as f64);
                let (wi, gi) = if decoupled {
                    (wi - 0.01 * wd as f64 * wi, gi)
                } else {
                    (wi, gi + wd as f64 * wi)
                };
                let mi = 0.9 * m0[i] as f64 + 0.1 * gi;
                let vi = 0.999 * v0[i] as f64 + 0.001 * gi * gi;
                let want = wi
                    - 0.01 / (1.0 - 0.9f64.powi(3)) * mi
                        / ((vi / (1.0 - 0.999f64.powi(3))).sqrt() + 1e-8);
                assert!(
                    (w[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "{i}: {} vs {want}",
                    w[i]
                );
            }
        }
    }

    #[test]
    fn adam_minimises_a_quadratic() {
        let mut p = Param::<f64>::new("w", vec![2], vec![3.0, -2.0]);
        let mut opt = Adam::new(OptimConfig {
            lr: 0.05,
            ..OptimConfig::default()
        });
        for _ in 0..2000 {
            p.set_grad(p.value().iter().map(|&w| 2.0 * (w - 1.0)).collect());
            opt.step(&mut [&mut p], 0.05);
        }
        assert!(
            p.value().iter().all(|&w| (w - 1.0).abs() < 1e-3),
            "{:?}",
            p.value()
        );
    }

    #[test]
    fn adam_first_step_matches_hand_computation() {
        // First Adam step moves each weight by lr * sign(g) (bias-corrected m/sqrt(v) = g/|g|).
        let mut p = Param::<f64>::new("w", vec![2], vec![1.0, 1.0]);
        p.set_grad(vec![0.5, -4.0]);
        Adam::new(OptimConfig::default()).step(&mut [&mut p], 0.1);
        assert!((p.value()[0] - 0.9).abs() < 1e-6 && (p.value()[1] - 1.1).abs() < 1e-6);
        // AdamW decays the weight before the step: w - lr*wd*w - lr*sign(g)
        let mut q = Param::<f64>::new("w", vec![1], vec![2.0]);
        q.set_grad(vec![1.0]);
        let cfg = OptimConfig {
            kind: OptimKind::Adamw,
            weight_decay: 0.5,
            ..OptimConfig::default()
        };
        Adam::new(cfg).step(&mut [&mut q], 0.1);
        assert!(
            (q.value()[0] - (2.0 - 0.1 * 0.5 * 2.0 - 0.1)).abs() < 1e-6,
            "{}",
            q.value()[0]
        );
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let mut p = Param::<f64>::new("w", vec![2], vec![0.0, 0.0]);
        p.set_grad(vec![3.0, 4.0]);
        let n = clip_grad_norm(&mut [&mut p], 1.0);
        assert_eq!(n, 5.0);
        assert!((p.grad()[0] - 0.6).abs() < 1e-9 && (p.grad()[1] - 0.8).abs() < 1e-9);
    }

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.factor(50, 100), 1.0);
        let w = Schedule::Warmup { warmup: 10 };
        assert!((w.factor(0, 100) - 0.1).abs() < 1e-12 && w.factor(10, 100) == 1.0);
        let c = Schedule::Cosine { warmup: 0 };
        assert!((c.factor(0, 100) - 1.0).abs() < 1e-12);
        assert!((c.factor(50, 100) - 0.5).abs() < 1e-12);
        assert!(c.factor(100, 100).abs() < 1e-12);
    }
}
