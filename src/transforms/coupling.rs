//! Coupling layers: NICE's additive coupling (Dinh et al. 2015) and RealNVP's affine coupling
//! (Dinh et al. 2017). The features are split by a binary mask into an identity part `a` and a transformed
//! part `b`; a conditioner network sees `x_a` (and the context, if any) and outputs the parameters of an
//! element-wise map of `x_b`:
//!
//! - additive: `z_b = x_b + t(x_a)`, log|det| = 0;
//! - affine:   `z_b = x_b * exp(l(x_a)) + t(x_a)`, log|det| = sum l, with `l` bounded (see [`ScaleBound`]).

use super::{zeros_logdet, Transform};
use crate::engine::{Float, Mat, Rng};
pub use crate::nn::ScaleBound;
pub(crate) use crate::nn::Scales;
use crate::nn::{Activation, Mlp, Param};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

crate::names::named!(Mask => "mask");

/// Which features a coupling layer transforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mask {
    /// Alternating features (even / odd by layer parity): the vector form of RealNVP's checkerboard.
    #[default]
    #[serde(alias = "checkerboard")]
    Alternate,
    /// First half / second half, swapping by layer parity (NICE's partition).
    Halves,
    /// A random half of the features per layer.
    Random,
}

impl Mask {
    /// `true` for transformed features, for layer number `layer` of `d` features.
    pub fn build(self, d: usize, layer: usize, rng: &mut Rng) -> Vec<bool> {
        let mut m: Vec<bool> = match self {
            Mask::Alternate => (0..d).map(|j| j % 2 == (layer + 1) % 2).collect(),
            Mask::Halves => (0..d)
                .map(|j| (j >= d / 2) == layer.is_multiple_of(2))
                .collect(),
            Mask::Random => {
                let mut idx: Vec<usize> = (0..d).collect();
                idx.shuffle(rng);
                let mut m = vec![false; d];
                for &j in &idx[..d / 2] {
                    m[j] = true;
                }
                m
            }
        };
        // A 1-D flow has nothing to condition on: transform the single feature (the conditioner then only
        // sees the context, or learns a constant).
        if d == 1 {
            m[0] = true;
        }
        m
    }
}

/// The `Transform` methods every MLP coupling (`self.core: CouplingCore`) hands to its core: context gradient,
/// parameters, reload.
macro_rules! delegate_to_core {
    () => {
        fn context_grad(&mut self) -> Option<Mat<F>> {
            self.core.dctx.take()
        }
        fn params(&self) -> Vec<&Param<F>> {
            self.core.params()
        }
        fn params_mut(&mut self) -> Vec<&mut Param<F>> {
            self.core.params_mut()
        }
        fn replica(&self) -> Option<Box<dyn Transform<F>>> {
            Some(Box::new(self.clone()))
        }
        fn reload(&mut self) {
            self.core.reload()
        }
    };
}
pub(crate) use delegate_to_core;

/// Shared part of coupling layers: the mask and the conditioner.
#[derive(Clone, Debug)]
pub(crate) struct CouplingCore<F> {
    mask: Param<F>,
    /// identity features (conditioner input)
    pub(crate) ia: Vec<usize>,
    /// transformed features
    pub(crate) ib: Vec<usize>,
    pub(crate) net: Mlp<F>,
    ctx_dim: usize,
    pub(crate) dim: usize,
    /// dL/dcontext of the last backward (conditional couplings).
    pub(crate) dctx: Option<Mat<F>>,
}

