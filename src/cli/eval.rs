//! `nflow eval`: log-likelihood of data under a saved model.

use super::*;

#[derive(Args, Debug)]
pub(super) struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: String,
    #[command(flatten)]
    sel: DataSel,
    /// Write one log-probability per row to this file (.csv, .csv.gz, .npy, .parquet or .arrow).
    #[arg(long)]
    per_sample: Option<PathBuf>,
    /// Print one JSON object: n, dim, mean_log_prob, stderr, nll, bits_per_dim, median_log_prob,
    /// trimmed_mean_log_prob (5% cut at each end), far_tail_rows (below Q1 - 3 IQR) and worst_rows.
    #[arg(long)]
    json: bool,
    /// Seed of a toy source.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub(super) fn eval(a: EvalArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    let full = data::load_source(&a.data, a.sel.toy_n, a.seed)?;
    let c = model.select_context(&full)?;
    let t = model.select_columns(full.select(a.sel.columns.as_deref(), &a.sel.drop)?)?;
    let (t, c) = complete_rows(t, c, &a.sel)?;
    let (lp, ld) = model.log_prob_parts(&t, c.as_ref())?;
    let sm = nflow::train::scores::summarize(&lp);
    let (mean, se) = (sm.mean, sm.stderr);
    // the figure in the preprocessed space (of images: dequantised, logit); per-column supports have none
    let pre_mean = model
        .preprocess
        .as_ref()
        .is_some_and(|p| p.columns.is_empty())
        .then(|| stats(&lp.iter().zip(&ld).map(|(a, b)| a - b).collect::<Vec<_>>()).0);
    if let Some(p) = &a.per_sample {
        let out = Table::new(vec!["log_prob".into()], lp.len(), lp.clone(), "per-sample");
        data::write_table(p, &out)?;
    }
    if a.json {
        let o = serde_json::json!({
            "n": t.rows, "dim": t.cols, "mean_log_prob": mean, "stderr": se, "nll": -mean,
            "bits_per_dim": nflow::train::bits_per_dim(mean, t.cols), "data": t.source,
            "mean_log_prob_preprocessed": pre_mean, "median_log_prob": sm.median,
            "trimmed_mean_log_prob": sm.trimmed_mean, "far_tail_rows": sm.far_tail_rows,
            "far_tail_threshold": sm.far_tail_threshold, "worst_rows": sm.worst,
        });
        println!("{o}");
    } else {
        println!(
            "{}: {} rows x {} dims: mean log-likelihood {:.4} ± {:.4} nats (NLL {:.4})",
            t.source, t.rows, t.cols, mean, se, -mean
        );
        println!(
            "  median {:.4}, 5%-trimmed mean {:.4}",
            sm.median, sm.trimmed_mean
        );
        if sm.far_tail_rows > 0 {
            let worst: Vec<String> = sm
                .worst
                .iter()
                .take(3)
                .map(|w| format!("row {} ({:.1})", w.row, w.log_prob))
                .collect();
            println!(
                "  {} row(s) far in the lower tail (below {:.2} = Q1 - 3 IQR), which the mean includes; \
                 lowest (rows counted from 0): {}",
                sm.far_tail_rows,
                sm.far_tail_threshold,
                worst.join(", ")
            );
        }
        if let Some(m) = pre_mean {
            println!(
                "  preprocessed space: {m:.4} nats; {:.4} bits/dim in the data's space",
                nflow::train::bits_per_dim(mean, t.cols)
            );
        }
    }
    Ok(())
}
