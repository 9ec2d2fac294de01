//! Masked affine autoregressive transforms built on one MADE conditioner `(t, h) = MADE(u)`, `l = bound(h)`:
//!
//! `g(u) = u * exp(l(u)) + t(u)`, `log|det dg/du| = sum l`, where `t_i, l_i` depend only on the `u` that come
//! before feature `i` in the ordering. `g` costs one MADE pass; `g^-1` costs D sequential passes, because `u_i`
//! can only be computed once every earlier `u` is known.
//!
//! - MAF (Papamakarios et al. 2017) uses `g` as the density direction: `z = g(x)`. log p is one pass, sampling D.
//! - IAF (Kingma et al. 2016) uses `g` as the sampling direction: `x = g(z)`. Sampling (with the density of the
//!   sample) is one pass; log p of an arbitrary point is D passes.

use super::coupling::Scales;
use super::{negate, ScaleBound, Transform};
use crate::engine::{Float, Mat, Rng};
use crate::nn::{Activation, Made, MadeOpts, Param};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

crate::names::named!(Order => "order");

/// Autoregressive ordering of a MADE layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    Natural,
    Reversed,
    /// Natural for even layers, reversed for odd ones (the MAF paper's stacks).
    #[default]
    Alternate,
    Random,
}

impl Order {
    /// `order[i]` = position of feature `i`, for layer number `layer`.
    pub fn build(self, d: usize, layer: usize, rng: &mut Rng) -> Vec<usize> {
        let natural: Vec<usize> = (0..d).collect();
        let reversed: Vec<usize> = (0..d).rev().collect();
        match self {
            Order::Natural => natural,
            Order::Reversed => reversed,
            Order::Alternate if layer.is_multiple_of(2) => natural,
            Order::Alternate => reversed,
            Order::Random => {
                let mut o = natural;
                o.shuffle(rng);
                o
            }
        }
    }
}

/// The shared core: `g`, its sequential inverse, and the backward passes of both.
#[derive(Clone, Debug)]
struct AffineAr<F> {
    made: Made<F>,
    bound: ScaleBound,
    d: usize,
    // training cache at the point `u` where g was evaluated (rows x d): u, exp(l), dl/dh
    u: Vec<F>,
    s: Vec<F>,
    dl: Vec<F>,
}

