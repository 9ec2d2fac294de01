//! Data parallelism inside one process: a small flow's large batch runs as one shard per thread at once, on
//! the flow and on replicas of it (each shard's step runs its kernels on its own thread, with no meeting
//! between kernels); the replicas' gradients are then added to the flow's. The same loss and gradients up to
//! the order of the sums over rows, which depends on the pool's number of threads (the same bits for the same
//! number, also when a [`crate::engine::pool::Tuner`] keeps the kernels to one thread: the shards then run in
//! turn on the flow).
//!
//! Every transform says whether it can be copied for a shard ([`crate::transforms::Transform::replica`]);
//! one that cannot (batch statistics, an initialisation from the first batch still to come) keeps the whole
//! batch on the flow itself.

use crate::engine::{Float, Mat};
use crate::flows::Flow;
use crate::Error;

/// Flows with at most this many parameters (and buffers) train large batches in shards. Each sharded step
/// also copies the parameters into the replicas and adds their gradients up, a pass over the weights that a
/// flow of w2's size (MAF, 1.8M parameters) does not win back; w1's small RealNVP does (`docs/results/speed.md`).
const SHARD_TRAIN_PARAMS: usize = 1 << 19;

/// The replicas of one flow, kept from step to step.
pub struct DataParallel<F: Float> {
    replicas: Vec<Flow<F>>,
    /// The layer (`transforms.len()` for the base) that had no replica at the last try, asked first next time
    /// (so a flow that never shards does not copy its layers each step).
    refused: Option<usize>,
    /// Gradient buffers (with their stale marks) for running the shards in turn on one thread.
    held: Vec<(Vec<F>, bool)>,
}

impl<F: Float> Default for DataParallel<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Float> DataParallel<F> {
    pub fn new() -> Self {
        DataParallel {
            replicas: Vec::new(),
            refused: None,
            held: Vec::new(),
        }
    }

    /// [`Flow::nll_backward`] of `flow` on the batch `x` (and context), in shards where that pays.
    pub fn nll_backward(
        &mut self,
        flow: &mut Flow<F>,
        x: &Mat<F>,
        ctx: Option<&Mat<F>>,
    ) -> Result<F, Error> {
        self.nll_backward_weighted(flow, x, ctx, None)
    }

