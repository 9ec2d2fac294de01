//! The structures that condition any element-wise map `g` ([`ElementwiseMap`]):
//!
//! - [`MapCoupling`]: `z_b = g(x_b; θ(x_a, c))`, `z_a = x_a`, an MLP conditioner (Dinh et al. 2017's coupling).
//! - [`MapAr`]: `z_i = g(x_i; θ_i(x_<i, c))`, a MADE conditioner (Papamakarios et al. 2017's masked
//!   autoregressive layer); log p is one pass, the inverse (sampling) D passes.
//!
//! With the rational-quadratic spline ([`RqSpline`]) they are the neural spline flows (Durkan et al. 2019):
//! [`SplineCoupling`] (RQ-NSF (C)) and [`SplineAr`] (RQ-NSF (AR)).
//!
//! Conditioner outputs are laid out parameter-major: parameter `j` of transformed feature `k` is output
//! `j * n + k` (`n` transformed features). The last layer starts at zero, so every layer starts as the identity.

use super::coupling::{delegate_to_core, CouplingCore};
use super::map::ElementwiseMap;
use super::spline::RqSpline;
use super::{negate, Transform};
use crate::engine::{as_f32, as_f32_mut, Float, Mat, Rng};
use crate::nn::{Activation, Made, MadeOpts, Param};
use rayon::prelude::*;

