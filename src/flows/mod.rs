//! A flow is a base distribution plus a chain of transforms:
//! `log p(x) = log p_Z(f(x)) + log|det df/dx|`, `f = f_K o ... o f_1` (data -> noise).
//!
//! - [`Flow`] (`flow.rs`): the runtime object (density, sampling, the training pass).
//! - [`FlowConfig`] (`config.rs`): the architecture as data (a list of [`Layer`]s, a base, an embedding),
//!   stored in a model's `config.json`; [`Flow::builder`] composes one by hand.
//! - [`Layer`] (`layers.rs`): one serialisable config per kind of transform, which builds it.
//! - [`registry`]: layer types defined outside the crate.
//! - [`FlowSpec`] (`presets.rs`, `image.rs`): the named presets (`realnvp`, `maf`, `nsf-c`, `glow`, ...),
//!   functions from a few options to a [`FlowConfig`].

pub mod config;
mod flow;
pub mod image;
pub mod layers;
mod presets;
pub mod registry;
pub mod testing;

pub use crate::transforms::MapConfig;
pub use config::{BaseConfig, EmbeddingConfig, FlowConfig};
pub use flow::Flow;
pub use image::CouplingKind;
pub use layers::{
    ActNormConfig, AutoregressiveConfig, BuildCtx, ConvCouplingConfig, CouplingConfig,
    InvConv1x1Config, Layer, LuLinearConfig, MadeConfig, MlpConfig, PermutationConfig,
    PermutationRule, SqueezeConfig,
};
pub use presets::{FlowDef, FlowKind, FlowSpec, Permute};
pub use registry::{register_layer, CustomLayer};
