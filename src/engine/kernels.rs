//! The narrow kernel interface: every transform and network does its numeric work through these functions
//! (GEMM, element-wise maps, row/column reductions), so another implementation (e.g. a GPU one) can replace
//! this file without touching the transforms.
//!
//! f32 matrix products of flow-sized shapes run on our own AVX2/FMA kernel ([`sgemm`]: operands packed once
//! and shared by the threads, results independent of the thread count; masked layers skip their zero blocks
//! per tile through [`gemm_view_ranged`]); f64, thin products and CPUs without AVX2 go through the `gemm`
//! crate, one single-threaded product per thread on its own slab of the output (providers compared in
//! `bench/gemm`). Element-wise work over large buffers is split over the rayon pool in fixed-size chunks, so
//! its results do not depend on the number of threads (a `gemm`-crate product's may, in the last bits, through
//! its blocking of the slabs).

use super::{sgemm, Float, Mat};
use rayon::prelude::*;
pub use sgemm::Depth;

/// Below this many multiply-adds a product runs on one thread (spawning costs more than it saves).
const PAR_GEMM_FLOPS: usize = 96 * 96 * 96;
/// Element-wise chunk size for the rayon pool.
const CHUNK: usize = 1 << 14;

/// `c = (accumulate ? c : 0) + op(a) * op(b)` with row-major storage.
///
/// `a` is stored `a_rows x a_cols` and used transposed when `ta`; likewise `b`. `c` must be `m x n`.
#[allow(clippy::too_many_arguments)]
pub fn gemm<F: Float>(
    a: &[F],
    a_rows: usize,
    a_cols: usize,
    ta: bool,
    b: &[F],
    b_rows: usize,
    b_cols: usize,
    tb: bool,
    c: &mut [F],
    accumulate: bool,
) {
    let (m, k) = if ta {
        (a_cols, a_rows)
    } else {
        (a_rows, a_cols)
    };
    let (k2, n) = if tb {
        (b_cols, b_rows)
    } else {
        (b_rows, b_cols)
    };
    assert_eq!(k, k2, "gemm: inner dimensions differ");
    assert_eq!(c.len(), m * n, "gemm: output size");
    assert_eq!(a.len(), a_rows * a_cols);
    assert_eq!(b.len(), b_rows * b_cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.iter_mut().for_each(|v| *v = F::zero());
        }
        return;
    }
    let av = if ta {
        View::block(a_cols, 0, a_rows, 0, a_cols).t()
    } else {
        View::block(a_cols, 0, a_rows, 0, a_cols)
    };
    let bv = if tb {
        View::block(b_cols, 0, b_rows, 0, b_cols).t()
    } else {
        View::block(b_cols, 0, b_rows, 0, b_cols)
    };
    gemm_view(a, av, b, bv, c, View::block(n, 0, m, 0, n), accumulate);
}

/// Pointers to the operands of one product, shareable across the pool (each task writes its own part of C).
#[derive(Clone, Copy)]
struct Operands<F> {
    a: *const F,
    b: *const F,
    c: *mut F,
}
// SAFETY: the tasks of one product read A and B and write disjoint parts of C (see `gemm_view`).
unsafe impl<F> Send for Operands<F> {}
// SAFETY: as for Send, above
unsafe impl<F> Sync for Operands<F> {}

impl<F> Operands<F> {
    fn new(a: &[F], b: &[F], c: &mut [F]) -> Self {
        Operands {
            a: a.as_ptr(),
            b: b.as_ptr(),
            c: c.as_mut_ptr(),
        }
    }
}

