//! Convolutional conditioners for image flows, in NHWC layout (see [`crate::engine::conv`]).
//!
//! - [`Conv2d`]: `k x k` convolution, stride 1, same padding, weight `(out, k*k*in)` ordered `[ky][kx][in]`.
//! - [`ConvNet`]: Glow's coupling network (Kingma & Dhariwal 2018: conv3x3 - ReLU - conv1x1 - ReLU - conv3x3),
//!   RealNVP's ResNet (Dinh et al. 2017: conv3x3, residual blocks `h + conv3x3(ReLU(conv3x3(ReLU(h))))`,
//!   ReLU, conv3x3), or a single convolution (Glow's learned prior on a split). The last convolution is
//!   zero-initialised so every coupling starts as the identity.

use crate::engine::conv::{
    col2im_add, conv_direct, conv_direct_backward, im2col, Hw, DIRECT_MAX_COUT,
};
use crate::engine::kernels::{add_col_sums, gemm, gemm_view_new, View};
use crate::engine::{Float, Mat, Rng};
use crate::nn::Param;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

thread_local! {
    /// This thread's column buffers (`im2col` and its gradient), kept between calls. Why: they are the largest
    /// buffers of an image flow (a batch of 128 28x28 images at 32 channels: 115 MB each), and glibc's
    /// per-thread arenas serve requests above 64 MB as fresh mappings that the kernel zeroes page by page on
    /// every call, so a large batch ran slower per image than a small one (docs/results/speed.md, seventh session).
    static COLUMNS: std::cell::RefCell<Vec<Box<dyn std::any::Any>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A kept column buffer of this thread (empty when none), holding whatever its last use left.
fn kept_columns<F: Float>() -> Vec<F> {
    let kept = COLUMNS.with(|c| {
        let mut c = c.borrow_mut();
        let i = c.iter().position(|b| b.is::<Vec<F>>())?;
        c.swap_remove(i).downcast::<Vec<F>>().ok()
    });
    kept.map(|b| *b).unwrap_or_default()
}

/// A kept column buffer as a `0 x 0` matrix holding its old values, for `im2col` to overwrite.
fn columns<F: Float>() -> Mat<F> {
    Mat {
        rows: 0,
        cols: 0,
        data: kept_columns(),
    }
}

/// Keep a column buffer for this thread's next call (two at most: the columns and their gradient).
fn keep_columns<F: Float>(m: Mat<F>) {
    COLUMNS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < 2 {
            c.push(Box::new(m.data));
        }
    });
}

#[derive(Clone, Debug)]
pub struct Conv2d<F> {
    pub weight: Param<F>,
    pub bias: Param<F>,
    pub k: usize,
    pub cin: usize,
    pub cout: usize,
    /// Evaluate a `k x k` layer with few outputs directly ([`conv_direct`]) instead of through im2col. The two
    /// round differently in the last bits, so a model keeps the one it was written with (its config's
    /// `conv`); training passes take the direct one either way.
    pub direct: bool,
}

/// How a model's convolutions with few output channels are evaluated: through an im2col matrix and a product
/// (`im2col`, what models written before the direct kernel use) or directly (`direct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvKernel {
    Im2col,
    Direct,
}

impl ConvKernel {
    /// What a config without the field means.
    pub fn im2col() -> Self {
        ConvKernel::Im2col
    }
}

