//! ActNorm (Kingma & Dhariwal 2018, Glow sec. 3.1): per-feature affine map `z = (x + b) * exp(s)` whose
//! parameters are initialised from the first training batch so that `z` has zero mean and unit variance.
//! The `initialized` flag is a saved buffer, so a loaded model never re-initialises.

use super::Transform;
use crate::engine::{Float, Mat};
use crate::nn::Param;

#[derive(Clone, Debug)]
pub struct ActNorm<F> {
    bias: Param<F>,
    log_scale: Param<F>,
    initialized: Param<F>,
    x: Mat<F>,
}

impl<F: Float> ActNorm<F> {
    pub fn new(d: usize) -> Self {
        ActNorm {
            bias: Param::zeros("bias", vec![d]),
            log_scale: Param::zeros("log_scale", vec![d]),
            initialized: Param::buffer("initialized", vec![1], vec![F::zero()]),
            x: Mat::zeros(0, d),
        }
    }
    pub fn is_initialized(&self) -> bool {
        self.initialized.value[0] > F::zero()
    }
    /// Data-dependent initialisation from a batch.
    pub fn init_from(&mut self, x: &Mat<F>) {
        let d = x.cols;
        let n = F::c(x.rows.max(1) as f64);
        for j in 0..d {
            let mean = (0..x.rows).map(|r| x.at(r, j)).sum::<F>() / n;
            let var = (0..x.rows).map(|r| (x.at(r, j) - mean).powi(2)).sum::<F>() / n;
            self.bias.value[j] = -mean;
            self.log_scale.value[j] = -(var.sqrt() + F::c(1e-6)).ln();
        }
        self.initialized.value[0] = F::one();
    }
    fn apply(&self, x: &Mat<F>, inverse: bool) -> (Mat<F>, Vec<F>) {
        let b = &self.bias.value;
        let s = &self.log_scale.value;
        let mut z = x.clone();
        for r in 0..z.rows {
            for (j, v) in z.row_mut(r).iter_mut().enumerate() {
                *v = if inverse {
                    *v * (-s[j]).exp() - b[j]
                } else {
                    (*v + b[j]) * s[j].exp()
                };
            }
        }
        let ld: F = s.iter().copied().sum();
        (z, vec![if inverse { -ld } else { ld }; x.rows])
    }
}

impl<F: Float> Transform<F> for ActNorm<F> {
    fn kind(&self) -> &'static str {
        "ActNorm"
    }
    fn dim(&self) -> usize {
        self.bias.value.len()
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
        let e: Vec<F> = self.log_scale.value.iter().map(|&s| s.exp()).collect();
        let gsum: F = dlogdet.iter().copied().sum();
        let mut dx = dz.clone();
        for r in 0..dz.rows {
            let xr = self.x.row(r);
            let dzr = dz.row(r);
            for j in 0..d {
                self.bias.grad[j] += dzr[j] * e[j];
                self.log_scale.grad[j] += dzr[j] * (xr[j] + self.bias.value[j]) * e[j];
            }
            dx.row_mut(r).iter_mut().zip(&e).for_each(|(v, &e)| *v *= e);
        }
        self.log_scale.grad.iter_mut().for_each(|g| *g += gsum);
        dx
    }
    fn params(&self) -> Vec<&Param<F>> {
        vec![&self.bias, &self.log_scale, &self.initialized]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        vec![&mut self.bias, &mut self.log_scale, &mut self.initialized]
    }
}
