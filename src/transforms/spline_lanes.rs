//! The rational-quadratic spline ([`RqSpline`]) over a whole row of elements at a time, in f32: the same
//! formulas as the scalar path, each step one loop over the row's elements without branches (the bin found by
//! counting knots below the input, its values picked by comparing the count, the tails by a select), so that
//! the loops compile to vector instructions: AVX2 with fused multiply-adds where the CPU has them. Conditioner
//! outputs are parameter-major (parameter `j` of element `k` at `j * n + k`), so each step reads contiguous
//! memory.
//!
//! The scalar path stays the reference (f64 gradient tests); `tests` checks the two agree.

use super::spline::RqSpline;
use crate::engine::vmath::{exp_f32, ln_f32, madd};

/// Working memory of one row of `n` elements: per bin the softmaxed widths and heights and the knots, and per
/// element the bin and its values. Every array is `n` long, so each step below is one loop over the row.
struct Scratch {
    n: usize,
    k: usize,
    /// the backward pass's per-element gradients
    grads: [Vec<f32>; 6],
    sw: Vec<Vec<f32>>,
    sh: Vec<Vec<f32>>,
    xs: Vec<Vec<f32>>,
    ys: Vec<Vec<f32>>,
    cnt: Vec<f32>,
    xk: Vec<f32>,
    w: Vec<f32>,
    yk: Vec<f32>,
    h: Vec<f32>,
    dk: Vec<f32>,
    dk1: Vec<f32>,
    /// d(softplus)/du at the bin's two ends (0 at the outer knots)
    sk: Vec<f32>,
    sk1: Vec<f32>,
    t0: Vec<f32>,
    t1: Vec<f32>,
}

impl Scratch {
    fn new(k: usize, n: usize) -> Self {
        let v = || vec![0.0f32; n];
        Scratch {
            n,
            k,
            grads: [v(), v(), v(), v(), v(), v()],
            sw: vec![v(); k],
            sh: vec![v(); k],
            xs: vec![v(); k + 1],
            ys: vec![v(); k + 1],
            cnt: v(),
            xk: v(),
            w: v(),
            yk: v(),
            h: v(),
            dk: v(),
            dk1: v(),
            sk: v(),
            sk1: v(),
            t0: v(),
            t1: v(),
        }
    }
}

thread_local! {
    /// Each thread's scratch, kept between rows (and calls) of the same shape.
    static SCRATCH: std::cell::RefCell<Option<Scratch>> = const { std::cell::RefCell::new(None) };
}

/// `f` with this thread's scratch for `k` bins and `n` elements.
fn with_scratch<R>(k: usize, n: usize, f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|s| s.k != k || s.n != n) {
            *slot = Some(Scratch::new(k, n));
        }
        f(slot.as_mut().expect("just set"))
    })
}

/// The spline's constants in f32.
#[derive(Clone, Copy)]
struct Shape {
    k: usize,
    b: f32,
    min_w: f32,
    min_h: f32,
    sc_w: f32,
    sc_h: f32,
    dmin: f32,
    shift: f32,
}

impl Shape {
    fn of(sp: &RqSpline) -> Self {
        let k = sp.bins;
        Shape {
            k,
            b: sp.bound as f32,
            min_w: sp.min_width as f32,
            min_h: sp.min_height as f32,
            sc_w: (1.0 - sp.min_width * k as f64) as f32,
            sc_h: (1.0 - sp.min_height * k as f64) as f32,
            dmin: sp.min_derivative as f32,
            shift: sp.softplus_shift() as f32,
        }
    }
}

