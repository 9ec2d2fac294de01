//! The sinh-arcsinh map (Jones & Pewsey 2009, "Sinh-arcsinh distributions"), with a location and a scale:
//!
//! `z = t + e^l sinh(δ asinh(x) - ε)`,
//! `log dz/dx = l + log cosh(b) + log δ - ½ log(1 + x²)`, `b = δ asinh(x) - ε`.
//!
//! `ε` skews, `δ` sets the tails (`δ > 1` lightens a heavy-tailed input's tails towards the Gaussian's, `δ < 1`
//! fattens them), which is what affine maps cannot do: tail-adaptive flows use it for heavy-tailed data.
//! Raw parameters `(t, h_l, ε, h_δ)`, bounded like the affine couplings' scales: `l = 5 tanh(h_l / 5)`,
//! `log δ = 2 tanh(h_δ / 2)`. All zero is the identity. The inverse is closed-form:
//! `x = sinh((asinh((z - t) e^-l) + ε) / δ)`.

use super::ElementwiseMap;
use crate::engine::Float;
use serde::{Deserialize, Serialize};

/// Bound of the log-scale `l`.
const L_BOUND: f64 = 5.0;
/// Bound of `log δ`.
const D_BOUND: f64 = 2.0;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SinhArcsinh;

/// One element's parameters: shift, log-scale and its derivative, skew, tail weight and its derivative.
#[derive(Clone, Copy, Debug, Default)]
pub struct SasState<F> {
    t: F,
    l: F,
    dl: F,
    eps: F,
    delta: F,
    ddelta: F,
}

/// `log cosh(b)` without overflow.
fn log_cosh<F: Float>(b: F) -> F {
    let a = b.abs();
    a + (F::c(-2.0) * a).exp().ln_1p() - F::c(std::f64::consts::LN_2)
}

impl ElementwiseMap for SinhArcsinh {
    type State<F: Float> = SasState<F>;
    const NAME: &'static str = "SinhArcsinh";
    const COUPLING: &'static str = "SinhArcsinhCoupling";
    const AUTOREGRESSIVE: &'static str = "SinhArcsinhAR";
    const COUPLING_2D: &'static str = "SinhArcsinhCoupling2d";
    fn params_per_element(&self) -> usize {
        4
    }
    fn prepare<F: Float>(&self, p: &[F], s: &mut SasState<F>) {
        let (lb, db) = (F::c(L_BOUND), F::c(D_BOUND));
        let tl = (p[1] / lb).tanh();
        let td = (p[3] / db).tanh();
        let delta = (db * td).exp();
        *s = SasState {
            t: p[0],
            l: lb * tl,
            dl: F::one() - tl * tl,
            eps: p[2],
            delta,
            ddelta: delta * (F::one() - td * td),
        };
    }
    fn forward<F: Float>(&self, x: F, s: &SasState<F>) -> (F, F) {
        let b = s.delta * x.asinh() - s.eps;
        let z = s.t + s.l.exp() * b.sinh();
        let ld = s.l + log_cosh(b) + s.delta.ln() - F::c(0.5) * (x * x).ln_1p();
        (z, ld)
    }
    fn inverse<F: Float>(&self, z: F, s: &SasState<F>) -> (F, F) {
        let b = ((z - s.t) * (-s.l).exp()).asinh();
        let x = ((b + s.eps) / s.delta).sinh();
        let ld = s.l + log_cosh(b) + s.delta.ln() - F::c(0.5) * (x * x).ln_1p();
        (x, -ld)
    }
    fn backward<F: Float>(&self, x: F, s: &SasState<F>, gz: F, gl: F, dp: &mut [F]) -> F {
        let a = x.asinh();
        let b = s.delta * a - s.eps;
        let e = s.l.exp();
        // dL/db through z (e cosh b) and through log cosh b (tanh b)
        let gb = gz * e * b.cosh() + gl * b.tanh();
        dp[0] += gz;
        dp[1] += (gz * e * b.sinh() + gl) * s.dl;
        dp[2] -= gb;
        dp[3] += (gb * a + gl / s.delta) * s.ddelta;
        let q = F::one() + x * x;
        gb * s.delta / q.sqrt() - gl * x / q
    }
}