impl<F: Float> CouplingCore<F> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        mask: &[bool],
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        act: Activation,
        outputs_per_feature: usize,
        rng: &mut Rng,
    ) -> Self {
        let d = mask.len();
        let mask_p = Param::buffer(
            "mask",
            vec![d],
            mask.iter()
                .map(|&b| if b { F::one() } else { F::zero() })
                .collect(),
        );
        let (ia, ib) = split(mask);
        let net = Mlp::new(
            "net",
            ia.len() + ctx_dim,
            hidden,
            depth,
            outputs_per_feature * ib.len(),
            act,
            rng,
        );
        CouplingCore {
            mask: mask_p,
            ia,
            ib,
            net,
            ctx_dim,
            dim: d,
            dctx: None,
        }
    }
    pub(crate) fn net_input(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        let xa = x.gather_cols(&self.ia);
        match (ctx, self.ctx_dim) {
            (_, 0) => xa,
            (Some(c), k) => {
                assert_eq!(c.cols, k, "context has {} columns, expected {k}", c.cols);
                xa.hcat(c)
            }
            (None, k) => panic!("conditional coupling needs a context of {k} columns"),
        }
    }
    /// The conditioner's output for `x` (inference): only `x_a` and the context are read, so `z` serves too.
    pub(crate) fn conditioner(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        self.net.forward(&self.net_input(x, ctx))
    }
    pub(crate) fn reload(&mut self) {
        let m: Vec<bool> = self.mask.value().iter().map(|v| v.f64() > 0.5).collect();
        let (ia, ib) = split(&m);
        self.ia = ia;
        self.ib = ib;
    }
    /// Add the conditioner's input gradient (first |a| columns of `din`) into `dx`; keep the context's
    /// (the remaining columns) for [`Transform::context_grad`].
    pub(crate) fn add_input_grad(&mut self, dx: &mut Mat<F>, din: &Mat<F>) {
        self.keep_context_grad(din);
        for r in 0..dx.rows {
            let src = din.row(r);
            let cols = dx.cols;
            let dst = &mut dx.data[r * cols..(r + 1) * cols];
            for (k, &j) in self.ia.iter().enumerate() {
                dst[j] += src[k];
            }
        }
    }
    fn keep_context_grad(&mut self, din: &Mat<F>) {
        let na = self.ia.len();
        self.dctx = (self.ctx_dim > 0)
            .then(|| din.gather_cols(&(na..na + self.ctx_dim).collect::<Vec<_>>()));
    }
    /// The conditioner's backward for its output gradient `dh` when dL/dx is not wanted: parameter gradients,
    /// and the context's (the only input gradient then formed).
    pub(crate) fn backward_params(&mut self, dh: &Mat<F>) {
        // (without a context nothing is formed, and `dctx` is `None` as `keep_context_grad` always leaves it)
        if let Some(din) = self.net.backward(dh, self.ctx_dim > 0) {
            self.keep_context_grad(&din);
        }
    }
    pub(crate) fn params(&self) -> Vec<&Param<F>> {
        let mut v = vec![&self.mask];
        v.extend(self.net.params());
        v
    }
    pub(crate) fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        let mut v = vec![&mut self.mask];
        v.extend(self.net.params_mut());
        v
    }
}

fn split(mask: &[bool]) -> (Vec<usize>, Vec<usize>) {
    let ia = (0..mask.len()).filter(|&j| !mask[j]).collect();
    let ib = (0..mask.len()).filter(|&j| mask[j]).collect();
    (ia, ib)
}

/// NICE additive coupling: `z_b = x_b + t(x_a)`.
#[derive(Clone, Debug)]
pub struct AdditiveCoupling<F> {
    core: CouplingCore<F>,
}

impl<F: Float> AdditiveCoupling<F> {
    /// `mask[j]` is true for the features that get transformed.
    pub fn new(
        mask: &[bool],
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        act: Activation,
        rng: &mut Rng,
    ) -> Self {
        AdditiveCoupling {
            core: CouplingCore::new(mask, ctx_dim, hidden, depth, act, 1, rng),
        }
    }
    fn shifted(&self, x: &Mat<F>, t: &Mat<F>, sign: F) -> Mat<F> {
        let mut z = x.clone();
        let ib = &self.core.ib;
        for r in 0..z.rows {
            let tr = t.row(r);
            let zr = z.row_mut(r);
            for (k, &j) in ib.iter().enumerate() {
                zr[j] += sign * tr[k];
            }
        }
        z
    }
}

impl<F: Float> Transform<F> for AdditiveCoupling<F> {
    fn kind(&self) -> &'static str {
        "AdditiveCoupling"
    }
    fn dim(&self) -> usize {
        self.core.dim
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let t = self.core.conditioner(x, ctx);
        (self.shifted(x, &t, F::one()), zeros_logdet(x.rows))
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        // x_a = z_a, so the conditioner input is available from z directly.
        let t = self.core.conditioner(z, ctx);
        (self.shifted(z, &t, -F::one()), zeros_logdet(z.rows))
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let inp = self.core.net_input(x, ctx);
        let t = self.core.net.forward_train_owned(inp);
        (self.shifted(x, &t, F::one()), zeros_logdet(x.rows))
    }
    fn backward(&mut self, dz: &Mat<F>, _dlogdet: &[F]) -> Mat<F> {
        let dt = dz.gather_cols(&self.core.ib);
        let mut dx = dz.clone();
        let din = self.core.net.backward(&dt, true).expect("input gradient");
        self.core.add_input_grad(&mut dx, &din);
        dx
    }
    fn backward_params(&mut self, dz: &Mat<F>, _dlogdet: &[F]) {
        let dt = dz.gather_cols(&self.core.ib);
        self.core.backward_params(&dt);
    }
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        let inp = self.core.net_input(z, ctx);
        let t = self.core.net.forward_train_owned(inp);
        Some((self.shifted(z, &t, -F::one()), zeros_logdet(z.rows)))
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, _dlogdet: &[F]) -> Mat<F> {
        // x_b = z_b - t(z_a): dL/dt = -dL/dx_b, dL/dz_b = dL/dx_b, dL/dz_a = dL/dx_a + the conditioner's
        let mut dt = dx.gather_cols(&self.core.ib);
        dt.data.iter_mut().for_each(|v| *v = -*v);
        let mut dz = dx.clone();
        let din = self.core.net.backward(&dt, true).expect("input gradient");
        self.core.add_input_grad(&mut dz, &din);
        dz
    }
    delegate_to_core!();
}