/// Apply the maps of one batch: `x` (rows x dim), conditioner outputs `h` (rows x P*n), `cols[k]` = the
/// feature transformed by map `k`. Returns the new matrix and the per-row log-det.
fn apply_maps<F: Float, M: ElementwiseMap>(
    sp: &M,
    x: &Mat<F>,
    h: &Mat<F>,
    cols: &[usize],
    inverse: bool,
    train: bool,
) -> (Mat<F>, Vec<F>) {
    let n = cols.len();
    let p = sp.params_per_element();
    let mut z = x.clone();
    let mut ld = vec![F::zero(); x.rows];
    let d = x.cols;
    // the map's vectorised f32 path where it has one: always in training, elsewhere where the map's config
    // asks for it (a model saved before that path existed keeps its bits)
    let lanes = h.cols == p * n && h.rows > 0 && as_f32(h.row(0)).is_some();
    z.data
        .par_chunks_mut(d)
        .zip(ld.par_iter_mut())
        .enumerate()
        .with_min_len(crate::engine::pool::min_len())
        .for_each(|(r, (zr, ldr))| {
            let hr = h.row(r);
            if lanes {
                let mut v: Vec<f32> = cols
                    .iter()
                    .map(|&j| zr[j].to_f32().unwrap_or(0.0))
                    .collect();
                if let Some(l) = sp.row_f32(&mut v, as_f32(hr).expect("f32"), inverse, train) {
                    for (&j, &vj) in cols.iter().zip(&v) {
                        zr[j] = F::c(f64::from(vj));
                    }
                    *ldr = F::c(f64::from(l));
                    return;
                }
            }
            let mut kn = M::State::<F>::default();
            let mut prm = vec![F::zero(); p];
            let mut acc = F::zero();
            for (k, &j) in cols.iter().enumerate() {
                for (q, v) in prm.iter_mut().enumerate() {
                    *v = hr[q * n + k];
                }
                sp.prepare(&prm, &mut kn);
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

/// Backward of [`apply_maps`] at the data-side point `x`: in the forward direction `dx` for the transformed
/// features from `dz` (others pass through); with `inverse`, `dz` from `dx` (the sampling direction: `dz`
/// then holds dL/dx of the output). And the conditioner-output gradient `dh`.
fn backward_maps<F: Float, M: ElementwiseMap>(
    sp: &M,
    x: &Mat<F>,
    h: &Mat<F>,
    cols: &[usize],
    dz: &Mat<F>,
    dlogdet: &[F],
    inverse: bool,
) -> (Mat<F>, Mat<F>) {
    let n = cols.len();
    let p = sp.params_per_element();
    let mut dx = dz.clone();
    let mut dh = Mat::zeros(h.rows, h.cols);
    let d = x.cols;
    // the vectorised path covers the forward direction
    let lanes = !inverse && h.cols == p * n && h.rows > 0 && as_f32(h.row(0)).is_some();
    dx.data
        .par_chunks_mut(d)
        .zip(dh.data.par_chunks_mut(h.cols))
        .enumerate()
        .with_min_len(crate::engine::pool::min_len())
        .for_each(|(r, (dxr, dhr))| {
            let (xr, hr) = (x.row(r), h.row(r));
            if lanes {
                let xv: Vec<f32> = cols
                    .iter()
                    .map(|&j| xr[j].to_f32().unwrap_or(0.0))
                    .collect();
                let mut g: Vec<f32> = cols
                    .iter()
                    .map(|&j| dxr[j].to_f32().unwrap_or(0.0))
                    .collect();
                let gl = dlogdet[r].to_f32().unwrap_or(0.0);
                let dh32 = as_f32_mut(dhr).expect("f32");
                if sp.row_backward_f32(&xv, as_f32(hr).expect("f32"), &mut g, gl, dh32) {
                    for (&j, &gj) in cols.iter().zip(&g) {
                        dxr[j] = F::c(f64::from(gj));
                    }
                    return;
                }
            }
            let mut kn = M::State::<F>::default();
            let mut prm = vec![F::zero(); p];
            let mut dp = vec![F::zero(); p];
            for (k, &j) in cols.iter().enumerate() {
                for (q, v) in prm.iter_mut().enumerate() {
                    *v = hr[q * n + k];
                }
                sp.prepare(&prm, &mut kn);
                dp.iter_mut().for_each(|v| *v = F::zero());
                dxr[j] = match inverse {
                    false => sp.backward(xr[j], &kn, dxr[j], dlogdet[r], &mut dp),
                    true => sp.backward_inverse(xr[j], &kn, dxr[j], dlogdet[r], &mut dp),
                };
                for (q, &v) in dp.iter().enumerate() {
                    dhr[q * n + k] = v;
                }
            }
        });
    (dx, dh)
}

/// A coupling layer of the map `M`.
#[derive(Clone, Debug)]
pub struct MapCoupling<F, M> {
    core: CouplingCore<F>,
    map: M,
    x: Mat<F>,
    h: Mat<F>,
}

/// RQ-NSF coupling layer.
pub type SplineCoupling<F> = MapCoupling<F, RqSpline>;

impl<F: Float, M: ElementwiseMap> MapCoupling<F, M> {
    /// `mask[j]` is true for the features that get transformed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mask: &[bool],
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        act: Activation,
        map: M,
        rng: &mut Rng,
    ) -> Self {
        MapCoupling {
            core: CouplingCore::new(
                mask,
                ctx_dim,
                hidden,
                depth,
                act,
                map.params_per_element(),
                rng,
            ),
            map,
            x: Mat::zeros(0, 0),
            h: Mat::zeros(0, 0),
        }
    }
}

impl<F: Float, M: ElementwiseMap> Transform<F> for MapCoupling<F, M> {
    fn kind(&self) -> &'static str {
        M::COUPLING
    }
    fn dim(&self) -> usize {
        self.core.dim
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.core.conditioner(x, ctx);
        apply_maps(&self.map, x, &h, &self.core.ib, false, false)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        // x_a = z_a: the conditioner's input is available from z
        let h = self.core.conditioner(z, ctx);
        apply_maps(&self.map, z, &h, &self.core.ib, true, false)
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let inp = self.core.net_input(x, ctx);
        let h = self.core.net.forward_train_owned(inp);
        let out = apply_maps(&self.map, x, &h, &self.core.ib, false, true);
        self.x = x.clone();
        self.h = h;
        out
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let (mut dx, dh) = backward_maps(
            &self.map,
            &self.x,
            &self.h,
            &self.core.ib,
            dz,
            dlogdet,
            false,
        );
        let din = self.core.net.backward(&dh, true).expect("input gradient");
        self.core.add_input_grad(&mut dx, &din);
        dx
    }
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        // x_a = z_a: the conditioner sees the same input in both directions
        let inp = self.core.net_input(z, ctx);
        let h = self.core.net.forward_train_owned(inp);
        let out = apply_maps(&self.map, z, &h, &self.core.ib, true, true);
        self.x = out.0.clone();
        self.h = h;
        Some(out)
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let (mut dz, dh) = backward_maps(
            &self.map,
            &self.x,
            &self.h,
            &self.core.ib,
            dx,
            dlogdet,
            true,
        );
        let din = self.core.net.backward(&dh, true).expect("input gradient");
        self.core.add_input_grad(&mut dz, &din);
        dz
    }
    delegate_to_core!();
}

/// A masked autoregressive layer of the map `M` (MADE conditioner), density direction one pass.
#[derive(Clone, Debug)]
pub struct MapAr<F, M> {
    made: Made<F>,
    map: M,
    d: usize,
    cols: Vec<usize>,
    x: Mat<F>,
    h: Mat<F>,
}

/// RQ-NSF autoregressive layer.
pub type SplineAr<F> = MapAr<F, RqSpline>;

impl<F: Float, M: ElementwiseMap> MapAr<F, M> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d: usize,
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        act: Activation,
        map: M,
        order: &[usize],
        opts: MadeOpts,
        rng: &mut Rng,
    ) -> Self {
        MapAr {
            made: Made::new(
                d,
                ctx_dim,
                hidden,
                depth,
                map.params_per_element(),
                act,
                order,
                opts,
                rng,
            ),
            map,
            d,
            cols: (0..d).collect(),
            x: Mat::zeros(0, 0),
            h: Mat::zeros(0, 0),
        }
    }

    /// `g^-1(z)` by D passes: the feature at position p depends only on those before it.
    fn solve(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        let (d, sp) = (self.d, &self.map);
        let p = sp.params_per_element();
        self.made.sequential(z.rows, ctx, |i, h, inp| {
            let ci = inp.cols;
            let mut kn = M::State::<F>::default();
            let mut prm = vec![F::zero(); p];
            for r in 0..z.rows {
                let hr = h.row(r);
                for (q, v) in prm.iter_mut().enumerate() {
                    *v = hr[q * d + i];
                }
                sp.prepare(&prm, &mut kn);
                inp.data[r * ci + i] = sp.inverse(z.at(r, i), &kn).0;
            }
        })
    }
}

