//! AVX2 + FMA tiles of the direct convolution ([`super::conv::conv_direct`]) in f32, for input channel counts
//! that are a multiple of 8 (a coupling's last convolution reads the hidden width: 64 in w6).
//!
//! Why tiles: the plain kernel takes one dot product per (pixel, output channel, kernel row), a single chain of
//! dependent adds that waits on the adder's latency and reads each input run once per output channel. Here one
//! pass over a run feeds eight independent accumulators (several output channels, and for four or fewer output
//! channels several neighbouring pixels that share the weights), so the adders stay busy and each input value
//! is loaded once per tile.
//!
//! The forward keeps the plain kernel's arithmetic exactly (same products, separately rounded adds, same lane
//! assignment and the same order of the final sum), so a saved model's log-probabilities keep their bits
//! whichever path a machine takes. The backward, which only training runs, uses fused multiply-adds and its own
//! (fixed) order.

#![cfg(target_arch = "x86_64")]

use super::conv::Hw;
use std::arch::x86_64::*;

/// Lane `i` of the result: `((0 + r[i][0]) + r[i][1]) + ... + r[i][7]`, for all eight rows at once (an 8 x 8
/// transpose, then seven vector adds in lane order).
#[inline(always)]
unsafe fn ordered_row_sums(r: [__m256; 8]) -> __m256 {
    // column l of the transpose holds lane l of every row
    let cols = super::sgemm::transpose8(r);
    let mut acc = _mm256_setzero_ps();
    for c in cols {
        acc = _mm256_add_ps(acc, c);
    }
    acc
}

/// The block a loop over `left` more channels takes next: the largest of 8, 4, 2, 1 that fits (1 for none).
#[inline(always)]
fn block(left: usize) -> usize {
    [8, 4, 2, 1].into_iter().find(|&b| b <= left).unwrap_or(1)
}

/// Dot products of `P` neighbouring pixels' input runs (pixel `p`'s at `x + p * cin`, `len` values) with `G`
/// output channels' weight runs (channel `g`'s at `w + g * kc`): `out[p * G + g]`, each summed as the plain
/// kernel's `dot` sums it.
#[inline(always)]
unsafe fn tile_dots<const P: usize, const G: usize>(
    x: *const f32,
    cin: usize,
    w: *const f32,
    kc: usize,
    len: usize,
) -> [f32; 8] {
    let mut acc = [[_mm256_setzero_ps(); G]; P];
    let mut j = 0;
    while j < len {
        let mut xv = [_mm256_setzero_ps(); P];
        for (p, v) in xv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(x.add(p * cin + j));
        }
        for g in 0..G {
            let wv = _mm256_loadu_ps(w.add(g * kc + j));
            for p in 0..P {
                // a product and an add, each rounded, as the plain kernel computes them
                acc[p][g] = _mm256_add_ps(acc[p][g], _mm256_mul_ps(xv[p], wv));
            }
        }
        j += 8;
    }
    let mut rows = [_mm256_setzero_ps(); 8];
    for p in 0..P {
        for g in 0..G {
            rows[p * G + g] = acc[p][g];
        }
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), ordered_row_sums(rows));
    out
}

/// Forward of one image (see [`super::conv::conv_direct`]): `src` `pixels x cin` with `cin.is_multiple_of(8)`, `dst`
/// `pixels x cout`, overwritten.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward_image(
    src: &[f32],
    dst: &mut [f32],
    s: Hw,
    k: usize,
    w: &[f32],
    b: &[f32],
) {
    let cout = b.len();
    let cin = src.len() / (s.h * s.w);
    debug_assert!(
        cin.is_multiple_of(8) && dst.len() == s.h * s.w * cout && w.len() == cout * k * k * cin
    );
    let mut co0 = 0;
    while co0 < cout {
        // output channels in groups of 8, 4, 2, 1; pixels of a row in tiles that fill eight accumulators
        let g = block(cout - co0);
        match g {
            8 => forward_group::<1, 8>(src, dst, s, k, w, b, co0),
            4 => forward_group::<2, 4>(src, dst, s, k, w, b, co0),
            2 => forward_group::<4, 2>(src, dst, s, k, w, b, co0),
            _ => forward_group::<8, 1>(src, dst, s, k, w, b, co0),
        }
        co0 += g;
    }
}

