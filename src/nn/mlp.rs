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
        want_dx.then(|| {
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
        })
    }
}

/// `in -> [hidden]*depth -> out` perceptron; the last layer starts at zero.
#[derive(Clone, Debug)]
pub struct Mlp<F> {
    pub layers: Vec<Linear<F>>,
    pub act: Activation,
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
            inputs: Vec::new(),
            pre: Vec::new(),
        }
    }

    pub fn forward(&self, x: &Mat<F>) -> Mat<F> {
        let n = self.layers.len();
        let mut h = self.layers[0].forward(x);
        for l in 1..n {
            let act = self.act;
            kernels::map_inplace(&mut h.data, move |v| act.apply(v));
            h = self.layers[l].forward(&h);
        }
        h
    }

    /// Inference forward into reusable buffers (`ws` holds one matrix per layer and is resized only when the
    /// batch size changes): the allocation-free pass for sequential (autoregressive) sampling.
    pub fn forward_into<'a>(&self, x: &Mat<F>, ws: &'a mut Vec<Mat<F>>) -> &'a Mat<F> {
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
        let n = self.layers.len();
        assert_eq!(self.inputs.len(), n, "Mlp::backward without forward_train");
        let mut g = dy.clone();
        for l in (0..n).rev() {
            let need = l > 0 || want_dx;
            let dx = self.layers[l].backward(&self.inputs[l], &g, need);
            if l == 0 {
                return dx;
            }
            let mut dx = dx.expect("requested");
            let act = self.act;
            let pre = &self.pre[l - 1].data;
            let post = &self.inputs[l].data;
            for ((d, &h), &a) in dx.data.iter_mut().zip(pre).zip(post) {
                *d *= act.deriv(h, a);
            }
            g = dx;
        }
        None
    }

    /// dL/dx of the cached forward for an output gradient `dy`, leaving parameter gradients untouched (a
    /// vector-Jacobian product, used by implicit differentiation through IAF's sequential solve).
    pub fn backward_input(&self, dy: &Mat<F>) -> Mat<F> {
        let n = self.layers.len();
        assert_eq!(
            self.inputs.len(),
            n,
            "Mlp::backward_input without forward_train"
        );
        let mut g = dy.clone();
        for l in (0..n).rev() {
            let layer = &self.layers[l];
            let mut dx = Mat::zeros(g.rows, layer.inp);
            kernels::gemm(
                &g.data,
                g.rows,
                g.cols,
                false,
                &layer.weight.value,
                layer.out,
                layer.inp,
                false,
                &mut dx.data,
                false,
            );
            if l > 0 {
                let act = self.act;
                let pre = &self.pre[l - 1].data;
                let post = &self.inputs[l].data;
                for ((d, &h), &a) in dx.data.iter_mut().zip(pre).zip(post) {
                    *d *= act.deriv(h, a);
                }
            }
            g = dx;
        }
        g
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
