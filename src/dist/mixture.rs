//! Gaussian mixture base with learned weights, means and diagonal scales:
//! `p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2))`, `pi = softmax(logits)`, `sigma = exp(log_scale)`.
//! Starts as N(0, I) (all components equal) and initialises itself from the first training batch it sees, in
//! noise space (k-means, or K random points of that batch), like ActNorm's data-dependent initialisation.

use super::{Distribution, LN_2PI};
use crate::engine::{rng, Float, Mat, Rng};
use crate::nn::Param;
use rand::seq::index::sample as sample_indices;
use rand::Rng as _;
use rand_distr::{Distribution as _, StandardNormal as Normal01};
use serde::{Deserialize, Serialize};

crate::names::named!(MixtureInit => "mixture init");

/// How a [`GaussianMixture`] is initialised from its first batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MixtureInit {
    /// k-means++ seeding and Lloyd iterations: weights, means and per-dimension spreads of the clusters.
    #[default]
    Kmeans,
    /// K distinct random points as means, the batch's standard deviation as scales, equal weights.
    Data,
}

#[derive(Clone, Debug)]
pub struct GaussianMixture<F> {
    logits: Param<F>,
    loc: Param<F>,
    log_scale: Param<F>,
    /// 1 once initialised from data (saved, so a loaded model never re-initialises).
    initialized: Param<F>,
    init: MixtureInit,
    seed: u64,
    k: usize,
    d: usize,
}

impl<F: Float> GaussianMixture<F> {
    pub fn new(d: usize, k: usize, init: MixtureInit, seed: u64) -> Self {
        GaussianMixture {
            logits: Param::zeros("logits", vec![k]),
            loc: Param::zeros("loc", vec![k, d]),
            log_scale: Param::zeros("log_scale", vec![k, d]),
            initialized: Param::buffer("initialized", vec![1], vec![F::zero()]),
            init,
            seed,
            k,
            d,
        }
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized.value()[0] != F::zero()
    }

    /// Per-component log-densities `log pi_k + log N(z; mu_k, sigma_k)` of row `z` into `a`.
    fn component_logs(&self, z: &[F], a: &mut [F]) {
        let (d, k) = (self.d, self.k);
        let lse = log_sum_exp(self.logits.value());
        let c = F::c(-0.5 * LN_2PI * d as f64);
        for (j, aj) in a.iter_mut().enumerate().take(k) {
            let mut s = self.logits.value()[j] - lse + c;
            for i in 0..d {
                let ls = self.log_scale.value()[j * d + i];
                let u = (z[i] - self.loc.value()[j * d + i]) * (-ls).exp();
                s -= F::c(0.5) * u * u + ls;
            }
            *aj = s;
        }
    }

