//! The named presets: a few options ([`FlowSpec`]) turned into a list of layers ([`FlowConfig`]). A preset
//! is a function; everything it makes is an ordinary architecture.

use super::config::{BaseConfig, EmbeddingConfig, FlowConfig};
use super::image;
use super::layers::{
    ActNormConfig, AutoregressiveConfig, CouplingConfig, Layer, LuLinearConfig, MadeConfig,
    MlpConfig, PermutationConfig, PermutationRule,
};
use super::{CouplingKind, Flow};
use crate::dist::{BaseKind, MixtureInit};
use crate::engine::Float;
use crate::names::Named;
use crate::nn::Activation;
use crate::transforms::MapConfig;
use crate::transforms::{ImageShape, Mask, Order, RqSpline, ScaleBound};
use crate::Error;
use serde::{Deserialize, Serialize};

crate::names::named!(FlowKind => "flow", Permute => "permute");

/// Named architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowKind {
    /// NICE (Dinh et al. 2015): additive couplings, a final diagonal scaling, logistic prior.
    Nice,
    /// RealNVP (Dinh et al. 2017): affine couplings, optional batch norm between them, Gaussian prior.
    Realnvp,
    /// MAF (Papamakarios et al. 2017): masked affine autoregressive layers (MADE conditioners) with
    /// alternating orderings, optional batch norm between them, Gaussian prior.
    Maf,
    /// IAF (Kingma et al. 2016): the MAF layer used the other way round, sampling in one pass and density of
    /// a given point in D passes.
    Iaf,
    /// MAF MoG (Papamakarios et al. 2017): MAF layers on a MADE MoG base; with 0 layers, MADE MoG.
    MafMog,
    /// Glow (Kingma & Dhariwal 2018): multi-scale image flow, `scales` levels of `layers` steps of ActNorm,
    /// invertible 1x1 convolution and affine coupling with CNN conditioners of width `hidden`.
    Glow,
    /// RealNVP's multi-scale architecture (Dinh et al. 2017): checkerboard and channel-wise couplings with
    /// ResNet conditioners (`depth` residual blocks of width `hidden`), squeeze and factor-out.
    RealnvpMultiscale,
    /// RQ-NSF (C) (Durkan et al. 2019): rational-quadratic spline couplings (`bins`, `tail_bound`), LU-linear
    /// layers between them.
    NsfC,
    /// RQ-NSF (AR): rational-quadratic spline autoregressive layers (MADE conditioners), LU-linear between.
    NsfAr,
}

/// What sits between consecutive layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Permute {
    /// Nothing (the layers' own masks / orderings alternate).
    #[default]
    None,
    Reverse,
    Random,
    /// A learned LU-parameterised linear map with a random permutation (the NSF paper's setting); in image
    /// flows the LU-parameterised invertible 1x1 convolution.
    Lu,
    /// Image flows: Glow's invertible 1x1 convolution (plain `C x C` weight).
    #[serde(rename = "1x1")]
    Conv1x1,
}

impl FlowKind {
    /// Multi-scale flows on images (need an image shape).
    pub fn image(self) -> bool {
        matches!(self, FlowKind::Glow | FlowKind::RealnvpMultiscale)
    }
    /// Layers built from MADE conditioners.
    pub fn autoregressive(self) -> bool {
        matches!(
            self,
            FlowKind::Maf | FlowKind::Iaf | FlowKind::MafMog | FlowKind::NsfAr
        )
    }
}

fn default_components() -> usize {
    10
}

fn default_scales() -> usize {
    2
}

fn default_embed_hidden() -> usize {
    64
}

fn default_embed_depth() -> usize {
    1
}

fn default_bins() -> usize {
    8
}

fn default_tail_bound() -> f64 {
    3.0
}

