//! The matrix products' entry points ([`gemm`], [`gemm_view`], [`gemm_view_ep`], [`gemm_view_new`],
//! [`gemm_tasks`]), the strided [`View`] and the [`Epilogue`] they take, and the dispatch of each product: to
//! the f32 kernel ([`sgemm`]), to the thin loops ([`super::thin`]), or to the `gemm` crate in per-thread slabs.

use super::thin::thin;
use crate::engine::{sgemm, Float};
use rayon::prelude::*;

/// Below this many multiply-adds a product runs on one thread (spawning costs more than it saves).
const PAR_GEMM_FLOPS: usize = 96 * 96 * 96;

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
pub(super) fn own_kernel<F: Float>(m: usize, k: usize, n: usize) -> bool {
    crate::engine::is_f32::<F>() && sgemm::suits(m, k, n)
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
    pub(super) fn out(&self) -> sgemm::Out {
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

/// [`gemm_view`] with an [`Epilogue`] (a bias of `cv.cols` values, a ReLU); with `depth`, tiles sum over their
/// ranges on the kernel ([`gemm_view_ranged`](super::gemm_view_ranged)), which needs operands whose other
/// entries are zero: products off the kernel run over the whole depth, which gives the same.
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
pub(super) unsafe fn written<F: Float>(
    len: usize,
    write: impl FnOnce(&mut [std::mem::MaybeUninit<F>]),
) -> Vec<F> {
    let mut v = Vec::with_capacity(len);
    write(&mut v.spare_capacity_mut()[..len]);
    v.set_len(len);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Mat;

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
