//! Transforms of images. A batch of images is a `(batch, C*H*W)` matrix, each row one image stored as `C`
//! channel planes of `H x W` pixels (NCHW); these transforms know their [`ImageShape`]. Convolutional
//! conditioners work on the NHWC form (see [`crate::engine::conv`]).
//!
//! - [`Squeeze`] (RealNVP sec. 3.6): space-to-depth, each 2x2 block of a channel becomes 4 channels.
//! - [`InvConv1x1`] (Glow sec. 3.2): the same `C x C` matrix `W` applied at every pixel; log|det| =
//!   `H W log|det W|`, either from an LU factorisation of `W` at every call (plain) or from the
//!   parameterisation `W = P L (U + diag(sign * exp(log_s)))` (LU: `H W sum log_s`).
//! - [`ConvCoupling`]: affine or additive coupling whose conditioner is a CNN, with RealNVP's channel-wise or
//!   checkerboard masks (Dinh et al. 2017 sec. 3.4) and Glow's channel split.
//! - [`Prefix`]: applies a transform to the first `k` features and leaves the rest alone. After a multi-scale
//!   split the factored-out channels (the last half of each image row) go straight to the prior, so every
//!   later layer is wrapped in a `Prefix`.

use super::{zeros_logdet, ScaleBound, Transform};
use crate::engine::conv::Hw;
pub use crate::engine::conv::ImageShape;
use crate::engine::{Float, Mat, Rng};
use crate::nn::{ConvNet, ConvNetKind, Param};
use rand_distr::{Distribution as _, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Space-to-depth: input channel `c`, pixel `(2i + dy, 2j + dx)` goes to output channel `4c + 2dy + dx`,
/// pixel `(i, j)`. A permutation: log|det| = 0.
#[derive(Clone, Debug)]
pub struct Squeeze {
    idx: Vec<usize>,
    inv: Vec<usize>,
}

impl Squeeze {
    pub fn new(s: ImageShape) -> Self {
        assert!(
            s.h.is_multiple_of(2) && s.w.is_multiple_of(2),
            "squeeze needs even height and width"
        );
        let o = s.squeezed();
        let mut idx = vec![0; s.dim()];
        for c in 0..s.c {
            for y in 0..s.h {
                for x in 0..s.w {
                    let oc = 4 * c + 2 * (y % 2) + x % 2;
                    let out = (oc * o.h + y / 2) * o.w + x / 2;
                    idx[out] = (c * s.h + y) * s.w + x;
                }
            }
        }
        let mut inv = vec![0; idx.len()];
        for (j, &i) in idx.iter().enumerate() {
            inv[i] = j;
        }
        Squeeze { idx, inv }
    }
}

impl<F: Float> Transform<F> for Squeeze {
    fn kind(&self) -> &'static str {
        "Squeeze"
    }
    fn dim(&self) -> usize {
        self.idx.len()
    }
    fn forward(&self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        (x.gather_cols(&self.idx), zeros_logdet(x.rows))
    }
    fn inverse(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        (z.gather_cols(&self.inv), zeros_logdet(z.rows))
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.forward(x, ctx)
    }
    fn backward(&mut self, dz: &Mat<F>, _dlogdet: &[F]) -> Mat<F> {
        dz.gather_cols(&self.inv)
    }
    fn params(&self) -> Vec<&Param<F>> {
        vec![]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        vec![]
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        Some(Box::new(self.clone()))
    }
}

/// The feature permutation that applies the channel permutation `perm` (`out channel k = in channel
/// perm[k]`) at every pixel: Glow's "reverse" and "shuffle" alternatives to the 1x1 convolution.
pub fn channel_permutation(s: ImageShape, perm: &[usize]) -> Vec<usize> {
    let hw = s.hw();
    (0..s.c)
        .flat_map(|k| (0..hw).map(move |p| perm[k] * hw + p))
        .collect()
}