    /// [`DataParallel::nll_backward`] of the weighted mean (a weight per row of `x`).
    pub fn nll_backward_weighted(
        &mut self,
        flow: &mut Flow<F>,
        x: &Mat<F>,
        ctx: Option<&Mat<F>>,
        weights: Option<&[F]>,
    ) -> Result<F, Error> {
        let total = match weights {
            Some(w) => w.iter().copied().sum(),
            None => F::c(x.rows as f64),
        };
        let shards = flow.shard_count(x.rows, SHARD_TRAIN_PARAMS);
        let n = x.rows;
        let cut = |i: usize| i * n / shards;
        if shards > 1 && crate::engine::pool::threads() == 1 && self.made(flow, 1) {
            // a tuner keeps the kernels on one thread: the shards one after the other on the flow itself
            // (no replicas to bring up to date), their gradients added in the same order, so the same bits
            return self.in_turn(flow, x, ctx, weights, total, shards);
        }
        if shards == 1 || !self.ready(flow, shards - 1) {
            return flow.nll_backward_part(x, ctx, weights, total);
        }
        let members: Vec<std::sync::Mutex<&mut Flow<F>>> = std::iter::once(&mut *flow)
            .chain(self.replicas.iter_mut())
            .map(std::sync::Mutex::new)
            .collect();
        let losses = crate::engine::pool::shards(shards, |i| {
            let (a, b) = (cut(i), cut(i + 1));
            let c = ctx.map(|c| c.slice_rows(a, b));
            let mut f = members[i].lock().unwrap_or_else(|e| e.into_inner());
            f.nll_backward_part(
                &x.slice_rows(a, b),
                c.as_ref(),
                weights.map(|w| &w[a..b]),
                total,
            )
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
        if let Some(e) = failed {
            return Err(e);
        }
        for r in &self.replicas {
            for (p, q) in flow.all_params_mut().into_iter().zip(r.all_params()) {
                p.add_grad(q);
            }
        }
        Ok(loss)
    }

    /// The shards of [`DataParallel::nll_backward`] one after the other on `flow`: each shard's gradient is
    /// computed from zero and added to the sum of those before it, as the replicas' are.
    fn in_turn(
        &mut self,
        flow: &mut Flow<F>,
        x: &Mat<F>,
        ctx: Option<&Mat<F>>,
        weights: Option<&[F]>,
        total: F,
        shards: usize,
    ) -> Result<F, Error> {
        let n = x.rows;
        let cut = |i: usize| i * n / shards;
        let mut loss = F::zero();
        for i in 0..shards {
            let (a, b) = (cut(i), cut(i + 1));
            let c = ctx.map(|c| c.slice_rows(a, b));
            if i > 0 {
                // the sum so far out of the way, the gradients stale (zero) for this shard
                for (p, held) in flow.all_params_mut().into_iter().zip(self.held.iter_mut()) {
                    p.swap_grad(held);
                }
            } else {
                let lens: Vec<usize> = flow.all_params().iter().map(|p| p.value().len()).collect();
                self.held.resize_with(lens.len(), || (Vec::new(), true));
                for (h, len) in self.held.iter_mut().zip(lens) {
                    h.0.resize(len, F::zero());
                    h.1 = true;
                }
            }
            loss += flow.nll_backward_part(
                &x.slice_rows(a, b),
                c.as_ref(),
                weights.map(|w| &w[a..b]),
                total,
            )?;
            if i > 0 {
                for (p, held) in flow.all_params_mut().into_iter().zip(self.held.iter_mut()) {
                    p.merge_grad(held);
                }
            }
        }
        Ok(loss)
    }

    /// `count` replicas holding the flow's current parameters, with zeroed gradients (made, or remade when
    /// the flow's layers changed); `false` where a layer has none to give.
    fn ready(&mut self, flow: &Flow<F>, count: usize) -> bool {
        if !self.made(flow, count) {
            return false;
        }
        self.replicas.truncate(count);
        let params = flow.all_params();
        for r in &mut self.replicas {
            let mut buffers = false;
            for (q, p) in r.all_params_mut().into_iter().zip(&params) {
                buffers |= q.follow(p) && !p.trainable;
                q.zero_grad();
            }
            if buffers {
                r.reload();
            }
        }
        true
    }

    /// At least `count` replicas of the flow's layers made (their values not brought up to date); `false`
    /// where a layer has none to give.
    fn made(&mut self, flow: &Flow<F>, count: usize) -> bool {
        let shapes = |f: &Flow<F>| -> Vec<usize> {
            f.all_params().iter().map(|p| p.value().len()).collect()
        };
        let mine = shapes(flow);
        self.replicas
            .retain(|r| shapes(r) == mine && r.transforms.len() == flow.transforms.len());
        if self.replicas.len() < count {
            if let Some(i) = self.refused {
                if !flow.layer_replicates(i) {
                    return false;
                }
            }
        }
        while self.replicas.len() < count {
            match flow.replica() {
                Ok(r) => self.replicas.push(r),
                Err(i) => {
                    self.refused = Some(i);
                    return false;
                }
            }
        }
        self.refused = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pool;
    use crate::flows::{FlowKind, FlowSpec};

    /// With the kernels limited to one thread (a tuner's choice on a busy machine), the shards run in turn on
    /// the flow itself and give the same loss and gradients, to the bit, as the replicas on three threads.
    #[test]
    fn shards_in_turn_give_the_replicas_bits() {
        let _one = pool::CAP_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let spec = FlowSpec {
            layers: 3,
            hidden: 16,
            ..FlowSpec::preset(FlowKind::Realnvp, 3)
        };
        let mut r = crate::engine::rng(7);
        let mut flow = spec.build::<f64>().unwrap();
        // away from the identity start, so that every layer has a gradient
        for p in flow.all_params_mut() {
            let noise = crate::engine::randn::<f64>(&mut r, 1, p.value().len());
            for (v, e) in p.value_mut().iter_mut().zip(&noise.data) {
                *v += 0.1 * e;
            }
        }
        let x = crate::engine::randn::<f64>(&mut r, 256, 3);
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let run = |cap: usize, flow: &mut Flow<f64>| {
            threads.install(|| {
                pool::set_cap(cap);
                let mut dp = DataParallel::new();
                flow.zero_grad();
                let loss = dp.nll_backward(flow, &x, None).unwrap();
                pool::set_cap(0);
                let grads: Vec<Vec<f64>> = flow
                    .all_params()
                    .iter()
                    .map(|p| p.grad().to_vec())
                    .collect();
                (loss, grads)
            })
        };
        let count = threads.install(|| flow.shard_count(256, SHARD_TRAIN_PARAMS));
        assert_eq!(count, 3);
        let (la, ga) = run(0, &mut flow);
        let (lb, gb) = run(1, &mut flow);
        assert_eq!(la.to_bits(), lb.to_bits());
        assert!(ga.iter().flatten().any(|&g| g != 0.0));
        for (a, b) in ga.iter().zip(&gb) {
            assert!(a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}