impl<F: Float> AffineAr<F> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        d: usize,
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        act: Activation,
        bound: ScaleBound,
        order: &[usize],
        opts: MadeOpts,
        rng: &mut Rng,
    ) -> Self {
        AffineAr {
            made: Made::new(d, ctx_dim, hidden, depth, 2, act, order, opts, rng),
            bound,
            d,
            u: Vec::new(),
            s: Vec::new(),
            dl: Vec::new(),
        }
    }

    /// `g(u)` and `sum l` in one fused pass over MADE's outputs `h`; with `cache`, keeps exp(l) and dl/dh.
    /// Rows are independent: blocks of rows over the pool when large (the same results for any number of
    /// threads; serial, this pass left the other threads idle; docs/results/speed.md, sixth session).
    fn apply_h(
        &self,
        u: &Mat<F>,
        h: &Mat<F>,
        cache: Option<(&mut Vec<F>, &mut Vec<F>)>,
    ) -> (Mat<F>, Vec<F>) {
        const BLOCK: usize = 16;
        let (d, rows) = (self.d, u.rows);
        let mut y = u.clone();
        let mut ld = vec![F::zero(); rows];
        // rows `BLOCK * b..` of y and ld, and of the cached exp(l) and dl/dh
        let block =
            |b: usize, yb: &mut [F], ldb: &mut [F], mut keep: Option<(&mut [F], &mut [F])>| {
                let mut sc = Scales::new(d);
                for (k, (yr, ldr)) in yb.chunks_exact_mut(d).zip(ldb.iter_mut()).enumerate() {
                    let hr = h.row(BLOCK * b + k);
                    self.bound.eval_slice(&hr[d..2 * d], false, &mut sc);
                    if let Some((s, dl)) = keep.as_mut() {
                        s[k * d..(k + 1) * d].copy_from_slice(&sc.e);
                        dl[k * d..(k + 1) * d].copy_from_slice(&sc.dl);
                    }
                    for i in 0..d {
                        yr[i] = yr[i] * sc.e[i] + hr[i];
                        *ldr += sc.l[i];
                    }
                }
            };
        let par = rows * d >= 1 << 13 && crate::engine::pool::threads() > 1;
        let min = if par { 1 } else { usize::MAX };
        let blocks = y
            .data
            .par_chunks_mut(BLOCK * d)
            .zip(ld.par_chunks_mut(BLOCK))
            .enumerate()
            .with_min_len(min);
        match cache {
            Some((s, dl)) => {
                for v in [&mut *s, &mut *dl] {
                    v.clear();
                    v.resize(rows * d, F::zero());
                }
                blocks
                    .zip(s.par_chunks_mut(BLOCK * d))
                    .zip(dl.par_chunks_mut(BLOCK * d))
                    .for_each(|(((b, (yb, ldb)), sb), db)| block(b, yb, ldb, Some((sb, db))));
            }
            None => blocks.for_each(|(b, (yb, ldb))| block(b, yb, ldb, None)),
        }
        (y, ld)
    }

    fn apply(&self, u: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.made.forward(u, ctx);
        self.apply_h(u, &h, None)
    }

    fn apply_train(&mut self, u: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.made.forward_train(u, ctx);
        let (mut s, mut dl) = (std::mem::take(&mut self.s), std::mem::take(&mut self.dl));
        let out = self.apply_h(u, &h, Some((&mut s, &mut dl)));
        self.u.clear();
        self.u.extend_from_slice(&u.data);
        self.s = s;
        self.dl = dl;
        out
    }

    /// `g^-1(y)` and `sum l` at the solution: pass `k` fixes the feature at position `k` (its outputs depend only
    /// on features already fixed). The MADE input (with context columns) and the layer buffers are allocated
    /// once and reused by every pass.
    fn solve(&self, y: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let d = self.d;
        let mut sl = vec![F::zero(); y.rows];
        // pass i: feature i of every row, its raw log-scales gathered into one column
        let (mut col, mut sc) = (vec![F::zero(); y.rows], Scales::new(y.rows));
        let u = self.made.sequential(y.rows, ctx, |i, h, inp| {
            let w = inp.cols;
            for (r, c) in col.iter_mut().enumerate() {
                *c = h.data[r * h.cols + d + i];
            }
            self.bound.eval_slice(&col, true, &mut sc);
            for (r, slr) in sl.iter_mut().enumerate() {
                inp.data[r * w + i] = (y.data[r * d + i] - h.data[r * h.cols + i]) * sc.e[r];
                *slr += sc.l[r];
            }
        });
        (u, sl)
    }

    /// The MADE output gradient `(dt, dh)` from per-entry closures of the cache index.
    fn made_grad(
        &self,
        rows: usize,
        dt: impl Fn(usize, usize) -> F,
        dh: impl Fn(usize, usize) -> F,
    ) -> Mat<F> {
        let d = self.d;
        let mut g = Mat::zeros(rows, 2 * d);
        for (r, gr) in g.data.chunks_exact_mut(2 * d).enumerate() {
            let (gt, gh) = gr.split_at_mut(d);
            for i in 0..d {
                let c = r * d + i;
                gt[i] = dt(r, c);
                gh[i] = dh(r, c);
            }
        }
        g
    }

    /// The MADE output gradient of `(y, ld) = (g(u), sum l)` given dL/dy and dL/dld.
    fn apply_grad(&self, dy: &Mat<F>, gld: &[F]) -> Mat<F> {
        let (s, u, dl) = (&self.s, &self.u, &self.dl);
        self.made_grad(
            dy.rows,
            |_, c| dy.data[c],
            |r, c| (dy.data[c] * u[c] * s[c] + gld[r]) * dl[c],
        )
    }

    /// Backward of `(y, ld) = (g(u), sum l)` given dL/dy and dL/dld: accumulates parameter gradients, returns dL/du.
    fn backward_apply(&mut self, dy: &Mat<F>, gld: &[F]) -> Mat<F> {
        let d = self.d;
        let dh = self.apply_grad(dy, gld);
        let s = &self.s;
        let mut du = Mat::from_vec(
            dy.rows,
            d,
            dy.data.iter().zip(s).map(|(&a, &b)| a * b).collect(),
        );
        let din = self.made.backward(&dh);
        crate::engine::kernels::zip_inplace(&mut du.data, &din.data, |a, b| a + b);
        du
    }

    /// Backward of `(u, ld) = (g^-1(y), -sum l(u))` by implicit differentiation at the cached solution `u`:
    /// with `J = dg/du` (triangular in the ordering), `dL/dy = J^-T (dL/du - gld * d(sum l)/du)`, solved by
    /// back-substitution `v <- (b - N^T v) / exp(l)` where `N^T v` is one input-only MADE backward; exact after
    /// at most D sweeps. Parameter gradients: `-v^T dg/dtheta - gld * d(sum l)/dtheta`.
    fn backward_solve(&mut self, du: &Mat<F>, gld: &[F]) -> Mat<F> {
        let d = self.d;
        let rows = du.rows;
        let (s, u, dl) = (&self.s, &self.u, &self.dl);
        let gsum = self.made_grad(rows, |_, _| F::zero(), |r, c| gld[r] * dl[c]);
        let w = self.made.backward_input(&gsum);
        let b: Vec<F> = du.data.iter().zip(&w.data).map(|(&a, &w)| a - w).collect();
        let mut v: Vec<F> = b.iter().zip(s).map(|(&b, &s)| b / s).collect();
        for _ in 0..d {
            let g = self.made_grad(rows, |_, c| v[c], |_, c| v[c] * u[c] * s[c] * dl[c]);
            let nv = self.made.backward_input(&g);
            let next: Vec<F> = b
                .iter()
                .zip(&nv.data)
                .zip(s)
                .map(|((&b, &n), &s)| (b - n) / s)
                .collect();
            let done = next == v;
            v = next;
            if done {
                break;
            }
        }
        let gp = self.made_grad(
            rows,
            |_, c| -v[c],
            |r, c| (-v[c] * u[c] * s[c] - gld[r]) * dl[c],
        );
        self.made.backward_params(&gp);
        Mat::from_vec(rows, d, v)
    }
}

