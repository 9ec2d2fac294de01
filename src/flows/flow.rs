//! The runtime flow: a base distribution, a chain of transforms and an optional learned context embedding,
//! with the density, sampling and training passes.

use crate::dist::Distribution;
use crate::engine::{Float, Mat, Rng};
use crate::nn::{Mlp, Param};
use crate::transforms::Transform;
use crate::Error;
use std::borrow::Cow;

/// Rows per shard at least: a small flow's batch runs in as many shards as there are threads, as long as each
/// gets this many rows, or (wide rows: images) this many values ([`SHARD_VALUES`]).
const SHARD_ROWS: usize = 64;
/// Values of data per shard at least: 64 rows of 64, or a few images (w6's batch of 64 MNIST images runs in
/// two shards of 32 on two threads: each thread then keeps to its own images for the whole step, instead of
/// the two meeting at every kernel and passing the images' activations between their caches).
const SHARD_VALUES: usize = 64 * 64;
/// Flows with at most this many parameters (and buffers) evaluate large batches in shards; larger ones keep
/// whole batches, whose products split well over the threads on their own.
const SHARD_PARAMS: usize = 1 << 22;

/// Base distribution + chain of transforms (+ an optional learned context embedding).
pub struct Flow<F: Float> {
    pub base: Box<dyn Distribution<F>>,
    pub transforms: Vec<Box<dyn Transform<F>>>,
    /// Columns of the context the user gives (before any embedding).
    pub context_dim: usize,
    /// Maps the context to what the conditioners see; trained with the flow.
    pub embedding: Option<Mlp<F>>,
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
    /// [`SHARD_ROWS`] rows or [`SHARD_VALUES`] values) of a flow of at most `most_params` parameters, else 1.
    pub(crate) fn shard_count(&self, rows: usize, most_params: usize) -> usize {
        let least = SHARD_ROWS.min(SHARD_VALUES.div_ceil(self.dim().max(1)));
        let shards = crate::engine::pool::shard_threads().min(rows / least);
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

    /// The change of variables layer by layer: `x` after each transform, `(y_k, log|det J_k|)` for k = 1..=L
    /// (`y_k = f_k(y_{k-1})`, `y_0 = x`; the log-determinant is that of `f_k` at `y_{k-1}`).
    pub fn forward_stages(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Vec<(Mat<F>, Vec<F>)> {
        let e = self.embed(ctx);
        let mut out: Vec<(Mat<F>, Vec<F>)> = Vec::with_capacity(self.transforms.len());
        for t in &self.transforms {
            let y = out.last().map_or(x, |(y, _)| y);
            let step = t.forward(y, e.as_deref());
            out.push(step);
        }
        out
    }

    /// The log-density of the distribution at stage `k` (the data pushed through the first `k` transforms) at
    /// the rows `y`: `log p_Z(f_L ∘ … ∘ f_{k+1}(y)) + Σ_{j>k} log|det J_j|`. Stage 0 is `log_prob`.
    pub fn stage_log_prob(&self, k: usize, y: &Mat<F>, ctx: Option<&Mat<F>>) -> Vec<F> {
        let e = self.embed(ctx);
        let ctx = e.as_deref();
        let mut z = y.clone();
        let mut lp = vec![F::zero(); y.rows];
        for t in self.transforms.iter().skip(k) {
            let (z2, l) = t.forward(&z, ctx);
            z = z2;
            lp.iter_mut().zip(&l).for_each(|(a, &b)| *a += b);
        }
        lp.iter_mut()
            .zip(self.base.log_prob(&z, ctx))
            .for_each(|(a, b)| *a += b);
        lp
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
    /// accumulated into the parameters). A NaN/Inf anywhere is an error naming the layer. (The trainer runs a
    /// small flow's large batches as shards on the threads: [`crate::train::DataParallel`].)
    pub fn nll_backward(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Result<F, Error> {
        self.nll_backward_part(x, ctx, None, F::c(x.rows as f64))
    }

    /// Every parameter and buffer (the order of [`Flow::named_params`], without the names).
    pub(crate) fn all_params(&self) -> Vec<&Param<F>> {
        let mut v: Vec<&Param<F>> = self.transforms.iter().flat_map(|t| t.params()).collect();
        v.extend(self.base.params());
        v.extend(self.embedding.iter().flat_map(|e| e.params()));
        v
    }

    pub(crate) fn all_params_mut(&mut self) -> Vec<&mut Param<F>> {
        let mut v: Vec<&mut Param<F>> = self
            .transforms
            .iter_mut()
            .flat_map(|t| t.params_mut())
            .collect();
        v.extend(self.base.params_mut());
        v.extend(self.embedding.iter_mut().flat_map(|e| e.params_mut()));
        v
    }

    /// Whether layer `i` (`transforms.len()`: the base) can give a replica now (see [`Transform::replica`]).
    pub fn layer_replicates(&self, i: usize) -> bool {
        match self.transforms.get(i) {
            Some(t) => t.replica().is_some(),
            None => self.base.replica().is_some(),
        }
    }

    /// A copy of the flow to train on a shard of a batch, or the index of the first layer that gives none
    /// (`transforms.len()` for the base): its rows depend on each other (batch statistics) or on a
    /// data-dependent initialisation still to come.
    pub fn replica(&self) -> Result<Flow<F>, usize> {
        let k = self.transforms.len();
        let mut ts = Vec::with_capacity(k);
        for (i, t) in self.transforms.iter().enumerate() {
            ts.push(t.replica().ok_or(i)?);
        }
        let base = self.base.replica().ok_or(k)?;
        Ok(Flow::new(base, ts, self.context_dim).with_embedding(self.embedding.clone()))
    }

    /// [`Flow::nll_backward`] on one shard of a batch whose rows (or, with `weights` for this shard's rows,
    /// whose weights) add up to `total`: the loss is the batch's (weighted) mean.
    pub fn nll_backward_part(
        &mut self,
        x: &Mat<F>,
        ctx: Option<&Mat<F>>,
        weights: Option<&[F]>,
        total: F,
    ) -> Result<F, Error> {
        let n = x.rows;
        let embedded = match (&mut self.embedding, ctx) {
            (Some(e), Some(c)) => Some(e.forward_train(c)),
            _ => None,
        };
        let ctx = embedded.as_ref().or(ctx);
        let (z, ld) = self.forward_train_all(x, ctx)?;
        let lpz = self.base.log_prob_train(&z, ctx);
        let sum: F = match weights {
            None => lpz.iter().zip(&ld).map(|(&a, &b)| a + b).sum(),
            Some(w) => lpz
                .iter()
                .zip(&ld)
                .zip(w)
                .map(|((&a, &b), &w)| w * (a + b))
                .sum(),
        };
        let loss = -sum / total;
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                layer: format!("base distribution ({})", self.base.kind()),
            });
        }
        // each row's share of the loss: 1 / rows, or its weight over the batch's total weight
        let g = match weights {
            None => vec![-F::one() / total; n],
            Some(w) => w.iter().map(|&w| -w / total).collect(),
        };
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

    /// Every transform's `forward_train` in order: `(z, sum of log-dets)`; a NaN/Inf is an error naming the layer.
    fn forward_train_all(
        &mut self,
        x: &Mat<F>,
        ctx: Option<&Mat<F>>,
    ) -> Result<(Mat<F>, Vec<F>), Error> {
        let mut z = x.clone();
        let mut ld = vec![F::zero(); x.rows];
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
        Ok((z, ld))
    }

    /// The score `d log p(x) / dx` of every row, with `log p(x)` (for HMC / MAP users): a training-style pass
    /// and its backward with unit weights on each row's log-density. The flow should be in evaluation mode
    /// (batch norm then uses its running statistics, so rows stay independent); parameter gradients are
    /// cleared afterwards. An error names a layer that gives a NaN/Inf.
    pub fn grad_log_prob(
        &mut self,
        x: &Mat<F>,
        ctx: Option<&Mat<F>>,
    ) -> Result<(Vec<F>, Mat<F>), Error> {
        self.check_input(x, ctx)?;
        let n = x.rows;
        let embedded = self.embed(ctx);
        let ctx = embedded.as_deref();
        let (z, mut lp) = self.forward_train_all(x, ctx)?;
        let lpz = self.base.log_prob_train(&z, ctx);
        lp.iter_mut().zip(&lpz).for_each(|(a, &b)| *a += b);
        let ones = vec![F::one(); n];
        let mut dz = self.base.log_prob_backward(&z, ctx, &ones);
        for t in self.transforms.iter_mut().rev() {
            dz = t.backward(&dz, &ones);
        }
        self.zero_grad();
        if let Some((r, _)) = dz.first_non_finite() {
            return Err(Error::NonFinite {
                layer: format!("the gradient of log p at row {r}"),
            });
        }
        Ok((lp, dz))
    }

    /// The sampling direction's training pass (reverse KL, variational inference): the noise `z` (drawn from
    /// the base by the caller and held fixed: the reparameterisation trick) through every transform's inverse,
    /// keeping what [`Flow::rsample_backward`] needs. Returns `(x, log q(x))` with
    /// `log q(x) = log p_Z(z) - log|det dx/dz|`. An error names a layer without such a pass, a base with
    /// parameters or a learned context embedding (not trained in this direction yet), or a NaN/Inf.
    pub fn rsample_train(
        &mut self,
        z: &Mat<F>,
        ctx: Option<&Mat<F>>,
    ) -> Result<(Mat<F>, Vec<F>), Error> {
        if self.embedding.is_some() {
            return Err(Error::Config(
                "a learned context embedding is not trained in the sampling direction yet".into(),
            ));
        }
        if self.base.params().iter().any(|p| p.trainable) {
            return Err(Error::Config(format!(
                "the base distribution {} has parameters, which are not trained in the sampling direction \
                 yet: use a fixed base (normal, logistic)",
                self.base.kind()
            )));
        }
        let mut lq = self.base.log_prob(z, ctx);
        let mut x = z.clone();
        for (i, t) in self.transforms.iter_mut().enumerate().rev() {
            let kind = t.kind();
            let (x2, l) = t.inverse_train(&x, ctx).ok_or_else(|| {
                Error::Config(format!(
                    "layer {i} ({kind}) has no training pass in the sampling direction"
                ))
            })?;
            if x2.first_non_finite().is_some() || l.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    layer: format!("layer {i} ({kind}) inverse"),
                });
            }
            x = x2;
            lq.iter_mut().zip(&l).for_each(|(a, &b)| *a -= b);
        }
        Ok((x, lq))
    }

    /// Given dL/dx and dL/dlog q(x) of the last [`Flow::rsample_train`], accumulate the parameter gradients
    /// (through the samples and through the log-density). Returns dL/dz.
    pub fn rsample_backward(&mut self, dx: &Mat<F>, dlogq: &[F]) -> Result<Mat<F>, Error> {
        let g: Vec<F> = dlogq.iter().map(|&v| -v).collect();
        let mut d = dx.clone();
        for (i, t) in self.transforms.iter_mut().enumerate() {
            d = t.backward_inverse(&d, &g);
            if d.first_non_finite().is_some() {
                return Err(Error::NonFinite {
                    layer: format!("layer {i} ({}) inverse backward", t.kind()),
                });
            }
        }
        Ok(d)
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
