//! [`TrainConfig`]: the options of a maximum-likelihood training run (steps or epochs, batch size, optimiser,
//! schedule, clipping, validation split, patience, evaluation interval, time limit, seed), its defaults and
//! their validation.

use crate::optim::{OptimConfig, Schedule};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Number of passes over the training split (used when `steps` is `None`).
    pub epochs: usize,
    /// Number of optimiser steps (takes precedence over `epochs`).
    pub steps: Option<usize>,
    pub batch_size: usize,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value.
    pub clip: Option<f64>,
    /// Fraction of the rows held out for validation (0: none; then the last weights are kept).
    pub val_fraction: f64,
    /// Stop after this many evaluations without improvement of the validation NLL (with the plateau
    /// schedule: reduce the learning rate then, and stop at the plateau after the last reduction).
    pub patience: Option<usize>,
    /// Steps between evaluations (`None`: once per epoch, or 20 times per run with `steps`).
    pub eval_every: Option<usize>,
    /// Stop (after a final validation, keeping the best weights) once training has run this long.
    pub max_seconds: Option<f64>,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 50,
            steps: None,
            batch_size: 256,
            optim: OptimConfig::default(),
            schedule: Schedule::Constant,
            clip: None,
            val_fraction: 0.1,
            patience: Some(10),
            eval_every: None,
            max_seconds: None,
            seed: 0,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.into()));
        if self.batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if self.steps == Some(0) || (self.steps.is_none() && self.epochs == 0) {
            return bad("need at least one step / epoch");
        }
        self.optim.validate().map_err(Error::Config)?;
        crate::optim::check_clip(self.clip).map_err(Error::Config)?;
        if self.eval_every == Some(0) {
            return bad("evaluation interval (eval_every) must be at least 1 step");
        }
        if self.patience == Some(0) {
            return bad("patience must be at least 1 evaluation");
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad("validation fraction must be in [0, 1)");
        }
        if self
            .max_seconds
            .is_some_and(|m| !(m.is_finite() && m > 0.0))
        {
            return bad("time limit must be positive");
        }
        if let Schedule::Plateau { decay, .. } = self.schedule {
            if !(decay > 0.0 && decay < 1.0) {
                return bad("the plateau schedule's decay must be in (0, 1)");
            }
            if self.val_fraction == 0.0 || self.patience.is_none() {
                return bad(
                    "the plateau schedule needs validation rows and a patience (it reduces the learning \
                     rate when the validation figure stops improving)",
                );
            }
        }
        Ok(())
    }
}