/// `(W^-1, log|det W|)` of a small row-major `n x n` matrix by Gauss-Jordan elimination with partial
/// pivoting, in f64.
fn inverse_logdet(w: &[f64], n: usize) -> (Vec<f64>, f64) {
    let mut a = w.to_vec();
    let mut inv: Vec<f64> = (0..n * n)
        .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
        .collect();
    let mut ld = 0.0;
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| a[i * n + c].abs().total_cmp(&a[j * n + c].abs()))
            .expect("non-empty");
        if p != c {
            for k in 0..n {
                a.swap(c * n + k, p * n + k);
                inv.swap(c * n + k, p * n + k);
            }
        }
        let piv = a[c * n + c];
        ld += piv.abs().ln();
        for k in 0..n {
            a[c * n + k] /= piv;
            inv[c * n + k] /= piv;
        }
        for i in 0..n {
            if i != c {
                let f = a[i * n + c];
                if f != 0.0 {
                    for k in 0..n {
                        a[i * n + k] -= f * a[c * n + k];
                        inv[i * n + k] -= f * inv[c * n + k];
                    }
                }
            }
        }
    }
    (inv, ld)
}

/// `P A = L U` with partial pivoting: `(perm, L, U)` where row `i` of `A` is row `perm[i]` of `L U`.
fn plu(a: &[f64], n: usize) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
    let mut u = a.to_vec();
    let mut l = vec![0.0; n * n];
    let mut rows: Vec<usize> = (0..n).collect(); // rows[k]: original row now at position k
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| u[i * n + c].abs().total_cmp(&u[j * n + c].abs()))
            .expect("non-empty");
        if p != c {
            for k in 0..n {
                u.swap(c * n + k, p * n + k);
                l.swap(c * n + k, p * n + k);
            }
            rows.swap(c, p);
        }
        for i in c + 1..n {
            let f = u[i * n + c] / u[c * n + c];
            l[i * n + c] = f;
            for k in c..n {
                u[i * n + k] -= f * u[c * n + k];
            }
        }
    }
    for i in 0..n {
        l[i * n + i] = 1.0;
    }
    let mut perm = vec![0; n];
    for (k, &r) in rows.iter().enumerate() {
        perm[r] = k;
    }
    (perm, l, u)
}

/// A random orthogonal matrix (Gram-Schmidt on a Gaussian one): Glow's initialisation of the 1x1 convolution.
fn random_rotation(n: usize, rng: &mut Rng) -> Vec<f64> {
    let mut q: Vec<f64> = (0..n * n).map(|_| StandardNormal.sample(rng)).collect();
    for i in 0..n {
        for j in 0..i {
            let d: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
            for k in 0..n {
                q[i * n + k] -= d * q[j * n + k];
            }
        }
        let norm = (0..n).map(|k| q[i * n + k].powi(2)).sum::<f64>().sqrt();
        for k in 0..n {
            q[i * n + k] /= norm;
        }
    }
    q
}

// one per layer: the size difference between the variants does not matter
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Weight<F> {
    Plain(Param<F>),
    Lu {
        perm: Param<F>,
        lower: Param<F>,
        upper: Param<F>,
        log_s: Param<F>,
        sign: Param<F>,
    },
}

/// Glow's invertible 1x1 convolution.
#[derive(Clone, Debug)]
pub struct InvConv1x1<F> {
    shape: ImageShape,
    weight: Weight<F>,
    x: Mat<F>,
}

impl<F: Float> InvConv1x1<F> {
    /// Initialised with a random rotation (log|det| = 0); `lu`: LU-parameterised.
    pub fn new(shape: ImageShape, lu: bool, rng: &mut Rng) -> Self {
        let c = shape.c;
        let q = random_rotation(c, rng);
        let cv = |v: &[f64]| v.iter().map(|&x| F::c(x)).collect::<Vec<F>>();
        let weight = if lu {
            let (perm, l, u) = plu(&q, c);
            let strict = |m: &[f64], lower: bool| {
                (0..c * c)
                    .map(|k| {
                        let (i, j) = (k / c, k % c);
                        if (lower && j < i) || (!lower && j > i) {
                            m[k]
                        } else {
                            0.0
                        }
                    })
                    .collect::<Vec<f64>>()
            };
            let d: Vec<f64> = (0..c).map(|i| u[i * c + i]).collect();
            Weight::Lu {
                perm: Param::buffer(
                    "perm",
                    vec![c],
                    perm.iter().map(|&i| F::c(i as f64)).collect(),
                ),
                lower: Param::new("lower", vec![c, c], cv(&strict(&l, true))),
                upper: Param::new("upper", vec![c, c], cv(&strict(&u, false))),
                log_s: Param::new(
                    "log_s",
                    vec![c],
                    d.iter().map(|v| F::c(v.abs().ln())).collect(),
                ),
                sign: Param::buffer(
                    "sign",
                    vec![c],
                    d.iter().map(|v| F::c(v.signum())).collect(),
                ),
            }
        } else {
            Weight::Plain(Param::new("weight", vec![c, c], cv(&q)))
        };
        InvConv1x1 {
            shape,
            weight,
            x: Mat::zeros(0, shape.dim()),
        }
    }