impl<F: Float> Conv2d<F> {
    /// PyTorch's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = k*k*cin.
    pub fn new(name: &str, cin: usize, cout: usize, k: usize, rng: &mut Rng) -> Self {
        let kc = k * k * cin;
        let bound = 1.0 / (kc.max(1) as f64).sqrt();
        let w = (0..cout * kc)
            .map(|_| F::c(rng.gen_range(-bound..bound)))
            .collect();
        let b = (0..cout)
            .map(|_| F::c(rng.gen_range(-bound..bound)))
            .collect();
        Conv2d {
            weight: Param::new(format!("{name}.weight"), vec![cout, k, k, cin], w),
            bias: Param::new(format!("{name}.bias"), vec![cout], b),
            k,
            cin,
            cout,
            direct: false,
        }
    }
    pub fn zero_init(&mut self) {
        self.weight.fill(F::zero());
        self.bias.fill(F::zero());
    }
    /// `y = conv(x)`; `x` is `pixels x cin`.
    pub fn forward(&self, x: &Mat<F>, s: Hw) -> Mat<F> {
        self.forward_act(x, s, false)
    }
    /// `y = conv(x)`, or `max(0, conv(x))` with `relu`. Through a product (1x1 and im2col), the bias and the
    /// ReLU ride on the product's stores, so the output is written once (the same values as a bias fill, an
    /// accumulating product and a ReLU pass).
    pub fn forward_act(&self, x: &Mat<F>, s: Hw, relu: bool) -> Mat<F> {
        assert_eq!(x.cols, self.cin, "conv input channels");
        let (rows, cout) = (x.rows, self.cout);
        // W^T: `cout x (k*k*cin)` row-major seen as `(k*k*cin) x cout`
        let product = |a: &Mat<F>| {
            let av = View::block(a.cols, 0, rows, 0, a.cols);
            let wv = View::block(a.cols, 0, cout, 0, a.cols).t();
            let (w, b) = (self.weight.value(), Some(self.bias.value()));
            Mat::from_vec(rows, cout, gemm_view_new(&a.data, av, w, wv, b, relu, None))
        };
        if self.k == 1 {
            return product(x);
        }
        if self.direct && self.cout <= DIRECT_MAX_COUT {
            let mut y = Mat::zeros(rows, cout);
            conv_direct(x, s, self.k, self.weight.value(), self.bias.value(), &mut y);
            if relu {
                relu_inplace(&mut y);
            }
            return y;
        }
        let mut cols = columns();
        im2col(x, s, self.k, &mut cols);
        let y = product(&cols);
        keep_columns(cols);
        y
    }
    /// Accumulate weight and bias gradients for `dy` at input `x`; return `dx`.
    pub fn backward(&mut self, dy: &Mat<F>, x: &Mat<F>, s: Hw) -> Mat<F> {
        let kc = self.k * self.k * self.cin;
        add_col_sums(dy, self.bias.grad_mut());
        if self.k > 1 && self.cout <= DIRECT_MAX_COUT {
            let (w, dw) = self.weight.value_and_grad();
            return conv_direct_backward(dy, x, s, self.k, w, dw);
        }
        let mut owned = None;
        let cols = if self.k == 1 {
            x
        } else {
            let mut c = columns();
            im2col(x, s, self.k, &mut c);
            &*owned.insert(c)
        };
        // dW += dy^T cols
        gemm(
            &dy.data,
            dy.rows,
            dy.cols,
            true,
            &cols.data,
            cols.rows,
            kc,
            false,
            self.weight.grad_mut(),
            true,
        );
        // dcols = dy W: every entry written (the product does not accumulate), so the kept buffer's old
        // values stay in place rather than being zeroed first (only a longer buffer's new tail is)
        let mut data = kept_columns();
        data.resize(dy.rows * kc, F::zero());
        let mut dcols = Mat::from_vec(dy.rows, kc, data);
        gemm(
            &dy.data,
            dy.rows,
            dy.cols,
            false,
            self.weight.value(),
            self.cout,
            kc,
            false,
            &mut dcols.data,
            false,
        );
        if let Some(c) = owned {
            keep_columns(c);
        }
        if self.k == 1 {
            return dcols;
        }
        let mut dx = Mat::zeros(x.rows, self.cin);
        col2im_add(&dcols, s, self.k, &mut dx);
        keep_columns(dcols);
        dx
    }
    fn params(&self) -> Vec<&Param<F>> {
        vec![&self.weight, &self.bias]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        vec![&mut self.weight, &mut self.bias]
    }
}

/// Which conditioner a convolutional coupling uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// (The option-less ones have braces so that an unknown option in their JSON is refused.)
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ConvNetKind {
    /// conv3x3(in, W) - ReLU - conv1x1(W, W) - ReLU - conv3x3(W, out).
    Glow {},
    /// conv3x3(in, W), `blocks` residual blocks, ReLU, conv3x3(W, out).
    ResNet { blocks: usize },
    /// One conv3x3(in, out) (Glow's split prior).
    Single {},
}

fn relu_inplace<F: Float>(m: &mut Mat<F>) {
    crate::engine::kernels::map_inplace(&mut m.data, |v| v.max(F::zero()));
}

