//! Command-line interface (clap). Each subcommand is a few calls into the library.

mod bench;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use nflow::data::{self, Preprocess, Table};
use nflow::flows::{FlowConfig, FlowDef, FlowKind, FlowSpec, MapConfig};
use nflow::optim::{OptimConfig, OptimKind, Schedule};
use nflow::train::{TrainConfig, Trainer};
use nflow::transforms::ScaleBound;
use nflow::Model;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "nflow",
    version,
    about = "Normalizing flows: exact density estimation and sampling"
)]
pub struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train a flow on built-in 2-D data, print its test log-likelihood, write samples and a plot.
    Demo(DemoArgs),
    /// Fit a flow by maximum likelihood and save it as a model folder.
    Train(Box<TrainArgs>),
    /// Log-likelihood of data under a saved model (nats per example, in the data's units).
    Eval(EvalArgs),
    /// Draw samples from a saved model.
    Sample(SampleArgs),
    /// Plot a saved model: density heat map and samples (2-D) or pairwise scatter (higher dimensions).
    Plot(PlotArgs),
    /// Architecture, parameter count and training summary of a saved model.
    Info(InfoArgs),
    /// Time training steps, log-prob and sampling on a fixed workload (JSON lines, as peers.py step).
    Bench(bench::BenchArgs),
    /// Learning curve of a trained model from its log: CSV (step, minutes, epoch, train / validation / test
    /// figures) and a PNG of bits/dim (image or dequantised models; else NLL) against training minutes.
    Curve(CurveArgs),
}

