//! Defaults that need no tuning: the flow, its size and the training budget chosen from the shape of the data,
//! for a user who gives only the data (`nflow train --data FILE --out DIR`, Python's `Flow("auto")`).
//!
//! - The flow: a rational-quadratic spline flow (RQ-NSF, Durkan et al. 2019), the family that won every
//!   tabular and toy table so far; autoregressive (MADE conditioners) while the data is narrow enough for its
//!   D-pass sampling to stay cheap, coupling beyond. Conditioners widen with the number of columns (a MADE needs
//!   more hidden units than inputs to give every ordering position its own).
//! - The budget: a cap on the steps that grows with the rows, and the plateau schedule inside it (halve the rate
//!   when the validation figure has not improved for `patience` evaluations, stop at the plateau after the third
//!   halving), so a small set that starts to overfit stops soon and a large one keeps learning at ever smaller
//!   rates. Every evaluation covers at least [`MIN_EVAL_EVERY`] steps, so one noisy figure on a small validation
//!   split cannot end a run.
//!
//! `docs/results/defaults.md` has the measurements these numbers come from.

use crate::flows::{FlowKind, FlowSpec};
use crate::optim::{OptimConfig, Schedule};
use crate::train::TrainConfig;

/// Widest data the autoregressive spline flow is chosen for (its sampling takes one pass per column).
pub const MAX_AR_DIM: usize = 16;
/// Fewest and most steps between two validation evaluations.
pub const MIN_EVAL_EVERY: usize = 50;
pub const MAX_EVAL_EVERY: usize = 500;
/// The step cap: this many passes over the training rows, within [`MIN_STEPS`, `MAX_STEPS`].
pub const EPOCHS: usize = 200;
pub const MIN_STEPS: usize = 10_000;
pub const MAX_STEPS: usize = 100_000;

/// The flow chosen for `dim` columns (and `context_dim` context features) of tabular data.
pub fn tabular_flow(dim: usize, context_dim: usize) -> FlowSpec {
    let kind = if dim <= MAX_AR_DIM {
        FlowKind::NsfAr
    } else {
        FlowKind::NsfC
    };
    let mut spec = FlowSpec::preset(kind, dim);
    spec.context_dim = context_dim;
    spec.hidden = (4 * dim).clamp(128, 512);
    spec.depth = 2;
    spec
}

/// The training options for `rows` rows (before the validation split) in batches of `batch_size`: a step cap
/// that grows with the rows, evaluations about once per pass, and the plateau schedule.
pub fn train_config(rows: usize, batch_size: usize, val_fraction: f64) -> TrainConfig {
    let n_train = ((rows as f64) * (1.0 - val_fraction)).max(1.0) as usize;
    let per_epoch = (n_train / batch_size.max(1)).max(1);
    TrainConfig {
        steps: Some((EPOCHS * per_epoch).clamp(MIN_STEPS, MAX_STEPS)),
        batch_size,
        optim: OptimConfig::default(),
        schedule: plateau(),
        val_fraction,
        patience: Some(10),
        eval_every: Some(per_epoch.clamp(MIN_EVAL_EVERY, MAX_EVAL_EVERY)),
        ..TrainConfig::default()
    }
}

/// What a caller who gave `steps` / `epochs` (or neither) trains for: `(steps, eval_every, the default schedule's
/// name)`. With neither, on tabular data (`image` false), the step cap and evaluation interval of
/// [`train_config`] for `rows` rows, and the plateau schedule where there is a validation split and a patience;
/// otherwise the given budget, evaluations at the trainer's default, a constant rate. Shared by `nflow train` and
/// Python's `Flow.fit`.
pub fn budget(
    steps: Option<usize>,
    epochs: Option<usize>,
    image: bool,
    rows: usize,
    batch_size: usize,
    val_fraction: f64,
    patience: usize,
) -> (Option<usize>, Option<usize>, &'static str) {
    if steps.is_some() || epochs.is_some() || image {
        return (steps, None, "constant");
    }
    let chosen = train_config(rows, batch_size, val_fraction);
    let schedule = if val_fraction > 0.0 && patience > 0 {
        "plateau"
    } else {
        "constant"
    };
    (chosen.steps, chosen.eval_every, schedule)
}

/// The plateau schedule with its default halvings.
pub fn plateau() -> Schedule {
    Schedule::Plateau {
        warmup: 0,
        decay: 0.5,
        decays: 3,
    }
}

/// One line saying what was chosen (printed by `nflow train` when it chose).
pub fn describe(spec: Option<&FlowSpec>, cfg: &TrainConfig) -> String {
    let flow = spec.map(|s| {
        format!(
            "{} with {} layers, conditioners {} x {}{}; ",
            serde_json::to_value(s.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            s.layers,
            s.depth,
            s.hidden,
            if matches!(s.kind, FlowKind::NsfAr | FlowKind::NsfC) {
                format!(", {} bins on [-{}, {}]", s.bins, s.tail_bound, s.tail_bound)
            } else {
                String::new()
            }
        )
    });
    let sched = match cfg.schedule {
        Schedule::Plateau { decay, decays, .. } => format!(
            "learning rate {} times {decay} after {} evaluations without improvement, stop at the plateau after \
             {decays} reductions",
            cfg.optim.lr,
            cfg.patience.unwrap_or(0)
        ),
        _ => format!("learning rate {}", cfg.optim.lr),
    };
    format!(
        "chose {}up to {} steps of {} rows, validation every {} steps, {sched}",
        flow.unwrap_or_default(),
        cfg.steps.unwrap_or(0),
        cfg.batch_size,
        cfg.eval_every.unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_follows_the_data() {
        assert_eq!(tabular_flow(2, 0).kind, FlowKind::NsfAr);
        assert_eq!(tabular_flow(1, 0).kind, FlowKind::NsfAr);
        assert_eq!(tabular_flow(64, 0).kind, FlowKind::NsfC);
        assert_eq!(tabular_flow(64, 0).hidden, 256);
        assert_eq!(tabular_flow(3, 2).context_dim, 2);
        let small = train_config(1000, 256, 0.1);
        let large = train_config(1_000_000, 256, 0.1);
        assert_eq!(small.steps, Some(MIN_STEPS));
        assert_eq!(small.eval_every, Some(MIN_EVAL_EVERY));
        assert_eq!(large.steps, Some(MAX_STEPS));
        assert_eq!(large.eval_every, Some(MAX_EVAL_EVERY));
        let mid = train_config(100_000, 256, 0.1);
        assert_eq!(mid.steps, Some(200 * (90_000 / 256)));
        mid.validate().unwrap();
        assert!(describe(Some(&tabular_flow(2, 0)), &mid).contains("nsf-ar"));
    }
}
