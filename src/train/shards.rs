//! Data parallelism inside one process: a small flow's large batch runs as one shard per thread at once, on
//! the flow and on replicas of it (each shard's step runs its kernels on its own thread, with no meeting
//! between kernels); the replicas' gradients are then added to the flow's. The same loss and gradients up to
//! the order of the sums over rows, which depends on the number of threads (the same bits for the same number).
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
        }
    }

    /// [`Flow::nll_backward`] of `flow` on the batch `x` (and context), in shards where that pays.
    pub fn nll_backward(
        &mut self,
        flow: &mut Flow<F>,
        x: &Mat<F>,
        ctx: Option<&Mat<F>>,
    ) -> Result<F, Error> {
        let shards = flow.shard_count(x.rows, SHARD_TRAIN_PARAMS);
        if shards == 1 || !self.ready(flow, shards - 1) {
            return flow.nll_backward(x, ctx);
        }
        let n = x.rows;
        let cut = |i: usize| i * n / shards;
        let members: Vec<std::sync::Mutex<&mut Flow<F>>> = std::iter::once(&mut *flow)
            .chain(self.replicas.iter_mut())
            .map(std::sync::Mutex::new)
            .collect();
        let losses = crate::engine::pool::shards(shards, |i| {
            let (a, b) = (cut(i), cut(i + 1));
            let c = ctx.map(|c| c.slice_rows(a, b));
            let mut f = members[i].lock().unwrap_or_else(|e| e.into_inner());
            f.nll_backward_part(&x.slice_rows(a, b), c.as_ref(), n)
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

    /// `count` replicas holding the flow's current parameters, with zeroed gradients (made, or remade when
    /// the flow's layers changed); `false` where a layer has none to give.
    fn ready(&mut self, flow: &Flow<F>, count: usize) -> bool {
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
}