#[derive(Args, Debug, Clone)]
struct DataSel {
    /// Keep only these columns (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Drop these columns (comma-separated names), e.g. a class label.
    #[arg(long, value_delimiter = ',')]
    drop: Vec<String>,
    /// Number of rows drawn from a `toy:NAME` source.
    #[arg(long, default_value_t = 20_000)]
    toy_n: usize,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Training data: `toy:NAME` (moons, circles, 8gaussians, checkerboard, pinwheel, 2spirals, rings),
    /// or a .csv / .csv.gz (header row) / .npy file.
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
    #[arg(long, default_value = "realnvp")]
    flow: String,
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
    /// Hidden width of the conditioner networks (image flows: channels of the CNN conditioners).
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Hidden layers of the conditioner networks (realnvp-multiscale: residual blocks).
    #[arg(long, default_value_t = 2)]
    depth: usize,
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
    /// Base distribution: normal | diag-normal | logistic | mixture (Gaussian mixture, learned) | made-mog
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
    /// Passes over the training split (ignored with --steps).
    #[arg(long, default_value_t = 50)]
    epochs: usize,
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
    /// constant | warmup | cosine.
    #[arg(long, default_value = "constant")]
    schedule: String,
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
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model folder to write.
    #[arg(long)]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: String,
    #[command(flatten)]
    sel: DataSel,
    /// Write one log-probability per row to this CSV.
    #[arg(long)]
    per_sample: Option<PathBuf>,
    /// Print one JSON object: n, dim, mean_log_prob, stderr, nll, bits_per_dim.
    #[arg(long)]
    json: bool,
    /// Seed of a toy source.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
struct SampleArgs {
    #[arg(long)]
    model: PathBuf,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 1000)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file: .csv, .csv.gz or .npy.
    #[arg(long, required_unless_present = "grid")]
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

#[derive(Args, Debug)]
struct PlotArgs {
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
}

#[derive(Args, Debug)]
struct CurveArgs {
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

#[derive(Args, Debug)]
struct InfoArgs {
    #[arg(long)]
    model: PathBuf,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Toy data set.
    #[arg(long, default_value = "moons")]
    toy: String,
    /// Optimiser steps.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Output folder (model, samples.csv, plot.png).
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(t) = cli.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("cannot set up the thread pool")?;
    }
    // The command runs on a worker of the pool: every parallel kernel it calls then starts from inside the
    // pool (a cheap split) instead of handing its work over from the main thread and sleeping until it is done
    // (a futex round trip per call, ~10% of a small training step), and the other workers wait for its jobs
    // awake (waking a sleeping one costs ~35 µs a call).
    nflow::engine::pool::run_warm(|| match cli.cmd {
        Cmd::Demo(a) => demo(a),
        Cmd::Train(a) => train(*a),
        Cmd::Eval(a) => eval(a),
        Cmd::Sample(a) => sample(a),
        Cmd::Plot(a) => plot(a),
        Cmd::Info(a) => info(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Curve(a) => curve(a),
    })
}

fn load(src: &str, sel: &DataSel, seed: u64) -> Result<Table> {
    let t = data::load_source(src, sel.toy_n, seed)?;
    Ok(t.select(sel.columns.as_deref(), &sel.drop)?)
}

fn parse_or<T>(v: Option<T>, what: &str, got: &str, known: &str) -> Result<T> {
    v.with_context(|| format!("unknown {what} '{got}' (known: {known})"))
}

fn build_spec(a: &TrainArgs, table: &Table, context_dim: usize) -> Result<FlowSpec> {
    let kind: FlowKind = a.flow.parse()?;
    let dim = table.cols;
    let mut spec = FlowSpec::preset(kind, dim);
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
    spec.hidden = a.hidden;
    spec.depth = a.depth;
    spec.activation = a.activation.parse()?;
    spec.mask = a.mask.parse()?;
    spec.order = a.order.parse()?;
    if a.sigmoid_scale {
        spec.scale = ScaleBound::Sigmoid;
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
fn parse_map(m: &str) -> Result<MapConfig> {
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
fn load_arch(path: &Path, dim: usize, context_dim: usize, seed: u64) -> Result<FlowConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let mut v: serde_json::Value = if toml {
        toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?
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
    let arch: FlowConfig =
        serde_json::from_value(v).with_context(|| format!("{}", path.display()))?;
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

fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let kind = match a.optimizer.as_str() {
        "adam" => OptimKind::Adam,
        "adamw" => OptimKind::Adamw,
        o => bail!("unknown optimizer '{o}' (known: adam, adamw)"),
    };
    let schedule = parse_or(
        Schedule::parse(&a.schedule, a.warmup),
        "schedule",
        &a.schedule,
        "constant, warmup, cosine",
    )?;
    let cfg = TrainConfig {
        epochs: a.epochs,
        steps: a.steps,
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
        eval_every: a.eval_every,
        max_seconds: a.time_limit.map(|m| m * 60.0),
        seed: a.seed,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn progress_bar(quiet: bool) -> ProgressBar {
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
fn checkpoint_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt");
    PathBuf::from(s)
}

fn fit_and_save(
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
            .map(|v| format!(", validation log-likelihood {v:.4} nats"))
            .unwrap_or_default(),
        out.display()
    );
    Ok(fitted.model)
}

/// Split a loaded table into the data columns (after --columns / --drop) and the context columns.
fn split_context(full: Table, sel: &DataSel, context: &[String]) -> Result<(Table, Option<Table>)> {
    if context.is_empty() {
        return Ok((full.select(sel.columns.as_deref(), &sel.drop)?, None));
    }
    if let Some(c) = context
        .iter()
        .find(|c| sel.columns.iter().flatten().any(|k| k == *c))
    {
        bail!("column '{c}' is given both in --columns and in --context");
    }
    let ctx = full.select(Some(context), &[])?;
    let mut drop = sel.drop.clone();
    drop.extend(context.iter().cloned());
    Ok((full.select(sel.columns.as_deref(), &drop)?, Some(ctx)))
}

fn train(a: TrainArgs) -> Result<()> {
    let full = data::load_source(&a.data, a.sel.toy_n, a.seed)?;
    let (table, ctx) = split_context(full, &a.sel, &a.context)?;
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
    let cfg = train_config(&a)?;
    let pre = (a.dequantize || a.logit.is_some() || a.n_bits.is_some()).then_some(Preprocess {
        dequantize: a.dequantize,
        levels: a.n_bits.map_or(a.levels, |b| f64::from(1u32 << b.min(8))),
        logit: a.logit,
        bits: a.n_bits,
    });
    if let Some(p) = &pre {
        p.validate()?;
    }
    // the test data, read once (evaluated after training; its first --monitor rows during training)
    let test = match &a.test {
        Some(src) => {
            let full = data::load_source(src, a.sel.toy_n, a.seed.wrapping_add(1))?;
            let (t, c) = split_context(full, &a.sel, &a.context)?;
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
    let mut trainer = Trainer::new(cfg)
        .with_preprocess(pre)
        .with_context_classes(classes);
    if let (Some((t, c)), true) = (&test, a.monitor > 0) {
        let k: Vec<usize> = (0..a.monitor.min(t.rows)).collect();
        trainer = trainer.with_monitor(t.take_rows(&k), c.as_ref().map(|c| c.take_rows(&k)));
    }
    if let Some(every) = a.checkpoint_every {
        trainer = trainer.with_checkpoints(checkpoint_dir(&a.out), every, a.resume);
    }
    let model = fit_and_save(trainer, flow, &table, ctx.as_ref(), &a.out, a.quiet)?;
    if let Some((t, c)) = test {
        let (lp, ld) = model.log_prob_parts(&t, c.as_ref())?;
        let s = stats(&lp);
        println!(
            "test mean log-likelihood {:.4} ± {:.4} nats ({} rows of {})",
            s.0, s.1, t.rows, t.source
        );
        if model.preprocess.is_some() {
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

/// (mean, standard error)
fn stats(lp: &[f64]) -> (f64, f64) {
    let n = lp.len() as f64;
    let mean = lp.iter().sum::<f64>() / n;
    let var = lp.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
}

fn eval(a: EvalArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    let full = data::load_source(&a.data, a.sel.toy_n, a.seed)?;
    let c = model.select_context(&full)?;
    let t = model.select_columns(full.select(a.sel.columns.as_deref(), &a.sel.drop)?)?;
    let (lp, ld) = model.log_prob_parts(&t, c.as_ref())?;
    let (mean, se) = stats(&lp);
    let pre_mean = model
        .preprocess
        .is_some()
        .then(|| stats(&lp.iter().zip(&ld).map(|(a, b)| a - b).collect::<Vec<_>>()).0);
    if let Some(p) = &a.per_sample {
        let out = Table::new(vec!["log_prob".into()], lp.len(), lp.clone(), "per-sample");
        data::write_csv(p, &out)?;
    }
    if a.json {
        let o = serde_json::json!({
            "n": t.rows, "dim": t.cols, "mean_log_prob": mean, "stderr": se, "nll": -mean,
            "bits_per_dim": nflow::train::bits_per_dim(mean, t.cols), "data": t.source,
            "mean_log_prob_preprocessed": pre_mean,
        });
        println!("{o}");
    } else {
        println!(
            "{}: {} rows x {} dims: mean log-likelihood {:.4} ± {:.4} nats (NLL {:.4})",
            t.source, t.rows, t.cols, mean, se, -mean
        );
        if let Some(m) = pre_mean {
            println!(
                "  preprocessed space: {m:.4} nats; {:.4} bits/dim in the data's space",
                nflow::train::bits_per_dim(mean, t.cols)
            );
        }
    }
    Ok(())
}

fn write_table(path: &Path, t: &Table) -> Result<()> {
    let name = path.to_string_lossy().to_lowercase();
    if name.ends_with(".npy") {
        data::write_npy(path, t)?;
    } else if name.ends_with(".csv") || name.ends_with(".csv.gz") {
        data::write_csv(path, t)?;
    } else {
        bail!(
            "{}: unknown output format (use .csv, .csv.gz or .npy)",
            path.display()
        );
    }
    Ok(())
}

fn sample(a: SampleArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    if a.n == 0 {
        bail!("-n must be at least 1");
    }
    let ctx = context_rows(&model, a.context.as_deref(), a.context_file.as_deref())?;
    let (x, s) = match &ctx {
        None => {
            let x = model.sample_with_temperature(a.n, a.seed, None, a.temperature)?;
            (x.clone(), x)
        }
        Some(c) => {
            // each context row repeated n times, samples and their context side by side
            let rep: Vec<usize> = (0..c.rows)
                .flat_map(|r| std::iter::repeat_n(r, a.n))
                .collect();
            let cr = c.take_rows(&rep);
            let x = model.sample_with_temperature(rep.len(), a.seed, Some(&cr), a.temperature)?;
            let s = x.hcat(&cr)?;
            (x, s)
        }
    };
    if let Some(out) = &a.out {
        write_table(out, &s)?;
        eprintln!("wrote {} samples to {}", s.rows, out.display());
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
        // pixel range: the preprocessing's (8-bit after n-bit reduction is undone), else the samples' max
        let max = match &model.preprocess {
            Some(p) if p.bits.is_some() => 255.0,
            Some(p) if p.dequantize || p.logit.is_some() => p.levels,
            _ => x.data.iter().cloned().fold(f64::MIN, f64::max).max(1e-12),
        };
        data::write_png_grid(g, &x, shape, a.grid_cols, max)?;
        eprintln!("wrote a grid of {} samples to {}", x.rows, g.display());
    }
    Ok(())
}

/// The context rows for sampling a conditional model (`--context v1,v2` or `--context-file F`).
fn context_rows(model: &Model, values: Option<&str>, file: Option<&str>) -> Result<Option<Table>> {
    let k = model.context_columns.len();
    if k == 0 && (values.is_some() || file.is_some()) {
        bail!("the model takes no context");
    }
    let t = match (values, file) {
        (Some(v), _) => {
            let vals: Vec<f64> = v
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .with_context(|| format!("--context: '{s}' is not a finite number"))
                })
                .collect::<Result<_>>()?;
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

/// 2-D extent covering the points (0.5%..99.5% quantiles plus a margin).
fn extent(pts: &[[f64; 2]]) -> [f64; 4] {
    let q = |k: usize| {
        let mut v: Vec<f64> = pts.iter().map(|p| p[k]).filter(|v| v.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let lo = v[(v.len() as f64 * 0.005) as usize];
        let hi = v[((v.len() as f64 * 0.995) as usize).min(v.len() - 1)];
        let m = 0.15 * (hi - lo).max(1e-9);
        (lo - m, hi + m)
    };
    let (x0, x1) = q(0);
    let (y0, y1) = q(1);
    [x0, x1, y0, y1]
}

#[allow(clippy::too_many_arguments)]
fn plot_model(
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
        let ext = extent(dp.as_deref().unwrap_or(&sp));
        let g = grid.max(2);
        let mut pts_grid = Vec::with_capacity(g * g * 2);
        for j in 0..g {
            for i in 0..g {
                pts_grid.push(ext[0] + (i as f64 + 0.5) * (ext[1] - ext[0]) / g as f64);
                pts_grid.push(ext[2] + (j as f64 + 0.5) * (ext[3] - ext[2]) / g as f64);
            }
        }
        let gt = Table::new(model.columns.clone(), g * g, pts_grid, "grid");
        let lp = model.log_prob_ctx(&gt, repeat(g * g).as_ref())?;
        nflow::plot::density_2d_png(out, &lp, g, g, ext, &sp, dp.as_deref())?;
    } else {
        nflow::plot::pairs_png(
            out,
            &s.data,
            data.map(|d| d.data.as_slice()),
            model.dim(),
            max_dims,
        )?;
    }
    Ok(())
}

fn plot(a: PlotArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    let data = match &a.data {
        Some(src) => Some(model.select_columns(load(src, &a.sel, a.seed.wrapping_add(1))?)?),
        None => None,
    };
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

fn info(a: InfoArgs) -> Result<()> {
    let m = Model::load(&a.model)?;
    println!("model folder   {}", a.model.display());
    let name = m
        .preset
        .as_ref()
        .map_or("composed".to_string(), |p| p.kind.to_string());
    println!(
        "flow           {name} ({} features: {})",
        m.dim(),
        m.columns.join(", ")
    );
    if let Some(p) = &m.preset {
        println!(
            "architecture   {} layers, conditioner {}x{} {:?}, mask {:?}, scale {:?}, batch norm {}, actnorm {}",
            p.layers, p.depth, p.hidden, p.activation, p.mask, p.scale, p.batch_norm, p.actnorm
        );
        println!(
            "map            {}, between layers {:?}",
            p.element_map().name(),
            p.permute
        );
        if p.residual {
            println!("conditioners   ResMADE ({} residual blocks)", p.depth);
        }
    }
    println!("base           {}", base_text(&m.arch.base));
    if !m.context_columns.is_empty() {
        println!("context        {}", m.context_columns.join(", "));
    }
    if let Some(p) = &m.preprocess {
        println!(
            "preprocessing  dequantize {}, logit {}, levels {}",
            p.dequantize,
            p.logit.map_or("none".into(), |l| l.to_string()),
            p.levels
        );
    }
    println!("parameters     {}", m.flow.num_params());
    for l in m.flow.describe() {
        println!("  {l}");
    }
    if let Some(s) = &m.summary {
        println!(
            "training       {} ({} train / {} validation rows), {} steps in {:.1}s, best step {}{}",
            s.data,
            s.n_train,
            s.n_val,
            s.steps,
            s.seconds,
            s.best_step,
            if s.stopped_early {
                ", stopped early"
            } else {
                ""
            }
        );
        if let Some(v) = s.best_val_log_prob {
            println!("validation     mean log-likelihood {v:.4} nats");
        }
    }
    Ok(())
}

fn base_text(b: &nflow::flows::BaseConfig) -> String {
    use nflow::flows::BaseConfig;
    match b {
        BaseConfig::Mixture { components, .. } | BaseConfig::MadeMog { components, .. } => {
            format!("{:?} ({components} components)", b.kind())
        }
        _ => format!("{:?}", b.kind()),
    }
}

fn demo(a: DemoArgs) -> Result<()> {
    let train_t = data::toy(&a.toy, 20_000, a.seed)?;
    let test_t = data::toy(&a.toy, 10_000, a.seed.wrapping_add(1))?;
    let spec = FlowSpec {
        seed: a.seed,
        ..FlowSpec::preset(FlowKind::Realnvp, 2)
    };
    let cfg = TrainConfig {
        steps: Some(a.steps),
        seed: a.seed,
        ..TrainConfig::default()
    };
    eprintln!(
        "demo: RealNVP ({} affine couplings, MLP {}x{}) on toy:{} (20000 train rows), {} steps",
        spec.layers, spec.depth, spec.hidden, a.toy, a.steps
    );
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let model = fit_and_save(
        Trainer::new(cfg),
        spec.clone().into(),
        &train_t,
        None,
        &a.out.join("model"),
        false,
    )?;
    let (mean, se) = stats(&model.log_prob_table(&test_t)?);
    println!(
        "test mean log-likelihood: {mean:.4} ± {se:.4} nats (10000 fresh toy:{} points)",
        a.toy
    );
    let s = model.sample(2000, a.seed, None)?;
    data::write_csv(&a.out.join("samples.csv"), &s)?;
    plot_model(
        &model,
        None,
        Some(&test_t),
        &a.out.join("plot.png"),
        3000,
        200,
        5,
        a.seed,
    )?;
    println!(
        "wrote {0}/model/, {0}/samples.csv and {0}/plot.png",
        a.out.display()
    );
    Ok(())
}

fn curve(a: CurveArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    if model.log.is_empty() {
        bail!("{}: the model has no training log", a.model.display());
    }
    let entries: Vec<nflow::train::LogEntry> = model
        .log
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: train_log.jsonl line {}", a.model.display(), i + 1))
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
    let unit = if bpd { "bits_per_dim" } else { "nll" };
    let nan = f64::NAN;
    let rows: Vec<[f64; 6]> = entries
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
        let series = |k: usize| rows.iter().map(|r| (r[1], r[k])).collect::<Vec<_>>();
        nflow::plot::lines_png(p, &[series(5), series(4), series(3)])?;
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
