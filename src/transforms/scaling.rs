//! NICE's final diagonal scaling layer (Dinh et al. 2015, sec. 3.3): `z = x * exp(s)`, log|det| = sum s.

use super::Transform;
use crate::engine::{Float, Mat};
use crate::nn::Param;

#[derive(Clone, Debug)]
pub struct Scaling<F> {
    log_scale: Param<F>,
    x: Mat<F>,
}

impl<F: Float> Scaling<F> {
    /// Starts as the identity (`s = 0`).
    pub fn new(d: usize) -> Self {
        Scaling {
            log_scale: Param::zeros("log_scale", vec![d]),
            x: Mat::zeros(0, d),
        }
    }
    fn scaled(&self, x: &Mat<F>, sign: F) -> (Mat<F>, Vec<F>) {
        let e: Vec<F> = self
            .log_scale
            .value()
            .iter()
            .map(|&s| (sign * s).exp())
            .collect();
        let mut z = x.clone();
        for r in 0..z.rows {
            z.row_mut(r).iter_mut().zip(&e).for_each(|(v, &e)| *v *= e);
        }
        let ld = sign * self.log_scale.value().iter().copied().sum::<F>();
        (z, vec![ld; x.rows])
    }
}

impl<F: Float> Transform<F> for Scaling<F> {
    fn kind(&self) -> &'static str {
        "Scaling"
    }
    fn dim(&self) -> usize {
        self.log_scale.value().len()
    }
    fn forward(&self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.scaled(x, F::one())
    }
    fn inverse(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.scaled(z, -F::one())
    }
    fn forward_train(&mut self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.x = x.clone();
        self.scaled(x, F::one())
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let e: Vec<F> = self.log_scale.value().iter().map(|&s| s.exp()).collect();
        let gsum: F = dlogdet.iter().copied().sum();
        let mut dx = dz.clone();
        let gs = self.log_scale.grad_mut();
        for r in 0..dz.rows {
            let xr = self.x.row(r);
            let dzr = dz.row(r);
            for j in 0..e.len() {
                gs[j] += dzr[j] * xr[j] * e[j];
            }
            dx.row_mut(r).iter_mut().zip(&e).for_each(|(v, &e)| *v *= e);
        }
        gs.iter_mut().for_each(|g| *g += gsum);
        dx
    }
    fn inverse_train(&mut self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        let out = self.scaled(z, -F::one());
        self.x = out.0.clone();
        Some(out)
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        // x = z e^-s, log-det -sum s: dL/dz = dx e^-s, dL/ds = -dx x - g
        let e: Vec<F> = self.log_scale.value().iter().map(|&s| (-s).exp()).collect();
        let gsum: F = dlogdet.iter().copied().sum();
        let mut dz = dx.clone();
        let gs = self.log_scale.grad_mut();
        for r in 0..dx.rows {
            let (xr, dxr) = (self.x.row(r), dx.row(r));
            for j in 0..e.len() {
                gs[j] -= dxr[j] * xr[j];
            }
            dz.row_mut(r).iter_mut().zip(&e).for_each(|(v, &e)| *v *= e);
        }
        gs.iter_mut().for_each(|g| *g -= gsum);
        dz
    }
    fn params(&self) -> Vec<&Param<F>> {
        vec![&self.log_scale]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        vec![&mut self.log_scale]
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        Some(Box::new(self.clone()))
    }
}
