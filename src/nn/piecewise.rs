//! The front of a one-input ReLU network evaluated as the function it is.
//!
//! For a scalar input `x`, the first two layers of a ReLU network, `y = b1 + W1 act(w0 x + b0)` (act = ReLU,
//! or leaky ReLU with slope `α` below zero), are a continuous piecewise-affine function of `x` (the linear
//! regions of ReLU networks: Montúfar et al. 2014, "On the number of linear regions of deep neural networks").
//! Unit `j` switches at `t_j = -b0_j / w0_j`, so `H` hidden units cut the line into at most `H + 1` pieces, and
//! on piece `k`
//!
//! ```text
//!     y = A_k x + C_k,   A_k = Σ_j c_jk w0_j W1[:, j],   C_k = b1 + Σ_j c_jk b0_j W1[:, j],
//! ```
//!
//! with `c_jk ∈ {α, 1}` the slope of unit `j` on piece `k`. The table costs `O(H·H2)` (one column update per
//! breakpoint, summed in f64); a row then costs a binary search and `H2` multiply-adds instead of the dense
//! pair's `H·H2`. The backward is exact in the same way: every sum over "the rows where unit `j` is active" is a
//! difference of prefix sums over the rows grouped by piece, so the gradients of `W1, b1, w0, b0` and `x` cost
//! `O(B·H2 + H·H2)` instead of `O(B·H·H2)`.
//!
//! This is the case of every coupling layer on 2-D data (one identity feature per coupling: RealNVP, NICE and
//! spline couplings on the toy sets), where the `H x H` product was nearly all of a training step.

use super::{Activation, Linear};
use crate::engine::{Float, Mat};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// The slope below zero of the activations that are linear on each side of zero (ReLU 0, leaky ReLU 0.01).
pub(crate) fn negative_slope(act: Activation) -> Option<f64> {
    match act {
        Activation::Relu => Some(0.0),
        Activation::LeakyRelu => Some(0.01),
        _ => None,
    }
}

/// Rows x outputs above which a table evaluation is split over the pool (per row: the result does not
/// depend on the split).
const PAR_ELEMS: usize = 1 << 15;

/// A table and the versions of the weights it was built from (`w0`, `b0`, `W1`, `b1`).
type Keyed<F> = ([u64; 4], Arc<Pieces<F>>);

/// The last table a network built, with the [`super::Param::version`]s of the weights it was built from:
/// inference with unchanged weights (scoring a data set batch by batch, drawing batch after batch) reuses it
/// instead of rebuilding it per call. Every write to a weight gives it a new version, so a changed weight always
/// rebuilds. Clones start empty.
#[derive(Default)]
pub(crate) struct TableCache<F> {
    pub(crate) last: std::sync::Mutex<Option<Keyed<F>>>,
}

impl<F> Clone for TableCache<F> {
    fn clone(&self) -> Self {
        TableCache {
            last: std::sync::Mutex::new(None),
        }
    }
}

impl<F> std::fmt::Debug for TableCache<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableCache")
    }
}

impl<F: Float> TableCache<F> {
    /// The table of `l1(act(l0(x)))`: the cached one if it was built from these exact weights.
    pub(crate) fn get(&self, l0: &Linear<F>, l1: &Linear<F>, alpha: f64) -> Arc<Pieces<F>> {
        let key = [
            l0.weight.version(),
            l0.bias.version(),
            l1.weight.version(),
            l1.bias.version(),
        ];
        // (a contended cache is bypassed, never waited for)
        let Ok(mut last) = self.last.try_lock() else {
            return Arc::new(Pieces::new(l0, l1, alpha));
        };
        if let Some((held, table)) = last.as_ref() {
            if table.alpha == alpha && *held == key {
                return table.clone();
            }
        }
        let table = Arc::new(Pieces::new(l0, l1, alpha));
        *last = Some((key, table.clone()));
        table
    }
}

/// `y = A_k x + C_k` for the two front layers of a one-input network (see the module doc).
#[derive(Clone, Debug)]
pub(crate) struct Pieces<F> {
    /// Breakpoints, ascending (a unit with `w0_j = 0` has none: it is constant).
    t: Vec<f64>,
    /// The unit switching at each breakpoint.
    unit: Vec<usize>,
    /// `A_k` then, in `icpt`, `C_k`: `out` values per piece, pieces in order.
    slope: Vec<F>,
    icpt: Vec<F>,
    out: usize,
    alpha: f64,
    /// W1's columns (`H x out`, f64), for the backward.
    cols: Vec<f64>,
}

