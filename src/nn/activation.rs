//! Hidden-layer non-linearities, applied and differentiated over whole buffers.

use crate::engine::kernels;
use crate::engine::Float;
use serde::{Deserialize, Serialize};

crate::names::named!(Activation => "activation");

/// Hidden-layer non-linearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    #[default]
    Relu,
    Tanh,
    Elu,
    LeakyRelu,
    Silu,
}

impl Activation {
    /// Whether the derivative can be computed from the activation's output alone (`deriv(a, a)` is then
    /// exact): everything but SiLU.
    pub(crate) fn deriv_from_output(self) -> bool {
        !matches!(self, Activation::Silu)
    }
    /// `v = act(v)` over a buffer: one loop per activation (the match outside it, so it vectorises), split over
    /// the pool when large.
    pub(crate) fn apply_slice<F: Float>(self, v: &mut [F]) {
        match self {
            Activation::Relu => kernels::map_inplace(v, |h| Activation::Relu.apply(h)),
            Activation::Tanh => kernels::map_inplace(v, |h| Activation::Tanh.apply(h)),
            Activation::Elu => kernels::map_inplace(v, |h| Activation::Elu.apply(h)),
            Activation::LeakyRelu => kernels::map_inplace(v, |h| Activation::LeakyRelu.apply(h)),
            Activation::Silu => kernels::map_inplace(v, |h| Activation::Silu.apply(h)),
        }
    }
    /// `d *= act'(pre)` over a buffer (`post` = act(pre)), like [`Activation::apply_slice`].
    pub(crate) fn backward_slice<F: Float>(self, d: &mut [F], pre: &[F], post: &[F]) {
        macro_rules! each {
            ($a:expr) => {
                kernels::zip3_inplace(d, pre, post, |g, h, y| g * $a.deriv(h, y))
            };
        }
        match self {
            Activation::Relu => {
                kernels::zip3_inplace(
                    d,
                    pre,
                    post,
                    |g, h, _| {
                        if h > F::zero() {
                            g
                        } else {
                            F::zero()
                        }
                    },
                )
            }
            Activation::Tanh => each!(Activation::Tanh),
            Activation::Elu => each!(Activation::Elu),
            Activation::LeakyRelu => each!(Activation::LeakyRelu),
            Activation::Silu => each!(Activation::Silu),
        }
    }
    #[inline(always)]
    pub(crate) fn apply<F: Float>(self, h: F) -> F {
        match self {
            Activation::Relu => h.max(F::zero()),
            Activation::Tanh => h.tanh(),
            Activation::Elu => {
                if h > F::zero() {
                    h
                } else {
                    h.exp_m1()
                }
            }
            Activation::LeakyRelu => {
                if h > F::zero() {
                    h
                } else {
                    F::c(0.01) * h
                }
            }
            Activation::Silu => h / (F::one() + (-h).exp()),
        }
    }
    /// Derivative given the pre-activation `h` and the output `a`.
    #[inline(always)]
    fn deriv<F: Float>(self, h: F, a: F) -> F {
        match self {
            Activation::Relu => {
                if h > F::zero() {
                    F::one()
                } else {
                    F::zero()
                }
            }
            Activation::Tanh => F::one() - a * a,
            Activation::Elu => {
                if h > F::zero() {
                    F::one()
                } else {
                    a + F::one()
                }
            }
            Activation::LeakyRelu => {
                if h > F::zero() {
                    F::one()
                } else {
                    F::c(0.01)
                }
            }
            Activation::Silu => {
                let s = F::one() / (F::one() + (-h).exp());
                s * (F::one() + h * (F::one() - s))
            }
        }
    }
}
