//! Built-in unnormalised targets for reverse-KL training.
//!
//! The four 2-D energies of Rezende & Mohamed (2015, table 1), `p~(z) = exp(-U(z))`, with
//! `w1 = sin(2π z1 / 4)`, `w2 = 3 exp(-((z1 - 1)/0.6)² / 2)`, `w3 = 3 σ((z1 - 1)/0.3)`:
//!
//! - U1 = `((‖z‖ - 2)/0.4)²/2 - log(exp(-((z1 - 2)/0.6)²/2) + exp(-((z1 + 2)/0.6)²/2))`;
//! - U2 = `((z2 - w1)/0.4)²/2`;
//! - U3 = `-log(exp(-((z2 - w1)/0.35)²/2) + exp(-((z2 - w1 + w2)/0.35)²/2))`;
//! - U4 = `-log(exp(-((z2 - w1)/0.4)²/2) + exp(-((z2 - w1 + w3)/0.35)²/2))`.
//!
//! U2-U4 as printed do not confine `z1` (their integral is infinite); here they carry a wide Gaussian factor
//! `N(z1; 0, 4²)` (the term `(z1/4)²/2` in `U`), as implementations of these benchmarks do to make them
//! normalisable. Gradients are analytic.

use super::vi::Target;
use crate::engine::{Float, Mat};
use std::f64::consts::PI;

/// Standard deviation of the Gaussian factor confining `z1` in U2-U4.
const CONFINE: f64 = 4.0;

/// One of the energies U1-U4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Energy2d(pub u8);

/// `-log(e^a + e^b)` and its partial derivatives in `a` and `b`.
fn neg_lse(a: f64, b: f64) -> (f64, f64, f64) {
    let m = a.max(b);
    let (ea, eb) = ((a - m).exp(), (b - m).exp());
    let s = ea + eb;
    (-(m + s.ln()), -ea / s, -eb / s)
}

impl Energy2d {
    /// `(U, dU/dz1, dU/dz2)`.
    pub fn energy(&self, z1: f64, z2: f64) -> (f64, f64, f64) {
        let w1 = (PI * z1 / 2.0).sin();
        let dw1 = PI / 2.0 * (PI * z1 / 2.0).cos();
        let (u, g1, g2) = match self.0 {
            1 => {
                let r = (z1 * z1 + z2 * z2).sqrt().max(1e-12);
                let a = (r - 2.0) / 0.4;
                let (b, db1, db2) = neg_lse(
                    -0.5 * ((z1 - 2.0) / 0.6).powi(2),
                    -0.5 * ((z1 + 2.0) / 0.6).powi(2),
                );
                let dr = a / 0.4 / r;
                let dz1 = db1 * (-(z1 - 2.0) / 0.36) + db2 * (-(z1 + 2.0) / 0.36);
                return (0.5 * a * a + b, dr * z1 + dz1, dr * z2);
            }
            2 => {
                let a = (z2 - w1) / 0.4;
                (0.5 * a * a, -a / 0.4 * dw1, a / 0.4)
            }
            3 | 4 => {
                let (s1, s2) = if self.0 == 3 {
                    (0.35, 0.35)
                } else {
                    (0.4, 0.35)
                };
                let (w, dw) = if self.0 == 3 {
                    let e = (-0.5 * ((z1 - 1.0) / 0.6).powi(2)).exp();
                    (3.0 * e, 3.0 * e * (-(z1 - 1.0) / 0.36))
                } else {
                    let s = 1.0 / (1.0 + (-(z1 - 1.0) / 0.3).exp());
                    (3.0 * s, 3.0 * s * (1.0 - s) / 0.3)
                };
                let (a, b) = ((z2 - w1) / s1, (z2 - w1 + w) / s2);
                let (u, da, db) = neg_lse(-0.5 * a * a, -0.5 * b * b);
                // d(-a²/2) = -a da_dz, a_z2 = 1/s1, a_z1 = -w1'/s1; b_z2 = 1/s2, b_z1 = (w' - w1')/s2
                let g2 = da * (-a / s1) + db * (-b / s2);
                let g1 = da * (a * dw1 / s1) + db * (-b * (dw - dw1) / s2);
                (u, g1, g2)
            }
            k => panic!("energy U{k}: there are U1 to U4"),
        };
        // the Gaussian factor on z1 (U2-U4)
        let c = CONFINE * CONFINE;
        (u + 0.5 * z1 * z1 / c, g1 + z1 / c, g2)
    }
}

