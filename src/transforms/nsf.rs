//! Neural spline flows (Durkan et al. 2019): rational-quadratic splines ([`RqSpline`]) whose bin widths,
//! heights and knot derivatives come from a conditioner network.
//!
//! - [`SplineCoupling`] (RQ-NSF (C)): `z_b = RQS(x_b; θ(x_a, c))`, `z_a = x_a`, an MLP conditioner.
//! - [`SplineAr`] (RQ-NSF (AR)): `z_i = RQS(x_i; θ_i(x_<i, c))`, a MADE conditioner; log p is one pass, the
//!   inverse (sampling) D passes, like MAF.
//!
//! Conditioner outputs are laid out parameter-major: parameter `j` of transformed feature `k` is output
//! `j * n + k` (`n` transformed features). The last layer starts at zero, so every layer starts as the identity.

use super::coupling::{delegate_to_core, CouplingCore};
use super::spline::{Knots, RqSpline};
use super::Transform;
use crate::engine::{Float, Mat, Rng};
use crate::nn::{Activation, Made, MadeOpts, Param};
use rayon::prelude::*;

/// Apply the splines of one batch: `x` (rows x dim), conditioner outputs `h` (rows x P*n), `cols[k]` = the
/// feature transformed by spline `k`. Returns the new matrix and the per-row log-det.
fn apply_splines<F: Float>(
    sp: &RqSpline,
    x: &Mat<F>,
    h: &Mat<F>,
    cols: &[usize],
    inverse: bool,
) -> (Mat<F>, Vec<F>) {
    let n = cols.len();
    let p = sp.params_per_element();
    let mut z = x.clone();
    let mut ld = vec![F::zero(); x.rows];
    let d = x.cols;
    z.data
        .par_chunks_mut(d)
        .zip(ld.par_iter_mut())
        .enumerate()
        .for_each(|(r, (zr, ldr))| {
            let hr = h.row(r);
            let mut kn = Knots::default();
            let mut prm = vec![F::zero(); p];
            let mut acc = F::zero();
            for (k, &j) in cols.iter().enumerate() {
                for (q, v) in prm.iter_mut().enumerate() {
                    *v = hr[q * n + k];
                }
                sp.knots(&prm, &mut kn);
                let (v, l) = if inverse {
                    sp.inverse(zr[j], &kn)
                } else {
                    sp.forward(zr[j], &kn)
                };
                zr[j] = v;
                acc += l;
            }
            *ldr = acc;
        });
    (z, ld)
}

/// Backward of [`apply_splines`] (forward direction) at input `x`: `dx` for the transformed features (others
/// pass `dz` through) and the conditioner-output gradient `dh`.
fn backward_splines<F: Float>(
    sp: &RqSpline,
    x: &Mat<F>,
    h: &Mat<F>,
    cols: &[usize],
    dz: &Mat<F>,
    dlogdet: &[F],
) -> (Mat<F>, Mat<F>) {
    let n = cols.len();
    let p = sp.params_per_element();
    let mut dx = dz.clone();
    let mut dh = Mat::zeros(h.rows, h.cols);
    let d = x.cols;
    dx.data
        .par_chunks_mut(d)
        .zip(dh.data.par_chunks_mut(h.cols))
        .enumerate()
        .for_each(|(r, (dxr, dhr))| {
            let (xr, hr) = (x.row(r), h.row(r));
            let mut kn = Knots::default();
            let mut prm = vec![F::zero(); p];
            let mut dp = vec![F::zero(); p];
            for (k, &j) in cols.iter().enumerate() {
                for (q, v) in prm.iter_mut().enumerate() {
                    *v = hr[q * n + k];
                }
                sp.knots(&prm, &mut kn);
                dp.iter_mut().for_each(|v| *v = F::zero());
                dxr[j] = sp.backward(xr[j], &kn, dxr[j], dlogdet[r], &mut dp);
                for (q, &v) in dp.iter().enumerate() {
                    dhr[q * n + k] = v;
                }
            }
        });
    (dx, dh)
}

/// RQ-NSF coupling layer.
#[derive(Clone, Debug)]
pub struct SplineCoupling<F> {
    core: CouplingCore<F>,
    spline: RqSpline,
    x: Mat<F>,
    h: Mat<F>,
}

impl<F: Float> SplineCoupling<F> {
    /// `mask[j]` is true for the features that get transformed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mask: &[bool],
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        act: Activation,
        spline: RqSpline,
        rng: &mut Rng,
    ) -> Self {
        SplineCoupling {
            core: CouplingCore::new(
                mask,
                ctx_dim,
                hidden,
                depth,
                act,
                spline.params_per_element(),
                rng,
            ),
            spline,
            x: Mat::zeros(0, 0),
            h: Mat::zeros(0, 0),
        }
    }
}

impl<F: Float> Transform<F> for SplineCoupling<F> {
    fn kind(&self) -> &'static str {
        "SplineCoupling"
    }
    fn dim(&self) -> usize {
        self.core.dim
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.core.conditioner(x, ctx);
        apply_splines(&self.spline, x, &h, &self.core.ib, false)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        // x_a = z_a: the conditioner's input is available from z
        let h = self.core.conditioner(z, ctx);
        apply_splines(&self.spline, z, &h, &self.core.ib, true)
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let inp = self.core.net_input(x, ctx);
        let h = self.core.net.forward_train_owned(inp);
        let out = apply_splines(&self.spline, x, &h, &self.core.ib, false);
        self.x = x.clone();
        self.h = h;
        out
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let (mut dx, dh) =
            backward_splines(&self.spline, &self.x, &self.h, &self.core.ib, dz, dlogdet);
        let din = self.core.net.backward(&dh, true).expect("input gradient");
        self.core.add_input_grad(&mut dx, &din);
        dx
    }
    delegate_to_core!();
}

