//! A flow's architecture as data: the number of features, a list of [`Layer`]s (data -> noise order), a base
//! distribution and an optional context embedding, plus the seed of the initial weights. Stored as the
//! `flow` field of a model's `config.json`; presets ([`super::FlowSpec`]) are functions that make one.
//!
//! ```
//! use nflow::flows::{BaseConfig, CouplingConfig, Flow, Layer, MapConfig};
//! let coupling = |index| Layer::Coupling(CouplingConfig { index, map: MapConfig::SinhArcsinh {}, ..Default::default() });
//! let arch = Flow::<f64>::builder(2)
//!     .layer(coupling(0))
//!     .layer(Layer::LuLinear(Default::default()))
//!     .layer(coupling(1))
//!     .base(BaseConfig::Normal {});
//! let flow = arch.build::<f64>().unwrap();
//! assert_eq!(flow.dim(), 2);
//! ```

use super::layers::{BuildCtx, Layer, MadeConfig};
use super::Flow;
use crate::dist::{
    BaseKind, DiagNormal, Distribution, GaussianMixture, MadeMog, MixtureInit, StandardLogistic,
    StandardNormal, StudentT,
};
use crate::engine::{rng, Float, Rng};
use crate::nn::{Activation, ConvNetKind, Linear, Mlp};
use crate::transforms::{ImageMask, ImageShape, Order, ScaleBound};
use crate::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The base distribution `p_Z`.
/// (The option-less ones are written with braces so that an unknown option in their JSON is refused: serde
/// ignores extra fields of a tagged unit variant.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BaseConfig {
    /// `N(0, I)`.
    Normal {},
    /// A diagonal normal with learned mean and scale.
    DiagNormal {},
    /// The standard logistic (NICE's prior).
    Logistic {},
    /// Independent Student-t marginals with learned degrees of freedom per feature (tail-adaptive flows).
    StudentT {},
    /// A Gaussian mixture with learned weights, means and diagonal scales, initialised from the first batch.
    Mixture {
        components: usize,
        #[serde(default)]
        init: MixtureInit,
    },
    /// MADE MoG (Papamakarios et al. 2017): an autoregressive mixture of Gaussians, the base of MAF MoG.
    MadeMog {
        components: usize,
        #[serde(default)]
        order: Order,
        #[serde(default)]
        index: usize,
        #[serde(default)]
        made: MadeConfig,
        #[serde(default)]
        scale: ScaleBound,
    },
}

impl Default for BaseConfig {
    fn default() -> Self {
        BaseConfig::Normal {}
    }
}

impl BaseConfig {
    pub fn kind(&self) -> BaseKind {
        match self {
            BaseConfig::Normal {} => BaseKind::Normal,
            BaseConfig::DiagNormal {} => BaseKind::DiagNormal,
            BaseConfig::Logistic {} => BaseKind::Logistic,
            BaseConfig::StudentT {} => BaseKind::StudentT,
            BaseConfig::Mixture { .. } => BaseKind::Mixture,
            BaseConfig::MadeMog { .. } => BaseKind::MadeMog,
        }
    }

    fn build<F: Float>(
        &self,
        d: usize,
        cond_dim: usize,
        seed: u64,
        r: &mut Rng,
    ) -> Result<Box<dyn Distribution<F>>, Error> {
        Ok(match self {
            BaseConfig::Normal {} => Box::new(StandardNormal { d }),
            BaseConfig::DiagNormal {} => Box::new(DiagNormal::new(d)),
            BaseConfig::Logistic {} => Box::new(StandardLogistic { d }),
            BaseConfig::StudentT {} => Box::new(StudentT::new(d)),
            BaseConfig::Mixture { components, init } => {
                if *components == 0 {
                    return Err(Error::Config(
                        "base: a mixture needs at least one component".into(),
                    ));
                }
                Box::new(GaussianMixture::new(d, *components, *init, seed))
            }
            BaseConfig::MadeMog {
                components,
                order,
                index,
                made,
                scale,
            } => {
                if *components == 0 {
                    return Err(Error::Config(
                        "base: a mixture needs at least one component".into(),
                    ));
                }
                made.check("base (made-mog)")?;
                let order = order.build(d, *index, r);
                Box::new(MadeMog::new(
                    d,
                    cond_dim,
                    made.hidden,
                    made.depth,
                    *components,
                    made.activation,
                    *scale,
                    &order,
                    crate::nn::MadeOpts {
                        random_degrees: made.random_degrees,
                        residual: made.residual,
                    },
                    r,
                ))
            }
        })
    }
}

/// A learned context embedding: the context goes through an MLP (`depth` hidden layers of `hidden` units)
/// to `features` features, which every conditioner then sees instead of the raw context.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    pub features: usize,
    #[serde(default = "default_embed_hidden")]
    pub hidden: usize,
    #[serde(default = "one")]
    pub depth: usize,
    #[serde(default)]
    pub activation: Activation,
}

fn default_embed_hidden() -> usize {
    64
}

fn one() -> usize {
    1
}

