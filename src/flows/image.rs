//! Multi-scale image flows.
//!
//! **Glow** (Kingma & Dhariwal 2018, fig. 2): `L` levels; each squeezes (2x2 space-to-depth), runs `K` steps
//! of flow `ActNorm -> invertible 1x1 convolution -> affine coupling` and, except the last, factors out half
//! of the channels to the prior (optionally through Glow's learned conditional prior: the factored half is
//! normalised by a mean and scale predicted from the kept half).
//!
//! **RealNVP multi-scale** (Dinh et al. 2017, sec. 3.6): each scale runs `K` checkerboard couplings,
//! squeezes, runs `K` channel-wise couplings and factors out half of the channels; the last scale runs
//! `K + 1` checkerboard couplings. Conditioners are ResNets.
//!
//! Factored-out channels are the last half of the current image rows; every later transform is wrapped in a
//! [`crate::transforms::Prefix`], so the flow stays one chain of transforms over `C*H*W` features on a
//! standard normal prior.

use super::layers::{
    ActNormConfig, ConvCouplingConfig, InvConv1x1Config, Layer, PermutationConfig, PermutationRule,
    SqueezeConfig,
};
use super::{FlowKind, FlowSpec, Permute};
use crate::names::Named;
use crate::nn::{ConvKernel, ConvNetKind};
use crate::transforms::{ImageMask, ImageShape, MapConfig, ScaleBound};
use crate::Error;

crate::names::named!(CouplingKind => "coupling");

/// Glow's and RealNVP's coupling function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CouplingKind {
    #[default]
    Affine,
    Additive,
}

/// Checks of the image-specific fields of a spec.
pub(super) fn validate(spec: &FlowSpec) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Config(m));
    let Some(s) = spec.image else {
        return bad(format!(
            "{} needs an image shape (channels, height, width): give --image-shape C,H,W or image data",
            spec.kind.name()
        ));
    };
    if s.dim() != spec.dim {
        return bad(format!(
            "image shape {s} has {} values per image, the data has {} columns",
            s.dim(),
            spec.dim
        ));
    }
    if spec.scales == 0 {
        return bad("scales (multi-scale levels) must be at least 1".into());
    }
    // Glow squeezes at every level, RealNVP at every level but the last
    let squeezes = match spec.kind {
        FlowKind::Glow => spec.scales,
        _ => spec.scales - 1,
    };
    let f = 1usize << squeezes;
    if s.h % f != 0 || s.w % f != 0 {
        return bad(format!(
            "{} with {} scales squeezes {squeezes} times: height and width must be multiples of {f}, the \
             images are {}x{} (use fewer scales)",
            spec.kind.name(),
            spec.scales,
            s.h,
            s.w
        ));
    }
    if spec.kind == FlowKind::RealnvpMultiscale && (s.h / f < 2 || s.w / f < 2) {
        return bad(format!(
            "realnvp-multiscale with {} scales ends with checkerboard couplings on {}x{} images: they need at \
             least 2x2 pixels (use fewer scales)",
            spec.scales,
            s.h / f,
            s.w / f
        ));
    }
    Ok(())
}

/// One level's latents in a multi-scale flow's noise row: where they sit and their shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatentScale {
    pub range: std::ops::Range<usize>,
    pub shape: ImageShape,
}

/// Where each level of `glow` or `realnvp-multiscale` leaves its latents in the noise row, finest first: level
/// `l < L-1` factors out the last half of the features still active, `[D/2^(l+1), D/2^l)`, as
/// `2^(l+1) C` channels of `H/2^(l+1) x W/2^(l+1)`; the last level keeps `[0, D/2^(L-1))` (Glow squeezes once
/// more before it). `None` for other flows.
pub fn latent_scales(spec: &FlowSpec) -> Option<Vec<LatentScale>> {
    let s = spec.image?;
    if !spec.kind.image() || spec.scales == 0 {
        return None;
    }
    let d = s.dim();
    let levels = spec.scales;
    let mut out = Vec::with_capacity(levels);
    for l in 0..levels - 1 {
        let f = 1usize << (l + 1);
        out.push(LatentScale {
            range: d / f..d / (f / 2),
            shape: ImageShape::new(s.c * f, s.h / f, s.w / f),
        });
    }
    let last = 1usize << (levels - 1);
    let shape = match spec.kind {
        FlowKind::Glow => ImageShape::new(s.c * last * 4, s.h / last / 2, s.w / last / 2),
        _ => ImageShape::new(s.c * last, s.h / last, s.w / last),
    };
    out.push(LatentScale {
        range: 0..d / last,
        shape,
    });
    Some(out)
}