/// Everything needed to rebuild a flow's architecture (weights aside). Stored in `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowSpec {
    pub kind: FlowKind,
    /// Number of features.
    pub dim: usize,
    /// Number of context features (0: unconditional).
    #[serde(default)]
    pub context_dim: usize,
    /// Number of coupling layers.
    pub layers: usize,
    /// Width of the conditioner's hidden layers.
    pub hidden: usize,
    /// Number of hidden layers of the conditioner.
    pub depth: usize,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub mask: Mask,
    /// Autoregressive ordering of MAF layers.
    #[serde(default)]
    pub order: Order,
    #[serde(default)]
    pub scale: ScaleBound,
    /// Batch-norm bijector between couplings (RealNVP).
    #[serde(default)]
    pub batch_norm: bool,
    /// ActNorm before every coupling.
    #[serde(default)]
    pub actnorm: bool,
    /// What goes between consecutive layers.
    #[serde(default)]
    pub permute: Permute,
    /// MADE conditioners as ResMADE: `depth` residual blocks of width `hidden`.
    #[serde(default)]
    pub residual: bool,
    /// MADE hidden degrees drawn at random (seeded) instead of cycled over 1..D-1.
    #[serde(default)]
    pub random_degrees: bool,
    /// Base distribution; `None`: the preset's (logistic for NICE, MADE MoG for maf-mog, standard normal
    /// otherwise).
    #[serde(default)]
    pub base: Option<BaseKind>,
    /// Mixture components of a `mixture` or `made-mog` base.
    #[serde(default = "default_components")]
    pub components: usize,
    /// How a `mixture` base initialises itself from the first batch.
    #[serde(default)]
    pub mixture_init: MixtureInit,
    /// Image flows: shape of one image (rows are `C*H*W` values, channel planes one after another).
    #[serde(default)]
    pub image: Option<ImageShape>,
    /// Image flows: number of multi-scale levels.
    #[serde(default = "default_scales")]
    pub scales: usize,
    /// Image flows: affine or additive couplings.
    #[serde(default)]
    pub coupling: CouplingKind,
    /// Image flows: Glow's learned conditional prior on each factored-out half.
    #[serde(default)]
    pub split_prior: bool,
    /// Learned context embedding: the context goes through an MLP (`embed_depth` hidden layers of
    /// `embed_hidden` units) to `context_embed` features, which every conditioner then sees instead of the raw
    /// context (trained with the flow). 0: the context goes in as it is.
    #[serde(default)]
    pub context_embed: usize,
    #[serde(default = "default_embed_hidden")]
    pub embed_hidden: usize,
    #[serde(default = "default_embed_depth")]
    pub embed_depth: usize,
    /// Spline flows: bins of each rational-quadratic spline.
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// Spline flows: the splines act on `[-B, B]` (identity outside).
    #[serde(default = "default_tail_bound")]
    pub tail_bound: f64,
    /// Seed of the initial weights and of random masks.
    #[serde(default)]
    pub seed: u64,
    /// The element-wise map of the preset's couplings and autoregressive layers, instead of its own (affine
    /// for realnvp / maf / glow / realnvp-multiscale, additive for nice, the spline for nsf-c / nsf-ar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapConfig>,
}

