//! MADE: masked autoencoder for distribution estimation (Germain et al. 2015). An MLP whose weight matrices are
//! masked so that every output belonging to input feature `i` depends only on the features that come before
//! `i` in a chosen ordering (and on the context, which every unit may see).
//!
//! Degrees: input feature `i` has degree `order[i] + 1` (1..=D), context inputs degree 0; a hidden unit of
//! degree `m` connects to inputs of degree `<= m`; an output of feature `i` connects to hidden units of degree
//! `< order[i] + 1`. Hidden degrees are cycled over 1..D-1 or drawn at random.

use super::{Activation, Mlp, Param};
use crate::engine::{Float, Mat, Rng};
use rand::Rng as _;

/// Structural options of a MADE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MadeOpts {
    /// Hidden degrees drawn at random (else cycled over 1..D-1).
    pub random_degrees: bool,
    /// ResMADE (Nash & Durkan 2019): `depth` residual blocks, all hidden layers sharing one set of degrees
    /// (a unit of degree m may then see a unit of the same degree, so the skip connections keep the masks
    /// autoregressive).
    pub residual: bool,
}

#[derive(Clone, Debug)]
pub struct Made<F> {
    pub net: Mlp<F>,
    /// Position of each feature in the autoregressive ordering (buffer, saved).
    order: Param<F>,
    /// Degrees of the hidden units, one buffer per hidden layer (saved).
    hidden_degrees: Vec<Param<F>>,
    d: usize,
    ctx_dim: usize,
    /// dL/dcontext of the last `backward` / `backward_params` (conditional MADE).
    dctx: Option<Mat<F>>,
}

