//! Invertible transforms. Direction convention: `forward` maps data to noise (the log-prob direction),
//! `inverse` maps noise to data; both return `log|det J|` of the map they apply, per example.
//!
//! Every transform also has a training path: `forward_train` keeps a cache, `backward` takes dL/dz and
//! dL/dlogdet, accumulates parameter gradients and returns dL/dx. An optional context matrix (one row per
//! example) is accepted everywhere so conditional flows use the same interface; transforms without a
//! conditioner ignore it.

pub mod actnorm;
pub mod autoregressive;
pub mod batchnorm;
pub mod coupling;
pub mod image;
pub mod lu_linear;
pub mod map;
pub mod map_layers;
pub mod permutation;
pub mod scaling;
pub mod spline;
mod spline_lanes;
pub mod testing;

pub use actnorm::ActNorm;
pub use autoregressive::{Iaf, Maf, Order};
pub use batchnorm::BatchNorm;
pub use coupling::{AdditiveCoupling, AffineCoupling, Mask, ScaleBound};
pub use image::{
    ConvCoupling, ImageMask, ImageShape, InvConv1x1, MapConvCoupling, Prefix, Squeeze,
};
pub use lu_linear::LuLinear;
pub use map::{ElementwiseMap, MapConfig, NetShape, Shift, SinhArcsinh};
pub use map_layers::{MapAr, MapCoupling, SplineAr, SplineCoupling};
pub use permutation::Permutation;
pub use scaling::Scaling;
pub use spline::{RqSpline, SplineKernel};

use crate::engine::{Float, Mat};
use crate::nn::Param;

/// An invertible map with a tractable Jacobian determinant.
pub trait Transform<F: Float>: Send + Sync {
    /// Name from the paper (`AffineCoupling`, `ActNorm`, ...), used in messages.
    fn kind(&self) -> &'static str;
    /// Number of features it acts on.
    fn dim(&self) -> usize;
    /// Data -> noise, `(z, log|det dz/dx|)`. Keeps nothing.
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>);
    /// Noise -> data, `(x, log|det dx/dz|)`. Keeps nothing.
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>);
    /// Data -> noise keeping what `backward` needs (and, in training mode, using batch statistics).
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>);
    /// Given dL/dz and dL/dlogdet of the last `forward_train`, accumulate parameter gradients; return dL/dx.
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F>;
    /// [`backward`](Self::backward) for a transform whose input gradient nobody reads (a flow's first, whose
    /// input is the data): the same parameter (and context) gradients, dL/dx not formed. Transforms whose
    /// conditioner then skips its first layer's input-gradient product override it.
    fn backward_params(&mut self, dz: &Mat<F>, dlogdet: &[F]) {
        self.backward(dz, dlogdet);
    }
    /// Noise -> data keeping what [`backward_inverse`](Self::backward_inverse) needs: the sampling direction's
    /// training pass (reverse KL, variational inference: gradients flow through reparameterised samples).
    /// `None` where the transform has no such pass yet.
    fn inverse_train(&mut self, _z: &Mat<F>, _ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        None
    }
    /// Given dL/dx and dL/dlogdet (of `log|det dx/dz|`) of the last [`inverse_train`](Self::inverse_train),
    /// accumulate parameter (and context) gradients; return dL/dz.
    fn backward_inverse(&mut self, _dx: &Mat<F>, _dlogdet: &[F]) -> Mat<F> {
        unreachable!(
            "{}: backward_inverse without an inverse training pass",
            self.kind()
        )
    }
    /// dL/dcontext of the last `backward` (taken: a second call returns `None`), for a learned context
    /// embedding in front of the flow. `None` for transforms that ignore the context.
    fn context_grad(&mut self) -> Option<Mat<F>> {
        None
    }
    /// Parameters and buffers (names local to the transform).
    fn params(&self) -> Vec<&Param<F>>;
    fn params_mut(&mut self) -> Vec<&mut Param<F>>;
    /// Switch between training (batch statistics) and evaluation behaviour; default: no difference.
    fn set_training(&mut self, _training: bool) {}
    /// Rebuild state derived from buffers (index lists of masks and permutations) after loading weights.
    fn reload(&mut self) {}
    /// A copy to train on a shard of the batch ([`crate::train::DataParallel`] runs a small flow's large
    /// batches as shards on the threads at once), or `None` where a row's training pass depends on the other
    /// rows: batch statistics, or a data-dependent initialisation still to come. No default: every transform
    /// says which it is.
    fn replica(&self) -> Option<Box<dyn Transform<F>>>;
}

