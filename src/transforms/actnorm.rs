//! ActNorm (Kingma & Dhariwal 2018, Glow sec. 3.1): per-feature affine map `z = (x + b) * exp(s)` whose
//! parameters are initialised from the first training batch so that `z` has zero mean and unit variance.
//! The `initialized` flag is a saved buffer, so a loaded model never re-initialises.
//!
//! On images (rows of `c` channel planes of `hw` pixels each) there is one `(b, s)` pair per channel, shared by
//! its pixels, and log|det| = `hw * sum s`.

use super::Transform;
use crate::engine::{Float, Mat};
use crate::nn::Param;

#[derive(Clone, Debug)]
pub struct ActNorm<F> {
    bias: Param<F>,
    log_scale: Param<F>,
    initialized: Param<F>,
    /// features per parameter pair (pixels per channel; 1 for vectors)
    hw: usize,
    x: Mat<F>,
}

impl<F: Float> ActNorm<F> {
    /// One scale and shift per feature.
    pub fn new(d: usize) -> Self {
        Self::per_channel(d, 1)
    }
    /// One scale and shift per channel of `c` channel planes of `hw` features each.
    pub fn per_channel(c: usize, hw: usize) -> Self {
        ActNorm {
            bias: Param::zeros("bias", vec![c]),
            log_scale: Param::zeros("log_scale", vec![c]),
            initialized: Param::buffer("initialized", vec![1], vec![F::zero()]),
            hw,
            x: Mat::zeros(0, c * hw),
        }
    }
    pub fn is_initialized(&self) -> bool {
        self.initialized.value()[0] > F::zero()
    }
    /// Data-dependent initialisation from a batch.
    pub fn init_from(&mut self, x: &Mat<F>) {
        let hw = self.hw;
        let n = (x.rows * hw).max(1) as f64;
        for ch in 0..self.bias.value().len() {
            let vals = || {
                (0..x.rows)
                    .flat_map(move |r| x.row(r)[ch * hw..(ch + 1) * hw].iter().map(|v| v.f64()))
            };
            let mean = vals().sum::<f64>() / n;
            let var = vals().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            self.bias.value_mut()[ch] = F::c(-mean);
            self.log_scale.value_mut()[ch] = F::c(-(var.sqrt() + 1e-6).ln());
        }
        self.initialized.value_mut()[0] = F::one();
    }
    fn apply(&self, x: &Mat<F>, inverse: bool) -> (Mat<F>, Vec<F>) {
        let b = self.bias.value();
        let s = self.log_scale.value();
        let hw = self.hw;
        let mut z = x.clone();
        for r in 0..z.rows {
            for (j, v) in z.row_mut(r).iter_mut().enumerate() {
                let c = j / hw;
                *v = if inverse {
                    *v * (-s[c]).exp() - b[c]
                } else {
                    (*v + b[c]) * s[c].exp()
                };
            }
        }
        let ld: F = s.iter().copied().sum::<F>() * F::c(hw as f64);
        (z, vec![if inverse { -ld } else { ld }; x.rows])
    }
}

impl<F: Float> Transform<F> for ActNorm<F> {
    fn kind(&self) -> &'static str {
        "ActNorm"
    }
    fn dim(&self) -> usize {
        self.bias.value().len() * self.hw
    }
    fn forward(&self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.apply(x, false)
    }
    fn inverse(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.apply(z, true)
    }
    fn forward_train(&mut self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        if !self.is_initialized() {
            self.init_from(x);
        }
        self.x = x.clone();
        self.apply(x, false)
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let d = dz.cols;
        let hw = self.hw;
        let e: Vec<F> = self.log_scale.value().iter().map(|&s| s.exp()).collect();
        let gsum: F = dlogdet.iter().copied().sum::<F>() * F::c(hw as f64);
        let mut dx = dz.clone();
        let bias = self.bias.value().to_vec();
        let (gb, gs) = (self.bias.grad_mut(), self.log_scale.grad_mut());
        for r in 0..dz.rows {
            let xr = self.x.row(r);
            let dzr = dz.row(r);
            for j in 0..d {
                let c = j / hw;
                gb[c] += dzr[j] * e[c];
                gs[c] += dzr[j] * (xr[j] + bias[c]) * e[c];
            }
            dx.row_mut(r)
                .iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v *= e[j / hw]);
        }
        gs.iter_mut().for_each(|g| *g += gsum);
        dx
    }
    /// In the sampling direction there is no data batch to start from: an ActNorm not yet initialised keeps
    /// its identity start (and is marked initialised, so a later data pass does not reset it).
    fn inverse_train(&mut self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        self.initialized.value_mut()[0] = F::one();
        let out = self.apply(z, true);
        self.x = out.0.clone();
        Some(out)
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        // x = z e^-s - b, log-det -hw sum s: dL/dz = dx e^-s, dL/db = -dx, dL/ds = -dx (x + b) - hw g
        let hw = self.hw;
        let e: Vec<F> = self.log_scale.value().iter().map(|&s| (-s).exp()).collect();
        let gsum: F = dlogdet.iter().copied().sum::<F>() * F::c(hw as f64);
        let bias = self.bias.value().to_vec();
        let mut dz = dx.clone();
        let (gb, gs) = (self.bias.grad_mut(), self.log_scale.grad_mut());
        for r in 0..dx.rows {
            let (xr, dxr) = (self.x.row(r), dx.row(r));
            for j in 0..dx.cols {
                let c = j / hw;
                gb[c] -= dxr[j];
                gs[c] -= dxr[j] * (xr[j] + bias[c]);
            }
            dz.row_mut(r)
                .iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v *= e[j / hw]);
        }
        gs.iter_mut().for_each(|g| *g -= gsum);
        dz
    }
    fn params(&self) -> Vec<&Param<F>> {
        vec![&self.bias, &self.log_scale, &self.initialized]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        vec![&mut self.bias, &mut self.log_scale, &mut self.initialized]
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        self.is_initialized()
            .then(|| Box::new(self.clone()) as Box<dyn Transform<F>>)
    }
}
