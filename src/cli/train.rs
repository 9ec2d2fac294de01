//! `nflow train`: the preset or architecture from the options, the trainer, the saved model and its report.

use super::*;

#[derive(Args, Debug)]
pub(super) struct TrainArgs {
    /// Training data: `toy:NAME` (moons, circles, 8gaussians, checkerboard, pinwheel, 2spirals, rings),
    /// or a .csv / .csv.gz (header row) / .npy / Parquet / Arrow (Feather v2) file.
    #[arg(long)]
    data: String,
    #[command(flatten)]
    sel: DataSel,
    /// Optional test data (same columns), evaluated after training.
    #[arg(long)]
    test: Option<String>,
    /// Flow: nice | realnvp | maf | iaf | maf-mog (MAF on a MADE MoG base; with --layers 0, MADE MoG) | glow |
    /// realnvp-multiscale (image flows: the image shape comes from image data - IDX files, PNG folders,
    /// CSVs with `c{c}_y{y}_x{x}` columns - or from --image-shape) | nsf-c | nsf-ar (rational-quadratic
    /// spline couplings / autoregressive layers, LU-linear layers between them).
    /// Default: chosen from the data (nsf-ar up to 16 columns, nsf-c beyond, glow for image data), with
    /// sizes that grow with the columns; what was chosen is printed.
    #[arg(long)]
    flow: Option<String>,
    /// The element-wise map of a coupling or autoregressive preset instead of its own: affine | additive |
    /// rq-spline | sinh-arcsinh, or a JSON object with options (`{"type": "rq-spline", "bins": 16}`).
    #[arg(long)]
    map: Option<String>,
    /// Train the architecture in this JSON (or .toml) file (a flow's layer list, base and embedding, as a
    /// model's config.json stores it under "flow"; "dim" and "context_dim" may be left out) instead of a preset.
    #[arg(long, conflicts_with_all = ["map", "layers"])]
    arch: Option<PathBuf>,
    /// Fit p(x | c): these columns (comma-separated names) are the context c, fed to every conditioner
    /// network; the remaining selected columns are x. `eval` reads the same columns from its data.
    #[arg(long, value_delimiter = ',')]
    context: Vec<String>,
    /// The context columns are class labels 0..K-1 (e.g. `--data idx:DIR:train:both --context label` for
    /// class-conditional MNIST): fed one-hot instead of standardised; K is read from the training data.
    #[arg(long, requires = "context")]
    context_one_hot: bool,
    /// A column of weights per row (finite, at least 0): the weighted likelihood is fitted and the
    /// validation figures are weighted means (the column is not part of the density).
    #[arg(long)]
    weights: Option<String>,
    /// Learned context embedding: the context goes through a small MLP to this many features before it
    /// reaches the conditioners (trained with the flow). 0: the context goes in as it is.
    #[arg(long, default_value_t = 0, requires = "context")]
    context_embed: usize,
    /// Hidden width of the context embedding.
    #[arg(long, default_value_t = 64)]
    embed_hidden: usize,
    /// Hidden layers of the context embedding.
    #[arg(long, default_value_t = 1)]
    embed_depth: usize,
    /// Number of flow layers (default: 4 for nice, 8 for realnvp, 5 for the autoregressive flows); image
    /// flows: steps per scale (default 8 for glow, 3 for realnvp-multiscale).
    #[arg(long)]
    layers: Option<usize>,
    /// Hidden width of the conditioner networks (image flows: channels of the CNN conditioners; default
    /// 128, or chosen with the flow).
    #[arg(long)]
    hidden: Option<usize>,
    /// Hidden layers of the conditioner networks (realnvp-multiscale: residual blocks; default: the
    /// preset's).
    #[arg(long)]
    depth: Option<usize>,
    /// Image flows: shape of one image as C,H,W (when the data does not say it).
    #[arg(long)]
    image_shape: Option<String>,
    /// Image flows: number of scales (levels); each squeezes 2x2 and all but the last factor out half the
    /// channels.
    #[arg(long, default_value_t = 2)]
    scales: usize,
    /// Image flows: affine | additive couplings.
    #[arg(long, default_value = "affine")]
    coupling: String,
    /// Image flows: Glow's learned conditional prior on every factored-out half.
    #[arg(long)]
    split_prior: bool,
    /// Spline flows: bins per spline.
    #[arg(long, default_value_t = 8)]
    bins: usize,
    /// Spline flows: the splines act on [-B, B], the identity outside.
    #[arg(long, default_value_t = 3.0)]
    tail_bound: f64,
    /// relu | tanh | elu | leaky-relu | silu.
    #[arg(long, default_value = "relu")]
    activation: String,
    /// alternate | halves | random.
    #[arg(long, default_value = "alternate")]
    mask: String,
    /// Autoregressive ordering of maf layers: alternate | natural | reversed | random.
    #[arg(long, default_value = "alternate")]
    order: String,
    /// Soft-clamp bound B of the affine log-scale, l = B tanh(h/B) (default 5; glow: sigmoid scale).
    #[arg(long)]
    scale_bound: Option<f64>,
    /// Use Glow's sigmoid(h + 2) scale instead of the soft clamp (the default for glow).
    #[arg(long, conflicts_with = "scale_bound")]
    sigmoid_scale: bool,
    /// Batch-norm bijector between layers (realnvp, maf).
    #[arg(long)]
    batch_norm: bool,
    /// ActNorm before every layer (realnvp, maf; always on in the image flows).
    #[arg(long)]
    actnorm: bool,
    /// Base distribution: normal | diag-normal | logistic | mixture (Gaussian mixture, learned) | student-t
    /// (heavy tails: Student-t marginals with learned degrees of freedom, for outliers) | made-mog
    /// (default: logistic for nice, made-mog for maf-mog, normal otherwise).
    #[arg(long)]
    base: Option<String>,
    /// Dequantise: add U(0, 1) noise to every value (integer data such as pixels or counts).
    #[arg(long)]
    dequantize: bool,
    /// Logit preprocessing: y = logit(λ + (1 - 2λ) x / LEVELS) with this λ (1e-6 in the MAF paper, 0.05 in
    /// RealNVP's). Reported log-likelihoods include its Jacobian (data units; images: bits/dim).
    #[arg(long)]
    logit: Option<f64>,
    /// Columns with values in [A, B] (`col=A:B`, repeatable or comma-separated): a logit map to the real
    /// line; reported likelihoods include its Jacobian and samples stay inside. With --integer, the integers
    /// A..=B.
    #[arg(long, value_delimiter = ',', value_name = "COL=A:B")]
    bounds: Vec<String>,
    /// Columns with positive values (comma-separated): a log map (with --integer: counts, 0 allowed).
    #[arg(long, value_delimiter = ',', value_name = "COL")]
    positive: Vec<String>,
    /// Integer-valued columns (comma-separated): dequantised per column, so likelihoods are of the integers
    /// (a lower bound on log P, as for pixels) and samples are integers.
    #[arg(long, value_delimiter = ',', value_name = "COL")]
    integer: Vec<String>,
    /// Values lie in [0, LEVELS] (after dequantisation), for --logit: 256 for 8-bit pixels.
    #[arg(long, default_value_t = 256.0)]
    levels: f64,
    /// Reduce 8-bit values to N bits first (Glow's n-bit images); likelihoods and bits/dim are then those of
    /// the N-bit data, and LEVELS is 2^N.
    #[arg(long)]
    n_bits: Option<u32>,
    /// Components of a mixture or made-mog base.
    #[arg(long, default_value_t = 10)]
    components: usize,
    /// How a mixture base initialises from the first batch: kmeans | data.
    #[arg(long, default_value = "kmeans")]
    mixture_init: String,
    /// MADE conditioners as ResMADE (residual blocks; --depth counts blocks).
    #[arg(long)]
    residual: bool,
    /// MADE hidden-unit degrees drawn at random (else cycled over 1..D-1).
    #[arg(long)]
    random_degrees: bool,
    /// Between layers: none | reverse | random | lu (learned LU-linear with a random permutation); glow:
    /// reverse | random (channel permutations) | 1x1 (invertible 1x1 convolution, the default) | lu (its
    /// LU-parameterised form) | none (couplings alternate halves).
    #[arg(long)]
    permute: Option<String>,
    /// Passes over the training split (ignored with --steps). Without --epochs and --steps, tabular data
    /// trains under a step cap that grows with the rows (200 passes, 10000 to 100000 steps) with the
    /// plateau schedule, which ends the run when it stops improving; image flows for 50 passes.
    #[arg(long)]
    epochs: Option<usize>,
    /// Optimiser steps (overrides --epochs).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// adam | adamw.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// constant | warmup | cosine | plateau (halve the rate after --patience evaluations without a better
    /// validation figure; stop at the plateau after --decays halvings). Default: plateau when neither
    /// --epochs nor --steps is given (and there is a validation split), else constant.
    #[arg(long)]
    schedule: Option<String>,
    /// Plateau schedule: learning-rate halvings before a plateau stops the run.
    #[arg(long, default_value_t = 3)]
    decays: usize,
    /// Warm-up steps for the warmup / cosine schedules.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Clip the global gradient norm.
    #[arg(long)]
    clip: Option<f64>,
    /// Fraction of rows held out for validation / early stopping.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Evaluations without validation improvement before stopping (0: never stop early).
    #[arg(long, default_value_t = 10)]
    patience: usize,
    /// Steps between validation evaluations (default: once per epoch; 20 per run with --steps).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Stop after this many minutes of training (the best weights so far are kept and saved).
    #[arg(long)]
    time_limit: Option<f64>,
    /// Evaluate the first N rows of --test at every evaluation and log their log-likelihood and bits/dim
    /// (learning curves: `nflow curve`).
    #[arg(long, default_value_t = 0)]
    monitor: usize,
    /// Write a checkpoint (weights, optimiser state, data order, log) to OUT.ckpt every N steps.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Continue the run from OUT.ckpt (same data and options).
    #[arg(long)]
    resume: bool,
    /// 2-D data: the density every N steps (and before the first) as frames of an animated GIF,
    /// OUT/training.gif (at most 400 frames).
    #[arg(long, value_name = "N")]
    frames: Option<usize>,
    /// Keep OUT.ckpt after a successful run (by default it is removed once the model is saved).
    #[arg(long, requires = "checkpoint_every")]
    keep_checkpoint: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model folder to write.
    #[arg(long)]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Exit with an error (code 1, the model still saved) when training ends worse on the validation rows than
    /// the untrained flow was (normally a warning).
    #[arg(long)]
    strict: bool,
}