/// The log-dets of the opposite direction.
pub(crate) fn negate<F: Float>(mut v: Vec<F>) -> Vec<F> {
    v.iter_mut().for_each(|a| *a = -*a);
    v
}

/// The log-det of a volume-preserving map: zero for each of `n` rows.
pub(crate) fn zeros_logdet<F: Float>(n: usize) -> Vec<F> {
    vec![F::zero(); n]
}

#[cfg(test)]
mod tests {
    use super::testing::{check_transform, randomize};
    use super::*;
    use crate::engine::{randn, rng};
    use crate::nn::Activation;

    fn run(mut t: Box<dyn Transform<f64>>, ctx_dim: usize, seed: u64) {
        let mut r = rng(seed);
        let d = t.dim();
        let x: Mat<f64> = randn(&mut r, 6, d);
        let ctx: Option<Mat<f64>> = (ctx_dim > 0).then(|| randn(&mut r, 6, ctx_dim));
        // a training pass first (ActNorm initialises itself from it), then non-trivial parameters
        let _ = t.forward_train(&x, ctx.as_ref());
        randomize(t.as_mut(), &mut r, 0.3);
        check_transform(t.as_mut(), &x, ctx.as_ref(), &mut r);
    }

    #[test]
    fn affine_coupling_all_masks_and_bounds() {
        for (i, mask) in [Mask::Alternate, Mask::Halves, Mask::Random]
            .into_iter()
            .enumerate()
        {
            for bound in [ScaleBound::SoftClamp { bound: 2.0 }, ScaleBound::Sigmoid {}] {
                for act in [Activation::Tanh, Activation::Silu, Activation::Elu] {
                    let mut r = rng(i as u64);
                    let m = mask.build(5, i, &mut r);
                    run(
                        Box::new(AffineCoupling::new(&m, 0, 8, 2, act, bound, &mut r)),
                        0,
                        1,
                    );
                }
            }
        }
    }

    #[test]
    fn affine_coupling_with_context() {
        let mut r = rng(3);
        let m = Mask::Alternate.build(4, 1, &mut r);
        let t = AffineCoupling::new(&m, 3, 8, 2, Activation::Tanh, ScaleBound::default(), &mut r);
        run(Box::new(t), 3, 4);
    }

    #[test]
    fn one_dimensional_affine_coupling_is_invertible() {
        let mut r = rng(3);
        let m = Mask::Alternate.build(1, 0, &mut r);
        let t = AffineCoupling::new(&m, 2, 8, 1, Activation::Tanh, ScaleBound::default(), &mut r);
        run(Box::new(t), 2, 4);
    }

