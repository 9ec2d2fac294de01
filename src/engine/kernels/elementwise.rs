//! Element-wise work over large buffers, split over the rayon pool in fixed-size chunks (results independent of
//! the thread count): fills ([`bias_rows`], [`zeros`], [`fill_rows`]) and the [`linear`] layer built on one,
//! maps and zips, and column sums.

use super::dispatch::gemm;
use crate::engine::{Float, Mat};
use rayon::prelude::*;

/// Element-wise chunk size for the rayon pool.
const CHUNK: usize = 1 << 14;

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
}