impl<F: Float> Target<F> for Energy2d {
    fn dim(&self) -> usize {
        2
    }
    /// By the midpoint rule on `[-16, 16]²`, 1000 x 1000 cells.
    fn log_z(&self) -> Option<f64> {
        Some(grid_log_z(*self, 16.0, 1000))
    }
    fn log_prob_and_grad(&self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Vec<F>, Mat<F>) {
        let mut g = Mat::zeros(x.rows, 2);
        let lp = (0..x.rows)
            .map(|i| {
                let (u, g1, g2) = self.energy(x.at(i, 0).f64(), x.at(i, 1).f64());
                g.data[2 * i] = F::c(-g1);
                g.data[2 * i + 1] = F::c(-g2);
                F::c(-u)
            })
            .collect();
        (lp, g)
    }
}

/// A `d`-dimensional Gaussian `N(0, s² ((1 - ρ) I + ρ 1 1ᵀ))` (equicorrelated), normalised: `log Z = 0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gaussian {
    pub dim: usize,
    pub rho: f64,
    pub scale: f64,
}

impl Gaussian {
    /// Checked parameters: `d >= 1`, `s > 0`, `-1/(d-1) < ρ < 1` (positive definite).
    pub fn new(dim: usize, rho: f64, scale: f64) -> Result<Self, crate::Error> {
        let lo = if dim > 1 {
            -1.0 / (dim as f64 - 1.0)
        } else {
            -1.0
        };
        if dim == 0 || !(scale > 0.0 && scale.is_finite()) || !(rho > lo && rho < 1.0) {
            return Err(crate::Error::Config(format!(
                "gaussian target: needs dim >= 1, scale > 0 and {lo} < rho < 1 (got dim {dim}, rho {rho}, \
                 scale {scale})"
            )));
        }
        Ok(Gaussian { dim, rho, scale })
    }

    /// `(log N(x), d log N / dx)` for one point.
    fn eval(&self, x: &[f64], g: &mut [f64]) -> f64 {
        let (d, r, s2) = (self.dim as f64, self.rho, self.scale * self.scale);
        // Σ⁻¹ = (I - c 1 1ᵀ) / (s² (1 - ρ)), c = ρ / (1 + (d - 1) ρ)
        let c = r / (1.0 + (d - 1.0) * r);
        let sum: f64 = x.iter().sum();
        let k = 1.0 / (s2 * (1.0 - r));
        let mut quad = 0.0;
        for (gi, &xi) in g.iter_mut().zip(x) {
            let pi = k * (xi - c * sum);
            *gi = -pi;
            quad += xi * pi;
        }
        let log_det = d * s2.ln() + (d - 1.0) * (1.0 - r).ln() + (1.0 + (d - 1.0) * r).ln();
        -0.5 * (quad + log_det + d * (2.0 * PI).ln())
    }
}

impl<F: Float> Target<F> for Gaussian {
    fn dim(&self) -> usize {
        self.dim
    }
    fn log_z(&self) -> Option<f64> {
        Some(0.0)
    }
    fn log_prob_and_grad(&self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Vec<F>, Mat<F>) {
        rows_in_f64(x, |xr, gr| self.eval(xr, gr))
    }
}