    /// `(W, log|det W|)` in f64.
    fn matrix(&self) -> (Vec<f64>, f64) {
        let c = self.shape.c;
        match &self.weight {
            Weight::Plain(w) => {
                let w: Vec<f64> = w.value().iter().map(|v| v.f64()).collect();
                let ld = inverse_logdet(&w, c).1;
                (w, ld)
            }
            Weight::Lu {
                perm,
                lower,
                upper,
                log_s,
                sign,
            } => {
                let (l, u) = self.lu_parts(lower, upper, log_s, sign);
                let mut m = vec![0.0; c * c];
                for i in 0..c {
                    for k in 0..=i {
                        let lik = l[i * c + k];
                        for j in k..c {
                            m[i * c + j] += lik * u[k * c + j];
                        }
                    }
                }
                let mut w = vec![0.0; c * c];
                for i in 0..c {
                    let p = perm.value()[i].f64() as usize;
                    w[i * c..(i + 1) * c].copy_from_slice(&m[p * c..(p + 1) * c]);
                }
                let ld = log_s.value().iter().map(|v| v.f64()).sum();
                (w, ld)
            }
        }
    }

    fn lu_parts(
        &self,
        lower: &Param<F>,
        upper: &Param<F>,
        log_s: &Param<F>,
        sign: &Param<F>,
    ) -> (Vec<f64>, Vec<f64>) {
        let c = self.shape.c;
        let mut l = vec![0.0; c * c];
        let mut u = vec![0.0; c * c];
        for i in 0..c {
            for j in 0..c {
                let k = i * c + j;
                if j < i {
                    l[k] = lower.value()[k].f64();
                } else if j == i {
                    l[k] = 1.0;
                    u[k] = sign.value()[i].f64() * log_s.value()[i].f64().exp();
                } else {
                    u[k] = upper.value()[k].f64();
                }
            }
        }
        (l, u)
    }

    /// Gradients of the LU factors `(dL, dU, d log_s)` given `G = dL/dW`: `W[i] = M[perm[i]]` with `M = L U`, so
    /// `dM[perm[i]] = G[i]`, `dL = dM U^T`, `dU = L^T dM`, and `U_ii = sign_i exp(log_s_i)`.
    fn lu_grads(&self, g: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let Weight::Lu {
            perm,
            lower,
            upper,
            log_s,
            sign,
        } = &self.weight
        else {
            unreachable!("LU weights")
        };
        let c = self.shape.c;
        let (l, u) = self.lu_parts(lower, upper, log_s, sign);
        let mut dm = vec![0.0; c * c];
        for i in 0..c {
            let p = perm.value()[i].f64() as usize;
            dm[p * c..(p + 1) * c].copy_from_slice(&g[i * c..(i + 1) * c]);
        }
        let mut dl = vec![0.0; c * c];
        let mut du = vec![0.0; c * c];
        for i in 0..c {
            for j in 0..c {
                dl[i * c + j] = (0..c).map(|k| dm[i * c + k] * u[j * c + k]).sum();
                du[i * c + j] = (0..c).map(|k| l[k * c + i] * dm[k * c + j]).sum();
            }
        }
        let ds = (0..c).map(|i| du[i * c + i] * u[i * c + i]).collect();
        (dl, du, ds)
    }