/// One single-threaded product on raw views.
///
/// # Safety
/// `a`, `b`, `c` must be valid for every index the views touch, and `c`'s view must not alias `a`'s or `b`'s.
unsafe fn gemm_serial<F: Float>(o: Operands<F>, av: View, bv: View, cv: View, accumulate: bool) {
    gemm::gemm(
        cv.rows,
        cv.cols,
        av.cols,
        o.c.add(cv.off),
        cv.cs as isize,
        cv.rs as isize,
        accumulate,
        o.a.add(av.off),
        av.cs as isize,
        av.rs as isize,
        o.b.add(bv.off),
        bv.cs as isize,
        bv.rs as isize,
        F::one(),
        F::one(),
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Whether an `m x k` by `k x n` product of `F` goes to our own f32 kernel ([`sgemm`]).
fn own_kernel<F: Float>(m: usize, k: usize, n: usize) -> bool {
    super::is_f32::<F>() && sgemm::suits(m, k, n)
}

/// [`sgemm::sgemm`] on views, `threads` threads, with its epilogue, each tile over its `depth` range when given.
///
/// # Safety
/// As [`gemm_serial`]; `F` must be `f32` and the CPU must run the kernel ([`own_kernel`]); a bias must hold
/// `cv.cols` values.
unsafe fn sgemm_on<F: Float>(
    o: Operands<F>,
    (av, bv, cv): Product,
    ep: Epilogue<'_, F>,
    threads: usize,
    depth: Option<&sgemm::Depth<'_>>,
) {
    let op = |p: *const F, v: View| sgemm::Operand {
        ptr: p.add(v.off) as *const f32,
        rs: v.rs as isize,
        cs: v.cs as isize,
    };
    sgemm::sgemm(
        cv.rows,
        cv.cols,
        av.cols,
        op(o.a, av),
        op(o.b, bv),
        o.c.add(cv.off) as *mut f32,
        cv.rs as isize,
        cv.cs as isize,
        ep.out(),
        threads,
        depth,
    )
}

/// What a product does as it writes C: `C = act((accumulate ? C : 0) + bias + A B)`, with `bias` one value per
/// column of C and `act` = `max(0, .)` when `relu`. On the f32 kernel the bias and the ReLU ride on the stores
/// of the product's tiles (a layer's output written once, no fill before it or pass after it); elsewhere they
/// are passes of their own.
#[derive(Clone, Copy)]
pub struct Epilogue<'a, F> {
    pub accumulate: bool,
    pub bias: Option<&'a [F]>,
    pub relu: bool,
}

impl<F: Float> Epilogue<'_, F> {
    /// `C (+)= A B`, nothing more.
    pub fn plain(accumulate: bool) -> Self {
        Epilogue {
            accumulate,
            bias: None,
            relu: false,
        }
    }

    /// The kernel's form (`F` must be `f32` where a bias is given).
    fn out(&self) -> sgemm::Out {
        sgemm::Out {
            accumulate: self.accumulate,
            bias: self
                .bias
                .map_or(std::ptr::null(), |b| b.as_ptr() as *const f32),
            relu: self.relu,
        }
    }

    /// `c = act(c' + bias)` around `product`, which computes `c' (+)= A B` in place (the passes for products off
    /// the kernel): the bias goes in first, so `product` then accumulates.
    fn around(&self, c: &mut [F], cv: View, product: impl FnOnce(&mut [F], bool)) {
        if let Some(b) = self.bias {
            for i in 0..cv.rows {
                for (j, &bj) in b.iter().enumerate() {
                    let v = &mut c[cv.off + i * cv.rs + j * cv.cs];
                    *v = if self.accumulate { *v + bj } else { bj };
                }
            }
        }
        product(c, self.accumulate || self.bias.is_some());
        if self.relu {
            for i in 0..cv.rows {
                for j in 0..cv.cols {
                    let v = &mut c[cv.off + i * cv.rs + j * cv.cs];
                    *v = v.max(F::zero());
                }
            }
        }
    }
}

/// A strided matrix view for [`gemm_view`]: element `(i, j)` is `data[off + i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub off: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    /// Rows `r0..r0+rows`, columns `c0..c0+cols` of a row-major matrix with `ld` columns.
    pub fn block(ld: usize, r0: usize, rows: usize, c0: usize, cols: usize) -> Self {
        View {
            off: r0 * ld + c0,
            rows,
            cols,
            rs: ld,
            cs: 1,
        }
    }
    /// The same elements seen transposed.
    pub fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// Rows `lo..hi` of this view.
    pub fn rows_range(self, lo: usize, hi: usize) -> Self {
        View {
            off: self.off + lo * self.rs,
            rows: hi - lo,
            ..self
        }
    }
    /// Columns `lo..hi` of this view.
    pub fn cols_range(self, lo: usize, hi: usize) -> Self {
        View {
            off: self.off + lo * self.cs,
            cols: hi - lo,
            ..self
        }
    }
    /// One past the largest index it touches (0 for an empty view).
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// One product of a [`gemm_tasks`] call: `C[cv] (+)= A[av] B[bv]`.
pub type Product = (View, View, View);

/// Check a product's shapes and bounds; `false` when it has nothing to do.
fn check(a: &[impl Sized], b: &[impl Sized], c: &[impl Sized], (av, bv, cv): &Product) -> bool {
    assert_eq!(bv.rows, av.cols, "gemm: inner dimensions differ");
    assert_eq!((cv.rows, cv.cols), (av.rows, bv.cols), "gemm: output shape");
    assert!(av.end() <= a.len() && bv.end() <= b.len() && cv.end() <= c.len());
    // injective output: distinct positive strides (one of them is irrelevant for a single row or column)
    assert!(
        cv.rows == 1 || cv.cols == 1 || (cv.rs > 0 && cv.cs > 0 && cv.rs != cv.cs),
        "gemm: output strides"
    );
    cv.rows > 0 && cv.cols > 0
}

/// Several products on the pool: `tasks[t]` is a list of products run in order on one thread, the tasks in
/// parallel. Products of different tasks must write
/// disjoint elements of `c` (within a task they may accumulate into the same ones). Every product is
/// single-threaded: no synchronisation inside a product, each core packs only its own operands.
pub fn gemm_tasks<F: Float>(
    a: &[F],
    b: &[F],
    c: &mut [F],
    tasks: &[Vec<Product>],
    accumulate: bool,
) {
    for p in tasks.iter().flatten() {
        check(a, b, c, p);
    }
    let o = Operands::new(a, b, c);
    let run = |task: &Vec<Product>| {
        for &(av, bv, cv) in task {
            if cv.rows == 0 || cv.cols == 0 {
                continue;
            }
            if av.cols == 0 {
                if !accumulate {
                    for i in 0..cv.rows {
                        for j in 0..cv.cols {
                            // SAFETY: bounded by `check`; this task owns these elements of C
                            unsafe { *o.c.add(cv.off + i * cv.rs + j * cv.cs) = F::zero() };
                        }
                    }
                }
                continue;
            }
            // SAFETY: `check` bounds every index the kernel touches; `c` is borrowed mutably, so it aliases
            // neither `a` nor `b`; the caller gives each task its own elements of C.
            unsafe { gemm_serial(o, av, bv, cv, accumulate) };
        }
    };
    if tasks.len() == 1 {
        run(&tasks[0]);
    } else {
        tasks.par_iter().for_each(run);
    }
}