/// A target by name: `u1` to `u4` (the 2-D energies), `gauss:D[:RHO[:SCALE]]` or `mix:D:K[:RADIUS[:SCALE]]`
/// (`K` Gaussians on a circle of radius `RADIUS`, default 4, scale default 0.5).
pub fn by_name<F: Float>(s: &str) -> Result<Box<dyn Target<F>>, crate::Error> {
    let bad = |m: String| crate::Error::Config(format!("target '{s}': {m}"));
    let lower = s.to_ascii_lowercase();
    if let Some(k) = lower.strip_prefix('u').and_then(|k| k.parse::<u8>().ok()) {
        if (1..=4).contains(&k) {
            return Ok(Box::new(Energy2d(k)));
        }
    }
    if let Some(rest) = lower.strip_prefix("gauss:") {
        let parts: Vec<&str> = rest.split(':').collect();
        let num = |i: usize, default: f64| -> Result<f64, crate::Error> {
            parts.get(i).map_or(Ok(default), |p| {
                p.parse::<f64>()
                    .map_err(|_| bad(format!("'{p}' is not a number")))
            })
        };
        let d = parts[0]
            .parse::<usize>()
            .map_err(|_| bad(format!("'{}' is not a dimension", parts[0])))?;
        if parts.len() > 3 {
            return Err(bad("expected gauss:D[:RHO[:SCALE]]".into()));
        }
        return Ok(Box::new(Gaussian::new(d, num(1, 0.0)?, num(2, 1.0)?)?));
    }
    if let Some(rest) = lower.strip_prefix("mix:") {
        let parts: Vec<&str> = rest.split(':').collect();
        let int = |i: usize| -> Result<usize, crate::Error> {
            parts
                .get(i)
                .and_then(|p| p.parse::<usize>().ok())
                .ok_or_else(|| bad("expected mix:D:K[:RADIUS[:SCALE]]".into()))
        };
        let num = |i: usize, default: f64| -> Result<f64, crate::Error> {
            parts.get(i).map_or(Ok(default), |p| {
                p.parse::<f64>()
                    .map_err(|_| bad(format!("'{p}' is not a number")))
            })
        };
        if parts.len() > 4 {
            return Err(bad("expected mix:D:K[:RADIUS[:SCALE]]".into()));
        }
        return Ok(Box::new(GaussianMixture::new(
            int(0)?,
            int(1)?,
            num(2, 4.0)?,
            num(3, 0.5)?,
        )?));
    }
    Err(bad(
        "unknown (known: u1, u2, u3, u4, gauss:D[:RHO[:SCALE]], mix:D:K[:RADIUS[:SCALE]])".into(),
    ))
}

/// `(log p, d log p / dx)` of every row through `eval(x, grad) -> log p`, which works on one row in f64.
fn rows_in_f64<F: Float>(x: &Mat<F>, eval: impl Fn(&[f64], &mut [f64]) -> f64) -> (Vec<F>, Mat<F>) {
    let d = x.cols;
    let mut g = Mat::zeros(x.rows, d);
    let (mut xr, mut gr) = (vec![0.0; d], vec![0.0; d]);
    let lp = (0..x.rows)
        .map(|i| {
            xr.iter_mut().zip(x.row(i)).for_each(|(a, b)| *a = b.f64());
            let l = eval(&xr, &mut gr);
            g.row_mut(i)
                .iter_mut()
                .zip(&gr)
                .for_each(|(a, &b)| *a = F::c(b));
            F::c(l)
        })
        .collect();
    (lp, g)
}

/// An equal-weight mixture of `k` Gaussians `N(μ_j, s² I)` in `d` dimensions, normalised (`log Z = 0`): the
/// multimodal target where reverse KL's mode seeking shows. The means lie on a circle of radius `r` in the first
/// two coordinates (`μ_j = r (cos 2πj/k, sin 2πj/k, 0, ...)`; in one dimension at `r (2j/(k-1) - 1)`).
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianMixture {
    pub dim: usize,
    pub means: Vec<Vec<f64>>,
    pub scale: f64,
}

impl GaussianMixture {
    /// Checked parameters: `d >= 1`, `k >= 1`, `r >= 0`, `s > 0`.
    pub fn new(dim: usize, k: usize, radius: f64, scale: f64) -> Result<Self, crate::Error> {
        if dim == 0
            || k == 0
            || !(radius >= 0.0 && radius.is_finite())
            || !(scale > 0.0 && scale.is_finite())
        {
            return Err(crate::Error::Config(format!(
                "mixture target: needs dim >= 1, components >= 1, radius >= 0 and scale > 0 (got dim {dim}, \
                 components {k}, radius {radius}, scale {scale})"
            )));
        }
        crate::engine::check_fits(
            (k as u128)
                .saturating_mul(dim as u128 + 3)
                .saturating_mul(8),
            &format!("a mixture target of {k} components in {dim} dimensions"),
        )
        .map_err(crate::Error::Config)?;
        let means = (0..k)
            .map(|j| {
                let mut m = vec![0.0; dim];
                if dim == 1 {
                    m[0] = if k == 1 {
                        0.0
                    } else {
                        radius * (2.0 * j as f64 / (k - 1) as f64 - 1.0)
                    };
                } else {
                    let a = 2.0 * PI * j as f64 / k as f64;
                    m[0] = radius * a.cos();
                    m[1] = radius * a.sin();
                }
                m
            })
            .collect();
        Ok(GaussianMixture { dim, means, scale })
    }