/// Softmax over the `k` raw sizes `h[j*n..(j+1)*n]` (j = 0..k) of every element into `e`, and the knots
/// `-B, .., B` from them (sizes `min + sc softmax`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn softmax_knots<const FMA: bool>(
    h: &[f32],
    n: usize,
    min: f32,
    sc: f32,
    b: f32,
    e: &mut [Vec<f32>],
    knots: &mut [Vec<f32>],
    tmp: (&mut [f32], &mut [f32]),
) {
    let k = e.len();
    let (mx, acc) = (&mut tmp.0[..n], &mut tmp.1[..n]);
    mx.copy_from_slice(&h[..n]);
    for j in 1..k {
        let pj = &h[j * n..(j + 1) * n];
        for l in 0..n {
            mx[l] = mx[l].max(pj[l]);
        }
    }
    acc.iter_mut().for_each(|v| *v = 0.0);
    for (j, ej) in e.iter_mut().enumerate() {
        let (pj, ej) = (&h[j * n..(j + 1) * n], &mut ej[..n]);
        for l in 0..n {
            ej[l] = exp_f32::<FMA>(pj[l] - mx[l]);
            acc[l] += ej[l];
        }
    }
    // acc: the sums, then their inverses, then the running sizes
    for v in acc.iter_mut() {
        *v = 1.0 / *v;
    }
    for ej in e.iter_mut() {
        let ej = &mut ej[..n];
        for l in 0..n {
            ej[l] *= acc[l];
        }
    }
    acc.iter_mut().for_each(|v| *v = 0.0);
    knots[0][..n].iter_mut().for_each(|v| *v = -b);
    for j in 0..k {
        let (ej, kj) = (&e[j][..n], &mut knots[j + 1][..n]);
        if j + 1 == k {
            kj.iter_mut().for_each(|v| *v = b);
        } else {
            for l in 0..n {
                acc[l] = madd::<FMA>(sc, ej[l], acc[l] + min);
                kj[l] = madd::<FMA>(2.0 * b, acc[l], -b);
            }
        }
    }
}

/// `softplus(z)` and its derivative `sigmoid(z)` from one exponential.
#[inline(always)]
fn softplus<const FMA: bool>(z: f32) -> (f32, f32) {
    let e = exp_f32::<FMA>(-z.abs());
    let sp = z.max(0.0) + ln_f32::<FMA>(1.0 + e);
    let r = 1.0 / (1.0 + e);
    (sp, if z > 0.0 { r } else { e * r })
}

/// Knots of the row's elements and the bin of each element's `v` among its x-knots (the y-knots when
/// `inverse`), with the bin's values, into `s`.
#[inline(always)]
fn locate<const FMA: bool>(c: &Shape, s: &mut Scratch, h: &[f32], v: &[f32], inverse: bool) {
    let (k, n) = (c.k, s.n);
    let (t0, t1) = (&mut s.t0, &mut s.t1);
    softmax_knots::<FMA>(h, n, c.min_w, c.sc_w, c.b, &mut s.sw, &mut s.xs, (t0, t1));
    softmax_knots::<FMA>(
        &h[k * n..],
        n,
        c.min_h,
        c.sc_h,
        c.b,
        &mut s.sh,
        &mut s.ys,
        (t0, t1),
    );
    let knots = if inverse { &s.ys } else { &s.xs };
    let (v, cnt) = (&v[..n], &mut s.cnt[..n]);
    cnt.iter_mut().for_each(|c| *c = 0.0);
    for kj in &knots[1..k] {
        let kj = &kj[..n];
        for l in 0..n {
            cnt[l] += if v[l] >= kj[l] { 1.0 } else { 0.0 };
        }
    }
    // the bin's knots: x_k, y_k into xk, yk and x_{k+1}, y_{k+1} into w, h (differences taken below)
    let (xk, xk1, yk, yk1) = (&mut s.xk[..n], &mut s.w[..n], &mut s.yk[..n], &mut s.h[..n]);
    for j in 0..k {
        let jf = j as f32;
        let (a, a1, b, b1) = (
            &s.xs[j][..n],
            &s.xs[j + 1][..n],
            &s.ys[j][..n],
            &s.ys[j + 1][..n],
        );
        for l in 0..n {
            let m = cnt[l] == jf;
            xk[l] = if m { a[l] } else { xk[l] };
            xk1[l] = if m { a1[l] } else { xk1[l] };
            yk[l] = if m { b[l] } else { yk[l] };
            yk1[l] = if m { b1[l] } else { yk1[l] };
        }
    }
    for l in 0..n {
        xk1[l] -= xk[l];
        yk1[l] -= yk[l];
    }
    // the raw derivatives at the bin's ends, u_{k-1} and u_k (unused at the outer knots)
    let (ulo, uhi) = (&mut s.t0[..n], &mut s.t1[..n]);
    ulo.iter_mut().for_each(|v| *v = 0.0);
    uhi.iter_mut().for_each(|v| *v = 0.0);
    for j in 1..k {
        let jf = j as f32;
        let u = &h[(2 * k + j - 1) * n..(2 * k + j) * n];
        for l in 0..n {
            ulo[l] = if cnt[l] == jf { u[l] } else { ulo[l] };
            uhi[l] = if cnt[l] == jf - 1.0 { u[l] } else { uhi[l] };
        }
    }
    let last = (k - 1) as f32;
    let (dk, dk1, sk, sk1) = (
        &mut s.dk[..n],
        &mut s.dk1[..n],
        &mut s.sk[..n],
        &mut s.sk1[..n],
    );
    for l in 0..n {
        let (sp_lo, sg_lo) = softplus::<FMA>(ulo[l] + c.shift);
        let (sp_hi, sg_hi) = softplus::<FMA>(uhi[l] + c.shift);
        let (lo, hi) = (cnt[l] > 0.0, cnt[l] < last);
        dk[l] = if lo { c.dmin + sp_lo } else { 1.0 };
        sk[l] = if lo { sg_lo } else { 0.0 };
        dk1[l] = if hi { c.dmin + sp_hi } else { 1.0 };
        sk1[l] = if hi { sg_hi } else { 0.0 };
    }
}