/// How many threads a product (or a set of products) of `flops` multiply-adds should use.
pub fn threads_for(flops: usize) -> usize {
    if flops < PAR_GEMM_FLOPS {
        1
    } else {
        crate::engine::pool::threads()
    }
}

/// Cut one product into per-thread slabs of C (rows when it is tall, columns when wide); one task when it is
/// small or there is one thread.
pub fn slabs(p: Product) -> Vec<Vec<Product>> {
    let (av, bv, cv) = p;
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    let threads = threads_for(m * n * k);
    if threads == 1 {
        return vec![vec![p]];
    }
    let (by_rows, len) = if m >= n { (true, m) } else { (false, n) };
    let parts = threads.min(len.div_ceil(16));
    (0..parts)
        .map(|q| {
            let (lo, hi) = (q * len / parts, (q + 1) * len / parts);
            if by_rows {
                vec![(av.rows_range(lo, hi), bv, cv.rows_range(lo, hi))]
            } else {
                vec![(av, bv.cols_range(lo, hi), cv.cols_range(lo, hi))]
            }
        })
        .collect()
}

/// `C = (accumulate ? C : 0) + A B` on strided views into `a`, `b`, `c` (sub-blocks of larger matrices),
/// split over the threads by slabs of C.
pub fn gemm_view<F: Float>(
    a: &[F],
    av: View,
    b: &[F],
    bv: View,
    c: &mut [F],
    cv: View,
    accumulate: bool,
) {
    gemm_view_ep(a, av, b, bv, c, cv, Epilogue::plain(accumulate), None)
}

/// Largest dimension a product may have for [`thin`].
const THIN: usize = 4;

/// Products with a dimension of at most [`THIN`] (a flow on 2-D data: one-feature inputs, two-parameter outputs
/// and their gradients) as plain loops along the long dimension: a blocked kernel's packing and tile padding
/// cost more than such a product. `false` (nothing done) for other shapes, or strides the loops can't stream.
fn thin<F: Float>(
    a: &[F],
    av: View,
    b: &[F],
    bv: View,
    c: &mut [F],
    cv: View,
    accumulate: bool,
) -> bool {
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    if cv.cs != 1 || m.min(k).min(n) > THIN {
        return false;
    }
    let by_rows = (k <= THIN || m <= THIN) && bv.cs == 1;
    let by_dots = n <= THIN && av.cs == 1 && bv.rs == 1;
    if !(by_rows || by_dots) {
        return false;
    }
    // rows of C in groups over the pool when there is enough work (each row is computed the same way)
    const ROWS: usize = 64;
    let rows = |lo: usize, hi: usize, c: &mut [F]| {
        #[cfg(target_arch = "x86_64")]
        if sgemm::available() {
            // SAFETY: the CPU has AVX2 and FMA
            return unsafe { thin_rows_avx2(a, av, b, bv, c, cv, (lo, hi), by_rows, accumulate) };
        }
        thin_rows(a, av, b, bv, c, cv, (lo, hi), by_rows, accumulate)
    };
    let c = &mut c[cv.off..];
    if m >= 2 * ROWS && m * n * k >= 1 << 15 && crate::engine::pool::threads() > 1 {
        let cv = View { off: 0, ..cv };
        c.par_chunks_mut(ROWS * cv.rs)
            .enumerate()
            .for_each(|(q, cq)| rows(q * ROWS, ((q + 1) * ROWS).min(m), cq));
    } else {
        rows(0, m, c);
    }
    true
}

/// [`thin_rows`] compiled for AVX2 (the crate's baseline is SSE2).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn thin_rows_avx2<F: Float>(
    a: &[F],
    av: View,
    b: &[F],
    bv: View,
    c: &mut [F],
    cv: View,
    range: (usize, usize),
    by_rows: bool,
    accumulate: bool,
) {
    thin_rows(a, av, b, bv, c, cv, range, by_rows, accumulate)
}

/// Rows `lo..hi` of a [`thin`] product into `c` (which starts at row `lo` of C): each row of C as a sum of
/// rows of B (`by_rows`), or as dot products of a row of A with the columns of B.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn thin_rows<F: Float>(
    a: &[F],
    av: View,
    b: &[F],
    bv: View,
    c: &mut [F],
    cv: View,
    (lo, hi): (usize, usize),
    by_rows: bool,
    accumulate: bool,
) {
    let (k, n) = (av.cols, bv.cols);
    for i in lo..hi {
        let crow = &mut c[(i - lo) * cv.rs..][..n];
        if by_rows {
            if !accumulate {
                crow.iter_mut().for_each(|v| *v = F::zero());
            }
            for p in 0..k {
                let aip = a[av.off + i * av.rs + p * av.cs];
                let brow = &b[bv.off + p * bv.rs..][..n];
                crow.iter_mut().zip(brow).for_each(|(c, &b)| *c += aip * b);
            }
        } else {
            let arow = &a[av.off + i * av.rs..][..k];
            for (j, cij) in crow.iter_mut().enumerate() {
                let d = dot(arow, &b[bv.off + j * bv.cs..][..k]);
                *cij = if accumulate { *cij + d } else { d };
            }
        }
    }
}