/// Masked autoregressive flow layer: `z = g(x)` (density in one pass, sampling in D).
#[derive(Clone, Debug)]
pub struct Maf<F>(AffineAr<F>);

/// Inverse autoregressive flow layer: `x = g(z)` (sampling in one pass, density of a given point in D).
#[derive(Clone, Debug)]
pub struct Iaf<F>(AffineAr<F>);

macro_rules! ar_constructor {
    ($t:ident) => {
        impl<F: Float> $t<F> {
            /// `order[i]`: position of feature `i`; `opts`: random hidden degrees, residual blocks.
            #[allow(clippy::too_many_arguments)]
            pub fn new(
                d: usize,
                ctx_dim: usize,
                hidden: usize,
                depth: usize,
                act: Activation,
                bound: ScaleBound,
                order: &[usize],
                opts: MadeOpts,
                rng: &mut Rng,
            ) -> Self {
                $t(AffineAr::new(
                    d, ctx_dim, hidden, depth, act, bound, order, opts, rng,
                ))
            }
        }
    };
}
ar_constructor!(Maf);
ar_constructor!(Iaf);

/// The same layer (weights, ordering) used the other way round.
impl<F: Float> From<Maf<F>> for Iaf<F> {
    fn from(m: Maf<F>) -> Self {
        Iaf(m.0)
    }
}

impl<F: Float> Transform<F> for Maf<F> {
    fn kind(&self) -> &'static str {
        "MAF"
    }
    fn dim(&self) -> usize {
        self.0.d
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.0.apply(x, ctx)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let (x, sl) = self.0.solve(z, ctx);
        (x, negate(sl))
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.0.apply_train(x, ctx)
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        self.0.backward_apply(dz, dlogdet)
    }
    fn backward_params(&mut self, dz: &Mat<F>, dlogdet: &[F]) {
        let dh = self.0.apply_grad(dz, dlogdet);
        self.0.made.backward_params(&dh);
    }
    /// Sampling: the D-pass solve, then `g` once more at the solution for the implicit backward (IAF's
    /// density pass, the same layer the other way round).
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        let (x, _) = self.0.solve(z, ctx);
        let (_, sl) = self.0.apply_train(&x, ctx);
        Some((x, negate(sl)))
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        self.0.backward_solve(dx, dlogdet)
    }
    fn context_grad(&mut self) -> Option<Mat<F>> {
        self.0.made.take_context_grad()
    }
    fn params(&self) -> Vec<&Param<F>> {
        self.0.made.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        self.0.made.params_mut()
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        Some(Box::new(self.clone()))
    }
    fn reload(&mut self) {
        self.0.made.apply_masks();
    }
}

impl<F: Float> Transform<F> for Iaf<F> {
    fn kind(&self) -> &'static str {
        "IAF"
    }
    fn dim(&self) -> usize {
        self.0.d
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let (z, sl) = self.0.solve(x, ctx);
        (z, negate(sl))
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.0.apply(z, ctx)
    }
    /// Solves for `z` (D passes), then evaluates `g` once more at `z` to cache what the implicit backward needs.
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let (z, _) = self.0.solve(x, ctx);
        let (_, sl) = self.0.apply_train(&z, ctx);
        (z, negate(sl))
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        self.0.backward_solve(dz, dlogdet)
    }
    /// Sampling is IAF's cheap direction: one MADE pass (MAF's density pass, the same layer the other way).
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        Some(self.0.apply_train(z, ctx))
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        self.0.backward_apply(dx, dlogdet)
    }
    fn context_grad(&mut self) -> Option<Mat<F>> {
        self.0.made.take_context_grad()
    }
    fn params(&self) -> Vec<&Param<F>> {
        self.0.made.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        self.0.made.params_mut()
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        Some(Box::new(self.clone()))
    }
    fn reload(&mut self) {
        self.0.made.apply_masks();
    }
}
