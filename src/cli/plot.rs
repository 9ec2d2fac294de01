//! `nflow plot` and `nflow curve`: a model's density and samples; its learning curve.

use super::sample::context_rows;
use super::*;

#[derive(Args, Debug)]
pub(super) struct PlotArgs {
    #[arg(long)]
    model: PathBuf,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Data to show beside the samples.
    #[arg(long)]
    data: Option<String>,
    #[command(flatten)]
    sel: DataSel,
    /// Number of samples drawn.
    #[arg(long, default_value_t = 3000)]
    samples: usize,
    /// Grid points per axis of the density heat map.
    #[arg(long, default_value_t = 200)]
    grid: usize,
    /// Dimensions shown in the pairwise plot.
    #[arg(long, default_value_t = 5)]
    max_dims: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Conditional model: the context row (comma-separated values) to plot p(x | c) for.
    #[arg(long, allow_hyphen_values = true)]
    context: Option<String>,
    /// The change of variables layer by layer: per stage from data to noise its density, a regular grid of
    /// the data space carried through the maps and the points (--data rows, else samples) shaded by where they
    /// started; under each layer its log|det J|. More than 2 columns: the plane of --axes through the
    /// --reference row. Image models: a picture's latents per scale and images rebuilt from them.
    #[arg(long)]
    layers: bool,
    /// With --layers on an image model: the temperatures of the rebuilt images' columns.
    #[arg(long, requires = "layers", default_value = "0,0.5,0.7,1")]
    temperatures: String,
    /// With --layers: the two columns (names) on the panels' axes; default: the first two.
    #[arg(long, requires = "layers")]
    axes: Option<String>,
    /// With --layers: the row (comma-separated values, every column) the other columns are held at; default:
    /// each column's median over the points.
    #[arg(long, requires = "layers", allow_hyphen_values = true)]
    reference: Option<String>,
}