/// RealNVP affine coupling: `z_b = x_b * exp(l) + t`, `(t, h) = net(x_a, ctx)`, `l = bound(h)`.
#[derive(Clone, Debug)]
pub struct AffineCoupling<F> {
    core: CouplingCore<F>,
    bound: ScaleBound,
    /// training cache: x_b, exp(l), dl/dh (each rows x |b|)
    xb: Vec<F>,
    s: Vec<F>,
    dl: Vec<F>,
}

impl<F: Float> AffineCoupling<F> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mask: &[bool],
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        act: Activation,
        bound: ScaleBound,
        rng: &mut Rng,
    ) -> Self {
        AffineCoupling {
            core: CouplingCore::new(mask, ctx_dim, hidden, depth, act, 2, rng),
            bound,
            xb: Vec::new(),
            s: Vec::new(),
            dl: Vec::new(),
        }
    }

    /// dL/dh, the conditioner's output gradient `[dL/dt, dL/dl * dl/dh]`, from dL/dz and dL/dlogdet; with
    /// `dx` (a copy of dz), in the same pass its transformed features' part of dL/dx (`dz_b * exp(l)`).
    fn conditioner_grad(&self, dz: &Mat<F>, dlogdet: &[F], dx: Option<&mut Mat<F>>) -> Mat<F> {
        let nb = self.core.ib.len();
        let cols = dz.cols;
        let mut dh = Mat::zeros(dz.rows, 2 * nb);
        let row = |r: usize, dhr: &mut [F], mut dxr: Option<&mut [F]>| {
            let g = dlogdet[r];
            let dzr = &dz.data[r * cols..(r + 1) * cols];
            for (k, &j) in self.core.ib.iter().enumerate() {
                let c = r * nb + k;
                let (s, d) = (self.s[c], dzr[j]);
                if let Some(dxr) = dxr.as_deref_mut() {
                    dxr[j] = d * s;
                }
                dhr[k] = d;
                dhr[nb + k] = (d * self.xb[c] * s + g) * self.dl[c];
            }
        };
        // rows are independent: split over the pool when large
        let par = dz.rows * nb >= 1 << 14 && crate::engine::pool::threads() > 1;
        let min = if par { 32 } else { usize::MAX };
        let dhs = dh.data.par_chunks_mut(2 * nb).enumerate().with_min_len(min);
        match dx {
            Some(dx) => dhs
                .zip(dx.data.par_chunks_mut(cols))
                .for_each(|((r, dhr), dxr)| row(r, dhr, Some(dxr))),
            None => dhs.for_each(|(r, dhr)| row(r, dhr, None)),
        }
        dh
    }

    /// A training pass in either direction: the conditioner with its caches, then [`Self::apply`] keeping
    /// what the backward of that direction needs.
    fn train_pass(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>, inverse: bool) -> (Mat<F>, Vec<F>) {
        let inp = self.core.net_input(x, ctx);
        let h = self.core.net.forward_train_owned(inp);
        let (mut xb, mut s, mut dl) = (
            std::mem::take(&mut self.xb),
            std::mem::take(&mut self.s),
            std::mem::take(&mut self.dl),
        );
        let out = self.apply(x, &h, inverse, Some((&mut xb, &mut s, &mut dl)));
        (self.xb, self.s, self.dl) = (xb, s, dl);
        out
    }

    /// One fused pass: scale, shift and log-det. `cache` receives (x_b, s, dl/dh) when training: x_b on the
    /// data side (the input forward, the output inverse), `s = exp(±l)` as applied. Rows are
    /// independent: split over the pool in fixed chunks (the same results for any number of threads).
    fn apply(
        &self,
        x: &Mat<F>,
        h: &Mat<F>,
        inverse: bool,
        cache: Option<(&mut Vec<F>, &mut Vec<F>, &mut Vec<F>)>,
    ) -> (Mat<F>, Vec<F>) {
        let nb = self.core.ib.len();
        let d = x.cols;
        let mut z = x.clone();
        let mut ld = vec![F::zero(); x.rows];
        // row `r`: its scales in one vectorised pass over its raw outputs (contiguous in the row, so no copy),
        // into `sc` (one per block of rows, reused row after row), then shift, scale and log-det
        let row = |r: usize,
                   zr: &mut [F],
                   ldr: &mut F,
                   mut keep: Option<(&mut [F], &mut [F], &mut [F])>,
                   sc: &mut Scales<F>| {
            let hr = h.row(r);
            self.bound.eval_slice(&hr[nb..2 * nb], inverse, sc);
            let (l, dl, e) = (&sc.l, &sc.dl, &sc.e);
            let mut acc = F::zero();
            for (k, &j) in self.core.ib.iter().enumerate() {
                let t = hr[k];
                acc += l[k];
                if inverse {
                    zr[j] = (zr[j] - t) * e[k];
                    // the sampling direction's cache: x_b is the output here, e = exp(-l)
                    if let Some((xb, s, dlk)) = keep.as_mut() {
                        xb[k] = zr[j];
                        s[k] = e[k];
                        dlk[k] = dl[k];
                    }
                } else {
                    if let Some((xb, s, dlk)) = keep.as_mut() {
                        xb[k] = zr[j];
                        s[k] = e[k];
                        dlk[k] = dl[k];
                    }
                    zr[j] = zr[j] * e[k] + t;
                }
            }
            *ldr = if inverse { -acc } else { acc };
        };
        const ROWS: usize = 32;
        // small batches stay on the calling thread: one piece, run in place
        let par = x.rows * nb >= 1 << 14 && crate::engine::pool::threads() > 1;
        let min_len = if par { 1 } else { usize::MAX };
        match cache {
            Some((xb, s, dl)) => {
                for v in [&mut *xb, &mut *s, &mut *dl] {
                    v.clear();
                    v.resize(x.rows * nb, F::zero());
                }
                z.data
                    .par_chunks_mut(ROWS * d)
                    .zip(ld.par_chunks_mut(ROWS))
                    .zip(xb.par_chunks_mut(ROWS * nb))
                    .zip(s.par_chunks_mut(ROWS * nb))
                    .zip(dl.par_chunks_mut(ROWS * nb))
                    .enumerate()
                    .with_min_len(min_len)
                    .for_each(|(c, ((((zc, lc), xc), sc), dc))| {
                        let mut scales = Scales::new(nb);
                        for (i, ldr) in lc.iter_mut().enumerate() {
                            let k = i * nb..(i + 1) * nb;
                            let keep = (&mut xc[k.clone()], &mut sc[k.clone()], &mut dc[k]);
                            let zr = &mut zc[i * d..(i + 1) * d];
                            row(c * ROWS + i, zr, ldr, Some(keep), &mut scales);
                        }
                    });
            }
            None => z
                .data
                .par_chunks_mut(ROWS * d)
                .zip(ld.par_chunks_mut(ROWS))
                .enumerate()
                .with_min_len(min_len)
                .for_each(|(c, (zc, lc))| {
                    let mut scales = Scales::new(nb);
                    for (i, ldr) in lc.iter_mut().enumerate() {
                        let zr = &mut zc[i * d..(i + 1) * d];
                        row(c * ROWS + i, zr, ldr, None, &mut scales);
                    }
                }),
        }
        (z, ld)
    }
}