    /// `out_r = M x_r` at every pixel of every row (`M` is `c x c`, f64).
    fn apply(&self, x: &Mat<F>, m: &[f64]) -> Mat<F> {
        let (c, hw) = (self.shape.c, self.shape.hw());
        let mf: Vec<F> = m.iter().map(|&v| F::c(v)).collect();
        let mut z = Mat::zeros(x.rows, x.cols);
        z.data
            .par_chunks_mut(c * hw)
            .zip(x.data.par_chunks(c * hw))
            .for_each(|(zr, xr)| {
                for i in 0..c {
                    let out = &mut zr[i * hw..(i + 1) * hw];
                    for j in 0..c {
                        let a = mf[i * c + j];
                        out.iter_mut()
                            .zip(&xr[j * hw..(j + 1) * hw])
                            .for_each(|(o, &v)| *o += a * v);
                    }
                }
            });
        z
    }
}

impl<F: Float> Transform<F> for InvConv1x1<F> {
    fn kind(&self) -> &'static str {
        match self.weight {
            Weight::Plain(_) => "InvConv1x1",
            Weight::Lu { .. } => "InvConv1x1LU",
        }
    }
    fn dim(&self) -> usize {
        self.shape.dim()
    }
    fn forward(&self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let (w, ld) = self.matrix();
        let ld = F::c(ld * self.shape.hw() as f64);
        (self.apply(x, &w), vec![ld; x.rows])
    }
    fn inverse(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let (w, ld) = self.matrix();
        let (winv, _) = inverse_logdet(&w, self.shape.c);
        let ld = F::c(-ld * self.shape.hw() as f64);
        (self.apply(z, &winv), vec![ld; z.rows])
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.x = x.clone();
        self.forward(x, ctx)
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let (c, hw) = (self.shape.c, self.shape.hw());
        let (w, _) = self.matrix();
        // dx = W^T dz at every pixel
        let wt: Vec<f64> = (0..c * c).map(|k| w[(k % c) * c + k / c]).collect();
        let dx = self.apply(dz, &wt);
        // G = dL/dW = sum over rows and pixels of dz x^T (fixed-size row chunks summed in order, so the
        // result does not depend on the thread count)
        let parts: Vec<Vec<f64>> = dz
            .data
            .par_chunks(64 * c * hw)
            .zip(self.x.data.par_chunks(64 * c * hw))
            .map(|(dzc, xc)| {
                let mut g = vec![0.0; c * c];
                for (dzr, xr) in dzc.chunks(c * hw).zip(xc.chunks(c * hw)) {
                    for i in 0..c {
                        let a = &dzr[i * hw..(i + 1) * hw];
                        for j in 0..c {
                            let b = &xr[j * hw..(j + 1) * hw];
                            g[i * c + j] += a.iter().zip(b).map(|(&p, &q)| p * q).sum::<F>().f64();
                        }
                    }
                }
                g
            })
            .collect();
        let mut g = vec![0.0; c * c];
        for p in &parts {
            g.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        let gld: f64 = dlogdet.iter().map(|v| v.f64()).sum::<f64>() * hw as f64;
        match &mut self.weight {
            Weight::Plain(wp) => {
                // d log|det W| / dW = W^-T
                let (winv, _) = inverse_logdet(&w, c);
                for i in 0..c {
                    for j in 0..c {
                        wp.grad_mut()[i * c + j] += F::c(g[i * c + j] + gld * winv[j * c + i]);
                    }
                }
            }
            Weight::Lu { .. } => {
                let (dl, du, ds) = self.lu_grads(&g);
                if let Weight::Lu {
                    lower,
                    upper,
                    log_s,
                    ..
                } = &mut self.weight
                {
                    let c = self.shape.c;
                    for i in 0..c {
                        for j in 0..c {
                            let k = i * c + j;
                            if j < i {
                                lower.grad_mut()[k] += F::c(dl[k]);
                            } else if j > i {
                                upper.grad_mut()[k] += F::c(du[k]);
                            }
                        }
                        log_s.grad_mut()[i] += F::c(ds[i] + gld);
                    }
                }
            }
        }
        dx
    }
    fn params(&self) -> Vec<&Param<F>> {
        match &self.weight {
            Weight::Plain(w) => vec![w],
            Weight::Lu {
                perm,
                lower,
                upper,
                log_s,
                sign,
            } => vec![perm, lower, upper, log_s, sign],
        }
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        match &mut self.weight {
            Weight::Plain(w) => vec![w],
            Weight::Lu {
                perm,
                lower,
                upper,
                log_s,
                sign,
            } => vec![perm, lower, upper, log_s, sign],
        }
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        Some(Box::new(self.clone()))
    }
}

