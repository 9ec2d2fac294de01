//! A summary of per-row log-likelihoods that one row far outside the training data cannot hide: beside the
//! mean and its standard error, the median, a trimmed mean, and the rows in the far lower tail (below Tukey's
//! outer fence `Q1 - 3 IQR`) with the worst of them named.

use serde::Serialize;

/// One row and its log-likelihood.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RowScore {
    pub row: usize,
    pub log_prob: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoreSummary {
    pub n: usize,
    pub mean: f64,
    pub stderr: f64,
    pub median: f64,
    /// Mean of the rows between the 5th and 95th percentiles.
    pub trimmed_mean: f64,
    /// `Q1 - 3 (Q3 - Q1)`: rows below it are far in the lower tail.
    pub far_tail_threshold: f64,
    pub far_tail_rows: usize,
    /// The lowest rows (at most five), lowest first.
    pub worst: Vec<RowScore>,
}

/// Linear-interpolation quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos - pos.floor());
    if i + 1 < sorted.len() {
        sorted[i] * (1.0 - f) + sorted[i + 1] * f
    } else {
        sorted[i]
    }
}

/// The summary of `lp` (at least one value, all finite).
pub fn summarize(lp: &[f64]) -> ScoreSummary {
    let n = lp.len();
    assert!(n > 0, "summarize: no rows");
    let mean = lp.iter().sum::<f64>() / n as f64;
    let var = lp.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0).max(1.0);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| lp[a].total_cmp(&lp[b]));
    let sorted: Vec<f64> = idx.iter().map(|&i| lp[i]).collect();
    let (q1, q3) = (quantile(&sorted, 0.25), quantile(&sorted, 0.75));
    let fence = q1 - 3.0 * (q3 - q1);
    let (lo, hi) = (
        (0.05 * n as f64).floor() as usize,
        n - (0.05 * n as f64).floor() as usize,
    );
    let kept = &sorted[lo..hi.max(lo + 1)];
    ScoreSummary {
        n,
        mean,
        stderr: (var / n as f64).sqrt(),
        median: quantile(&sorted, 0.5),
        trimmed_mean: kept.iter().sum::<f64>() / kept.len() as f64,
        far_tail_threshold: fence,
        far_tail_rows: sorted.iter().take_while(|&&v| v < fence).count(),
        worst: idx
            .iter()
            .take(5)
            .map(|&row| RowScore {
                row,
                log_prob: lp[row],
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_far_row_moves_the_mean_but_not_the_median_or_trimmed_mean() {
        let mut lp: Vec<f64> = (0..1000)
            .map(|i| -4.0 + ((i * 37) % 100) as f64 / 100.0)
            .collect();
        let clean = summarize(&lp);
        assert_eq!(clean.far_tail_rows, 0);
        lp[123] = -242_203.0;
        let s = summarize(&lp);
        assert!(s.mean < -200.0, "{}", s.mean);
        assert!((s.median - clean.median).abs() < 0.01);
        assert!((s.trimmed_mean - clean.trimmed_mean).abs() < 0.01);
        assert_eq!(s.far_tail_rows, 1);
        assert_eq!(
            s.worst[0],
            RowScore {
                row: 123,
                log_prob: -242_203.0
            }
        );
        assert_eq!(s.worst.len(), 5);
        // quantiles interpolate; a single row is its own summary
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        let one = summarize(&[-3.0]);
        assert_eq!(
            (one.median, one.trimmed_mean, one.far_tail_rows),
            (-3.0, -3.0, 0)
        );
    }
}
