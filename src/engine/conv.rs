//! 2-D convolution kernels, stride 1, "same" zero padding (`k / 2` on each side, `k` odd), on tensors in NHWC
//! layout: a `Mat` with one row per pixel (`n * h * w` rows, image-major, then row-major pixels) and one column
//! per channel. In this layout a `k x k` convolution is one GEMM against an im2col matrix (one row per output
//! pixel holding its `k * k * c` neighbourhood, ordered `[ky][kx][c]`), and a 1x1 convolution is a plain GEMM.
//! The backward pass is the transposed products plus `col2im`, which adds each column entry back into the pixel
//! it came from.
//!
//! im2col + GEMM was chosen over a direct kernel because the products then run at the GEMM library's rate; the
//! gather itself copies contiguous channel runs.

use super::{Float, Mat};
use rayon::prelude::*;

/// `(channels, height, width)` of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageShape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl ImageShape {
    pub fn new(c: usize, h: usize, w: usize) -> Self {
        ImageShape { c, h, w }
    }
    pub fn hw(&self) -> usize {
        self.h * self.w
    }
    pub fn dim(&self) -> usize {
        self.c * self.h * self.w
    }
    /// After a 2x2 squeeze.
    pub fn squeezed(&self) -> Self {
        ImageShape::new(4 * self.c, self.h / 2, self.w / 2)
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.c, self.h, self.w)
    }
}

/// Spatial size of a batch of NHWC images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hw {
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