/// `x . y` in eight interleaved partial sums (so the loop vectorises).
#[inline(always)]
fn dot<F: Float>(x: &[F], y: &[F]) -> F {
    let mut acc = [F::zero(); 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: F = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(&u, &v)| u * v)
        .sum();
    for (u, v) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += u[l] * v[l];
        }
    }
    acc.iter().copied().sum::<F>() + tail
}

/// The tile of C that [`gemm_view_ranged`] gives one depth range: `(rows, columns)`.
pub const TILE: (usize, usize) = (sgemm::MR, sgemm::NR);

/// Whether [`gemm_view_ranged`] runs for this element type and shape (f32, on a CPU with AVX2 and FMA).
pub fn ranged_available<F: Float>(m: usize, k: usize, n: usize) -> bool {
    own_kernel::<F>(m, k, n)
}

/// `C = (accumulate ? C : 0) + A B` on views, where tile `(i, j)` of C (rows `TILE.0 * i..`, columns
/// `TILE.1 * j..`) sums only over the depth range `depth(i, j) = [lo, hi)`; an empty range leaves the tile as
/// it was (or zero). For products whose operands have structural zeros (MADE's masked weights) it computes
/// the full product without the zero blocks. Needs [`ranged_available`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_view_ranged<F: Float>(
    a: &[F],
    av: View,
    b: &[F],
    bv: View,
    c: &mut [F],
    cv: View,
    accumulate: bool,
    depth: &sgemm::Depth<'_>,
) {
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    assert!(
        ranged_available::<F>(m, k, n),
        "gemm_view_ranged: not available"
    );
    gemm_view_ep(
        a,
        av,
        b,
        bv,
        c,
        cv,
        Epilogue::plain(accumulate),
        Some(depth),
    );
}

/// [`gemm_view`] with an [`Epilogue`] (a bias of `cv.cols` values, a ReLU); with `depth`, tiles sum over their
/// ranges on the kernel ([`gemm_view_ranged`]), which needs operands whose other entries are zero: products
/// off the kernel run over the whole depth, which gives the same.
#[allow(clippy::too_many_arguments)]
pub fn gemm_view_ep<F: Float>(
    a: &[F],
    av: View,
    b: &[F],
    bv: View,
    c: &mut [F],
    cv: View,
    ep: Epilogue<'_, F>,
    depth: Option<&sgemm::Depth<'_>>,
) {
    if let Some(bias) = ep.bias {
        assert_eq!(bias.len(), cv.cols, "gemm: bias length");
    }
    if !check(a, b, c, &(av, bv, cv)) {
        return;
    }
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    if own_kernel::<F>(m, k, n) {
        let o = Operands::new(a, b, c);
        // SAFETY: F is f32 and the CPU runs the kernel, `check` bounds every index, the bias has `n` values,
        // `c` is borrowed mutably so it aliases neither `a` nor `b`
        unsafe { sgemm_on(o, (av, bv, cv), ep, threads_for(m * k * n), depth) };
    } else if ep.bias.is_some() || ep.relu {
        ep.around(c, cv, |c, acc| gemm_view(a, av, b, bv, c, cv, acc));
    } else if !thin(a, av, b, bv, c, cv, ep.accumulate) {
        gemm_tasks(a, b, c, &slabs((av, bv, cv)), ep.accumulate);
    }
}

/// A new `rows x cols` matrix (row-major) holding `act(bias + A B)` ([`gemm_view_ep`], not accumulating): on the
/// f32 kernel its memory is written once, by the product (nothing clears it first).
pub fn gemm_view_new<F: Float>(
    a: &[F],
    av: View,
    b: &[F],
    bv: View,
    bias: Option<&[F]>,
    relu: bool,
    depth: Option<&sgemm::Depth<'_>>,
) -> Vec<F> {
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    let ep = Epilogue {
        accumulate: false,
        bias,
        relu,
    };
    let cv = View::block(n, 0, m, 0, n);
    if !own_kernel::<F>(m, k, n) {
        let mut c = vec![F::zero(); m * n];
        gemm_view_ep(a, av, b, bv, &mut c, cv, ep, depth);
        return c;
    }
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "gemm: bias length");
    }
    // SAFETY: F is f32 and the CPU runs the kernel (`own_kernel`), `check` bounds every index of the operands
    // and of the new matrix, and a product that does not accumulate writes every element of C
    unsafe {
        written(m * n, |c| {
            check(a, b, c, &(av, bv, cv));
            let o = Operands {
                a: a.as_ptr(),
                b: b.as_ptr(),
                c: c.as_mut_ptr() as *mut F,
            };
            sgemm_on(o, (av, bv, cv), ep, threads_for(m * k * n), depth);
        })
    }
}

