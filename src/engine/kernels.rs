//! The narrow kernel interface: every transform and network does its numeric work through these functions
//! (GEMM, element-wise maps, row/column reductions), so another implementation (e.g. a GPU one) can replace
//! this file without touching the transforms.
//!
//! Matrix products go through the `gemm` crate; element-wise work over large buffers is split over the rayon
//! pool in fixed-size chunks, so results do not depend on the number of threads.

use super::{Float, Mat};
use rayon::prelude::*;

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
    // Row-major strides (column stride, row stride) of op(a) and op(b).
    let (a_cs, a_rs) = if ta {
        (a_cols as isize, 1)
    } else {
        (1, a_cols as isize)
    };
    let (b_cs, b_rs) = if tb {
        (b_cols as isize, 1)
    } else {
        (1, b_cols as isize)
    };
    let threads = rayon::current_num_threads();
    let par = if m * n * k >= PAR_GEMM_FLOPS && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every index the kernel touches: op(a) is m x k, op(b) is k x n and c is
    // m x n, all with the strides computed from their row-major storage.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            F::one(),
            F::one(),
            false,
            false,
            false,
            par,
        )
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
    /// One past the largest index it touches (0 for an empty view).
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// `C = (accumulate ? C : 0) + A B` on strided views into `a`, `b`, `c` (sub-blocks of larger matrices:
/// the block-sparse products of masked layers). `c`'s view must not overlap itself (`rs`, `cs` > 0 and
/// distinct).
pub fn gemm_view<F: Float>(
    a: &[F],
    av: View,
    b: &[F],
    bv: View,
    c: &mut [F],
    cv: View,
    accumulate: bool,
) {
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    assert_eq!(bv.rows, k, "gemm_view: inner dimensions differ");
    assert_eq!((cv.rows, cv.cols), (m, n), "gemm_view: output shape");
    assert!(av.end() <= a.len() && bv.end() <= b.len() && cv.end() <= c.len());
    assert!(
        cv.rs > 0 && cv.cs > 0 && cv.rs != cv.cs,
        "gemm_view: output strides"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[cv.off + i * cv.rs + j * cv.cs] = F::zero();
                }
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if m * n * k >= PAR_GEMM_FLOPS && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every index the kernel touches, and the output view is injective.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(cv.off),
            cv.cs as isize,
            cv.rs as isize,
            accumulate,
            a.as_ptr().add(av.off),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr().add(bv.off),
            bv.cs as isize,
            bv.rs as isize,
            F::one(),
            F::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// `y = x W^T + b` for a linear layer with `W` stored `(out, in)`; `y` is overwritten.
pub fn linear<F: Float>(x: &Mat<F>, w: &[F], b: &[F], out: usize, y: &mut Mat<F>) {
    assert_eq!(y.rows, x.rows);
    assert_eq!(y.cols, out);
    for r in 0..y.rows {
        y.row_mut(r).copy_from_slice(b);
    }
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
    if v.len() >= 2 * CHUNK {
        v.par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|x| *x = f(*x)));
    } else {
        v.iter_mut().for_each(|x| *x = f(*x));
    }
}

/// `a[i] = f(a[i], b[i])`, parallel over fixed chunks for large buffers.
pub fn zip_inplace<F: Float>(a: &mut [F], b: &[F], f: impl Fn(F, F) -> F + Sync + Send) {
    assert_eq!(a.len(), b.len());
    if a.len() >= 2 * CHUNK {
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .for_each(|(ca, cb)| ca.iter_mut().zip(cb).for_each(|(x, &y)| *x = f(*x, y)));
    } else {
        a.iter_mut().zip(b).for_each(|(x, &y)| *x = f(*x, y));
    }
}

/// `acc[j] += sum_i m[i, j]` (column sums, accumulated; sequential so the order is fixed).
pub fn add_col_sums<F: Float>(m: &Mat<F>, acc: &mut [F]) {
    assert_eq!(acc.len(), m.cols);
    for r in 0..m.rows {
        for (a, &v) in acc.iter_mut().zip(m.row(r)) {
            *a += v;
        }
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

    #[test]
    fn gemm_matches_naive_all_transposes() {
        let mut rng = crate::engine::rng(1);
        for &(m, k, n) in &[(3, 4, 5), (1, 7, 2), (130, 120, 110)] {
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
