//! A heavy-tailed base: independent Student-t marginals with learned degrees of freedom per feature, as in
//! tail-adaptive flows (Jaini, Kobyzev, Yu & Brubaker 2020, "Tails of Lipschitz triangular flows"). A flow
//! whose layers are affine (or identity) in the tails keeps the tails of its base: with a Gaussian base a
//! row far from the training data is charged a penalty quadratic in its distance (thousands of nats for
//! outliers), with a Student-t base one logarithmic in it, and heavy-tailed columns can be fitted at all.
//!
//! Per feature, with `ν = 1 + exp(θ)` (so the mean exists; `θ` starts at `ln 29`, `ν = 30`, close to a
//! standard normal):
//!
//! `log p(z) = lnΓ((ν+1)/2) − lnΓ(ν/2) − ½ ln(νπ) − (ν+1)/2 · ln(1 + z²/ν)`
//!
//! `∂/∂z = −(ν+1) z / (ν + z²)`,
//! `∂/∂ν = ½ψ((ν+1)/2) − ½ψ(ν/2) − 1/(2ν) − ½ ln(1 + z²/ν) + (ν+1) z² / (2ν(ν + z²))`.

use super::Distribution;
use crate::engine::{Float, Mat, Rng};
use crate::nn::Param;
use rand_distr::Distribution as _;

/// Smallest degrees of freedom (`ν = NU_MIN + exp(θ)`).
pub const NU_MIN: f64 = 1.0;
/// Degrees of freedom at initialisation.
pub const NU_INIT: f64 = 30.0;

/// `ψ(x) = d lnΓ(x) / dx` for `x > 0`: the recurrence `ψ(x) = ψ(x + 1) − 1/x` up to `x ≥ 10`, then the
/// asymptotic series `ln x − 1/(2x) − Σ B_2k / (2k x^2k)` (error below 1e-13 there).
pub fn digamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let i2 = 1.0 / (x * x);
    acc + x.ln()
        - 0.5 / x
        - i2 * (1.0 / 12.0
            - i2 * (1.0 / 120.0 - i2 * (1.0 / 252.0 - i2 * (1.0 / 240.0 - i2 / 132.0))))
}

#[derive(Clone, Debug)]
pub struct StudentT<F> {
    /// `θ` per feature: `ν = NU_MIN + exp(θ)`.
    log_dof: Param<F>,
}

impl<F: Float> StudentT<F> {
    pub fn new(d: usize) -> Self {
        let theta = F::c((NU_INIT - NU_MIN).ln());
        StudentT {
            log_dof: Param::new("log_dof", vec![d], vec![theta; d]),
        }
    }

    /// The degrees of freedom per feature.
    pub fn dof(&self) -> Vec<f64> {
        self.log_dof
            .value()
            .iter()
            .map(|t| NU_MIN + t.f64().exp())
            .collect()
    }

    /// The normalising constant per feature: `lnΓ((ν+1)/2) − lnΓ(ν/2) − ½ ln(νπ)`.
    fn log_norm(nu: f64) -> f64 {
        libm::lgamma(0.5 * (nu + 1.0))
            - libm::lgamma(0.5 * nu)
            - 0.5 * (nu * std::f64::consts::PI).ln()
    }
}

