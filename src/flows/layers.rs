//! Layer configs: one serialisable description per kind of transform, with the options of its family, that
//! builds the transform. A flow's architecture is a list of these (see [`super::FlowConfig`]); `config.json`
//! stores the list, so any flow built from them (a preset's or one composed by hand) trains, saves and loads.
//!
//! In JSON a layer is an object tagged by `"type"` (`{"type": "affine-coupling", "mask": "alternate", ...}`);
//! options left out take their defaults. Types registered from outside the crate ([`super::registry`]) use the
//! same form.

use super::registry;
use crate::engine::{Float, Rng};
use crate::nn::{Activation, ConvKernel, ConvNetKind, MadeOpts};
use crate::transforms::image::channel_permutation;
use crate::transforms::{
    ActNorm, BatchNorm, ImageMask, ImageShape, InvConv1x1, LuLinear, MapConfig, Mask, NetShape,
    Order, Permutation, Prefix, Scaling, Squeeze, Transform,
};
use crate::Error;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// What a layer is built for: the flow's number of features and the context features its conditioners see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildCtx {
    pub dim: usize,
    pub cond_dim: usize,
}

/// An MLP conditioner: `depth` hidden layers of `hidden` units (its last layer starts at zero, so every
/// coupling starts as the identity).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpConfig {
    pub hidden: usize,
    pub depth: usize,
    pub activation: Activation,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            hidden: 128,
            depth: 2,
            activation: Activation::Relu,
        }
    }
}

impl MlpConfig {
    fn shape(&self) -> NetShape {
        NetShape {
            hidden: self.hidden,
            depth: self.depth,
            activation: self.activation,
        }
    }
    fn check(&self, what: &str) -> Result<(), Error> {
        if self.hidden == 0 {
            return Err(Error::Config(format!("{what}: hidden must be at least 1")));
        }
        Ok(())
    }
}

/// A MADE conditioner (Germain et al. 2015): `depth` hidden layers (or ResMADE residual blocks) of `hidden`
/// units with autoregressive degree masks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MadeConfig {
    pub hidden: usize,
    pub depth: usize,
    pub activation: Activation,
    /// ResMADE: `depth` residual blocks of width `hidden`.
    pub residual: bool,
    /// Hidden degrees drawn at random (seeded) instead of cycled over `1..D-1`.
    pub random_degrees: bool,
}

impl Default for MadeConfig {
    fn default() -> Self {
        MadeConfig {
            hidden: 128,
            depth: 2,
            activation: Activation::Relu,
            residual: false,
            random_degrees: false,
        }
    }
}

impl MadeConfig {
    fn opts(&self) -> MadeOpts {
        MadeOpts {
            random_degrees: self.random_degrees,
            residual: self.residual,
        }
    }
    pub(crate) fn check(&self, what: &str) -> Result<(), Error> {
        if self.hidden == 0 || self.depth == 0 {
            return Err(Error::Config(format!(
                "{what}: a MADE needs hidden >= 1 and depth >= 1 (got hidden {}, depth {})",
                self.hidden, self.depth
            )));
        }
        Ok(())
    }
}

/// A coupling layer (Dinh et al. 2015, 2017): the features chosen by the mask go through the element-wise
/// `map`, whose parameters an MLP computes from the other features (and the context). RealNVP is the affine
/// map, NICE the additive one, RQ-NSF (C) the spline.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CouplingConfig {
    pub map: MapConfig,
    /// Which features it transforms, the rule applied as for layer number `index` (alternating rules flip
    /// with its parity).
    pub mask: Mask,
    pub index: usize,
    pub net: MlpConfig,
}

/// A masked autoregressive layer (Papamakarios et al. 2017): feature `i` goes through the element-wise `map`,
/// whose parameters a MADE computes from the features before it in the ordering (and the context). MAF is
/// the affine map, RQ-NSF (AR) the spline. Density one pass, sampling D passes; `iaf` layers the other way.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoregressiveConfig {
    pub map: MapConfig,
    /// The autoregressive ordering, applied as for layer number `index` (`alternate` flips with its parity).
    pub order: Order,
    pub index: usize,
    pub made: MadeConfig,
}