/// Output channels `co0..co0 + G` of one image, `P` pixels at a time where a row's pixels see all `k` taps
/// (one at a time at its edges).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_group<const P: usize, const G: usize>(
    src: &[f32],
    dst: &mut [f32],
    s: Hw,
    k: usize,
    w: &[f32],
    b: &[f32],
    co0: usize,
) {
    let cout = b.len();
    let cin = src.len() / (s.h * s.w);
    let kc = k * k * cin;
    let p = k / 2;
    let (xp, wp) = (src.as_ptr(), w.as_ptr());
    for py in 0..s.h {
        let mut px = 0;
        while px < s.w {
            let (kx0, kx1) = super::conv::taps(px, s.w, k);
            // a tile of P pixels needs the same taps for all of them: full rows only
            let n = if P > 1 && kx0 == 0 && kx1 == k && px + P + p <= s.w {
                P
            } else {
                1
            };
            let len = (kx1 - kx0) * cin;
            let mut out = [[0f32; G]; P];
            for o in out.iter_mut().take(n) {
                o.copy_from_slice(&b[co0..co0 + G]);
            }
            for ky in 0..k {
                let sy = (py + ky).wrapping_sub(p);
                if sy >= s.h {
                    continue;
                }
                let x = xp.add((sy * s.w + px + kx0 - p) * cin);
                let wk = wp.add(co0 * kc + (ky * k + kx0) * cin);
                let sums = if n == P {
                    tile_dots::<P, G>(x, cin, wk, kc, len)
                } else {
                    tile_dots::<1, G>(x, cin, wk, kc, len)
                };
                for (i, o) in out.iter_mut().take(n).enumerate() {
                    for (g, v) in o.iter_mut().enumerate() {
                        *v += sums[i * G + g];
                    }
                }
            }
            for (i, o) in out.iter().take(n).enumerate() {
                dst[(py * s.w + px + i) * cout + co0..][..G].copy_from_slice(o);
            }
            px += n;
        }
    }
}

/// Backward of one image (see [`super::conv::conv_direct_backward`]): writes the image's input gradient into
/// `dxi` (`pixels x cin`, overwritten) and adds its weight gradient into `dwg`. `cin.is_multiple_of(8)`.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn backward_image(
    src: &[f32],
    d: &[f32],
    dxi: &mut [f32],
    dwg: &mut [f32],
    s: Hw,
    k: usize,
    w: &[f32],
) {
    let per_image = s.h * s.w;
    let (cin, cout) = (src.len() / per_image, d.len() / per_image);
    debug_assert!(
        cin.is_multiple_of(8) && dxi.len() == src.len() && dwg.len() == cout * k * k * cin
    );
    let mut co0 = 0;
    while co0 < cout {
        let g = block(cout - co0);
        match g {
            8 => weight_grad_group::<8, 1>(src, d, dwg, s, k, co0, cout),
            4 => weight_grad_group::<4, 2>(src, d, dwg, s, k, co0, cout),
            2 => weight_grad_group::<2, 4>(src, d, dwg, s, k, co0, cout),
            _ => weight_grad_group::<1, 8>(src, d, dwg, s, k, co0, cout),
        }
        co0 += g;
    }
    input_grad(d, dxi, s, k, w, cin, cout);
}

/// `dw[co][ky][kx][c] += Σ_pixels dy[pixel][co] x[pixel + tap][c]` for output channels `co0..co0 + G`: per tap,
/// blocks of `8 V` input channels accumulate over all pixels that see the tap, `G x V` accumulators.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_grad_group<const G: usize, const V: usize>(
    src: &[f32],
    d: &[f32],
    dwg: &mut [f32],
    s: Hw,
    k: usize,
    co0: usize,
    cout: usize,
) {
    let cin = src.len() / (s.h * s.w);
    for ky in 0..k {
        for kx in 0..k {
            let mut c0 = 0;
            while c0 + 8 * V <= cin {
                weight_grad_block::<G, V>(src, d, dwg, s, k, (ky, kx), co0, cout, c0);
                c0 += 8 * V;
            }
            // channels left over when cin is not a multiple of 8 V: one vector at a time
            while c0 < cin {
                weight_grad_block::<G, 1>(src, d, dwg, s, k, (ky, kx), co0, cout, c0);
                c0 += 8;
            }
        }
    }
}