/// `d *= (a > 0)`: the ReLU derivative, read from the ReLU's output `a`.
fn relu_mask<F: Float>(d: &mut Mat<F>, a: &Mat<F>) {
    crate::engine::kernels::zip_inplace(&mut d.data, &a.data, |g, v| {
        if v > F::zero() {
            g
        } else {
            F::zero()
        }
    });
}

#[derive(Clone, Debug)]
pub struct ConvNet<F> {
    first: Option<Conv2d<F>>,
    mid: Vec<Conv2d<F>>,
    res: Vec<(Conv2d<F>, Conv2d<F>)>,
    last: Conv2d<F>,
    /// training cache: the input of every convolution, in call order
    cache: Vec<Mat<F>>,
    shape: Option<Hw>,
}

impl<F: Float> ConvNet<F> {
    /// Whether the layers with few outputs evaluate directly ([`Conv2d::direct`]).
    pub fn set_direct(&mut self, on: bool) {
        let res = self.res.iter_mut().flat_map(|(a, b)| [a, b]);
        for c in self.first.iter_mut().chain(self.mid.iter_mut()).chain(res) {
            c.direct = on;
        }
        self.last.direct = on;
    }

    pub fn new(
        name: &str,
        kind: ConvNetKind,
        cin: usize,
        width: usize,
        cout: usize,
        rng: &mut Rng,
    ) -> Self {
        let (first, mid, res, last_in) = match kind {
            ConvNetKind::Glow {} => (
                Some(Conv2d::new(&format!("{name}.0"), cin, width, 3, rng)),
                vec![Conv2d::new(&format!("{name}.1"), width, width, 1, rng)],
                vec![],
                width,
            ),
            ConvNetKind::ResNet { blocks } => (
                Some(Conv2d::new(&format!("{name}.0"), cin, width, 3, rng)),
                vec![],
                (0..blocks)
                    .map(|b| {
                        (
                            Conv2d::new(&format!("{name}.res{b}.0"), width, width, 3, rng),
                            Conv2d::new(&format!("{name}.res{b}.1"), width, width, 3, rng),
                        )
                    })
                    .collect(),
                width,
            ),
            ConvNetKind::Single {} => (None, vec![], vec![], cin),
        };
        let mut last = Conv2d::new(&format!("{name}.out"), last_in, cout, 3, rng);
        last.zero_init();
        ConvNet {
            first,
            mid,
            res,
            last,
            cache: Vec::new(),
            shape: None,
        }
    }