/// How a permutation is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PermutationRule {
    #[default]
    Reverse,
    /// Drawn from the flow's seed.
    Random,
}

/// A fixed permutation of the features, or with `image`, of an image's channels.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PermutationConfig {
    pub rule: PermutationRule,
    /// Explicit indices (`z_i = x_{indices[i]}`), instead of the rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indices: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageShape>,
}

/// A learned LU-parameterised linear map (the NSF paper's), optionally after a random permutation.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LuLinearConfig {
    pub random_permutation: bool,
}

/// ActNorm (Kingma & Dhariwal 2018): per feature, or with `image`, per channel; initialised from the first
/// batch.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActNormConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageShape>,
}

/// Glow's invertible 1x1 convolution on images of `shape`, plain or LU-parameterised.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvConv1x1Config {
    pub shape: ImageShape,
    #[serde(default)]
    pub lu: bool,
}

/// A coupling on images of `shape` with a CNN conditioner ([`ConvCoupling`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvCouplingConfig {
    /// Name of the conditioner's parameters (`net0`, ...): unique within a flow.
    pub name: String,
    pub shape: ImageShape,
    pub mask: ImageMask,
    /// The element-wise map (Glow's and RealNVP's: affine).
    #[serde(default)]
    pub map: MapConfig,
    pub net: ConvNetKind,
    /// Channels of the CNN's hidden layers.
    pub width: usize,
    /// How its few-output convolutions are evaluated; a config without the field: `im2col`, as it was written.
    #[serde(default = "ConvKernel::im2col")]
    pub conv: ConvKernel,
}

/// Squeeze (2x2 space-to-depth) of images of `shape`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqueezeConfig {
    pub shape: ImageShape,
}

/// A layer type registered from outside the crate: its name and options as JSON ([`registry`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CustomLayerConfig {
    pub kind: String,
    pub options: serde_json::Value,
}

/// One layer of a flow's architecture. Transforms of fewer features than the flow (after a multi-scale
/// split) act on the first features and leave the rest alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// (The option-less ones are written with braces so that an unknown option in their JSON is refused.)
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Layer {
    Coupling(CouplingConfig),
    Autoregressive(AutoregressiveConfig),
    /// IAF (Kingma et al. 2016): the affine autoregressive layer used the other way round (sampling one pass).
    Iaf(AutoregressiveConfig),
    Permutation(PermutationConfig),
    LuLinear(LuLinearConfig),
    ActNorm(ActNormConfig),
    BatchNorm {},
    /// NICE's final diagonal scaling.
    Scaling {},
    Squeeze(SqueezeConfig),
    #[serde(rename = "inv-conv-1x1")]
    InvConv1x1(InvConv1x1Config),
    ConvCoupling(ConvCouplingConfig),
    /// Serialised by [`Layer::to_json`], read by [`Layer::from_json`].
    #[serde(skip)]
    Custom(CustomLayerConfig),
}

/// The `"type"` names of the built-in layers.
pub const BUILT_IN: &[&str] = &[
    "coupling",
    "autoregressive",
    "iaf",
    "permutation",
    "lu-linear",
    "act-norm",
    "batch-norm",
    "scaling",
    "squeeze",
    "inv-conv-1x1",
    "conv-coupling",
];

