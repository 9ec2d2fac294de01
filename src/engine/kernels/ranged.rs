//! Products whose tiles of C each sum over a depth range of their own ([`gemm_view_ranged`]): MADE's masked
//! weights have structural zeros, and the f32 kernel skips their blocks per tile.

use super::dispatch::{gemm_view_ep, own_kernel, Epilogue, View};
use crate::engine::{sgemm, Float};

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