/// The flow `--flow` names, or (without it) the one chosen for the data: glow for image data (columns named
/// `c{c}_y{y}_x{x}`), else [`nflow::train::auto::tabular_flow`].
fn build_spec(a: &TrainArgs, table: &Table, context_dim: usize) -> Result<FlowSpec> {
    let dim = table.cols;
    let mut spec = match &a.flow {
        Some(f) => FlowSpec::preset(f.parse()?, dim),
        None if a.image_shape.is_some() || data::shape_from_columns(&table.columns).is_some() => {
            FlowSpec::preset(FlowKind::Glow, dim)
        }
        None => nflow::train::auto::tabular_flow(dim, context_dim),
    };
    let kind = spec.kind;
    if kind.image() {
        spec.image = match &a.image_shape {
            Some(s) => Some(data::parse_shape(s)?),
            None => Some(data::shape_from_columns(&table.columns).with_context(|| {
                format!(
                    "{}: cannot tell the image shape from its columns (image data has columns c0_y0_x0, \
                     c0_y0_x1, ...): give --image-shape C,H,W",
                    table.source
                )
            })?),
        };
        spec.scales = a.scales;
        spec.coupling = a.coupling.parse()?;
        spec.split_prior = a.split_prior;
    }
    spec.context_dim = context_dim;
    spec.context_embed = a.context_embed;
    spec.embed_hidden = a.embed_hidden;
    spec.embed_depth = a.embed_depth;
    spec.bins = a.bins;
    spec.tail_bound = a.tail_bound;
    if let Some(l) = a.layers {
        spec.layers = l;
    }
    if let Some(h) = a.hidden {
        spec.hidden = h;
    }
    if let Some(d) = a.depth {
        spec.depth = d;
    }
    spec.activation = a.activation.parse()?;
    spec.mask = a.mask.parse()?;
    spec.order = a.order.parse()?;
    if a.sigmoid_scale {
        spec.scale = ScaleBound::Sigmoid {};
    } else if let Some(bound) = a.scale_bound {
        spec.scale = ScaleBound::SoftClamp { bound };
    }
    spec.batch_norm = a.batch_norm;
    spec.actnorm = spec.actnorm || a.actnorm;
    if let Some(b) = &a.base {
        spec.base = Some(b.parse()?);
    }
    spec.components = a.components;
    spec.residual = a.residual;
    spec.random_degrees = a.random_degrees;
    spec.mixture_init = a.mixture_init.parse()?;
    if let Some(p) = &a.permute {
        spec.permute = p.parse()?;
    }
    spec.seed = a.seed;
    if let Some(m) = &a.map {
        spec.map = Some(parse_map(m)?);
    }
    spec.validate()?;
    Ok(spec)
}