impl<F: Float, M: ElementwiseMap> Transform<F> for MapAr<F, M> {
    fn kind(&self) -> &'static str {
        M::AUTOREGRESSIVE
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.made.forward(x, ctx);
        apply_maps(&self.map, x, &h, &self.cols, false, false)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let x = self.solve(z, ctx);
        let (_, ld) = self.forward(&x, ctx);
        (x, negate(ld))
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.made.forward_train(x, ctx);
        let out = apply_maps(&self.map, x, &h, &self.cols, false, true);
        self.x = x.clone();
        self.h = h;
        out
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let (mut dx, dh) =
            backward_maps(&self.map, &self.x, &self.h, &self.cols, dz, dlogdet, false);
        let din = self.made.backward(&dh);
        dx.data
            .iter_mut()
            .zip(&din.data)
            .for_each(|(a, &b)| *a += b);
        dx
    }
    /// Sampling: the D-pass solve, then one MADE pass at the solution for the implicit backward.
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        let x = self.solve(z, ctx);
        self.h = self.made.forward_train(&x, ctx);
        let (_, ld) = apply_maps(&self.map, &x, &self.h, &self.cols, false, true);
        self.x = x.clone();
        Some((x, negate(ld)))
    }
    /// Implicit differentiation of `g(x; MADE(x)) = z`: with `J = dz/dx` (triangular in the ordering) and
    /// `ℓ` the forward log-det, `dL/dz = c = J^-T (dL/dx - gl ∇ℓ)`, by back-substitution from the last
    /// position (D vector-Jacobian products of the forward pass, no parameter gradients); the parameters'
    /// (and the context's) gradients are then the forward backward's for the upstream `(-c, -gl)`.
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let (rows, d) = (dx.rows, self.d);
        // J^T u + g ∇ℓ at the cached point, parameter gradients untouched
        let vjp = |me: &mut Self, u: &Mat<F>, g: &[F]| -> Mat<F> {
            let (mut v, dh) = backward_maps(&me.map, &me.x, &me.h, &me.cols, u, g, false);
            let din = me.made.backward_input(&dh);
            v.data.iter_mut().zip(&din.data).for_each(|(a, &b)| *a += b);
            v
        };
        let mut v = vjp(self, &Mat::zeros(rows, d), dlogdet);
        v.data
            .iter_mut()
            .zip(&dx.data)
            .for_each(|(a, &b)| *a = b - *a);
        // g'(x_i) of every element
        let np = self.map.params_per_element();
        let mut slope = Mat::zeros(rows, d);
        let (mut st, mut prm, mut dp) = (
            M::State::<F>::default(),
            vec![F::zero(); np],
            vec![F::zero(); np],
        );
        for r in 0..rows {
            let hr = self.h.row(r);
            for i in 0..d {
                for (q, p) in prm.iter_mut().enumerate() {
                    *p = hr[q * d + i];
                }
                self.map.prepare(&prm, &mut st);
                slope.data[r * d + i] =
                    self.map
                        .backward(self.x.at(r, i), &st, F::one(), F::zero(), &mut dp);
            }
        }
        let mut by_pos = vec![0; d];
        for (i, p) in self.made.order().into_iter().enumerate() {
            by_pos[p] = i;
        }
        let zeros = vec![F::zero(); rows];
        let mut c = Mat::zeros(rows, d);
        for &i in by_pos.iter().rev() {
            // (J^T c)_i with c_i still 0 holds only the later features' terms
            let t = vjp(self, &c, &zeros);
            for r in 0..rows {
                let k = r * d + i;
                c.data[k] = (v.data[k] - t.data[k]) / slope.data[k];
            }
        }
        let mut neg = c.clone();
        neg.data.iter_mut().for_each(|a| *a = -*a);
        let g: Vec<F> = dlogdet.iter().map(|&a| -a).collect();
        let (_, dh) = backward_maps(&self.map, &self.x, &self.h, &self.cols, &neg, &g, false);
        self.made.backward(&dh);
        c
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

    /// Every map in both structures, with and without a context: the generic checks (round trip, log-dets
    /// against central differences, input / parameter / context gradients against finite differences).
    fn every_structure<M: ElementwiseMap>(map: M, seed: u64) {
        for (i, ctx) in [0usize, 2].into_iter().enumerate() {
            let mut r = rng(seed + i as u64);
            let m = Mask::Alternate.build(5, i, &mut r);
            let t = MapCoupling::<f64, M>::new(&m, ctx, 8, 2, Activation::Tanh, map, &mut r);
            run(Box::new(t), ctx, seed + 10 + i as u64);
            let order = vec![2, 0, 3, 1];
            let opts = MadeOpts {
                residual: i == 1,
                ..MadeOpts::default()
            };
            let t =
                MapAr::<f64, M>::new(4, ctx, 10, 1, Activation::Tanh, map, &order, opts, &mut r);
            run(Box::new(t), ctx, seed + 20 + i as u64);
        }
    }

    #[test]
    fn sinh_arcsinh_in_every_structure() {
        every_structure(crate::transforms::SinhArcsinh, 40);
    }

    #[test]
    fn shift_in_every_structure() {
        every_structure(crate::transforms::Shift, 50);
    }
}
