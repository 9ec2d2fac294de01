//! Batch normalisation as a bijector (Dinh et al. 2017, RealNVP sec. 3.7; Papamakarios et al. 2017, MAF
//! sec. 3.4): `z = (x - mu) / sqrt(var + eps) * exp(gamma) + beta`, log|det| = sum(gamma - log sqrt(var + eps)).
//! In training mode `mu`, `var` are the batch's (and the gradient flows through them), and running averages
//! are updated; in evaluation mode, and in every inference call, the running averages are used.

use super::Transform;
use crate::engine::{Float, Mat};
use crate::nn::Param;

const EPS: f64 = 1e-5;

#[derive(Clone, Debug)]
pub struct BatchNorm<F> {
    log_gamma: Param<F>,
    beta: Param<F>,
    running_mean: Param<F>,
    running_var: Param<F>,
    pub momentum: f64,
    training: bool,
    // cache: normalised input, batch sd, whether batch statistics were used
    xhat: Mat<F>,
    sd: Vec<F>,
    batch_stats: bool,
}

impl<F: Float> BatchNorm<F> {
    pub fn new(d: usize) -> Self {
        BatchNorm {
            log_gamma: Param::zeros("log_gamma", vec![d]),
            beta: Param::zeros("beta", vec![d]),
            running_mean: Param::buffer("running_mean", vec![d], vec![F::zero(); d]),
            running_var: Param::buffer("running_var", vec![d], vec![F::one(); d]),
            momentum: 0.1,
            training: true,
            xhat: Mat::zeros(0, d),
            sd: Vec::new(),
            batch_stats: false,
        }
    }
    fn apply(&self, x: &Mat<F>, mean: &[F], sd: &[F], inverse: bool) -> (Mat<F>, Vec<F>) {
        let g = self.log_gamma.value();
        let b = self.beta.value();
        let mut z = x.clone();
        for r in 0..z.rows {
            for (j, v) in z.row_mut(r).iter_mut().enumerate() {
                *v = if inverse {
                    (*v - b[j]) * (-g[j]).exp() * sd[j] + mean[j]
                } else {
                    (*v - mean[j]) / sd[j] * g[j].exp() + b[j]
                };
            }
        }
        let ld: F = g.iter().zip(sd).map(|(&g, &s)| g - s.ln()).sum();
        (z, vec![if inverse { -ld } else { ld }; x.rows])
    }
    fn running_sd(&self) -> Vec<F> {
        self.running_var
            .value()
            .iter()
            .map(|&v| (v + F::c(EPS)).sqrt())
            .collect()
    }
}

impl<F: Float> Transform<F> for BatchNorm<F> {
    fn kind(&self) -> &'static str {
        "BatchNorm"
    }
    fn dim(&self) -> usize {
        self.beta.value().len()
    }
    fn forward(&self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.apply(x, self.running_mean.value(), &self.running_sd(), false)
    }
    fn inverse(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.apply(z, self.running_mean.value(), &self.running_sd(), true)
    }
    fn forward_train(&mut self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let d = x.cols;
        let n = x.rows;
        let (mean, sd) = if self.training && n > 1 {
            let nf = F::c(n as f64);
            let mut mean = vec![F::zero(); d];
            let mut var = vec![F::zero(); d];
            for r in 0..n {
                mean.iter_mut().zip(x.row(r)).for_each(|(m, &v)| *m += v);
            }
            mean.iter_mut().for_each(|m| *m /= nf);
            for r in 0..n {
                for (j, &v) in x.row(r).iter().enumerate() {
                    var[j] += (v - mean[j]).powi(2);
                }
            }
            var.iter_mut().for_each(|v| *v /= nf);
            let mom = F::c(self.momentum);
            let unbiased = nf / F::c((n - 1) as f64);
            for (rm, &m) in self.running_mean.value_mut().iter_mut().zip(&mean) {
                *rm = (F::one() - mom) * *rm + mom * m;
            }
            for (rv, &v) in self.running_var.value_mut().iter_mut().zip(&var) {
                *rv = (F::one() - mom) * *rv + mom * v * unbiased;
            }
            self.batch_stats = true;
            let sd: Vec<F> = var.iter().map(|&v| (v + F::c(EPS)).sqrt()).collect();
            (mean, sd)
        } else {
            self.batch_stats = false;
            (self.running_mean.value().to_vec(), self.running_sd())
        };
        let mut xhat = x.clone();
        for r in 0..n {
            for (j, v) in xhat.row_mut(r).iter_mut().enumerate() {
                *v = (*v - mean[j]) / sd[j];
            }
        }
        let out = self.apply(x, &mean, &sd, false);
        self.xhat = xhat;
        self.sd = sd;
        out
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let (n, d) = (dz.rows, dz.cols);
        let nf = F::c(n as f64);
        let e: Vec<F> = self.log_gamma.value().iter().map(|&g| g.exp()).collect();
        let gsum: F = dlogdet.iter().copied().sum();
        // dL/dxhat = dz * exp(gamma); sums over the batch for the batch-statistics terms.
        let mut sum_dxh = vec![F::zero(); d];
        let mut sum_dxh_xh = vec![F::zero(); d];
        let (gb, gg) = (self.beta.grad_mut(), self.log_gamma.grad_mut());
        for r in 0..n {
            let dzr = dz.row(r);
            let xh = self.xhat.row(r);
            for j in 0..d {
                let dxh = dzr[j] * e[j];
                sum_dxh[j] += dxh;
                sum_dxh_xh[j] += dxh * xh[j];
                gb[j] += dzr[j];
                gg[j] += dzr[j] * xh[j] * e[j];
            }
        }
        gg.iter_mut().for_each(|g| *g += gsum);
        let mut dx = Mat::zeros(n, d);
        for r in 0..n {
            let dzr = dz.row(r);
            let xh = self.xhat.row(r);
            let dxr = dx.row_mut(r);
            for j in 0..d {
                let dxh = dzr[j] * e[j];
                dxr[j] = if self.batch_stats {
                    // standard batch-norm backward, plus the log-det's -log sd term: d(-log sd)/dx = -xhat/(n sd)
                    (dxh - sum_dxh[j] / nf - xh[j] * sum_dxh_xh[j] / nf - gsum * xh[j] / nf)
                        / self.sd[j]
                } else {
                    dxh / self.sd[j]
                };
            }
        }
        dx
    }
    fn params(&self) -> Vec<&Param<F>> {
        vec![
            &self.log_gamma,
            &self.beta,
            &self.running_mean,
            &self.running_var,
        ]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        vec![
            &mut self.log_gamma,
            &mut self.beta,
            &mut self.running_mean,
            &mut self.running_var,
        ]
    }
    /// None: in training mode a row's output depends on the whole batch's statistics.
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        None
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}