/// `--map NAME` or `--map '{"type": NAME, ...}'`.
pub(super) fn parse_map(m: &str) -> Result<MapConfig> {
    let v: serde_json::Value = if m.trim_start().starts_with('{') {
        serde_json::from_str(m).with_context(|| format!("--map: not valid JSON: {m}"))?
    } else {
        serde_json::json!({ "type": m })
    };
    serde_json::from_value(v).map_err(|e| {
        anyhow::anyhow!("--map {m}: {e} (maps: affine, additive, rq-spline, sinh-arcsinh)")
    })
}

/// The architecture of `--arch FILE`, its size checked against the data (filled in where left out).
pub(super) fn load_arch(
    path: &Path,
    dim: usize,
    context_dim: usize,
    seed: u64,
) -> Result<FlowConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    // errors name the line and what is wrong there, never print the file's text (it may not be ours)
    let mut v: serde_json::Value = if toml {
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(0, |s| {
                text[..s.start.min(text.len())].lines().count().max(1)
            });
            anyhow::anyhow!(
                "{}: not valid TOML (line {line}): {}",
                path.display(),
                e.message()
            )
        })?
    } else {
        serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: not valid JSON: {}",
                path.display(),
                nflow::json_error(&e)
            )
        })?
    };
    let Some(o) = v.as_object_mut() else {
        bail!(
            "{}: expected a JSON object with a \"layers\" list",
            path.display()
        );
    };
    o.entry("dim").or_insert(dim.into());
    o.entry("context_dim").or_insert(context_dim.into());
    o.entry("seed").or_insert(seed.into());
    let arch: FlowConfig = serde_json::from_value(v)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), nflow::json_error(&e)))?;
    if arch.dim != dim || arch.context_dim != context_dim {
        bail!(
            "{}: the architecture has dim {} and context_dim {}, the data {dim} and {context_dim}",
            path.display(),
            arch.dim,
            arch.context_dim
        );
    }
    arch.validate()
        .with_context(|| format!("{}", path.display()))?;
    Ok(arch)
}