/// One tap's and one channel block's part of [`weight_grad_group`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_grad_block<const G: usize, const V: usize>(
    src: &[f32],
    d: &[f32],
    dwg: &mut [f32],
    s: Hw,
    k: usize,
    (ky, kx): (usize, usize),
    co0: usize,
    cout: usize,
    c0: usize,
) {
    let cin = src.len() / (s.h * s.w);
    let kc = k * k * cin;
    let p = k / 2;
    let (xp, dp) = (src.as_ptr(), d.as_ptr());
    // output pixels whose tap (ky, kx) lies inside the image
    let (y0, y1) = (p.saturating_sub(ky), s.h.min(s.h + p - ky));
    let (x0, x1) = (p.saturating_sub(kx), s.w.min(s.w + p - kx));
    let mut acc = [[_mm256_setzero_ps(); V]; G];
    for py in y0..y1 {
        let sy = py + ky - p;
        for px in x0..x1 {
            let x = xp.add((sy * s.w + px + kx - p) * cin + c0);
            let dy = dp.add((py * s.w + px) * cout + co0);
            let mut xv = [_mm256_setzero_ps(); V];
            for (v, xv) in xv.iter_mut().enumerate() {
                *xv = _mm256_loadu_ps(x.add(8 * v));
            }
            for (g, a) in acc.iter_mut().enumerate() {
                let gv = _mm256_broadcast_ss(&*dy.add(g));
                for v in 0..V {
                    a[v] = _mm256_fmadd_ps(gv, xv[v], a[v]);
                }
            }
        }
    }
    for (g, a) in acc.iter().enumerate() {
        let to = dwg
            .as_mut_ptr()
            .add((co0 + g) * kc + (ky * k + kx) * cin + c0);
        for (v, a) in a.iter().enumerate() {
            let t = to.add(8 * v);
            _mm256_storeu_ps(t, _mm256_add_ps(_mm256_loadu_ps(t), *a));
        }
    }
}

