//! nflow: normalizing flows in Rust, for exact density estimation and sampling.
//!
//! A flow maps data `x` to noise `z = f(x)` through an invertible map; the change-of-variables formula
//! gives the exact density `log p(x) = log p_Z(f(x)) + log|det df/dx|`. Training maximises it.
//!
//! Layers (each depends only on the ones below it):
//! [`engine`] (tensors, kernels, RNG) < [`nn`] (conditioner networks) / [`dist`] (base distributions) <
//! [`transforms`] < [`flows`] < [`data`], [`io`] (files, model folders) < [`train`] < the `nflow` CLI.
//!
//! ```no_run
//! use nflow::{data, flows::{FlowKind, FlowSpec}, train::{TrainConfig, Trainer}};
//! let table = data::toy("moons", 20_000, 0).unwrap();
//! let spec = FlowSpec::preset(FlowKind::Realnvp, 2);
//! let cfg = TrainConfig { steps: Some(2000), ..TrainConfig::default() };
//! let model = Trainer::new(cfg).fit(spec, &table, None, |_| {}).unwrap().model;
//! let test = data::toy("moons", 5_000, 1).unwrap();
//! let lp = model.log_prob_table(&test).unwrap();        // nats, in the data's own units
//! let samples = model.sample(1000, 7, None).unwrap();   // a Table of 1000 draws
//! model.save(std::path::Path::new("moons-model")).unwrap();
//! # let _ = (lp, samples);
//! ```

// Numeric kernels index several parallel buffers by the same loop variable on purpose.
#![allow(clippy::needless_range_loop)]
// Every unsafe block says why it is sound.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod data;
pub mod dist;
pub mod engine;
mod error;
pub mod flows;
pub mod io;
pub mod names;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod train;
pub mod transforms;

pub use engine::{Float, Mat};
pub use flows::{Flow, FlowKind, FlowSpec};
pub use io::Model;

pub use error::{json_error, Error, Result};
