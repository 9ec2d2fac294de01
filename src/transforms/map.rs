//! Monotone element-wise maps `z = g(x; θ)`, one scalar at a time, with `θ` a few unconstrained numbers that a
//! conditioner outputs. The structures that condition them ([`super::MapCoupling`], [`super::MapAr`]) work
//! with any map; [`MapConfig`] names each map in configs and builds it into either structure.
//!
//! Adding a map: a file in `transforms/map/` with a type implementing [`ElementwiseMap`], and in this file its
//! `mod` line and a [`MapConfig`] variant with its build arms (coupling, autoregressive, image coupling). Layer configs, presets (`--map NAME`),
//! saving and loading need nothing more.
//!
//! Every map is the identity at `θ = 0`, so a flow whose conditioners start at zero starts as the identity.

mod shift;
mod sinh_arcsinh;

pub use shift::Shift;
pub use sinh_arcsinh::SinhArcsinh;

use super::{
    AdditiveCoupling, AffineCoupling, ConvCoupling, Iaf, ImageMask, ImageShape, Maf, MapAr,
    MapConvCoupling, MapCoupling, RqSpline, ScaleBound, Transform,
};
use crate::engine::{Float, Rng};
use crate::nn::{Activation, ConvNetKind, MadeOpts};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// A monotone increasing scalar map with analytic derivatives.
pub trait ElementwiseMap: Copy + Debug + Send + Sync + 'static {
    /// What is computed once per element from its raw parameters (bin edges, scales, ...).
    type State<F: Float>: Default + Clone + Send;
    /// Name used in messages and layer descriptions (`RqSpline`, `SinhArcsinh`).
    const NAME: &'static str;
    /// The coupling and autoregressive layers' names, as `Transform::kind` reports them.
    const COUPLING: &'static str;
    const AUTOREGRESSIVE: &'static str;
    const COUPLING_2D: &'static str;
    /// Unconstrained parameters per element.
    fn params_per_element(&self) -> usize;
    /// Wrong options, as a message.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// The element's state from its raw parameters `p` (`params_per_element` of them).
    fn prepare<F: Float>(&self, p: &[F], s: &mut Self::State<F>);
    /// `(g(x), log g'(x))`.
    fn forward<F: Float>(&self, x: F, s: &Self::State<F>) -> (F, F);
    /// `(g^-1(z), log (g^-1)'(z))`.
    fn inverse<F: Float>(&self, z: F, s: &Self::State<F>) -> (F, F);
    /// Backward of [`forward`](Self::forward) at `x` for `L` with `dL/dz = gz` and `dL/dlog g' = gl`: adds
    /// `dL/dp` into `dp` and returns `dL/dx`.
    fn backward<F: Float>(&self, x: F, s: &Self::State<F>, gz: F, gl: F, dp: &mut [F]) -> F;

    /// The maps of one row in f32 through a vectorised path, where the map has one (and, outside training,
    /// where its config asks for it): `v` (the row's transformed values, element `k` the `k`-th) in place, `h`
    /// the row's parameters (parameter `j` of element `k` at `j * v.len() + k`); the sum of the log-slopes.
    /// `None`: the caller goes element by element.
    fn row_f32(&self, _v: &mut [f32], _h: &[f32], _inverse: bool, _train: bool) -> Option<f32> {
        None
    }

    /// Backward of [`row_f32`](Self::row_f32) in the forward direction at `x`: `g` holds `dL/dz` and becomes
    /// `dL/dx`, `gl` is `dL/d(log-det)` of the row, `dh` receives `dL/dh`. `false`: no such path.
    fn row_backward_f32(
        &self,
        _x: &[f32],
        _h: &[f32],
        _g: &mut [f32],
        _gl: f32,
        _dh: &mut [f32],
    ) -> bool {
        false
    }

    /// Backward of [`inverse`](Self::inverse) (the sampling direction) at `x = g^-1(z)`, for `L` with
    /// `dL/dx = gx` and `dL/dlog (g^-1)'(z) = gl`: adds `dL/dp` into `dp` and returns `dL/dz`.
    ///
    /// By implicit differentiation of `g(x; p) = z` through [`backward`](Self::backward): with
    /// `ℓ = log g'(x)`, `dx/dz = 1/g'`, `dx/dp = -(∂g/∂p)/g'` and `log (g^-1)' = -ℓ`, so
    /// `dL/dz = c` and `dL/dp = -c ∂g/∂p - gl ∂ℓ/∂p` with `c = (gx - gl ∂ℓ/∂x) / g'`: three calls of the
    /// forward backward (`g'`, `∂ℓ/∂x`, then the parameter part). Maps may override it with a direct form.
    fn backward_inverse<F: Float>(
        &self,
        x: F,
        s: &Self::State<F>,
        gx: F,
        gl: F,
        dp: &mut [F],
    ) -> F {
        // the first two calls' parameter gradients are not wanted: written to scratch (on the stack for the
        // usual few parameters)
        let n = dp.len();
        let (mut small, mut big) = ([F::zero(); 64], Vec::new());
        let scratch: &mut [F] = if n <= small.len() {
            &mut small[..n]
        } else {
            big.resize(n, F::zero());
            &mut big
        };
        let slope = self.backward(x, s, F::one(), F::zero(), scratch);
        let dl_dx = self.backward(x, s, F::zero(), F::one(), scratch);
        let c = (gx - gl * dl_dx) / slope;
        self.backward(x, s, -c, -gl, dp);
        c
    }
}

