//! The numeric core: a row-major matrix type generic over `f32`/`f64`, the kernels that operate on it
//! (behind the narrow interface in [`kernels`]), and the seeded random number generator.
//!
//! Batches of vectors are `(batch, features)` matrices. Images (later) are `(batch, C*H*W)` matrices whose
//! transforms know their `(C, H, W)` layout, so the same type carries NCHW tensors without a second tensor type.

pub mod conv;
pub mod kernels;
pub mod pool;
pub(crate) mod sgemm;
pub mod vmath;

use num_traits::{Float as NumFloat, FromPrimitive, ToPrimitive};
use rand::SeedableRng;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// Floating-point element type of the engine: `f32` for training, `f64` for gradient and Jacobian tests.
pub trait Float:
    NumFloat
    + FromPrimitive
    + ToPrimitive
    + Default
    + Debug
    + Send
    + Sync
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + 'static
{
    /// Name used in the weights file (`"f32"` / `"f64"`).
    const DTYPE: &'static str;
    fn c(v: f64) -> Self;
    fn f64(self) -> f64;
    /// Little-endian bytes, for the weights file.
    fn to_le(v: &[Self]) -> Vec<u8>;
    fn from_le(b: &[u8]) -> Vec<Self>;
}

impl Float for f32 {
    const DTYPE: &'static str = "f32";
    #[inline(always)]
    fn c(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    fn to_le(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_le(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

impl Float for f64 {
    const DTYPE: &'static str = "f64";
    #[inline(always)]
    fn c(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    fn to_le(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_le(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }
}

/// Row-major `rows x cols` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat<F> {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<F>,
}

impl<F: Float> Mat<F> {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![F::zero(); rows * cols],
        }
    }
    pub fn from_vec(rows: usize, cols: usize, data: Vec<F>) -> Self {
        assert_eq!(data.len(), rows * cols, "Mat::from_vec: size mismatch");
        Mat { rows, cols, data }
    }
    pub fn from_f64(rows: usize, cols: usize, data: &[f64]) -> Self {
        Self::from_vec(rows, cols, data.iter().map(|&v| F::c(v)).collect())
    }
    pub fn to_f64(&self) -> Vec<f64> {
        self.data.iter().map(|v| v.f64()).collect()
    }
    #[inline]
    pub fn row(&self, i: usize) -> &[F] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
    #[inline]
    pub fn row_mut(&mut self, i: usize) -> &mut [F] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> F {
        self.data[i * self.cols + j]
    }
    /// Gather columns `idx` into a new `rows x idx.len()` matrix.
    pub fn gather_cols(&self, idx: &[usize]) -> Mat<F> {
        let mut out = Mat::zeros(self.rows, idx.len());
        for r in 0..self.rows {
            let src = self.row(r);
            let dst = out.row_mut(r);
            for (d, &j) in dst.iter_mut().zip(idx) {
                *d = src[j];
            }
        }
        out
    }
    /// Write the columns of `src` into columns `idx` of `self`.
    pub fn scatter_cols(&mut self, idx: &[usize], src: &Mat<F>) {
        assert_eq!(src.cols, idx.len());
        assert_eq!(src.rows, self.rows);
        for r in 0..self.rows {
            let s = src.row(r);
            let cols = self.cols;
            let d = &mut self.data[r * cols..(r + 1) * cols];
            for (&v, &j) in s.iter().zip(idx) {
                d[j] = v;
            }
        }
    }
    /// `[self | other]` column-wise concatenation.
    pub fn hcat(&self, other: &Mat<F>) -> Mat<F> {
        assert_eq!(self.rows, other.rows);
        let cols = self.cols + other.cols;
        let mut out = Mat::zeros(self.rows, cols);
        for r in 0..self.rows {
            let d = out.row_mut(r);
            d[..self.cols].copy_from_slice(self.row(r));
            d[self.cols..].copy_from_slice(other.row(r));
        }
        out
    }
    /// Rows `idx` of `self`.
    pub fn take_rows(&self, idx: &[usize]) -> Mat<F> {
        let mut out = Mat::zeros(idx.len(), self.cols);
        for (k, &i) in idx.iter().enumerate() {
            out.row_mut(k).copy_from_slice(self.row(i));
        }
        out
    }
    /// Rows `start..end`.
    pub fn slice_rows(&self, start: usize, end: usize) -> Mat<F> {
        Mat::from_vec(
            end - start,
            self.cols,
            self.data[start * self.cols..end * self.cols].to_vec(),
        )
    }
    /// Index of the first non-finite entry, if any.
    pub fn first_non_finite(&self) -> Option<(usize, usize)> {
        // whole blocks checked without an early exit (so the check vectorises), then the first bad block searched
        const BLOCK: usize = 256;
        let bad = self
            .data
            .chunks(BLOCK)
            .position(|c| !c.iter().fold(true, |ok, v| ok & v.is_finite()))?;
        let p = bad * BLOCK
            + self.data[bad * BLOCK..]
                .iter()
                .position(|v| !v.is_finite())
                .expect("the block holds one");
        Some((p / self.cols.max(1), p % self.cols.max(1)))
    }
}

/// The seeded random number generator used everywhere: same seed, same stream, on every platform.
pub type Rng = rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// Keep freed memory in the process instead of returning it to the kernel. Training allocates and frees the
/// same large activation buffers every step; with glibc's defaults each one is a fresh `mmap` whose pages are
/// faulted in and zeroed by the kernel again (measured: a third of a Glow training step). Call once at start-up.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Values per separately seeded block of a large [`randn`] draw: a fixed size, so the same values on any
/// number of threads.
const RANDN_BLOCK: usize = 1 << 14;

/// Standard normal draws. A large draw (a sampling batch of image-sized noise) takes one seed from `rng` and
/// fills blocks of [`RANDN_BLOCK`] values from their own ChaCha streams of that seed, on the pool.
pub fn randn<F: Float>(rng: &mut Rng, rows: usize, cols: usize) -> Mat<F> {
    use rand_distr::{Distribution, StandardNormal};
    let fill = |r: &mut Rng, out: &mut [F]| {
        for v in out {
            let z: f64 = StandardNormal.sample(r);
            *v = F::c(z);
        }
    };
    let mut data = vec![F::zero(); rows * cols];
    if data.len() < 2 * RANDN_BLOCK {
        fill(rng, &mut data);
    } else {
        use rand::Rng as _;
        use rayon::prelude::*;
        let seed: u64 = rng.gen();
        data.par_chunks_mut(RANDN_BLOCK)
            .enumerate()
            .for_each(|(i, block)| {
                let mut r = Rng::seed_from_u64(seed);
                r.set_stream(i as u64);
                fill(&mut r, block);
            });
    }
    Mat::from_vec(rows, cols, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large draw gives the same values on one thread and on two, standard normal moments over the whole
    /// draw, and blocks that differ from each other (each from its own stream); the caller's stream moves on.
    #[test]
    fn large_randn_is_the_same_on_any_pool() {
        let draw = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut r = rng(7);
                let a: Mat<f64> = randn(&mut r, 5, RANDN_BLOCK);
                let b: Mat<f64> = randn(&mut r, 5, RANDN_BLOCK);
                (a, b)
            })
        };
        let ((a1, b1), (a2, _)) = (draw(1), draw(2));
        assert_eq!(a1.data, a2.data);
        assert_ne!(a1.data, b1.data, "two draws from one stream repeat");
        let n = a1.data.len() as f64;
        let mean = a1.data.iter().sum::<f64>() / n;
        let var = a1.data.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        // 81920 draws: the standard error of the mean is 0.0035, of the variance 0.005
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "mean {mean} var {var}"
        );
        let blocks: Vec<&[f64]> = a1.data.chunks(RANDN_BLOCK).collect();
        for i in 1..blocks.len() {
            assert_ne!(blocks[0][..8], blocks[i][..8], "block {i} repeats block 0");
        }
    }

    /// The first NaN / Inf in row-major order, wherever it sits relative to the checked blocks; none when all
    /// are finite.
    #[test]
    fn first_non_finite_finds_the_first() {
        let (rows, cols) = (9, 70);
        let clean = Mat::from_vec(rows, cols, (0..rows * cols).map(|i| i as f32).collect());
        assert_eq!(clean.first_non_finite(), None);
        for at in [0, 255, 256, 300, rows * cols - 1] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut m = clean.clone();
                m.data[at] = bad;
                // a later one in the same or a later block does not matter
                m.data[(at + 1).min(rows * cols - 1)] = f32::NAN;
                m.data[rows * cols - 1] = f32::INFINITY;
                assert_eq!(
                    m.first_non_finite(),
                    Some((at / cols, at % cols)),
                    "at {at}"
                );
            }
        }
    }
}
