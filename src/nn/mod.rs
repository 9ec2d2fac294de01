//! Conditioner networks and their parameters. Every network has an inference forward, a training forward that
//! caches what the backward needs, and an analytic backward that accumulates parameter gradients.

pub mod conv;
pub mod made;
pub mod mlp;
mod piecewise;

pub use conv::{Conv2d, ConvNet, ConvNetKind};
pub use made::{Made, MadeOpts};
pub use mlp::{Activation, Linear, Mlp};

use crate::engine::Float;

/// A named tensor of a module: trainable weights, or a buffer (running statistics, masks, an "initialised"
/// flag) that is saved with the model but never touched by the optimiser.
#[derive(Clone, Debug)]
pub struct Param<F> {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Vec<F>,
    pub grad: Vec<F>,
    pub trainable: bool,
    /// Structural zeros (MADE's masked weights): entries where the mask is 0 are not parameters. They hold 0,
    /// their gradients are zeroed by the module that owns them, and gradient checks skip them.
    pub mask: Option<Vec<F>>,
}

impl<F: Float> Param<F> {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, value: Vec<F>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), value.len());
        let n = value.len();
        Param {
            name: name.into(),
            shape,
            value,
            grad: vec![F::zero(); n],
            trainable: true,
            mask: None,
        }
    }
    pub fn zeros(name: impl Into<String>, shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self::new(name, shape, vec![F::zero(); n])
    }
    /// A saved, non-trainable tensor.
    pub fn buffer(name: impl Into<String>, shape: Vec<usize>, value: Vec<F>) -> Self {
        let mut p = Self::new(name, shape, value);
        p.trainable = false;
        p.grad = Vec::new();
        p
    }
    pub fn zero_grad(&mut self) {
        crate::engine::kernels::map_inplace(&mut self.grad, |_| F::zero());
    }
    /// Whether entry `k` is a free parameter (not a structural zero).
    pub fn is_free(&self, k: usize) -> bool {
        self.mask.as_ref().is_none_or(|m| m[k] != F::zero())
    }
    /// Declare structural zeros: zero the masked entries now (their gradients are masked by the owner).
    pub fn set_mask(&mut self, mask: Vec<F>) {
        assert_eq!(mask.len(), self.value.len());
        self.value.iter_mut().zip(&mask).for_each(|(w, &m)| *w *= m);
        self.mask = Some(mask);
    }
}