/// A new vector of `len` values, all written by `write` into its fresh (uninitialised) memory.
///
/// # Safety
/// `write` must write every one of the `len` elements (and read none before writing it).
unsafe fn written<F: Float>(
    len: usize,
    write: impl FnOnce(&mut [std::mem::MaybeUninit<F>]),
) -> Vec<F> {
    let mut v = Vec::with_capacity(len);
    write(&mut v.spare_capacity_mut()[..len]);
    v.set_len(len);
    v
}

/// A weight matrix `W` (`out x inp`, row-major) prepared once for many products `X W^T` with the same `W`
/// (inference with fixed weights): `W^T` packed in the f32 kernel's layout, so that each product packs only `X`
/// and runs as one parallel region ([`sgemm::sgemm_packed`]; the same bits as [`gemm`]).
pub struct PreparedWeight(sgemm::PackedB);

/// Whether `rows x inp` by `(out x inp)^T` products of `F` run on the kernel that [`PreparedWeight`] serves
/// (f32, a CPU with AVX2 and FMA, a shape it suits).
pub fn preparable<F: Float>(rows: usize, inp: usize, out: usize) -> bool {
    own_kernel::<F>(rows, inp, out)
}

/// [`PreparedWeight`] of `w` (`out x inp`), or `None` where [`preparable`] says no for `rows`-row inputs.
pub fn prepare_weight<F: Float>(
    w: &[F],
    out: usize,
    inp: usize,
    rows: usize,
) -> Option<PreparedWeight> {
    assert_eq!(w.len(), out * inp, "prepare_weight: weight size");
    if !preparable::<F>(rows, inp, out) {
        return None;
    }
    let b = sgemm::Operand {
        ptr: w.as_ptr() as *const f32,
        rs: 1,
        cs: inp as isize,
    };
    let threads = threads_for(rows * inp * out);
    // SAFETY: F is f32 and the CPU runs the kernel (`preparable`); `b` addresses the `out x inp` elements of `w`
    // as its transpose
    Some(PreparedWeight(unsafe {
        sgemm::PackedB::new(inp, out, b, threads)
    }))
}

/// A trained weight `W` (`out x inp`) packed for both products its layer runs on the kernel, `x W^T` (forward)
/// and `dy W` (input gradient), and kept in step with the weight by the optimiser, which repacks rows of `W` as
/// it updates them ([`PacksWriter`]) while they are in cache. Packing the weight inside each product read it
/// from memory in a cache-hostile order (a line from every row per depth step), slower than the same product on a
/// weight packed beforehand (docs/results/speed.md, tenth session). Costs two more copies of the weight; the products
/// give the same bits either way.
pub struct WeightPacks {
    fwd: PreparedWeight,
    bwd: PreparedWeight,
}

/// Weights of at most this many floats (1 MB) are packed by each product: they stay in cache, and the packs
/// would cost the optimiser more than they save (MAF's 512 x 512 layers: docs/results/speed.md, tenth session).
const PACKS_MIN: usize = 1 << 18;

impl WeightPacks {
    /// Whether a layer with an `out x inp` weight of `F`, run on `rows`-row batches, gains from [`WeightPacks`]:
    /// both products on the kernel, and a weight too big for the caches.
    pub fn suit<F: Float>(rows: usize, out: usize, inp: usize) -> bool {
        out * inp > PACKS_MIN && preparable::<F>(rows, inp, out) && preparable::<F>(rows, out, inp)
    }

    /// Room for the packed forms of an `out x inp` weight, all to be written ([`WeightPacks::writer`]).
    /// (On huge pages where the program allows: they live as long as the weight and are streamed every step.)
    pub fn zeroed(out: usize, inp: usize) -> Self {
        crate::engine::lasting(|| WeightPacks {
            fwd: PreparedWeight(sgemm::PackedB::zeroed(inp, out)),
            bwd: PreparedWeight(sgemm::PackedB::zeroed(out, inp)),
        })
    }

    /// `(out, inp)`: the weight's shape.
    pub fn dims(&self) -> (usize, usize) {
        let (inp, out) = self.fwd.0.dims();
        (out, inp)
    }

    /// `W` packed for `x W^T` ([`gemm_prepared`]).
    pub fn forward(&self) -> &PreparedWeight {
        &self.fwd
    }

    /// `W^T` packed for `dy W = dy (W^T)^T` ([`gemm_prepared`] with `W^T`, `inp x out`, as its weight).
    pub fn input_grad(&self) -> &PreparedWeight {
        &self.bwd
    }

    /// A handle for repacking rows of the weight ([`PacksWriter::rows`]), valid while `self` is neither moved
    /// nor dropped, and nothing reads it meanwhile.
    pub fn writer(&mut self) -> PacksWriter {
        let (out, inp) = self.dims();
        PacksWriter {
            fwd: self.fwd.0.writer(),
            bwd: self.bwd.0.writer(),
            out,
            inp,
        }
    }
}

/// Repacks rows of a weight into its [`WeightPacks`], from several threads at once (disjoint rows).
#[derive(Clone, Copy)]
pub struct PacksWriter {
    fwd: sgemm::PackWriter,
    bwd: sgemm::PackWriter,
    out: usize,
    inp: usize,
}