impl<F: Float> Made<F> {
    /// `order[i]`: position of feature `i` (a permutation of 0..d). Outputs: `outputs_per_feature` blocks of
    /// `d` (block `k` holds output `k` of every feature, in feature order).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d: usize,
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        outputs_per_feature: usize,
        act: Activation,
        order: &[usize],
        opts: MadeOpts,
        rng: &mut Rng,
    ) -> Self {
        assert_eq!(order.len(), d);
        assert!(depth >= 1, "MADE needs at least one hidden layer");
        let random_degrees = opts.random_degrees;
        // both constructors take (name, in, hidden, depth | blocks, out, act, rng)
        let build = if opts.residual {
            Mlp::new_residual
        } else {
            Mlp::new
        };
        let net = build(
            "made",
            d + ctx_dim,
            hidden,
            depth,
            outputs_per_feature * d,
            act,
            rng,
        );
        let n_hidden = net.layers.len() - 1;
        let top = (d.max(2) - 1) as u64; // hidden degrees in 1..=D-1
        let mut prev_min = 1u64;
        let mut hidden_degrees: Vec<Param<F>> = Vec::new();
        for l in 0..n_hidden {
            if opts.residual && l > 0 {
                let first = hidden_degrees[0].value().to_vec();
                hidden_degrees.push(Param::buffer(
                    format!("made.degrees.{l}"),
                    vec![hidden],
                    first,
                ));
                continue;
            }
            let mut deg: Vec<u64> = (0..hidden)
                .map(|j| {
                    if random_degrees {
                        rng.gen_range(prev_min.min(top)..=top)
                    } else {
                        (j as u64 % top) + 1
                    }
                })
                .collect();
            // Hidden units are exchangeable: sorted by degree, each layer's mask is block-triangular and the
            // products skip the masked-out blocks (see `Linear::set_mask`).
            deg.sort_unstable();
            let deg: Vec<F> = deg.into_iter().map(|m| F::c(m as f64)).collect();
            prev_min = deg.iter().map(|v| v.f64() as u64).min().unwrap_or(1);
            hidden_degrees.push(Param::buffer(
                format!("made.degrees.{l}"),
                vec![hidden],
                deg,
            ));
        }
        let mut made = Made {
            net,
            order: Param::buffer(
                "made.order",
                vec![d],
                order.iter().map(|&o| F::c(o as f64)).collect(),
            ),
            hidden_degrees,
            d,
            ctx_dim,
            dctx: None,
        };
        made.apply_masks();
        made
    }

    pub fn order(&self) -> Vec<usize> {
        self.order
            .value()
            .iter()
            .map(|v| v.f64() as usize)
            .collect()
    }

    /// (Re)build the masks from the saved degrees.
    pub fn apply_masks(&mut self) {
        let order = self.order();
        let mut deg_in: Vec<usize> = order.iter().map(|&o| o + 1).collect();
        deg_in.extend(std::iter::repeat_n(0, self.ctx_dim));
        let hid: Vec<Vec<usize>> = self
            .hidden_degrees
            .iter()
            .map(|p| p.value().iter().map(|v| v.f64() as usize).collect())
            .collect();
        let n = self.net.layers.len();
        for l in 0..n {
            let prev: &[usize] = if l == 0 { &deg_in } else { &hid[l - 1] };
            let layer = &mut self.net.layers[l];
            let mut mask = vec![F::zero(); layer.out * layer.inp];
            for o in 0..layer.out {
                for i in 0..layer.inp {
                    let on = if l + 1 < n {
                        hid[l][o] >= prev[i]
                    } else {
                        order[o % self.d] + 1 > prev[i]
                    };
                    if on {
                        mask[o * layer.inp + i] = F::one();
                    }
                }
            }
            layer.set_mask(mask);
        }
    }

    /// The network's input: `x`, with the context columns appended for a conditional MADE.
    pub fn input(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        match (ctx, self.ctx_dim) {
            (_, 0) => x.clone(),
            (Some(c), k) => {
                assert_eq!(c.cols, k, "context has {} columns, expected {k}", c.cols);
                x.hcat(c)
            }
            (None, k) => panic!("conditional MADE needs a context of {k} columns"),
        }
    }

    pub fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        self.net.forward(&self.input(x, ctx))
    }

    pub fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        let inp = self.input(x, ctx);
        self.net.forward_train_owned(inp)
    }

    /// Gradient w.r.t. the `d` data inputs; the context's is kept for [`Made::take_context_grad`].
    pub fn backward(&mut self, dy: &Mat<F>) -> Mat<F> {
        let din = self.net.backward(dy, true).expect("input gradient");
        self.keep_context_grad(&din);
        self.data_cols(din)
    }

    fn keep_context_grad(&mut self, din: &Mat<F>) {
        self.dctx = (self.ctx_dim > 0)
            .then(|| din.gather_cols(&(self.d..self.d + self.ctx_dim).collect::<Vec<_>>()));
    }

    /// dL/dcontext of the last `backward` / `backward_params` (`None` without a context).
    pub fn take_context_grad(&mut self) -> Option<Mat<F>> {
        self.dctx.take()
    }

    /// The `d` data columns of a matrix laid out like the network's input (context columns dropped).
    fn data_cols(&self, m: Mat<F>) -> Mat<F> {
        if m.cols == self.d {
            m
        } else {
            m.gather_cols(&(0..self.d).collect::<Vec<_>>())
        }
    }

    /// The D sequential passes of sampling / inverting an autoregressive model: the network input (data columns
    /// zero, context appended) and the layer buffers are allocated once; pass `p` calls `fix(i, outputs,
    /// input)` for the feature `i` at position `p`, which writes column `i` of `input` for every row (it may
    /// read only feature `i`'s outputs: columns `k*d + i`). Returns the `rows x d` data columns.
    ///
    /// With sorted hidden degrees (every model built since they are sorted), pass `p` computes only what
    /// became computable: the hidden units of degree `p` (their inputs have degree <= `p`, all final) and the
    /// outputs of feature `i`, so the D passes together cost about one full forward pass instead of D.
    pub fn sequential(
        &self,
        rows: usize,
        ctx: Option<&Mat<F>>,
        mut fix: impl FnMut(usize, &Mat<F>, &mut Mat<F>),
    ) -> Mat<F> {
        let mut by_pos = vec![0; self.d];
        for (i, p) in self.order().into_iter().enumerate() {
            by_pos[p] = i;
        }
        let mut inp = self.input(&Mat::zeros(rows, self.d), ctx);
        let hid: Vec<Vec<usize>> = self
            .hidden_degrees
            .iter()
            .map(|p| p.value().iter().map(|v| v.f64() as usize).collect())
            .collect();
        let sorted = hid.iter().all(|h| h.windows(2).all(|w| w[0] <= w[1]));
        if self.net.residual || !sorted {
            // full passes (residual MADEs; models saved with unsorted degrees)
            let mut ws = Vec::new();
            for &i in &by_pos {
                let h = self.net.forward_into(&inp, &mut ws);
                fix(i, h, &mut inp);
            }
            return self.data_cols(inp);
        }
        let layers = &self.net.layers;
        let last = layers.len() - 1;
        let mut acts: Vec<Mat<F>> = layers[..last]
            .iter()
            .map(|l| Mat::zeros(rows, l.out))
            .collect();
        let mut out = Mat::zeros(rows, layers[last].out);
        let per_feature = layers[last].out / self.d;
        let act = self.net.act;
        for (p, &i) in by_pos.iter().enumerate() {
            for l in 0..last {
                let (u0, u1) = (
                    hid[l].partition_point(|&g| g < p),
                    hid[l].partition_point(|&g| g <= p),
                );
                if u0 == u1 {
                    continue;
                }
                let (done, rest) = acts.split_at_mut(l);
                let src = if l == 0 { &inp } else { &done[l - 1] };
                let y = &mut rest[0];
                layers[l].forward_rows(src, y, u0, u1);
                for r in 0..rows {
                    y.row_mut(r)[u0..u1]
                        .iter_mut()
                        .for_each(|v| *v = act.apply(*v));
                }
            }
            let src = if last == 0 { &inp } else { &acts[last - 1] };
            for k in 0..per_feature {
                let o = k * self.d + i;
                layers[last].forward_rows(src, &mut out, o, o + 1);
            }
            fix(i, &out, &mut inp);
        }
        self.data_cols(inp)
    }

    /// Accumulate parameter gradients (and the context's gradient; no data-input gradient).
    pub fn backward_params(&mut self, dy: &Mat<F>) {
        let want_ctx = self.ctx_dim > 0;
        if let Some(din) = self.net.backward(dy, want_ctx) {
            self.keep_context_grad(&din);
        }
    }

    /// Like [`Made::backward`] but leaves parameter gradients untouched.
    pub fn backward_input(&mut self, dy: &Mat<F>) -> Mat<F> {
        let din = self.net.backward_input(dy);
        self.data_cols(din)
    }

    pub fn params(&self) -> Vec<&Param<F>> {
        let mut v = vec![&self.order];
        v.extend(self.hidden_degrees.iter());
        v.extend(self.net.params());
        v
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        let mut v = vec![&mut self.order];
        v.extend(self.hidden_degrees.iter_mut());
        v.extend(self.net.params_mut());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{randn, rng};
    use rand::seq::SliceRandom;

    /// `sequential` against D full forward passes, for a toy inverse `x_i = 0.5 * x_i_noise + sum of feature
    /// i's outputs`: sorted degrees (the incremental passes), shuffled degrees (the full-pass fallback), with
    /// and without a context, both orderings.
    #[test]
    fn sequential_passes_match_full_recomputation() {
        let d = 9;
        for (case, (ctx_dim, shuffle, reverse)) in [
            (0, false, false),
            (2, false, true),
            (0, true, false),
            (3, true, true),
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = rng(case as u64);
            let order: Vec<usize> = if reverse {
                (0..d).rev().collect()
            } else {
                (0..d).collect()
            };
            let mut made: Made<f64> = Made::new(
                d,
                ctx_dim,
                40,
                2,
                3,
                Activation::Tanh,
                &order,
                MadeOpts::default(),
                &mut r,
            );
            if shuffle {
                for p in &mut made.hidden_degrees {
                    p.value_mut().shuffle(&mut r);
                }
                made.apply_masks();
            }
            for p in made.net.params_mut() {
                let m = p.mask.clone();
                for (k, v) in p.value_mut().iter_mut().enumerate() {
                    if m.as_ref().is_none_or(|m| m[k] != 0.0) {
                        *v += 0.3 * rand::Rng::gen_range(&mut r, -1.0..1.0);
                    }
                }
            }
            let rows = 5;
            let noise: Mat<f64> = randn(&mut r, rows, d);
            let ctx: Option<Mat<f64>> = (ctx_dim > 0).then(|| randn(&mut r, rows, ctx_dim));
            let value = |h: &Mat<f64>, row: usize, i: usize| {
                0.5 * noise.at(row, i) + (0..3).map(|k| h.at(row, k * d + i)).sum::<f64>()
            };
            let got = made.sequential(rows, ctx.as_ref(), |i, h, inp| {
                for row in 0..rows {
                    inp.data[row * inp.cols + i] = value(h, row, i);
                }
            });
            let mut want = Mat::zeros(rows, d);
            for p in 0..d {
                let i = order.iter().position(|&o| o == p).unwrap();
                let h = made.forward(&want, ctx.as_ref());
                for row in 0..rows {
                    want.data[row * d + i] = value(&h, row, i);
                }
            }
            for (a, b) in got.data.iter().zip(&want.data) {
                assert!((a - b).abs() < 1e-12, "case {case}: {a} vs {b}");
            }
        }
    }
}
