//! Multi-layer perceptron conditioner: `Linear -> act -> ... -> Linear`, last layer zero-initialised so that
//! the transform it parameterises starts as the identity.

use super::Param;
use crate::engine::kernels;
use crate::engine::{Float, Mat, Rng};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// Hidden-layer non-linearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    #[default]
    Relu,
    Tanh,
    Elu,
    LeakyRelu,
    Silu,
}

impl Activation {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "elu" => Activation::Elu,
            "leaky-relu" | "leaky_relu" => Activation::LeakyRelu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }
    #[inline(always)]
    fn apply<F: Float>(self, h: F) -> F {
        match self {
            Activation::Relu => h.max(F::zero()),
            Activation::Tanh => h.tanh(),
            Activation::Elu => {
                if h > F::zero() {
                    h
                } else {
                    h.exp_m1()
                }
            }
            Activation::LeakyRelu => {
                if h > F::zero() {
                    h
                } else {
                    F::c(0.01) * h
                }
            }
            Activation::Silu => h / (F::one() + (-h).exp()),
        }
    }
    /// Derivative given the pre-activation `h` and the output `a`.
    #[inline(always)]
    fn deriv<F: Float>(self, h: F, a: F) -> F {
        match self {
            Activation::Relu => {
                if h > F::zero() {
                    F::one()
                } else {
                    F::zero()
                }
            }
            Activation::Tanh => F::one() - a * a,
            Activation::Elu => {
                if h > F::zero() {
                    F::one()
                } else {
                    a + F::one()
                }
            }
            Activation::LeakyRelu => {
                if h > F::zero() {
                    F::one()
                } else {
                    F::c(0.01)
                }
            }
            Activation::Silu => {
                let s = F::one() / (F::one() + (-h).exp());
                s * (F::one() + h * (F::one() - s))
            }
        }
    }
}

/// Fully connected layer `y = x W^T + b`, `W` stored `(out, in)` as in PyTorch.
#[derive(Clone, Debug)]
pub struct Linear<F> {
    pub weight: Param<F>,
    pub bias: Param<F>,
    pub inp: usize,
    pub out: usize,
}

impl<F: Float> Linear<F> {
    /// PyTorch's default initialisation: U(-1/sqrt(in), 1/sqrt(in)) for weights and biases.
    pub fn new(name: &str, inp: usize, out: usize, rng: &mut Rng) -> Self {
        let bound = 1.0 / (inp.max(1) as f64).sqrt();
        let w = (0..inp * out)
            .map(|_| F::c(rng.gen_range(-bound..bound)))
            .collect();
        let b = (0..out)
            .map(|_| F::c(rng.gen_range(-bound..bound)))
            .collect();
        Linear {
            weight: Param::new(format!("{name}.weight"), vec![out, inp], w),
            bias: Param::new(format!("{name}.bias"), vec![out], b),
            inp,
            out,
        }
    }
    /// Make this a masked layer (MADE): `mask` is `(out, in)`; disconnected weights are zero from now on and
    /// stay zero because their gradients are masked in every backward.
    pub fn set_mask(&mut self, mask: Vec<F>) {
        self.weight.set_mask(mask);
    }
    pub fn zero_init(&mut self) {
        self.weight.value.iter_mut().for_each(|v| *v = F::zero());
        self.bias.value.iter_mut().for_each(|v| *v = F::zero());
    }
    pub fn forward(&self, x: &Mat<F>) -> Mat<F> {
        let mut y = Mat::zeros(x.rows, self.out);
        kernels::linear(x, &self.weight.value, &self.bias.value, self.out, &mut y);
        y
    }
    /// `dx = dy W` without touching the gradients.
    pub fn input_grad(&self, dy: &Mat<F>) -> Mat<F> {
        let mut dx = Mat::zeros(dy.rows, self.inp);
        kernels::gemm(
            &dy.data,
            dy.rows,
            dy.cols,
            false,
            &self.weight.value,
            self.out,
            self.inp,
            false,
            &mut dx.data,
            false,
        );
        dx
    }

