//! Monotonic rational-quadratic spline (Durkan et al. 2019, "Neural Spline Flows", sec. 3.1; Gregory &
//! Delbourgo 1982), element-wise, with its analytic derivatives.
//!
//! On `[-B, B]` the map is made of `K` bins with knots `(x_k, y_k)` and derivatives `d_k` at the knots. In bin
//! `k`, with `ξ = (x - x_k) / w_k`, `s = h_k / w_k` (`w_k`, `h_k`: bin width and height):
//!
//! `y = y_k + h_k (s ξ² + d_k ξ(1-ξ)) / (s + (d_{k+1} + d_k - 2s) ξ(1-ξ))`,
//! `dy/dx = s² (d_{k+1} ξ² + 2s ξ(1-ξ) + d_k (1-ξ)²) / (s + (d_{k+1} + d_k - 2s) ξ(1-ξ))²`.
//!
//! Outside `[-B, B]` the map is the identity (the tails are never evaluated by the formula) and the boundary
//! derivatives are 1, so the map is continuously differentiable. The inverse solves the quadratic for `ξ` with
//! the numerically stable root `ξ = 2c / (-b - sqrt(b² - 4ac))`.
//!
//! Parameters per element, `3K - 1` unconstrained numbers (what a conditioner outputs): `K` widths and `K`
//! heights through a softmax with a minimum bin size, `K - 1` interior derivatives through
//! `d = d_min + softplus(u + c)` with `c` chosen so that `u = 0` gives `d = 1`. All-zero parameters are the
//! identity (equal bins, every derivative 1).

use crate::engine::Float;
use serde::{Deserialize, Serialize};

/// Shape of the spline: bins, tail bound and the minimum bin width, height and derivative.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RqSpline {
    pub bins: usize,
    pub bound: f64,
    pub min_width: f64,
    pub min_height: f64,
    pub min_derivative: f64,
    /// Which f32 kernel evaluates and samples the model (training always takes the vectorised one). A
    /// config without the field (written before the vectorised kernel existed) gets the reference kernel, so
    /// its log-densities and samples stay the same bits; new models get the vectorised one.
    #[serde(default = "SplineKernel::reference")]
    pub kernel: SplineKernel,
}

/// The f32 kernel of a spline: element by element with the standard library's `exp` / `ln` (`reference`), or
/// a row at a time with polynomial `exp` / `ln` that vectorise (`vectorised`; the same function up to the
/// last bits of f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplineKernel {
    Reference,
    Vectorised,
}

impl SplineKernel {
    fn reference() -> Self {
        SplineKernel::Reference
    }
}

impl Default for RqSpline {
    fn default() -> Self {
        RqSpline {
            bins: 8,
            bound: 3.0,
            min_width: 1e-3,
            min_height: 1e-3,
            min_derivative: 1e-3,
            kernel: SplineKernel::Vectorised,
        }
    }
}

/// Knots of one element's spline, built from its raw parameters. The interior derivatives are evaluated only
/// where a bin needs them (two per element instead of `K - 1`).
#[derive(Clone, Debug, Default)]
pub struct Knots<F> {
    /// `K + 1` x-knots, from `-B` to `B`.
    pub xs: Vec<F>,
    pub ys: Vec<F>,
    /// The shifted raw interior derivatives `u_i + c`, i = 1..K-1.
    zu: Vec<F>,
    /// softmax of the raw widths and heights (for the backward pass)
    sw: Vec<F>,
    sh: Vec<F>,
    dmin: F,
}

impl<F: Float> Knots<F> {
    /// Bin `k`: `(x_k, w_k, y_k, h_k)`.
    #[inline]
    fn bin(&self, k: usize) -> (F, F, F, F) {
        let (xs, ys) = (&self.xs, &self.ys);
        (xs[k], xs[k + 1] - xs[k], ys[k], ys[k + 1] - ys[k])
    }

