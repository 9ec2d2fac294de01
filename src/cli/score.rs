//! `nflow score`: each row's log-density and where it falls among the held-out rows of the model's training
//! data (anomaly scoring: the lowest percentiles are the unusual rows).

use super::*;

#[derive(Args, Debug)]
pub(super) struct ScoreArgs {
    #[arg(long)]
    model: PathBuf,
    /// Rows to score (any data source; the model's columns are picked by name, others such as a label or an
    /// id are left out of the density and copied to the output when numeric).
    #[arg(long)]
    data: String,
    #[command(flatten)]
    sel: DataSel,
    /// Output: .csv, .csv.gz or .npy (without: CSV on standard output). Columns: log_prob, percentile (0-100
    /// among the held-out rows kept with the model), flagged (with --flag-fpr), then the data's columns.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Flag rows whose percentile is below 100 x FPR: about this fraction of rows like the training data's
    /// get flagged (the false-positive rate).
    #[arg(long)]
    flag_fpr: Option<f64>,
    /// Seed of a toy source.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub(super) fn score(a: ScoreArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    if let Some(f) = a.flag_fpr {
        if !(f > 0.0 && f < 1.0) {
            bail!("--flag-fpr must be between 0 and 1 (a fraction, e.g. 0.01), got {f}");
        }
    }
    // a model with nothing to rank against is refused before the data is read
    nflow::train::scores::percentiles(&model, &[]).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; retrain it, or use eval --per-sample for the log-densities alone",
            a.model.display()
        )
    })?;
    let full = data::load_source(&a.data, a.sel.toy_n, a.seed)?;
    let c = model.select_context(&full)?;
    let chosen = full.select(a.sel.columns.as_deref(), &a.sel.drop)?;
    // rows with a missing cell in the model's columns or the context are left out under --drop-missing
    let (chosen, c) = match a.sel.drop_missing {
        true => {
            let keep = data::complete_rows(&model.select_columns(chosen.clone())?, c.as_ref());
            note_left_out(&chosen.source, chosen.rows - keep.len(), keep.len());
            (chosen.take_rows(&keep), c.map(|c| c.take_rows(&keep)))
        }
        false => (chosen, c),
    };
    let t = model.select_columns(chosen.clone())?;
    let lp = model.log_prob_ctx(&t, c.as_ref())?;
    let mut columns = vec!["log_prob".to_string(), "percentile".to_string()];
    if a.flag_fpr.is_some() {
        columns.push("flagged".into());
    }
    columns.extend(chosen.columns.iter().cloned());
    let mut rows = Vec::with_capacity(t.rows * columns.len());
    let mut flagged = 0;
    let percentiles = nflow::train::scores::percentiles(&model, &lp)?;
    for (r, (&l, &p)) in lp.iter().zip(&percentiles).enumerate() {
        rows.push(l);
        rows.push(p);
        if let Some(f) = a.flag_fpr {
            let flag = p < 100.0 * f;
            flagged += flag as usize;
            rows.push(flag as u8 as f64);
        }
        rows.extend_from_slice(chosen.row(r));
    }
    let out = Table::new(columns, t.rows, rows, "scores");
    let mut sink = match &a.out {
        Some(p) => data::TableSink::for_path(p, &out.columns, out.rows)?,
        None => data::TableSink::stdout(&out.columns)?,
    };
    sink.push(&out)?;
    sink.finish()?;
    let n_ref = model.summary.as_ref().map_or(0, |s| s.n_val);
    let mut msg = format!(
        "scored {} rows of {} against {n_ref} held-out rows of the training data",
        t.rows, t.source
    );
    if let Some(f) = a.flag_fpr {
        msg += &format!(
            "; flagged {flagged} ({:.2}%) below the {:.2}th percentile",
            100.0 * flagged as f64 / t.rows.max(1) as f64,
            100.0 * f
        );
    }
    if let Some(p) = &a.out {
        msg += &format!("; wrote {}", p.display());
    }
    eprintln!("{msg}");
    Ok(())
}