/// `dx[q][c] = Σ_taps Σ_co dy[q - tap][co] w[co][tap][c]`, gathered per input pixel in blocks of up to 64
/// channels held in registers, so each input-gradient value is written once.
#[inline(always)]
unsafe fn input_grad(
    d: &[f32],
    dxi: &mut [f32],
    s: Hw,
    k: usize,
    w: &[f32],
    cin: usize,
    cout: usize,
) {
    let mut c0 = 0;
    while c0 < cin {
        let v = block((cin - c0) / 8);
        match v {
            8 => input_grad_block::<8>(d, dxi, s, k, w, cin, cout, c0),
            4 => input_grad_block::<4>(d, dxi, s, k, w, cin, cout, c0),
            2 => input_grad_block::<2>(d, dxi, s, k, w, cin, cout, c0),
            _ => input_grad_block::<1>(d, dxi, s, k, w, cin, cout, c0),
        }
        c0 += 8 * v;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn input_grad_block<const V: usize>(
    d: &[f32],
    dxi: &mut [f32],
    s: Hw,
    k: usize,
    w: &[f32],
    cin: usize,
    cout: usize,
    c0: usize,
) {
    let kc = k * k * cin;
    let p = k / 2;
    let (dp, wp) = (d.as_ptr(), w.as_ptr());
    for qy in 0..s.h {
        for qx in 0..s.w {
            let mut acc = [_mm256_setzero_ps(); V];
            for ky in 0..k {
                // the output pixel that reads input (qy, qx) through tap (ky, kx)
                let oy = (qy + p).wrapping_sub(ky);
                if oy >= s.h {
                    continue;
                }
                for kx in 0..k {
                    let ox = (qx + p).wrapping_sub(kx);
                    if ox >= s.w {
                        continue;
                    }
                    let dy = dp.add((oy * s.w + ox) * cout);
                    let wt = wp.add((ky * k + kx) * cin + c0);
                    for co in 0..cout {
                        let gv = _mm256_broadcast_ss(&*dy.add(co));
                        let wr = wt.add(co * kc);
                        for (v, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(gv, _mm256_loadu_ps(wr.add(8 * v)), *a);
                        }
                    }
                }
            }
            let to = dxi.as_mut_ptr().add((qy * s.w + qx) * cin + c0);
            for (v, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(to.add(8 * v), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv::{self, conv_direct, conv_direct_backward};
    use super::*;
    use crate::engine::{randn, rng, Mat};

    /// (images, cin, h, w, k, cout): the w6 shape, output-channel groups 4 + 2 + 1, channel blocks with a
    /// remainder, a kernel wider than the image, a single pixel.
    const SHAPES: [(usize, usize, usize, usize, usize, usize); 6] = [
        (5, 64, 14, 14, 3, 4),
        (3, 8, 5, 6, 3, 7),
        (2, 24, 7, 7, 3, 16),
        (2, 72, 6, 5, 3, 8),
        (2, 16, 4, 3, 5, 2),
        (1, 8, 1, 1, 3, 1),
    ];

    fn to_f32(m: &Mat<f64>) -> Mat<f32> {
        Mat::from_vec(m.rows, m.cols, m.data.iter().map(|&v| v as f32).collect())
    }

    #[test]
    fn forward_tiles_keep_the_plain_kernels_bits() {
        if !crate::engine::sgemm::available() {
            return eprintln!("no AVX2 + FMA: the tiles do not run here");
        }
        let mut r = rng(7);
        for (n, cin, h, w, k, cout) in SHAPES {
            let s = Hw { n, h, w };
            let x = to_f32(&randn(&mut r, s.pixels(), cin));
            let wt = to_f32(&randn(&mut r, cout, k * k * cin)).data;
            let b = to_f32(&randn(&mut r, 1, cout)).data;
            let mut y = Mat::zeros(s.pixels(), cout);
            conv_direct(&x, s, k, &wt, &b, &mut y);
            let mut want = vec![0f32; y.data.len()];
            let per = h * w;
            for img in 0..n {
                conv::forward_image(
                    &x.data[img * per * cin..(img + 1) * per * cin],
                    &mut want[img * per * cout..(img + 1) * per * cout],
                    s,
                    k,
                    &wt,
                    &b,
                );
            }
            for (i, (a, b)) in y.data.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{cin}->{cout} {h}x{w} k={k}, value {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn backward_tiles_match_the_f64_kernel() {
        if !crate::engine::sgemm::available() {
            return eprintln!("no AVX2 + FMA: the tiles do not run here");
        }
        let mut r = rng(8);
        for (n, cin, h, w, k, cout) in SHAPES {
            let s = Hw { n, h, w };
            let x: Mat<f64> = randn(&mut r, s.pixels(), cin);
            let dy: Mat<f64> = randn(&mut r, s.pixels(), cout);
            let wt: Mat<f64> = randn(&mut r, cout, k * k * cin);
            let mut dw = vec![0.0; wt.data.len()];
            let dx = conv_direct_backward(&dy, &x, s, k, &wt.data, &mut dw);
            let mut dw32 = vec![0f32; wt.data.len()];
            let dx32 = conv_direct_backward(
                &to_f32(&dy),
                &to_f32(&x),
                s,
                k,
                &to_f32(&wt).data,
                &mut dw32,
            );
            // f32 sums of up to k*k*cout (dx) or pixels*... (dW) unit-scale terms: relative to the sum's size
            let check = |got: &[f32], want: &[f64], terms: usize, what: &str| {
                let tol = 1e-5 * (terms as f64).sqrt();
                for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (a as f64 - b).abs() <= tol * (1.0 + b.abs()),
                        "{what} {cin}->{cout} {h}x{w} k={k}, {i}: {a} vs {b}"
                    );
                }
            };
            check(&dx32.data, &dx.data, k * k * cout, "dx");
            check(&dw32, &dw, n * h * w, "dW");
            assert!(dx32.data.iter().any(|v| *v != 0.0) && dw32.iter().any(|v| *v != 0.0));
        }
    }
}