/// Everything needed to rebuild a flow (weights aside).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Number of features.
    pub dim: usize,
    /// Number of context features the user gives (0: unconditional).
    #[serde(default)]
    pub context_dim: usize,
    /// The shape of one row as an image, for image flows (rows are `C*H*W` values, channel planes one after
    /// another): such data is not standardised per column, and is reported in bits/dim too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageShape>,
    /// Data -> noise order.
    #[serde(serialize_with = "layers_out", deserialize_with = "layers_in")]
    pub layers: Vec<Layer>,
    #[serde(default)]
    pub base: BaseConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingConfig>,
    /// Seed of the initial weights and of everything drawn at random when building.
    #[serde(default)]
    pub seed: u64,
}

fn layers_out<S: Serializer>(layers: &[Layer], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(layers.iter().map(Layer::to_json))
}

fn layers_in<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Layer>, D::Error> {
    let vs: Vec<serde_json::Value> = Vec::deserialize(d)?;
    vs.into_iter()
        .enumerate()
        .map(|(i, v)| Layer::from_json(v, &format!("layers[{i}]")))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

impl FlowConfig {
    /// An empty architecture of `dim` features on a standard normal base (add layers with
    /// [`FlowConfig::layer`]).
    pub fn new(dim: usize) -> Self {
        FlowConfig {
            dim,
            context_dim: 0,
            image: None,
            layers: Vec::new(),
            base: BaseConfig::Normal {},
            embedding: None,
            seed: 0,
        }
    }

    pub fn layer(mut self, l: Layer) -> Self {
        self.layers.push(l);
        self
    }

    pub fn layers(mut self, ls: impl IntoIterator<Item = Layer>) -> Self {
        self.layers.extend(ls);
        self
    }

    pub fn base(mut self, b: BaseConfig) -> Self {
        self.base = b;
        self
    }

    /// Condition on `context_dim` context features.
    pub fn context(mut self, context_dim: usize) -> Self {
        self.context_dim = context_dim;
        self
    }

    pub fn embedding(mut self, e: Option<EmbeddingConfig>) -> Self {
        self.embedding = e;
        self
    }

    pub fn image(mut self, shape: Option<ImageShape>) -> Self {
        self.image = shape;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether the data are images (see [`FlowConfig::image`]).
    pub fn is_image(&self) -> bool {
        self.image.is_some()
    }

    /// Context features the conditioners see: the embedding's output, or the raw context.
    pub fn cond_dim(&self) -> usize {
        match self.embedding {
            Some(e) if self.context_dim > 0 => e.features,
            _ => self.context_dim,
        }
    }

    /// Checks that need no building: sizes and the combinations the layers cannot see.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.dim == 0 {
            return bad("dim must be at least 1".into());
        }
        if self.layers.is_empty() && self.base.kind() != BaseKind::MadeMog {
            return bad(
                "a flow needs at least one layer (none only with a made-mog base: MADE MoG)".into(),
            );
        }
        if let Some(e) = self.embedding {
            if self.context_dim == 0 {
                return bad("a context embedding needs a context (context_dim > 0)".into());
            }
            if e.features == 0 || e.hidden == 0 {
                return bad("embedding: features and hidden must be at least 1".into());
            }
        }
        if let Some(s) = self.image {
            if s.dim() != self.dim {
                return bad(format!(
                    "image shape {s} has {} values per image, the flow has {} features",
                    s.dim(),
                    self.dim
                ));
            }
        }
        Ok(())
    }

    /// Build the flow with freshly initialised weights (deterministic in `seed`). Errors name the layer.
    pub fn build<F: Float>(&self) -> Result<Flow<F>, Error> {
        self.validate()?;
        // parameters, their gradients and the optimiser's two moments, 4 bytes each: refused before any
        // allocation when they cannot fit (a config from elsewhere cannot make nflow abort on allocation)
        let (params, largest) = self.approx_params();
        crate::engine::check_fits(
            params.saturating_mul(16),
            "storing the flow's parameters (with gradients and Adam's state)",
        )
            .map_err(|m| {
                Error::Config(format!(
                    "{m}: about {params} parameters, the largest part {} (make it smaller: hidden, depth, width, components)",
                    largest.unwrap_or_else(|| "?".into())
                ))
            })?;
        let mut r = rng(self.seed);
        let c = BuildCtx {
            dim: self.dim,
            cond_dim: self.cond_dim(),
        };
        let ts = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.build::<F>(&c, &mut r).map_err(|e| match e {
                    Error::Config(m) => Error::Config(format!("layer {i}: {m}")),
                    e => e,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let base = self
            .base
            .build::<F>(self.dim, c.cond_dim, self.seed, &mut r)?;
        let e = self.build_embedding(&mut r);
        Ok(Flow::new(base, ts, self.context_dim).with_embedding(e))
    }

    /// About how many parameters the layers hold (their conditioner networks dominate), and the index of the
    /// largest layer: for size checks before anything is allocated. Saturates instead of overflowing.
    pub fn approx_params(&self) -> (u128, Option<String>) {
        use crate::transforms::MapConfig;
        let d = self.dim as u128;
        let cond = self.cond_dim() as u128;
        let per_element = |m: &MapConfig| m.params_per_element() as u128;
        // weights and biases of an MLP / MADE (masks do not make MADE's dense weights smaller)
        let mlp = |inp: u128, h: u128, depth: u128, out: u128| -> u128 {
            inp.saturating_add(1)
                .saturating_mul(h)
                .saturating_add(
                    depth
                        .saturating_sub(1)
                        .saturating_mul(h.saturating_add(1).saturating_mul(h)),
                )
                .saturating_add(h.saturating_add(1).saturating_mul(out))
        };
        // a k x k convolution's weights and biases
        let conv = |k: u128, inp: u128, out: u128| k * k * inp * out + out;
        let mut total: u128 = 0;
        let mut largest: (u128, Option<usize>) = (0, None);
        for (i, l) in self.layers.iter().enumerate() {
            let n = match l {
                // a coupling's conditioner sees the kept half and outputs the other half's parameters
                Layer::Coupling(o) => mlp(
                    d - d / 2 + cond,
                    o.net.hidden as u128,
                    o.net.depth as u128,
                    (d / 2).saturating_mul(per_element(&o.map)),
                ),
                Layer::Autoregressive(o) | Layer::Iaf(o) => mlp(
                    d + cond,
                    o.made.hidden as u128,
                    o.made.depth as u128,
                    d.saturating_mul(per_element(&o.map)),
                ),
                Layer::ConvCoupling(o) => {
                    let (c, w) = (o.shape.c as u128, o.width.min(1 << 40) as u128);
                    let c = c.min(1 << 40);
                    // a channel mask conditions half the channels on the other half; a checkerboard sees all
                    let (cin, cout) = match o.mask {
                        ImageMask::Channel { .. } => (c - c / 2, c / 2),
                        ImageMask::Checkerboard { .. } => (c, c),
                    };
                    let out = cout.saturating_mul(per_element(&o.map));
                    let ctx = cond.min(1 << 40);
                    match o.net {
                        ConvNetKind::Glow {} => conv(3, cin + ctx, w)
                            .saturating_add(conv(1, w, w))
                            .saturating_add(conv(3, w, out)),
                        ConvNetKind::ResNet { blocks } => conv(3, cin + ctx, w)
                            .saturating_add(
                                (blocks.min(1 << 20) as u128).saturating_mul(2 * conv(3, w, w)),
                            )
                            .saturating_add(conv(3, w, out)),
                        ConvNetKind::Single {} => conv(3, cin + ctx, out),
                    }
                }
                Layer::LuLinear(_) => d.saturating_mul(d),
                _ => 2 * d,
            };
            total = total.saturating_add(n);
            if n > largest.0 {
                largest = (n, Some(i));
            }
        }
        // the base: a mixture's weights, means and scales; MADE MoG's network with three outputs per
        // component and feature
        let base = match &self.base {
            BaseConfig::Mixture { components, .. } => {
                (*components as u128).saturating_mul(2 * d + 1)
            }
            BaseConfig::MadeMog {
                components, made, ..
            } => mlp(
                d + cond,
                made.hidden as u128,
                made.depth as u128,
                d.saturating_mul(3).saturating_mul(*components as u128),
            ),
            _ => 2 * d,
        };
        total = total.saturating_add(base);
        if let Some(e) = self.embedding {
            total = total.saturating_add(mlp(
                self.context_dim as u128,
                e.hidden as u128,
                e.depth as u128,
                e.features as u128,
            ));
        }
        if base > largest.0 {
            return (total, Some("the base".into()));
        }
        (total, largest.1.map(|i| format!("layers[{i}]")))
    }

    /// The widest hidden layer of any conditioner (for estimates of activation memory).
    pub fn max_width(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                Layer::Coupling(o) => o.net.hidden,
                Layer::Autoregressive(o) | Layer::Iaf(o) => o.made.hidden,
                Layer::ConvCoupling(o) => o.width * o.shape.h * o.shape.w,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// The learned context embedding (`None` without one). Unlike the conditioners its last layer is not
    /// zero-initialised: the flow starts as the identity anyway, and a random embedding passes the context on
    /// from the first step.
    fn build_embedding<F: Float>(&self, r: &mut Rng) -> Option<Mlp<F>> {
        let e = self.embedding.filter(|_| self.context_dim > 0)?;
        let mut m = Mlp::new(
            "embed",
            self.context_dim,
            e.hidden,
            e.depth,
            e.features,
            e.activation,
            r,
        );
        let last = m.layers.last_mut().expect("at least one layer");
        *last = Linear::new(&format!("embed.{}", e.depth), last.inp, last.out, r);
        Some(m)
    }

    /// The architecture as pretty JSON (what `config.json` holds, and what `nflow train --arch` reads).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("architecture serialises")
    }

    /// Read an architecture from JSON; errors name the field or layer.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("architecture: {}", crate::json_error(&e))))
    }
}

impl<F: Float> Flow<F> {
    /// Start composing a flow of `dim` features by hand: add layers and a base, then
    /// [`FlowConfig::build`] (or give the config to the trainer, which saves it with the model).
    pub fn builder(dim: usize) -> FlowConfig {
        FlowConfig::new(dim)
    }
}