/// The layers of `glow` or `realnvp-multiscale` (transforms of the kept channels after a split act on the
/// first features of the row: [`Layer::build`] wraps them).
pub(super) fn layers(spec: &FlowSpec) -> Vec<Layer> {
    let mut shape = spec.image.expect("validated");
    let mut ts: Vec<Layer> = Vec::new();
    let map = spec.element_map();
    let mut n = 0usize;
    let mut coupling = |shape: ImageShape, mask: ImageMask, net: ConvNetKind| {
        n += 1;
        Layer::ConvCoupling(ConvCouplingConfig {
            name: format!("net{}", n - 1),
            shape,
            mask,
            map,
            net,
            width: spec.hidden,
            conv: ConvKernel::Direct,
        })
    };
    let actnorm = |shape: ImageShape| Layer::ActNorm(ActNormConfig { image: Some(shape) });
    match spec.kind {
        FlowKind::Glow => {
            for level in 0..spec.scales {
                ts.push(Layer::Squeeze(SqueezeConfig { shape }));
                shape = shape.squeezed();
                for k in 0..spec.layers {
                    if spec.actnorm {
                        ts.push(actnorm(shape));
                    }
                    let mut swap = false;
                    let perm = |rule| {
                        Layer::Permutation(PermutationConfig {
                            rule,
                            indices: None,
                            image: Some(shape),
                        })
                    };
                    match spec.permute {
                        Permute::None => swap = k % 2 == 1,
                        Permute::Reverse => ts.push(perm(PermutationRule::Reverse)),
                        Permute::Random => ts.push(perm(PermutationRule::Random)),
                        Permute::Conv1x1 | Permute::Lu => {
                            ts.push(Layer::InvConv1x1(InvConv1x1Config {
                                shape,
                                lu: spec.permute == Permute::Lu,
                            }))
                        }
                    }
                    ts.push(coupling(
                        shape,
                        ImageMask::Channel { swap },
                        ConvNetKind::Glow {},
                    ));
                }
                if level + 1 < spec.scales {
                    if spec.split_prior {
                        ts.push(split_prior(&mut coupling, shape, spec.scale));
                    }
                    shape.c /= 2;
                }
            }
        }
        FlowKind::RealnvpMultiscale => {
            let net = ConvNetKind::ResNet { blocks: spec.depth };
            for level in 0..spec.scales {
                let last = level + 1 == spec.scales;
                let n_cb = if last { spec.layers + 1 } else { spec.layers };
                for k in 0..n_cb {
                    if spec.actnorm {
                        ts.push(actnorm(shape));
                    }
                    ts.push(coupling(
                        shape,
                        ImageMask::Checkerboard { parity: k % 2 },
                        net,
                    ));
                }
                if last {
                    break;
                }
                ts.push(Layer::Squeeze(SqueezeConfig { shape }));
                shape = shape.squeezed();
                for k in 0..spec.layers {
                    if spec.actnorm {
                        ts.push(actnorm(shape));
                    }
                    ts.push(coupling(
                        shape,
                        ImageMask::Channel { swap: k % 2 == 1 },
                        net,
                    ));
                }
                if spec.split_prior {
                    ts.push(split_prior(&mut coupling, shape, spec.scale));
                }
                shape.c /= 2;
            }
        }
        _ => unreachable!("not an image flow"),
    }
    ts
}

/// Glow's learned prior on the factored-out half: `z2 ~ N(mu(z1), sigma(z1))` written as an affine coupling
/// `(z2 - mu) / sigma` of the second half given the first, with a single zero-initialised convolution.
fn split_prior(
    coupling: &mut impl FnMut(ImageShape, ImageMask, ConvNetKind) -> Layer,
    shape: ImageShape,
    scale: ScaleBound,
) -> Layer {
    match coupling(
        shape,
        ImageMask::Channel { swap: false },
        ConvNetKind::Single {},
    ) {
        Layer::ConvCoupling(c) => Layer::ConvCoupling(ConvCouplingConfig {
            map: MapConfig::Affine { scale },
            ..c
        }),
        l => l,
    }
}