    /// Large batches run the coupling's element-wise passes over the pool: the same bits as one thread.
    #[test]
    fn affine_coupling_rows_in_parallel_match_one_thread() {
        let run_in = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut r = rng(21);
                let m = Mask::Alternate.build(256, 0, &mut r);
                let mut t: AffineCoupling<f64> = AffineCoupling::new(
                    &m,
                    0,
                    16,
                    1,
                    Activation::Tanh,
                    ScaleBound::default(),
                    &mut r,
                );
                randomize(&mut t, &mut r, 0.3);
                let x: Mat<f64> = randn(&mut r, 300, 256);
                let (z, ld) = t.forward_train(&x, None);
                let dx = t.backward(&randn(&mut r, 300, 256), &vec![0.7; 300]);
                let (xi, _) = t.inverse(&z, None);
                (z.data, ld, dx.data, xi.data)
            })
        };
        assert!(run_in(1) == run_in(3));
    }

    #[test]
    fn additive_coupling() {
        let mut r = rng(5);
        let m = Mask::Halves.build(6, 0, &mut r);
        run(
            Box::new(AdditiveCoupling::new(&m, 0, 8, 2, Activation::Tanh, &mut r)),
            0,
            6,
        );
    }

    #[test]
    fn permutations_scaling_actnorm_lulinear() {
        let mut r = rng(7);
        run(Box::new(Permutation::<f64>::reverse(5)), 0, 8);
        run(Box::new(Permutation::<f64>::random(5, &mut r)), 0, 9);
        run(Box::new(Scaling::<f64>::new(4)), 0, 10);
        run(Box::new(ActNorm::<f64>::new(4)), 0, 11);
        run(Box::new(LuLinear::<f64>::new(5, None)), 0, 12);
        run(
            Box::new(LuLinear::<f64>::new(5, Some(vec![2, 0, 4, 1, 3]))),
            0,
            13,
        );
    }

    #[test]
    fn batchnorm_train_and_eval_modes() {
        // training mode: gradients through the batch statistics
        run(Box::new(BatchNorm::<f64>::new(4)), 0, 14);
        // eval mode: running statistics (after some updates, so they are not trivial)
        let mut bn = BatchNorm::<f64>::new(4);
        let mut r = rng(15);
        for _ in 0..5 {
            let x: Mat<f64> = randn(&mut r, 16, 4);
            let _ = bn.forward_train(&x, None);
        }
        bn.set_training(false);
        run(Box::new(bn), 0, 16);
    }

    #[test]
    fn actnorm_initialises_from_first_batch() {
        let mut r = rng(17);
        let mut x: Mat<f64> = randn(&mut r, 256, 3);
        x.data.iter_mut().for_each(|v| *v = 3.0 * *v + 5.0);
        let mut a = ActNorm::<f64>::new(3);
        assert!(!a.is_initialized());
        let (z, _) = a.forward_train(&x, None);
        assert!(a.is_initialized());
        for j in 0..3 {
            let m: f64 = (0..256).map(|i| z.at(i, j)).sum::<f64>() / 256.0;
            let v: f64 = (0..256).map(|i| (z.at(i, j) - m).powi(2)).sum::<f64>() / 256.0;
            assert!(m.abs() < 1e-9 && (v - 1.0).abs() < 1e-4, "mean {m} var {v}");
        }
        // a second batch does not re-initialise
        let before = a.params()[0].value().to_vec();
        let _ = a.forward_train(&randn(&mut r, 8, 3), None);
        assert_eq!(before, a.params()[0].value());
    }

    /// A MAF or IAF layer (same constructor) for the shared tests.
    #[allow(clippy::too_many_arguments)]
    fn ar_layer(
        iaf: bool,
        d: usize,
        ctx: usize,
        depth: usize,
        order: &[usize],
        random_degrees: bool,
        r: &mut crate::engine::Rng,
    ) -> Box<dyn Transform<f64>> {
        let (act, bound) = (Activation::Tanh, ScaleBound::default());
        // odd depths build ResMADEs (depth = residual blocks)
        let opts = crate::nn::MadeOpts {
            random_degrees,
            residual: depth % 2 == 1,
        };
        if iaf {
            Box::new(Iaf::new(d, ctx, 12, depth, act, bound, order, opts, r))
        } else {
            Box::new(Maf::new(d, ctx, 12, depth, act, bound, order, opts, r))
        }
    }

    #[test]
    fn maf_and_iaf_generic_checks() {
        for iaf in [false, true] {
            for (order, random_degrees, ctx, depth) in [
                (Order::Natural, false, 0, 2),
                (Order::Reversed, true, 0, 1),
                (Order::Random, true, 2, 2),
                (Order::Random, false, 3, 3),
            ] {
                let mut r = rng(20);
                let o = order.build(5, 1, &mut r);
                let t = ar_layer(iaf, 5, ctx, depth, &o, random_degrees, &mut r);
                run(t, ctx, 21);
            }
        }
    }

    /// A batch large enough for MAF's element-wise pass to split over a pool of two threads gives every row
    /// what the row gets alone (forward and training forward, log-dets included), and the training forward
    /// keeps the scales of the right rows: its backward matches the one of a 5-row slice.
    #[test]
    fn maf_rows_are_independent_on_a_pool() {
        let mut r = rng(33);
        let (d, n) = (40, 300);
        let o = Order::Natural.build(d, 1, &mut r);
        let mut t = ar_layer(false, d, 0, 2, &o, false, &mut r);
        randomize(t.as_mut(), &mut r, 0.3);
        let x: Mat<f64> = randn(&mut r, n, d);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let (z, ld) = pool.install(|| t.forward(&x, None));
        let (zt, ldt) = pool.install(|| t.forward_train(&x, None));
        let dz: Mat<f64> = randn(&mut r, n, d);
        let g: Vec<f64> = (0..n).map(|i| 0.1 * i as f64).collect();
        let dx = pool.install(|| t.backward(&dz, &g));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12 * (1.0 + a.abs());
        for r0 in [0, 17, 150, 295] {
            let rows = r0..r0 + 5;
            let xs = Mat::from_vec(5, d, x.data[r0 * d..(r0 + 5) * d].to_vec());
            let (zs, lds) = t.forward_train(&xs, None);
            let dzs = Mat::from_vec(5, d, dz.data[r0 * d..(r0 + 5) * d].to_vec());
            let dxs = t.backward(&dzs, &g[rows.clone()]);
            for (k, i) in rows.enumerate() {
                assert!(
                    close(ld[i], lds[k]) && close(ldt[i], lds[k]),
                    "log-det of row {i}"
                );
                for j in 0..d {
                    let (a, b) = (zs.data[k * d + j], dxs.data[k * d + j]);
                    assert!(
                        close(z.data[i * d + j], a) && close(zt.data[i * d + j], a),
                        "z[{i},{j}]"
                    );
                    assert!(close(dx.data[i * d + j], b), "dx[{i},{j}]");
                }
            }
        }
    }

    #[test]
    fn maf_and_iaf_are_autoregressive() {
        // dz_i/dx_j = 0 whenever feature j comes at or after feature i in the ordering: the Jacobian is
        // triangular once the ordering is undone (checked by central differences). For IAF the forward is the
        // sequential solve, whose Jacobian (the inverse of a triangular one) must be triangular too.
        use super::testing::fd_jacobian;
        for iaf in [false, true] {
            for seed in 0..6u64 {
                let mut r = rng(100 + seed);
                let d = 6;
                let o = Order::Random.build(d, 0, &mut r);
                // depth 1 + seed % 2: plain MADE and ResMADE
                let mut t = ar_layer(
                    iaf,
                    d,
                    0,
                    1 + (seed as usize % 2),
                    &o,
                    seed % 3 == 0,
                    &mut r,
                );
                randomize(t.as_mut(), &mut r, 0.5);
                let x: Mat<f64> = randn(&mut r, 1, d);
                let jac = fd_jacobian(t.as_ref(), x.row(0), None, 1e-5);
                let mut nonzero_below = 0;
                for i in 0..d {
                    for j in 0..d {
                        let v = jac[i * d + j].abs();
                        if i != j && o[j] >= o[i] {
                            assert!(
                                v < 1e-9,
                                "iaf {iaf} seed {seed}: dz_{i}/dx_{j} = {v} but x_{j} is not before x_{i}"
                            );
                        } else if o[j] < o[i] && v > 1e-6 {
                            nonzero_below += 1;
                        }
                    }
                }
                // the network is not trivially disconnected either
                assert!(
                    nonzero_below > d,
                    "iaf {iaf} seed {seed}: only {nonzero_below} dependencies"
                );
            }
        }
    }

    #[test]
    fn checks_can_fail() {
        // A transform whose log-det is wrong must be caught by the generic checks.
        struct Wrong(Scaling<f64>);
        impl Transform<f64> for Wrong {
            fn kind(&self) -> &'static str {
                "Wrong"
            }
            fn dim(&self) -> usize {
                self.0.dim()
            }
            fn forward(&self, x: &Mat<f64>, c: Option<&Mat<f64>>) -> (Mat<f64>, Vec<f64>) {
                let (z, l) = self.0.forward(x, c);
                (z, l.iter().map(|v| v * 1.01).collect())
            }
            fn inverse(&self, z: &Mat<f64>, c: Option<&Mat<f64>>) -> (Mat<f64>, Vec<f64>) {
                let (x, l) = self.0.inverse(z, c);
                (x, l.iter().map(|v| v * 1.01).collect())
            }
            fn forward_train(
                &mut self,
                x: &Mat<f64>,
                c: Option<&Mat<f64>>,
            ) -> (Mat<f64>, Vec<f64>) {
                self.0.forward_train(x, c)
            }
            fn backward(&mut self, dz: &Mat<f64>, g: &[f64]) -> Mat<f64> {
                self.0.backward(dz, g)
            }
            fn params(&self) -> Vec<&crate::nn::Param<f64>> {
                self.0.params()
            }
            fn params_mut(&mut self) -> Vec<&mut crate::nn::Param<f64>> {
                self.0.params_mut()
            }
            fn replica(&self) -> Option<Box<dyn Transform<f64>>> {
                None
            }
        }
        let res = std::panic::catch_unwind(|| run(Box::new(Wrong(Scaling::new(3))), 0, 18));
        assert!(
            res.is_err(),
            "a wrong log-det passed the finite-difference check"
        );
    }
}