impl<F: Float> Transform<F> for AffineCoupling<F> {
    fn kind(&self) -> &'static str {
        "AffineCoupling"
    }
    fn dim(&self) -> usize {
        self.core.dim
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.core.conditioner(x, ctx);
        self.apply(x, &h, false, None)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.core.conditioner(z, ctx);
        self.apply(z, &h, true, None)
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.train_pass(x, ctx, false)
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let mut dx = dz.clone();
        let dh = self.conditioner_grad(dz, dlogdet, Some(&mut dx));
        let din = self.core.net.backward(&dh, true).expect("input gradient");
        self.core.add_input_grad(&mut dx, &din);
        dx
    }
    fn backward_params(&mut self, dz: &Mat<F>, dlogdet: &[F]) {
        let dh = self.conditioner_grad(dz, dlogdet, None);
        self.core.backward_params(&dh);
    }
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        // x_a = z_a: the conditioner sees the same input in both directions
        Some(self.train_pass(z, ctx, true))
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        // x_b = (z_b - t) e^-l, log-det -sum l: dL/dz_b = dx_b e^-l, dL/dt = -dx_b e^-l,
        // dL/dl = -dx_b x_b - g
        let nb = self.core.ib.len();
        let mut dz = dx.clone();
        let mut dh = Mat::zeros(dx.rows, 2 * nb);
        for r in 0..dx.rows {
            let g = dlogdet[r];
            for (k, &j) in self.core.ib.iter().enumerate() {
                let c = r * nb + k;
                let d = dx.at(r, j) * self.s[c];
                dz.data[r * dx.cols + j] = d;
                dh.data[r * 2 * nb + k] = -d;
                dh.data[r * 2 * nb + nb + k] = (-dx.at(r, j) * self.xb[c] - g) * self.dl[c];
            }
        }
        let din = self.core.net.backward(&dh, true).expect("input gradient");
        self.core.add_input_grad(&mut dz, &din);
        dz
    }
    delegate_to_core!();
}