impl Layer {
    /// The layer as a JSON object tagged by `"type"`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Layer::Custom(c) => {
                let mut m = match &c.options {
                    serde_json::Value::Object(m) => m.clone(),
                    serde_json::Value::Null => serde_json::Map::new(),
                    other => {
                        let mut m = serde_json::Map::new();
                        m.insert("options".into(), other.clone());
                        m
                    }
                };
                m.insert("type".into(), serde_json::Value::String(c.kind.clone()));
                serde_json::Value::Object(m)
            }
            l => serde_json::to_value(l).expect("built-in layers serialise"),
        }
    }

    /// A layer from its JSON object; `what` names it in errors (`"layers[3]"`). An unknown `"type"` is an
    /// error naming it and the known ones.
    pub fn from_json(v: serde_json::Value, what: &str) -> Result<Layer, Error> {
        let kind = match v.get("type") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err(Error::Config(format!("{what}: 'type' must be a string"))),
            None => {
                return Err(Error::Config(format!(
                    "{what}: no 'type' (one of {})",
                    known_types().join(", ")
                )))
            }
        };
        if BUILT_IN.contains(&kind.as_str()) {
            return serde_json::from_value(v)
                .map_err(|e| Error::Config(format!("{what} ({kind}): {}", crate::json_error(&e))));
        }
        if registry::is_registered(&kind) {
            let mut options = v;
            if let Some(m) = options.as_object_mut() {
                m.remove("type");
            }
            return Ok(Layer::Custom(CustomLayerConfig { kind, options }));
        }
        Err(Error::Config(format!(
            "{what}: unknown layer type '{kind}' (known: {})",
            known_types().join(", ")
        )))
    }

    /// The layer's `"type"` name.
    pub fn type_name(&self) -> String {
        match self {
            Layer::Custom(c) => c.kind.clone(),
            l => match serde_json::to_value(l) {
                Ok(serde_json::Value::Object(m)) => m
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("?")
                    .to_string(),
                _ => "?".into(),
            },
        }
    }

    /// Whether this is one of the image transforms (convolutions, squeezes, per-channel maps).
    pub fn is_image(&self) -> bool {
        match self {
            Layer::Squeeze(_) | Layer::InvConv1x1(_) | Layer::ConvCoupling(_) => true,
            Layer::ActNorm(a) => a.image.is_some(),
            Layer::Permutation(p) => p.image.is_some(),
            _ => false,
        }
    }

    /// Build the transform with fresh weights, drawing what is random (masks, orderings, permutations,
    /// weights) from `r` in a fixed order. Wrong options are errors naming the layer type.
    pub fn build<F: Float>(
        &self,
        c: &BuildCtx,
        r: &mut Rng,
    ) -> Result<Box<dyn Transform<F>>, Error> {
        let d = c.dim;
        let name = self.type_name();
        let bad = |m: String| Err(Error::Config(format!("{name}: {m}")));
        let t: Box<dyn Transform<F>> = match self {
            Layer::Coupling(o) => {
                if d < 2 {
                    return bad(format!(
                        "a coupling splits the features in two and needs at least 2, got {d} (for \
                         one-dimensional data use autoregressive layers: maf, nsf-ar)"
                    ));
                }
                o.net.check(&name)?;
                o.map
                    .validate()
                    .map_err(|e| Error::Config(format!("{name} ({}): {e}", o.map.name())))?;
                let m = o.mask.build(d, o.index, r);
                o.map.coupling(&m, c.cond_dim, o.net.shape(), r)
            }
            Layer::Autoregressive(o) | Layer::Iaf(o) => {
                o.made.check(&name)?;
                o.map
                    .validate()
                    .map_err(|e| Error::Config(format!("{name} ({}): {e}", o.map.name())))?;
                let order = o.order.build(d, o.index, r);
                let iaf = matches!(self, Layer::Iaf(_));
                let m = &o.made;
                let shape = NetShape {
                    hidden: m.hidden,
                    depth: m.depth,
                    activation: m.activation,
                };
                o.map
                    .autoregressive(&order, c.cond_dim, shape, m.opts(), iaf, r)
                    .map_err(|e| Error::Config(format!("{name}: {e}")))?
            }
            Layer::Permutation(p) => {
                let n = p.image.map_or(d, |s| s.c);
                let idx: Vec<usize> = match (&p.indices, p.rule) {
                    (Some(ix), _) => {
                        let mut seen = vec![false; n];
                        if ix.len() != n
                            || ix
                                .iter()
                                .any(|&i| i >= n || std::mem::replace(&mut seen[i], true))
                        {
                            return bad(format!(
                                "indices must be a permutation of 0..{n}, got {ix:?}"
                            ));
                        }
                        ix.clone()
                    }
                    (None, PermutationRule::Reverse) => (0..n).rev().collect(),
                    (None, PermutationRule::Random) => {
                        let mut ix: Vec<usize> = (0..n).collect();
                        ix.shuffle(r);
                        ix
                    }
                };
                match p.image {
                    Some(s) => {
                        check_image(s, d, &name)?;
                        Box::new(Permutation::new(channel_permutation(s, &idx)))
                    }
                    None => Box::new(Permutation::new(idx)),
                }
            }
            Layer::LuLinear(o) => {
                let p = o
                    .random_permutation
                    .then(|| Permutation::<F>::random(d, r).indices().to_vec());
                Box::new(LuLinear::new(d, p))
            }
            Layer::ActNorm(a) => match a.image {
                Some(s) => {
                    check_image(s, d, &name)?;
                    Box::new(ActNorm::per_channel(s.c, s.hw()))
                }
                None => Box::new(ActNorm::new(d)),
            },
            Layer::BatchNorm {} => Box::new(BatchNorm::new(d)),
            Layer::Scaling {} => Box::new(Scaling::new(d)),
            Layer::Squeeze(s) => {
                check_image(s.shape, d, &name)?;
                if s.shape.h % 2 != 0 || s.shape.w % 2 != 0 {
                    return bad(format!(
                        "a 2x2 squeeze needs even height and width, the images are {}",
                        s.shape
                    ));
                }
                Box::new(Squeeze::new(s.shape))
            }
            Layer::InvConv1x1(o) => {
                check_image(o.shape, d, &name)?;
                Box::new(InvConv1x1::new(o.shape, o.lu, r))
            }
            Layer::ConvCoupling(o) => {
                check_image(o.shape, d, &name)?;
                o.map
                    .validate()
                    .map_err(|e| Error::Config(format!("{name} ({}): {e}", o.map.name())))?;
                if o.width == 0 {
                    return bad("width must be at least 1".into());
                }
                match o.mask {
                    ImageMask::Channel { .. } if o.shape.c < 2 => {
                        return bad("a channel mask needs at least 2 channels".into())
                    }
                    ImageMask::Checkerboard { .. } if o.shape.h < 2 && o.shape.w < 2 => {
                        return bad("a checkerboard mask needs at least 2 pixels".into())
                    }
                    _ => {}
                }
                o.map.conv_coupling(
                    &o.name,
                    o.shape,
                    o.mask,
                    o.net,
                    o.width,
                    c.cond_dim,
                    o.conv == ConvKernel::Direct,
                    r,
                )
            }
            Layer::Custom(l) => registry::build::<F>(&l.kind, &l.options, c, r)?,
        };
        let td = t.dim();
        if td > d {
            return bad(format!("acts on {td} features, the flow has {d}"));
        }
        if td == 0 {
            return bad("acts on no features".into());
        }
        Ok(if td < d {
            Box::new(Prefix::new(d, t))
        } else {
            t
        })
    }
}

fn check_image(s: ImageShape, d: usize, name: &str) -> Result<(), Error> {
    if s.c == 0 || s.h == 0 || s.w == 0 || s.dim() > d {
        return Err(Error::Config(format!(
            "{name}: image shape {s} does not fit a flow of {d} features"
        )));
    }
    Ok(())
}

/// Every layer type a config may name: the built-in ones, then the registered ones.
pub fn known_types() -> Vec<String> {
    let mut v: Vec<String> = BUILT_IN.iter().map(|s| s.to_string()).collect();
    v.extend(registry::names());
    v
}