    /// The forward pass; with `cache` (training), every layer's input is moved into it (the inputs the
    /// backward needs, in order), not copied.
    fn run(&self, x: Cow<'_, Mat<F>>, s: Hw, mut cache: Option<&mut Vec<Mat<F>>>) -> Mat<F> {
        let mut keep = |m: Cow<'_, Mat<F>>| {
            if let Some(c) = cache.as_deref_mut() {
                c.push(m.into_owned());
            }
        };
        let Some(first) = &self.first else {
            let y = self.last.forward(&x, s);
            keep(x);
            return y;
        };
        // the ReLUs ride on the products' stores, except after the first convolution of a residual net, whose
        // output itself (not its ReLU) feeds the residual sums
        let fused = self.res.is_empty();
        let mut h = first.forward_act(&x, s, fused);
        keep(x);
        for m in &self.mid {
            if !fused {
                relu_inplace(&mut h);
            }
            let y = m.forward_act(&h, s, fused);
            keep(Cow::Owned(h));
            h = y;
        }
        for (c1, c2) in &self.res {
            let mut u = h.clone(); // h itself is still needed for the residual sum
            relu_inplace(&mut u);
            let v = c1.forward_act(&u, s, true);
            keep(Cow::Owned(u));
            let w = c2.forward(&v, s);
            keep(Cow::Owned(v));
            h.data.iter_mut().zip(&w.data).for_each(|(a, &b)| *a += b);
        }
        if !fused {
            relu_inplace(&mut h);
        }
        let y = self.last.forward(&h, s);
        keep(Cow::Owned(h));
        y
    }

    pub fn forward(&self, x: &Mat<F>, s: Hw) -> Mat<F> {
        self.run(Cow::Borrowed(x), s, None)
    }

    pub fn forward_train(&mut self, x: &Mat<F>, s: Hw) -> Mat<F> {
        self.forward_train_owned(x.clone(), s)
    }

    /// [`ConvNet::forward_train`] taking its input by value (kept for the backward without a copy).
    pub fn forward_train_owned(&mut self, x: Mat<F>, s: Hw) -> Mat<F> {
        let mut cache = std::mem::take(&mut self.cache);
        cache.clear();
        let y = self.run(Cow::Owned(x), s, Some(&mut cache));
        self.cache = cache;
        self.shape = Some(s);
        y
    }

    /// Parameter gradients of the last `forward_train` for `dy`; returns `dx`.
    pub fn backward(&mut self, dy: &Mat<F>) -> Mat<F> {
        let s = self.shape.expect("backward before forward_train");
        let mut cache = std::mem::take(&mut self.cache);
        let mut pop = || cache.pop().expect("training cache");
        let a = pop();
        let mut dh = self.last.backward(dy, &a, s);
        if self.first.is_none() {
            return dh;
        }
        relu_mask(&mut dh, &a);
        for (c1, c2) in self.res.iter_mut().rev() {
            let v = pop();
            let u = pop();
            let mut dv = c2.backward(&dh, &v, s);
            relu_mask(&mut dv, &v);
            let mut du = c1.backward(&dv, &u, s);
            relu_mask(&mut du, &u);
            dh.data.iter_mut().zip(&du.data).for_each(|(a, &b)| *a += b);
        }
        for m in self.mid.iter_mut().rev() {
            let a = pop();
            let mut d = m.backward(&dh, &a, s);
            relu_mask(&mut d, &a);
            dh = d;
        }
        let x = pop();
        self.first
            .as_mut()
            .expect("first conv")
            .backward(&dh, &x, s)
    }

    fn convs(&self) -> Vec<&Conv2d<F>> {
        let mut v: Vec<&Conv2d<F>> = self.first.iter().collect();
        v.extend(self.mid.iter());
        for (a, b) in &self.res {
            v.push(a);
            v.push(b);
        }
        v.push(&self.last);
        v
    }

    pub fn params(&self) -> Vec<&Param<F>> {
        self.convs().into_iter().flat_map(|c| c.params()).collect()
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        let mut v: Vec<&mut Param<F>> = Vec::new();
        if let Some(f) = &mut self.first {
            v.extend(f.params_mut());
        }
        for m in &mut self.mid {
            v.extend(m.params_mut());
        }
        for (a, b) in &mut self.res {
            v.extend(a.params_mut());
            v.extend(b.params_mut());
        }
        v.extend(self.last.params_mut());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conv::{chw_to_nhwc, nhwc_to_chw};
    use crate::engine::{randn, rng};

    #[test]
    fn conv_forward_matches_naive_reference() {
        let mut r = rng(2);
        // 4 output channels: the direct kernel; 20: im2col and a product
        for (k, cout) in [(1, 4), (3, 4), (5, 4), (3, 20), (5, 20)] {
            let (n, cin, h, w) = (3, 3, 5, 6);
            let conv = Conv2d::<f64>::new("c", cin, cout, k, &mut r);
            let x: Mat<f64> = randn(&mut r, n, cin * h * w);
            let want = crate::engine::conv::tests_support::naive_conv(
                &x.data,
                n,
                cin,
                h,
                w,
                conv.weight.value(),
                conv.bias.value(),
                cout,
                k,
            );
            let s = Hw { n, h, w };
            let mut conv = conv;
            for direct in [false, true] {
                conv.direct = direct;
                let y = conv.forward(&chw_to_nhwc(&x, cin, h * w), s);
                let got = nhwc_to_chw(&y, n, h * w);
                for (a, b) in got.data.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-12, "k={k} direct {direct}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn conv_backward_matches_naive_reference() {
        // dL/dx and dL/dW of L = <g, conv(x)> by direct loops over the definition
        let mut r = rng(4);
        // 2 output channels: the direct kernel (6 images: two groups, one short); 17: im2col and products
        for cout in [2, 17] {
            let (n, cin, h, w, k) = (6, 3, 4, 5, 3);
            let mut conv = Conv2d::<f64>::new("c", cin, cout, k, &mut r);
            let x: Mat<f64> = randn(&mut r, n, cin * h * w);
            let g: Mat<f64> = randn(&mut r, n, cout * h * w);
            let s = Hw { n, h, w };
            let xn = chw_to_nhwc(&x, cin, h * w);
            let dx = conv.backward(&chw_to_nhwc(&g, cout, h * w), &xn, s);
            let dx = nhwc_to_chw(&dx, n, h * w);
            let p = (k / 2) as isize;
            let mut want_dx = vec![0.0; x.data.len()];
            let mut want_dw = vec![0.0; conv.weight.value().len()];
            let mut want_db = vec![0.0; cout];
            for img in 0..n {
                for o in 0..cout {
                    for yy in 0..h {
                        for xx in 0..w {
                            let gv = g.data[((img * cout + o) * h + yy) * w + xx];
                            want_db[o] += gv;
                            for ky in 0..k {
                                for kx in 0..k {
                                    let sy = yy as isize + ky as isize - p;
                                    let sx = xx as isize + kx as isize - p;
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    for i in 0..cin {
                                        let wi = ((o * k + ky) * k + kx) * cin + i;
                                        let xi =
                                            ((img * cin + i) * h + sy as usize) * w + sx as usize;
                                        want_dx[xi] += gv * conv.weight.value()[wi];
                                        want_dw[wi] += gv * x.data[xi];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let close = |a: &[f64], b: &[f64], what: &str| {
                for (u, v) in a.iter().zip(b) {
                    assert!((u - v).abs() < 1e-12, "{what}: {u} vs {v}");
                }
            };
            close(&dx.data, &want_dx, "dx");
            close(&conv.weight.grad(), &want_dw, "dW");
            close(&conv.bias.grad(), &want_db, "db");
        }
    }

    /// L = <w, net(x)>: input and parameter gradients against central differences.
    fn check_net(kind: ConvNetKind) {
        let mut r = rng(7);
        let s = Hw { n: 2, h: 4, w: 3 };
        let (cin, cout) = (3, 4);
        let mut net = ConvNet::<f64>::new("net", kind, cin, 5, cout, &mut r);
        // the last layer starts at zero: give it values so every gradient path is exercised
        for p in net.params_mut() {
            for v in p.value_mut().iter_mut() {
                *v += 0.2 * r.gen_range(-1.0..1.0);
            }
        }
        let x: Mat<f64> = randn(&mut r, s.pixels(), cin);
        let wv: Mat<f64> = randn(&mut r, s.pixels(), cout);
        let loss = |net: &ConvNet<f64>, x: &Mat<f64>| -> f64 {
            net.forward(x, s)
                .data
                .iter()
                .zip(&wv.data)
                .map(|(a, b)| a * b)
                .sum()
        };
        let y = net.forward_train(&x, s);
        assert_eq!(y.data, net.forward(&x, s).data);
        let dx = net.backward(&wv);
        let h = 1e-6;
        for k in 0..x.data.len() {
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp.data[k] += h;
            xm.data[k] -= h;
            let fd = (loss(&net, &xp) - loss(&net, &xm)) / (2.0 * h);
            assert!(
                (fd - dx.data[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{kind:?} dx[{k}]: {} vs {fd}",
                dx.data[k]
            );
        }
        let grads: Vec<Vec<f64>> = net.params().iter().map(|p| p.grad().to_vec()).collect();
        for (pi, g) in grads.iter().enumerate() {
            for k in (0..g.len()).step_by((g.len() / 10).max(1)) {
                let bump =
                    |net: &mut ConvNet<f64>, d: f64| net.params_mut()[pi].value_mut()[k] += d;
                bump(&mut net, h);
                let lp = loss(&net, &x);
                bump(&mut net, -2.0 * h);
                let lm = loss(&net, &x);
                bump(&mut net, h);
                let fd = (lp - lm) / (2.0 * h);
                assert!(
                    (fd - g[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{kind:?} param {pi}[{k}]: {} vs {fd}",
                    g[k]
                );
            }
        }
    }

    #[test]
    fn conv_nets_backward_match_finite_differences() {
        check_net(ConvNetKind::Glow {});
        check_net(ConvNetKind::ResNet { blocks: 2 });
        check_net(ConvNetKind::Single {});
    }
}