impl<F: Float> Pieces<F> {
    /// The table of `l1(act(l0(x)))` for `l0: 1 -> H`, `l1: H -> out` and an activation of negative slope
    /// `alpha`.
    pub(crate) fn new(l0: &Linear<F>, l1: &Linear<F>, alpha: f64) -> Self {
        #[cfg(target_arch = "x86_64")]
        if crate::engine::sgemm::available() {
            // SAFETY: the CPU has AVX2 and FMA
            return unsafe { Self::build_avx2(l0, l1, alpha) };
        }
        Self::build(l0, l1, alpha)
    }

    /// [`Pieces::build`] compiled for AVX2 (the crate's baseline is SSE2; the same operations, so the same
    /// bits: its `mul_add`s are fused multiply-adds here and libm's correctly rounded `fma` there).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn build_avx2(l0: &Linear<F>, l1: &Linear<F>, alpha: f64) -> Self {
        Self::build(l0, l1, alpha)
    }

    #[inline(always)]
    fn build(l0: &Linear<F>, l1: &Linear<F>, alpha: f64) -> Self {
        let (h, out) = (l0.out, l1.out);
        assert!(l0.inp == 1 && l1.inp == h, "a one-input front pair");
        let w0: Vec<f64> = l0.weight.value().iter().map(|v| v.f64()).collect();
        let b0: Vec<f64> = l0.bias.value().iter().map(|v| v.f64()).collect();
        let mut keyed: Vec<(f64, usize)> = (0..h)
            .filter(|&j| w0[j] != 0.0)
            .map(|j| (-b0[j] / w0[j], j))
            .collect();
        keyed.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (t, unit): (Vec<f64>, Vec<usize>) = keyed.into_iter().unzip();
        // W1's columns, contiguous
        let mut cols = vec![0.0f64; h * out];
        // in 8 x 8 tiles through registers (a column-at-a-time walk with W1's power-of-two row stride keeps
        // missing L1)
        let w1 = l1.weight.value();
        for i0 in (0..out).step_by(8) {
            for j0 in (0..h).step_by(8) {
                if i0 + 8 <= out && j0 + 8 <= h {
                    let mut tile = [[0.0f64; 8]; 8];
                    for ii in 0..8 {
                        let r: &[F; 8] = w1[(i0 + ii) * h + j0..][..8].try_into().expect("8");
                        for jj in 0..8 {
                            tile[jj][ii] = r[jj].f64();
                        }
                    }
                    for (jj, t) in tile.iter().enumerate() {
                        cols[(j0 + jj) * out + i0..][..8].copy_from_slice(t);
                    }
                } else {
                    for i in i0..(i0 + 8).min(out) {
                        for j in j0..(j0 + 8).min(h) {
                            cols[j * out + i] = w1[i * h + j].f64();
                        }
                    }
                }
            }
        }
        // the column updates: piece 0 lies below every breakpoint (units with w0 < 0 are active there, those
        // with w0 > 0 are not), then crossing t_j upwards switches unit j on (w0 > 0) or off (w0 < 0)
        let first: Vec<(f64, f64)> = (0..h)
            .map(|j| {
                let on = w0[j] < 0.0 || (w0[j] == 0.0 && b0[j] > 0.0);
                let cj = if on { 1.0 } else { alpha };
                (cj * w0[j], cj * b0[j])
            })
            .collect();
        let steps: Vec<(f64, f64)> = unit
            .iter()
            .map(|&j| {
                let d = if w0[j] > 0.0 {
                    1.0 - alpha
                } else {
                    alpha - 1.0
                };
                (d * w0[j], d * b0[j])
            })
            .collect();
        let pieces = t.len() + 1;
        let (mut slope, mut icpt) = (vec![F::zero(); pieces * out], vec![F::zero(); pieces * out]);
        let mut a = vec![0.0f64; out];
        let mut c: Vec<f64> = l1.bias.value().iter().map(|v| v.f64()).collect();
        let update = |(dw, db): (f64, f64), j: usize, a: &mut [f64], c: &mut [f64]| {
            let col = &cols[j * out..(j + 1) * out];
            for ((a, c), &v) in a.iter_mut().zip(c.iter_mut()).zip(col) {
                *a = dw.mul_add(v, *a);
                *c = db.mul_add(v, *c);
            }
        };
        for (j, &d) in first.iter().enumerate() {
            update(d, j, &mut a, &mut c);
        }
        let mut put = |k: usize, a: &[f64], c: &[f64]| {
            let o = k * out;
            slope[o..o + out]
                .iter_mut()
                .zip(a)
                .for_each(|(d, &v)| *d = F::c(v));
            icpt[o..o + out]
                .iter_mut()
                .zip(c)
                .for_each(|(d, &v)| *d = F::c(v));
        };
        put(0, &a, &c);
        for (p, (&j, &d)) in unit.iter().zip(&steps).enumerate() {
            update(d, j, &mut a, &mut c);
            put(p + 1, &a, &c);
        }
        Pieces {
            t,
            unit,
            slope,
            icpt,
            out,
            alpha,
            cols,
        }
    }

    /// The piece holding `x`: the number of breakpoints below it (the reference for [`Pieces::pieces8`]).
    #[cfg(test)]
    fn piece(&self, x: F) -> usize {
        let x = x.f64();
        self.t.partition_point(|&t| t < x)
    }

    /// [`Pieces::piece`] of up to 8 inputs at once: the same branch-free binary search, interleaved so the
    /// rows' dependent loads overlap.
    #[inline(always)]
    fn pieces8(&self, x: &[F], k: &mut [usize; 8]) {
        let t = &self.t;
        let mut xs = [f64::NAN; 8];
        xs.iter_mut().zip(x).for_each(|(d, v)| *d = v.f64());
        *k = [0; 8];
        if t.is_empty() {
            return;
        }
        let mut size = t.len();
        while size > 1 {
            let half = size / 2;
            for (b, &x) in k.iter_mut().zip(&xs) {
                // (NaN compares false: piece 0, and the NaN reaches the output)
                *b = if t[*b + half] < x { *b + half } else { *b };
            }
            size -= half;
        }
        for (b, &x) in k.iter_mut().zip(&xs) {
            *b += (t[*b] < x) as usize;
        }
    }

    /// `y = A_k x + C_k` for a column of inputs (`x.rows x 1`), followed by `act` where given (the
    /// activation of the next layer's input, fused).
    pub(crate) fn eval(&self, x: &Mat<F>, act: Option<Activation>) -> Mat<F> {
        assert_eq!(x.cols, 1);
        let (n, out) = (x.rows, self.out);
        // every output is written exactly once, straight into the result (no zero-fill, no gathering of parts)
        let mut y: Vec<F> = Vec::with_capacity(n * out);
        let dst = &mut y.spare_capacity_mut()[..n * out];
        if n * out >= PAR_ELEMS && crate::engine::pool::threads() > 1 {
            // blocks of rows over the pool (each row is computed the same way)
            const ROWS: usize = 128;
            dst.par_chunks_mut(ROWS * out)
                .zip(x.data.par_chunks(ROWS))
                .for_each(|(d, xb)| self.rows(xb, d, act));
        } else {
            self.rows(&x.data, dst, act);
        }
        // SAFETY: `rows` initialised all n * out elements (it writes every element of the slice it is given)
        unsafe { y.set_len(n * out) };
        Mat::from_vec(n, out, y)
    }

    /// The outputs of the rows `x` into `y` (`x.len() * out` elements, every one written).
    fn rows(&self, x: &[F], y: &mut [MaybeUninit<F>], act: Option<Activation>) {
        assert_eq!(y.len(), x.len() * self.out);
        #[cfg(target_arch = "x86_64")]
        if crate::engine::sgemm::available() {
            // SAFETY: the CPU has AVX2 and FMA
            return unsafe { self.rows_avx2(x, y, act) };
        }
        self.rows_impl(x, y, act)
    }

    /// [`Pieces::rows_impl`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2(&self, x: &[F], y: &mut [MaybeUninit<F>], act: Option<Activation>) {
        self.rows_impl(x, y, act)
    }

    #[inline(always)]
    fn rows_impl(&self, x: &[F], y: &mut [MaybeUninit<F>], act: Option<Activation>) {
        // rows in groups of 8: their pieces, then their outputs (one loop per activation: the match stays
        // outside the element loop, which then vectorises)
        #[inline(always)]
        fn run<F: Float>(p: &Pieces<F>, x: &[F], y: &mut [MaybeUninit<F>], f: impl Fn(F) -> F) {
            let out = p.out;
            let mut k = [0usize; 8];
            for (xg, yg) in x.chunks(8).zip(y.chunks_mut(8 * out)) {
                p.pieces8(xg, &mut k);
                for ((&xr, &k), yr) in xg.iter().zip(&k).zip(yg.chunks_mut(out)) {
                    let a = &p.slope[k * out..(k + 1) * out];
                    let c = &p.icpt[k * out..(k + 1) * out];
                    for ((d, &a), &c) in yr.iter_mut().zip(a).zip(c) {
                        d.write(f(a * xr + c));
                    }
                }
            }
        }
        match act {
            None => run(self, x, y, |v| v),
            Some(Activation::Relu) => run(self, x, y, |v| Activation::Relu.apply(v)),
            Some(Activation::LeakyRelu) => run(self, x, y, |v| Activation::LeakyRelu.apply(v)),
            Some(f) => run(self, x, y, |v| f.apply(v)),
        }
    }

    /// Back-propagate `g` (`x.rows x out`, the gradient w.r.t. this pair's output) through the table built from
    /// `l0` and `l1` (unchanged since): accumulates the two layers' parameter gradients when `params`, and
    /// returns dL/dx when `want_dx`. The outputs are taken in two halves, one per task (always two, so the
    /// sums do not depend on the number of threads).
    pub(crate) fn backward(
        &self,
        l0: &mut Linear<F>,
        l1: &mut Linear<F>,
        x: &Mat<F>,
        g: &Mat<F>,
        params: bool,
        want_dx: bool,
    ) -> Option<Mat<F>> {
        let (out, h, n) = (self.out, l0.out, x.rows);
        assert_eq!((g.rows, g.cols, x.cols), (n, out, 1));
        let mut ks = vec![0usize; n];
        let mut k8 = [0usize; 8];
        for (xg, kg) in x.data.chunks(8).zip(ks.chunks_mut(8)) {
            self.pieces8(xg, &mut k8);
            kg.copy_from_slice(&k8[..kg.len()]);
        }
        let mid = (out / 2).next_multiple_of(8).min(out);
        let (w0, b0) = (l0.weight.value(), l0.bias.value());
        let (gw_lo, gw_hi) = l1.weight.grad_mut().split_at_mut(mid * h);
        let (gb_lo, gb_hi) = l1.bias.grad_mut().split_at_mut(mid);
        let job = |cols: (usize, usize), gw: &mut [F], gb: &mut [F]| {
            let half = Half {
                w0,
                b0,
                x: &x.data,
                ks: &ks,
                g,
                cols,
                params,
                want_dx,
            };
            self.half(half, gw, gb)
        };
        let (lo, hi) = match crate::engine::pool::threads() {
            // (on one thread the halves in turn, not offered to a thread busy with another shard)
            1 => (job((0, mid), gw_lo, gb_lo), job((mid, out), gw_hi, gb_hi)),
            _ => rayon::join(
                || job((0, mid), gw_lo, gb_lo),
                || job((mid, out), gw_hi, gb_hi),
            ),
        };
        if params {
            for j in 0..h {
                l0.weight.grad_mut()[j] += F::c(lo.0[j] + hi.0[j]);
                l0.bias.grad_mut()[j] += F::c(lo.1[j] + hi.1[j]);
            }
        }
        want_dx.then(|| Mat::from_vec(n, 1, lo.2.iter().zip(&hi.2).map(|(&a, &b)| a + b).collect()))
    }

    /// One half of [`Pieces::backward`] (see [`Half`]): writes the half's rows of W1's and b1's gradients,
    /// returns its parts of the gradients of `w0`, `b0` (f64) and of dL/dx.
    fn half(&self, a: Half<'_, F>, gw: &mut [F], gb: &mut [F]) -> (Vec<f64>, Vec<f64>, Vec<F>) {
        #[cfg(target_arch = "x86_64")]
        if crate::engine::sgemm::available() {
            // SAFETY: the CPU has AVX2 and FMA
            return unsafe { self.half_avx2(a, gw, gb) };
        }
        self.half_impl(a, gw, gb)
    }

    /// [`Pieces::half_impl`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn half_avx2(
        &self,
        a: Half<'_, F>,
        gw: &mut [F],
        gb: &mut [F],
    ) -> (Vec<f64>, Vec<f64>, Vec<F>) {
        self.half_impl(a, gw, gb)
    }

    #[inline(always)]
    fn half_impl(
        &self,
        a: Half<'_, F>,
        gw: &mut [F],
        gb: &mut [F],
    ) -> (Vec<f64>, Vec<f64>, Vec<F>) {
        let Half {
            w0,
            b0,
            x,
            ks,
            g,
            cols: (c0, c1),
            params,
            want_dx,
        } = a;
        let (out, h, w) = (self.out, w0.len(), c1 - c0);
        let dx: Vec<F> = if want_dx {
            ks.iter()
                .enumerate()
                .map(|(r, &k)| dot(&g.row(r)[c0..c1], &self.slope[k * out + c0..k * out + c1]))
                .collect()
        } else {
            Vec::new()
        };
        if !params {
            return (Vec::new(), Vec::new(), dx);
        }
        let pieces = self.t.len() + 1;
        // p0[m], p1[m]: the sums of g and of x g over the rows on pieces below m (m = 0..=pieces)
        let mut p0 = vec![0.0f64; (pieces + 1) * w];
        let mut p1 = vec![0.0f64; (pieces + 1) * w];
        for (r, &k) in ks.iter().enumerate() {
            let xr = x[r].f64();
            let gr = &g.row(r)[c0..c1];
            let d0 = &mut p0[(k + 1) * w..(k + 2) * w];
            for (d, &v) in d0.iter_mut().zip(gr) {
                *d += v.f64();
            }
            let d1 = &mut p1[(k + 1) * w..(k + 2) * w];
            for (d, &v) in d1.iter_mut().zip(gr) {
                *d += xr * v.f64();
            }
        }
        for p in [&mut p0, &mut p1] {
            for m in 1..=pieces {
                let (lo, hi) = p.split_at_mut(m * w);
                let prev = &lo[(m - 1) * w..];
                hi[..w].iter_mut().zip(prev).for_each(|(a, &b)| *a += b);
            }
        }
        let (t0, t1) = (&p0[pieces * w..], &p1[pieces * w..]);
        for (gb, &v) in gb.iter_mut().zip(t0) {
            *gb += F::c(v);
        }
        // sorted position of every unit's breakpoint
        let mut pos = vec![usize::MAX; h];
        for (p, &j) in self.unit.iter().enumerate() {
            pos[j] = p;
        }
        let alpha = self.alpha;
        let (mut e0, mut e1) = (vec![0.0f64; w], vec![0.0f64; w]);
        let (mut dw0, mut db0) = (vec![0.0f64; h], vec![0.0f64; h]);
        // W1's gradient by columns (contiguous), added to the row-major gradient at the end
        let mut dcols = vec![0.0f64; h * w];
        for j in 0..h {
            let (wj, bj) = (w0[j].f64(), b0[j].f64());
            // the sums over the rows where unit j is active: below or above its breakpoint, all or none
            let (s0, s1, above): (&[f64], &[f64], bool) = if pos[j] != usize::MAX {
                let m = (pos[j] + 1) * w;
                (&p0[m..m + w], &p1[m..m + w], wj > 0.0)
            } else if bj > 0.0 {
                (&p0[..w], &p1[..w], true) // always active: total minus nothing
            } else {
                (&p0[..w], &p1[..w], false) // never active: nothing
            };
            // e = Σ_r c_j(r) (g_r, x_r g_r) with c_j = 1 where active, alpha elsewhere (the branch outside the
            // loops, so that they vectorise)
            let ea = |e: &mut [f64], t: &[f64], s: &[f64]| {
                let it = e.iter_mut().zip(t).zip(s);
                if above {
                    it.for_each(|((e, &t), &s)| *e = alpha * t + (1.0 - alpha) * (t - s));
                } else {
                    it.for_each(|((e, &t), &s)| *e = alpha * t + (1.0 - alpha) * s);
                }
            };
            ea(&mut e0, t0, s0);
            ea(&mut e1, t1, s1);
            let col = &self.cols[j * out + c0..j * out + c1];
            dw0[j] = dot(col, &e1);
            db0[j] = dot(col, &e0);
            let dcol = &mut dcols[j * w..(j + 1) * w];
            for ((d, &u), &v) in dcol.iter_mut().zip(&e1).zip(&e0) {
                *d = wj * u + bj * v;
            }
        }
        // (in 8 x 8 tiles, like the transposition in the build)
        for i0 in (0..w).step_by(8) {
            for j0 in (0..h).step_by(8) {
                for i in i0..(i0 + 8).min(w) {
                    let row = &mut gw[i * h + j0..i * h + (j0 + 8).min(h)];
                    for (jj, d) in row.iter_mut().enumerate() {
                        *d += F::c(dcols[(j0 + jj) * w + i]);
                    }
                }
            }
        }
        (dw0, db0, dx)
    }
}