impl PacksWriter {
    /// Rows are repacked in groups of this many (a part starts at a multiple of it).
    pub const ROWS: usize = sgemm::PACK_PART;

    /// Values per row of the weight (`inp`).
    pub fn row_len(&self) -> usize {
        self.inp
    }

    /// Repack rows `r0..r1` of the weight from `rows`, which holds exactly those rows (`(r1 - r0) x inp`
    /// values); `r0` a multiple of [`PacksWriter::ROWS`], `r1` too or `out`.
    ///
    /// # Safety
    /// No other thread may repack the same rows or read the packs meanwhile.
    pub unsafe fn rows<F: Float>(&self, rows: &[F], r0: usize, r1: usize) {
        let (out, inp) = (self.out, self.inp);
        assert!(
            std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>()
                && r0.is_multiple_of(Self::ROWS)
                && (r1.is_multiple_of(Self::ROWS) || r1 == out)
                && r0 <= r1
                && r1 <= out
                && rows.len() == (r1 - r0) * inp,
            "PacksWriter::rows: parts"
        );
        // the sources address W from its row 0 (only rows r0..r1 are read): `W^T` for the forward (columns
        // r0..r1), `W` for the input gradient (depth steps r0..r1)
        let w = (rows.as_ptr() as *const f32).wrapping_sub(r0 * inp);
        let wt = sgemm::Operand {
            ptr: w,
            rs: 1,
            cs: inp as isize,
        };
        self.fwd.lanes(wt, r0, r1);
        let w = sgemm::Operand {
            ptr: w,
            rs: inp as isize,
            cs: 1,
        };
        self.bwd.steps(w, r0, r1);
    }
}

/// `y = act((accumulate ? y : 0) + bias + x W^T)` ([`Epilogue`]) for a prepared `W` (`out x inp`): `x` is
/// `rows x inp` (row stride `ldx`), `y` `rows x out` (row stride `ldy`); with `depth`, each tile of `y` sums only
/// over its range ([`gemm_view_ranged`]). Needs [`preparable`] for these rows.
#[allow(clippy::too_many_arguments)]
pub fn gemm_prepared<F: Float>(
    x: &[F],
    rows: usize,
    ldx: usize,
    w: &PreparedWeight,
    y: &mut [F],
    ldy: usize,
    ep: Epilogue<'_, F>,
    depth: Option<&sgemm::Depth<'_>>,
) {
    let out = w.0.dims().1;
    if rows > 0 {
        assert!(
            y.len() >= (rows - 1) * ldy + out,
            "gemm_prepared: operand sizes"
        );
    }
    // SAFETY: `y` is borrowed mutably, so it aliases neither `x` nor the packed weights, and it holds the rows
    // checked above
    unsafe { prepared_into(x, rows, ldx, w, y.as_mut_ptr(), ldy, ep, depth) }
}

/// A new `rows x out` matrix holding `act(bias + x W^T)` for a prepared `W` ([`gemm_prepared`], not
/// accumulating): its memory is written once, by the product.
pub fn gemm_prepared_new<F: Float>(
    x: &[F],
    rows: usize,
    ldx: usize,
    w: &PreparedWeight,
    bias: Option<&[F]>,
    relu: bool,
    depth: Option<&sgemm::Depth<'_>>,
) -> Vec<F> {
    let out = w.0.dims().1;
    let ep = Epilogue {
        accumulate: false,
        bias,
        relu,
    };
    // SAFETY: the new matrix holds `rows` rows of `out` values and aliases nothing; a product that does not
    // accumulate writes every one of them
    unsafe {
        written(rows * out, |y| {
            prepared_into(x, rows, ldx, w, y.as_mut_ptr() as *mut F, out, ep, depth)
        })
    }
}

/// [`gemm_prepared`] into raw memory.
///
/// # Safety
/// `y` must be valid for writes (and, when accumulating, reads) of `rows` rows of `out` values, `ldy` apart,
/// and alias neither `x` nor the packed weights.
#[allow(clippy::too_many_arguments)]
unsafe fn prepared_into<F: Float>(
    x: &[F],
    rows: usize,
    ldx: usize,
    w: &PreparedWeight,
    y: *mut F,
    ldy: usize,
    ep: Epilogue<'_, F>,
    depth: Option<&sgemm::Depth<'_>>,
) {
    let (inp, out) = w.0.dims();
    assert!(
        preparable::<F>(rows, inp, out),
        "gemm_prepared: not available for these rows"
    );
    assert!(ldx >= inp && ldy >= out, "gemm_prepared: row strides");
    if let Some(bias) = ep.bias {
        assert_eq!(bias.len(), out, "gemm_prepared: bias length");
    }
    if rows == 0 {
        return;
    }
    assert!(
        x.len() >= (rows - 1) * ldx + inp,
        "gemm_prepared: operand sizes"
    );
    let a = sgemm::Operand {
        ptr: x.as_ptr() as *const f32,
        rs: ldx as isize,
        cs: 1,
    };
    let threads = threads_for(rows * inp * out);
    // F is f32 and the CPU runs the kernel (`preparable`); `x`'s size was checked above, `y`'s is the caller's
    sgemm::sgemm_packed(
        rows,
        a,
        &w.0,
        y as *mut f32,
        ldy as isize,
        1,
        ep.out(),
        threads,
        depth,
    )
}

