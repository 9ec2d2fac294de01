//! Base distributions `p_Z` of a flow: log-density, its gradient (for training), and sampling.

pub mod made_mog;
pub mod mixture;
pub mod student_t;

pub use made_mog::MadeMog;
pub use mixture::{GaussianMixture, MixtureInit};
pub use student_t::StudentT;

use crate::engine::{randn, Float, Mat, Rng};
use crate::nn::Param;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

crate::names::named!(BaseKind => "base distribution");

const LN_2PI: f64 = 1.837_877_066_409_345_5;

pub trait Distribution<F: Float>: Send + Sync {
    fn kind(&self) -> &'static str;
    fn dim(&self) -> usize;
    /// Per-row log-density (given the context rows, for a conditional distribution).
    fn log_prob(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Vec<F>;
    /// The training-time log-density: keeps what [`Distribution::log_prob_backward`] needs, and is where a
    /// data-initialised distribution initialises itself from its first batch.
    fn log_prob_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Vec<F> {
        self.log_prob(z, ctx)
    }
    /// Given dL/dlog p per row of the last `log_prob_train`, accumulate parameter gradients, return dL/dz.
    fn log_prob_backward(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>, dlp: &[F]) -> Mat<F>;
    /// dL/dcontext of the last `log_prob_backward` (taken), for conditional bases; `None` otherwise.
    fn context_grad(&mut self) -> Option<Mat<F>> {
        None
    }
    /// `n` samples (a conditional distribution gets `n` context rows: one sample per row).
    fn sample(&self, n: usize, ctx: Option<&Mat<F>>, rng: &mut Rng) -> Mat<F>;
    fn params(&self) -> Vec<&Param<F>> {
        Vec::new()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        Vec::new()
    }
    /// Rebuild derived state (masks) after loading.
    fn reload(&mut self) {}
    /// A copy to train on a shard of the batch (as [`crate::transforms::Transform::replica`]); `None` while
    /// its training pass depends on the whole batch (a data-dependent initialisation to come). No default.
    fn replica(&self) -> Option<Box<dyn Distribution<F>>>;
}

/// Which base distribution a flow uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BaseKind {
    #[default]
    Normal,
    DiagNormal,
    Logistic,
    /// Gaussian mixture with learned weights, means and diagonal scales (initialised from data).
    #[serde(alias = "gmm")]
    Mixture,
    /// Autoregressive mixture of Gaussians (MADE MoG); the base of `maf-mog`.
    MadeMog,
    /// Independent Student-t marginals with learned degrees of freedom (heavy tails).
    #[serde(alias = "t")]
    StudentT,
}

/// `N(0, I)`.
#[derive(Clone, Debug)]
pub struct StandardNormal {
    pub d: usize,
}