/// A size's gradient: `below` for bins before the element's bin (`j < cnt`), `at` for its own, 0 after it.
#[inline(always)]
fn below_at(j: f32, cnt: f32, below: f32, at: f32) -> f32 {
    if j < cnt {
        below
    } else if j == cnt {
        at
    } else {
        0.0
    }
}

/// `ln(s² g / den²)`, the log-slope at `ξ` (one logarithm instead of three).
#[inline(always)]
fn log_slope<const FMA: bool>(xi: f32, s: f32, dk: f32, dk1: f32) -> f32 {
    let om = 1.0 - xi;
    let t = xi * om;
    let den = madd::<FMA>(dk1 + dk - 2.0 * s, t, s);
    let g = madd::<FMA>(dk1 * xi, xi, madd::<FMA>(2.0 * s, t, dk * om * om));
    ln_f32::<FMA>((s * s * g) / (den * den))
}

/// Forward (or, with `inverse`, the inverse) of the maps of one row: `v[i]` goes through element `i`'s spline
/// (parameters from `h`, `v.len()` elements), in place; returns the sum of the log-slopes.
#[inline(always)]
fn row_maps<const FMA: bool>(sp: &RqSpline, v: &mut [f32], h: &[f32], inverse: bool) -> f32 {
    let c = Shape::of(sp);
    with_scratch(c.k, v.len(), |s| row_maps_in::<FMA>(&c, s, v, h, inverse))
}

#[inline(always)]
fn row_maps_in<const FMA: bool>(
    c: &Shape,
    s: &mut Scratch,
    v: &mut [f32],
    h: &[f32],
    inverse: bool,
) -> f32 {
    let n = v.len();
    locate::<FMA>(c, s, h, v, inverse);
    let (xk, w, yk, hh, dk, dk1) = (
        &s.xk[..n],
        &s.w[..n],
        &s.yk[..n],
        &s.h[..n],
        &s.dk[..n],
        &s.dk1[..n],
    );
    let ld = &mut s.t0[..n];
    let v = &mut v[..n];
    let b = c.b;
    if inverse {
        for l in 0..n {
            let (h, dk, dk1) = (hh[l], dk[l], dk1[l]);
            let s = h / w[l];
            let dy = v[l] - yk[l];
            let e = dk1 + dk - 2.0 * s;
            let a = madd::<FMA>(dy, e, h * (s - dk));
            let bb = madd::<FMA>(-dy, e, h * dk);
            let cc = -s * dy;
            let disc = madd::<FMA>(bb, bb, -4.0 * a * cc).max(0.0);
            let root = -bb - disc.sqrt();
            let xi = if root == 0.0 {
                0.0
            } else {
                (2.0 * cc / root).clamp(0.0, 1.0)
            };
            let inside = v[l] >= -b && v[l] <= b;
            let lsl = -log_slope::<FMA>(xi, s, dk, dk1);
            ld[l] = if inside { lsl } else { 0.0 };
            v[l] = if inside {
                madd::<FMA>(xi, w[l], xk[l])
            } else {
                v[l]
            };
        }
    } else {
        for l in 0..n {
            let (h, dk, dk1) = (hh[l], dk[l], dk1[l]);
            let s = h / w[l];
            let xi = ((v[l] - xk[l]) / w[l]).clamp(0.0, 1.0);
            let om = 1.0 - xi;
            let t = xi * om;
            let den = madd::<FMA>(dk1 + dk - 2.0 * s, t, s);
            let num = madd::<FMA>(s * xi, xi, dk * t);
            let inside = v[l] >= -b && v[l] <= b;
            let lsl = log_slope::<FMA>(xi, s, dk, dk1);
            ld[l] = if inside { lsl } else { 0.0 };
            v[l] = if inside {
                madd::<FMA>(h, num / den, yk[l])
            } else {
                v[l]
            };
        }
    }
    ld.iter().sum()
}

