//! A flow is a base distribution plus a chain of transforms:
//! `log p(x) = log p_Z(f(x)) + log|det df/dx|`, `f = f_K o ... o f_1` (data -> noise).
//! Presets build the classic architectures by name from a serialisable [`FlowSpec`]; the multi-scale image
//! flows (Glow, RealNVP multi-scale) are built in [`image`].

pub mod image;
pub use image::CouplingKind;

use crate::dist::{
    BaseKind, DiagNormal, Distribution, GaussianMixture, MadeMog, MixtureInit, StandardLogistic,
    StandardNormal,
};
use crate::engine::{rng, Float, Mat, Rng};
use crate::nn::{Activation, Linear, MadeOpts, Mlp, Param};
use crate::transforms::{
    ActNorm, AdditiveCoupling, AffineCoupling, BatchNorm, Iaf, ImageShape, LuLinear, Maf, Mask,
    Order, Permutation, RqSpline, ScaleBound, Scaling, SplineAr, SplineCoupling, Transform,
};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

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

impl Permute {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Permute::None,
            "reverse" => Permute::Reverse,
            "random" => Permute::Random,
            "lu" => Permute::Lu,
            "1x1" => Permute::Conv1x1,
            _ => return None,
        })
    }
}

impl FlowKind {
    pub const NAMES: &'static [&'static str] = &[
        "nice",
        "realnvp",
        "maf",
        "iaf",
        "maf-mog",
        "glow",
        "realnvp-multiscale",
        "nsf-c",
        "nsf-ar",
    ];
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "nice" => Ok(FlowKind::Nice),
            "realnvp" => Ok(FlowKind::Realnvp),
            "maf" => Ok(FlowKind::Maf),
            "iaf" => Ok(FlowKind::Iaf),
            "maf-mog" => Ok(FlowKind::MafMog),
            "glow" => Ok(FlowKind::Glow),
            "realnvp-multiscale" => Ok(FlowKind::RealnvpMultiscale),
            "nsf-c" => Ok(FlowKind::NsfC),
            "nsf-ar" => Ok(FlowKind::NsfAr),
            _ => Err(Error::Config(format!(
                "unknown flow '{s}' (known: {})",
                Self::NAMES.join(", ")
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            FlowKind::Nice => "nice",
            FlowKind::Realnvp => "realnvp",
            FlowKind::Maf => "maf",
            FlowKind::Iaf => "iaf",
            FlowKind::MafMog => "maf-mog",
            FlowKind::Glow => "glow",
            FlowKind::RealnvpMultiscale => "realnvp-multiscale",
            FlowKind::NsfC => "nsf-c",
            FlowKind::NsfAr => "nsf-ar",
        }
    }
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
                ScaleBound::Sigmoid
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
        if matches!(self.kind, FlowKind::NsfC | FlowKind::NsfAr) {
            self.spline().validate().map_err(Error::Config)?;
        }
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
        if let ScaleBound::SoftClamp { bound } = self.scale {
            if !(bound.is_finite() && bound > 0.0) {
                return bad(format!("scale bound must be positive, got {bound}"));
            }
        }
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

    /// The learned context embedding (`None` without one). Unlike the conditioners its last layer is not
    /// zero-initialised: the flow starts as the identity anyway, and a random embedding passes the context on
    /// from the first step.
    fn build_embedding<F: Float>(&self, r: &mut Rng) -> Option<Mlp<F>> {
        (self.cond_dim() != self.context_dim).then(|| {
            let mut e = Mlp::new(
                "embed",
                self.context_dim,
                self.embed_hidden,
                self.embed_depth,
                self.context_embed,
                self.activation,
                r,
            );
            let last = e.layers.last_mut().expect("at least one layer");
            *last = Linear::new(
                &format!("embed.{}", self.embed_depth),
                last.inp,
                last.out,
                r,
            );
            e
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

    fn made_opts(&self) -> MadeOpts {
        MadeOpts {
            random_degrees: self.random_degrees,
            residual: self.residual,
        }
    }

    fn build_base<F: Float>(&self, r: &mut Rng) -> Box<dyn Distribution<F>> {
        let d = self.dim;
        match self.base_kind() {
            BaseKind::Normal => Box::new(StandardNormal { d }),
            BaseKind::DiagNormal => Box::new(DiagNormal::new(d)),
            BaseKind::Logistic => Box::new(StandardLogistic { d }),
            BaseKind::Mixture => Box::new(GaussianMixture::new(
                d,
                self.components,
                self.mixture_init,
                self.seed,
            )),
            BaseKind::MadeMog => {
                let order = self.order.build(d, self.layers, r);
                Box::new(MadeMog::new(
                    d,
                    self.cond_dim(),
                    self.hidden,
                    self.depth,
                    self.components,
                    self.activation,
                    self.scale,
                    &order,
                    self.made_opts(),
                    r,
                ))
            }
        }
    }

    /// Build the flow with freshly initialised weights (deterministic in `seed`).
    pub fn build<F: Float>(&self) -> Result<Flow<F>, Error> {
        self.validate()?;
        let mut r = rng(self.seed);
        let d = self.dim;
        if self.kind.image() {
            let ts = image::build(self, &mut r);
            let e = self.build_embedding(&mut r);
            return Ok(
                Flow::new(Box::new(StandardNormal { d }), ts, self.context_dim).with_embedding(e),
            );
        }
        let mut ts: Vec<Box<dyn Transform<F>>> = Vec::new();
        // ActNorm / batch norm wrap the layers of RealNVP and MAF; NICE has neither.
        let normalised = self.kind != FlowKind::Nice;
        for l in 0..self.layers {
            let mask = self.mask.build(d, l, &mut r);
            if normalised && self.actnorm {
                ts.push(Box::new(ActNorm::new(d)));
            }
            let layer: Box<dyn Transform<F>> = match self.kind {
                FlowKind::Nice => Box::new(AdditiveCoupling::new(
                    &mask,
                    self.cond_dim(),
                    self.hidden,
                    self.depth,
                    self.activation,
                    &mut r,
                )),
                FlowKind::Realnvp => Box::new(AffineCoupling::new(
                    &mask,
                    self.cond_dim(),
                    self.hidden,
                    self.depth,
                    self.activation,
                    self.scale,
                    &mut r,
                )),
                FlowKind::Glow | FlowKind::RealnvpMultiscale => unreachable!("built above"),
                FlowKind::NsfC => Box::new(SplineCoupling::new(
                    &mask,
                    self.cond_dim(),
                    self.hidden,
                    self.depth,
                    self.activation,
                    self.spline(),
                    &mut r,
                )),
                FlowKind::NsfAr => {
                    let order = self.order.build(d, l, &mut r);
                    Box::new(SplineAr::new(
                        d,
                        self.cond_dim(),
                        self.hidden,
                        self.depth,
                        self.activation,
                        self.spline(),
                        &order,
                        self.made_opts(),
                        &mut r,
                    ))
                }
                FlowKind::Maf | FlowKind::MafMog | FlowKind::Iaf => {
                    let order = self.order.build(d, l, &mut r);
                    let maf = Maf::new(
                        d,
                        self.cond_dim(),
                        self.hidden,
                        self.depth,
                        self.activation,
                        self.scale,
                        &order,
                        self.made_opts(),
                        &mut r,
                    );
                    if self.kind == FlowKind::Iaf {
                        Box::new(Iaf::from(maf))
                    } else {
                        Box::new(maf)
                    }
                }
            };
            ts.push(layer);
            if l + 1 < self.layers {
                match self.permute {
                    Permute::None => {}
                    Permute::Reverse => ts.push(Box::new(Permutation::reverse(d))),
                    Permute::Random => ts.push(Box::new(Permutation::random(d, &mut r))),
                    Permute::Lu | Permute::Conv1x1 => {
                        let p = Permutation::<F>::random(d, &mut r).indices().to_vec();
                        ts.push(Box::new(LuLinear::new(d, Some(p))))
                    }
                }
            }
            if normalised && self.batch_norm && l + 1 < self.layers {
                ts.push(Box::new(BatchNorm::new(d)));
            }
        }
        if self.kind == FlowKind::Nice {
            ts.push(Box::new(Scaling::new(d)));
        }
        let base = self.build_base(&mut r);
        let e = self.build_embedding(&mut r);
        Ok(Flow::new(base, ts, self.context_dim).with_embedding(e))
    }
}

/// Rows per shard at least: a small flow's batch runs in as many shards as there are threads, as long as each
/// gets this many rows.
const SHARD_ROWS: usize = 64;
/// Flows with at most this many parameters (and buffers) evaluate large batches in shards; larger ones keep
/// whole batches, whose products split well over the threads on their own.
const SHARD_PARAMS: usize = 1 << 22;
/// The same for training, where each step also copies the parameters into the replicas and adds their
/// gradients up: a pass over the weights that a flow as large as w2 (MAF, 1.8M parameters, 256 rows) does not
/// win back (measured at 2 threads: 1.00x the time, against 0.95x for w1's 2-D RealNVP, 0.14M).
const SHARD_TRAIN_PARAMS: usize = 1 << 19;

/// Base distribution + chain of transforms (+ an optional learned context embedding).
pub struct Flow<F: Float> {
    pub base: Box<dyn Distribution<F>>,
    pub transforms: Vec<Box<dyn Transform<F>>>,
    /// Columns of the context the user gives (before any embedding).
    pub context_dim: usize,
    /// Maps the context to what the conditioners see; trained with the flow.
    pub embedding: Option<Mlp<F>>,
    /// Copies that train on the other shards of a large batch ([`Flow::nll_backward`]), made at the first
    /// sharded step; each takes the flow's parameters before a step and gives back its gradients after it.
    replicas: Vec<Flow<F>>,
    /// The layer (`transforms.len()` for the base) that had no replica at the last try, asked first next time.
    refused: Option<usize>,
}

impl<F: Float> Flow<F> {
    pub fn new(
        base: Box<dyn Distribution<F>>,
        transforms: Vec<Box<dyn Transform<F>>>,
        context_dim: usize,
    ) -> Self {
        for t in &transforms {
            assert_eq!(t.dim(), base.dim(), "{} has the wrong dimension", t.kind());
        }
        Flow {
            base,
            transforms,
            context_dim,
            embedding: None,
            replicas: Vec::new(),
            refused: None,
        }
    }

    /// Put a learned embedding network in front of the conditioners (its input: `context_dim` columns).
    pub fn with_embedding(mut self, embedding: Option<Mlp<F>>) -> Self {
        self.embedding = embedding;
        self
    }

    /// The context as the conditioners see it.
    fn embed<'a>(&self, ctx: Option<&'a Mat<F>>) -> Option<Cow<'a, Mat<F>>> {
        match (&self.embedding, ctx) {
            (Some(e), Some(c)) => Some(Cow::Owned(e.forward(c))),
            (_, c) => c.map(Cow::Borrowed),
        }
    }

    pub fn dim(&self) -> usize {
        self.base.dim()
    }

    /// Check shapes and finiteness of inputs; errors name what is wrong.
    pub fn check_input(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Result<(), Error> {
        if x.cols != self.dim() {
            return Err(Error::Shape(format!(
                "data has {} columns, the flow expects {}",
                x.cols,
                self.dim()
            )));
        }
        if let Some((r, c)) = x.first_non_finite() {
            return Err(Error::Shape(format!(
                "row {r}, column {c}: value is NaN/Inf"
            )));
        }
        match (ctx, self.context_dim) {
            (None, 0) => Ok(()),
            (Some(c), k) if k > 0 => {
                if c.cols != k || c.rows != x.rows {
                    Err(Error::Shape(format!(
                        "context is {}x{}, expected {}x{k}",
                        c.rows, c.cols, x.rows
                    )))
                } else {
                    Ok(())
                }
            }
            (None, k) => Err(Error::Shape(format!(
                "this flow is conditional: it needs a context of {k} columns"
            ))),
            (Some(_), _) => Err(Error::Shape("this flow takes no context".into())),
        }
    }

    /// `(f(x), log|det df/dx|)`: data to noise.
    pub fn transform_to_noise(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let e = self.embed(ctx);
        self.data_to_noise(x, e.as_deref())
    }

    /// How many shards a batch of `rows` rows runs in: one per thread for a large batch (each shard at least
    /// [`SHARD_ROWS`] rows) of a flow of at most `most_params` parameters, else 1.
    fn shard_count(&self, rows: usize, most_params: usize) -> usize {
        let shards = crate::engine::pool::threads().min(rows / SHARD_ROWS);
        if shards < 2 {
            return 1;
        }
        let params: usize = self.all_params().iter().map(|p| p.value().len()).sum();
        match params <= most_params {
            true => shards,
            false => 1,
        }
    }

    /// `f` on each shard of the rows of `x` (and of the context) at once, the results' rows joined in order.
    fn in_shards(
        &self,
        x: &Mat<F>,
        ctx: Option<&Mat<F>>,
        f: impl Fn(&Mat<F>, Option<&Mat<F>>) -> (Mat<F>, Vec<F>) + Sync,
    ) -> (Mat<F>, Vec<F>) {
        let shards = self.shard_count(x.rows, SHARD_PARAMS);
        if shards == 1 {
            return f(x, ctx);
        }
        let cut = |i: usize| i * x.rows / shards;
        let parts = crate::engine::pool::shards(shards, |i| {
            let (a, b) = (cut(i), cut(i + 1));
            let c = ctx.map(|c| c.slice_rows(a, b));
            f(&x.slice_rows(a, b), c.as_ref())
        });
        let cols = parts[0].0.cols;
        let (mut data, mut ld) = (
            Vec::with_capacity(x.rows * cols),
            Vec::with_capacity(x.rows),
        );
        for (m, l) in parts {
            data.extend_from_slice(&m.data);
            ld.extend(l);
        }
        (Mat::from_vec(x.rows, cols, data), ld)
    }

    /// [`Flow::transform_to_noise`] given the embedded context.
    fn data_to_noise(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.in_shards(x, ctx, |x, ctx| self.data_to_noise_rows(x, ctx))
    }

    /// [`Flow::data_to_noise`] on one shard.
    fn data_to_noise_rows(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let mut z = x.clone();
        let mut ld = vec![F::zero(); x.rows];
        for t in &self.transforms {
            let (z2, l) = t.forward(&z, ctx);
            z = z2;
            ld.iter_mut().zip(&l).for_each(|(a, &b)| *a += b);
        }
        (z, ld)
    }

    /// `log p(x)` per row.
    pub fn log_prob(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Vec<F> {
        let e = self.embed(ctx);
        let ctx = e.as_deref();
        let (_, lp) = self.in_shards(x, ctx, |x, ctx| {
            let (z, mut ld) = self.data_to_noise_rows(x, ctx);
            ld.iter_mut()
                .zip(self.base.log_prob(&z, ctx))
                .for_each(|(a, b)| *a += b);
            (Mat::zeros(x.rows, 0), ld)
        });
        lp
    }

    /// Noise to data: `(x, log|det dx/dz|)`.
    pub fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let e = self.embed(ctx);
        self.noise_to_data(z, e.as_deref())
    }

    /// [`Flow::inverse`] given the embedded context.
    fn noise_to_data(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.in_shards(z, ctx, |z, ctx| self.noise_to_data_rows(z, ctx))
    }

    /// [`Flow::noise_to_data`] on one shard.
    fn noise_to_data_rows(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let mut x = z.clone();
        let mut ld = vec![F::zero(); z.rows];
        for t in self.transforms.iter().rev() {
            let (x2, l) = t.inverse(&x, ctx);
            x = x2;
            ld.iter_mut().zip(&l).for_each(|(a, &b)| *a += b);
        }
        (x, ld)
    }

    /// `n` samples (for a conditional flow, `ctx` has `n` rows: one sample per context row).
    pub fn sample(&self, n: usize, rng: &mut Rng, ctx: Option<&Mat<F>>) -> Mat<F> {
        let e = self.embed(ctx);
        let ctx = e.as_deref();
        self.noise_to_data(&self.base.sample(n, ctx, rng), ctx).0
    }

    /// `n` draws from the base distribution (given the context, for a conditional base).
    pub fn sample_noise(&self, n: usize, rng: &mut Rng, ctx: Option<&Mat<F>>) -> Mat<F> {
        let e = self.embed(ctx);
        self.base.sample(n, e.as_deref(), rng)
    }

    /// Samples and their log-density in one pass: `log p(x) = log p_Z(z) - log|det dx/dz|`.
    pub fn sample_and_log_prob(
        &self,
        n: usize,
        rng: &mut Rng,
        ctx: Option<&Mat<F>>,
    ) -> (Mat<F>, Vec<F>) {
        let e = self.embed(ctx);
        let ctx = e.as_deref();
        let z = self.base.sample(n, ctx, rng);
        let lpz = self.base.log_prob(&z, ctx);
        let (x, ld) = self.noise_to_data(&z, ctx);
        (x, lpz.iter().zip(&ld).map(|(&a, &b)| a - b).collect())
    }

    /// One training pass: forward with caches, mean negative log-likelihood, backward (gradients are
    /// accumulated into the parameters). A NaN/Inf anywhere is an error naming the layer.
    ///
    /// On several threads, a large batch of a small flow runs as one shard per thread at once, on the flow
    /// and on replicas of it (data parallelism: each shard's step runs its kernels on its own thread, with no
    /// meeting between kernels); the replicas' gradients are then added to the flow's. The same loss and
    /// gradients up to the order of the sums over rows, which depends on the number of threads (the same bits
    /// for the same number).
    pub fn nll_backward(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Result<F, Error> {
        let shards = self.shard_count(x.rows, SHARD_TRAIN_PARAMS);
        if shards == 1 || !self.ready_replicas(shards - 1) {
            return self.nll_backward_rows(x, ctx, x.rows);
        }
        let mut replicas = std::mem::take(&mut self.replicas);
        let n = x.rows;
        let cut = |i: usize| i * n / shards;
        let members: Vec<std::sync::Mutex<&mut Flow<F>>> = std::iter::once(&mut *self)
            .chain(replicas.iter_mut())
            .map(std::sync::Mutex::new)
            .collect();
        let losses = crate::engine::pool::shards(shards, |i| {
            let (a, b) = (cut(i), cut(i + 1));
            let c = ctx.map(|c| c.slice_rows(a, b));
            let mut flow = members[i].lock().unwrap_or_else(|e| e.into_inner());
            flow.nll_backward_rows(&x.slice_rows(a, b), c.as_ref(), n)
        });
        drop(members);
        let mut loss = F::zero();
        let mut failed = None;
        for l in losses {
            match l {
                Ok(l) => loss += l,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if failed.is_none() {
            for r in &replicas {
                for (p, q) in self.all_params_mut().into_iter().zip(r.all_params()) {
                    p.add_grad(q);
                }
            }
        }
        self.replicas = replicas;
        match failed {
            Some(e) => Err(e),
            None => Ok(loss),
        }
    }

    /// Every parameter and buffer (the order of [`Flow::named_params`], without the names).
    fn all_params(&self) -> Vec<&Param<F>> {
        let mut v: Vec<&Param<F>> = self.transforms.iter().flat_map(|t| t.params()).collect();
        v.extend(self.base.params());
        v.extend(self.embedding.iter().flat_map(|e| e.params()));
        v
    }

    fn all_params_mut(&mut self) -> Vec<&mut Param<F>> {
        let mut v: Vec<&mut Param<F>> = self
            .transforms
            .iter_mut()
            .flat_map(|t| t.params_mut())
            .collect();
        v.extend(self.base.params_mut());
        v.extend(self.embedding.iter_mut().flat_map(|e| e.params_mut()));
        v
    }

    /// `count` replicas holding the flow's current parameters, with zeroed gradients (made, or remade when
    /// the flow's layers changed); `false` where a layer has none to give (see [`Transform::replica`]).
    fn ready_replicas(&mut self, count: usize) -> bool {
        let mut replicas = std::mem::take(&mut self.replicas);
        let shapes = |f: &Flow<F>| -> Vec<usize> {
            f.all_params().iter().map(|p| p.value().len()).collect()
        };
        let mine = shapes(self);
        replicas.retain(|r| shapes(r) == mine && r.transforms.len() == self.transforms.len());
        while replicas.len() < count {
            match self.replica() {
                Some(r) => replicas.push(r),
                None => return false,
            }
        }
        replicas.truncate(count);
        let params = self.all_params();
        for r in &mut replicas {
            let mut buffers = false;
            for (q, p) in r.all_params_mut().into_iter().zip(&params) {
                buffers |= q.follow(p) && !p.trainable;
                q.zero_grad();
            }
            if buffers {
                r.reload();
            }
        }
        self.replicas = replicas;
        true
    }

    /// A copy of the flow for a shard of a training batch; `None` where a layer gives none (the one that
    /// refused is asked first next time, so a flow that never shards does not copy its layers each step).
    fn replica(&mut self) -> Option<Flow<F>> {
        let k = self.transforms.len();
        let ask = |f: &Flow<F>, i: usize| match i == k {
            true => f.base.replica().map(|_| ()),
            false => f.transforms[i].replica().map(|_| ()),
        };
        if let Some(i) = self.refused {
            if i <= k && ask(self, i).is_none() {
                return None;
            }
        }
        let mut ts = Vec::with_capacity(k);
        for (i, t) in self.transforms.iter().enumerate() {
            match t.replica() {
                Some(r) => ts.push(r),
                None => {
                    self.refused = Some(i);
                    return None;
                }
            }
        }
        let Some(base) = self.base.replica() else {
            self.refused = Some(k);
            return None;
        };
        self.refused = None;
        Some(Flow::new(base, ts, self.context_dim).with_embedding(self.embedding.clone()))
    }

    /// [`Flow::nll_backward`] on one shard of a batch of `total_rows` rows (the mean is over the whole batch).
    fn nll_backward_rows(
        &mut self,
        x: &Mat<F>,
        ctx: Option<&Mat<F>>,
        total_rows: usize,
    ) -> Result<F, Error> {
        let n = x.rows;
        let embedded = match (&mut self.embedding, ctx) {
            (Some(e), Some(c)) => Some(e.forward_train(c)),
            _ => None,
        };
        let ctx = embedded.as_ref().or(ctx);
        let mut z = x.clone();
        let mut ld = vec![F::zero(); n];
        for (i, t) in self.transforms.iter_mut().enumerate() {
            let (z2, l) = t.forward_train(&z, ctx);
            if z2.first_non_finite().is_some() || l.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    layer: format!("layer {i} ({})", t.kind()),
                });
            }
            z = z2;
            ld.iter_mut().zip(&l).for_each(|(a, &b)| *a += b);
        }
        let lpz = self.base.log_prob_train(&z, ctx);
        let total: F = lpz.iter().zip(&ld).map(|(&a, &b)| a + b).sum();
        let loss = -total / F::c(total_rows as f64);
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                layer: format!("base distribution ({})", self.base.kind()),
            });
        }
        let g = vec![-F::one() / F::c(total_rows as f64); n];
        let mut dz = self.base.log_prob_backward(&z, ctx, &g);
        for (i, t) in self.transforms.iter_mut().enumerate().rev() {
            if i == 0 {
                // dL/dx of the data is not needed
                t.backward_params(&dz, &g);
                break;
            }
            dz = t.backward(&dz, &g);
            if dz.first_non_finite().is_some() {
                return Err(Error::NonFinite {
                    layer: format!("layer {i} ({}) backward", t.kind()),
                });
            }
        }
        if let Some(e) = &mut self.embedding {
            // every conditioner (and a conditional base) saw the embedded context: sum their gradients
            let mut dctx = Mat::zeros(n, e.layers.last().map_or(0, |l| l.out));
            let grads = self
                .transforms
                .iter_mut()
                .filter_map(|t| t.context_grad())
                .chain(self.base.context_grad());
            for g in grads {
                crate::engine::kernels::zip_inplace(&mut dctx.data, &g.data, |a, b| a + b);
            }
            if dctx.first_non_finite().is_some() {
                return Err(Error::NonFinite {
                    layer: "context embedding backward".into(),
                });
            }
            e.backward(&dctx, false);
        }
        Ok(loss)
    }

    /// Every parameter and buffer with its full name (`"3.net.0.weight"`, `"base.loc"`).
    pub fn named_params(&self) -> Vec<(String, &Param<F>)> {
        let mut v: Vec<(String, &Param<F>)> = Vec::new();
        for (i, t) in self.transforms.iter().enumerate() {
            for p in t.params() {
                v.push((format!("{i}.{}", p.name), p));
            }
        }
        for p in self.base.params() {
            v.push((format!("base.{}", p.name), p));
        }
        if let Some(e) = &self.embedding {
            v.extend(e.params().into_iter().map(|p| (p.name.clone(), p)));
        }
        v
    }

    pub fn named_params_mut(&mut self) -> Vec<(String, &mut Param<F>)> {
        let mut v: Vec<(String, &mut Param<F>)> = Vec::new();
        for (i, t) in self.transforms.iter_mut().enumerate() {
            for p in t.params_mut() {
                let name = format!("{i}.{}", p.name);
                v.push((name, p));
            }
        }
        for p in self.base.params_mut() {
            let name = format!("base.{}", p.name);
            v.push((name, p));
        }
        if let Some(e) = &mut self.embedding {
            v.extend(e.params_mut().into_iter().map(|p| (p.name.clone(), p)));
        }
        v
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.named_params()
            .iter()
            .filter(|(_, p)| p.trainable)
            .map(|(_, p)| p.value().len())
            .sum()
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in self.named_params_mut() {
            p.zero_grad();
        }
    }

    pub fn set_training(&mut self, training: bool) {
        for t in &mut self.transforms {
            t.set_training(training);
        }
        for r in &mut self.replicas {
            r.set_training(training);
        }
    }

    /// Rebuild derived state after parameters were overwritten (loading).
    pub fn reload(&mut self) {
        for t in &mut self.transforms {
            t.reload();
        }
        self.base.reload();
    }

    /// Snapshot of all parameter values (for keeping the best weights).
    pub fn snapshot(&self) -> Vec<Vec<F>> {
        self.named_params()
            .iter()
            .map(|(_, p)| p.value().to_vec())
            .collect()
    }

    pub fn restore(&mut self, snap: &[Vec<F>]) {
        for ((_, p), v) in self.named_params_mut().into_iter().zip(snap) {
            p.value_mut().copy_from_slice(v);
        }
        self.reload();
    }

    /// One-line description per layer.
    pub fn describe(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .transforms
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let n: usize = t
                    .params()
                    .iter()
                    .filter(|p| p.trainable)
                    .map(|p| p.value().len())
                    .sum();
                format!("{i:>3}  {:<18} {n:>9} params", t.kind())
            })
            .collect();
        v.push(format!("base {:<18}", self.base.kind()));
        if let Some(e) = &self.embedding {
            let n: usize = e.params().iter().map(|p| p.value().len()).sum();
            v.push(format!("embed {:<17} {n:>9} params", "ContextEmbedding"));
        }
        v
    }
}
