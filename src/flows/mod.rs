//! A flow is a base distribution plus a chain of transforms:
//! `log p(x) = log p_Z(f(x)) + log|det df/dx|`, `f = f_K o ... o f_1` (data -> noise).
//! Presets build the classic architectures by name from a serialisable [`FlowSpec`].

use crate::dist::{BaseKind, Distribution};
use crate::engine::{rng, Float, Mat, Rng};
use crate::nn::{Activation, Param};
use crate::transforms::{
    ActNorm, AdditiveCoupling, AffineCoupling, BatchNorm, Maf, Mask, Order, ScaleBound, Scaling,
    Transform,
};
use crate::Error;
use serde::{Deserialize, Serialize};

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
}

impl FlowKind {
    pub const NAMES: &'static [&'static str] = &["nice", "realnvp", "maf"];
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "nice" => Ok(FlowKind::Nice),
            "realnvp" => Ok(FlowKind::Realnvp),
            "maf" => Ok(FlowKind::Maf),
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
        }
    }
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
    /// Base distribution; `None`: the preset's (logistic for NICE, standard normal otherwise).
    #[serde(default)]
    pub base: Option<BaseKind>,
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
                FlowKind::Maf => 5,
            },
            hidden: 128,
            depth: 2,
            activation: Activation::Relu,
            mask: Mask::Alternate,
            order: Order::Alternate,
            scale: ScaleBound::default(),
            batch_norm: false,
            actnorm: false,
            base: None,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.dim == 0 {
            return bad("dim must be at least 1".into());
        }
        if self.layers == 0 {
            return bad("layers must be at least 1".into());
        }
        if self.hidden == 0 {
            return bad("hidden must be at least 1".into());
        }
        if self.kind == FlowKind::Maf && self.depth == 0 {
            return bad("maf needs at least one hidden layer (depth >= 1)".into());
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
            FlowKind::Realnvp | FlowKind::Maf => BaseKind::Normal,
        })
    }

    /// Build the flow with freshly initialised weights (deterministic in `seed`).
    pub fn build<F: Float>(&self) -> Result<Flow<F>, Error> {
        self.validate()?;
        let mut r = rng(self.seed);
        let d = self.dim;
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
                    self.context_dim,
                    self.hidden,
                    self.depth,
                    self.activation,
                    &mut r,
                )),
                FlowKind::Realnvp => Box::new(AffineCoupling::new(
                    &mask,
                    self.context_dim,
                    self.hidden,
                    self.depth,
                    self.activation,
                    self.scale,
                    &mut r,
                )),
                FlowKind::Maf => {
                    let order = self.order.build(d, l, &mut r);
                    Box::new(Maf::new(
                        d,
                        self.context_dim,
                        self.hidden,
                        self.depth,
                        self.activation,
                        self.scale,
                        &order,
                        false,
                        &mut r,
                    ))
                }
            };
            ts.push(layer);
            if normalised && self.batch_norm && l + 1 < self.layers {
                ts.push(Box::new(BatchNorm::new(d)));
            }
        }
        if self.kind == FlowKind::Nice {
            ts.push(Box::new(Scaling::new(d)));
        }
        Ok(Flow::new(self.base_kind().build(d), ts, self.context_dim))
    }
}

/// Base distribution + chain of transforms.
pub struct Flow<F: Float> {
    pub base: Box<dyn Distribution<F>>,
    pub transforms: Vec<Box<dyn Transform<F>>>,
    pub context_dim: usize,
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
        let (z, mut ld) = self.transform_to_noise(x, ctx);
        ld.iter_mut()
            .zip(self.base.log_prob(&z))
            .for_each(|(a, b)| *a += b);
        ld
    }

    /// Noise to data: `(x, log|det dx/dz|)`.
    pub fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
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
        self.inverse(&self.base.sample(n, rng), ctx).0
    }

    /// Samples and their log-density in one pass: `log p(x) = log p_Z(z) - log|det dx/dz|`.
    pub fn sample_and_log_prob(
        &self,
        n: usize,
        rng: &mut Rng,
        ctx: Option<&Mat<F>>,
    ) -> (Mat<F>, Vec<F>) {
        let z = self.base.sample(n, rng);
        let lpz = self.base.log_prob(&z);
        let (x, ld) = self.inverse(&z, ctx);
        (x, lpz.iter().zip(&ld).map(|(&a, &b)| a - b).collect())
    }

    /// One training pass: forward with caches, mean negative log-likelihood, backward (gradients are
    /// accumulated into the parameters). A NaN/Inf anywhere is an error naming the layer.
    pub fn nll_backward(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Result<F, Error> {
        let n = x.rows;
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
        let lpz = self.base.log_prob(&z);
        let total: F = lpz.iter().zip(&ld).map(|(&a, &b)| a + b).sum();
        let loss = -total / F::c(n as f64);
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                layer: format!("base distribution ({})", self.base.kind()),
            });
        }
        let g = vec![-F::one() / F::c(n as f64); n];
        let mut dz = self.base.log_prob_backward(&z, &g);
        for (i, t) in self.transforms.iter_mut().enumerate().rev() {
            dz = t.backward(&dz, &g);
            if dz.first_non_finite().is_some() {
                return Err(Error::NonFinite {
                    layer: format!("layer {i} ({}) backward", t.kind()),
                });
            }
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
        v
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.named_params()
            .iter()
            .filter(|(_, p)| p.trainable)
            .map(|(_, p)| p.value.len())
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
    }

    /// Rebuild derived state after parameters were overwritten (loading).
    pub fn reload(&mut self) {
        for t in &mut self.transforms {
            t.reload();
        }
    }

    /// Snapshot of all parameter values (for keeping the best weights).
    pub fn snapshot(&self) -> Vec<Vec<F>> {
        self.named_params()
            .iter()
            .map(|(_, p)| p.value.clone())
            .collect()
    }

    pub fn restore(&mut self, snap: &[Vec<F>]) {
        for ((_, p), v) in self.named_params_mut().into_iter().zip(snap) {
            p.value.copy_from_slice(v);
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
                    .map(|p| p.value.len())
                    .sum();
                format!("{i:>3}  {:<18} {n:>9} params", t.kind())
            })
            .collect();
        v.push(format!("base {:<18}", self.base.kind()));
        v
    }
}
