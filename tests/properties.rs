//! Property tests: layers of random kinds, sizes, masks, orders, maps and contexts (seeded, 60 cases), each put
//! through the generic checks (`transforms::testing::check_transform`: round trips, forward log-det = -inverse
//! log-det, log-dets against central-difference Jacobians, input / parameter / context gradients against finite
//! differences, in f64, both training directions where the layer has them).

use nflow::engine::{randn, rng};
use nflow::flows::{
    AutoregressiveConfig, BuildCtx, CouplingConfig, Layer, LuLinearConfig, MadeConfig, MlpConfig,
    PermutationConfig, PermutationRule,
};
use nflow::transforms::testing::{check_transform, randomize};
use nflow::transforms::{MapConfig, Mask, Order, RqSpline, ScaleBound};
use rand::Rng;

fn random_map(r: &mut nflow::engine::Rng) -> MapConfig {
    match r.gen_range(0..5) {
        0 => MapConfig::Affine {
            scale: ScaleBound::default(),
        },
        1 => MapConfig::Affine {
            scale: ScaleBound::Sigmoid {},
        },
        2 => MapConfig::Additive {},
        3 => MapConfig::RqSpline(RqSpline {
            bins: r.gen_range(2..7),
            bound: r.gen_range(1.5..4.0),
            ..RqSpline::default()
        }),
        _ => MapConfig::SinhArcsinh {},
    }
}

#[test]
fn random_layers_pass_the_generic_checks() {
    for case in 0..60u64 {
        let mut r = rng(1000 + case);
        let kind = r.gen_range(0..5);
        // couplings need two features; the others work from one
        let dim = if kind == 0 {
            r.gen_range(2..7)
        } else {
            r.gen_range(1..7)
        };
        let cond_dim = if kind <= 2 { r.gen_range(0..3) } else { 0 };
        let hidden = r.gen_range(3..9);
        let depth = r.gen_range(1..3);
        let index = r.gen_range(0..4);
        let layer = match kind {
            0 => Layer::Coupling(CouplingConfig {
                map: random_map(&mut r),
                mask: [Mask::Alternate, Mask::Halves, Mask::Random][r.gen_range(0..3)],
                index,
                net: MlpConfig {
                    hidden,
                    depth,
                    ..MlpConfig::default()
                },
            }),
            1 | 2 => {
                let cfg = AutoregressiveConfig {
                    map: if kind == 2 {
                        MapConfig::Affine {
                            scale: ScaleBound::default(),
                        }
                    } else {
                        random_map(&mut r)
                    },
                    order: [
                        Order::Natural,
                        Order::Reversed,
                        Order::Alternate,
                        Order::Random,
                    ][r.gen_range(0..4)],
                    index,
                    made: MadeConfig {
                        hidden,
                        depth,
                        random_degrees: r.gen_bool(0.5),
                        ..MadeConfig::default()
                    },
                };
                if kind == 1 {
                    Layer::Autoregressive(cfg)
                } else {
                    Layer::Iaf(cfg)
                }
            }
            3 => Layer::Permutation(PermutationConfig {
                rule: [PermutationRule::Reverse, PermutationRule::Random][r.gen_range(0..2)],
                ..PermutationConfig::default()
            }),
            _ => Layer::LuLinear(LuLinearConfig {
                random_permutation: r.gen_bool(0.5),
            }),
        };
        let what = format!("case {case}: {layer:?} dim {dim} context {cond_dim}");
        let mut t = layer
            .build::<f64>(&BuildCtx { dim, cond_dim }, &mut r)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        randomize(t.as_mut(), &mut r, 0.3);
        let rows = r.gen_range(1..6);
        let x = randn(&mut r, rows, dim);
        let c = (cond_dim > 0).then(|| randn(&mut r, rows, cond_dim));
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_transform(t.as_mut(), &x, c.as_ref(), &mut r)
        }));
        if let Err(e) = res {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what}: {msg}");
        }
    }
}