/// Which features of an image a convolutional coupling keeps (conditions on) and which it transforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ImageMask {
    /// Channel split: the first `C/2` channels condition the rest (`swap`: the last `C/2` condition the rest).
    Channel { swap: bool },
    /// Spatial checkerboard: pixels with `(y + x + parity)` even condition the others, in every channel.
    Checkerboard { parity: usize },
}

/// Coupling on an image with a CNN conditioner: `z_b = x_b * exp(l) + t` (affine, `l` bounded by `bound`) or
/// `z_b = x_b + t` (additive), `(t, h) = CNN(x_a, context planes)`, `l = bound(h)`. The conditioner's last
/// convolution is zero-initialised, so the layer starts as the identity. A context (one vector per image) is
/// fed to the CNN as constant extra input planes.
#[derive(Clone, Debug)]
pub struct ConvCoupling<F> {
    shape: ImageShape,
    affine: bool,
    bound: ScaleBound,
    ctx_dim: usize,
    net: ConvNet<F>,
    /// identity features: (feature, pixel, CNN input channel)
    a_map: Vec<(usize, usize, usize)>,
    cin: usize,
    /// transformed features: (feature, pixel, CNN output channel of its shift; its scale is `half` further)
    b_map: Vec<(usize, usize, usize)>,
    half: usize,
    /// training cache: x_b, exp(l), dl/dh
    xb: Vec<F>,
    s: Vec<F>,
    dl: Vec<F>,
    /// dL/dcontext of the last backward
    dctx: Option<Mat<F>>,
}

