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