/// A `rows x b.len()` matrix whose every row is `b` (a linear layer's output before its product accumulates onto
/// it: no zero-filling pass). Rows are copied in doubling blocks (a few large copies, not one small one per row);
/// large matrices are written in blocks of rows over the pool.
pub fn bias_rows<F: Float>(rows: usize, b: &[F]) -> Mat<F> {
    let len = rows * b.len();
    let mut data = Vec::with_capacity(len);
    if len >= PAR_FILL && crate::engine::pool::threads() > 1 {
        // large: blocks of whole rows over the pool, each written once
        let block = CHUNK.div_ceil(b.len()) * b.len();
        data.spare_capacity_mut()[..len]
            .par_chunks_mut(block)
            .for_each(|c| {
                for row in c.chunks_mut(b.len()) {
                    for (v, &x) in row.iter_mut().zip(b) {
                        v.write(x);
                    }
                }
            });
        // SAFETY: the loop above wrote all `len` elements
        unsafe { data.set_len(len) };
    } else if len > 0 {
        data.extend_from_slice(b);
        while data.len() < len {
            data.extend_from_within(..data.len().min(len - data.len()));
        }
    }
    Mat::from_vec(rows, b.len(), data)
}

/// Output buffers at least this large are filled over the pool ([`bias_rows`], [`fill_rows`], [`zeros`]): a
/// serial fill of a 256 x 512 activation keeps the other threads waiting.
const PAR_FILL: usize = 1 << 16;

/// A `rows x cols` matrix of zeros, large ones zeroed over the pool.
pub fn zeros<F: Float>(rows: usize, cols: usize) -> Mat<F> {
    let len = rows * cols;
    if len < PAR_FILL || crate::engine::pool::threads() == 1 {
        return Mat::zeros(rows, cols);
    }
    let mut data = Vec::with_capacity(len);
    data.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .for_each(|c| {
            for v in c {
                v.write(F::zero());
            }
        });
    // SAFETY: the loop above wrote all `len` elements
    unsafe { data.set_len(len) };
    Mat::from_vec(rows, cols, data)
}

pub fn fill_rows<F: Float>(y: &mut Mat<F>, b: &[F]) {
    assert_eq!(y.cols, b.len());
    let len = y.data.len();
    if len == 0 {
        return;
    }
    if len >= PAR_FILL && crate::engine::pool::threads() > 1 {
        let block = CHUNK.div_ceil(b.len()) * b.len();
        y.data.par_chunks_mut(block).for_each(|c| {
            for row in c.chunks_mut(b.len()) {
                row.copy_from_slice(b);
            }
        });
        return;
    }
    y.data[..b.len()].copy_from_slice(b);
    let mut done = b.len();
    while done < len {
        let n = done.min(len - done);
        y.data.copy_within(..n, done);
        done += n;
    }
}

/// `y = x W^T + b` for a linear layer with `W` stored `(out, in)`; `y` is overwritten.
pub fn linear<F: Float>(x: &Mat<F>, w: &[F], b: &[F], out: usize, y: &mut Mat<F>) {
    assert_eq!(y.rows, x.rows);
    assert_eq!(y.cols, out);
    fill_rows(y, b);
    gemm(
        &x.data,
        x.rows,
        x.cols,
        false,
        w,
        out,
        x.cols,
        true,
        &mut y.data,
        true,
    );
}

/// In-place element-wise map, parallel over fixed chunks for large buffers.
pub fn map_inplace<F: Float>(v: &mut [F], f: impl Fn(F) -> F + Sync + Send) {
    if v.len() >= 2 * CHUNK && crate::engine::pool::threads() > 1 {
        v.par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|x| *x = f(*x)));
    } else {
        v.iter_mut().for_each(|x| *x = f(*x));
    }
}

/// `a[i] = f(a[i], b[i])`, parallel over fixed chunks for large buffers.
pub fn zip_inplace<F: Float>(a: &mut [F], b: &[F], f: impl Fn(F, F) -> F + Sync + Send) {
    assert_eq!(a.len(), b.len());
    if a.len() >= 2 * CHUNK && crate::engine::pool::threads() > 1 {
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .for_each(|(ca, cb)| ca.iter_mut().zip(cb).for_each(|(x, &y)| *x = f(*x, y)));
    } else {
        a.iter_mut().zip(b).for_each(|(x, &y)| *x = f(*x, y));
    }
}

/// `a[i] = f(a[i], b[i], c[i])`, parallel over fixed chunks for large buffers.
pub fn zip3_inplace<F: Float>(
    a: &mut [F],
    b: &[F],
    c: &[F],
    f: impl Fn(F, F, F) -> F + Sync + Send,
) {
    assert!(a.len() == b.len() && a.len() == c.len());
    let run = |a: &mut [F], b: &[F], c: &[F]| {
        a.iter_mut()
            .zip(b)
            .zip(c)
            .for_each(|((x, &y), &z)| *x = f(*x, y, z))
    };
    if a.len() >= 2 * CHUNK && crate::engine::pool::threads() > 1 {
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .zip(c.par_chunks(CHUNK))
            .for_each(|((x, y), z)| run(x, y, z));
    } else {
        run(a, b, c);
    }
}