/// The training options; without a budget (`--epochs`, `--steps`), tabular data gets the one chosen for its
/// rows ([`nflow::train::auto::train_config`]).
fn train_config(a: &TrainArgs, rows: usize, image: bool) -> Result<TrainConfig> {
    let (steps, eval_every, default_schedule) = nflow::train::auto::budget(
        a.steps,
        a.epochs,
        image,
        rows,
        a.batch_size,
        a.val_fraction,
        a.patience,
    );
    let kind = match a.optimizer.as_str() {
        "adam" => OptimKind::Adam,
        "adamw" => OptimKind::Adamw,
        o => bail!("unknown optimizer '{o}' (known: adam, adamw)"),
    };
    let name = a.schedule.as_deref().unwrap_or(default_schedule);
    let mut schedule = parse_or(
        Schedule::parse(name, a.warmup),
        "schedule",
        name,
        "constant, warmup, cosine, plateau",
    )?;
    if let Schedule::Plateau { decays, .. } = &mut schedule {
        *decays = a.decays;
    }
    let cfg = TrainConfig {
        epochs: a.epochs.unwrap_or(50),
        steps,
        batch_size: a.batch_size,
        optim: OptimConfig {
            kind,
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..OptimConfig::default()
        },
        schedule,
        clip: a.clip,
        val_fraction: a.val_fraction,
        patience: (a.patience > 0).then_some(a.patience),
        eval_every: a.eval_every.or(eval_every),
        max_seconds: a.time_limit.map(|m| m * 60.0),
        seed: a.seed,
    };
    cfg.validate()?;
    Ok(cfg)
}

