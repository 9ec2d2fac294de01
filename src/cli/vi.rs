//! `nflow vi`: fit a flow to an unnormalised target density by reverse KL; writes an ordinary model folder
//! and prints the diagnostics (ELBO, log Z, effective sample size).

use super::train::progress_bar;
use super::*;
use nflow::train::targets;
use nflow::train::{ViCheckpoint, ViConfig, ViFitted};

#[derive(Args, Debug)]
pub(super) struct ViArgs {
    /// The target: u1 | u2 | u3 | u4 (the 2-D energies of Rezende & Mohamed 2015; U2-U4 confined by a N(0, 4²)
    /// factor on z1) | gauss:D[:RHO[:SCALE]] (a D-dimensional Gaussian, equicorrelated, normalised) |
    /// mix:D:K[:RADIUS[:SCALE]] (K equal Gaussians of scale SCALE (0.5) on a circle of radius RADIUS (4), normalised).
    #[arg(long)]
    target: String,
    /// Flow: a coupling or autoregressive preset (realnvp, nice, maf, iaf, nsf-c, nsf-ar).
    #[arg(long, default_value = "realnvp")]
    flow: String,
    /// The element-wise map instead of the preset's (affine, additive, rq-spline, sinh-arcsinh or JSON).
    #[arg(long)]
    map: Option<String>,
    /// Train this architecture (JSON or TOML, as `train --arch`) instead of a preset.
    #[arg(long, conflicts_with_all = ["map", "layers"])]
    arch: Option<PathBuf>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    #[arg(long, default_value_t = 2)]
    depth: usize,
    #[arg(long, default_value_t = 8)]
    bins: usize,
    #[arg(long, default_value_t = 3.0)]
    tail_bound: f64,
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Learning-rate schedule: constant | warmup | cosine.
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// Warm-up steps for the warmup / cosine schedules.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Clip the global gradient norm.
    #[arg(long)]
    clip: Option<f64>,
    /// Samples for the diagnostics (and the held-out ELBO that keeps the best weights).
    #[arg(long, default_value_t = 4096)]
    eval_samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a checkpoint (weights, optimiser state, noise stream, best weights, log) to OUT.ckpt every N steps.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Continue the run from OUT.ckpt (same target and options).
    #[arg(long, requires = "checkpoint_every")]
    resume: bool,
    /// Keep OUT.ckpt after a successful run (by default it is removed once the model is saved).
    #[arg(long, requires = "checkpoint_every")]
    keep_checkpoint: bool,
    /// Diagnostics as one JSON line.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    quiet: bool,
    #[arg(long)]
    out: PathBuf,
}

pub(super) fn vi(a: ViArgs) -> Result<()> {
    let _lock = nflow::io::OutputLock::acquire(&a.out)?;
    let target = targets::by_name::<f32>(&a.target)?;
    let dim = target.dim();
    let flow: FlowDef = match &a.arch {
        Some(p) => train::load_arch(p, dim, 0, a.seed)?.into(),
        None => {
            let kind: FlowKind = a.flow.parse()?;
            if kind.image() {
                bail!(
                    "--flow {}: reverse KL needs a coupling or autoregressive flow",
                    a.flow
                );
            }
            let mut spec = FlowSpec::preset(kind, dim);
            if let Some(l) = a.layers {
                spec.layers = l;
            }
            spec.hidden = a.hidden;
            spec.depth = a.depth;
            spec.bins = a.bins;
            spec.tail_bound = a.tail_bound;
            spec.seed = a.seed;
            if let Some(m) = &a.map {
                spec.map = Some(train::parse_map(m)?);
            }
            spec.validate()?;
            spec.into()
        }
    };
    let schedule = parse_or(
        nflow::optim::Schedule::parse(&a.schedule, a.warmup),
        "schedule",
        &a.schedule,
        "constant, warmup, cosine",
    )?;
    let cfg = ViConfig {
        schedule,
        steps: a.steps,
        batch_size: a.batch_size,
        optim: OptimConfig {
            lr: a.lr,
            ..OptimConfig::default()
        },
        clip: a.clip,
        eval_samples: a.eval_samples,
        seed: a.seed,
        checkpoint: a.checkpoint_every.map(|every| ViCheckpoint {
            dir: train::checkpoint_dir(&a.out),
            every,
            resume: a.resume,
        }),
        ..ViConfig::default()
    };
    let pb = progress_bar(a.quiet);
    let mut msg = String::new();
    let ViFitted {
        model,
        diagnostics: d,
        diverged,
    } = cfg.fit(flow, target.as_ref(), &a.target, |p| {
        pb.set_length(p.total as u64);
        pb.set_position(p.step as u64);
        if let Some(e) = p.elbo {
            msg = format!("ELBO {e:.4}");
            pb.set_message(msg.clone());
        }
    })?;
    pb.finish_and_clear();
    model.save(&a.out)?;
    if a.checkpoint_every.is_some() && !a.keep_checkpoint && diverged.is_none() {
        let _ = std::fs::remove_dir_all(train::checkpoint_dir(&a.out));
    }
    if let Some(e) = &diverged {
        eprintln!("warning: {e}; the best weights before it are saved");
    }
    let log_z = target.log_z();
    if a.json {
        let mut o = serde_json::to_value(d)?;
        o["target"] = serde_json::json!(a.target);
        o["true_log_z"] = serde_json::json!(log_z);
        o["kl"] = serde_json::json!(log_z.map(|z| z - d.elbo));
        o["model"] = serde_json::json!(a.out.display().to_string());
        println!("{o}");
    } else {
        println!(
            "{}: ELBO {:.4} ± {:.4}, log Z {:.4} ± {:.4} (importance sampling), ESS {:.1}% of {} samples; \
             model saved to {}",
            a.target,
            d.elbo,
            d.elbo_se,
            d.log_z,
            d.log_z_se,
            100.0 * d.ess_fraction,
            d.samples,
            a.out.display()
        );
        if let Some(z) = log_z {
            println!(
                "  true log Z {z:.4}: KL(q || p) = log Z - ELBO = {:.4}",
                z - d.elbo
            );
        }
    }
    Ok(())
}