/// Backward of [`row_maps`] (forward direction) at the inputs `x`: `g` holds `dL/dz` and becomes `dL/dx`;
/// `gl` is `dL/d(log-det)` of the row; `dh` (same layout as `h`) receives `dL/dh`.
#[inline(always)]
fn row_backward<const FMA: bool>(
    sp: &RqSpline,
    x: &[f32],
    h: &[f32],
    g: &mut [f32],
    gl: f32,
    dh: &mut [f32],
) {
    let c = Shape::of(sp);
    with_scratch(c.k, x.len(), |s| {
        row_backward_in::<FMA>(&c, s, x, h, g, gl, dh)
    })
}

#[inline(always)]
fn row_backward_in<const FMA: bool>(
    c: &Shape,
    s: &mut Scratch,
    x: &[f32],
    h: &[f32],
    g: &mut [f32],
    gl: f32,
    dh: &mut [f32],
) {
    let (n, nb) = (x.len(), c.k);
    let tb = 2.0 * c.b;
    locate::<FMA>(c, s, h, x, false);
    // per element: the gradients of the bin's start and size (widths, heights) and of its end derivatives
    let mut grads = std::mem::take(&mut s.grads);
    let [a_w, b_w, a_h, b_h, g_dk, g_dk1] = &mut grads;
    {
        let (xk, w, hh, dk, dk1) = (&s.xk[..n], &s.w[..n], &s.h[..n], &s.dk[..n], &s.dk1[..n]);
        let (sk, sk1, x, g) = (&s.sk[..n], &s.sk1[..n], &x[..n], &mut g[..n]);
        let (a_w, b_w, a_h, b_h) = (&mut a_w[..n], &mut b_w[..n], &mut a_h[..n], &mut b_h[..n]);
        let (g_dk, g_dk1) = (&mut g_dk[..n], &mut g_dk1[..n]);
        for l in 0..n {
            let (w, h, dk, dk1) = (w[l], hh[l], dk[l], dk1[l]);
            let gy = g[l];
            let xi = ((x[l] - xk[l]) / w).clamp(0.0, 1.0);
            let s_ = h / w;
            let om = 1.0 - xi;
            let t = xi * om;
            let tp = 1.0 - 2.0 * xi;
            let e = dk1 + dk - 2.0 * s_;
            let num = madd::<FMA>(s_ * xi, xi, dk * t);
            let den = madd::<FMA>(e, t, s_);
            let inv_den = 1.0 / den;
            let r = num * inv_den;
            let gg = madd::<FMA>(dk1 * xi, xi, madd::<FMA>(2.0 * s_, t, dk * om * om));
            let inv_g = 1.0 / gg;
            let r_xi = (madd::<FMA>(2.0 * s_, xi, dk * tp) - r * e * tp) * inv_den;
            let r_s = (xi * xi - r * (1.0 - 2.0 * t)) * inv_den;
            let r_dk = (t - r * t) * inv_den;
            let r_dk1 = -r * t * inv_den;
            let l_xi =
                (2.0 * dk1 * xi + 2.0 * s_ * tp - 2.0 * dk * om) * inv_g - 2.0 * e * tp * inv_den;
            let l_s = 2.0 / s_ + 2.0 * t * inv_g - 2.0 * (1.0 - 2.0 * t) * inv_den;
            let l_dk = om * om * inv_g - 2.0 * t * inv_den;
            let l_dk1 = xi * xi * inv_g - 2.0 * t * inv_den;
            let gyh = gy * h;
            let g_xi = madd::<FMA>(gyh, r_xi, gl * l_xi);
            let g_s = madd::<FMA>(gyh, r_s, gl * l_s);
            let inside = x[l] >= -c.b && x[l] <= c.b;
            let keep = |v: f32| if inside { v } else { 0.0 };
            g_dk[l] = keep(madd::<FMA>(gyh, r_dk, gl * l_dk) * sk[l]);
            g_dk1[l] = keep(madd::<FMA>(gyh, r_dk1, gl * l_dk1) * sk1[l]);
            let inv_w = 1.0 / w;
            // x_k = -B + 2B Σ_{j<k} wid_j and w_k = 2B wid_k (the same for heights), wid = min + sc softmax
            let g_xk = -g_xi * inv_w;
            let g_w = -(g_xi * xi + g_s * s_) * inv_w;
            let g_h = madd::<FMA>(gy, r, g_s * inv_w);
            a_w[l] = keep(tb * c.sc_w * g_xk);
            b_w[l] = keep(tb * c.sc_w * g_w);
            a_h[l] = keep(tb * c.sc_h * gy);
            b_h[l] = keep(tb * c.sc_h * g_h);
            g[l] = if inside { g_xi * inv_w } else { gy };
        }
    }
    // through the softmaxes: d wid_j / d p_i = sm_j (δ_ij - sm_i)
    let cnt = &s.cnt[..n];
    let (dot_w, dot_h) = (&mut s.t0[..n], &mut s.t1[..n]);
    dot_w.iter_mut().for_each(|v| *v = 0.0);
    dot_h.iter_mut().for_each(|v| *v = 0.0);
    let (a_w, b_w, a_h, b_h) = (&a_w[..n], &b_w[..n], &a_h[..n], &b_h[..n]);
    for j in 0..nb {
        let jf = j as f32;
        let (sw, sh) = (&s.sw[j][..n], &s.sh[j][..n]);
        for l in 0..n {
            let gw = below_at(jf, cnt[l], a_w[l], b_w[l]);
            let gh = below_at(jf, cnt[l], a_h[l], b_h[l]);
            dot_w[l] = madd::<FMA>(sw[l], gw, dot_w[l]);
            dot_h[l] = madd::<FMA>(sh[l], gh, dot_h[l]);
        }
    }
    for j in 0..nb {
        let jf = j as f32;
        let (sw, sh) = (&s.sw[j][..n], &s.sh[j][..n]);
        let (dw, rest) = dh[j * n..].split_at_mut(n);
        let dhh = &mut rest[(nb - 1) * n..nb * n];
        for l in 0..n {
            let gw = below_at(jf, cnt[l], a_w[l], b_w[l]);
            let gh = below_at(jf, cnt[l], a_h[l], b_h[l]);
            dw[l] = sw[l] * (gw - dot_w[l]);
            dhh[l] = sh[l] * (gh - dot_h[l]);
        }
    }
    // interior derivative i (raw index i - 1) is the bin's start when cnt = i, its end when cnt = i - 1
    let (g_dk, g_dk1) = (&g_dk[..n], &g_dk1[..n]);
    for i in 1..nb {
        let f = i as f32;
        let dd = &mut dh[(2 * nb + i - 1) * n..(2 * nb + i) * n];
        for l in 0..n {
            let lo = if cnt[l] == f { g_dk[l] } else { 0.0 };
            let hi = if cnt[l] == f - 1.0 { g_dk1[l] } else { 0.0 };
            dd[l] = lo + hi;
        }
    }
    s.grads = grads;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_maps_avx2(sp: &RqSpline, v: &mut [f32], h: &[f32], inverse: bool) -> f32 {
    row_maps::<true>(sp, v, h, inverse)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_backward_avx2(
    sp: &RqSpline,
    x: &[f32],
    h: &[f32],
    g: &mut [f32],
    gl: f32,
    dh: &mut [f32],
) {
    row_backward::<true>(sp, x, h, g, gl, dh)
}

/// The maps of one row (see [`row_maps`]), on AVX2 and FMA where the CPU has them.
pub(crate) fn forward_row(sp: &RqSpline, v: &mut [f32], h: &[f32], inverse: bool) -> f32 {
    debug_assert_eq!(h.len(), v.len() * sp.params_per_element());
    #[cfg(target_arch = "x86_64")]
    if crate::engine::sgemm::available() {
        // SAFETY: the CPU has AVX2 and FMA
        return unsafe { row_maps_avx2(sp, v, h, inverse) };
    }
    row_maps::<false>(sp, v, h, inverse)
}

/// Backward of one row's maps (see [`row_backward`]).
pub(crate) fn backward_row(
    sp: &RqSpline,
    x: &[f32],
    h: &[f32],
    g: &mut [f32],
    gl: f32,
    dh: &mut [f32],
) {
    debug_assert_eq!(h.len(), x.len() * sp.params_per_element());
    #[cfg(target_arch = "x86_64")]
    if crate::engine::sgemm::available() {
        // SAFETY: the CPU has AVX2 and FMA
        return unsafe { row_backward_avx2(sp, x, h, g, gl, dh) };
    }
    row_backward::<false>(sp, x, h, g, gl, dh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rng;
    use crate::transforms::spline::Knots;
    use rand::Rng as _;

    /// Against the scalar path in f64, for every bin count and lane remainder, inputs in every bin, on the
    /// knots and in both tails, with and without fused multiply-adds.
    fn agree<const FMA: bool>() {
        let mut r = rng(7);
        for bins in [1usize, 2, 3, 8, 11] {
            let sp = RqSpline {
                bins,
                ..RqSpline::default()
            };
            let np = sp.params_per_element();
            for n in [1usize, 7, 8, 13, 16] {
                let h: Vec<f32> = (0..np * n).map(|_| r.gen_range(-2.0..2.0)).collect();
                let x: Vec<f32> = (0..n).map(|_| r.gen_range(-3.6f32..3.6)).collect();
                let params = |k: usize| (0..np).map(|j| h[j * n + k] as f64).collect::<Vec<_>>();
                let mut want_ld = 0.0;
                let mut want = vec![0.0; n];
                let mut want_inv = vec![0.0; n];
                let gz: Vec<f32> = (0..n).map(|_| r.gen_range(-1.0..1.0)).collect();
                let gl = 0.7f32;
                let mut want_dh = vec![0.0f64; np * n];
                let mut want_dx = vec![0.0f64; n];
                for k in 0..n {
                    let mut kn = Knots::default();
                    sp.knots(&params(k), &mut kn);
                    let (y, l) = sp.forward(x[k] as f64, &kn);
                    want[k] = y;
                    want_ld += l;
                    want_inv[k] = sp.inverse(x[k] as f64, &kn).0;
                    let mut dp = vec![0.0; np];
                    want_dx[k] = sp.backward(x[k] as f64, &kn, gz[k] as f64, gl as f64, &mut dp);
                    for j in 0..np {
                        want_dh[j * n + k] = dp[j];
                    }
                }
                let mut v = x.clone();
                let ld = row_maps::<FMA>(&sp, &mut v, &h, false);
                let close = |a: f64, b: f64, what: &str| {
                    assert!(
                        (a - b).abs() <= 2e-4 * (1.0 + b.abs()),
                        "bins {bins}, n {n}, {what}: {a} vs {b} (fma {FMA})"
                    );
                };
                for k in 0..n {
                    close(v[k] as f64, want[k], "forward");
                }
                close(ld as f64, want_ld, "log-det");
                let mut v = x.clone();
                row_maps::<FMA>(&sp, &mut v, &h, true);
                for k in 0..n {
                    close(v[k] as f64, want_inv[k], "inverse");
                }
                let mut g = gz.clone();
                let mut dh = vec![f32::NAN; np * n];
                row_backward::<FMA>(&sp, &x, &h, &mut g, gl, &mut dh);
                for k in 0..n {
                    close(g[k] as f64, want_dx[k], "dx");
                }
                for i in 0..np * n {
                    close(dh[i] as f64, want_dh[i], "dh");
                }
            }
        }
    }

    #[test]
    fn lanes_agree_with_the_scalar_spline() {
        agree::<false>();
        #[cfg(target_arch = "x86_64")]
        if crate::engine::sgemm::available() {
            agree::<true>();
        }
    }
}