/// The inputs of one half of [`Pieces::backward`]: outputs `cols.0..cols.1`.
#[derive(Clone, Copy)]
struct Half<'a, F> {
    w0: &'a [F],
    b0: &'a [F],
    x: &'a [F],
    /// Every row's piece.
    ks: &'a [usize],
    g: &'a Mat<F>,
    cols: (usize, usize),
    params: bool,
    want_dx: bool,
}

/// `Σ a_i b_i` in 8 interleaved partial sums (a fixed order, so the same bits on every call; the partial sums
/// let the additions overlap instead of waiting on one another).
#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for q in 0..8 {
            acc[q] += x[q] * y[q];
        }
    }
    for (q, (&x, &y)) in ar.iter().zip(br).enumerate() {
        acc[q] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rng;
    use crate::nn::Mlp;
    use rand::Rng as _;

    /// A `1 -> h -> ... -> out` network with every weight random (the last layer too), and two first-layer
    /// units with a zero weight (one constant-on, one constant-off), so every kind of unit is there.
    fn net(depth: usize, act: Activation, seed: u64) -> Mlp<f64> {
        let mut r = rng(seed);
        let mut m = Mlp::new("net", 1, 12, depth, 3, act, &mut r);
        for l in &mut m.layers {
            for v in l.weight.value_mut() {
                *v = r.gen_range(-1.0..1.0);
            }
            for v in l.bias.value_mut() {
                *v = r.gen_range(-1.0..1.0);
            }
        }
        m.layers[0].weight.value_mut()[3] = 0.0;
        m.layers[0].bias.value_mut()[3] = 0.4;
        m.layers[0].weight.value_mut()[7] = 0.0;
        m.layers[0].bias.value_mut()[7] = -0.2;
        m
    }

    /// Inputs over and beyond every breakpoint (none exactly on one: the gradient has a kink there).
    fn inputs(n: usize, seed: u64) -> Mat<f64> {
        let mut r = rng(seed);
        Mat::from_vec(n, 1, (0..n).map(|_| r.gen_range(-6.0..6.0)).collect())
    }

    /// The piecewise front gives the dense network's output, input gradient and every parameter gradient
    /// (f64, to rounding), for ReLU and leaky ReLU, with hidden layers after the front and without, in the
    /// inference, reusable-buffer and training passes.
    #[test]
    fn piecewise_front_equals_dense_layers() {
        for act in [Activation::Relu, Activation::LeakyRelu] {
            for depth in [1, 2] {
                let mut fast = net(depth, act, 5);
                assert!(fast.pieces().is_some());
                let mut dense = fast.clone();
                dense.piecewise = false;
                assert!(dense.pieces().is_none());
                let x = inputs(300, 6);
                let y = dense.forward(&x);
                let close = |a: &[f64], b: &[f64], what: &str| {
                    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                    for (k, (p, q)) in a.iter().zip(b).enumerate() {
                        assert!(
                            (p - q).abs() <= 1e-12 * scale,
                            "{what} [{k}]: {p} vs {q} ({act:?}, depth {depth})"
                        );
                    }
                };
                close(&fast.forward(&x).data, &y.data, "forward");
                let mut ws = Vec::new();
                close(
                    &fast.forward_into(&x, &mut ws).data,
                    &y.data,
                    "forward_into",
                );
                close(&fast.forward_train(&x).data, &y.data, "forward_train");
                dense.forward_train(&x);
                let dy = inputs(300 * 3, 7);
                let dy = Mat::from_vec(300, 3, dy.data);
                // gradients accumulate onto what is there
                for (p, q) in fast.params_mut().into_iter().zip(dense.params_mut()) {
                    p.grad_mut().iter_mut().for_each(|g| *g = 0.5);
                    q.grad_mut().iter_mut().for_each(|g| *g = 0.5);
                }
                let dx = fast.backward(&dy, true).unwrap();
                let dx_ref = dense.backward(&dy, true).unwrap();
                close(&dx.data, &dx_ref.data, "dx");
                for (p, q) in fast.params().into_iter().zip(dense.params()) {
                    close(&p.grad(), &q.grad(), &p.name);
                }
                // the input gradient alone leaves the parameter gradients as they are
                let before: Vec<Vec<f64>> =
                    fast.params().iter().map(|p| p.grad().to_vec()).collect();
                close(
                    &fast.backward_input(&dy).data,
                    &dx_ref.data,
                    "backward_input",
                );
                for (p, b) in fast.params().into_iter().zip(&before) {
                    assert_eq!(&p.grad().to_vec(), b);
                }
            }
        }
    }

    /// The table is continuous at its breakpoints, and the front covers a unit whose breakpoint is exactly an
    /// input; other activations, two inputs, masked and residual networks keep the dense layers.
    #[test]
    fn piecewise_front_applies_where_exact() {
        let m = net(2, Activation::Relu, 8);
        let p = m.pieces().unwrap();
        assert_eq!(p.t.len(), 10);
        for (k, &t) in p.t.iter().enumerate() {
            let o = p.out;
            for i in 0..o {
                let left = p.slope[k * o + i] * t + p.icpt[k * o + i];
                let right = p.slope[(k + 1) * o + i] * t + p.icpt[(k + 1) * o + i];
                assert!(
                    (left - right).abs() < 1e-12,
                    "jump at breakpoint {k}: {left} vs {right} at {t}"
                );
            }
        }
        // the interleaved search finds every piece: inputs on, between and beyond the breakpoints, groups of 1-8
        let mut xs: Vec<f64> = p.t.clone();
        xs.extend(p.t.windows(2).map(|w| 0.5 * (w[0] + w[1])));
        xs.extend([-1e9, 1e9, p.t[0] - 1e-9, p.t[9] + 1e-9]);
        for len in 1..=8 {
            for xg in xs.chunks(len) {
                let mut k = [usize::MAX; 8];
                p.pieces8(xg, &mut k);
                for (&x, &k) in xg.iter().zip(&k) {
                    assert_eq!(k, p.piece(x), "piece of {x}");
                }
            }
        }
        let x = Mat::from_vec(p.t.len(), 1, p.t.clone());
        let mut dense = m.clone();
        dense.piecewise = false;
        for (a, b) in m.forward(&x).data.iter().zip(&dense.forward(&x).data) {
            assert!((a - b).abs() < 1e-12);
        }
        let mut r = rng(9);
        for act in [Activation::Tanh, Activation::Elu, Activation::Silu] {
            assert!(Mlp::<f64>::new("n", 1, 8, 2, 2, act, &mut r)
                .pieces()
                .is_none());
        }
        assert!(Mlp::<f64>::new("n", 2, 8, 2, 2, Activation::Relu, &mut r)
            .pieces()
            .is_none());
        assert!(
            Mlp::<f64>::new_residual("n", 1, 8, 1, 2, Activation::Relu, &mut r)
                .pieces()
                .is_none()
        );
        let mut masked = Mlp::<f64>::new("n", 1, 8, 2, 2, Activation::Relu, &mut r);
        masked.layers[0].set_mask(vec![1.0; 8]);
        assert!(masked.pieces().is_none());
    }

    /// The AVX2 compilation (where the CPU has it) and the baseline one give the same bits: table, outputs
    /// and gradients.
    #[test]
    fn piecewise_compilations_agree() {
        let m = net(2, Activation::LeakyRelu, 12);
        let x = inputs(37, 13);
        let g = Mat::from_vec(37, 12, inputs(37 * 12, 14).data);
        let (a, b) = (
            Pieces::new(&m.layers[0], &m.layers[1], 0.01),
            Pieces::build(&m.layers[0], &m.layers[1], 0.01),
        );
        assert_eq!((&a.t, &a.slope, &a.icpt), (&b.t, &b.slope, &b.icpt));
        let act = Some(Activation::LeakyRelu);
        let mut y = vec![MaybeUninit::new(f64::NAN); x.rows * b.out];
        b.rows_impl(&x.data, &mut y, act);
        // SAFETY: every element was initialised (to NaN, then by rows_impl)
        let y: Vec<f64> = y.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert_eq!(a.eval(&x, act).data, y);
        // each half of the backward, dispatched and baseline
        let ks: Vec<usize> = x.data.iter().map(|&v| a.piece(v)).collect();
        let l0 = &m.layers[0];
        for cols in [(0, 8), (8, 12)] {
            let half = Half {
                w0: l0.weight.value(),
                b0: l0.bias.value(),
                x: &x.data,
                ks: &ks,
                g: &g,
                cols,
                params: true,
                want_dx: true,
            };
            let w = cols.1 - cols.0;
            let (mut gw, mut gb) = (vec![0.5; w * 12], vec![0.5; w]);
            let (mut gw2, mut gb2) = (gw.clone(), gb.clone());
            let r = a.half(half, &mut gw, &mut gb);
            let r2 = b.half_impl(half, &mut gw2, &mut gb2);
            assert_eq!((r, gw, gb), (r2, gw2, gb2));
        }
    }

    /// The cached table is reused while the weights are unchanged and rebuilt after any of the four tensors
    /// changes (the output then matches the dense layers with the new weights); clones start empty.
    #[test]
    fn table_cache_follows_the_weights() {
        let mut m = net(2, Activation::Relu, 15);
        let x = inputs(50, 16);
        let a = m.pieces().unwrap();
        assert!(Arc::ptr_eq(&a, &m.pieces().unwrap()));
        for (l, which, k) in [(0, 0, 2), (0, 1, 5), (1, 0, 77), (1, 1, 4)] {
            let before = m.pieces().unwrap();
            let p = if which == 0 {
                &mut m.layers[l].weight
            } else {
                &mut m.layers[l].bias
            };
            p.value_mut()[k] += 0.25;
            let after = m.pieces().unwrap();
            assert!(
                !Arc::ptr_eq(&before, &after),
                "layer {l} tensor {which} changed: rebuilt"
            );
            let mut dense = m.clone();
            dense.piecewise = false;
            for (u, v) in m.forward(&x).data.iter().zip(&dense.forward(&x).data) {
                assert!((u - v).abs() < 1e-12);
            }
        }
        let c = m.clone();
        assert!(c.tables.last.lock().unwrap().is_none());
    }

    /// A batch large enough to be split over the pool gives the serial result bit for bit.
    #[test]
    fn piecewise_eval_split_matches_serial() {
        let m = net(2, Activation::Relu, 10);
        let p = m.pieces().unwrap();
        let x = inputs(PAR_ELEMS / 3 + 17, 11);
        let serial = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| p.eval(&x, Some(Activation::LeakyRelu)));
        let split = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| p.eval(&x, Some(Activation::LeakyRelu)));
        assert_eq!(serial.data, split.data);
        // and the backward's two halves give the same bits however many threads take them
        let mut m1 = m.clone();
        m1.forward_train(&x);
        let g = Mat::from_vec(x.rows, 3, inputs(x.rows * 3, 12).data);
        let mut m3 = m1.clone();
        m3.forward_train(&x);
        let run = |m: &mut Mlp<f64>, threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| m.backward(&g, true).unwrap())
        };
        assert_eq!(run(&mut m1, 1).data, run(&mut m3, 3).data);
        for (p, q) in m1.params().into_iter().zip(m3.params()) {
            assert_eq!(p.grad(), q.grad());
        }
    }
}