impl<F: Float> Distribution<F> for StandardNormal {
    fn replica(&self) -> Option<Box<dyn Distribution<F>>> {
        Some(Box::new(self.clone()))
    }
    fn kind(&self) -> &'static str {
        "StandardNormal"
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn log_prob(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> Vec<F> {
        let c = F::c(-0.5 * LN_2PI * self.d as f64);
        (0..z.rows)
            .map(|r| c - F::c(0.5) * z.row(r).iter().map(|&v| v * v).sum::<F>())
            .collect()
    }
    fn log_prob_backward(&mut self, z: &Mat<F>, _ctx: Option<&Mat<F>>, dlp: &[F]) -> Mat<F> {
        let mut dz = z.clone();
        for r in 0..z.rows {
            let g = dlp[r];
            dz.row_mut(r).iter_mut().for_each(|v| *v = -*v * g);
        }
        dz
    }
    fn sample(&self, n: usize, _ctx: Option<&Mat<F>>, rng: &mut Rng) -> Mat<F> {
        randn(rng, n, self.d)
    }
}

/// `N(mu, diag(exp(2 log_sigma)))` with learned `mu` and `log_sigma` (start at the standard normal).
#[derive(Clone, Debug)]
pub struct DiagNormal<F> {
    loc: Param<F>,
    log_scale: Param<F>,
}

impl<F: Float> DiagNormal<F> {
    pub fn new(d: usize) -> Self {
        DiagNormal {
            loc: Param::zeros("loc", vec![d]),
            log_scale: Param::zeros("log_scale", vec![d]),
        }
    }
}

impl<F: Float> Distribution<F> for DiagNormal<F> {
    fn kind(&self) -> &'static str {
        "DiagNormal"
    }
    fn dim(&self) -> usize {
        self.loc.value().len()
    }
    fn log_prob(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> Vec<F> {
        let d = self.dim();
        let c = F::c(-0.5 * LN_2PI * d as f64) - self.log_scale.value().iter().copied().sum::<F>();
        (0..z.rows)
            .map(|r| {
                let q: F = z
                    .row(r)
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| {
                        ((v - self.loc.value()[j]) * (-self.log_scale.value()[j]).exp()).powi(2)
                    })
                    .sum();
                c - F::c(0.5) * q
            })
            .collect()
    }
    fn log_prob_backward(&mut self, z: &Mat<F>, _ctx: Option<&Mat<F>>, dlp: &[F]) -> Mat<F> {
        let d = self.dim();
        let mut dz = Mat::zeros(z.rows, d);
        for r in 0..z.rows {
            let g = dlp[r];
            for j in 0..d {
                let inv = (-self.log_scale.value()[j]).exp();
                let u = (z.at(r, j) - self.loc.value()[j]) * inv;
                // log p = -0.5 u^2 - log_sigma + const
                dz.data[r * d + j] = -u * inv * g;
                self.loc.grad_mut()[j] += u * inv * g;
                self.log_scale.grad_mut()[j] += (u * u - F::one()) * g;
            }
        }
        dz
    }
    fn sample(&self, n: usize, _ctx: Option<&Mat<F>>, rng: &mut Rng) -> Mat<F> {
        let mut e: Mat<F> = randn(rng, n, self.dim());
        let d = self.dim();
        for r in 0..n {
            for j in 0..d {
                let v = &mut e.data[r * d + j];
                *v = self.loc.value()[j] + *v * self.log_scale.value()[j].exp();
            }
        }
        e
    }
    fn params(&self) -> Vec<&Param<F>> {
        vec![&self.loc, &self.log_scale]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        vec![&mut self.loc, &mut self.log_scale]
    }
    fn replica(&self) -> Option<Box<dyn Distribution<F>>> {
        Some(Box::new(self.clone()))
    }
}

/// Standard logistic per feature (NICE's prior): `log p(z) = -sum(softplus(z) + softplus(-z))`.
#[derive(Clone, Debug)]
pub struct StandardLogistic {
    pub d: usize,
}

fn softplus<F: Float>(x: F) -> F {
    if x > F::zero() {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

impl<F: Float> Distribution<F> for StandardLogistic {
    fn replica(&self) -> Option<Box<dyn Distribution<F>>> {
        Some(Box::new(self.clone()))
    }
    fn kind(&self) -> &'static str {
        "StandardLogistic"
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn log_prob(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> Vec<F> {
        (0..z.rows)
            .map(|r| {
                -z.row(r)
                    .iter()
                    .map(|&v| softplus(v) + softplus(-v))
                    .sum::<F>()
            })
            .collect()
    }
    fn log_prob_backward(&mut self, z: &Mat<F>, _ctx: Option<&Mat<F>>, dlp: &[F]) -> Mat<F> {
        let mut dz = z.clone();
        for r in 0..z.rows {
            let g = dlp[r];
            // d/dz log p = -tanh(z / 2)
            dz.row_mut(r)
                .iter_mut()
                .for_each(|v| *v = -(*v * F::c(0.5)).tanh() * g);
        }
        dz
    }
    fn sample(&self, n: usize, _ctx: Option<&Mat<F>>, rng: &mut Rng) -> Mat<F> {
        let data = (0..n * self.d)
            .map(|_| {
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                F::c((u / (1.0 - u)).ln())
            })
            .collect();
        Mat::from_vec(n, self.d, data)
    }
}
