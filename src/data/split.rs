//! Train / validation splits and per-column standardisation.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::Table;
use crate::data::{DataError, Result};

/// Reproducible shuffled split of `0..n` into `(train_idx, val_idx)`, both in
/// shuffled order. `val` gets `round(n * val_fraction)` rows, at least 1 if
/// `val_fraction > 0` and `n >= 2`, and at most `n - 1` (training keeps at
/// least one row). `val_fraction` must be in `[0, 1)`.
pub fn split_indices(n: usize, val_fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(DataError::InvalidArgument(format!(
            "validation fraction must be in [0, 1), got {val_fraction}"
        )));
    }
    let mut n_val = (n as f64 * val_fraction).round() as usize;
    if val_fraction > 0.0 && n >= 2 {
        n_val = n_val.max(1);
    }
    n_val = n_val.min(n.saturating_sub(1));
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    perm.shuffle(&mut rng);
    let train = perm.split_off(n_val);
    Ok((train, perm))
}

/// Per-column standardisation `(x - mean) / std`, fitted on training data.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Standardizer {
    /// Fits mean and population std (divide by n) per column. Errors on an
    /// empty table, NaN/Inf values, or a constant column (naming it).
    pub fn fit(t: &Table) -> Result<Standardizer> {
        t.check_finite()?;
        let n = t.rows as f64;
        let (mut mean, mut std) = (vec![0.0; t.cols], vec![0.0; t.cols]);
        for c in 0..t.cols {
            let col = || (0..t.rows).map(|r| t.data[r * t.cols + c]);
            let first = t.data[c];
            if col().all(|v| v == first) {
                return Err(DataError::ConstantColumn {
                    source_name: t.source.clone(),
                    column: t.columns[c].clone(),
                });
            }
            // sums of x / scale, so values near the top of f64's range (1e300) do not overflow the sums; a power
            // of two (exact division), and 1 for ordinary data (the same bits as a plain sum)
            let top = col().fold(0.0f64, |m, v| m.max(v.abs()));
            let scale = if top < 1e150 {
                1.0
            } else {
                2f64.powi(top.log2().ceil() as i32 - 1)
            };
            let m = col().map(|v| v / scale).sum::<f64>() / n;
            let var = col().map(|v| (v / scale - m).powi(2)).sum::<f64>() / n;
            let (mu, sd) = (m * scale, var.sqrt() * scale);
            if !(sd.is_finite() && sd > 0.0 && mu.is_finite()) {
                return Err(DataError::ColumnRange {
                    source_name: t.source.clone(),
                    column: t.columns[c].clone(),
                    msg: format!(
                        "its values (up to {top:e} in size) differ, but their spread (std {sd:e}) cannot be \
                         represented in double precision; rescale the column"
                    ),
                });
            }
            mean[c] = mu;
            std[c] = sd;
        }
        Ok(Standardizer { mean, std })
    }

    /// mean 0, std 1: a no-op transform.
    pub fn identity(dim: usize) -> Standardizer {
        Standardizer {
            mean: vec![0.0; dim],
            std: vec![1.0; dim],
        }
    }

    /// In place `(x - mean) / std` on row-major data of width `mean.len()`.
    pub fn apply(&self, data: &mut [f64]) {
        let d = self.mean.len();
        if d == 0 {
            return;
        }
        debug_assert_eq!(data.len() % d, 0, "data length not a multiple of dim");
        for row in data.chunks_exact_mut(d) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
    }

    /// In place `x * std + mean` (inverse of [`Standardizer::apply`]).
    pub fn invert(&self, data: &mut [f64]) {
        let d = self.mean.len();
        if d == 0 {
            return;
        }
        debug_assert_eq!(data.len() % d, 0, "data length not a multiple of dim");
        for row in data.chunks_exact_mut(d) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = *x * s + m;
            }
        }
    }

    /// `log|det d(standardised)/d(x)| = -sum(ln std)`: add this to a
    /// log-density computed in standardised space to get the log-density in
    /// the data's units.
    pub fn log_abs_det(&self) -> f64 {
        -self.std.iter().map(|s| s.ln()).sum::<f64>()
    }
}
