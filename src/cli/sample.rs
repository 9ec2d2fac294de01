//! `nflow sample`: draws from a saved model (given contexts for a conditional one), CSV / NPY / image grids.

use super::*;

#[derive(Args, Debug)]
pub(super) struct SampleArgs {
    #[arg(long)]
    model: PathBuf,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 1000)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file: .csv, .csv.gz or .npy (without --out and --grid: CSV on standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Image models: also write the samples as a PNG grid (pixel values clamped to the data's range).
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Images per row of the grid.
    #[arg(long, default_value_t = 10)]
    grid_cols: usize,
    /// Sample from the prior scaled by T (Glow's temperature; T < 1 gives smoother, more typical samples).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Conditional model: one context row as comma-separated values (in the order of the model's context
    /// columns); `-n` samples are drawn given it.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "context_file")]
    context: Option<String>,
    /// Conditional model: a CSV with the context columns (by name); `-n` samples are drawn per context row.
    /// Output: n rows for context row 1, then n rows for row 2, ...; columns: the model's data columns
    /// followed by the context columns.
    #[arg(long)]
    context_file: Option<String>,
}

pub(super) fn sample(a: SampleArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    if a.n == 0 {
        bail!("-n must be at least 1");
    }
    let ctx = context_rows(&model, a.context.as_deref(), a.context_file.as_deref())?;
    let rows = ctx.as_ref().map_or(Some(a.n), |c| c.rows.checked_mul(a.n));
    let rows = rows.with_context(|| format!("-n {} for each context row: too many rows", a.n))?;
    // samples, then their context columns
    let mut columns = model.columns.clone();
    if let Some(c) = &ctx {
        columns.extend(c.columns.iter().cloned());
    }
    // the outputs opened first (a bad name or folder fails before any work); rows are written as each chunk
    // is drawn, so any -n that fits on disk runs in bounded memory, and a file appears only when complete
    let mut sinks = Vec::new();
    if a.out.is_none() && a.grid.is_none() {
        sinks.push(data::TableSink::stdout(&columns)?);
    }
    if let Some(out) = &a.out {
        sinks.push(data::TableSink::for_path(out, &columns, rows)?);
    }
    // a grid is one picture of every sample: those are kept in memory
    let mut pictures: Option<Vec<f64>> = match &a.grid {
        Some(g) => {
            let bytes = (rows as u128).saturating_mul(16 * model.dim() as u128);
            nflow::engine::check_fits(bytes, &format!("a grid of {rows} samples"))
                .map_err(|m| anyhow::anyhow!("{}: {m}", g.display()))?;
            Some(Vec::new())
        }
        None => None,
    };
    model.sample_chunks(a.n, a.seed, ctx.as_ref(), a.temperature, |x, cr| {
        let both;
        let s = match &cr {
            Some(c) => {
                both = x.hcat(c)?;
                &both
            }
            None => &x,
        };
        for sink in &mut sinks {
            sink.push(s)?;
        }
        if let Some(p) = pictures.as_mut() {
            p.extend_from_slice(&x.data);
        }
        // a reader that went away (`| head`) ends the run
        Ok(pictures.is_some() || sinks.iter().any(|s| !s.closed()))
    })?;
    for sink in sinks {
        sink.finish()?;
    }
    if let Some(out) = &a.out {
        eprintln!("wrote {rows} samples to {}", out.display());
    }
    if let Some(g) = &a.grid {
        let shape = model
            .arch
            .image
            .or_else(|| data::shape_from_columns(&model.columns))
            .with_context(|| {
                format!(
                    "{}: not an image model (no image shape), cannot write a grid",
                    a.model.display()
                )
            })?;
        let x = pictures.unwrap_or_default();
        let max = nflow::plot::pixel_max(&model, &x);
        let d = model.dim();
        let images: Vec<Vec<f64>> = x.chunks(d).map(<[f64]>::to_vec).collect();
        // a conditional model: a captioned line per context row
        let lines = match &ctx {
            Some(c) => images
                .chunks(a.n)
                .enumerate()
                .map(|(i, im)| nflow::plot::ImageRow {
                    caption: context_caption(c, i),
                    images: im.to_vec(),
                })
                .collect(),
            None => vec![nflow::plot::ImageRow {
                caption: String::new(),
                images,
            }],
        };
        let title = format!(
            "{} samples of {}, temperature {}",
            rows,
            super::plot::folder_name(&a.model),
            a.temperature
        );
        nflow::plot::image_grid_png(g, &title, shape, max, &lines, a.grid_cols)?;
        eprintln!("wrote a grid of {rows} samples to {}", g.display());
    }
    Ok(())
}

/// A context row as words: `label = 3`, `a = 0.5, b = 1`.
pub(super) fn context_caption(c: &Table, row: usize) -> String {
    c.columns
        .iter()
        .zip(c.row(row))
        .map(|(n, v)| format!("{n} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The context rows for sampling a conditional model (`--context v1,v2` or `--context-file F`).
pub(super) fn context_rows(
    model: &Model,
    values: Option<&str>,
    file: Option<&str>,
) -> Result<Option<Table>> {
    let k = model.context_columns.len();
    if k == 0 && (values.is_some() || file.is_some()) {
        bail!("the model takes no context");
    }
    let t = match (values, file) {
        (Some(v), _) => {
            let vals = super::parse_numbers("--context", v)?;
            if vals.len() != k {
                bail!(
                    "--context has {} values, the model's context has {k} columns ({})",
                    vals.len(),
                    model.context_columns.join(", ")
                );
            }
            Table::new(model.context_columns.clone(), 1, vals, "--context")
        }
        (None, Some(f)) => {
            let full = data::load_source(f, 0, 0)?;
            match model.select_context(&full)? {
                Some(c) => c,
                None => bail!("{f}: the model takes no context"),
            }
        }
        (None, None) if k > 0 => bail!(
            "the model is conditional on {}: give --context VALUES or --context-file FILE",
            model.context_columns.join(", ")
        ),
        (None, None) => return Ok(None),
    };
    Ok(Some(t))
}
