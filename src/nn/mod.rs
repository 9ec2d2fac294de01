//! Conditioner networks and their parameters. Every network has an inference forward, a training forward that
//! caches what the backward needs, and an analytic backward that accumulates parameter gradients.

pub mod activation;
pub mod conv;
pub mod linear;
pub mod made;
pub mod mlp;
mod piecewise;
pub mod scale;

pub use activation::Activation;
pub use conv::{Conv2d, ConvKernel, ConvNet, ConvNetKind};
pub use linear::{Block, Linear};
pub use made::{Made, MadeOpts};
pub use mlp::Mlp;
pub use scale::{ScaleBound, Scales};

use crate::engine::kernels::{PacksWriter, WeightPacks};
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
    /// The gradient (read with [`Param::grad`], written through [`Param::grad_mut`] or, by a product that writes
    /// every entry, [`Param::grad_for_write`]).
    grad: Vec<F>,
    /// The gradient is zero but its memory not yet cleared: [`Param::zero_grad`] only marks it, so the product
    /// that computes a big weight gradient overwrites it instead of clearing it first and then reading the
    /// zeros back (two passes over w3's 54 MB of weight gradients in each step).
    stale: bool,
    pub trainable: bool,
    /// Structural zeros (MADE's masked weights): entries where the mask is 0 are not parameters. They hold 0,
    /// their gradients are zeroed by the module that owns them, and gradient checks skip them.
    pub mask: Option<Vec<F>>,
    version: u64,
    /// The packed forms of a layer's weight, when the layer asks for them.
    packs: Packs,
}

/// A weight's packed forms for its layer's products ([`WeightPacks`]): asked for by the layer that trains it
/// ([`Param::want_packs`]), written by the optimiser as it updates the weight ([`Param::step_parts`]), used while
/// they were written at the tensor's current version. Clones start without.
#[derive(Default)]
struct Packs {
    /// The weight's `(out, inp)` when its layer wants them.
    want: Option<(usize, usize)>,
    /// The packs and the version they were written at.
    held: Option<(u64, Box<WeightPacks>)>,
}

impl Clone for Packs {
    fn clone(&self) -> Self {
        Packs::default()
    }
}

