//! The additive map (NICE's coupling function, Dinh et al. 2015): `z = x + t`, volume-preserving.

use super::ElementwiseMap;
use crate::engine::Float;

/// The additive map `z = x + t` (NICE's coupling function), volume-preserving.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shift;

impl ElementwiseMap for Shift {
    type State<F: Float> = F;
    const NAME: &'static str = "Shift";
    const COUPLING: &'static str = "ShiftCoupling";
    const AUTOREGRESSIVE: &'static str = "ShiftAR";
    const COUPLING_2D: &'static str = "ShiftCoupling2d";
    fn params_per_element(&self) -> usize {
        1
    }
    fn prepare<F: Float>(&self, p: &[F], s: &mut F) {
        *s = p[0];
    }
    fn forward<F: Float>(&self, x: F, t: &F) -> (F, F) {
        (x + *t, F::zero())
    }
    fn inverse<F: Float>(&self, z: F, t: &F) -> (F, F) {
        (z - *t, F::zero())
    }
    fn backward<F: Float>(&self, _x: F, _t: &F, gz: F, _gl: F, dp: &mut [F]) -> F {
        dp[0] += gz;
        gz
    }
}