    /// Fit the mixture to the rows of `z` (its first training batch in noise space).
    pub fn init_from(&mut self, z: &Mat<F>) {
        let (n, d, k) = (z.rows, self.d, self.k);
        if n == 0 {
            return;
        }
        let x: Vec<f64> = z.data.iter().map(|v| v.f64()).collect();
        let row = |r: usize| &x[r * d..(r + 1) * d];
        let mut r = rng(self.seed ^ 0x6d69_7874);
        let mut mean = vec![0.0; d];
        let mut var = vec![0.0; d];
        for i in 0..n {
            for j in 0..d {
                mean[j] += row(i)[j] / n as f64;
            }
        }
        for i in 0..n {
            for j in 0..d {
                var[j] += (row(i)[j] - mean[j]).powi(2) / n as f64;
            }
        }
        let floor: Vec<f64> = var.iter().map(|v| (v.sqrt() * 0.05).max(1e-3)).collect();
        let dist2 =
            |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f64>();
        // means: k-means++ seeds (or k random points), with replacement when the batch is smaller than K
        let mut centres: Vec<Vec<f64>> = Vec::with_capacity(k);
        match self.init {
            MixtureInit::Data => {
                if n >= k {
                    for i in sample_indices(&mut r, n, k) {
                        centres.push(row(i).to_vec());
                    }
                } else {
                    for _ in 0..k {
                        centres.push(row(r.gen_range(0..n)).to_vec());
                    }
                }
            }
            MixtureInit::Kmeans => {
                centres.push(row(r.gen_range(0..n)).to_vec());
                let mut best: Vec<f64> = (0..n).map(|i| dist2(row(i), &centres[0])).collect();
                while centres.len() < k {
                    let total: f64 = best.iter().sum();
                    let pick = if total > 0.0 {
                        let mut t = r.gen_range(0.0..total);
                        let mut p = n - 1;
                        for (i, &b) in best.iter().enumerate() {
                            if t < b {
                                p = i;
                                break;
                            }
                            t -= b;
                        }
                        p
                    } else {
                        r.gen_range(0..n)
                    };
                    centres.push(row(pick).to_vec());
                    for i in 0..n {
                        best[i] = best[i].min(dist2(row(i), centres.last().expect("pushed")));
                    }
                }
            }
        }
        let mut counts = vec![n as f64 / k as f64; k];
        let mut spread: Vec<Vec<f64>> = vec![var.clone(); k];
        if self.init == MixtureInit::Kmeans {
            let mut assign = vec![usize::MAX; n];
            for _ in 0..50 {
                let mut changed = false;
                for i in 0..n {
                    let a = (0..k)
                        .min_by(|&a, &b| {
                            dist2(row(i), &centres[a]).total_cmp(&dist2(row(i), &centres[b]))
                        })
                        .expect("k >= 1");
                    changed |= assign[i] != a;
                    assign[i] = a;
                }
                let mut sums = vec![vec![0.0; d]; k];
                let mut cnt = vec![0usize; k];
                for i in 0..n {
                    cnt[assign[i]] += 1;
                    for j in 0..d {
                        sums[assign[i]][j] += row(i)[j];
                    }
                }
                for c in 0..k {
                    if cnt[c] > 0 {
                        centres[c] = sums[c].iter().map(|s| s / cnt[c] as f64).collect();
                    }
                }
                if !changed {
                    break;
                }
            }
            let mut sq = vec![vec![0.0; d]; k];
            let mut cnt = vec![0usize; k];
            for i in 0..n {
                cnt[assign[i]] += 1;
                for j in 0..d {
                    sq[assign[i]][j] += (row(i)[j] - centres[assign[i]][j]).powi(2);
                }
            }
            for c in 0..k {
                // an empty or single-point cluster keeps the batch's spread and a small weight
                counts[c] = cnt[c].max(1) as f64;
                if cnt[c] > 1 {
                    spread[c] = sq[c].iter().map(|s| s / cnt[c] as f64).collect();
                }
            }
        }
        let total: f64 = counts.iter().sum();
        let (logits, loc) = (self.logits.value_mut(), self.loc.value_mut());
        let log_scale = self.log_scale.value_mut();
        for c in 0..k {
            logits[c] = F::c((counts[c] / total).ln());
            for j in 0..d {
                loc[c * d + j] = F::c(centres[c][j]);
                log_scale[c * d + j] = F::c(spread[c][j].sqrt().max(floor[j]).ln());
            }
        }
        self.initialized.value_mut()[0] = F::one();
    }
}

pub(crate) fn log_sum_exp<F: Float>(a: &[F]) -> F {
    let m = a.iter().copied().fold(F::neg_infinity(), F::max);
    if !m.is_finite() {
        return m;
    }
    m + a.iter().map(|&v| (v - m).exp()).sum::<F>().ln()
}

