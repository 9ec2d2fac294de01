//! What practitioners read off a flow `q` fitted to an unnormalised target `p~` (Rezende & Mohamed 2015;
//! Owen 2013, ch. 9, for importance sampling): from `M` fresh samples `x_i ~ q` and their log-weights
//! `w_i = log p~(x_i) - log q(x_i)`,
//!
//! - the ELBO `mean(w)` (a lower bound on `log Z`; `log Z - ELBO = KL(q || p)`) with its standard error;
//! - the importance-sampling estimate `log Z ≈ log mean(exp w)` with its standard error (delta method);
//! - the effective sample size `(Σ e^w)² / Σ e^{2w}` and its fraction of `M`;
//! - self-normalised weights and systematic resampling for downstream estimates.

use crate::engine::Rng;
use rand::Rng as _;
use serde::Serialize;

/// Summary of one set of log-weights.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Diagnostics {
    pub samples: usize,
    pub elbo: f64,
    pub elbo_se: f64,
    pub log_z: f64,
    pub log_z_se: f64,
    pub ess: f64,
    pub ess_fraction: f64,
}

/// The diagnostics of the log-weights `log_target - log_q` (one per sample). Non-finite weights count as
/// weight zero (`-inf`); `log_target` and `log_q` must have the same length, at least 2.
pub fn diagnostics(log_target: &[f64], log_q: &[f64]) -> Diagnostics {
    assert_eq!(log_target.len(), log_q.len(), "one log q per log p~");
    let m = log_target.len();
    assert!(m >= 2, "diagnostics need at least 2 samples");
    let w: Vec<f64> = log_target
        .iter()
        .zip(log_q)
        .map(|(a, b)| {
            if (a - b).is_nan() {
                f64::NEG_INFINITY
            } else {
                a - b
            }
        })
        .collect();
    let n = m as f64;
    let finite: Vec<f64> = w.iter().copied().filter(|v| v.is_finite()).collect();
    let elbo = w.iter().sum::<f64>() / n;
    let elbo_var = w.iter().map(|v| (v - elbo).powi(2)).sum::<f64>() / (n - 1.0);
    let top = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = w.iter().map(|v| (v - top).exp()).collect();
    let mean_e = e.iter().sum::<f64>() / n;
    let var_e = e.iter().map(|v| (v - mean_e).powi(2)).sum::<f64>() / (n - 1.0);
    let sum_e: f64 = e.iter().sum();
    let sum_e2: f64 = e.iter().map(|v| v * v).sum();
    let ess = if sum_e2 > 0.0 {
        sum_e * sum_e / sum_e2
    } else {
        0.0
    };
    Diagnostics {
        samples: m,
        elbo,
        elbo_se: (elbo_var / n).sqrt(),
        log_z: top + mean_e.ln(),
        log_z_se: (var_e / n).sqrt() / mean_e,
        ess,
        ess_fraction: ess / n,
    }
}

/// Self-normalised importance weights (summing to 1) of the log-weights `log_target - log_q`.
pub fn normalized_weights(log_target: &[f64], log_q: &[f64]) -> Vec<f64> {
    let w: Vec<f64> = log_target.iter().zip(log_q).map(|(a, b)| a - b).collect();
    let top = w
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = w
        .iter()
        .map(|v| if v.is_finite() { (v - top).exp() } else { 0.0 })
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// `n` indices drawn in proportion to `weights` (summing to 1) by systematic resampling: one uniform offset,
/// `n` evenly spaced points, so each index appears `floor` or `ceil` of `n w_i` times.
pub fn resample(weights: &[f64], n: usize, rng: &mut Rng) -> Vec<usize> {
    let u0: f64 = rng.gen_range(0.0..1.0);
    let mut out = Vec::with_capacity(n);
    let (mut i, mut cum) = (0, weights.first().copied().unwrap_or(0.0));
    for k in 0..n {
        let u = (u0 + k as f64) / n as f64;
        while cum < u && i + 1 < weights.len() {
            i += 1;
            cum += weights[i];
        }
        out.push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rng;
    use rand_distr::{Distribution, Normal};

    /// `q = N(0, 1)`, `p~ = c N(μ, 1)`: `log Z = log c`, `KL = μ²/2`, `ESS/M -> exp(-μ²)`; the estimates
    /// fall within a few standard errors of the truth.
    #[test]
    fn diagnostics_of_a_shifted_gaussian() {
        let (mu, log_c, m) = (0.5f64, 1.7f64, 200_000);
        let mut r = rng(9);
        let x: Vec<f64> = (0..m)
            .map(|_| Normal::new(0.0, 1.0).unwrap().sample(&mut r))
            .collect();
        let lq: Vec<f64> = x.iter().map(|v| -0.5 * v * v).collect();
        let lp: Vec<f64> = x.iter().map(|v| -0.5 * (v - mu).powi(2) + log_c).collect();
        let d = diagnostics(&lp, &lq);
        assert!(
            (d.elbo - (log_c - mu * mu / 2.0)).abs() < 4.0 * d.elbo_se,
            "{d:?}"
        );
        assert!((d.log_z - log_c).abs() < 4.0 * d.log_z_se, "{d:?}");
        assert!((d.ess_fraction - (-mu * mu).exp()).abs() < 0.01, "{d:?}");
        assert!(d.log_z_se > 0.0 && d.log_z_se < 0.01);
        // equal weights: everything effective
        let flat = diagnostics(&lq, &lq);
        assert!((flat.ess_fraction - 1.0).abs() < 1e-12 && flat.log_z.abs() < 1e-12);
    }

    #[test]
    fn normalized_weights_and_systematic_resampling() {
        let w = normalized_weights(&[0.0, (3.0f64).ln(), f64::NEG_INFINITY], &[0.0; 3]);
        assert!((w[0] - 0.25).abs() < 1e-12 && (w[1] - 0.75).abs() < 1e-12 && w[2] == 0.0);
        let idx = resample(&w, 1000, &mut rng(1));
        let ones = idx.iter().filter(|&&i| i == 1).count();
        assert!((749..=751).contains(&ones), "{ones}");
        assert!(!idx.contains(&2));
    }
}