impl FlowSpec {
    /// The preset's defaults for `dim` features.
    pub fn preset(kind: FlowKind, dim: usize) -> Self {
        FlowSpec {
            kind,
            dim,
            context_dim: 0,
            layers: match kind {
                FlowKind::Nice => 4,
                FlowKind::Realnvp => 8,
                FlowKind::Maf | FlowKind::Iaf | FlowKind::MafMog => 5,
                FlowKind::Glow => 8,
                FlowKind::RealnvpMultiscale => 3,
                FlowKind::NsfC | FlowKind::NsfAr => 5,
            },
            hidden: 128,
            depth: match kind {
                FlowKind::Glow => 1,
                FlowKind::RealnvpMultiscale => 2,
                _ => 2,
            },
            activation: Activation::Relu,
            mask: Mask::Alternate,
            order: Order::Alternate,
            scale: if kind == FlowKind::Glow {
                ScaleBound::Sigmoid {}
            } else {
                ScaleBound::default()
            },
            batch_norm: false,
            actnorm: kind.image(),
            permute: match kind {
                FlowKind::Glow => Permute::Conv1x1,
                FlowKind::NsfC | FlowKind::NsfAr => Permute::Lu,
                _ => Permute::None,
            },
            residual: false,
            random_degrees: false,
            base: None,
            components: default_components(),
            mixture_init: MixtureInit::Kmeans,
            image: None,
            scales: default_scales(),
            coupling: CouplingKind::Affine,
            split_prior: false,
            context_embed: 0,
            embed_hidden: default_embed_hidden(),
            embed_depth: default_embed_depth(),
            bins: default_bins(),
            tail_bound: default_tail_bound(),
            seed: 0,
            map: None,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.dim == 0 {
            return bad("dim must be at least 1".into());
        }
        if self.layers == 0 && self.base_kind() != BaseKind::MadeMog {
            return bad("layers must be at least 1 (0 only with a made-mog base: MADE MoG)".into());
        }
        if self.hidden == 0 {
            return bad("hidden must be at least 1".into());
        }
        if self.context_embed > 0 && self.context_dim == 0 {
            return bad("a context embedding (context_embed) needs a context".into());
        }
        if self.context_embed > 0 && self.embed_hidden == 0 {
            return bad("embed_hidden must be at least 1".into());
        }
        if self.map.is_some() && self.kind == FlowKind::Iaf {
            return bad(
                "iaf is built for the affine map only: --map is for the other flows".into(),
            );
        }
        self.element_map()
            .validate()
            .map_err(|e| Error::Config(format!("{}: {e}", self.element_map().name())))?;
        if self.permute == Permute::Conv1x1 && !self.kind.image() {
            return bad(
                "permute 1x1 (invertible 1x1 convolution) is for image flows; use lu".into(),
            );
        }
        if self.kind.image() {
            image::validate(self)?;
            if self.layers == 0 {
                return bad("layers (steps per scale) must be at least 1".into());
            }
            if self.base_kind() != BaseKind::Normal {
                return bad(format!(
                    "{} uses a standard normal prior (factored-out channels go to it); other bases are \
                     not supported",
                    self.kind.name()
                ));
            }
        }
        if (self.kind.autoregressive() || self.base_kind() == BaseKind::MadeMog) && self.depth == 0
        {
            return bad(format!(
                "{} needs at least one hidden layer in its MADE (depth >= 1)",
                self.kind.name()
            ));
        }
        if matches!(self.base_kind(), BaseKind::Mixture | BaseKind::MadeMog) && self.components == 0
        {
            return bad("a mixture base needs at least one component".into());
        }
        self.scale.validate().map_err(Error::Config)?;
        Ok(())
    }

    pub fn base_kind(&self) -> BaseKind {
        self.base.unwrap_or(match self.kind {
            FlowKind::Nice => BaseKind::Logistic,
            FlowKind::MafMog => BaseKind::MadeMog,
            FlowKind::Realnvp
            | FlowKind::Maf
            | FlowKind::Iaf
            | FlowKind::Glow
            | FlowKind::RealnvpMultiscale
            | FlowKind::NsfC
            | FlowKind::NsfAr => BaseKind::Normal,
        })
    }

    /// Context features the conditioners see: the embedding's output, or the raw context.
    pub fn cond_dim(&self) -> usize {
        if self.context_embed > 0 && self.context_dim > 0 {
            self.context_embed
        } else {
            self.context_dim
        }
    }

    /// The learned context embedding, if any (none when its width equals the context's: the conditioners
    /// then see the raw context, as version-1 models were built).
    fn embedding(&self) -> Option<EmbeddingConfig> {
        (self.cond_dim() != self.context_dim).then_some(EmbeddingConfig {
            features: self.context_embed,
            hidden: self.embed_hidden,
            depth: self.embed_depth,
            activation: self.activation,
        })
    }

    /// The rational-quadratic spline of the spline flows.
    pub fn spline(&self) -> RqSpline {
        RqSpline {
            bins: self.bins,
            bound: self.tail_bound,
            ..RqSpline::default()
        }
    }

    pub(super) fn mlp(&self) -> MlpConfig {
        MlpConfig {
            hidden: self.hidden,
            depth: self.depth,
            activation: self.activation,
        }
    }

    fn made(&self) -> MadeConfig {
        MadeConfig {
            hidden: self.hidden,
            depth: self.depth,
            activation: self.activation,
            residual: self.residual,
            random_degrees: self.random_degrees,
        }
    }

    /// The element-wise map of the coupling and autoregressive presets: the preset's own, or `map`.
    pub fn element_map(&self) -> MapConfig {
        if let Some(m) = self.map {
            return m;
        }
        match self.kind {
            FlowKind::Nice => MapConfig::Additive {},
            FlowKind::Glow | FlowKind::RealnvpMultiscale
                if self.coupling == CouplingKind::Additive =>
            {
                MapConfig::Additive {}
            }
            FlowKind::NsfC | FlowKind::NsfAr => MapConfig::RqSpline(self.spline()),
            _ => MapConfig::Affine { scale: self.scale },
        }
    }

    fn base_config(&self) -> BaseConfig {
        match self.base_kind() {
            BaseKind::Normal => BaseConfig::Normal {},
            BaseKind::DiagNormal => BaseConfig::DiagNormal {},
            BaseKind::Logistic => BaseConfig::Logistic {},
            BaseKind::StudentT => BaseConfig::StudentT {},
            BaseKind::Mixture => BaseConfig::Mixture {
                components: self.components,
                init: self.mixture_init,
            },
            BaseKind::MadeMog => BaseConfig::MadeMog {
                components: self.components,
                order: self.order,
                index: self.layers,
                made: self.made(),
                scale: self.scale,
            },
        }
    }

    /// The preset's architecture: its list of layers, base and embedding.
    pub fn architecture(&self) -> Result<FlowConfig, Error> {
        self.layer_list(false)
    }

    /// The architecture as nflow built it before layer lists were stored (version-1 model folders): with a
    /// reverse permutation between layers, the masks / orders still alternated.
    pub(crate) fn architecture_v1(&self) -> Result<FlowConfig, Error> {
        self.layer_list(true)
    }

    fn layer_list(&self, v1: bool) -> Result<FlowConfig, Error> {
        self.validate()?;
        let d = self.dim;
        let config = FlowConfig {
            dim: d,
            context_dim: self.context_dim,
            image: self.image.filter(|_| self.kind.image()),
            layers: Vec::new(),
            base: self.base_config(),
            embedding: self.embedding(),
            seed: self.seed,
        };
        if self.kind.image() {
            return Ok(FlowConfig {
                layers: image::layers(self),
                ..config
            });
        }
        let mut ts: Vec<Layer> = Vec::new();
        // ActNorm / batch norm wrap the layers of RealNVP and MAF; NICE has neither.
        let normalised = self.kind != FlowKind::Nice;
        let (mask, order) = (self.mask, self.order);
        // A reverse permutation between layers already alternates which features a coupling transforms; an
        // alternating mask as well would undo it (with an even number of features every coupling would transform
        // the same ones, and the others would pass through the flow unchanged), so the mask / order stays put.
        let fixed = self.permute == Permute::Reverse && !v1;
        for layer in 0..self.layers {
            let index = if fixed { 0 } else { layer };
            if normalised && self.actnorm {
                ts.push(Layer::ActNorm(ActNormConfig::default()));
            }
            let map = self.element_map();
            let coupling = Layer::Coupling(CouplingConfig {
                map,
                mask,
                index,
                net: self.mlp(),
            });
            let ar = AutoregressiveConfig {
                map,
                order,
                index,
                made: self.made(),
            };
            ts.push(match self.kind {
                FlowKind::Nice | FlowKind::Realnvp | FlowKind::NsfC => coupling,
                FlowKind::Maf | FlowKind::MafMog | FlowKind::NsfAr => Layer::Autoregressive(ar),
                FlowKind::Iaf => Layer::Iaf(ar),
                FlowKind::Glow | FlowKind::RealnvpMultiscale => unreachable!("built above"),
            });
            if layer + 1 < self.layers {
                let perm = |rule| {
                    Layer::Permutation(PermutationConfig {
                        rule,
                        ..PermutationConfig::default()
                    })
                };
                match self.permute {
                    Permute::None => {}
                    Permute::Reverse => ts.push(perm(PermutationRule::Reverse)),
                    Permute::Random => ts.push(perm(PermutationRule::Random)),
                    Permute::Lu | Permute::Conv1x1 => ts.push(Layer::LuLinear(LuLinearConfig {
                        random_permutation: true,
                    })),
                }
                if normalised && self.batch_norm {
                    ts.push(Layer::BatchNorm {});
                }
            }
        }
        if self.kind == FlowKind::Nice {
            ts.push(Layer::Scaling {});
        }
        Ok(FlowConfig {
            layers: ts,
            ..config
        })
    }

    /// Build the flow with freshly initialised weights (deterministic in `seed`).
    pub fn build<F: Float>(&self) -> Result<Flow<F>, Error> {
        self.architecture()?.build()
    }
}

/// What the trainer fits: a preset's options or an architecture (composed by hand, read from a file).
#[derive(Clone, Debug, PartialEq)]
pub enum FlowDef {
    Preset(FlowSpec),
    Config(FlowConfig),
}

impl From<FlowSpec> for FlowDef {
    fn from(s: FlowSpec) -> Self {
        FlowDef::Preset(s)
    }
}

impl From<FlowConfig> for FlowDef {
    fn from(c: FlowConfig) -> Self {
        FlowDef::Config(c)
    }
}

impl FlowDef {
    /// Whether the flow is for images (see [`FlowConfig::image`]).
    pub fn is_image(&self) -> bool {
        match self {
            FlowDef::Preset(s) => s.kind.image(),
            FlowDef::Config(c) => c.is_image(),
        }
    }

    /// The architecture, and the preset it came from (kept with a model for `nflow info`).
    pub fn resolve(self) -> Result<(FlowConfig, Option<FlowSpec>), Error> {
        match self {
            FlowDef::Preset(s) => Ok((s.architecture()?, Some(s))),
            FlowDef::Config(c) => {
                c.validate()?;
                Ok((c, None))
            }
        }
    }
}