#[derive(Args, Debug)]
pub(super) struct CurveArgs {
    #[arg(long)]
    model: PathBuf,
    /// CSV output.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// PNG output: x = minutes of training, y = bits/dim (or NLL); blue = test (--monitor rows), orange =
    /// validation, green = training average since the previous evaluation.
    #[arg(long)]
    png: Option<PathBuf>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn plot_model(
    model: &Model,
    ctx: Option<&Table>,
    data: Option<&Table>,
    out: &Path,
    n: usize,
    grid: usize,
    max_dims: usize,
    seed: u64,
) -> Result<()> {
    // a conditional model is drawn given one context row, repeated for every sample and grid point
    let repeat = |rows: usize| ctx.map(|c| c.take_rows(&vec![0; rows]));
    let s = model.sample(n, seed, repeat(n).as_ref())?;
    if model.dim() == 2 {
        let pts = |t: &Table| -> Vec<[f64; 2]> {
            (0..t.rows).map(|i| [t.row(i)[0], t.row(i)[1]]).collect()
        };
        let sp = pts(&s);
        let dp = data.map(pts);
        let ext = nflow::plot::extent_of(dp.as_deref().unwrap_or(&sp));
        let g = grid.max(2);
        // the grid's points (and a context row each), their densities and the image: refused when too big
        let cells = (g as u128).saturating_mul(g as u128);
        nflow::engine::check_fits(
            cells.saturating_mul(64),
            &format!("a {g} x {g} density grid"),
        )
        .map_err(|m| anyhow::anyhow!("--grid {grid}: {m}"))?;
        let gt = Table::new(
            model.columns.clone(),
            g * g,
            nflow::plot::grid_points(ext, g),
            "grid",
        );
        let lp = model.log_prob_ctx(&gt, repeat(g * g).as_ref())?;
        let labels = nflow::plot::Labels {
            title: "model density".into(),
            x: model.columns[0].clone(),
            y: model.columns[1].clone(),
            series: Vec::new(),
        };
        nflow::plot::density_2d_png(out, &lp, g, g, ext, &sp, dp.as_deref(), &labels)?;
    } else {
        nflow::plot::pairs_png(
            out,
            &s.data,
            data.map(|d| d.data.as_slice()),
            model.dim(),
            max_dims,
            &model.columns,
        )?;
    }
    Ok(())
}

pub(super) fn plot(a: PlotArgs) -> Result<()> {
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let model = Model::load(&a.model)?;
    let data = match &a.data {
        Some(src) => Some(model.select_columns(load(src, &a.sel, a.seed.wrapping_add(1))?)?),
        None => None,
    };
    if a.layers && model.arch.is_image() {
        // a picture: the first --data row, else a sample
        let ctx = context_rows(&model, a.context.as_deref(), None)?;
        let pic = match &data {
            Some(d) => d.take_rows(&[0]),
            None => model.sample(1, a.seed, ctx.as_ref())?,
        };
        let temps = parse_temperatures(&a.temperatures)?;
        let title = format!(
            "{}: a {}'s latents per level and pictures rebuilt from them",
            folder_name(&a.model),
            if data.is_some() { "picture" } else { "sample" }
        );
        nflow::plot::latents_png(&a.out, &model, &pic, ctx.as_ref(), &temps, a.seed, &title)?;
        eprintln!("wrote {}", a.out.display());
        return Ok(());
    }
    if a.layers {
        if a.context.is_some() {
            bail!("--layers draws unconditional models (image models excepted): drop --context");
        }
        // at most 800 points leave the density visible under them
        let pts = match &data {
            Some(d) => d.take_rows(&(0..d.rows.min(800)).collect::<Vec<_>>()),
            None => model.sample(a.samples.min(800), a.seed, None)?,
        };
        let view = slice_view(&model, a.axes.as_deref(), a.reference.as_deref())?;
        let stages = nflow::plot::flow_stages(&model, &pts, a.grid.clamp(2, 400), &view)?;
        let name = a.model.file_name().map_or_else(
            || a.model.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let flow = model
            .preset
            .as_ref()
            .map_or("composed flow".to_string(), |p| p.kind.to_string());
        let plane = if model.dim() > 2 {
            let [x, y] = view.axes.map(|k| model.columns[k].as_str());
            format!(", plane ({x}, {y}) through the reference row")
        } else {
            String::new()
        };
        nflow::plot::layers_png(
            &a.out,
            &stages,
            &format!(
                "{name} ({flow}): the change of variables layer by layer, data to noise{plane}"
            ),
        )?;
        eprintln!("wrote {} ({} stages)", a.out.display(), stages.len());
        return Ok(());
    }
    let ctx = context_rows(&model, a.context.as_deref(), None)?;
    plot_model(
        &model,
        ctx.as_ref(),
        data.as_ref(),
        &a.out,
        a.samples,
        a.grid,
        a.max_dims,
        a.seed,
    )?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// `0,0.5,1`: finite, not negative, at most 12.
pub(super) fn parse_temperatures(s: &str) -> Result<Vec<f64>> {
    let t = super::parse_numbers("--temperatures", s)?;
    if let Some(bad) = t.iter().find(|t| **t < 0.0) {
        bail!("--temperatures: '{bad}' is negative");
    }
    if t.len() > 12 {
        bail!("--temperatures: at most 12, got {}", t.len());
    }
    Ok(t)
}

/// The plane of the layer figure from `--axes x,y` (column names) and `--reference v1,..,vD`.
pub(super) fn slice_view(
    model: &Model,
    axes: Option<&str>,
    reference: Option<&str>,
) -> Result<nflow::plot::SliceView> {
    let mut view = nflow::plot::SliceView::default();
    if let Some(a) = axes {
        let names: Vec<&str> = a.split(',').map(str::trim).collect();
        if names.len() != 2 {
            bail!("--axes takes two column names (x,y), got '{a}'");
        }
        for (k, n) in names.iter().enumerate() {
            view.axes[k] = model.columns.iter().position(|c| c == n).with_context(|| {
                format!(
                    "--axes: the model has no column '{n}' (columns: {})",
                    model.columns.join(", ")
                )
            })?;
        }
        if view.axes[0] == view.axes[1] {
            bail!("--axes: give two different columns, got '{a}'");
        }
    }
    if let Some(r) = reference {
        let vals = super::parse_numbers("--reference", r)?;
        if vals.len() != model.dim() {
            bail!(
                "--reference has {} values, the model has {} columns ({})",
                vals.len(),
                model.dim(),
                model.columns.join(", ")
            );
        }
        view.reference = Some(vals);
    }
    Ok(view)
}

/// The learning curve's rows from a model's log: step, minutes, epoch, train / validation / test figures (bits
/// per dim for image or dequantised models, else NLL), and whether they are bits/dim.
pub(super) fn curve_rows(dir: &Path, model: &Model) -> Result<(Vec<[f64; 6]>, bool)> {
    if model.log.is_empty() {
        bail!("{}: the model has no training log", dir.display());
    }
    let entries: Vec<nflow::train::LogEntry> = model
        .log
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: train_log.jsonl line {}", dir.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    let dim = model.dim();
    let bpd = model.arch.is_image() || model.preprocess.as_ref().is_some_and(|p| p.dequantize);
    // figure of merit from a mean log-likelihood (data units)
    let fig = |ll: f64| {
        if bpd {
            nflow::train::bits_per_dim(ll, dim)
        } else {
            -ll
        }
    };
    let nan = f64::NAN;
    let rows = entries
        .iter()
        .map(|e| {
            [
                e.step as f64,
                e.seconds / 60.0,
                e.epoch,
                fig(-e.train_nll),
                e.val_nll.map_or(nan, |v| fig(-v)),
                e.monitor_log_prob.map_or(nan, fig),
            ]
        })
        .collect();
    Ok((rows, bpd))
}

/// The learning curve as a PNG with its title, axis titles and legend.
pub(super) fn draw_curve(p: &Path, dir: &Path, rows: &[[f64; 6]], bpd: bool) -> Result<()> {
    let series = |k: usize| rows.iter().map(|r| (r[1], r[k])).collect::<Vec<_>>();
    let what = if bpd { "bits/dim" } else { "NLL (nats)" };
    let labels = nflow::plot::Labels {
        title: format!("Learning curve: {}", folder_name(dir)),
        x: "minutes of training".into(),
        y: format!("{what}, lower is better"),
        series: vec![
            format!("test (monitor rows) {what}"),
            format!("validation {what}"),
            format!("training {what} (batch mean)"),
        ],
    };
    nflow::plot::lines_png(p, &[series(5), series(4), series(3)], &labels)?;
    Ok(())
}

/// A model folder's name, for titles.
pub(super) fn folder_name(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

pub(super) fn curve(a: CurveArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    let (rows, bpd) = curve_rows(&a.model, &model)?;
    let unit = if bpd { "bits_per_dim" } else { "nll" };
    if let Some(p) = &a.csv {
        let cols = vec![
            "step".to_string(),
            "minutes".into(),
            "epoch".into(),
            format!("train_{unit}"),
            format!("val_{unit}"),
            format!("test_{unit}"),
        ];
        let t = Table::new(
            cols,
            rows.len(),
            rows.iter().flatten().copied().collect(),
            "curve",
        );
        data::write_csv(p, &t)?;
        eprintln!("wrote {} rows to {}", t.rows, p.display());
    }
    if let Some(p) = &a.png {
        draw_curve(p, &a.model, &rows, bpd)?;
        let ys: Vec<f64> = rows
            .iter()
            .flat_map(|r| [r[3], r[4], r[5]])
            .filter(|v| v.is_finite())
            .collect();
        eprintln!(
            "wrote {}: x = minutes 0..{:.1}, y = {unit} {:.3}..{:.3}; blue = test, orange = validation, green = train",
            p.display(),
            rows.last().map_or(0.0, |r| r[1]),
            ys.iter().cloned().fold(f64::INFINITY, f64::min),
            ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        );
    }
    if let Some(r) = rows.last() {
        println!(
            "step {} after {:.1} min: train {:.4}, validation {:.4}, test {:.4} ({unit})",
            r[0], r[1], r[3], r[4], r[5]
        );
    }
    Ok(())
}