    /// Accumulate `dW += dy^T x`, `db += sum dy`; return `dx = dy W` if asked.
    pub fn backward(&mut self, x: &Mat<F>, dy: &Mat<F>, want_dx: bool) -> Option<Mat<F>> {
        kernels::gemm(
            &dy.data,
            dy.rows,
            dy.cols,
            true,
            &x.data,
            x.rows,
            x.cols,
            false,
            &mut self.weight.grad,
            true,
        );
        if let Some(m) = &self.weight.mask {
            kernels::zip_inplace(&mut self.weight.grad, m, |g, m| g * m);
        }
        kernels::add_col_sums(dy, &mut self.bias.grad);
        want_dx.then(|| self.input_grad(dy))
    }
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
    /// Training cache: the input of every layer and the pre-activations of hidden layers.
    inputs: Vec<Mat<F>>,
    pre: Vec<Mat<F>>,
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
            inputs: Vec::new(),
            pre: Vec::new(),
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
            inputs: Vec::new(),
            pre: Vec::new(),
        }
    }

    /// Whether layer `l`'s output is added to the running hidden state (second layer of a residual block).
    #[inline]
    fn adds_residual(&self, l: usize) -> bool {
        self.residual && l >= 2 && l + 1 < self.layers.len() && l.is_multiple_of(2)
    }

    pub fn forward(&self, x: &Mat<F>) -> Mat<F> {
        if self.residual {
            return self.forward_residual(x, None);
        }
        let n = self.layers.len();
        let mut h = self.layers[0].forward(x);
        for l in 1..n {
            let act = self.act;
            kernels::map_inplace(&mut h.data, move |v| act.apply(v));
            h = self.layers[l].forward(&h);
        }
        h
    }

    /// Residual forward; with `cache`, keeps every layer's input and the pre-activation it came from.
    fn forward_residual(&self, x: &Mat<F>, mut cache: Option<Cache<'_, F>>) -> Mat<F> {
        let n = self.layers.len();
        let act = self.act;
        let activate = |m: &Mat<F>| {
            let mut a = m.clone();
            kernels::map_inplace(&mut a.data, move |v| act.apply(v));
            a
        };
        if let Some((inputs, pre)) = cache.as_mut() {
            inputs.clear();
            pre.clear();
            inputs.push(x.clone());
        }
        let mut h = self.layers[0].forward(x);
        let mut t = Mat::zeros(0, 0);
        for l in 1..n {
            // layer l reads act(h) (first layer of a block, and the output layer) or act(t) (second layer)
            let src = if self.adds_residual(l) { &t } else { &h };
            let a = activate(src);
            let y = self.layers[l].forward(&a);
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
            *ws = vec![self.forward_residual(x, None)];
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
        for l in 0..n {
            let (done, rest) = ws.split_at_mut(l);
            let inp = if l == 0 { x } else { &done[l - 1] };
            let y = &mut rest[0];
            kernels::linear(
                inp,
                &self.layers[l].weight.value,
                &self.layers[l].bias.value,
                self.layers[l].out,
                y,
            );
            if l + 1 < n {
                let act = self.act;
                kernels::map_inplace(&mut y.data, move |v| act.apply(v));
            }
        }
        &ws[n - 1]
    }

    pub fn forward_train(&mut self, x: &Mat<F>) -> Mat<F> {
        if self.residual {
            let (mut inputs, mut pre) = (
                std::mem::take(&mut self.inputs),
                std::mem::take(&mut self.pre),
            );
            let y = self.forward_residual(x, Some((&mut inputs, &mut pre)));
            self.inputs = inputs;
            self.pre = pre;
            return y;
        }
        let n = self.layers.len();
        self.inputs.clear();
        self.pre.clear();
        self.inputs.push(x.clone());
        let mut h = self.layers[0].forward(x);
        for l in 1..n {
            let act = self.act;
            let mut a = h.clone();
            kernels::map_inplace(&mut a.data, move |v| act.apply(v));
            self.pre.push(h);
            h = self.layers[l].forward(&a);
            self.inputs.push(a);
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
            for ((d, &h), &a) in dx.data.iter_mut().zip(&pre.data).zip(&post.data) {
                *d *= act.deriv(h, a);
            }
            dx
        };
        if !self.residual {
            let mut g = dy.clone();
            for l in (0..n).rev() {
                let need = l > 0 || want_dx;
                let dx = back(&mut self.layers[l], &self.inputs[l], &g, need);
                if l == 0 {
                    return dx;
                }
                g = through_act(dx.expect("requested"), &self.pre[l - 1], &self.inputs[l]);
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