/// `acc[j] += sum_i m[i, j]` (column sums, accumulated; sequential so the order is fixed).
pub fn add_col_sums<F: Float>(m: &Mat<F>, acc: &mut [F]) {
    assert_eq!(acc.len(), m.cols);
    // each column is summed over the rows in order by one task (column chunks over the pool when large)
    let sum = |c0: usize, acc: &mut [F]| {
        for r in 0..m.rows {
            let row = &m.row(r)[c0..c0 + acc.len()];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    };
    const COLS: usize = 256;
    if m.rows * m.cols >= 2 * CHUNK && m.cols >= 2 * COLS && crate::engine::pool::threads() > 1 {
        acc.par_chunks_mut(COLS)
            .enumerate()
            .for_each(|(i, a)| sum(i * COLS, a));
    } else {
        sum(0, acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &Mat<f64>, ta: bool, b: &Mat<f64>, tb: bool) -> Mat<f64> {
        let get =
            |m: &Mat<f64>, t: bool, i: usize, j: usize| if t { m.at(j, i) } else { m.at(i, j) };
        let (m, k) = if ta {
            (a.cols, a.rows)
        } else {
            (a.rows, a.cols)
        };
        let n = if tb { b.rows } else { b.cols };
        let mut c = Mat::zeros(m, n);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for l in 0..k {
                    s += get(a, ta, i, l) * get(b, tb, l, j);
                }
                c.data[i * n + j] = s;
            }
        }
        c
    }

    /// Every row of the bias matrices is the bias, for row counts that are and are not powers of two.
    #[test]
    fn bias_rows_repeat_the_bias() {
        let b = [1.0, -2.0, 3.5];
        // (the large ones over a pool of 3 threads, in blocks that end mid-matrix)
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for rows in [0, 1, 2, 3, 7, 64, 100, PAR_FILL / 3 + 5, PAR_FILL] {
            let (y, z, zero) = pool.install(|| {
                let y: Mat<f64> = bias_rows(rows, &b);
                let mut z = Mat::from_vec(rows, 3, vec![9.0; rows * 3]);
                fill_rows(&mut z, &b);
                (y, z, zeros::<f64>(rows, 3))
            });
            assert_eq!((y.rows, y.cols), (rows, 3));
            assert_eq!((zero.rows, zero.cols), (rows, 3));
            assert!(zero.data.iter().all(|&v| v == 0.0), "zeros, {rows} rows");
            for r in 0..rows {
                assert_eq!(y.row(r), &b[..], "bias_rows, {rows} rows, row {r}");
                assert_eq!(z.row(r), &b[..], "fill_rows, {rows} rows, row {r}");
            }
        }
    }

    /// Column sums split over a pool equal the one-thread ones bit for bit (and a direct sum).
    #[test]
    fn column_sums_in_parallel_match_one_thread() {
        let m: Mat<f64> = crate::engine::randn(&mut crate::engine::rng(3), 70, 1000);
        let sums = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut acc = vec![0.5; 1000];
            pool.install(|| add_col_sums(&m, &mut acc));
            acc
        };
        let one = sums(1);
        assert_eq!(one, sums(3));
        for (j, v) in one.iter().enumerate() {
            let want: f64 = 0.5 + (0..70).map(|i| m.at(i, j)).sum::<f64>();
            assert!((v - want).abs() < 1e-12);
        }
    }

    /// Every transpose, small and large shapes (tall ones cut into row slabs, wide ones into column slabs),
    /// in pools of 1 and 3 threads.
    #[test]
    fn gemm_matches_naive_all_transposes() {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(gemm_cases);
        }
    }

    fn gemm_cases() {
        let mut rng = crate::engine::rng(1);
        // thin ones (loops): k, m or n at most 4, with and without streamable strides
        for &(m, k, n) in &[
            (3, 4, 5),
            (1, 7, 2),
            (130, 120, 110),
            (20, 150, 400),
            (300, 1, 70),
            (300, 2, 130),
            (300, 70, 2),
            (2, 300, 70),
            (70, 300, 1),
            (4, 4, 4),
        ] {
            for &ta in &[false, true] {
                for &tb in &[false, true] {
                    let a: Mat<f64> = if ta {
                        crate::engine::randn(&mut rng, k, m)
                    } else {
                        crate::engine::randn(&mut rng, m, k)
                    };
                    let b: Mat<f64> = if tb {
                        crate::engine::randn(&mut rng, n, k)
                    } else {
                        crate::engine::randn(&mut rng, k, n)
                    };
                    let want = naive(&a, ta, &b, tb);
                    let mut c = vec![1.0; m * n];
                    gemm(
                        &a.data, a.rows, a.cols, ta, &b.data, b.rows, b.cols, tb, &mut c, true,
                    );
                    for (x, y) in c.iter().zip(&want.data) {
                        assert!((x - 1.0 - y).abs() < 1e-10, "{x} vs {y}");
                    }
                    gemm(
                        &a.data, a.rows, a.cols, ta, &b.data, b.rows, b.cols, tb, &mut c, false,
                    );
                    for (x, y) in c.iter().zip(&want.data) {
                        assert!((x - y).abs() < 1e-10);
                    }
                }
            }
        }
    }
}
