//! The bounded log-scale of affine maps (couplings, MAF, MADE MoG's components): how a conditioner's raw
//! output becomes a scale that cannot blow up. Lives with the conditioners so that base distributions and
//! transforms both use it without one importing the other.

use crate::engine::{vmath, Float};
use serde::{Deserialize, Serialize};

/// How the affine coupling bounds its log-scale `l` given the raw network output `h`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
/// (`Sigmoid {}` has braces so that an unknown option in its JSON is refused.)
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScaleBound {
    /// `l = B tanh(h / B)`: soft clamp to (-B, B); identity near 0 (the default, B = 5).
    SoftClamp { bound: f64 },
    /// `exp(l) = sigmoid(h + 2) / sigmoid(2)` (Glow's sigmoid scale, divided by its value at `h = 0` so that a
    /// zero-initialised conditioner gives the identity): scales in (0, 1.135).
    Sigmoid {},
}

impl Default for ScaleBound {
    fn default() -> Self {
        ScaleBound::SoftClamp { bound: 5.0 }
    }
}

/// One row's log-scales `l`, their derivatives `dl/dh` and exponentials `e = exp(+-l)` ([`ScaleBound::eval_slice`]).
pub struct Scales<F> {
    pub l: Vec<F>,
    pub dl: Vec<F>,
    pub e: Vec<F>,
}

impl<F: Float> Scales<F> {
    pub fn new(n: usize) -> Self {
        Scales {
            l: vec![F::zero(); n],
            dl: vec![F::zero(); n],
            e: vec![F::zero(); n],
        }
    }
}

/// The largest soft-clamp bound: a log-scale of 30 already stretches by 1e13, and `e^B` must stay finite in f32
/// through a stack of layers.
pub const MAX_SCALE_BOUND: f64 = 30.0;

impl ScaleBound {
    /// Wrong options, as a message.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            ScaleBound::SoftClamp { bound } if !(bound > 0.0 && bound <= MAX_SCALE_BOUND) => Err(format!(
                "scale bound must be in (0, {MAX_SCALE_BOUND}], got {bound} (the log-scale's bound: e^{MAX_SCALE_BOUND} \
                 already scales by 1e13, and larger scales overflow f32 through a few layers)"
            )),
            _ => Ok(()),
        }
    }

    /// [`eval`](Self::eval) over a slice, with `e = exp(l)` (`exp(-l)` when `inverse`) into `out` (resized to
    /// `h`): the soft clamp in f32 through the vectorised functions of [`vmath`], the rest element by element.
    pub fn eval_slice<F: Float>(self, h: &[F], inverse: bool, out: &mut Scales<F>) {
        let n = h.len();
        for v in [&mut out.l, &mut out.dl, &mut out.e] {
            v.resize(n, F::zero());
        }
        if let ScaleBound::SoftClamp { bound } = self {
            if vmath::soft_clamp_exp(h, bound, inverse, &mut out.l, &mut out.dl, &mut out.e) {
                return;
            }
        }
        for (k, &hk) in h.iter().enumerate() {
            let (l, dl) = self.eval(hk);
            out.l[k] = l;
            out.dl[k] = dl;
            out.e[k] = if inverse { (-l).exp() } else { l.exp() };
        }
    }

    /// `(l, dl/dh)`.
    #[inline(always)]
    pub fn eval<F: Float>(self, h: F) -> (F, F) {
        match self {
            ScaleBound::SoftClamp { bound } => {
                let b = F::c(bound);
                let t = (h / b).tanh();
                (b * t, F::one() - t * t)
            }
            ScaleBound::Sigmoid {} => {
                let u = h + F::c(2.0);
                // log sigmoid(u) = -softplus(-u), d/du = sigmoid(-u)
                let sp = if u > F::zero() {
                    (-u).exp().ln_1p()
                } else {
                    -u + u.exp().ln_1p()
                };
                let sneg = F::one() / (F::one() + u.exp());
                // + log(1 + e^-2) = -log sigmoid(2)
                (-sp + F::c(0.126_928_011_042_972_6), sneg)
            }
        }
    }
}
