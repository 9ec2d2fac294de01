//! `nflow demo`: RealNVP on built-in 2-D data, end to end.

use super::plot::plot_model;
use super::train::fit_and_save;
use super::*;

#[derive(Args, Debug)]
pub(super) struct DemoArgs {
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

pub(super) fn demo(a: DemoArgs) -> Result<()> {
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
