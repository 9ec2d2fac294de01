//! Masked affine autoregressive transform, MAF (Papamakarios et al. 2017):
//! `z_i = x_i * exp(l_i(x_<i)) + t_i(x_<i)` with `(t, h) = MADE(x)`, `l = bound(h)`, log|det| = sum l.
//! The density direction (forward) is one MADE pass; the inverse (sampling) needs D sequential passes,
//! because `x_i` can only be computed once every `x_<i` is known.

use super::{ScaleBound, Transform};
use crate::engine::{Float, Mat, Rng};
use crate::nn::{Activation, Made, Param};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Autoregressive ordering of a MADE layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    Natural,
    Reversed,
    /// Natural for even layers, reversed for odd ones (the MAF paper's stacks).
    #[default]
    Alternate,
    Random,
}

impl Order {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "natural" => Order::Natural,
            "reversed" => Order::Reversed,
            "alternate" => Order::Alternate,
            "random" => Order::Random,
            _ => return None,
        })
    }
    /// `order[i]` = position of feature `i`, for layer number `layer`.
    pub fn build(self, d: usize, layer: usize, rng: &mut Rng) -> Vec<usize> {
        let natural: Vec<usize> = (0..d).collect();
        let reversed: Vec<usize> = (0..d).rev().collect();
        match self {
            Order::Natural => natural,
            Order::Reversed => reversed,
            Order::Alternate if layer.is_multiple_of(2) => natural,
            Order::Alternate => reversed,
            Order::Random => {
                let mut o = natural;
                o.shuffle(rng);
                o
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Maf<F> {
    made: Made<F>,
    bound: ScaleBound,
    d: usize,
    // training cache (rows x d): x, exp(l), dl/dh
    x: Vec<F>,
    s: Vec<F>,
    dl: Vec<F>,
}

impl<F: Float> Maf<F> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d: usize,
        ctx_dim: usize,
        hidden: usize,
        depth: usize,
        act: Activation,
        bound: ScaleBound,
        order: &[usize],
        random_degrees: bool,
        rng: &mut Rng,
    ) -> Self {
        Maf {
            made: Made::new(
                d,
                ctx_dim,
                hidden,
                depth,
                2,
                act,
                order,
                random_degrees,
                rng,
            ),
            bound,
            d,
            x: Vec::new(),
            s: Vec::new(),
            dl: Vec::new(),
        }
    }
    /// The density direction in one fused pass: `z = x exp(l) + t`, log-det; with `cache`, also keeps
    /// `exp(l)` and `dl/dh` for the backward.
    fn apply(
        &self,
        x: &Mat<F>,
        h: &Mat<F>,
        mut cache: Option<(&mut Vec<F>, &mut Vec<F>)>,
    ) -> (Mat<F>, Vec<F>) {
        let d = self.d;
        if let Some((s, dl)) = cache.as_mut() {
            s.clear();
            dl.clear();
        }
        let mut z = x.clone();
        let mut ld = vec![F::zero(); x.rows];
        for (r, ldr) in ld.iter_mut().enumerate() {
            let hr = h.row(r);
            let zr = z.row_mut(r);
            for i in 0..d {
                let (l, dldh) = self.bound.eval(hr[d + i]);
                let e = l.exp();
                if let Some((s, dl)) = cache.as_mut() {
                    s.push(e);
                    dl.push(dldh);
                }
                zr[i] = zr[i] * e + hr[i];
                *ldr += l;
            }
        }
        (z, ld)
    }
}

impl<F: Float> Transform<F> for Maf<F> {
    fn kind(&self) -> &'static str {
        "MAF"
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.made.forward(x, ctx);
        self.apply(x, &h, None)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let d = self.d;
        let order = self.made.order();
        let mut by_pos = vec![0; d];
        for (i, &p) in order.iter().enumerate() {
            by_pos[p] = i;
        }
        let mut x = Mat::zeros(z.rows, d);
        let mut ld = vec![F::zero(); z.rows];
        // Pass k fixes the feature at position k; its outputs depend only on features already fixed.
        for &i in &by_pos {
            let h = self.made.forward(&x, ctx);
            for r in 0..z.rows {
                let hr = h.row(r);
                let (l, _) = self.bound.eval(hr[d + i]);
                x.data[r * d + i] = (z.at(r, i) - hr[i]) * (-l).exp();
                ld[r] -= l;
            }
        }
        (x, ld)
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.made.forward_train(x, ctx);
        let (mut s, mut dl) = (std::mem::take(&mut self.s), std::mem::take(&mut self.dl));
        let out = self.apply(x, &h, Some((&mut s, &mut dl)));
        self.x.clear();
        self.x.extend_from_slice(&x.data);
        self.s = s;
        self.dl = dl;
        out
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let d = self.d;
        let mut dx = Mat::zeros(dz.rows, d);
        let mut dh = Mat::zeros(dz.rows, 2 * d);
        for r in 0..dz.rows {
            let g = dlogdet[r];
            for i in 0..d {
                let c = r * d + i;
                let dzv = dz.data[c];
                dx.data[c] = dzv * self.s[c];
                dh.data[r * 2 * d + i] = dzv;
                dh.data[r * 2 * d + d + i] = (dzv * self.x[c] * self.s[c] + g) * self.dl[c];
            }
        }
        let din = self.made.backward(&dh);
        crate::engine::kernels::zip_inplace(&mut dx.data, &din.data, |a, b| a + b);
        dx
    }
    fn params(&self) -> Vec<&Param<F>> {
        self.made.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        self.made.params_mut()
    }
    fn reload(&mut self) {
        self.made.apply_masks();
    }
}