impl<F: Float> ConvCoupling<F> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        shape: ImageShape,
        mask: ImageMask,
        affine: bool,
        bound: ScaleBound,
        net: ConvNetKind,
        width: usize,
        ctx_dim: usize,
        rng: &mut Rng,
    ) -> Self {
        let (c, hw) = (shape.c, shape.hw());
        let feat = |ch: usize, p: usize| ch * hw + p;
        let (a_map, cin, b_map, half): (Vec<_>, usize, Vec<_>, usize) = match mask {
            ImageMask::Channel { swap } => {
                assert!(c >= 2, "a channel coupling needs at least 2 channels");
                let na = c / 2;
                let (a, b): (Vec<usize>, Vec<usize>) = if swap {
                    ((c - na..c).collect(), (0..c - na).collect())
                } else {
                    ((0..na).collect(), (na..c).collect())
                };
                let am = a
                    .iter()
                    .enumerate()
                    .flat_map(|(ic, &ch)| (0..hw).map(move |p| (feat(ch, p), p, ic)))
                    .collect();
                let bm = b
                    .iter()
                    .enumerate()
                    .flat_map(|(oc, &ch)| (0..hw).map(move |p| (feat(ch, p), p, oc)))
                    .collect();
                (am, a.len(), bm, b.len())
            }
            ImageMask::Checkerboard { parity } => {
                let on = |p: usize| (p / shape.w + p % shape.w + parity).is_multiple_of(2);
                let mut am = Vec::new();
                let mut bm = Vec::new();
                for ch in 0..c {
                    for p in 0..hw {
                        if on(p) {
                            am.push((feat(ch, p), p, ch));
                        } else {
                            bm.push((feat(ch, p), p, ch));
                        }
                    }
                }
                (am, c, bm, c)
            }
        };
        let cout = if affine { 2 * half } else { half };
        ConvCoupling {
            shape,
            affine,
            bound,
            ctx_dim,
            net: ConvNet::new(name, net, cin + ctx_dim, width, cout, rng),
            a_map,
            cin,
            b_map,
            half,
            xb: Vec::new(),
            s: Vec::new(),
            dl: Vec::new(),
            dctx: None,
        }
    }

    fn hw(&self) -> Hw {
        Hw {
            n: 0,
            h: self.shape.h,
            w: self.shape.w,
        }
    }

    /// The CNN input: identity features at their pixels and channels (zero elsewhere), context planes.
    fn net_input(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        let hw = self.shape.hw();
        let ci = self.cin + self.ctx_dim;
        let mut inp = Mat::zeros(x.rows * hw, ci);
        if let Some(c) = ctx {
            assert_eq!(c.cols, self.ctx_dim, "context columns");
        } else {
            assert_eq!(self.ctx_dim, 0, "conditional coupling needs a context");
        }
        inp.data
            .par_chunks_mut(hw * ci)
            .enumerate()
            .for_each(|(r, dst)| {
                let xr = x.row(r);
                for &(j, p, ic) in &self.a_map {
                    dst[p * ci + ic] = xr[j];
                }
                if let Some(c) = ctx {
                    let cr = c.row(r);
                    for p in 0..hw {
                        dst[p * ci + self.cin..(p + 1) * ci].copy_from_slice(cr);
                    }
                }
            });
        inp
    }

    fn conditioner(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        let s = Hw {
            n: x.rows,
            ..self.hw()
        };
        self.net.forward(&self.net_input(x, ctx), s)
    }

    /// Element-wise part, one pass: scale/shift and log-det; with `cache`, keep x_b, exp(l), dl/dh.
    fn apply(
        &self,
        x: &Mat<F>,
        h: &Mat<F>,
        inverse: bool,
        cache: bool,
    ) -> (Mat<F>, Vec<F>, Vec<[F; 3]>) {
        let hw = self.shape.hw();
        let cout = h.cols;
        let nb = self.b_map.len();
        let mut z = x.clone();
        let mut ld = vec![F::zero(); x.rows];
        let mut kept = vec![[F::zero(); 3]; if cache { x.rows * nb } else { 0 }];
        let d = x.cols;
        let body = |r: usize, zr: &mut [F], ldr: &mut F, mut keep: Option<&mut [[F; 3]]>| {
            let hr = &h.data[r * hw * cout..(r + 1) * hw * cout];
            let mut acc = F::zero();
            for (k, &(j, p, oc)) in self.b_map.iter().enumerate() {
                let t = hr[p * cout + oc];
                if !self.affine {
                    zr[j] = if inverse { zr[j] - t } else { zr[j] + t };
                    continue;
                }
                let (l, dldh) = self.bound.eval(hr[p * cout + self.half + oc]);
                acc += l;
                if inverse {
                    zr[j] = (zr[j] - t) * (-l).exp();
                } else {
                    let e = l.exp();
                    if let Some(kp) = keep.as_deref_mut() {
                        kp[k] = [zr[j], e, dldh];
                    }
                    zr[j] = zr[j] * e + t;
                }
            }
            *ldr = if inverse { -acc } else { acc };
        };
        let rows = z.data.par_chunks_mut(d).zip(ld.par_iter_mut()).enumerate();
        if cache {
            rows.zip(kept.par_chunks_mut(nb))
                .for_each(|((r, (zr, ldr)), kp)| body(r, zr, ldr, Some(kp)));
        } else {
            rows.for_each(|(r, (zr, ldr))| body(r, zr, ldr, None));
        }
        (z, ld, kept)
    }
}

