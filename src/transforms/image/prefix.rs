//! A transform of the first features of a row, identity on the rest: the layers after a multi-scale split.

use super::*;

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
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        let (h, ld) = self.inner.inverse_train(&self.head(z), ctx)?;
        Some((self.with_head(z, &h), ld))
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let dh = self.inner.backward_inverse(&self.head(dx), dlogdet);
        self.with_head(dx, &dh)
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
