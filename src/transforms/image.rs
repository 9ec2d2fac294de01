//! Transforms of images. A batch of images is a `(batch, C*H*W)` matrix, each row one image stored as `C`
//! channel planes of `H x W` pixels (NCHW); these transforms know their [`ImageShape`]. Convolutional
//! conditioners work on the NHWC form (see [`crate::engine::conv`]).
//!
//! - [`Squeeze`] (RealNVP sec. 3.6): space-to-depth, each 2x2 block of a channel becomes 4 channels.
//! - [`InvConv1x1`] (Glow sec. 3.2): the same `C x C` matrix `W` applied at every pixel; log|det| =
//!   `H W log|det W|`, either from an LU factorisation of `W` at every call (plain) or from the
//!   parameterisation `W = P L (U + diag(sign * exp(log_s)))` (LU: `H W sum log_s`).
//! - [`ConvCoupling`]: affine or additive coupling whose conditioner is a CNN, with RealNVP's channel-wise or
//!   checkerboard masks (Dinh et al. 2017 sec. 3.4) and Glow's channel split.
//! - [`Prefix`]: applies a transform to the first `k` features and leaves the rest alone. After a multi-scale
//!   split the factored-out channels (the last half of each image row) go straight to the prior, so every
//!   later layer is wrapped in a `Prefix`.

use super::{zeros_logdet, ScaleBound, Transform};
use crate::engine::conv::Hw;
pub use crate::engine::conv::ImageShape;
use crate::engine::{Float, Mat, Rng};
use crate::nn::{ConvNet, ConvNetKind, Param};
use rand_distr::{Distribution as _, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod conv_coupling;
mod inv_conv;
mod prefix;
mod squeeze;

pub use conv_coupling::{ConvCoupling, ImageMask, MapConvCoupling};
pub use inv_conv::InvConv1x1;
pub use prefix::Prefix;
pub use squeeze::Squeeze;

/// The feature permutation that applies the channel permutation `perm` (`out channel k = in channel
/// perm[k]`) at every pixel: Glow's "reverse" and "shuffle" alternatives to the 1x1 convolution.
pub fn channel_permutation(s: ImageShape, perm: &[usize]) -> Vec<usize> {
    let hw = s.hw();
    (0..s.c)
        .flat_map(|k| (0..hw).map(move |p| perm[k] * hw + p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_transform, randomize};
    use super::inv_conv::{plu, random_rotation};
    use super::*;
    use crate::engine::{randn, rng};

    fn run(mut t: Box<dyn Transform<f64>>, ctx_dim: usize, seed: u64) {
        let mut r = rng(seed);
        let d = t.dim();
        let x: Mat<f64> = randn(&mut r, 3, d);
        let ctx: Option<Mat<f64>> = (ctx_dim > 0).then(|| randn(&mut r, 3, ctx_dim));
        let _ = t.forward_train(&x, ctx.as_ref());
        randomize(t.as_mut(), &mut r, 0.3);
        check_transform(t.as_mut(), &x, ctx.as_ref(), &mut r);
    }

    #[test]
    fn squeeze_moves_2x2_blocks_to_channels() {
        let s = ImageShape::new(2, 4, 6);
        let sq = Squeeze::new(s);
        let x = Mat::from_vec(1, s.dim(), (0..s.dim()).map(|v| v as f64).collect());
        let (z, _) = Transform::<f64>::forward(&sq, &x, None);
        // output channel 4*1 + 2*1 + 0 (input channel 1, odd row, even column) at pixel (1, 2):
        // input pixel (3, 4) of channel 1
        let o = s.squeezed();
        let got = z.at(0, (6 * o.h + 1) * o.w + 2);
        assert_eq!(got, ((s.h + 3) * s.w + 4) as f64);
        run(Box::new(sq), 0, 1);
    }

    #[test]
    fn inv_conv_plain_and_lu() {
        for lu in [false, true] {
            let mut r = rng(3);
            let s = ImageShape::new(3, 2, 3);
            let t = InvConv1x1::<f64>::new(s, lu, &mut r);
            // a rotation at initialisation
            assert!(t.matrix().1.abs() < 1e-12);
            run(Box::new(t), 0, 4);
        }
    }

    #[test]
    fn lu_init_reproduces_the_rotation() {
        let mut r = rng(5);
        let q = random_rotation(5, &mut r);
        let (perm, l, u) = plu(&q, 5);
        for i in 0..5 {
            for j in 0..5 {
                let v: f64 = (0..5).map(|k| l[perm[i] * 5 + k] * u[k * 5 + j]).sum();
                assert!((v - q[i * 5 + j]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn conv_couplings_all_masks() {
        let s = ImageShape::new(4, 3, 4);
        let nets = [
            ConvNetKind::Glow {},
            ConvNetKind::ResNet { blocks: 1 },
            ConvNetKind::Single {},
        ];
        for (i, mask) in [
            ImageMask::Channel { swap: false },
            ImageMask::Channel { swap: true },
            ImageMask::Checkerboard { parity: 0 },
            ImageMask::Checkerboard { parity: 1 },
        ]
        .into_iter()
        .enumerate()
        {
            for affine in [true, false] {
                for (k, net) in nets.into_iter().enumerate() {
                    let mut r = rng(i as u64 * 7 + k as u64);
                    let bound = if i % 2 == 0 {
                        ScaleBound::Sigmoid {}
                    } else {
                        ScaleBound::default()
                    };
                    let ctx = if k == 0 { 2 } else { 0 };
                    let t = ConvCoupling::<f64>::new(
                        "net", s, mask, affine, bound, net, 5, ctx, &mut r,
                    );
                    run(Box::new(t), ctx, 10 + i as u64);
                }
            }
        }
    }

    #[test]
    fn prefix_and_per_channel_actnorm() {
        let s = ImageShape::new(2, 3, 2);
        let mut r = rng(8);
        let inner = ConvCoupling::<f64>::new(
            "net",
            s,
            ImageMask::Channel { swap: false },
            true,
            ScaleBound::default(),
            ConvNetKind::Glow {},
            4,
            0,
            &mut r,
        );
        run(Box::new(Prefix::new(2 * s.dim(), Box::new(inner))), 0, 9);
        run(
            Box::new(super::super::ActNorm::<f64>::per_channel(3, 4)),
            0,
            11,
        );
    }
}