    /// `(log p(x), d log p / dx)` for one point: a log-sum-exp over the components, the gradient their
    /// responsibility-weighted pull towards each mean.
    fn eval(&self, x: &[f64], g: &mut [f64]) -> f64 {
        let s2 = self.scale * self.scale;
        let d = self.dim as f64;
        let logs: Vec<f64> = self
            .means
            .iter()
            .map(|m| -0.5 * x.iter().zip(m).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / s2)
            .collect();
        let mx = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = logs.iter().map(|l| (l - mx).exp()).collect();
        let tot: f64 = w.iter().sum();
        g.iter_mut().for_each(|v| *v = 0.0);
        for (wj, m) in w.iter().zip(&self.means) {
            for ((gi, &xi), &mi) in g.iter_mut().zip(x).zip(m) {
                *gi -= wj / tot * (xi - mi) / s2;
            }
        }
        mx + tot.ln() - (self.means.len() as f64).ln() - 0.5 * d * (2.0 * PI * s2).ln()
    }
}

impl<F: Float> Target<F> for GaussianMixture {
    fn dim(&self) -> usize {
        self.dim
    }
    fn log_z(&self) -> Option<f64> {
        Some(0.0)
    }
    fn log_prob_and_grad(&self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Vec<F>, Mat<F>) {
        rows_in_f64(x, |xr, gr| self.eval(xr, gr))
    }
}