impl<F: Float> Distribution<F> for StudentT<F> {
    fn kind(&self) -> &'static str {
        "StudentT"
    }
    fn dim(&self) -> usize {
        self.log_dof.value().len()
    }
    fn log_prob(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> Vec<F> {
        let nu = self.dof();
        let c: f64 = nu.iter().map(|&n| Self::log_norm(n)).sum();
        (0..z.rows)
            .map(|r| {
                let q: f64 = z
                    .row(r)
                    .iter()
                    .zip(&nu)
                    .map(|(&v, &n)| {
                        let v = v.f64();
                        0.5 * (n + 1.0) * (v * v / n).ln_1p()
                    })
                    .sum();
                F::c(c - q)
            })
            .collect()
    }
    fn log_prob_backward(&mut self, z: &Mat<F>, _ctx: Option<&Mat<F>>, dlp: &[F]) -> Mat<F> {
        let d = self.dim();
        let nu = self.dof();
        // the z-independent part of ∂ log p / ∂ν
        let dconst: Vec<f64> = nu
            .iter()
            .map(|&n| 0.5 * digamma(0.5 * (n + 1.0)) - 0.5 * digamma(0.5 * n) - 0.5 / n)
            .collect();
        let mut dz = Mat::zeros(z.rows, d);
        let mut dnu = vec![0.0f64; d];
        for r in 0..z.rows {
            let g = dlp[r].f64();
            for j in 0..d {
                let (v, n) = (z.at(r, j).f64(), nu[j]);
                let s = n + v * v;
                dz.data[r * d + j] = F::c(-g * (n + 1.0) * v / s);
                dnu[j] +=
                    g * (dconst[j] - 0.5 * (v * v / n).ln_1p() + (n + 1.0) * v * v / (2.0 * n * s));
            }
        }
        // dν/dθ = ν − NU_MIN
        for (j, gr) in self.log_dof.grad_mut().iter_mut().enumerate() {
            *gr += F::c(dnu[j] * (nu[j] - NU_MIN));
        }
        dz
    }
    fn sample(&self, n: usize, _ctx: Option<&Mat<F>>, rng: &mut Rng) -> Mat<F> {
        let nu = self.dof();
        let d = self.dim();
        let dists: Vec<rand_distr::StudentT<f64>> = nu
            .iter()
            .map(|&v| rand_distr::StudentT::new(v).expect("ν > 0"))
            .collect();
        let data = (0..n * d).map(|k| F::c(dists[k % d].sample(rng))).collect();
        Mat::from_vec(n, d, data)
    }
    fn params(&self) -> Vec<&Param<F>> {
        vec![&self.log_dof]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        vec![&mut self.log_dof]
    }
    fn replica(&self) -> Option<Box<dyn Distribution<F>>> {
        Some(Box::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rng;

    #[test]
    fn digamma_matches_known_values_and_lgamma_differences() {
        // ψ(1) = −γ, ψ(1/2) = −γ − 2 ln 2
        let g = 0.577_215_664_901_532_9;
        assert!((digamma(1.0) + g).abs() < 1e-12);
        assert!((digamma(0.5) + g + 2.0 * 2f64.ln()).abs() < 1e-12);
        for x in [0.3, 1.7, 5.5, 12.0, 80.0] {
            let h = 1e-5;
            let fd = (libm::lgamma(x + h) - libm::lgamma(x - h)) / (2.0 * h);
            assert!(
                (fd - digamma(x)).abs() < 1e-8,
                "x={x}: {fd} vs {}",
                digamma(x)
            );
        }
    }

    #[test]
    fn log_prob_is_the_student_t_density_and_integrates_to_one() {
        let mut t = StudentT::<f64>::new(1);
        // ν = 1: the Cauchy density 1 / (π (1 + z²))
        t.log_dof.value_mut()[0] = -40.0;
        let z = Mat::from_vec(3, 1, vec![0.0, 1.0, -3.0]);
        let lp = t.log_prob(&z, None);
        for (k, &v) in [0.0f64, 1.0, -3.0].iter().enumerate() {
            let want = -(std::f64::consts::PI * (1.0 + v * v)).ln();
            assert!((lp[k] - want).abs() < 1e-9, "{} vs {want}", lp[k]);
        }
        // ν = 4: ∫ p = 1 (midpoint rule on a tan-substituted grid), and far rows cost logarithmically
        t.log_dof.value_mut()[0] = 3f64.ln();
        let n = 20000;
        let mut mass = 0.0;
        for k in 0..n {
            let u =
                -std::f64::consts::FRAC_PI_2 + (k as f64 + 0.5) * std::f64::consts::PI / n as f64;
            let z = u.tan();
            let lp = t.log_prob(&Mat::from_vec(1, 1, vec![z]), None)[0];
            mass += lp.exp() / u.cos().powi(2) * std::f64::consts::PI / n as f64;
        }
        assert!((mass - 1.0).abs() < 1e-6, "mass {mass}");
        let far = t.log_prob(&Mat::from_vec(1, 1, vec![1e4]), None)[0];
        assert!(far > -50.0, "{far}");
    }

    #[test]
    fn gradients_match_finite_differences_and_samples_follow_the_density() {
        let mut t = StudentT::<f64>::new(3);
        t.log_dof.value_mut().copy_from_slice(&[0.2, 1.5, 3.0]);
        let mut r = rng(5);
        let z: Mat<f64> = crate::engine::randn(&mut r, 7, 3);
        let w: Vec<f64> = (0..7).map(|k| 0.3 + k as f64 * 0.1).collect();
        let loss = |t: &StudentT<f64>, z: &Mat<f64>| -> f64 {
            t.log_prob(z, None).iter().zip(&w).map(|(a, b)| a * b).sum()
        };
        let dz = t.log_prob_backward(&z, None, &w);
        let h = 1e-6;
        for k in 0..z.data.len() {
            let (mut zp, mut zm) = (z.clone(), z.clone());
            zp.data[k] += h;
            zm.data[k] -= h;
            let fd = (loss(&t, &zp) - loss(&t, &zm)) / (2.0 * h);
            assert!(
                (fd - dz.data[k]).abs() < 1e-7,
                "z[{k}]: {fd} vs {}",
                dz.data[k]
            );
        }
        for j in 0..3 {
            let mut tp = t.clone();
            tp.log_dof.value_mut()[j] += h;
            let mut tm = t.clone();
            tm.log_dof.value_mut()[j] -= h;
            let fd = (loss(&tp, &z) - loss(&tm, &z)) / (2.0 * h);
            let g = t.log_dof.grad()[j];
            assert!(
                (fd - g).abs() < 1e-6 * (1.0 + fd.abs()),
                "θ[{j}]: {fd} vs {g}"
            );
        }
        // samples: the fraction beyond |z| > 3 matches the density's tail mass (ν = 1 + e^0.2 ≈ 2.22)
        let s = t.sample(200_000, None, &mut r);
        let beyond = (0..s.rows).filter(|&i| s.at(i, 0).abs() > 3.0).count() as f64 / s.rows as f64;
        let n = 200_000;
        let mut tail = 0.0;
        let one = StudentT::<f64> {
            log_dof: Param::new("log_dof", vec![1], vec![0.2]),
        };
        for k in 0..n {
            // ∫_3^∞ p = ∫ over u in (0, 1/3) of p(1/u) / u²
            let u = (k as f64 + 0.5) / n as f64 / 3.0;
            tail += one.log_prob(&Mat::from_vec(1, 1, vec![1.0 / u]), None)[0].exp()
                / (u * u)
                / 3.0
                / n as f64;
        }
        assert!(
            (beyond - 2.0 * tail).abs() < 0.004,
            "sampled {beyond} vs {}",
            2.0 * tail
        );
    }
}
