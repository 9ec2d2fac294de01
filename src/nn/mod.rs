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
    /// The values (read with [`Param::value`]; every write goes through [`Param::value_mut`] or
    /// [`Param::set_value`], which give the tensor a new [`Param::version`]).
    value: Vec<F>,
    pub grad: Vec<F>,
    pub trainable: bool,
    /// Structural zeros (MADE's masked weights): entries where the mask is 0 are not parameters. They hold 0,
    /// their gradients are zeroed by the module that owns them, and gradient checks skip them.
    pub mask: Option<Vec<F>>,
    version: u64,
}

/// Source of [`Param::version`]s: unique over the process, so a version names one state of one tensor's values
/// (a clone shares its original's version until either is written).
static VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_version() -> u64 {
    VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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
            version: next_version(),
        }
    }
    pub fn value(&self) -> &[F] {
        &self.value
    }
    /// Write access to the values; the tensor gets a new [`Param::version`] (so caches derived from the values,
    /// such as a layer's packed weights, are rebuilt).
    pub fn value_mut(&mut self) -> &mut [F] {
        self.version = next_version();
        &mut self.value
    }
    /// [`Param::value_mut`] beside read access to the gradient (an optimiser's step).
    pub fn value_and_grad_mut(&mut self) -> (&mut [F], &[F]) {
        self.version = next_version();
        (&mut self.value, &self.grad)
    }
    /// Set every value to `v`.
    pub fn fill(&mut self, v: F) {
        self.value_mut().iter_mut().for_each(|w| *w = v);
    }
    /// Replace the values (same length).
    pub fn set_value(&mut self, value: Vec<F>) {
        assert_eq!(
            value.len(),
            self.value.len(),
            "{}: wrong number of values",
            self.name
        );
        self.version = next_version();
        self.value = value;
    }
    /// Changes whenever the values may have: equal versions mean equal values (process-wide, clones included).
    pub fn version(&self) -> u64 {
        self.version
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
        self.value_mut()
            .iter_mut()
            .zip(&mask)
            .for_each(|(w, &m)| *w *= m);
        self.mask = Some(mask);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way of writing the values gives a new version, reads do not, and a clone shares its original's
    /// version until either is written.
    #[test]
    fn writes_change_the_version() {
        let mut p: Param<f64> = Param::new("p", vec![3], vec![1.0, 2.0, 3.0]);
        let v0 = p.version();
        assert_eq!(p.value()[1], 2.0);
        assert_eq!(p.version(), v0, "a read changed the version");
        let mut q = p.clone();
        assert_eq!(q.version(), v0);
        p.value_mut()[0] = 5.0;
        let v1 = p.version();
        assert_ne!(v1, v0);
        assert_eq!(q.version(), v0, "writing the original changed the clone");
        q.set_value(vec![0.0; 3]);
        assert!(q.version() != v0 && q.version() != v1);
        let _ = p.value_and_grad_mut();
        assert_ne!(p.version(), v1);
        let v2 = p.version();
        p.set_mask(vec![1.0, 0.0, 1.0]);
        assert_ne!(p.version(), v2);
        assert_eq!(p.value(), [5.0, 0.0, 3.0]);
        assert_ne!(
            Param::<f64>::zeros("a", vec![1]).version(),
            Param::<f64>::zeros("a", vec![1]).version()
        );
    }
}