/// RQ-NSF autoregressive layer (MADE conditioner), density direction one pass.
#[derive(Clone, Debug)]
pub struct SplineAr<F> {
    made: Made<F>,
    spline: RqSpline,
    d: usize,
    cols: Vec<usize>,
    x: Mat<F>,
    h: Mat<F>,
}

impl<F: Float> SplineAr<F> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d: usize,
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        act: Activation,
        spline: RqSpline,
        order: &[usize],
        opts: MadeOpts,
        rng: &mut Rng,
    ) -> Self {
        SplineAr {
            made: Made::new(
                d,
                ctx_dim,
                hidden,
                depth,
                spline.params_per_element(),
                act,
                order,
                opts,
                rng,
            ),
            spline,
            d,
            cols: (0..d).collect(),
            x: Mat::zeros(0, 0),
            h: Mat::zeros(0, 0),
        }
    }
}

impl<F: Float> Transform<F> for SplineAr<F> {
    fn kind(&self) -> &'static str {
        "SplineAR"
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.made.forward(x, ctx);
        apply_splines(&self.spline, x, &h, &self.cols, false)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        // D passes: the feature at position p depends only on those before it
        let (d, sp) = (self.d, &self.spline);
        let p = sp.params_per_element();
        let x = self.made.sequential(z.rows, ctx, |i, h, inp| {
            let ci = inp.cols;
            let mut kn = Knots::default();
            let mut prm = vec![F::zero(); p];
            for r in 0..z.rows {
                let hr = h.row(r);
                for (q, v) in prm.iter_mut().enumerate() {
                    *v = hr[q * d + i];
                }
                sp.knots(&prm, &mut kn);
                inp.data[r * ci + i] = sp.inverse(z.at(r, i), &kn).0;
            }
        });
        let (_, ld) = self.forward(&x, ctx);
        (x, ld.into_iter().map(|v| -v).collect())
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.made.forward_train(x, ctx);
        let out = apply_splines(&self.spline, x, &h, &self.cols, false);
        self.x = x.clone();
        self.h = h;
        out
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let (mut dx, dh) =
            backward_splines(&self.spline, &self.x, &self.h, &self.cols, dz, dlogdet);
        let din = self.made.backward(&dh);
        dx.data
            .iter_mut()
            .zip(&din.data)
            .for_each(|(a, &b)| *a += b);
        dx
    }
    fn context_grad(&mut self) -> Option<Mat<F>> {
        self.made.take_context_grad()
    }
    fn params(&self) -> Vec<&Param<F>> {
        self.made.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        self.made.params_mut()
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        Some(Box::new(self.clone()))
    }
    fn reload(&mut self) {
        self.made.apply_masks()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_transform, randomize};
    use super::*;
    use crate::engine::{randn, rng};
    use crate::transforms::Mask;

    fn run(mut t: Box<dyn Transform<f64>>, ctx_dim: usize, seed: u64) {
        let mut r = rng(seed);
        let d = t.dim();
        // spread over the spline's range and its tails
        let mut x: Mat<f64> = randn(&mut r, 6, d);
        x.data.iter_mut().for_each(|v| *v *= 1.6);
        let ctx: Option<Mat<f64>> = (ctx_dim > 0).then(|| randn(&mut r, 6, ctx_dim));
        // zero parameters: the identity
        let (z0, ld0) = t.forward(&x, ctx.as_ref());
        assert!(z0
            .data
            .iter()
            .zip(&x.data)
            .all(|(a, b)| (a - b).abs() < 1e-12));
        assert!(ld0.iter().all(|v| v.abs() < 1e-12));
        randomize(t.as_mut(), &mut r, 0.5);
        check_transform(t.as_mut(), &x, ctx.as_ref(), &mut r);
    }

    #[test]
    fn spline_coupling_checks() {
        let sp = RqSpline {
            bins: 4,
            bound: 2.0,
            ..RqSpline::default()
        };
        for (i, ctx) in [0usize, 2].into_iter().enumerate() {
            let mut r = rng(i as u64);
            let m = Mask::Alternate.build(5, i, &mut r);
            let t = SplineCoupling::<f64>::new(&m, ctx, 8, 2, Activation::Tanh, sp, &mut r);
            run(Box::new(t), ctx, 3 + i as u64);
        }
    }

    #[test]
    fn spline_autoregressive_checks() {
        let sp = RqSpline {
            bins: 5,
            bound: 2.5,
            ..RqSpline::default()
        };
        for (i, ctx) in [0usize, 2].into_iter().enumerate() {
            let mut r = rng(10 + i as u64);
            let order: Vec<usize> = if i == 0 {
                (0..4).collect()
            } else {
                vec![2, 0, 3, 1]
            };
            let t = SplineAr::<f64>::new(
                4,
                ctx,
                10,
                2,
                Activation::Tanh,
                sp,
                &order,
                MadeOpts::default(),
                &mut r,
            );
            run(Box::new(t), ctx, 20 + i as u64);
        }
    }
}
