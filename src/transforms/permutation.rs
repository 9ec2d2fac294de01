//! Fixed permutation of the features (`Reverse`, or a random permutation): volume preserving, log|det| = 0.

use super::{zeros_logdet, Transform};
use crate::engine::{Float, Mat, Rng};
use crate::nn::Param;
use rand::seq::SliceRandom;

/// `z[:, j] = x[:, perm[j]]`. The permutation is stored as a buffer so a loaded model is the saved one.
#[derive(Clone, Debug)]
pub struct Permutation<F> {
    perm: Param<F>,
    idx: Vec<usize>,
    inv: Vec<usize>,
    reverse: bool,
}

impl<F: Float> Permutation<F> {
    pub fn new(idx: Vec<usize>) -> Self {
        let d = idx.len();
        let mut inv = vec![0; d];
        for (j, &i) in idx.iter().enumerate() {
            inv[i] = j;
        }
        let reverse = idx.iter().enumerate().all(|(j, &i)| i == d - 1 - j);
        let perm = Param::buffer(
            "perm",
            vec![d],
            idx.iter().map(|&i| F::c(i as f64)).collect(),
        );
        Permutation {
            perm,
            idx,
            inv,
            reverse,
        }
    }
    /// Reverse the feature order (MAF, Glow's "reverse").
    pub fn reverse(d: usize) -> Self {
        Self::new((0..d).rev().collect())
    }
    /// A uniformly random permutation.
    pub fn random(d: usize, rng: &mut Rng) -> Self {
        let mut idx: Vec<usize> = (0..d).collect();
        idx.shuffle(rng);
        Self::new(idx)
    }
    pub fn indices(&self) -> &[usize] {
        &self.idx
    }
    fn sync(&mut self) {
        let idx: Vec<usize> = self.perm.value().iter().map(|v| v.f64() as usize).collect();
        *self = Self::new(idx);
    }
}

impl<F: Float> Transform<F> for Permutation<F> {
    fn kind(&self) -> &'static str {
        if self.reverse {
            "Reverse"
        } else {
            "Permutation"
        }
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
        vec![&self.perm]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        vec![&mut self.perm]
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        Some(Box::new(self.clone()))
    }
    fn reload(&mut self) {
        self.sync();
    }
}
