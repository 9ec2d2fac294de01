//! Squeeze (RealNVP sec. 3.6): space-to-depth, each 2x2 block of a channel becomes 4 channels.

use super::*;

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
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        Some(self.inverse(z, ctx))
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, _dlogdet: &[F]) -> Mat<F> {
        dx.gather_cols(&self.idx)
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