impl<F: Float> Transform<F> for ConvCoupling<F> {
    fn kind(&self) -> &'static str {
        if self.affine {
            "AffineCoupling2d"
        } else {
            "AdditiveCoupling2d"
        }
    }
    fn dim(&self) -> usize {
        self.shape.dim()
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.conditioner(x, ctx);
        let (z, ld, _) = self.apply(x, &h, false, false);
        (z, ld)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        // x_a = z_a: the conditioner's input is available from z
        let h = self.conditioner(z, ctx);
        let (x, ld, _) = self.apply(z, &h, true, false);
        (x, ld)
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let s = Hw {
            n: x.rows,
            ..self.hw()
        };
        let inp = self.net_input(x, ctx);
        let h = self.net.forward_train_owned(inp, s);
        let (z, ld, kept) = self.apply(x, &h, false, self.affine);
        self.xb.clear();
        self.s.clear();
        self.dl.clear();
        for [a, b, c] in kept {
            self.xb.push(a);
            self.s.push(b);
            self.dl.push(c);
        }
        (z, ld)
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let hw = self.shape.hw();
        let nb = self.b_map.len();
        let cout = if self.affine {
            2 * self.half
        } else {
            self.half
        };
        let mut dx = dz.clone();
        let mut dh = Mat::zeros(dz.rows * hw, cout);
        let d = dz.cols;
        dh.data
            .par_chunks_mut(hw * cout)
            .zip(dx.data.par_chunks_mut(d))
            .enumerate()
            .for_each(|(r, (dhr, dxr))| {
                let g = dlogdet[r];
                for (k, &(j, p, oc)) in self.b_map.iter().enumerate() {
                    let dzj = dxr[j];
                    dhr[p * cout + oc] = dzj;
                    if self.affine {
                        let c = r * nb + k;
                        let s = self.s[c];
                        dxr[j] = dzj * s;
                        dhr[p * cout + self.half + oc] = (dzj * self.xb[c] * s + g) * self.dl[c];
                    }
                }
            });
        let din = self.net.backward(&dh);
        let ci = self.cin + self.ctx_dim;
        // a context plane is the same value at every pixel: its gradient sums over the pixels
        self.dctx = (self.ctx_dim > 0).then(|| {
            let mut g = Mat::zeros(dz.rows, self.ctx_dim);
            g.data
                .par_chunks_mut(self.ctx_dim)
                .zip(din.data.par_chunks(hw * ci))
                .for_each(|(gr, dr)| {
                    for p in 0..hw {
                        for (k, v) in gr.iter_mut().enumerate() {
                            *v += dr[p * ci + self.cin + k];
                        }
                    }
                });
            g
        });
        dx.data
            .par_chunks_mut(d)
            .zip(din.data.par_chunks(hw * ci))
            .for_each(|(dxr, dr)| {
                for &(j, p, ic) in &self.a_map {
                    dxr[j] += dr[p * ci + ic];
                }
            });
        dx
    }
    fn context_grad(&mut self) -> Option<Mat<F>> {
        self.dctx.take()
    }
    fn params(&self) -> Vec<&Param<F>> {
        self.net.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        self.net.params_mut()
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        Some(Box::new(self.clone()))
    }
}

/// Applies `inner` to the first `inner.dim()` features, identity on the rest (the factored-out part of a
/// multi-scale flow).
pub struct Prefix<F: Float> {
    dim: usize,
    inner: Box<dyn Transform<F>>,
}

impl<F: Float> Prefix<F> {
    pub fn new(dim: usize, inner: Box<dyn Transform<F>>) -> Self {
        assert!(inner.dim() <= dim);
        Prefix { dim, inner }
    }
    fn head(&self, x: &Mat<F>) -> Mat<F> {
        let k = self.inner.dim();
        let mut out = Mat::zeros(x.rows, k);
        for r in 0..x.rows {
            out.row_mut(r).copy_from_slice(&x.row(r)[..k]);
        }
        out
    }
    fn with_head(&self, x: &Mat<F>, head: &Mat<F>) -> Mat<F> {
        let k = self.inner.dim();
        let mut out = x.clone();
        for r in 0..x.rows {
            out.row_mut(r)[..k].copy_from_slice(head.row(r));
        }
        out
    }
}

