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
//! [`Prefix`], so the flow stays one chain of transforms over `C*H*W` features on a standard normal prior.

use super::{FlowKind, FlowSpec, Permute};
use crate::engine::{Float, Rng};
use crate::nn::ConvNetKind;
use crate::transforms::image::channel_permutation;
use crate::transforms::{
    ActNorm, ConvCoupling, ImageMask, ImageShape, InvConv1x1, Permutation, Prefix, Squeeze,
    Transform,
};
use crate::Error;
use rand::seq::SliceRandom;

/// Glow's and RealNVP's coupling function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CouplingKind {
    #[default]
    Affine,
    Additive,
}

impl CouplingKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "affine" => Some(CouplingKind::Affine),
            "additive" => Some(CouplingKind::Additive),
            _ => None,
        }
    }
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

/// Build the transforms of `glow` or `realnvp-multiscale`.
pub(super) fn build<F: Float>(spec: &FlowSpec, r: &mut Rng) -> Vec<Box<dyn Transform<F>>> {
    let mut shape = spec.image.expect("validated");
    let d = spec.dim;
    let mut ts: Vec<Box<dyn Transform<F>>> = Vec::new();
    // wrap a transform of the kept channels so it sees only the first `active` features
    let push = |ts: &mut Vec<Box<dyn Transform<F>>>, t: Box<dyn Transform<F>>| {
        if t.dim() == d {
            ts.push(t)
        } else {
            ts.push(Box::new(Prefix::new(d, t)))
        }
    };
    let affine = spec.coupling == CouplingKind::Affine;
    let ctx = spec.cond_dim();
    let mut n = 0usize;
    let mut name = || {
        n += 1;
        format!("net{}", n - 1)
    };
    match spec.kind {
        FlowKind::Glow => {
            for level in 0..spec.scales {
                push(&mut ts, Box::new(Squeeze::new(shape)));
                shape = shape.squeezed();
                for k in 0..spec.layers {
                    if spec.actnorm {
                        push(&mut ts, Box::new(ActNorm::per_channel(shape.c, shape.hw())));
                    }
                    let mut swap = false;
                    match spec.permute {
                        Permute::None => swap = k % 2 == 1,
                        Permute::Reverse => {
                            let p: Vec<usize> = (0..shape.c).rev().collect();
                            push(
                                &mut ts,
                                Box::new(Permutation::new(channel_permutation(shape, &p))),
                            )
                        }
                        Permute::Random => {
                            let mut p: Vec<usize> = (0..shape.c).collect();
                            p.shuffle(r);
                            push(
                                &mut ts,
                                Box::new(Permutation::new(channel_permutation(shape, &p))),
                            )
                        }
                        Permute::Conv1x1 | Permute::Lu => push(
                            &mut ts,
                            Box::new(InvConv1x1::new(shape, spec.permute == Permute::Lu, r)),
                        ),
                    }
                    push(
                        &mut ts,
                        Box::new(ConvCoupling::new(
                            &name(),
                            shape,
                            ImageMask::Channel { swap },
                            affine,
                            spec.scale,
                            ConvNetKind::Glow,
                            spec.hidden,
                            ctx,
                            r,
                        )),
                    );
                }
                if level + 1 < spec.scales {
                    if spec.split_prior {
                        push(&mut ts, split_prior(shape, spec, &name(), r));
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
                        push(&mut ts, Box::new(ActNorm::per_channel(shape.c, shape.hw())));
                    }
                    push(
                        &mut ts,
                        Box::new(ConvCoupling::new(
                            &name(),
                            shape,
                            ImageMask::Checkerboard { parity: k % 2 },
                            affine,
                            spec.scale,
                            net,
                            spec.hidden,
                            ctx,
                            r,
                        )),
                    );
                }
                if last {
                    break;
                }
                push(&mut ts, Box::new(Squeeze::new(shape)));
                shape = shape.squeezed();
                for k in 0..spec.layers {
                    if spec.actnorm {
                        push(&mut ts, Box::new(ActNorm::per_channel(shape.c, shape.hw())));
                    }
                    push(
                        &mut ts,
                        Box::new(ConvCoupling::new(
                            &name(),
                            shape,
                            ImageMask::Channel { swap: k % 2 == 1 },
                            affine,
                            spec.scale,
                            net,
                            spec.hidden,
                            ctx,
                            r,
                        )),
                    );
                }
                if spec.split_prior {
                    push(&mut ts, split_prior(shape, spec, &name(), r));
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
fn split_prior<F: Float>(
    shape: ImageShape,
    spec: &FlowSpec,
    name: &str,
    r: &mut Rng,
) -> Box<dyn Transform<F>> {
    Box::new(ConvCoupling::new(
        name,
        shape,
        ImageMask::Channel { swap: false },
        true,
        spec.scale,
        ConvNetKind::Single,
        spec.hidden,
        spec.cond_dim(),
        r,
    ))
}
