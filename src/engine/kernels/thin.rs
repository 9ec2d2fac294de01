//! Products with a dimension of at most [`THIN`] as plain loops along the long dimension (rows of C over the
//! pool when there is enough work), compiled for AVX2 where the CPU has it.

use super::dispatch::View;
use crate::engine::{sgemm, Float};
use rayon::prelude::*;

/// Largest dimension a product may have for [`thin`].
const THIN: usize = 4;

/// Products with a dimension of at most [`THIN`] (a flow on 2-D data: one-feature inputs, two-parameter outputs
/// and their gradients) as plain loops along the long dimension: a blocked kernel's packing and tile padding
/// cost more than such a product. `false` (nothing done) for other shapes, or strides the loops can't stream.
pub(super) fn thin<F: Float>(
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