impl ElementwiseMap for super::RqSpline {
    type State<F: Float> = super::spline::Knots<F>;
    const NAME: &'static str = "RqSpline";
    const COUPLING: &'static str = "SplineCoupling";
    const AUTOREGRESSIVE: &'static str = "SplineAR";
    const COUPLING_2D: &'static str = "SplineCoupling2d";
    fn params_per_element(&self) -> usize {
        super::RqSpline::params_per_element(self)
    }
    fn validate(&self) -> Result<(), String> {
        super::RqSpline::validate(self)
    }
    fn prepare<F: Float>(&self, p: &[F], s: &mut Self::State<F>) {
        self.knots(p, s)
    }
    fn forward<F: Float>(&self, x: F, s: &Self::State<F>) -> (F, F) {
        super::RqSpline::forward(self, x, s)
    }
    fn inverse<F: Float>(&self, z: F, s: &Self::State<F>) -> (F, F) {
        super::RqSpline::inverse(self, z, s)
    }
    fn backward<F: Float>(&self, x: F, s: &Self::State<F>, gz: F, gl: F, dp: &mut [F]) -> F {
        super::RqSpline::backward(self, x, s, gz, gl, dp)
    }
    fn row_f32(&self, v: &mut [f32], h: &[f32], inverse: bool, train: bool) -> Option<f32> {
        (train || self.kernel == super::spline::SplineKernel::Vectorised)
            .then(|| super::spline_lanes::forward_row(self, v, h, inverse))
    }
    fn row_backward_f32(
        &self,
        x: &[f32],
        h: &[f32],
        g: &mut [f32],
        gl: f32,
        dh: &mut [f32],
    ) -> bool {
        super::spline_lanes::backward_row(self, x, h, g, gl, dh);
        true
    }
}

/// An element-wise map by name, with its options: what layer configs store. `affine` and `additive` build the
/// fused layers ([`AffineCoupling`], [`Maf`], [`AdditiveCoupling`], [`ConvCoupling`]); the others the generic
/// structures ([`MapCoupling`], [`MapAr`], [`MapConvCoupling`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MapConfig {
    /// `z = x e^l + t`, `l` bounded (RealNVP, MAF).
    Affine {
        #[serde(default)]
        scale: ScaleBound,
    },
    /// `z = x + t` (NICE). (Written with braces so that an unknown option in its JSON is refused, as for
    /// the others: serde ignores extra fields of a tagged unit variant.)
    Additive {},
    /// Monotonic rational-quadratic spline (Durkan et al. 2019).
    RqSpline(RqSpline),
    /// Sinh-arcsinh with location and scale (Jones & Pewsey 2009).
    SinhArcsinh {},
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig::Affine {
            scale: ScaleBound::default(),
        }
    }
}

/// The conditioner of a layer: MLP (couplings) or MADE (autoregressive) sizes.
#[derive(Clone, Copy, Debug)]
pub struct NetShape {
    pub hidden: usize,
    pub depth: usize,
    pub activation: Activation,
}

