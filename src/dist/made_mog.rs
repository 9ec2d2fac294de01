//! MADE MoG (Papamakarios et al. 2017, sec. 3.3): an autoregressive density whose conditionals are mixtures of
//! K Gaussians, `p(z) = prod_i sum_k pi_ik N(z_i; mu_ik, sigma_ik^2)`, with `(alpha, mu, h) = MADE(z_<i, c)`,
//! `pi_i = softmax(alpha_i)`, `log sigma = bound(h)`. As the base of a MAF it makes "MAF MoG"; alone, "MADE MoG".
//! Density is one MADE pass; sampling is D passes.

use super::mixture::{log_sum_exp, pick};
use super::{Distribution, LN_2PI};
use crate::engine::{Float, Mat, Rng};
use crate::nn::{Activation, Made, MadeOpts, Param, ScaleBound};
use rand::Rng as _;
use rand_distr::{Distribution as _, StandardNormal as Normal01};

#[derive(Clone, Debug)]
pub struct MadeMog<F> {
    made: Made<F>,
    bound: ScaleBound,
    k: usize,
    d: usize,
    /// MADE outputs of the last `log_prob_train`.
    h: Mat<F>,
}

impl<F: Float> MadeMog<F> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d: usize,
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        k: usize,
        act: Activation,
        bound: ScaleBound,
        order: &[usize],
        opts: MadeOpts,
        rng: &mut Rng,
    ) -> Self {
        let mut made = Made::new(d, ctx_dim, hidden, depth, 3 * k, act, order, opts, rng);
        // The output layer starts at zero; spreading the component means over [-1, 1] breaks the symmetry
        // between components (identical components would receive identical gradients forever).
        let last = made.net.layers.last_mut().expect("output layer");
        for c in 0..k {
            let m = if k == 1 {
                0.0
            } else {
                2.0 * (c as f64 + 0.5) / k as f64 - 1.0
            };
            for i in 0..d {
                last.bias.value_mut()[(k + c) * d + i] = F::c(m);
            }
        }
        MadeMog {
            made,
            bound,
            k,
            d,
            h: Mat::zeros(0, 0),
        }
    }

    /// Component log-weights, means and (log sigma, dlogsigma/dh) of feature `i` from one row of MADE outputs.
    #[inline]
    fn comp(&self, hr: &[F], i: usize, c: usize) -> (F, F, F, F) {
        let (d, k) = (self.d, self.k);
        let (l, dl) = self.bound.eval(hr[(2 * k + c) * d + i]);
        (hr[c * d + i], hr[(k + c) * d + i], l, dl)
    }

    /// log p of each row given MADE outputs `h`; with `grad = Some((dlp, dh, dz))`, also the gradients.
    fn eval(
        &self,
        z: &Mat<F>,
        h: &Mat<F>,
        mut grad: Option<(&[F], &mut Mat<F>, &mut Mat<F>)>,
    ) -> Vec<F> {
        let (d, k) = (self.d, self.k);
        let c0 = F::c(-0.5 * LN_2PI);
        let mut alpha = vec![F::zero(); k];
        let mut a = vec![F::zero(); k];
        (0..z.rows)
            .map(|r| {
                let hr = h.row(r);
                let mut lp = F::zero();
                for i in 0..d {
                    let zi = z.at(r, i);
                    for c in 0..k {
                        let (al, mu, l, _) = self.comp(hr, i, c);
                        alpha[c] = al;
                        let u = (zi - mu) * (-l).exp();
                        a[c] = al - F::c(0.5) * u * u - l + c0;
                    }
                    let lse_w = log_sum_exp(&alpha);
                    let lpi = log_sum_exp(&a) - lse_w;
                    lp += lpi;
                    if let Some((dlp, dh, dz)) = grad.as_mut() {
                        let g = dlp[r];
                        let w = dh.cols;
                        for c in 0..k {
                            let (al, mu, l, dldh) = self.comp(hr, i, c);
                            let resp = (a[c] - lse_w - lpi).exp();
                            let inv = (-l).exp();
                            let u = (zi - mu) * inv;
                            dh.data[r * w + c * d + i] = (resp - (al - lse_w).exp()) * g;
                            dh.data[r * w + (k + c) * d + i] = resp * u * inv * g;
                            dh.data[r * w + (2 * k + c) * d + i] =
                                resp * (u * u - F::one()) * dldh * g;
                            dz.data[r * d + i] -= resp * u * inv * g;
                        }
                    }
                }
                lp
            })
            .collect()
    }
}

impl<F: Float> Distribution<F> for MadeMog<F> {
    fn kind(&self) -> &'static str {
        "MadeMoG"
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn log_prob(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Vec<F> {
        let h = self.made.forward(z, ctx);
        self.eval(z, &h, None)
    }
    fn log_prob_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Vec<F> {
        self.h = self.made.forward_train(z, ctx);
        self.eval(z, &self.h, None)
    }
    fn log_prob_backward(&mut self, z: &Mat<F>, _ctx: Option<&Mat<F>>, dlp: &[F]) -> Mat<F> {
        let mut dh = Mat::zeros(z.rows, self.h.cols);
        let mut dz = Mat::zeros(z.rows, self.d);
        let h = std::mem::replace(&mut self.h, Mat::zeros(0, 0));
        self.eval(z, &h, Some((dlp, &mut dh, &mut dz)));
        self.h = h;
        let din = self.made.backward(&dh);
        crate::engine::kernels::zip_inplace(&mut dz.data, &din.data, |a, b| a + b);
        dz
    }
    fn context_grad(&mut self) -> Option<Mat<F>> {
        self.made.take_context_grad()
    }
    /// D passes: pass `p` draws the feature at position `p` (a component, then a Gaussian draw) from the
    /// conditionals computed on the features already drawn; buffers are reused across passes.
    fn sample(&self, n: usize, ctx: Option<&Mat<F>>, rng: &mut Rng) -> Mat<F> {
        let k = self.k;
        let mut alpha = vec![F::zero(); k];
        let mut probs = vec![0.0; k];
        self.made.sequential(n, ctx, |i, h, inp| {
            let w = inp.cols;
            for r in 0..n {
                let hr = h.row(r);
                for (c, al) in alpha.iter_mut().enumerate() {
                    *al = self.comp(hr, i, c).0;
                }
                let lse = log_sum_exp(&alpha);
                for c in 0..k {
                    probs[c] = (alpha[c] - lse).exp().f64();
                }
                let c = pick(&probs, rng.gen_range(0.0..1.0));
                let (_, mu, l, _) = self.comp(hr, i, c);
                let e: f64 = Normal01.sample(rng);
                inp.data[r * w + i] = mu + F::c(e) * l.exp();
            }
        })
    }
    fn params(&self) -> Vec<&Param<F>> {
        self.made.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        self.made.params_mut()
    }
    fn replica(&self) -> Option<Box<dyn Distribution<F>>> {
        Some(Box::new(self.clone()))
    }
    fn reload(&mut self) {
        self.made.apply_masks();
    }
}