pub(super) fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    pb
}

/// Train, save and report. Returns the model for the demo.
/// The folder a run's checkpoints go to: `OUT.ckpt` beside the model folder.
pub(super) fn checkpoint_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt");
    PathBuf::from(s)
}

pub(super) fn fit_and_save(
    trainer: Trainer,
    flow: FlowDef,
    table: &Table,
    context: Option<&Table>,
    out: &Path,
    quiet: bool,
) -> Result<Model> {
    let pb = progress_bar(quiet);
    let mut val_msg = String::new();
    // bits/dim is the figure of merit for images and other dequantised integer data
    let bpd = flow.is_image() || trainer.preprocess.as_ref().is_some_and(|p| p.dequantize);
    let fmt = |v: f64, dim: usize| {
        if bpd {
            format!("{:.4} bits/dim", nflow::train::bits_per_dim(v, dim))
        } else {
            format!("log-lik {v:.4}")
        }
    };
    let fitted = trainer.fit(flow, table, context, |p| {
        pb.set_length(p.total as u64);
        pb.set_position(p.step as u64);
        if let Some(v) = p.val_log_prob {
            val_msg = format!("val {}", fmt(v, p.dim));
            if let Some(m) = p.monitor_log_prob {
                val_msg.push_str(&format!("  test {}", fmt(m, p.dim)));
            }
        }
        if p.step % 10 == 0 || p.val_log_prob.is_some() {
            let t = if bpd {
                format!(
                    "{:.4} bits/dim",
                    nflow::train::bits_per_dim(-p.train_nll, p.dim)
                )
            } else {
                format!("nll {:.4}", p.train_nll)
            };
            pb.set_message(format!("train {t}  {val_msg}"));
        }
    })?;
    pb.finish_and_clear();
    fitted.model.save(out)?;
    let s = fitted.model.summary.clone().unwrap_or_default();
    if let Some(e) = fitted.diverged {
        bail!(
            "{e}; the last good model (step {}) was saved to {}",
            s.best_step,
            out.display()
        );
    }
    eprintln!(
        "trained {} steps in {:.1}s ({}), best at step {}{}; model saved to {}",
        s.steps,
        s.seconds,
        if s.stopped_early {
            "stopped early"
        } else {
            "completed"
        },
        s.best_step,
        s.best_val_log_prob
            .map(|v| format!(
                ", {}validation log-likelihood {v:.4} nats",
                if s.weighted { "weighted " } else { "" }
            ))
            .unwrap_or_default(),
        out.display()
    );
    Ok(fitted.model)
}

/// The number of steps a run of `cfg` takes at most on `table`.
fn cfg_total(cfg: &TrainConfig, table: &Table) -> usize {
    let n = ((table.rows as f64) * (1.0 - cfg.val_fraction)) as usize;
    cfg.steps
        .unwrap_or(cfg.epochs * (n / cfg.batch_size.min(n).max(1)).max(1))
}