impl<F: Float> Transform<F> for Prefix<F> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let (h, ld) = self.inner.forward(&self.head(x), ctx);
        (self.with_head(x, &h), ld)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let (h, ld) = self.inner.inverse(&self.head(z), ctx);
        (self.with_head(z, &h), ld)
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let (h, ld) = self.inner.forward_train(&self.head(x), ctx);
        (self.with_head(x, &h), ld)
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let dh = self.inner.backward(&self.head(dz), dlogdet);
        self.with_head(dz, &dh)
    }
    fn context_grad(&mut self) -> Option<Mat<F>> {
        self.inner.context_grad()
    }
    fn params(&self) -> Vec<&Param<F>> {
        self.inner.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        self.inner.params_mut()
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        let inner = self.inner.replica()?;
        Some(Box::new(Prefix {
            dim: self.dim,
            inner,
        }))
    }
    fn set_training(&mut self, training: bool) {
        self.inner.set_training(training)
    }
    fn reload(&mut self) {
        self.inner.reload()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_transform, randomize};
    use super::*;
    use crate::engine::{randn, rng};

    fn run(mut t: Box<dyn Transform<f64>>, ctx_dim: usize, seed: u64) {
        let mut r = rng(seed);
        let d = t.dim();
        let x: Mat<f64> = randn(&mut r, 3, d);
        let ctx: Option<Mat<f64>> = (ctx_dim > 0).then(|| randn(&mut r, 3, ctx_dim));
        let _ = t.forward_train(&x, ctx.as_ref());
        randomize(t.as_mut(), &mut r, 0.3);
        check_transform(t.as_mut(), &x, ctx.as_ref(), &mut r);
    }

    #[test]
    fn squeeze_moves_2x2_blocks_to_channels() {
        let s = ImageShape::new(2, 4, 6);
        let sq = Squeeze::new(s);
        let x = Mat::from_vec(1, s.dim(), (0..s.dim()).map(|v| v as f64).collect());
        let (z, _) = Transform::<f64>::forward(&sq, &x, None);
        // output channel 4*1 + 2*1 + 0 (input channel 1, odd row, even column) at pixel (1, 2):
        // input pixel (3, 4) of channel 1
        let o = s.squeezed();
        let got = z.at(0, (6 * o.h + 1) * o.w + 2);
        assert_eq!(got, ((s.h + 3) * s.w + 4) as f64);
        run(Box::new(sq), 0, 1);
    }

    #[test]
    fn inv_conv_plain_and_lu() {
        for lu in [false, true] {
            let mut r = rng(3);
            let s = ImageShape::new(3, 2, 3);
            let t = InvConv1x1::<f64>::new(s, lu, &mut r);
            // a rotation at initialisation
            assert!(t.matrix().1.abs() < 1e-12);
            run(Box::new(t), 0, 4);
        }
    }

    #[test]
    fn lu_init_reproduces_the_rotation() {
        let mut r = rng(5);
        let q = random_rotation(5, &mut r);
        let (perm, l, u) = plu(&q, 5);
        for i in 0..5 {
            for j in 0..5 {
                let v: f64 = (0..5).map(|k| l[perm[i] * 5 + k] * u[k * 5 + j]).sum();
                assert!((v - q[i * 5 + j]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn conv_couplings_all_masks() {
        let s = ImageShape::new(4, 3, 4);
        let nets = [
            ConvNetKind::Glow,
            ConvNetKind::ResNet { blocks: 1 },
            ConvNetKind::Single,
        ];
        for (i, mask) in [
            ImageMask::Channel { swap: false },
            ImageMask::Channel { swap: true },
            ImageMask::Checkerboard { parity: 0 },
            ImageMask::Checkerboard { parity: 1 },
        ]
        .into_iter()
        .enumerate()
        {
            for affine in [true, false] {
                for (k, net) in nets.into_iter().enumerate() {
                    let mut r = rng(i as u64 * 7 + k as u64);
                    let bound = if i % 2 == 0 {
                        ScaleBound::Sigmoid
                    } else {
                        ScaleBound::default()
                    };
                    let ctx = if k == 0 { 2 } else { 0 };
                    let t = ConvCoupling::<f64>::new(
                        "net", s, mask, affine, bound, net, 5, ctx, &mut r,
                    );
                    run(Box::new(t), ctx, 10 + i as u64);
                }
            }
        }
    }

    #[test]
    fn prefix_and_per_channel_actnorm() {
        let s = ImageShape::new(2, 3, 2);
        let mut r = rng(8);
        let inner = ConvCoupling::<f64>::new(
            "net",
            s,
            ImageMask::Channel { swap: false },
            true,
            ScaleBound::default(),
            ConvNetKind::Glow,
            4,
            0,
            &mut r,
        );
        run(Box::new(Prefix::new(2 * s.dim(), Box::new(inner))), 0, 9);
        run(
            Box::new(super::super::ActNorm::<f64>::per_channel(3, 4)),
            0,
            11,
        );
    }
}