    /// The derivative at knot `i` and `d(softplus)/du` there (the sigmoid; 0 at the ends, where it is 1).
    #[inline]
    fn deriv(&self, i: usize) -> (F, F) {
        if i == 0 || i > self.zu.len() {
            return (F::one(), F::zero());
        }
        // softplus(z) = max(z, 0) + ln(1 + e^-|z|); its derivative, the sigmoid, from the same exponential
        let z = self.zu[i - 1];
        let e = (-z.abs()).exp();
        let sp = z.max(F::zero()) + e.ln_1p();
        let sig = if z > F::zero() {
            F::one() / (F::one() + e)
        } else {
            e / (F::one() + e)
        };
        (self.dmin + sp, sig)
    }
}

/// The most bins a spline may have.
pub const MAX_BINS: usize = 128;
/// The largest tail bound `B` (the spline acts on `[-B, B]`).
pub const MAX_BOUND: f64 = 100.0;

impl RqSpline {
    /// Number of raw parameters per element: `3K - 1`.
    pub fn params_per_element(&self) -> usize {
        3 * self.bins - 1
    }

    pub fn validate(&self) -> Result<(), String> {
        let k = self.bins as f64;
        if !(1..=MAX_BINS).contains(&self.bins) {
            return Err(format!(
                "a spline needs 1 to {MAX_BINS} bins, got {} (more bins add parameters, not flexibility a \
                 flow can use: add layers instead)",
                self.bins
            ));
        }
        if !(self.bound > 0.0 && self.bound <= MAX_BOUND) {
            return Err(format!(
                "spline bound (tail bound) must be in (0, {MAX_BOUND}], got {}: the interval [-B, B] the spline \
                 reshapes, in standardised units; beyond {MAX_BOUND} its knots lose precision in f32 and the \
                 density no longer integrates to one",
                self.bound
            ));
        }
        let fits = |m: f64| m >= 0.0 && m * k < 1.0;
        if !(fits(self.min_width) && fits(self.min_height)) {
            return Err(
                "minimum bin width / height times the number of bins must be below 1".into(),
            );
        }
        if !(self.min_derivative >= 0.0 && self.min_derivative < 1.0) {
            return Err("minimum derivative must be in [0, 1)".into());
        }
        Ok(())
    }

    pub(crate) fn softplus_shift(&self) -> f64 {
        // softplus(c) = 1 - d_min: zero raw derivatives give derivative 1
        ((1.0 - self.min_derivative).exp() - 1.0).ln()
    }

    /// Knots from raw parameters `p` = (K widths, K heights, K - 1 derivatives).
    pub fn knots<F: Float>(&self, p: &[F], out: &mut Knots<F>) {
        let k = self.bins;
        assert_eq!(p.len(), 3 * k - 1, "spline parameters");
        let b = F::c(self.bound);
        let softmax = |v: &[F], dst: &mut Vec<F>| {
            let m = v.iter().copied().fold(F::neg_infinity(), F::max);
            dst.clear();
            dst.extend(v.iter().map(|&x| (x - m).exp()));
            let s: F = dst.iter().copied().sum();
            dst.iter_mut().for_each(|x| *x /= s);
        };
        softmax(&p[..k], &mut out.sw);
        softmax(&p[k..2 * k], &mut out.sh);
        let cum = |s: &[F], min: f64, dst: &mut Vec<F>| {
            let (mn, sc) = (F::c(min), F::c(1.0 - min * k as f64));
            dst.clear();
            dst.push(-b);
            let mut acc = F::zero();
            for (i, &v) in s.iter().enumerate() {
                acc += mn + sc * v;
                dst.push(if i + 1 == k {
                    b
                } else {
                    -b + F::c(2.0) * b * acc
                });
            }
        };
        cum(&out.sw, self.min_width, &mut out.xs);
        cum(&out.sh, self.min_height, &mut out.ys);
        let c = F::c(self.softplus_shift());
        out.dmin = F::c(self.min_derivative);
        out.zu.clear();
        out.zu.extend(p[2 * k..].iter().map(|&u| u + c));
    }