impl Hw {
    pub fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// Neighbourhood matrix of `x` (`pixels x c`) for a `k x k` kernel: `pixels x (k*k*c)`, zero outside the image.
/// Every entry of `out` is written (a kept buffer is not zeroed first: at these sizes zeroing costs as much as
/// the copy), each kernel row's taps inside the image as one contiguous run of the source.
pub fn im2col<F: Float>(x: &Mat<F>, s: Hw, k: usize, out: &mut Mat<F>) {
    let c = x.cols;
    assert_eq!(x.rows, s.pixels());
    assert!(k % 2 == 1, "kernel size must be odd");
    let kc = k * k * c;
    out.rows = x.rows;
    out.cols = kc;
    // only a longer buffer's new tail is zeroed here; everything is overwritten below
    out.data.resize(x.rows * kc, F::zero());
    let p = k / 2;
    let per_image = s.h * s.w;
    out.data
        .par_chunks_mut(per_image * kc)
        .enumerate()
        .with_min_len(crate::engine::pool::min_len())
        .for_each(|(img, dst)| {
            let src = &x.data[img * per_image * c..(img + 1) * per_image * c];
            for y in 0..s.h {
                for xx in 0..s.w {
                    let row = &mut dst[(y * s.w + xx) * kc..(y * s.w + xx + 1) * kc];
                    let (kx0, kx1) = taps(xx, s.w, k);
                    for ky in 0..k {
                        let seg = &mut row[ky * k * c..(ky + 1) * k * c];
                        let sy = (y + ky).wrapping_sub(p);
                        if sy >= s.h {
                            seg.fill(F::zero());
                            continue;
                        }
                        seg[..kx0 * c].fill(F::zero());
                        seg[kx1 * c..].fill(F::zero());
                        let from = (sy * s.w + xx + kx0 - p) * c;
                        seg[kx0 * c..kx1 * c].copy_from_slice(&src[from..from + (kx1 - kx0) * c]);
                    }
                }
            }
        });
}

/// Output channels up to which a `k x k` convolution runs directly ([`conv_direct`]) instead of through
/// [`im2col`]: with few output channels the column matrix (`k*k*cin` values per pixel) would be written and read
/// once for a product of a few columns, which is bound by memory, not arithmetic (a coupling's last convolution).
pub const DIRECT_MAX_COUT: usize = 16;

/// `Σ a_i b_i` in eight interleaved partial sums (so the loop vectorises; the same order on every call).
#[inline(always)]
fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    let mut acc = [F::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().copied().fold(F::zero(), |a, b| a + b);
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    s
}

/// `y += g x`.
#[inline(always)]
fn axpy<F: Float>(y: &mut [F], g: F, x: &[F]) {
    for (a, &b) in y.iter_mut().zip(x) {
        *a += g * b;
    }
}

/// The taps of a `k x k` kernel (padding `p`) at column `px` of a `w`-wide image that fall inside it: `kx0..kx1`.
#[inline(always)]
pub(super) fn taps(px: usize, w: usize, k: usize) -> (usize, usize) {
    let p = k / 2;
    (p.saturating_sub(px), k.min(w + p - px))
}

/// `y = conv(x) + b` without a column matrix: each output a bias plus, per kernel row inside the image, one dot
/// product of the contiguous input run under it with the matching run of the weights. `w` is
/// `cout x (k*k*cin)`, columns ordered as [`im2col`]'s (`[ky][kx][c]`); `y` is `pixels x cout`, overwritten.
pub fn conv_direct<F: Float>(x: &Mat<F>, s: Hw, k: usize, w: &[F], b: &[F], y: &mut Mat<F>) {
    let (cin, cout) = (x.cols, y.cols);
    assert!(k % 2 == 1 && x.rows == s.pixels() && y.rows == x.rows);
    assert!(w.len() == cout * k * k * cin && b.len() == cout);
    let per_image = s.h * s.w;
    let fast = wide::<F>();
    y.data
        .par_chunks_mut(per_image * cout)
        .enumerate()
        .with_min_len(crate::engine::pool::min_len())
        .for_each(|(img, dst)| {
            let src = &x.data[img * per_image * cin..(img + 1) * per_image * cin];
            #[cfg(target_arch = "x86_64")]
            if fast {
                if let (Some(src), Some(dst), Some(w), Some(b)) = (
                    super::as_f32(src),
                    super::as_f32_mut(dst),
                    super::as_f32(w),
                    super::as_f32(b),
                ) {
                    if cin.is_multiple_of(8) {
                        // SAFETY: the CPU has AVX2 and FMA (`wide`)
                        return unsafe { super::conv_x86::forward_image(src, dst, s, k, w, b) };
                    }
                }
                // SAFETY: as above
                return unsafe { forward_image_avx2(src, dst, s, k, w, b) };
            }
            forward_image(src, dst, s, k, w, b)
        });
}

/// Whether the AVX2 + FMA versions run (f32 on a CPU that has them).
fn wide<F: Float>() -> bool {
    super::is_f32::<F>() && super::sgemm::available()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_image_avx2<F: Float>(
    src: &[F],
    dst: &mut [F],
    s: Hw,
    k: usize,
    w: &[F],
    b: &[F],
) {
    forward_image(src, dst, s, k, w, b)
}

/// [`conv_direct`] of one image: `src` its `pixels x cin` input, `dst` its `pixels x cout` output.
#[inline(always)]
pub(super) fn forward_image<F: Float>(src: &[F], dst: &mut [F], s: Hw, k: usize, w: &[F], b: &[F]) {
    let cout = b.len();
    let cin = src.len() / (s.h * s.w);
    let kc = k * k * cin;
    let p = k / 2;
    for py in 0..s.h {
        for px in 0..s.w {
            let out = &mut dst[(py * s.w + px) * cout..][..cout];
            out.copy_from_slice(b);
            let (kx0, kx1) = taps(px, s.w, k);
            let len = (kx1 - kx0) * cin;
            for ky in 0..k {
                let sy = (py + ky).wrapping_sub(p);
                if sy >= s.h {
                    continue;
                }
                let xs = &src[(sy * s.w + px + kx0 - p) * cin..][..len];
                let off = (ky * k + kx0) * cin;
                for (co, o) in out.iter_mut().enumerate() {
                    *o += dot(xs, &w[co * kc + off..][..len]);
                }
            }
        }
    }
}

/// Backward of [`conv_direct`] for `dy` (`pixels x cout`): adds `dL/dw` into `dw` (the layout of `w`) and
/// returns `dL/dx`. Images are taken in fixed groups whose weight gradients are summed in order, so the result
/// does not depend on the thread count's scheduling.
pub fn conv_direct_backward<F: Float>(
    dy: &Mat<F>,
    x: &Mat<F>,
    s: Hw,
    k: usize,
    w: &[F],
    dw: &mut [F],
) -> Mat<F> {
    let (cin, cout) = (x.cols, dy.cols);
    let kc = k * k * cin;
    assert!(k % 2 == 1 && x.rows == s.pixels() && dy.rows == x.rows);
    assert!(w.len() == cout * kc && dw.len() == cout * kc);
    let per_image = s.h * s.w;
    let images = x.rows / per_image.max(1);
    const GROUP: usize = 4;
    let fast = wide::<F>();
    let mut dx = Mat::zeros(x.rows, cin);
    let mut partial = vec![F::zero(); images.div_ceil(GROUP) * cout * kc];
    dx.data
        .par_chunks_mut(GROUP * per_image * cin)
        .zip(partial.par_chunks_mut(cout * kc))
        .enumerate()
        .with_min_len(crate::engine::pool::min_len())
        .for_each(|(g, (dxg, dwg))| {
            for (i, dxi) in dxg.chunks_mut(per_image * cin).enumerate() {
                let img = g * GROUP + i;
                let src = &x.data[img * per_image * cin..(img + 1) * per_image * cin];
                let d = &dy.data[img * per_image * cout..(img + 1) * per_image * cout];
                #[cfg(target_arch = "x86_64")]
                if fast {
                    if let (Some(src), Some(d), Some(dxi), Some(dwg), Some(w)) = (
                        super::as_f32(src),
                        super::as_f32(d),
                        super::as_f32_mut(dxi),
                        super::as_f32_mut(dwg),
                        super::as_f32(w),
                    ) {
                        if cin.is_multiple_of(8) {
                            // SAFETY: the CPU has AVX2 and FMA (`wide`)
                            unsafe { super::conv_x86::backward_image(src, d, dxi, dwg, s, k, w) };
                            continue;
                        }
                    }
                    // SAFETY: as above
                    unsafe { backward_image_avx2(src, d, dxi, dwg, s, k, w) };
                    continue;
                }
                backward_image(src, d, dxi, dwg, s, k, w);
            }
        });
    for part in partial.chunks(cout * kc) {
        dw.iter_mut().zip(part).for_each(|(a, &b)| *a += b);
    }
    dx
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_image_avx2<F: Float>(
    src: &[F],
    d: &[F],
    dxi: &mut [F],
    dwg: &mut [F],
    s: Hw,
    k: usize,
    w: &[F],
) {
    backward_image(src, d, dxi, dwg, s, k, w)
}

/// [`conv_direct_backward`] of one image: `d` its output gradient, `dxi` its input gradient (accumulated),
/// `dwg` its group's weight gradient (accumulated).
#[inline(always)]
fn backward_image<F: Float>(
    src: &[F],
    d: &[F],
    dxi: &mut [F],
    dwg: &mut [F],
    s: Hw,
    k: usize,
    w: &[F],
) {
    let per_image = s.h * s.w;
    let (cin, cout) = (src.len() / per_image, d.len() / per_image);
    let kc = k * k * cin;
    let p = k / 2;
    for py in 0..s.h {
        for px in 0..s.w {
            let dp = &d[(py * s.w + px) * cout..][..cout];
            let (kx0, kx1) = taps(px, s.w, k);
            let len = (kx1 - kx0) * cin;
            for ky in 0..k {
                let sy = (py + ky).wrapping_sub(p);
                if sy >= s.h {
                    continue;
                }
                let at = (sy * s.w + px + kx0 - p) * cin;
                let off = (ky * k + kx0) * cin;
                for (co, &gco) in dp.iter().enumerate() {
                    axpy(&mut dxi[at..at + len], gco, &w[co * kc + off..][..len]);
                    axpy(&mut dwg[co * kc + off..][..len], gco, &src[at..at + len]);
                }
            }
        }
    }
}

/// Adjoint of [`im2col`]: `dx[pixel] += sum of the column entries that were copied from it` (`dx` is
/// `pixels x c`, accumulated).
pub fn col2im_add<F: Float>(cols: &Mat<F>, s: Hw, k: usize, dx: &mut Mat<F>) {
    let c = dx.cols;
    let kc = k * k * c;
    assert_eq!(cols.cols, kc);
    assert_eq!(cols.rows, s.pixels());
    assert_eq!(dx.rows, s.pixels());
    let p = (k / 2) as isize;
    let per_image = s.h * s.w;
    dx.data
        .par_chunks_mut(per_image * c)
        .enumerate()
        .with_min_len(crate::engine::pool::min_len())
        .for_each(|(img, dst)| {
            let src = &cols.data[img * per_image * kc..(img + 1) * per_image * kc];
            for y in 0..s.h {
                for xx in 0..s.w {
                    let row = &src[(y * s.w + xx) * kc..(y * s.w + xx + 1) * kc];
                    for ky in 0..k {
                        let sy = y as isize + ky as isize - p;
                        if sy < 0 || sy >= s.h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let sx = xx as isize + kx as isize - p;
                            if sx < 0 || sx >= s.w as isize {
                                continue;
                            }
                            let to = (sy as usize * s.w + sx as usize) * c;
                            let from = (ky * k + kx) * c;
                            dst[to..to + c]
                                .iter_mut()
                                .zip(&row[from..from + c])
                                .for_each(|(d, &v)| *d += v);
                        }
                    }
                }
            }
        });
}

/// NCHW rows (one image per row, channel planes one after another) to NHWC pixels.
pub fn chw_to_nhwc<F: Float>(x: &Mat<F>, c: usize, hw: usize) -> Mat<F> {
    assert_eq!(x.cols, c * hw);
    let mut out = Mat::zeros(x.rows * hw, c);
    out.data
        .par_chunks_mut(hw * c)
        .zip(x.data.par_chunks(c * hw))
        .with_min_len(crate::engine::pool::min_len())
        .for_each(|(dst, src)| {
            for ch in 0..c {
                for p in 0..hw {
                    dst[p * c + ch] = src[ch * hw + p];
                }
            }
        });
    out
}

/// NHWC pixels back to NCHW rows (`n` images).
pub fn nhwc_to_chw<F: Float>(x: &Mat<F>, n: usize, hw: usize) -> Mat<F> {
    let c = x.cols;
    assert_eq!(x.rows, n * hw);
    let mut out = Mat::zeros(n, c * hw);
    out.data
        .par_chunks_mut(c * hw)
        .zip(x.data.par_chunks(hw * c))
        .with_min_len(crate::engine::pool::min_len())
        .for_each(|(dst, src)| {
            for p in 0..hw {
                for ch in 0..c {
                    dst[ch * hw + p] = src[p * c + ch];
                }
            }
        });
    out
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// Direct definition of a "same" convolution, NCHW per image, weight `[o][ky][kx][i]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn naive_conv(
        x: &[f64],
        n: usize,
        cin: usize,
        h: usize,
        w: usize,
        wt: &[f64],
        b: &[f64],
        cout: usize,
        k: usize,
    ) -> Vec<f64> {
        let p = (k / 2) as isize;
        let mut y = vec![0.0; n * cout * h * w];
        for img in 0..n {
            for o in 0..cout {
                for yy in 0..h {
                    for xx in 0..w {
                        let mut s = b[o];
                        for ky in 0..k {
                            for kx in 0..k {
                                let sy = yy as isize + ky as isize - p;
                                let sx = xx as isize + kx as isize - p;
                                if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                    continue;
                                }
                                for i in 0..cin {
                                    s += wt[((o * k + ky) * k + kx) * cin + i]
                                        * x[((img * cin + i) * h + sy as usize) * w + sx as usize];
                                }
                            }
                        }
                        y[((img * cout + o) * h + yy) * w + xx] = s;
                    }
                }
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{randn, rng};

    #[test]
    fn layout_round_trip() {
        let mut r = rng(0);
        let x: Mat<f64> = randn(&mut r, 3, 2 * 12);
        let y = chw_to_nhwc(&x, 2, 12);
        assert_eq!(y.at(5, 1), x.at(0, 12 + 5));
        assert_eq!(nhwc_to_chw(&y, 3, 12).data, x.data);
    }

    #[test]
    fn im2col_col2im_are_adjoint() {
        // <im2col(x), c> = <x, col2im(c)> for random x, c
        let mut r = rng(1);
        let s = Hw { n: 2, h: 4, w: 5 };
        let x: Mat<f64> = randn(&mut r, s.pixels(), 3);
        let c: Mat<f64> = randn(&mut r, s.pixels(), 27);
        let mut cols = Mat::zeros(0, 0);
        im2col(&x, s, 3, &mut cols);
        let mut dx = Mat::zeros(s.pixels(), 3);
        col2im_add(&c, s, 3, &mut dx);
        let a: f64 = cols.data.iter().zip(&c.data).map(|(a, b)| a * b).sum();
        let b: f64 = x.data.iter().zip(&dx.data).map(|(a, b)| a * b).sum();
        assert!((a - b).abs() < 1e-10 * (1.0 + a.abs()), "{a} vs {b}");
    }
}