/// Frames of the training animation (`--frames N`): the density on a 100 x 100 grid over the data's extent,
/// written to a private folder; returns the folder and the list of frame files (filled as training goes), and
/// the frame function for the trainer.
#[allow(clippy::type_complexity)]
fn animation(
    table: &Table,
    conditional_or_preprocessed: bool,
    every: usize,
    total: usize,
) -> Result<(
    (
        tempfile::TempDir,
        std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>>,
    ),
    impl FnMut(usize, &nflow::flows::Flow<f32>, &data::Standardizer) + Send + 'static,
)> {
    if table.cols != 2 || conditional_or_preprocessed {
        bail!("--frames animates the density of 2-D data (no context, no preprocessing)");
    }
    if every == 0 || total / every.max(1) > 400 {
        bail!(
            "--frames {every}: {} frames for {total} steps; give N of at least {}",
            total.checked_div(every).map_or(0, |k| k + 1),
            total.div_ceil(400).max(1)
        );
    }
    let pts: Vec<[f64; 2]> = (0..table.rows)
        .map(|r| [table.row(r)[0], table.row(r)[1]])
        .collect();
    let ext = nflow::plot::extent_of(&pts);
    let n = 100;
    let grid = nflow::plot::grid_points(ext, n);
    // a private folder (unpredictable name, created exclusively, mode 0700), removed when dropped
    let dir = tempfile::Builder::new()
        .prefix("nflow-frames-")
        .tempdir()
        .context("cannot create a temporary folder for the frames")?;
    let list = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (d, l) = (dir.path().to_path_buf(), list.clone());
    let f = move |step: usize, flow: &nflow::flows::Flow<f32>, norm: &data::Standardizer| {
        let mut v = grid.clone();
        norm.apply(&mut v);
        let x = nflow::engine::Mat::<f32>::from_f64(n * n, 2, &v);
        let shift = norm.log_abs_det();
        let lp: Vec<f64> = flow
            .log_prob(&x, None)
            .iter()
            .map(|&v| f64::from(v) + shift)
            .collect();
        let p = d.join(format!("frame-{step:08}.png"));
        // a frame that cannot be drawn is left out of the animation, never the training's concern
        if nflow::plot::density_frame_png(&p, &lp, n, ext, &format!("step {step}")).is_ok() {
            if let Ok(mut l) = l.lock() {
                l.push(p);
            }
        }
    };
    Ok(((dir, list), f))
}

/// The per-column supports of `--bounds`, `--positive` and `--integer`, checked against the data's columns.
fn column_supports(a: &TrainArgs, table: &Table) -> Result<Vec<ColumnSupport>> {
    let mut out: Vec<ColumnSupport> = Vec::new();
    let mut entry = |flag: &str, col: &str| -> Result<usize> {
        if !table.columns.iter().any(|c| c == col) {
            bail!(
                "{flag} {col}: {} has no such column (its columns: {})",
                table.source,
                table.columns.join(", ")
            );
        }
        Ok(match out.iter().position(|c| c.column == col) {
            Some(i) => i,
            None => {
                out.push(ColumnSupport {
                    column: col.into(),
                    integer: false,
                    bounds: None,
                    positive: false,
                });
                out.len() - 1
            }
        })
    };
    let mut bounds = Vec::new();
    for b in &a.bounds {
        let parsed = b.split_once('=').and_then(|(c, r)| {
            let (lo, hi) = r.split_once(':')?;
            Some((
                c.trim(),
                lo.trim().parse::<f64>().ok()?,
                hi.trim().parse::<f64>().ok()?,
            ))
        });
        let Some((c, lo, hi)) = parsed else {
            bail!("--bounds {b}: expected COLUMN=LOW:HIGH (e.g. --bounds share=0:1)");
        };
        bounds.push((entry("--bounds", c)?, lo, hi));
    }
    let positive: Vec<usize> = a
        .positive
        .iter()
        .map(|c| entry("--positive", c))
        .collect::<Result<_>>()?;
    let integer: Vec<usize> = a
        .integer
        .iter()
        .map(|c| entry("--integer", c))
        .collect::<Result<_>>()?;
    for (i, lo, hi) in bounds {
        out[i].bounds = Some((lo, hi));
    }
    for i in positive {
        out[i].positive = true;
    }
    for i in integer {
        out[i].integer = true;
    }
    // combinations (bounds with positive; with --dequantize, --logit, --n-bits) are refused by
    // Preprocess::validate
    Ok(out)
}