impl MapConfig {
    /// The map's `"type"` name.
    pub fn name(&self) -> &'static str {
        match self {
            MapConfig::Affine { .. } => "affine",
            MapConfig::Additive {} => "additive",
            MapConfig::RqSpline(_) => "rq-spline",
            MapConfig::SinhArcsinh {} => "sinh-arcsinh",
        }
    }

    /// Unconstrained parameters per transformed element: what a conditioner outputs for each (and what size
    /// estimates count, so they cannot drift from the maps).
    pub fn params_per_element(&self) -> usize {
        match self {
            // the fused layers' shift and log-scale, and shift
            MapConfig::Affine { .. } => 2,
            MapConfig::Additive {} => Shift.params_per_element(),
            MapConfig::RqSpline(s) => ElementwiseMap::params_per_element(s),
            MapConfig::SinhArcsinh {} => SinhArcsinh.params_per_element(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            MapConfig::Affine { scale } => scale.validate(),
            MapConfig::RqSpline(s) => ElementwiseMap::validate(s),
            _ => Ok(()),
        }
    }

    /// A coupling of this map: `mask[j]` true for the transformed features.
    pub fn coupling<F: Float>(
        &self,
        mask: &[bool],
        ctx_dim: usize,
        n: NetShape,
        r: &mut Rng,
    ) -> Box<dyn Transform<F>> {
        let (h, d, a) = (n.hidden, n.depth, n.activation);
        match *self {
            MapConfig::Affine { scale } => {
                Box::new(AffineCoupling::new(mask, ctx_dim, h, d, a, scale, r))
            }
            MapConfig::Additive {} => Box::new(AdditiveCoupling::new(mask, ctx_dim, h, d, a, r)),
            MapConfig::RqSpline(s) => Box::new(MapCoupling::new(mask, ctx_dim, h, d, a, s, r)),
            MapConfig::SinhArcsinh {} => {
                Box::new(MapCoupling::new(mask, ctx_dim, h, d, a, SinhArcsinh, r))
            }
        }
    }

    /// An image coupling of this map; `direct`: its conditioner's few-output convolutions evaluate directly.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_coupling<F: Float>(
        &self,
        name: &str,
        shape: ImageShape,
        mask: ImageMask,
        net: ConvNetKind,
        width: usize,
        ctx_dim: usize,
        direct: bool,
        r: &mut Rng,
    ) -> Box<dyn Transform<F>> {
        match *self {
            MapConfig::Affine { scale } => Box::new(
                ConvCoupling::new(name, shape, mask, true, scale, net, width, ctx_dim, r)
                    .with_direct(direct),
            ),
            MapConfig::Additive {} => Box::new(
                ConvCoupling::new(
                    name,
                    shape,
                    mask,
                    false,
                    ScaleBound::default(),
                    net,
                    width,
                    ctx_dim,
                    r,
                )
                .with_direct(direct),
            ),
            MapConfig::RqSpline(s) => Box::new(
                MapConvCoupling::new(name, shape, mask, s, net, width, ctx_dim, r)
                    .with_direct(direct),
            ),
            MapConfig::SinhArcsinh {} => Box::new(
                MapConvCoupling::new(name, shape, mask, SinhArcsinh, net, width, ctx_dim, r)
                    .with_direct(direct),
            ),
        }
    }

    /// A masked autoregressive layer of this map: `order[i]` the position of feature `i`; `iaf`: the
    /// sampling orientation (affine only).
    #[allow(clippy::too_many_arguments)]
    pub fn autoregressive<F: Float>(
        &self,
        order: &[usize],
        ctx_dim: usize,
        n: NetShape,
        opts: MadeOpts,
        iaf: bool,
        r: &mut Rng,
    ) -> Result<Box<dyn Transform<F>>, String> {
        let (dim, h, d, a) = (order.len(), n.hidden, n.depth, n.activation);
        if iaf && !matches!(self, MapConfig::Affine { .. }) {
            return Err(format!(
                "the IAF orientation is built for the affine map only, not {}",
                self.name()
            ));
        }
        Ok(match *self {
            MapConfig::Affine { scale } => {
                let maf = Maf::new(dim, ctx_dim, h, d, a, scale, order, opts, r);
                match iaf {
                    true => Box::new(Iaf::from(maf)),
                    false => Box::new(maf),
                }
            }
            MapConfig::Additive {} => {
                Box::new(MapAr::new(dim, ctx_dim, h, d, a, Shift, order, opts, r))
            }
            MapConfig::RqSpline(s) => {
                Box::new(MapAr::new(dim, ctx_dim, h, d, a, s, order, opts, r))
            }
            MapConfig::SinhArcsinh {} => Box::new(MapAr::new(
                dim,
                ctx_dim,
                h,
                d,
                a,
                SinhArcsinh,
                order,
                opts,
                r,
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{randn, rng, Mat};
    use crate::transforms::testing::{check_transform, randomize};
    use crate::transforms::{Mask, Order};

    /// One of each map. The match makes a new `MapConfig` variant a compile error here until it is listed.
    fn every_map() -> Vec<MapConfig> {
        let all = [
            MapConfig::Affine {
                scale: ScaleBound::SoftClamp { bound: 2.0 },
            },
            MapConfig::Affine {
                scale: ScaleBound::Sigmoid {},
            },
            MapConfig::Additive {},
            MapConfig::RqSpline(RqSpline {
                bins: 4,
                bound: 2.0,
                ..RqSpline::default()
            }),
            MapConfig::SinhArcsinh {},
        ];
        for m in &all {
            match m {
                MapConfig::Affine { .. }
                | MapConfig::Additive {}
                | MapConfig::RqSpline(_)
                | MapConfig::SinhArcsinh {} => {}
            }
        }
        all.to_vec()
    }

    /// Every map in both structures, built through the configs as flows build them: the identity at zero
    /// parameters, then the generic checks with random parameters (and a context).
    /// The sampling direction's backward of every map against central differences of
    /// `L(z, p) = a x(z; p) + b log (g^-1)'(z; p)`, at points in the splines' range and their tails.
    #[test]
    fn every_map_backward_inverse_against_finite_differences() {
        fn check<M: ElementwiseMap>(m: M, seed: u64) {
            let mut r = rng(seed);
            let np = m.params_per_element();
            for _ in 0..8 {
                let p: Vec<f64> = randn::<f64>(&mut r, 1, np)
                    .data
                    .iter()
                    .map(|v| 0.7 * v)
                    .collect();
                let z = 2.5 * randn::<f64>(&mut r, 1, 1).data[0];
                let (a, b) = (0.8, -0.6);
                let loss = |z: f64, p: &[f64]| {
                    let mut s = M::State::<f64>::default();
                    m.prepare(p, &mut s);
                    let (x, l) = m.inverse(z, &s);
                    a * x + b * l
                };
                let mut s = M::State::<f64>::default();
                m.prepare(&p, &mut s);
                let x = m.inverse(z, &s).0;
                let mut dp = vec![0.0; np];
                let dz = m.backward_inverse(x, &s, a, b, &mut dp);
                let h = 1e-6;
                let fd = (loss(z + h, &p) - loss(z - h, &p)) / (2.0 * h);
                assert!(
                    (fd - dz).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{}: dz {dz} vs {fd}",
                    M::NAME
                );
                for q in 0..np {
                    let (mut pp, mut pm) = (p.clone(), p.clone());
                    pp[q] += h;
                    pm[q] -= h;
                    let fd = (loss(z, &pp) - loss(z, &pm)) / (2.0 * h);
                    assert!(
                        (fd - dp[q]).abs() < 1e-6 * (1.0 + fd.abs()),
                        "{}: dp[{q}] {} vs {fd}",
                        M::NAME,
                        dp[q]
                    );
                }
            }
        }
        check(RqSpline::default(), 1);
        check(SinhArcsinh, 2);
        check(Shift, 3);
    }

    #[test]
    fn every_map_in_every_structure() {
        let net = NetShape {
            hidden: 8,
            depth: 2,
            activation: Activation::Tanh,
        };
        for (i, map) in every_map().into_iter().enumerate() {
            for ctx in [0usize, 2] {
                let mut r = rng(100 + i as u64);
                let mask = Mask::Alternate.build(5, i, &mut r);
                let order = Order::Random.build(5, 0, &mut r);
                let opts = MadeOpts::default();
                // images of 2 channels of 2x3 pixels, with a channel and a checkerboard mask
                let shape = ImageShape::new(2, 2, 3);
                let conv = |m, r: &mut crate::engine::Rng| {
                    map.conv_coupling(
                        &format!("net{i}"),
                        shape,
                        m,
                        ConvNetKind::Glow {},
                        4,
                        ctx,
                        true,
                        r,
                    )
                };
                let layers: Vec<Box<dyn Transform<f64>>> = vec![
                    map.coupling(&mask, ctx, net, &mut r),
                    map.autoregressive(&order, ctx, net, opts, false, &mut r)
                        .unwrap(),
                    conv(ImageMask::Channel { swap: i % 2 == 1 }, &mut r),
                    conv(ImageMask::Checkerboard { parity: i % 2 }, &mut r),
                ];
                for mut t in layers {
                    let mut x: Mat<f64> = randn(&mut r, 6, t.dim());
                    x.data.iter_mut().for_each(|v| *v *= 1.5);
                    let c: Option<Mat<f64>> = (ctx > 0).then(|| randn(&mut r, 6, ctx));
                    let (z, ld) = t.forward(&x, c.as_ref());
                    let tag = format!("{} in {}", map.name(), t.kind());
                    assert!(
                        z.data
                            .iter()
                            .zip(&x.data)
                            .all(|(a, b)| (a - b).abs() < 1e-12)
                            && ld.iter().all(|v| v.abs() < 1e-12),
                        "{tag}: not the identity at zero parameters"
                    );
                    randomize(t.as_mut(), &mut r, 0.4);
                    check_transform(t.as_mut(), &x, c.as_ref(), &mut r);
                }
            }
        }
    }
}
