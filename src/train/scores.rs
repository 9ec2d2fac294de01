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

/// At most this many reference scores are kept with a model (a 0.05%-step grid of quantiles: enough to rank a
/// row to a tenth of a percent, small in `config.json`).
pub const REFERENCE_POINTS: usize = 2001;

/// Held-out scores as kept with a model: all of them sorted, or [`REFERENCE_POINTS`] evenly spaced order
/// statistics of them (the smallest and largest included). Non-finite scores are left out.
pub fn reference_quantiles(mut lp: Vec<f64>) -> Vec<f64> {
    lp.retain(|v| v.is_finite());
    lp.sort_by(f64::total_cmp);
    if lp.len() <= REFERENCE_POINTS {
        return lp;
    }
    let m = (REFERENCE_POINTS - 1) as f64;
    (0..REFERENCE_POINTS)
        .map(|i| quantile(&lp, i as f64 / m))
        .collect()
}

/// Where `score` falls among the reference scores (ascending, evenly spaced ranks), in percent: the
/// interpolated empirical distribution function, 0 below the lowest and 100 at or above the highest. A row
/// at percentile 1 scores lower than 99% of the held-out rows.
pub fn percentile(reference: &[f64], score: f64) -> f64 {
    let n = reference.len();
    if n == 0 || score.is_nan() {
        return f64::NAN;
    }
    if score < reference[0] {
        return 0.0;
    }
    if n == 1 || score >= reference[n - 1] {
        return 100.0;
    }
    // the last reference point at or below the score
    let i = reference.partition_point(|&r| r <= score) - 1;
    let (a, b) = (reference[i], reference[i + 1]);
    let within = if b > a { (score - a) / (b - a) } else { 0.0 };
    100.0 * (i as f64 + within) / (n - 1) as f64
}

/// Each log-density's [`percentile`] among the held-out rows kept with `model` at training time (what
/// `nflow score` and Python's `Flow.percentile` report); an error for a model that keeps none.
pub fn percentiles(model: &crate::Model, log_probs: &[f64]) -> crate::Result<Vec<f64>> {
    let reference = model
        .summary
        .as_ref()
        .map(|s| s.reference_log_probs.as_slice())
        .unwrap_or_default();
    if reference.is_empty() {
        return Err(crate::Error::Config(
            "the model keeps no held-out scores to rank rows against (trained by an older nflow, by \
             reverse KL, or with no validation split)"
                .into(),
        ));
    }
    Ok(log_probs
        .iter()
        .map(|&l| percentile(reference, l))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentiles rank a score among the reference: the empirical distribution function at the reference
    /// points, interpolated between them, 0 and 100 outside; a long reference is cut to its quantiles and
    /// ranks the same within one grid step.
    #[test]
    fn percentiles_rank_scores_among_the_reference() {
        let r = reference_quantiles(vec![3.0, 1.0, f64::NEG_INFINITY, 2.0, 5.0, 4.0]);
        assert_eq!(r, [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(percentile(&r, 0.5), 0.0);
        assert_eq!(percentile(&r, 1.0), 0.0);
        assert_eq!(percentile(&r, 2.0), 25.0);
        assert_eq!(percentile(&r, 3.5), 62.5);
        assert_eq!(percentile(&r, 5.0), 100.0);
        assert_eq!(percentile(&r, 9.0), 100.0);
        assert!(percentile(&[], 1.0).is_nan());
        // 100001 evenly spread scores: 2001 points kept, and a score's rank is its place within 0.05%
        let long: Vec<f64> = (0..100_001).rev().map(|i| i as f64).collect();
        let q = reference_quantiles(long);
        assert_eq!(q.len(), REFERENCE_POINTS);
        assert_eq!((q[0], q[REFERENCE_POINTS - 1]), (0.0, 100_000.0));
        for s in [123.0, 999.5, 50_000.0, 98_765.0] {
            assert!(
                (percentile(&q, s) - s / 1000.0).abs() < 0.05,
                "{s}: {}",
                percentile(&q, s)
            );
        }
    }

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