/// Points at columns that hold only integers with repeats (counts, ratings, codes): a continuous density
/// there can grow without bound on the repeated values, so `--integer` is suggested.
fn integer_hint(table: &Table) {
    let mut cols = Vec::new();
    for c in 0..table.cols {
        let mut vals: Vec<f64> = (0..table.rows)
            .map(|r| table.data[r * table.cols + c])
            .collect();
        if vals.iter().any(|v| v.fract() != 0.0 || !v.is_finite()) {
            continue;
        }
        vals.sort_by(f64::total_cmp);
        vals.dedup();
        if table.rows >= 20 && vals.len() * 2 <= table.rows {
            cols.push(format!("{} ({} values)", table.columns[c], vals.len()));
        }
    }
    if !cols.is_empty() {
        eprintln!(
            "hint: integer-valued columns with repeats: {}; a continuous flow can put unbounded density on \
             repeated values: --integer {} models them as integers (dequantised)",
            cols.join(", "),
            cols.iter()
                .map(|c| c.split(' ').next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
}

pub(super) fn train(a: TrainArgs) -> Result<()> {
    // one writer per output, and a bad output found before any training
    let _lock = nflow::io::OutputLock::acquire(&a.out)?;
    if a.checkpoint_every.is_some() {
        // the checkpoint folder is replaced and at the end removed: it must be nflow's too
        nflow::io::output::check_replaceable(&checkpoint_dir(&a.out))?;
    }
    let full = data::load_source(&a.data, a.sel.toy_n, a.seed)?;
    // the weight column travels with the data columns (rows left out by --drop-missing go with it), then
    // leaves them
    let mut sel = a.sel.clone();
    if let Some(w) = &a.weights {
        if a.context.contains(w) || sel.drop.contains(w) {
            bail!("--weights {w}: the column is also given in --context or --drop");
        }
        if let Some(k) = sel.columns.as_mut() {
            if k.contains(w) {
                bail!("--weights {w}: the column is also given in --columns");
            }
            k.push(w.clone());
        }
    }
    let (table, ctx) = split_context(full, &sel, &a.context)?;
    let (table, weights) = match &a.weights {
        Some(w) => {
            let ws = table.select(Some(std::slice::from_ref(w)), &[])?;
            (table.select(None, std::slice::from_ref(w))?, Some(ws.data))
        }
        None => (table, None),
    };
    let classes = match (&ctx, a.context_one_hot) {
        (Some(c), true) => data::count_classes(c)?,
        _ => Vec::new(),
    };
    let context_dim = if classes.is_empty() {
        ctx.as_ref().map_or(0, |c| c.cols)
    } else {
        classes.iter().sum()
    };
    let flow: FlowDef = match &a.arch {
        Some(p) => load_arch(p, table.cols, context_dim, a.seed)?.into(),
        None => build_spec(&a, &table, context_dim)?.into(),
    };
    let image = flow.is_image();
    let cfg = train_config(&a, table.rows, image)?;
    // say what was chosen for the user who did not choose
    let spec_chosen = match (&flow, &a.flow) {
        (FlowDef::Preset(s), None) => Some(s),
        _ => None,
    };
    if !a.quiet && (spec_chosen.is_some() || (a.epochs.is_none() && a.steps.is_none() && !image)) {
        eprintln!("{}", nflow::train::auto::describe(spec_chosen, &cfg));
    }
    let columns = column_supports(&a, &table)?;
    if columns.is_empty() && !(a.dequantize || a.logit.is_some() || a.n_bits.is_some()) {
        integer_hint(&table);
    }
    let pre = (a.dequantize || a.logit.is_some() || a.n_bits.is_some() || !columns.is_empty())
        .then_some(Preprocess {
            dequantize: a.dequantize,
            levels: a.n_bits.map_or(a.levels, |b| f64::from(1u32 << b.min(8))),
            logit: a.logit,
            bits: a.n_bits,
            columns,
        });
    if let Some(p) = &pre {
        p.validate()?;
    }
    // the test data, read once (evaluated after training; its first --monitor rows during training)
    let test = match &a.test {
        Some(src) => {
            let full = data::load_source(src, a.sel.toy_n, a.seed.wrapping_add(1))?;
            let (t, c) = split_context(full, &a.sel, &a.context)?;
            // test rows are scored unweighted; a weight column there is left out
            let t = match &a.weights {
                Some(w) if t.columns.contains(w) => t.select(None, std::slice::from_ref(w))?,
                _ => t,
            };
            if t.columns != table.columns {
                bail!(
                    "{src}: its columns differ from the training data's ({} vs {} columns)",
                    t.cols,
                    table.cols
                );
            }
            Some((t, c))
        }
        None => None,
    };
    if a.monitor > 0 && test.is_none() {
        bail!("--monitor N evaluates the first N rows of --test: give --test");
    }
    if a.resume && a.checkpoint_every.is_none() {
        bail!("--resume continues from the checkpoints of --checkpoint-every N: give both");
    }
    let anim = (ctx.is_some() || pre.is_some(), cfg_total(&cfg, &table));
    let mut trainer = Trainer::new(cfg)
        .with_preprocess(pre)
        .with_context_classes(classes);
    if let Some(w) = weights {
        trainer = trainer.with_weights(w);
    }
    if let (Some((t, c)), true) = (&test, a.monitor > 0) {
        let k: Vec<usize> = (0..a.monitor.min(t.rows)).collect();
        trainer = trainer.with_monitor(t.take_rows(&k), c.as_ref().map(|c| c.take_rows(&k)));
    }
    if let Some(every) = a.checkpoint_every {
        trainer = trainer.with_checkpoints(checkpoint_dir(&a.out), every, a.resume);
    }
    let frames = match a.frames {
        Some(every) => {
            let (t, f) = animation(&table, anim.0, every, anim.1)?;
            trainer = trainer.with_frames(every, f);
            Some(t)
        }
        None => None,
    };
    let model = fit_and_save(trainer, flow, &table, ctx.as_ref(), &a.out, a.quiet)?;
    if let Some(s) = &model.summary {
        if let (Some(start), Some(best)) = (s.initial_val_log_prob, s.best_val_log_prob) {
            // a margin for noisy validation sets: 0.1 nats, or 1% of the figure's size
            if best < start - (0.01 * start.abs()).max(0.1) {
                let msg = format!(
                    "training made the model worse: validation log-likelihood {best:.4} at its best, {start:.4} \
                     before training (a learning rate too large? --lr is {})",
                    a.lr
                );
                if a.strict {
                    bail!("{msg}; the model was saved to {}", a.out.display());
                }
                eprintln!("warning: {msg}");
            }
        }
    }
    if let Some((dir, list)) = frames {
        let list = list.lock().map(|l| l.clone()).unwrap_or_default();
        let gif = a.out.join("training.gif");
        let r = nflow::plot::gif_from_pngs(&list, &gif, 120);
        drop(dir);
        r?;
        eprintln!("wrote {} ({} frames)", gif.display(), list.len());
    }
    if a.checkpoint_every.is_some() && !a.keep_checkpoint {
        let _ = std::fs::remove_dir_all(checkpoint_dir(&a.out));
    }
    if let Some((t, c)) = test {
        let (lp, ld) = model.log_prob_parts(&t, c.as_ref())?;
        let s = stats(&lp);
        println!(
            "test mean log-likelihood {:.4} ± {:.4} nats ({} rows of {})",
            s.0, s.1, t.rows, t.source
        );
        if model
            .preprocess
            .as_ref()
            .is_some_and(|p| p.columns.is_empty())
        {
            let pre: Vec<f64> = lp.iter().zip(&ld).map(|(a, b)| a - b).collect();
            let sp = stats(&pre);
            println!(
                "  in the preprocessed (dequantised{}) space: {:.4} ± {:.4} nats; {:.4} bits/dim in the data's space",
                if a.logit.is_some() { ", logit" } else { "" },
                sp.0,
                sp.1,
                nflow::train::bits_per_dim(s.0, t.cols)
            );
        }
    }
    Ok(())
}
