//! Multi-layer perceptron conditioner: `Linear -> act -> ... -> Linear`, last layer zero-initialised so that
//! the transform it parameterises starts as the identity.

use super::piecewise::{negative_slope, Pieces, TableCache};
use super::Param;
use crate::engine::kernels;
use crate::engine::{Float, Mat, Rng};
use std::borrow::Cow;
use std::sync::Arc;

use super::activation::Activation;
use super::linear::Linear;

/// Whether networks built from now on use the piecewise front ([`Mlp::piecewise`]); on unless switched off.
static PIECEWISE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Switch the piecewise front on or off for networks built afterwards (the benchmark's `--no-piecewise`,
/// to time the dense layers it replaces).
pub fn set_piecewise_default(on: bool) {
    PIECEWISE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Training cache being filled: every layer's input and the pre-activation it came from.
type Cache<'a, F> = (&'a mut Vec<Mat<F>>, &'a mut Vec<Mat<F>>);

/// `in -> [hidden]*depth -> out` perceptron; the last layer starts at zero. With `residual`, the hidden part
/// is `depth` residual blocks `h + W2 act(W1 act(h))` (He et al. 2016, as in ResMADE, Nash & Durkan 2019)
/// between an input layer and an output layer applied to `act(h)`; each block's second layer starts at zero,
/// so every block starts as the identity.
#[derive(Clone, Debug)]
pub struct Mlp<F> {
    pub layers: Vec<Linear<F>>,
    pub act: Activation,
    pub residual: bool,
    /// Evaluate the first two layers of a one-input ReLU / leaky-ReLU network as the piecewise-affine function
    /// they are ([`super::piecewise`]; on by default: same function, `O(H)` instead of `O(H^2)` per row).
    pub piecewise: bool,
    /// Training cache: the input of every layer and the pre-activations of hidden layers (with the
    /// piecewise front, the table and an empty second input).
    inputs: Vec<Mat<F>>,
    pre: Vec<Mat<F>>,
    front: Option<Arc<Pieces<F>>>,
    pub(crate) tables: TableCache<F>,
}

impl<F: Float> Mlp<F> {
    pub fn new(
        name: &str,
        inp: usize,
        hidden: usize,
        depth: usize,
        out: usize,
        act: Activation,
        rng: &mut Rng,
    ) -> Self {
        let mut sizes = vec![inp];
        sizes.extend(std::iter::repeat_n(hidden, depth));
        sizes.push(out);
        let mut layers: Vec<Linear<F>> = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(&format!("{name}.{i}"), w[0], w[1], rng))
            .collect();
        layers.last_mut().expect("at least one layer").zero_init();
        Mlp {
            layers,
            act,
            residual: false,
            piecewise: PIECEWISE.load(std::sync::atomic::Ordering::Relaxed),
            inputs: Vec::new(),
            pre: Vec::new(),
            front: None,
            tables: TableCache::default(),
        }
    }

    /// `in -> hidden -> [residual block] * blocks -> out`.
    pub fn new_residual(
        name: &str,
        inp: usize,
        hidden: usize,
        blocks: usize,
        out: usize,
        act: Activation,
        rng: &mut Rng,
    ) -> Self {
        assert!(blocks >= 1, "a residual MLP needs at least one block");
        let mut layers = vec![Linear::new(&format!("{name}.0"), inp, hidden, rng)];
        for b in 0..blocks {
            layers.push(Linear::new(
                &format!("{name}.{}", 1 + 2 * b),
                hidden,
                hidden,
                rng,
            ));
            let mut second = Linear::new(&format!("{name}.{}", 2 + 2 * b), hidden, hidden, rng);
            second.zero_init();
            layers.push(second);
        }
        let mut last = Linear::new(&format!("{name}.{}", 1 + 2 * blocks), hidden, out, rng);
        last.zero_init();
        layers.push(last);
        Mlp {
            layers,
            act,
            residual: true,
            piecewise: PIECEWISE.load(std::sync::atomic::Ordering::Relaxed),
            inputs: Vec::new(),
            pre: Vec::new(),
            front: None,
            tables: TableCache::default(),
        }
    }

    /// Whether layer `l`'s output is added to the running hidden state (second layer of a residual block).
    #[inline]
    fn adds_residual(&self, l: usize) -> bool {
        self.residual && l >= 2 && l + 1 < self.layers.len() && l.is_multiple_of(2)
    }

    /// The table of the first two layers when they are one piecewise-affine function of a one-column input.
    pub(crate) fn pieces(&self) -> Option<Arc<Pieces<F>>> {
        let (l0, l1) = (self.layers.first()?, self.layers.get(1)?);
        let alpha = negative_slope(self.act)?;
        (self.piecewise && !self.residual && l0.inp == 1 && !l0.masked() && !l1.masked())
            .then(|| self.tables.get(l0, l1, alpha))
    }

    /// The output of the first layers: the piecewise front's (two layers, and the activation that follows them
    /// where another layer does) with its table, or the first layer's.
    fn front_forward(&self, x: &Mat<F>) -> (Mat<F>, Option<Arc<Pieces<F>>>) {
        match self.pieces() {
            Some(p) => {
                let act = (self.layers.len() > 2).then_some(self.act);
                (p.eval(x, act), Some(p))
            }
            // (a ReLU goes in with the product: `fused_relu`)
            None => (self.layers[0].forward_relu(x, self.fused_relu(0)), None),
        }
    }

    /// Whether layer `l`'s output gets the activation as its product writes it (ReLU after a hidden layer,
    /// [`Linear::forward_relu`]) rather than in a pass of its own.
    fn fused_relu(&self, l: usize) -> bool {
        self.act == Activation::Relu && l + 1 < self.layers.len()
    }

    pub fn forward(&self, x: &Mat<F>) -> Mat<F> {
        if self.residual {
            return self.forward_residual(Cow::Borrowed(x), None);
        }
        if let Some(p) = self.pieces() {
            return self.forward_pieces(&p, x);
        }
        let n = self.layers.len();
        let mut h = self.layers[0].infer_relu(x, self.fused_relu(0));
        for l in 1..n {
            if !self.fused_relu(l - 1) {
                self.act.apply_slice(&mut h.data);
            }
            h = self.layers[l].infer_relu(&h, self.fused_relu(l));
        }
        h
    }

    /// Inference with the piecewise front: the whole network on blocks of rows (its hidden activations stay
    /// in cache), the blocks over the pool. Each row is computed the same way whichever thread takes it.
    fn forward_pieces(&self, p: &Pieces<F>, x: &Mat<F>) -> Mat<F> {
        use rayon::prelude::*;
        const ROWS: usize = 64;
        let n = self.layers.len();
        let block = |xb: &Mat<F>| {
            let mut h = p.eval(xb, (n > 2).then_some(self.act));
            for l in 2..n {
                if l > 2 && !self.fused_relu(l - 1) {
                    self.act.apply_slice(&mut h.data);
                }
                h = self.layers[l].infer_relu(&h, self.fused_relu(l));
            }
            h
        };
        if x.rows <= ROWS {
            return block(x);
        }
        let parts: Vec<Mat<F>> = (0..x.rows.div_ceil(ROWS))
            .into_par_iter()
            .map(|b| block(&x.slice_rows(b * ROWS, ((b + 1) * ROWS).min(x.rows))))
            .collect();
        let cols = parts[0].cols;
        let mut data = Vec::with_capacity(x.rows * cols);
        parts.iter().for_each(|m| data.extend_from_slice(&m.data));
        Mat::from_vec(x.rows, cols, data)
    }

    /// Residual forward; with `cache`, keeps every layer's input and the pre-activation it came from.
    fn forward_residual(&self, x: Cow<'_, Mat<F>>, mut cache: Option<Cache<'_, F>>) -> Mat<F> {
        let n = self.layers.len();
        let act = self.act;
        let activate = |m: &Mat<F>| {
            let mut a = m.clone();
            act.apply_slice(&mut a.data);
            a
        };
        // (inference keeps its packed weights: `Linear::infer`)
        let training = cache.is_some();
        let layer = |l: usize, x: &Mat<F>| match training {
            true => self.layers[l].forward(x),
            false => self.layers[l].infer(x),
        };
        let mut h = layer(0, &x);
        if let Some((inputs, pre)) = cache.as_mut() {
            inputs.clear();
            pre.clear();
            inputs.push(x.into_owned());
        }
        let mut t = Mat::zeros(0, 0);
        for l in 1..n {
            // layer l reads act(h) (first layer of a block, and the output layer) or act(t) (second layer)
            let src = if self.adds_residual(l) { &t } else { &h };
            let a = activate(src);
            let y = layer(l, &a);
            if let Some((inputs, pre)) = cache.as_mut() {
                pre.push(src.clone());
                inputs.push(a);
            }
            if self.adds_residual(l) {
                kernels::zip_inplace(&mut h.data, &y.data, |a, b| a + b);
            } else if l + 1 < n {
                t = y;
            } else {
                return y;
            }
        }
        h
    }

    /// Inference forward into reusable buffers (`ws` holds one matrix per layer and is resized only when the
    /// batch size changes): the allocation-free pass for sequential (autoregressive) sampling.
    pub fn forward_into<'a>(&self, x: &Mat<F>, ws: &'a mut Vec<Mat<F>>) -> &'a Mat<F> {
        if self.residual {
            // (residual networks take the allocating path)
            *ws = vec![self.forward_residual(Cow::Borrowed(x), None)];
            return &ws[0];
        }
        let n = self.layers.len();
        if ws.len() != n || ws[0].rows != x.rows {
            *ws = self
                .layers
                .iter()
                .map(|l| Mat::zeros(x.rows, l.out))
                .collect();
        }
        let start = match self.pieces() {
            Some(p) => {
                ws[1] = p.eval(x, (n > 2).then_some(self.act));
                2
            }
            None => 0,
        };
        for l in start..n {
            let (done, rest) = ws.split_at_mut(l);
            let inp = if l == 0 { x } else { &done[l - 1] };
            let y = &mut rest[0];
            self.layers[l].infer_to(inp, y, self.fused_relu(l));
            if l + 1 < n && !self.fused_relu(l) {
                self.act.apply_slice(&mut y.data);
            }
        }
        &ws[n - 1]
    }

    pub fn forward_train(&mut self, x: &Mat<F>) -> Mat<F> {
        self.forward_train_owned(x.clone())
    }

    /// [`Mlp::forward_train`] taking its input by value (it is kept for the backward: no copy).
    pub fn forward_train_owned(&mut self, x: Mat<F>) -> Mat<F> {
        if self.residual {
            let (mut inputs, mut pre) = (
                std::mem::take(&mut self.inputs),
                std::mem::take(&mut self.pre),
            );
            let y = self.forward_residual(Cow::Owned(x), Some((&mut inputs, &mut pre)));
            self.inputs = inputs;
            self.pre = pre;
            return y;
        }
        let n = self.layers.len();
        self.inputs.clear();
        self.pre.clear();
        let (mut h, front) = self.front_forward(&x);
        let start = if front.is_some() { 2 } else { 1 };
        self.front = front;
        self.inputs.push(x);
        if start == 2 {
            // the front's hidden layer is never formed
            self.inputs.push(Mat::zeros(0, 0));
        }
        let act = self.act;
        // activations whose derivative follows from their output are applied in place (no pre-activation kept)
        let keep_pre = !act.deriv_from_output();
        for l in start..n {
            if keep_pre {
                self.pre.push(h.clone());
            }
            if (self.front.is_none() || l > start) && !self.fused_relu(l - 1) {
                act.apply_slice(&mut h.data);
            }
            let next = self.layers[l].forward_relu(&h, self.fused_relu(l));
            self.inputs.push(h);
            h = next;
        }
        h
    }

    /// Back-propagate `dy` (gradient w.r.t. the output) through the cached forward; returns dL/dx.
    pub fn backward(&mut self, dy: &Mat<F>, want_dx: bool) -> Option<Mat<F>> {
        self.backprop(dy, want_dx, true)
    }

    /// dL/dx of the cached forward for an output gradient `dy`, leaving parameter gradients untouched (a
    /// vector-Jacobian product, used by implicit differentiation through IAF's sequential solve).
    pub fn backward_input(&mut self, dy: &Mat<F>) -> Mat<F> {
        self.backprop(dy, true, false).expect("requested")
    }

    fn backprop(&mut self, dy: &Mat<F>, want_dx: bool, params: bool) -> Option<Mat<F>> {
        let n = self.layers.len();
        assert_eq!(self.inputs.len(), n, "Mlp backward without forward_train");
        let act = self.act;
        // gradient w.r.t. layer l's input, optionally accumulating its parameter gradients
        let back = |layer: &mut Linear<F>, x: &Mat<F>, g: &Mat<F>, need: bool| -> Option<Mat<F>> {
            if params {
                layer.backward(x, g, need)
            } else {
                need.then(|| layer.input_grad(g))
            }
        };
        // through act: d pre = d input * act'(pre)
        let through_act = |mut dx: Mat<F>, pre: &Mat<F>, post: &Mat<F>| {
            act.backward_slice(&mut dx.data, &pre.data, &post.data);
            dx
        };
        if !self.residual {
            let mut g = dy.clone();
            for l in (0..n).rev() {
                if l == 1 {
                    if let Some(front) = &self.front {
                        let (l0, l1) = self.layers.split_at_mut(1);
                        return front.backward(
                            &mut l0[0],
                            &mut l1[0],
                            &self.inputs[0],
                            &g,
                            params,
                            want_dx,
                        );
                    }
                }
                let need = l > 0 || want_dx;
                let dx = back(&mut self.layers[l], &self.inputs[l], &g, need);
                if l == 0 {
                    return dx;
                }
                // (without kept pre-activations the derivative is computed from the output)
                let pre = self.pre.get(l - 1).unwrap_or(&self.inputs[l]);
                g = through_act(dx.expect("requested"), pre, &self.inputs[l]);
            }
            return None;
        }
        // residual: gh is the gradient w.r.t. the running hidden state h
        let last = n - 1;
        let dx = back(&mut self.layers[last], &self.inputs[last], dy, true).expect("requested");
        let mut gh = through_act(dx, &self.pre[last - 1], &self.inputs[last]);
        let mut l = last - 1;
        while l >= 2 {
            // block: h_out = h_in + L_l(act(t)), t = L_{l-1}(act(h_in))
            let du = back(&mut self.layers[l], &self.inputs[l], &gh, true).expect("requested");
            let dt = through_act(du, &self.pre[l - 1], &self.inputs[l]);
            let da =
                back(&mut self.layers[l - 1], &self.inputs[l - 1], &dt, true).expect("requested");
            let dh = through_act(da, &self.pre[l - 2], &self.inputs[l - 1]);
            kernels::zip_inplace(&mut gh.data, &dh.data, |a, b| a + b);
            l -= 2;
        }
        back(&mut self.layers[0], &self.inputs[0], &gh, want_dx)
    }

    pub fn params(&self) -> Vec<&Param<F>> {
        self.layers
            .iter()
            .flat_map(|l| [&l.weight, &l.bias])
            .collect()
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        self.layers
            .iter_mut()
            .flat_map(|l| [&mut l.weight, &mut l.bias])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{randn, rng};
    use crate::nn::{Block, Made, MadeOpts};

    /// The block-sparse products of a masked layer equal the dense ones (forward, input gradient, weight and
    /// bias gradients), for a triangular mask, one with two separate runs of columns per block and one whose
    /// input gradient has tiles with no depth in the first block and columns nobody reads; in f64 (the
    /// blocks) and f32 (the ranged kernel, where the CPU has it), with batches above and below its tile.
    #[test]
    fn block_sparse_products_equal_dense() {
        for n in [7, 40] {
            masked_equal_dense::<f64>(n, 1e-12);
            masked_equal_dense::<f32>(n, 2e-5);
        }
    }

    fn masked_equal_dense<F: Float>(n: usize, tol: f64) {
        let mut r = rng(1);
        let (out, inp) = (300, 280);
        let masks: [Box<dyn Fn(usize, usize) -> bool>; 3] = [
            Box::new(|o, i| i * out <= o * inp),
            Box::new(|o, i| i < o / 8 || (i > 100 && i < 110 + o / 40)),
            Box::new(|o, i| i < 270 && (o > 260 || (i < 50 && o > 20))),
        ];
        for (k, on) in masks.iter().enumerate() {
            let mut l: Linear<F> = Linear::new("l", inp, out, &mut r);
            let mask: Vec<F> = (0..out * inp)
                .map(|j| {
                    if on(j / inp, j % inp) {
                        F::one()
                    } else {
                        F::zero()
                    }
                })
                .collect();
            l.set_mask(mask);
            assert!(k == 2 || !l.blocks().is_empty(), "mask {k}: no blocks");
            let mut dense = l.clone();
            dense.blocks.clear();
            dense.panels = None;
            let x: Mat<F> = randn(&mut r, n, inp);
            let dy: Mat<F> = randn(&mut r, n, out);
            // relative to the size of the sums (f32 rounding grows with the depth)
            let close = |a: &[F], b: &[F], what: &str| {
                let scale = b.iter().fold(1.0f64, |m, v| m.max(v.f64().abs()));
                for (u, v) in a.iter().zip(b) {
                    let (u, v) = (u.f64(), v.f64());
                    assert!((u - v).abs() < tol * scale, "mask {k}, {what}: {u} vs {v}");
                }
            };
            close(&l.forward(&x).data, &dense.forward(&x).data, "forward");
            // gradients accumulate onto what is there
            l.weight.grad_mut().iter_mut().for_each(|g| *g = F::one());
            dense
                .weight
                .grad_mut()
                .iter_mut()
                .for_each(|g| *g = F::one());
            let dx = l.backward(&x, &dy, true).unwrap();
            let dxd = dense.backward(&x, &dy, true).unwrap();
            close(&dx.data, &dxd.data, "input gradient");
            close(&l.weight.grad(), &dense.weight.grad(), "weight gradient");
            close(&l.bias.grad(), &dense.bias.grad(), "bias gradient");
        }
    }

    /// A layer's weight gradient after `zero_grad` is the product alone, whatever the memory held (the product
    /// overwrites it), and a second backward adds to it; dense and masked (triangular: tiles with no live
    /// block), f64 and f32 (the kernel, where the CPU has it).
    #[test]
    fn weight_gradient_after_zero_grad_is_overwritten() {
        for masked in [false, true] {
            overwritten::<f64>(masked);
            overwritten::<f32>(masked);
        }
    }

    fn overwritten<F: Float>(masked: bool) {
        let mut r = rng(5);
        let mut fresh: Linear<F> = Linear::new("l", 40, 50, &mut r);
        if masked {
            let mask = (0..50 * 40)
                .map(|j| F::c(((j % 40) * 50 <= (j / 40) * 40) as u8 as f64))
                .collect();
            fresh.set_mask(mask);
        }
        let x: Mat<F> = randn(&mut r, 30, 40);
        let dy: Mat<F> = randn(&mut r, 30, 50);
        let mut want = fresh.clone();
        want.backward(&x, &dy, false);
        let mut l = fresh.clone();
        l.weight.set_grad(vec![F::nan(); 40 * 50]);
        l.bias.set_grad(vec![F::nan(); 50]);
        l.weight.zero_grad();
        l.bias.zero_grad();
        l.backward(&x, &dy, false);
        assert_eq!(l.weight.grad(), want.weight.grad());
        assert_eq!(l.bias.grad(), want.bias.grad());
        l.backward(&x, &dy, false);
        let twice: Vec<F> = want.weight.grad().iter().map(|&g| g + g).collect();
        assert_eq!(*l.weight.grad(), twice[..]);
    }

    /// A big weight trained with Adam keeps its packed forms in step (the layer asks for them in its backward,
    /// the optimiser writes them as it updates the weight): from the first step on the products run on them and
    /// give the bits of products that pack the weight themselves (a clone, which holds no packs), step after step,
    /// masked or not; a write other than the optimiser's makes them stale until its next step.
    #[test]
    fn trained_weights_keep_their_packs_in_step() {
        use crate::optim::{Adam, OptimConfig};
        let mut r = rng(8);
        let (inp, out, n) = (300, 900, 64);
        assert!(
            kernels::WeightPacks::suit::<f32>(n, out, inp) || !crate::engine::sgemm::available()
        );
        for masked in [false, true] {
            let mut l: Linear<f32> = Linear::new("l", inp, out, &mut r);
            if masked {
                let mask = (0..out * inp)
                    .map(|j| ((j % inp) * out <= (j / inp) * inp) as u8 as f32)
                    .collect();
                l.set_mask(mask);
            }
            let mut plain = l.clone();
            let cfg = OptimConfig {
                lr: 1e-2,
                ..OptimConfig::default()
            };
            let (mut opt, mut opt_plain) = (Adam::new(cfg), Adam::new(cfg));
            for step in 0..4 {
                assert_eq!(
                    l.packs_for(n).is_some(),
                    step > 0 && crate::engine::sgemm::available(),
                    "masked {masked}, step {step}: packs in use"
                );
                // the plain layer: a fresh clone each step, so its products always pack the weight
                plain = plain.clone();
                let x: Mat<f32> = randn(&mut r, n, inp);
                let (y, y_plain) = (l.forward_relu(&x, true), plain.forward_relu(&x, true));
                assert!(
                    y.data == y_plain.data,
                    "masked {masked}, step {step}: forward"
                );
                let dy = Mat::from_vec(n, out, y.data.iter().map(|v| v - 0.3).collect());
                let dx = l.backward(&x, &dy, true).unwrap();
                let dx_plain = plain.backward(&x, &dy, true).unwrap();
                assert!(dx.data == dx_plain.data, "masked {masked}, step {step}: dx");
                opt.step(&mut [&mut l.weight, &mut l.bias], 1e-2);
                opt_plain.step(&mut [&mut plain.weight, &mut plain.bias], 1e-2);
                assert!(l.weight.value() == plain.weight.value(), "step {step}");
            }
            // a write of its own: stale, and the products pack the weight again
            l.weight.value_mut()[3] += 0.25;
            plain.weight.value_mut()[3] += 0.25;
            assert!(
                l.packs_for(n).is_none(),
                "masked {masked}: stale packs in use"
            );
            let x: Mat<f32> = randn(&mut r, n, inp);
            assert!(l.forward(&x).data == plain.clone().forward(&x).data);
        }
    }

    /// Inference on packed weights gives the training forward's bits (dense and masked layers, batches on and
    /// off the kernel, `infer_to` into a dirty buffer); the packing is reused while the weights are unchanged,
    /// redone after any write to them (and then again equal to the forward), dropped by a backward; clones
    /// start without it.
    #[test]
    fn inference_packs_weights_once_while_unchanged() {
        let mut r = rng(3);
        for masked in [false, true] {
            let mut l: Linear<f32> = Linear::new("l", 200, 90, &mut r);
            if masked {
                let mask = (0..90 * 200)
                    .map(|j| {
                        if (j % 200) * 90 <= (j / 200) * 200 {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                l.set_mask(mask);
            }
            let held =
                |l: &Linear<f32>| l.packed.0.lock().unwrap().as_ref().map(|(_, p)| p.clone());
            for n in [5, 40, 256] {
                let x: Mat<f32> = randn(&mut r, n, 200);
                assert_eq!(
                    l.infer(&x).data,
                    l.forward(&x).data,
                    "masked {masked}, {n} rows"
                );
                let mut y = Mat::from_vec(n, 90, vec![7.0; n * 90]);
                l.infer_to(&x, &mut y, false);
                assert_eq!(
                    y.data,
                    l.forward(&x).data,
                    "infer_to, masked {masked}, {n} rows"
                );
            }
            let x: Mat<f32> = randn(&mut r, 40, 200);
            let first = held(&l);
            assert_eq!(
                first.is_some(),
                kernels::preparable::<f32>(40, 200, 90),
                "packed exactly where the kernel runs"
            );
            let Some(first) = first else { continue };
            l.infer(&x);
            assert!(
                Arc::ptr_eq(&first, &held(&l).unwrap()),
                "repacked unchanged weights"
            );
            assert!(
                l.clone().packed.0.lock().unwrap().is_none(),
                "clone holds a packing"
            );
            l.weight.value_mut()[5] += 0.5;
            assert_eq!(l.infer(&x).data, l.forward(&x).data, "after a write");
            let second = held(&l).unwrap();
            assert!(!Arc::ptr_eq(&first, &second), "stale packing used");
            l.backward(&x, &randn(&mut r, 40, 90), false);
            assert!(held(&l).is_none(), "training kept the packing");
        }
    }

    /// The ReLU applied as the product writes (`forward_relu`, `infer_relu`, `infer_to` into a dirty buffer)
    /// gives the bits of a separate pass over the plain output: f32 (on the kernel, also on packed weights) and
    /// f64 (the passes around the product), dense and masked layers, batches on and off the kernel.
    #[test]
    fn fused_relu_equals_a_separate_pass() {
        fn case<F: Float>(masked: bool, r: &mut Rng) {
            let mut l: Linear<F> = Linear::new("l", 70, 90, r);
            if masked {
                let mask = (0..90 * 70)
                    .map(|j| {
                        if (j % 70) * 90 <= (j / 70) * 70 {
                            F::one()
                        } else {
                            F::zero()
                        }
                    })
                    .collect();
                l.set_mask(mask);
            }
            for n in [5, 40, 256] {
                let x: Mat<F> = randn(r, n, 70);
                let mut want = l.forward(&x);
                assert!(want.data.iter().any(|&v| v < F::zero()), "nothing to clamp");
                Activation::Relu.apply_slice(&mut want.data);
                let what = format!("masked {masked}, {n} rows");
                assert_eq!(l.forward_relu(&x, true).data, want.data, "forward, {what}");
                assert_eq!(l.infer_relu(&x, true).data, want.data, "infer, {what}");
                let mut y = Mat::from_vec(n, 90, vec![F::from(-7.0).unwrap(); n * 90]);
                l.infer_to(&x, &mut y, true);
                assert_eq!(y.data, want.data, "infer_to, {what}");
            }
        }
        let mut r = rng(5);
        for masked in [false, true] {
            case::<f32>(masked, &mut r);
            case::<f64>(masked, &mut r);
        }
    }

    /// A piecewise network with a hidden layer after its front runs its row blocks in parallel, each on the
    /// same packed weights (packed by whichever block comes first, the lock not held across the packing, which
    /// runs on the pool too): the result equals the training forward's, bit for bit.
    #[test]
    fn parallel_row_blocks_share_the_packed_weights() {
        let mut m: Mlp<f32> = Mlp::new("n", 1, 160, 3, 2, Activation::Relu, &mut rng(4));
        for l in &mut m.layers {
            for (k, v) in l.weight.value_mut().iter_mut().enumerate() {
                *v += 0.01 * ((k % 7) as f32 - 3.0);
            }
        }
        let x: Mat<f32> = randn(&mut rng(5), 3000, 1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for _ in 0..2 {
            let y = pool.install(|| m.forward(&x));
            let want = m.clone().forward_train(&x);
            assert_eq!(y.data, want.data);
        }
    }

    /// MADE sorts its hidden degrees, so every layer's mask is block-triangular and about half of each
    /// product is skipped (both input orderings).
    #[test]
    fn made_layers_skip_masked_blocks() {
        let d = 64;
        for order in [(0..d).collect::<Vec<_>>(), (0..d).rev().collect()] {
            let m: Made<f32> = Made::new(
                d,
                0,
                512,
                2,
                2,
                Activation::Relu,
                &order,
                MadeOpts::default(),
                &mut rng(0),
            );
            for (l, layer) in m.net.layers.iter().enumerate() {
                let area: usize = layer.blocks().iter().map(Block::area).sum();
                let frac = area as f64 / (layer.out * layer.inp) as f64;
                // hidden layers: 64-row blocks of a triangle; output layer: parameter-major rows, thinner blocks
                let limit = if l + 1 < m.net.layers.len() { 0.6 } else { 0.7 };
                assert!(
                    !layer.blocks().is_empty() && frac < limit,
                    "layer {l}: {} blocks cover {frac:.2} of the weight",
                    layer.blocks().len()
                );
            }
        }
    }
}