    fn inside<F: Float>(&self, v: F) -> bool {
        let b = F::c(self.bound);
        v >= -b && v <= b
    }

    /// Bin of `v` among the knots `ks` (`ks[k] <= v < ks[k+1]`, the last bin closed).
    fn bin<F: Float>(ks: &[F], v: F) -> usize {
        let n = ks.len() - 1;
        ks[1..n].partition_point(|&t| t <= v).min(n - 1)
    }

    /// `(y, log dy/dx)` of one element.
    pub fn forward<F: Float>(&self, x: F, kn: &Knots<F>) -> (F, F) {
        if !self.inside(x) {
            return (x, F::zero());
        }
        let k = Self::bin(&kn.xs, x);
        let (xk, w, yk, h) = kn.bin(k);
        let (dk, dk1) = (kn.deriv(k).0, kn.deriv(k + 1).0);
        let xi = ((x - xk) / w).max(F::zero()).min(F::one());
        let s = h / w;
        let t = xi * (F::one() - xi);
        let den = s + (dk1 + dk - F::c(2.0) * s) * t;
        let y = yk + h * (s * xi * xi + dk * t) / den;
        (y, Self::log_slope(xi, s, dk, dk1))
    }

    /// `log dy/dx` in a bin at `ξ`.
    #[inline]
    fn log_slope<F: Float>(xi: F, s: F, dk: F, dk1: F) -> F {
        let t = xi * (F::one() - xi);
        let den = s + (dk1 + dk - F::c(2.0) * s) * t;
        let g = dk1 * xi * xi + F::c(2.0) * s * t + dk * (F::one() - xi) * (F::one() - xi);
        F::c(2.0) * s.ln() + g.ln() - F::c(2.0) * den.ln()
    }

    /// `(x, log dx/dy)` of one element (the inverse map).
    pub fn inverse<F: Float>(&self, y: F, kn: &Knots<F>) -> (F, F) {
        if !self.inside(y) {
            return (y, F::zero());
        }
        let k = Self::bin(&kn.ys, y);
        let (xk, w, yk, h) = kn.bin(k);
        let (dk, dk1) = (kn.deriv(k).0, kn.deriv(k + 1).0);
        let s = h / w;
        let dy = y - yk;
        let e = dk1 + dk - F::c(2.0) * s;
        let a = h * (s - dk) + dy * e;
        let b = h * dk - dy * e;
        let c = -s * dy;
        let disc = (b * b - F::c(4.0) * a * c).max(F::zero());
        let den_root = -b - disc.sqrt();
        let xi = if den_root == F::zero() {
            F::zero()
        } else {
            (F::c(2.0) * c / den_root).max(F::zero()).min(F::one())
        };
        (xk + xi * w, -Self::log_slope(xi, s, dk, dk1))
    }

