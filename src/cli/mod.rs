//! Command-line interface (clap). Each subcommand is a few calls into the library.

mod bench;
mod demo;
mod eval;
mod info;
mod plot;
mod report;
mod sample;
mod score;
mod train;
mod vi;

use demo::{demo, DemoArgs};
use eval::{eval, EvalArgs};
use info::{info, InfoArgs};
use plot::{curve, plot, CurveArgs, PlotArgs};
use report::{report, ReportArgs};
use sample::{sample, SampleArgs};
use score::{score, ScoreArgs};
use train::{train, TrainArgs};
use vi::{vi, ViArgs};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use nflow::data::{self, ColumnSupport, Preprocess, Table};
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
    /// Score rows: each one's log-density and its percentile among held-out training rows (which rows are
    /// unusual?), optionally flagged at a false-positive rate.
    Score(ScoreArgs),
    /// Fit a flow to an unnormalised target density by reverse KL (variational inference); writes a model.
    Vi(ViArgs),
    /// Draw samples from a saved model.
    Sample(SampleArgs),
    /// Plot a saved model: density heat map and samples (2-D) or pairwise scatter (higher dimensions).
    Plot(PlotArgs),
    /// Architecture, parameter count and training summary of a saved model.
    Info(InfoArgs),
    /// One self-contained HTML page about a model (images inline): model card, learning curve, test
    /// log-likelihood, samples against data, the change of variables layer by layer (2-D).
    Report(ReportArgs),
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
    /// Leave out rows with a missing cell (empty, NA, NaN, null, ?) in a column used, with a count printed
    /// (without it, a missing cell is an error naming its line and column).
    #[arg(long)]
    drop_missing: bool,
}

/// Say how many rows `--drop-missing` left out of `source` (nothing when none).
fn note_left_out(source: &str, gone: usize, remain: usize) {
    if gone > 0 {
        eprintln!("--drop-missing: left out {gone} row(s) of {source} with a missing cell; {remain} remain");
    }
}

/// The rows of `x` (and its context) with no missing cell, under `--drop-missing` (their count printed);
/// else as they are (a missing cell is reported when the rows are used).
fn complete_rows(x: Table, c: Option<Table>, sel: &DataSel) -> Result<(Table, Option<Table>)> {
    if !sel.drop_missing {
        return Ok((x, c));
    }
    let (x, c, gone) = data::drop_missing_rows(&x, c.as_ref());
    note_left_out(&x.source, gone, x.rows);
    if x.rows == 0 {
        bail!("{}: every row has a missing cell", x.source);
    }
    Ok((x, c))
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(mut t) = cli.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        // more threads than cores only wait on each other (and thousands are slow even to wind down)
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let most = 4 * cores;
        if t > most {
            eprintln!("warning: --threads {t} capped at {most} (4 x the {cores} cores)");
            t = most;
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("cannot set up the thread pool")?;
    } else {
        // the thread count is ours to choose: training steps measure whether fewer threads run faster
        // (other work on the machine)
        nflow::engine::pool::set_auto(true);
    }
    // The command runs on a worker of the pool: every parallel kernel it calls then starts from inside the
    // pool (a cheap split) instead of handing its work over from the main thread and sleeping until it is done
    // (a futex round trip per call, which adds up over a small training step's many kernels), and the other
    // workers wait for its jobs awake (waking a sleeping one costs more than a small kernel: see engine::pool).
    nflow::engine::pool::run_warm(|| match cli.cmd {
        Cmd::Demo(a) => demo(a),
        Cmd::Train(a) => train(*a),
        Cmd::Eval(a) => eval(a),
        Cmd::Sample(a) => sample(a),
        Cmd::Score(a) => score(a),
        Cmd::Vi(a) => vi(a),
        Cmd::Plot(a) => plot(a),
        Cmd::Info(a) => info(a),
        Cmd::Report(a) => report(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Curve(a) => curve(a),
    })
    .inspect(|_| {
        let (steps, fewer) = nflow::engine::pool::tuned_steps();
        if fewer * 2 > steps {
            eprintln!(
                "note: {:.0}% of the training steps ran on fewer threads than the pool's {}: they measured \
                 faster (other work on the machine?); --threads N fixes the count",
                100.0 * fewer as f64 / steps as f64,
                rayon::current_num_threads()
            );
        }
    })
}

fn load(src: &str, sel: &DataSel, seed: u64) -> Result<Table> {
    let t = data::load_source(src, sel.toy_n, seed)?;
    Ok(complete_rows(t.select(sel.columns.as_deref(), &sel.drop)?, None, sel)?.0)
}

fn parse_or<T>(v: Option<T>, what: &str, got: &str, known: &str) -> Result<T> {
    v.with_context(|| format!("unknown {what} '{got}' (known: {known})"))
}

/// Split a loaded table into the data columns (after --columns / --drop) and the context columns.
fn split_context(full: Table, sel: &DataSel, context: &[String]) -> Result<(Table, Option<Table>)> {
    if context.is_empty() {
        return complete_rows(full.select(sel.columns.as_deref(), &sel.drop)?, None, sel);
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
    complete_rows(full.select(sel.columns.as_deref(), &drop)?, Some(ctx), sel)
}

/// (mean, standard error)
fn stats(lp: &[f64]) -> (f64, f64) {
    let n = lp.len() as f64;
    let mean = lp.iter().sum::<f64>() / n;
    let var = lp.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
}

/// Comma-separated finite numbers of option `flag` (`--context 1,2`), each bad one named.
pub(crate) fn parse_numbers(flag: &str, s: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .with_context(|| format!("{flag}: '{v}' is not a finite number"))
        })
        .collect()
}
