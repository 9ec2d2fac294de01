//! Training and VI options from the Python layer's dict of options (the CLI's `nflow train` defaults live in
//! the Python layer's signature), and the `opt!` macro that reads one option.

use crate::errors::{config_err, py_err};
use nflow::optim::{OptimConfig, OptimKind, Schedule};
use nflow::train::{StopFlag, TrainConfig, ViConfig};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The option `$k` of a Python dict of options: absent or None gives None; a value of the wrong type is a
/// ValueError naming the option.
macro_rules! opt {
    ($o:expr, $k:expr) => {
        $o.get_item($k)?
            .filter(|v| !v.is_none())
            .map(|v| {
                v.extract()
                    .map_err(|e: pyo3::PyErr| $crate::errors::config_err(format!("{}: {e}", $k)))
            })
            .transpose()
    };
}
pub(crate) use opt;

/// The training options of a fit on `rows` rows; without `steps` and `epochs`, tabular flows get the budget
/// `nflow train` chooses ([`nflow::train::auto::train_config`]), image flows 50 epochs.
pub(crate) fn train_config(
    o: &Bound<'_, PyDict>,
    rows: usize,
    image: bool,
) -> PyResult<TrainConfig> {
    let d = TrainConfig::default();
    let epochs: Option<usize> = opt!(o, "epochs")?;
    let batch_size: usize = opt!(o, "batch_size")?.unwrap_or(d.batch_size);
    let val_fraction: f64 = opt!(o, "validation")?.unwrap_or(d.val_fraction);
    let patience: usize = opt!(o, "patience")?.unwrap_or(10);
    let (steps, eval_every, default_schedule) = nflow::train::auto::budget(
        opt!(o, "steps")?,
        epochs,
        image,
        rows,
        batch_size,
        val_fraction,
        patience,
    );
    let optimizer: String = opt!(o, "optimizer")?.unwrap_or_else(|| "adam".into());
    let kind = match optimizer.as_str() {
        "adam" => OptimKind::Adam,
        "adamw" => OptimKind::Adamw,
        o => {
            return Err(config_err(format!(
                "unknown optimizer '{o}' (known: adam, adamw)"
            )))
        }
    };
    let schedule: String = opt!(o, "schedule")?.unwrap_or_else(|| default_schedule.into());
    let warmup: usize = opt!(o, "warmup")?.unwrap_or(0);
    let mut schedule = Schedule::parse(&schedule, warmup).ok_or_else(|| {
        config_err(format!(
            "unknown schedule '{schedule}' (known: constant, warmup, cosine, plateau)"
        ))
    })?;
    if let (Schedule::Plateau { decays, .. }, Some(k)) = (&mut schedule, opt!(o, "decays")?) {
        *decays = k;
    }
    let cfg = TrainConfig {
        epochs: epochs.unwrap_or(d.epochs),
        steps,
        batch_size,
        optim: OptimConfig {
            kind,
            lr: opt!(o, "lr")?.unwrap_or(d.optim.lr),
            weight_decay: opt!(o, "weight_decay")?.unwrap_or(0.0),
            ..OptimConfig::default()
        },
        schedule,
        clip: opt!(o, "clip")?,
        val_fraction,
        patience: (patience > 0).then_some(patience),
        eval_every: opt!(o, "eval_every")?.or(eval_every),
        max_seconds: opt!(o, "max_seconds")?,
        seed: opt!(o, "seed")?.unwrap_or(0),
    };
    cfg.validate().map_err(py_err)?;
    Ok(cfg)
}

/// The options of a fit by reverse KL; `stop` is the flag that stops it early.
pub(crate) fn vi_config(o: &Bound<'_, PyDict>, stop: Arc<AtomicBool>) -> PyResult<ViConfig> {
    let d = ViConfig::default();
    let schedule: String = opt!(o, "schedule")?.unwrap_or_else(|| "constant".into());
    let warmup: usize = opt!(o, "warmup")?.unwrap_or(0);
    let cfg = ViConfig {
        steps: opt!(o, "steps")?.unwrap_or(d.steps),
        batch_size: opt!(o, "batch_size")?.unwrap_or(d.batch_size),
        optim: OptimConfig {
            lr: opt!(o, "lr")?.unwrap_or(d.optim.lr),
            ..OptimConfig::default()
        },
        schedule: Schedule::parse(&schedule, warmup).ok_or_else(|| {
            config_err(format!(
                "unknown schedule '{schedule}' (known: constant, warmup, cosine)"
            ))
        })?,
        clip: opt!(o, "clip")?,
        eval_every: opt!(o, "eval_every")?,
        eval_samples: opt!(o, "eval_samples")?.unwrap_or(d.eval_samples),
        seed: opt!(o, "seed")?.unwrap_or(0),
        stop: StopFlag::new(stop),
        checkpoint: None,
    };
    cfg.validate().map_err(py_err)?;
    Ok(cfg)
}