    /// Backward of `forward` for one element: given `gy = dL/dy` and `gl = dL/d(log dy/dx)`, accumulate
    /// `dL/dp` into `dp` (raw parameters, same layout as for [`RqSpline::knots`]) and return `dL/dx`.
    pub fn backward<F: Float>(&self, x: F, kn: &Knots<F>, gy: F, gl: F, dp: &mut [F]) -> F {
        if !self.inside(x) {
            return gy;
        }
        let nb = self.bins;
        let two = F::c(2.0);
        let k = Self::bin(&kn.xs, x);
        let (xk, w, _, h) = kn.bin(k);
        let ((dk, sk), (dk1, sk1)) = (kn.deriv(k), kn.deriv(k + 1));
        let xi = ((x - xk) / w).max(F::zero()).min(F::one());
        let s = h / w;
        let t = xi * (F::one() - xi);
        let tp = F::one() - two * xi;
        let e = dk1 + dk - two * s;
        let num = s * xi * xi + dk * t;
        let den = s + e * t;
        let r = num / den;
        let g = dk1 * xi * xi + two * s * t + dk * (F::one() - xi) * (F::one() - xi);
        // partial derivatives of R = num / den and of the log-det
        let dr = |dn: F, dd: F| (dn - r * dd) / den;
        let r_xi = dr(two * s * xi + dk * tp, e * tp);
        let r_s = dr(xi * xi, F::one() - two * t);
        let r_dk = dr(t, t);
        let r_dk1 = dr(F::zero(), t);
        let l_xi =
            (two * dk1 * xi + two * s * tp - two * dk * (F::one() - xi)) / g - two * e * tp / den;
        let l_s = two / s + two * t / g - two * (F::one() - two * t) / den;
        let l_dk = (F::one() - xi) * (F::one() - xi) / g - two * t / den;
        let l_dk1 = xi * xi / g - two * t / den;
        let g_xi = gy * h * r_xi + gl * l_xi;
        let g_s = gy * h * r_s + gl * l_s;
        let g_dk = gy * h * r_dk + gl * l_dk;
        let g_dk1 = gy * h * r_dk1 + gl * l_dk1;
        let g_yk = gy;
        let g_h = gy * r + g_s / w;
        let g_xk = -g_xi / w;
        let g_w = -(g_xi * xi + g_s * s) / w;
        // knots -> normalised sizes: x_k = -B + 2B sum_{j<k} wid_j, w_k = 2B wid_k (the same for heights)
        let tb = two * F::c(self.bound);
        // dL/d wid_j = 2B sc g_start for j < k, 2B sc g_size for j = k, 0 beyond; then through the softmax
        let sizes = |g_start: F, g_size: F, sm: &[F], min: f64, dst: &mut [F]| {
            let sc = F::c(1.0 - min * nb as f64);
            let (a, b) = (tb * sc * g_start, tb * sc * g_size);
            let below: F = sm[..k].iter().copied().sum();
            let dot = a * below + b * sm[k];
            for j in 0..nb {
                let gw = if j < k {
                    a
                } else if j == k {
                    b
                } else {
                    F::zero()
                };
                dst[j] += sm[j] * (gw - dot);
            }
        };
        let (dw, rest) = dp.split_at_mut(nb);
        let (dh, dd) = rest.split_at_mut(nb);
        sizes(g_xk, g_w, &kn.sw, self.min_width, dw);
        sizes(g_yk, g_h, &kn.sh, self.min_height, dh);
        // interior derivatives: d_i = d_min + softplus(u_{i-1} + c), i = 1..K-1
        if k >= 1 {
            dd[k - 1] += g_dk * sk;
        }
        if k + 1 < nb {
            dd[k] += g_dk1 * sk1;
        }
        gy * h * r_xi / w + gl * l_xi / w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rng;
    use rand::Rng as _;

    fn random_params(sp: &RqSpline, seed: u64, scale: f64) -> Vec<f64> {
        let mut r = rng(seed);
        (0..sp.params_per_element())
            .map(|_| scale * r.gen_range(-1.0..1.0))
            .collect()
    }

    #[test]
    fn zero_parameters_are_the_identity() {
        let sp = RqSpline::default();
        let mut kn = Knots::default();
        sp.knots(&vec![0.0f64; sp.params_per_element()], &mut kn);
        for &x in &[-5.0, -3.0, -2.2, -0.1, 0.0, 0.75, 2.9999, 3.0, 7.0] {
            let (y, ld) = sp.forward(x, &kn);
            assert!((y - x).abs() < 1e-12 && ld.abs() < 1e-12, "{x}: {y} {ld}");
            let (xi, ldi) = sp.inverse(x, &kn);
            assert!((xi - x).abs() < 1e-12 && ldi.abs() < 1e-12);
        }
    }

    #[test]
    fn round_trip_on_knots_in_tails_and_at_the_bound() {
        let sp = RqSpline {
            bins: 5,
            bound: 2.0,
            ..RqSpline::default()
        };
        for seed in 0..5 {
            let p = random_params(&sp, seed, 3.0);
            let mut kn = Knots::default();
            sp.knots(&p, &mut kn);
            assert_eq!((kn.xs[0], kn.xs[5]), (-2.0, 2.0));
            assert_eq!((kn.ys[0], kn.ys[5]), (-2.0, 2.0));
            let mut pts = kn.xs.clone();
            pts.extend([-1e6, -2.000001, 1e-9, 0.3, 1.999999, 2.5, 1e6, -1.3]);
            for &x in &pts {
                let (y, ld) = sp.forward(x, &kn);
                let (xr, ldi) = sp.inverse(y, &kn);
                assert!(
                    (x - xr).abs() < 1e-9 * (1.0 + x.abs()),
                    "seed {seed}: {x} -> {y} -> {xr}"
                );
                assert!((ld + ldi).abs() < 1e-9, "log-dets {ld} {ldi}");
                assert!(y.is_finite() && ld.is_finite());
            }
            // the knots map to the knots
            for i in 0..=5 {
                assert!((sp.forward(kn.xs[i], &kn).0 - kn.ys[i]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn log_det_and_gradients_match_finite_differences() {
        for (bins, seed) in [(1, 1), (4, 2), (8, 3)] {
            let sp = RqSpline {
                bins,
                bound: 2.5,
                ..RqSpline::default()
            };
            let p = random_params(&sp, seed, 2.0);
            let mut kn = Knots::default();
            sp.knots(&p, &mut kn);
            let (gy, gl) = (0.7, -1.3);
            let loss = |p: &[f64], x: f64| {
                let mut kn = Knots::default();
                sp.knots(p, &mut kn);
                let (y, ld) = sp.forward(x, &kn);
                gy * y + gl * ld
            };
            let h = 1e-6;
            for &x in &[-2.4, -1.0, -0.05, 0.33, 1.7, 2.49, 3.5] {
                let (_, ld) = sp.forward(x, &kn);
                let fd_dydx = (sp.forward(x + h, &kn).0 - sp.forward(x - h, &kn).0) / (2.0 * h);
                if x.abs() < 2.5 {
                    assert!(
                        (fd_dydx.ln() - ld).abs() < 1e-6,
                        "log-det at {x}: {ld} vs {}",
                        fd_dydx.ln()
                    );
                }
                let mut dp = vec![0.0; p.len()];
                let dx = sp.backward(x, &kn, gy, gl, &mut dp);
                let fd = (loss(&p, x + h) - loss(&p, x - h)) / (2.0 * h);
                assert!(
                    (fd - dx).abs() < 1e-6 * (1.0 + fd.abs()),
                    "dx at {x}: {dx} vs {fd}"
                );
                for j in 0..p.len() {
                    let mut pp = p.clone();
                    let mut pm = p.clone();
                    pp[j] += h;
                    pm[j] -= h;
                    let fd = (loss(&pp, x) - loss(&pm, x)) / (2.0 * h);
                    assert!(
                        (fd - dp[j]).abs() < 1e-6 * (1.0 + fd.abs()),
                        "bins {bins}, x {x}: dp[{j}] {} vs {fd}",
                        dp[j]
                    );
                }
            }
        }
    }

    #[test]
    fn extreme_parameters_and_all_tail_inputs_stay_finite() {
        let sp = RqSpline::default();
        let mut kn = Knots::default();
        let p: Vec<f64> = (0..sp.params_per_element())
            .map(|j| if j % 2 == 0 { 40.0 } else { -40.0 })
            .collect();
        sp.knots(&p, &mut kn);
        for &x in &[-1e30, -3.0, -2.99, 0.0, 1e-3, 2.999, 3.0, 1e30] {
            let (y, ld) = sp.forward(x, &kn);
            let (xr, _) = sp.inverse(y, &kn);
            assert!(y.is_finite() && ld.is_finite() && xr.is_finite(), "{x}");
            let mut dp = vec![0.0; p.len()];
            assert!(sp.backward(x, &kn, 1.0, 1.0, &mut dp).is_finite());
            assert!(dp.iter().all(|v| v.is_finite()));
        }
    }
}