/// `log ∫ exp(-U)` by the midpoint rule on `[-lim, lim]²` with `n x n` cells.
pub fn grid_log_z(e: Energy2d, lim: f64, n: usize) -> f64 {
    let h = 2.0 * lim / n as f64;
    let vals: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            -e.energy(-lim + (i as f64 + 0.5) * h, -lim + (j as f64 + 0.5) * h)
                .0
        })
        .collect();
    let m = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + (vals.iter().map(|v| (v - m).exp()).sum::<f64>() * h * h).ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{randn, rng};

    #[test]
    fn energy_gradients_match_finite_differences() {
        let mut r = rng(4);
        for k in 1..=4 {
            let e = Energy2d(k);
            let pts: Mat<f64> = randn(&mut r, 40, 2);
            for i in 0..pts.rows {
                let (z1, z2) = (2.0 * pts.at(i, 0), 2.0 * pts.at(i, 1));
                let (_, g1, g2) = e.energy(z1, z2);
                let h = 1e-6;
                let f1 = (e.energy(z1 + h, z2).0 - e.energy(z1 - h, z2).0) / (2.0 * h);
                let f2 = (e.energy(z1, z2 + h).0 - e.energy(z1, z2 - h).0) / (2.0 * h);
                assert!(
                    (f1 - g1).abs() < 1e-6 * (1.0 + f1.abs())
                        && (f2 - g2).abs() < 1e-6 * (1.0 + f2.abs()),
                    "U{k} at ({z1}, {z2}): ({g1}, {g2}) vs ({f1}, {f2})"
                );
            }
        }
    }

    #[test]
    fn gaussian_target_is_normalised_with_the_right_gradient() {
        let g = Gaussian::new(3, 0.6, 1.5).unwrap();
        // its log-density integrates to one: compare with a direct evaluation through the covariance
        let x = [0.3, -1.2, 0.8];
        let mut gr = [0.0; 3];
        let l = g.eval(&x, &mut gr);
        let h = 1e-6;
        for j in 0..3 {
            let (mut xp, mut xm) = (x, x);
            xp[j] += h;
            xm[j] -= h;
            let fd = (g.eval(&xp, &mut [0.0; 3]) - g.eval(&xm, &mut [0.0; 3])) / (2.0 * h);
            assert!((fd - gr[j]).abs() < 1e-7, "{j}: {} vs {fd}", gr[j]);
        }
        // Σ = 2.25 [[1, .6, .6], [.6, 1, .6], [.6, .6, 1]]: det = 2.25³ (1 - .6)² (1 + 2 .6)
        let det = 2.25f64.powi(3) * 0.16 * 2.2;
        let inv = |i: usize, j: usize| {
            let c = 0.6 / 2.2;
            ((i == j) as u8 as f64 - c) / (2.25 * 0.4)
        };
        let quad: f64 = (0..3)
            .flat_map(|i| (0..3).map(move |j| (i, j)))
            .map(|(i, j)| x[i] * inv(i, j) * x[j])
            .sum();
        let want = -0.5 * (quad + det.ln() + 3.0 * (2.0 * PI).ln());
        assert!((l - want).abs() < 1e-12, "{l} vs {want}");
        assert!(Gaussian::new(3, -0.6, 1.0).is_err() && by_name::<f64>("gauss:x").is_err());
        assert!(by_name::<f64>("u5")
            .err()
            .unwrap()
            .to_string()
            .contains("u1, u2"));
    }

    #[test]
    fn mixture_target_integrates_to_one_with_the_right_gradient() {
        let m = GaussianMixture::new(2, 8, 4.0, 0.5).unwrap();
        // midpoint rule on [-8, 8]²: the mass is one
        let (n, lim) = (800, 8.0);
        let h = 2.0 * lim / n as f64;
        let mut mass = 0.0;
        let mut g = [0.0; 2];
        for i in 0..n {
            for j in 0..n {
                let x = [-lim + (i as f64 + 0.5) * h, -lim + (j as f64 + 0.5) * h];
                mass += m.eval(&x, &mut g).exp() * h * h;
            }
        }
        assert!((mass - 1.0).abs() < 1e-6, "mass {mass}");
        let eps = 1e-6;
        for x in [[0.3, -1.2], [4.0, 0.1], [-2.9, 2.7]] {
            let l = m.eval(&x, &mut g);
            assert!(l.is_finite());
            for k in 0..2 {
                let (mut xp, mut xm) = (x, x);
                xp[k] += eps;
                xm[k] -= eps;
                let fd = (m.eval(&xp, &mut [0.0; 2]) - m.eval(&xm, &mut [0.0; 2])) / (2.0 * eps);
                assert!(
                    (fd - g[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{x:?}[{k}]: {} vs {fd}",
                    g[k]
                );
            }
        }
        // one dimension, and names
        let one = GaussianMixture::new(1, 3, 2.0, 1.0).unwrap();
        assert_eq!(one.means, vec![vec![-2.0], vec![0.0], vec![2.0]]);
        assert!(by_name::<f64>("mix:3:4").is_ok() && by_name::<f64>("mix:3").is_err());
        assert!(by_name::<f64>("mix:2:0").is_err() && by_name::<f64>("mix:2:2:1:0").is_err());
    }

    /// The quadrature converges (a finer grid moves it by less than 1e-6), and the energies are what the
    /// paper prints at a few points.
    #[test]
    fn quadrature_and_values() {
        for k in 1..=4 {
            let e = Energy2d(k);
            let (a, b) = (grid_log_z(e, 16.0, 800), grid_log_z(e, 16.0, 1600));
            assert!((a - b).abs() < 1e-6, "U{k}: {a} vs {b}");
        }
        // U1 on the ring at (2, 0): ((2-2)/0.4)²/2 - log(1 + exp(-(4/0.6)²/2))
        let u = Energy2d(1).energy(2.0, 0.0).0;
        assert!((u + (1.0 + (-0.5f64 * (4.0 / 0.6f64).powi(2)).exp()).ln()).abs() < 1e-12);
        // U2 on its curve z2 = w1(z1) at z1 = 1: only the confining factor, 1/32
        assert!((Energy2d(2).energy(1.0, 1.0).0 - 1.0 / 32.0).abs() < 1e-12);
    }
}