impl std::fmt::Debug for Packs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.held.is_some() { "Packs" } else { "-" })
    }
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
        // the values and the gradient of a big tensor on huge pages (where the program allows: `lasting`)
        let value = match n * std::mem::size_of::<F>() >= crate::engine::HUGE_PAGE {
            true => crate::engine::lasting(|| value.clone()),
            false => value,
        };
        Param {
            name: name.into(),
            shape,
            value,
            grad: crate::engine::lasting(|| vec![F::zero(); n]),
            stale: false,
            trainable: true,
            mask: None,
            version: next_version(),
            packs: Packs::default(),
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
        self.grad_mut();
        self.version = next_version();
        (&mut self.value, &self.grad)
    }
    /// [`Param::value_and_grad_mut`] for an optimiser that keeps the weight's packed forms in step
    /// ([`Param::want_packs`]): with them, a writer that the caller must repack every row through once it has
    /// written the row's new values (the packs are taken as written at the new version).
    pub fn step_parts(&mut self) -> (&mut [F], &[F], Option<PacksWriter>) {
        self.grad_mut();
        self.version = next_version();
        let writer = match self.packs.want {
            Some((out, inp)) => {
                let held = match self.packs.held.take() {
                    Some((_, p)) if p.dims() == (out, inp) => p,
                    _ => Box::new(WeightPacks::zeroed(out, inp)),
                };
                let (_, p) = self.packs.held.insert((self.version, held));
                Some(p.writer())
            }
            None => None,
        };
        (&mut self.value, &self.grad, writer)
    }
    /// Ask for this `out x inp` weight's packed forms: the optimiser writes them from its next step on
    /// ([`Param::step_parts`]). For f32 weights whose products run on the packed kernel
    /// ([`WeightPacks::suit`]).
    pub(crate) fn want_packs(&mut self, out: usize, inp: usize) {
        assert_eq!(out * inp, self.value.len(), "{}: packs' shape", self.name);
        self.packs.want = Some((out, inp));
    }
    /// The packed forms, if written at the current values.
    pub(crate) fn packs(&self) -> Option<&WeightPacks> {
        match &self.packs.held {
            Some((v, p)) if *v == self.version => Some(p),
            _ => None,
        }
    }
    /// The gradient (zeros after [`Param::zero_grad`] until something is added to it).
    pub fn grad(&self) -> std::borrow::Cow<'_, [F]> {
        match self.stale {
            true => std::borrow::Cow::Owned(vec![F::zero(); self.grad.len()]),
            false => std::borrow::Cow::Borrowed(&self.grad),
        }
    }
    /// The gradient, to add to (cleared first if [`Param::zero_grad`] left it stale).
    pub fn grad_mut(&mut self) -> &mut [F] {
        if self.stale {
            crate::engine::kernels::map_inplace(&mut self.grad, |_| F::zero());
            self.stale = false;
        }
        &mut self.grad
    }
    /// The values to read and the gradient to add to ([`Param::grad_mut`]) at once.
    pub fn value_and_grad(&mut self) -> (&[F], &mut [F]) {
        self.grad_mut();
        (&self.value, &mut self.grad)
    }
    /// The gradient's memory and whether it holds a gradient to add to (`false`: it is zero, and the caller
    /// must write every entry, as a product that does not accumulate does).
    pub fn grad_for_write(&mut self) -> (&mut [F], bool) {
        let accumulate = !std::mem::take(&mut self.stale);
        (&mut self.grad, accumulate)
    }
    /// Replace the gradient (same length).
    pub fn set_grad(&mut self, grad: Vec<F>) {
        assert_eq!(
            grad.len(),
            self.grad.len(),
            "{}: wrong number of gradients",
            self.name
        );
        self.grad = grad;
        self.stale = false;
    }
    /// Exchange the gradient and its stale mark with `held` (same length).
    pub(crate) fn swap_grad(&mut self, held: &mut (Vec<F>, bool)) {
        std::mem::swap(&mut self.grad, &mut held.0);
        std::mem::swap(&mut self.stale, &mut held.1);
    }
    /// The gradient becomes `held`'s plus its own, as [`Param::add_grad`] adds a replica's to the original's
    /// (the same bits: the sum of two numbers does not depend on their order); `held` is left stale.
    pub(crate) fn merge_grad(&mut self, held: &mut (Vec<F>, bool)) {
        if self.stale || !self.trainable {
            // nothing (or nothing kept) from this shard: the sum so far
            self.swap_grad(held);
        } else if !held.1 {
            crate::engine::kernels::zip_inplace(&mut self.grad, &held.0, |a, b| a + b);
        }
        held.1 = true;
    }
    /// Take `src`'s values and version where they differ (a replica following its original, same shape);
    /// whether anything was copied.
    pub(crate) fn follow(&mut self, src: &Param<F>) -> bool {
        if self.version == src.version {
            return false;
        }
        crate::engine::kernels::zip_inplace(&mut self.value, &src.value, |_, b| b);
        self.version = src.version;
        true
    }
    /// Add `src`'s gradient (a replica's, same shape) to this one.
    pub(crate) fn add_grad(&mut self, src: &Param<F>) {
        if src.stale || !self.trainable {
            return;
        }
        if self.stale {
            crate::engine::kernels::zip_inplace(&mut self.grad, &src.grad, |_, b| b);
            self.stale = false;
        } else {
            crate::engine::kernels::zip_inplace(&mut self.grad, &src.grad, |a, b| a + b);
        }
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
        // (into the tensor's own memory, which may be on huge pages)
        self.value.copy_from_slice(&value);
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
    /// Set the gradient to zero (lazily: the memory is cleared, or overwritten, by the next write).
    pub fn zero_grad(&mut self) {
        self.stale = true;
    }
    /// Zero the gradient of the structural zeros ([`Param::set_mask`]), if any.
    pub fn mask_grad(&mut self) {
        if let (Some(m), false) = (&self.mask, self.stale) {
            crate::engine::kernels::zip_inplace(&mut self.grad, m, |g, m| g * m);
        }
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

    /// `zero_grad` leaves the memory alone but every read sees zeros: `grad`, `grad_mut` (which clears it),
    /// the optimiser's `value_and_grad_mut`, and `grad_for_write` (which reports it as nothing to add to, once).
    #[test]
    fn zero_grad_reads_as_zeros() {
        let mut p: Param<f64> = Param::new("p", vec![3], vec![1.0, 2.0, 3.0]);
        p.set_grad(vec![4.0, 5.0, 6.0]);
        assert_eq!(*p.grad(), [4.0, 5.0, 6.0]);
        p.zero_grad();
        assert_eq!(*p.grad(), [0.0; 3]);
        p.grad_mut()[1] += 1.0;
        assert_eq!(*p.grad(), [0.0, 1.0, 0.0]);
        p.zero_grad();
        assert_eq!(p.value_and_grad_mut().1, [0.0; 3]);
        p.set_grad(vec![4.0, 5.0, 6.0]);
        p.zero_grad();
        let (g, accumulate) = p.grad_for_write();
        assert!(
            !accumulate,
            "a zeroed gradient reported as something to add to"
        );
        g.copy_from_slice(&[7.0, 8.0, 9.0]);
        assert!(p.grad_for_write().1);
        assert_eq!(*p.grad(), [7.0, 8.0, 9.0]);
        // masking a zeroed gradient keeps it zero
        p.set_mask(vec![1.0, 0.0, 1.0]);
        p.zero_grad();
        p.mask_grad();
        assert_eq!(*p.grad(), [0.0; 3]);
    }

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