impl<F: Float> Distribution<F> for GaussianMixture<F> {
    fn kind(&self) -> &'static str {
        "GaussianMixture"
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn log_prob(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> Vec<F> {
        let mut a = vec![F::zero(); self.k];
        (0..z.rows)
            .map(|r| {
                self.component_logs(z.row(r), &mut a);
                log_sum_exp(&a)
            })
            .collect()
    }
    fn log_prob_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Vec<F> {
        if !self.is_initialized() {
            self.init_from(z);
        }
        self.log_prob(z, ctx)
    }
    fn log_prob_backward(&mut self, z: &Mat<F>, _ctx: Option<&Mat<F>>, dlp: &[F]) -> Mat<F> {
        let (d, k) = (self.d, self.k);
        let mut a = vec![F::zero(); k];
        let lse_w = log_sum_exp(self.logits.value());
        let mut dz = Mat::zeros(z.rows, d);
        for r in 0..z.rows {
            let zr = z.row(r);
            self.component_logs(zr, &mut a);
            let lp = log_sum_exp(&a);
            let g = dlp[r];
            for j in 0..k {
                let resp = (a[j] - lp).exp(); // posterior of component j
                let w = self.logits.value()[j];
                self.logits.grad_mut()[j] += (resp - (w - lse_w).exp()) * g;
                for i in 0..d {
                    let c = j * d + i;
                    let inv = (-self.log_scale.value()[c]).exp();
                    let u = (zr[i] - self.loc.value()[c]) * inv;
                    dz.data[r * d + i] -= resp * u * inv * g;
                    self.loc.grad_mut()[c] += resp * u * inv * g;
                    self.log_scale.grad_mut()[c] += resp * (u * u - F::one()) * g;
                }
            }
        }
        dz
    }
    fn sample(&self, n: usize, _ctx: Option<&Mat<F>>, rng: &mut Rng) -> Mat<F> {
        let d = self.d;
        let lse = log_sum_exp(self.logits.value());
        let w: Vec<f64> = self
            .logits
            .value()
            .iter()
            .map(|&l| (l - lse).exp().f64())
            .collect();
        let mut out = Mat::zeros(n, d);
        for r in 0..n {
            let c = pick(&w, rng.gen_range(0.0..1.0));
            for i in 0..d {
                let e: f64 = Normal01.sample(rng);
                out.data[r * d + i] =
                    self.loc.value()[c * d + i] + F::c(e) * self.log_scale.value()[c * d + i].exp();
            }
        }
        out
    }
    fn params(&self) -> Vec<&Param<F>> {
        vec![&self.logits, &self.loc, &self.log_scale, &self.initialized]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        vec![
            &mut self.logits,
            &mut self.loc,
            &mut self.log_scale,
            &mut self.initialized,
        ]
    }
    fn replica(&self) -> Option<Box<dyn Distribution<F>>> {
        self.is_initialized()
            .then(|| Box::new(self.clone()) as Box<dyn Distribution<F>>)
    }
}

/// Index drawn from the categorical `w` (summing to ~1) with a uniform `u`.
pub(crate) fn pick(w: &[f64], mut u: f64) -> usize {
    for (i, &p) in w.iter().enumerate() {
        if u < p {
            return i;
        }
        u -= p;
    }
    w.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::randn;

    #[test]
    fn kmeans_init_finds_separated_clusters() {
        let centres = [[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]];
        let mut r = rng(1);
        let e: Mat<f64> = randn(&mut r, 300, 2);
        let mut z = Mat::zeros(300, 2);
        for i in 0..300 {
            for j in 0..2 {
                z.data[i * 2 + j] = centres[i % 3][j] + 0.3 * e.data[i * 2 + j];
            }
        }
        let mut m = GaussianMixture::<f64>::new(2, 3, MixtureInit::Kmeans, 0);
        let before: f64 = m.log_prob(&z, None).iter().sum();
        m.log_prob_train(&z, None);
        assert!(m.is_initialized());
        for c in &centres {
            let near = (0..3).any(|k| {
                (m.loc.value()[k * 2] - c[0]).abs() < 0.15
                    && (m.loc.value()[k * 2 + 1] - c[1]).abs() < 0.15
            });
            assert!(near, "no component near {c:?}: {:?}", m.loc.value());
        }
        for k in 0..3 {
            assert!((m.logits.value()[k].exp() - 1.0 / 3.0).abs() < 0.02);
            for j in 0..2 {
                let s = m.log_scale.value()[k * 2 + j].exp();
                assert!((s - 0.3).abs() < 0.06, "scale {s}");
            }
        }
        let after: f64 = m.log_prob(&z, None).iter().sum();
        assert!(after > before + 300.0, "{before} -> {after}");
        // a second training batch does not re-initialise
        let loc = m.loc.value().to_vec();
        m.log_prob_train(&randn(&mut r, 10, 2), None);
        assert_eq!(loc, m.loc.value());
    }
}
