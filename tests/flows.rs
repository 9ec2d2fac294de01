//! Flow-level properties: normalisation, sampling consistency, save/load, determinism, gradients, NaN guard.

use nflow::data::{self, Table};
use nflow::dist::BaseKind;
use nflow::engine::{randn, rng, Mat};
use nflow::flows::testing::flow_param_fd;
use nflow::flows::{Flow, FlowKind, FlowSpec, Permute};
use nflow::train::{TrainConfig, Trainer};
use nflow::{Error, Model};

fn small_spec(kind: FlowKind, dim: usize) -> FlowSpec {
    FlowSpec {
        layers: 4,
        hidden: 24,
        depth: 2,
        ..FlowSpec::preset(kind, dim)
    }
}

fn quick_fit(spec: FlowSpec, t: &Table, steps: usize, seed: u64) -> Model {
    let cfg = TrainConfig {
        steps: Some(steps),
        batch_size: 128,
        seed,
        ..TrainConfig::default()
    };
    Trainer::new(cfg)
        .fit(spec, t, None, |_| {})
        .expect("training")
        .model
}

/// Midpoints of a `g x g` grid of cells covering `[lo, hi]^2` (columns x, y) and the cell side.
fn midpoint_grid(lo: f64, hi: f64, g: usize) -> (Table, f64) {
    let h = (hi - lo) / g as f64;
    let mut pts = Vec::with_capacity(g * g * 2);
    for j in 0..g {
        for i in 0..g {
            pts.push(lo + (i as f64 + 0.5) * h);
            pts.push(lo + (j as f64 + 0.5) * h);
        }
    }
    (
        Table::new(vec!["x".into(), "y".into()], g * g, pts, "grid"),
        h,
    )
}

/// Perturb every free parameter entry so flows are not the identity (masked weights stay zero).
fn randomize(flow: &mut Flow<f64>, seed: u64, scale: f64) {
    use rand::Rng;
    let mut r = rng(seed);
    for (_, p) in flow.named_params_mut() {
        if p.trainable {
            for k in 0..p.value().len() {
                let e = scale * r.gen_range(-1.0..1.0);
                if p.is_free(k) {
                    p.value_mut()[k] += e;
                }
            }
        }
    }
}

#[test]
fn trained_density_integrates_to_one() {
    let t = data::toy("moons", 4000, 0).unwrap();
    let mixture = FlowSpec {
        base: Some(BaseKind::Mixture),
        components: 4,
        ..small_spec(FlowKind::Realnvp, 2)
    };
    let mog = FlowSpec {
        layers: 2,
        components: 3,
        ..small_spec(FlowKind::MafMog, 2)
    };
    let lu = FlowSpec {
        permute: Permute::Lu,
        ..small_spec(FlowKind::Maf, 2)
    };
    for spec in [
        small_spec(FlowKind::Realnvp, 2),
        small_spec(FlowKind::Nice, 2),
        small_spec(FlowKind::Maf, 2),
        small_spec(FlowKind::Iaf, 2),
        mixture,
        mog,
        lu,
        small_spec(FlowKind::NsfC, 2),
        small_spec(FlowKind::NsfAr, 2),
    ] {
        let kind = format!("{:?}/{:?}/{:?}", spec.kind, spec.base_kind(), spec.permute);
        let model = quick_fit(spec.clone(), &t, 300, 0);
        // Riemann sum on a fine grid far beyond the data (moons lives in about [-1.5, 2.5] x [-1, 1.5]).
        let (grid, h) = midpoint_grid(-8.0, 8.0, 500);
        let lp = model.log_prob_table(&grid).unwrap();
        let mass: f64 = lp.iter().map(|v| v.exp()).sum::<f64>() * h * h;
        assert!(
            (mass - 1.0).abs() < 0.01,
            "{kind:?}: density integrates to {mass}"
        );
        // and it learned something: clearly better on held-out data than after a single step
        let test = data::toy("moons", 2000, 1).unwrap();
        let mean = |m: &Model| m.log_prob_table(&test).unwrap().iter().sum::<f64>() / 2000.0;
        let start = quick_fit(spec, &t, 1, 0);
        let (m, m0) = (mean(&model), mean(&start));
        assert!(
            m > m0 + 0.15,
            "{kind:?}: test log-likelihood {m}, at the start {m0}"
        );
    }
}

#[test]
fn sample_then_log_prob_agrees_with_sample_and_log_prob() {
    // For IAF this is the point of the test: sample_and_log_prob is its one-pass direction, log_prob the
    // D-pass sequential solve. MAF is the other way round; MAF MoG also samples its base in D passes.
    for (kind, bn, base, ctx) in [
        (FlowKind::Realnvp, true, None, 0),
        (FlowKind::Nice, false, None, 0),
        (FlowKind::Maf, true, None, 0),
        (FlowKind::Maf, false, None, 2),
        (FlowKind::Iaf, true, None, 0),
        (FlowKind::Iaf, false, None, 2),
        (FlowKind::MafMog, false, None, 2),
        (FlowKind::Realnvp, false, Some(BaseKind::Mixture), 0),
        (FlowKind::NsfC, true, None, 2),
        (FlowKind::NsfAr, false, None, 2),
        (FlowKind::MafMog, false, None, 3),
    ] {
        // the 3-column context goes through a learned embedding (MAF MoG: flow layers and base see it)
        let embed = if ctx == 3 { 4 } else { 0 };
        let spec = FlowSpec {
            batch_norm: bn,
            actnorm: bn,
            base,
            context_dim: ctx,
            context_embed: embed,
            components: 3,
            ..small_spec(kind, 3)
        };
        let mut flow = spec.build::<f64>().unwrap();
        let c: Option<Mat<f64>> = (ctx > 0).then(|| randn(&mut rng(8), 64, ctx));
        let c = c.as_ref();
        flow.nll_backward(&randn(&mut rng(6), 64, 3), c).unwrap(); // data-dependent initialisations
        randomize(&mut flow, 1, 0.2);
        flow.set_training(false);
        let (x, lp) = flow.sample_and_log_prob(64, &mut rng(5), c);
        let x2 = flow.sample(64, &mut rng(5), c);
        assert_eq!(x.data, x2.data, "same seed, same samples");
        let lp2 = flow.log_prob(&x, c);
        for (a, b) in lp.iter().zip(&lp2) {
            assert!((a - b).abs() < 1e-9, "{kind:?}: {a} vs {b}");
        }
    }
}

/// Save, change the seed recorded in config.json (so a loader that rebuilt masks, orderings or
/// permutations from the seed instead of reading them back would differ), load, and compare: the
/// log-probabilities and samples must be bit-identical.
fn save_load_round_trip(model: &Model, test: &Table, tag: &str) -> Model {
    let dir = std::env::temp_dir().join(format!("nflow-test-{tag}-{}", std::process::id()));
    model.save(&dir).unwrap();
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["flow"]["seed"] = serde_json::json!(model.arch.seed + 12345);
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let back = Model::load(&dir).unwrap();
    assert_eq!(model.norm, back.norm, "{tag}: normalisation differs");
    let a = model.log_prob_table(test).unwrap();
    assert_eq!(
        a,
        back.log_prob_table(test).unwrap(),
        "{tag}: log-probs differ after load"
    );
    assert_eq!(
        model.sample(10, 4, None).unwrap(),
        back.sample(10, 4, None).unwrap()
    );
    // saving again over the existing folder replaces it atomically
    back.save(&dir).unwrap();
    assert_eq!(Model::load(&dir).unwrap().log_prob_table(test).unwrap(), a);
    std::fs::remove_dir_all(&dir).unwrap();
    back
}

#[test]
fn save_load_gives_identical_log_probs() {
    let t = data::toy("8gaussians", 3000, 2).unwrap();
    let spec = FlowSpec {
        batch_norm: true,
        actnorm: true,
        mask: nflow::transforms::Mask::Random,
        ..small_spec(FlowKind::Realnvp, 2)
    };
    let model = quick_fit(spec, &t, 60, 3);
    let test = data::toy("8gaussians", 500, 9).unwrap();
    let mut back = save_load_round_trip(&model, &test, "realnvp");
    // ActNorm's initialised state survives: a training pass after loading does not re-initialise it
    let actnorm_params = |m: &Model| -> Vec<Vec<f32>> {
        m.flow
            .transforms
            .iter()
            .filter(|t| t.kind() == "ActNorm")
            .flat_map(|t| t.params().into_iter().map(|p| p.value().to_vec()))
            .collect()
    };
    let before = actnorm_params(&back);
    assert!(!before.is_empty());
    back.flow.set_training(true);
    let x: Mat<f32> = randn(&mut rng(11), 64, 2);
    back.flow.nll_backward(&x, None).unwrap();
    assert_eq!(
        before,
        actnorm_params(&back),
        "ActNorm re-initialised after loading"
    );
}

#[test]
fn model_bytes_round_trip_is_bit_identical_and_rejects_garbage() {
    let t = data::toy("moons", 2000, 2).unwrap();
    let spec = FlowSpec {
        batch_norm: true,
        ..small_spec(FlowKind::NsfC, 2)
    };
    let model = quick_fit(spec, &t, 40, 5);
    let bytes = model.to_bytes();
    let back = Model::from_bytes(&bytes).unwrap();
    let test = data::toy("moons", 300, 9).unwrap();
    assert_eq!(
        model.log_prob_table(&test).unwrap(),
        back.log_prob_table(&test).unwrap()
    );
    assert_eq!(back.columns, model.columns);
    assert_eq!(back.log, model.log);
    assert_eq!(back.summary, model.summary);
    // the bytes are the weights file of a model folder plus its config: a truncated copy is an error
    for bad in [&bytes[..bytes.len() / 2], &b"not a model"[..], &[][..]] {
        match Model::from_bytes(bad) {
            Err(Error::Model { msg, .. }) => assert!(!msg.is_empty()),
            Err(e) => panic!("expected a model error, got {e}"),
            Ok(_) => panic!("garbage loaded as a model"),
        }
    }
}

#[test]
fn stop_flag_ends_training_with_the_best_weights() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let t = data::toy("moons", 3000, 2).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = TrainConfig {
        steps: Some(10_000),
        eval_every: Some(10),
        batch_size: 64,
        ..TrainConfig::default()
    };
    let mut vals = Vec::new();
    let fitted = Trainer::new(cfg)
        .with_stop(stop.clone())
        .fit(small_spec(FlowKind::Realnvp, 2), &t, None, |p| {
            if let Some(v) = p.val_log_prob {
                vals.push((p.step, v));
            }
            if p.step == 35 {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
    let s = fitted.model.summary.unwrap();
    // stopped after the step that set the flag, with a last evaluation there
    assert_eq!(s.steps, 36);
    assert_eq!(vals.last().unwrap().0, 36);
    let best = vals
        .iter()
        .cloned()
        .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
    assert_eq!(s.best_step, best.0);
    assert_eq!(s.best_val_log_prob, Some(best.1));
}

#[test]
fn maf_save_load_keeps_orderings_and_masks() {
    let t = data::toy("checkerboard", 3000, 2).unwrap();
    let spec = FlowSpec {
        order: nflow::transforms::Order::Random,
        batch_norm: true,
        ..small_spec(FlowKind::Maf, 3)
    };
    let mut t3 = Table::new(
        vec!["x".into(), "y".into(), "u".into()],
        t.rows,
        (0..t.rows)
            .flat_map(|i| [t.row(i)[0], t.row(i)[1], t.row(i)[0] * t.row(i)[1]])
            .collect(),
        "checkerboard3",
    );
    let model = quick_fit(spec, &t3, 60, 3);
    t3.data.truncate(300 * 3);
    t3.rows = 300;
    save_load_round_trip(&model, &t3, "maf");
}

#[test]
fn iaf_mog_and_mixture_save_load() {
    let t = data::toy("8gaussians", 3000, 2).unwrap();
    let test = data::toy("8gaussians", 300, 9).unwrap();
    let specs = [
        FlowSpec {
            permute: Permute::Lu,
            ..small_spec(FlowKind::Iaf, 2)
        },
        FlowSpec {
            layers: 0,
            ..small_spec(FlowKind::MafMog, 2)
        },
        FlowSpec {
            base: Some(BaseKind::Mixture),
            mixture_init: nflow::dist::MixtureInit::Data,
            ..small_spec(FlowKind::Maf, 2)
        },
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        let model = quick_fit(spec, &t, 40, 3);
        save_load_round_trip(&model, &test, &format!("ar{i}"));
    }
}

#[test]
fn same_seed_same_model() {
    let t = data::toy("rings", 2000, 0).unwrap();
    let fit = |seed| {
        let spec = FlowSpec {
            seed,
            ..small_spec(FlowKind::Realnvp, 2)
        };
        quick_fit(spec, &t, 40, seed).flow.snapshot()
    };
    let a = fit(7);
    assert_eq!(a, fit(7), "same seed gave a different model");
    assert_ne!(a, fit(8), "different seeds gave the same model");
}

#[test]
fn flow_parameter_gradients_match_finite_differences() {
    // the whole training path: couplings, ActNorm, BatchNorm (batch statistics), base distribution
    // (IAF: implicit differentiation through its sequential solve; mixture bases; LU / permutations between
    // layers; a context fed to every MADE; a learned context embedding trained through every conditioner and
    // a conditional base)
    for (kind, base, permute, ctx, embed) in [
        (FlowKind::Realnvp, BaseKind::DiagNormal, Permute::None, 0, 0),
        (FlowKind::Nice, BaseKind::Logistic, Permute::None, 0, 0),
        (FlowKind::Maf, BaseKind::Normal, Permute::Lu, 0, 0),
        (FlowKind::Iaf, BaseKind::Normal, Permute::Random, 2, 0),
        (FlowKind::MafMog, BaseKind::MadeMog, Permute::Reverse, 2, 0),
        (FlowKind::Realnvp, BaseKind::Mixture, Permute::None, 0, 0),
        (FlowKind::NsfC, BaseKind::Normal, Permute::Lu, 2, 0),
        (FlowKind::NsfAr, BaseKind::Normal, Permute::Lu, 0, 0),
        (FlowKind::Realnvp, BaseKind::Normal, Permute::None, 2, 3),
        (FlowKind::Iaf, BaseKind::Normal, Permute::None, 2, 3),
        (FlowKind::MafMog, BaseKind::MadeMog, Permute::Reverse, 2, 3),
        (FlowKind::NsfAr, BaseKind::Normal, Permute::Lu, 3, 2),
        (FlowKind::NsfAr, BaseKind::StudentT, Permute::Lu, 0, 0),
    ] {
        let spec = FlowSpec {
            layers: 3,
            hidden: 6,
            batch_norm: true,
            actnorm: true,
            base: Some(base),
            permute,
            components: 3,
            context_dim: ctx,
            context_embed: embed,
            embed_hidden: 5,
            ..FlowSpec::preset(kind, 3)
        };
        let mut flow = spec.build::<f64>().unwrap();
        assert_eq!(flow.embedding.is_some(), embed > 0);
        let x: Mat<f64> = randn(&mut rng(3), 16, 3);
        let c: Option<Mat<f64>> = (ctx > 0).then(|| randn(&mut rng(9), 16, ctx));
        let c = c.as_ref();
        flow.nll_backward(&x, c).unwrap(); // initialises ActNorm and the mixture
        randomize(&mut flow, 4, 0.3);
        flow.zero_grad();
        flow.nll_backward(&x, c).unwrap();
        let grads: Vec<(String, Vec<f64>, Vec<bool>)> = flow
            .named_params()
            .iter()
            .filter(|(_, p)| p.trainable)
            .map(|(n, p)| {
                let free = (0..p.value().len()).map(|k| p.is_free(k)).collect();
                (n.clone(), p.grad().to_vec(), free)
            })
            .collect();
        let h = 1e-6;
        for (name, g, free) in &grads {
            // MADE's masked weights are no parameters: no gradient may reach them
            for (k, gk) in g.iter().enumerate() {
                assert!(
                    free[k] || *gk == 0.0,
                    "{kind:?} masked {name}[{k}] got {gk}"
                );
            }
            for k in (0..g.len())
                .step_by((g.len() / 5).max(1))
                .filter(|&k| free[k])
            {
                let fd = flow_param_fd(&mut flow, &x, c, name, k, h);
                assert!(
                    (fd - g[k]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "{kind:?} {name}[{k}]: analytic {} vs finite difference {fd}",
                    g[k]
                );
            }
        }
    }
}

#[test]
fn score_matches_finite_differences_of_log_prob() {
    // d log p / dx through every kind of layer in evaluation mode (batch norm on its running statistics),
    // with a context and a learned embedding, and a mixture base
    for (kind, base, permute, ctx, embed) in [
        (FlowKind::Realnvp, BaseKind::DiagNormal, Permute::None, 0, 0),
        (FlowKind::Maf, BaseKind::Normal, Permute::Lu, 2, 0),
        (FlowKind::MafMog, BaseKind::MadeMog, Permute::Reverse, 0, 0),
        (FlowKind::NsfC, BaseKind::Mixture, Permute::Lu, 2, 3),
        (FlowKind::NsfAr, BaseKind::Normal, Permute::Lu, 0, 0),
        (FlowKind::Maf, BaseKind::StudentT, Permute::Lu, 0, 0),
    ] {
        let spec = FlowSpec {
            layers: 2,
            hidden: 6,
            batch_norm: true,
            actnorm: true,
            base: Some(base),
            permute,
            components: 3,
            context_dim: ctx,
            context_embed: embed,
            embed_hidden: 5,
            ..FlowSpec::preset(kind, 3)
        };
        let mut flow = spec.build::<f64>().unwrap();
        let x: Mat<f64> = randn(&mut rng(3), 12, 3);
        let c: Option<Mat<f64>> = (ctx > 0).then(|| randn(&mut rng(9), 12, ctx));
        let c = c.as_ref();
        flow.nll_backward(&x, c).unwrap(); // initialises ActNorm, the mixture, batch norm's statistics
        randomize(&mut flow, 4, 0.3);
        flow.set_training(false);
        let (lp, g) = flow.grad_log_prob(&x, c).unwrap();
        let lp_ref = flow.log_prob(&x, c);
        for (a, b) in lp.iter().zip(&lp_ref) {
            assert!((a - b).abs() < 1e-10, "{kind:?}: log p {a} vs {b}");
        }
        assert!(
            flow.named_params()
                .iter()
                .all(|(_, p)| p.grad().iter().all(|&v| v == 0.0)),
            "{kind:?}: parameter gradients left behind"
        );
        let h = 1e-5;
        for r in [0, 5, 11] {
            for j in 0..3 {
                let mut xp = x.clone();
                xp.data[r * 3 + j] += h;
                let mut xm = x.clone();
                xm.data[r * 3 + j] -= h;
                let fd = (flow.log_prob(&xp, c)[r] - flow.log_prob(&xm, c)[r]) / (2.0 * h);
                let an = g.data[r * 3 + j];
                assert!(
                    (fd - an).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{kind:?} row {r} x{j}: analytic {an} vs finite difference {fd}"
                );
            }
        }
    }
}

#[test]
fn a_reverse_permutation_between_couplings_makes_them_take_turns() {
    // 2-D RealNVP and MAF with a reverse permutation between two layers: each layer must transform the other
    // feature, so every output depends on every input (an alternating mask on top of the permutation used to
    // transform the same feature twice: the first output was the second input, untouched)
    for kind in [FlowKind::Realnvp, FlowKind::Maf, FlowKind::NsfC] {
        let spec = FlowSpec {
            layers: 2,
            hidden: 6,
            permute: Permute::Reverse,
            ..FlowSpec::preset(kind, 2)
        };
        let mut flow = spec.build::<f64>().unwrap();
        randomize(&mut flow, 7, 0.5);
        let x = Mat::from_vec(1, 2, vec![0.3, -0.7]);
        let h = 1e-6;
        for j in 0..2 {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp.data[j] += h;
            xm.data[j] -= h;
            let (zp, _) = flow.transform_to_noise(&xp, None);
            let (zm, _) = flow.transform_to_noise(&xm, None);
            for i in 0..2 {
                let d = (zp.data[i] - zm.data[i]) / (2.0 * h);
                assert!(
                    d.abs() > 1e-4,
                    "{kind:?}: dz{i}/dx{j} = {d}: an output that never saw that input"
                );
            }
        }
    }
}

#[test]
fn resume_extends_a_run_and_refuses_other_data_or_options() {
    let t = data::toy("moons", 2000, 2).unwrap();
    let dir = std::env::temp_dir().join(format!("nflow-resume-{}", std::process::id()));
    let cfg = |steps| TrainConfig {
        steps: Some(steps),
        batch_size: 64,
        eval_every: Some(10),
        patience: None,
        ..TrainConfig::default()
    };
    let spec = small_spec(FlowKind::Realnvp, 2);
    let fit = |c: TrainConfig, t: &Table, resume: bool| {
        Trainer::new(c)
            .with_checkpoints(dir.clone(), 10, resume)
            .fit(spec.clone(), t, None, |_| {})
    };
    fit(cfg(30), &t, false).unwrap();
    // the last checkpoint is at step 20; extended to 50 steps it ends as a 50-step run does
    let longer = fit(cfg(50), &t, true).unwrap().model;
    let whole = Trainer::new(cfg(50))
        .fit(spec.clone(), &t, None, |_| {})
        .unwrap()
        .model;
    assert_eq!(longer.flow.snapshot(), whole.flow.snapshot());
    assert_eq!(longer.summary.unwrap().steps, 50);
    // other options: refused naming them
    let other = TrainConfig {
        batch_size: 32,
        ..cfg(50)
    };
    let e = fit(other, &t, true).err().unwrap().to_string();
    assert!(
        e.contains("batch_size (64 in the checkpoint, 32 now)"),
        "{e}"
    );
    // other data of the same size: refused
    let mut t2 = t.clone();
    t2.data[7] += 0.5;
    let e = fit(cfg(50), &t2, true).err().unwrap().to_string();
    assert!(e.contains("other data"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nan_guard_names_the_layer() {
    let mut flow = small_spec(FlowKind::Nice, 2).build::<f32>().unwrap();
    // NICE's last layer is the diagonal scaling: make it overflow
    let last = flow.transforms.len() - 1;
    for (n, p) in flow.named_params_mut() {
        if n == format!("{last}.log_scale") {
            p.set_value(vec![200.0, 0.0]);
        }
    }
    let x: Mat<f32> = randn(&mut rng(0), 8, 2);
    match flow.nll_backward(&x, None) {
        Err(Error::NonFinite { layer }) => {
            assert!(
                layer.contains(&format!("layer {last}")) && layer.contains("Scaling"),
                "{layer}"
            )
        }
        other => panic!("expected a NonFinite error, got {other:?}"),
    }
}

#[test]
fn trainer_reports_divergence_and_keeps_last_good_model() {
    // A learning rate this large sends the weights to Inf/NaN within a few steps.
    let t = data::toy("moons", 2000, 0).unwrap();
    let cfg = TrainConfig {
        steps: Some(400),
        eval_every: Some(1),
        batch_size: 64,
        optim: nflow::optim::OptimConfig {
            lr: 1e6,
            ..Default::default()
        },
        patience: None,
        ..TrainConfig::default()
    };
    let spec = FlowSpec {
        scale: nflow::transforms::ScaleBound::SoftClamp { bound: 30.0 },
        ..small_spec(FlowKind::Realnvp, 2)
    };
    match Trainer::new(cfg).fit(spec, &t, None, |_| {}) {
        Ok(f) => {
            let e = f.diverged.expect("training with lr=1e6 should diverge");
            let msg = e.to_string();
            assert!(
                msg.contains("step") && (msg.contains("layer") || msg.contains("validation")),
                "{msg}"
            );
            // the model kept is a finite one
            let lp = f.model.log_prob_table(&data::toy("moons", 100, 1).unwrap());
            assert!(lp.is_ok(), "{lp:?}");
        }
        Err(e) => assert!(matches!(e, Error::Diverged { .. }), "{e}"),
    }
}

#[test]
fn reported_log_likelihood_is_in_data_units() {
    // Scaling the data by 10 in both coordinates lowers the log-density by exactly 2 ln 10 per point.
    let t = data::toy("moons", 3000, 0).unwrap();
    let mut t10 = t.clone();
    t10.data.iter_mut().for_each(|v| *v *= 10.0);
    let spec = small_spec(FlowKind::Realnvp, 2);
    let a = quick_fit(spec.clone(), &t, 50, 0);
    let b = quick_fit(spec, &t10, 50, 0);
    let test = data::toy("moons", 200, 5).unwrap();
    let mut test10 = test.clone();
    test10.data.iter_mut().for_each(|v| *v *= 10.0);
    let la = a.log_prob_table(&test).unwrap();
    let lb = b.log_prob_table(&test10).unwrap();
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y - 2.0 * 10f64.ln()).abs() < 1e-3, "{x} vs {y}");
    }
}

#[test]
fn density_with_logit_preprocessing_integrates_to_one_in_data_space() {
    // Data in (0, 16)^2; the flow is fitted in logit space, and the reported density (logit and standardisation
    // Jacobians included) must integrate to 1 over the data's own box.
    use nflow::data::Preprocess;
    let t = data::toy("8gaussians", 3000, 4).unwrap();
    let mut raw = t.clone();
    raw.data
        .iter_mut()
        .for_each(|v| *v = (*v * 1.6 + 8.0).clamp(0.01, 15.99));
    let pre = Preprocess {
        dequantize: false,
        levels: 16.0,
        logit: Some(0.05),
        bits: None,
        columns: Vec::new(),
    };
    let mut pt = raw.clone();
    pre.apply(&mut pt, 0).unwrap();
    let mut model = quick_fit(small_spec(FlowKind::Maf, 2), &pt, 200, 0);
    model.preprocess = Some(pre);
    let g = 400;
    let h = 16.0 / g as f64;
    let mut pts = Vec::with_capacity(g * g * 2);
    for j in 0..g {
        for i in 0..g {
            pts.push((i as f64 + 0.5) * h);
            pts.push((j as f64 + 0.5) * h);
        }
    }
    let grid = Table::new(vec!["x".into(), "y".into()], g * g, pts, "grid");
    let (lp, ld) = model.log_prob_parts(&grid, None).unwrap();
    let mass: f64 = lp.iter().map(|v| v.exp()).sum::<f64>() * h * h;
    assert!(
        (mass - 1.0).abs() < 0.01,
        "data-space density integrates to {mass}"
    );
    // without the preprocessing Jacobian it would not
    let wrong: f64 = lp.iter().zip(&ld).map(|(a, b)| (a - b).exp()).sum::<f64>() * h * h;
    assert!((wrong - 1.0).abs() > 0.1, "{wrong}");
    // samples come back in the data's box
    let s = model.sample(500, 1, None).unwrap();
    assert!(s.data.iter().all(|v| (0.0..=16.0).contains(v)));
}

#[test]
fn training_through_preprocessing_reports_data_units() {
    // integer 2-D data in [0, 15]; the trainer dequantises every batch afresh and fits in logit space
    use nflow::data::Preprocess;
    let t = data::toy("8gaussians", 4000, 5).unwrap();
    let mut raw = t.clone();
    raw.data
        .iter_mut()
        .for_each(|v| *v = (*v * 1.6 + 7.5).round().clamp(0.0, 15.0));
    let pre = Preprocess {
        dequantize: true,
        levels: 16.0,
        logit: Some(0.01),
        bits: None,
        columns: Vec::new(),
    };
    let cfg = TrainConfig {
        steps: Some(300),
        batch_size: 128,
        ..TrainConfig::default()
    };
    let fitted = Trainer::new(cfg)
        .with_preprocess(Some(pre.clone()))
        .fit(small_spec(FlowKind::Maf, 2), &raw, None, |_| {})
        .unwrap();
    let model = fitted.model;
    assert_eq!(model.preprocess, Some(pre));
    let val = model.summary.as_ref().unwrap().best_val_log_prob.unwrap();
    let (lp, ld) = model.log_prob_parts(&raw, None).unwrap();
    let mean = lp.iter().sum::<f64>() / lp.len() as f64;
    let mean_ld = ld.iter().sum::<f64>() / ld.len() as f64;
    // the validation figure is in the data's units, like eval's (the Jacobian's mean is far larger than the gap)
    assert!(mean_ld.abs() > 1.0, "{mean_ld}");
    assert!(
        (val - mean).abs() < 0.25,
        "validation {val} vs data-unit eval {mean}"
    );
    // a dequantised density on integer data: samples land in [0, 16]
    let s = model.sample(200, 2, None).unwrap();
    assert!(s.data.iter().all(|v| (0.0..=16.0).contains(v)));
}

#[test]
fn conditional_density_integrates_to_one_for_each_context() {
    // x = (cos c, sin c) + noise, c uniform: for every fixed c, p(x | c) must integrate to 1 over x, and it
    // must move with c
    use rand::Rng;
    let mut r = rng(3);
    let n = 3000;
    let mut xs = Vec::with_capacity(2 * n);
    let mut cs = Vec::with_capacity(n);
    for _ in 0..n {
        let c: f64 = r.gen_range(-3.0..3.0);
        let e: Mat<f64> = randn(&mut r, 1, 2);
        xs.push(c.cos() + 0.25 * e.data[0]);
        xs.push(c.sin() + 0.25 * e.data[1]);
        cs.push(c);
    }
    let t = Table::new(vec!["x".into(), "y".into()], n, xs, "ring");
    let ctx = Table::new(vec!["c".into()], n, cs, "ring");
    for (kind, embed) in [
        (FlowKind::Realnvp, 0),
        (FlowKind::Maf, 0),
        (FlowKind::NsfC, 0),
        (FlowKind::NsfAr, 0),
        (FlowKind::NsfC, 8),
    ] {
        let spec = FlowSpec {
            context_dim: 1,
            context_embed: embed,
            embed_hidden: 16,
            ..small_spec(kind, 2)
        };
        let cfg = TrainConfig {
            steps: Some(300),
            batch_size: 128,
            ..TrainConfig::default()
        };
        let model = Trainer::new(cfg)
            .fit(spec, &t, Some(&ctx), |_| {})
            .unwrap()
            .model;
        let g = 400;
        let (grid, h) = midpoint_grid(-5.0, 5.0, g);
        let mut at_one = Vec::new();
        for c in [-2.0, 0.0, 1.5] {
            let cg = Table::new(vec!["c".into()], g * g, vec![c; g * g], "c");
            let lp = model.log_prob_ctx(&grid, Some(&cg)).unwrap();
            let mass: f64 = lp.iter().map(|v| v.exp()).sum::<f64>() * h * h;
            assert!((mass - 1.0).abs() < 0.01, "{kind:?}, c = {c}: mass {mass}");
            // density at (cos 1.5, sin 1.5) given this c
            let p = Table::new(
                vec!["x".into(), "y".into()],
                1,
                vec![1.5f64.cos(), 1.5f64.sin()],
                "p",
            );
            let cp = Table::new(vec!["c".into()], 1, vec![c], "c");
            at_one.push(model.log_prob_ctx(&p, Some(&cp)).unwrap()[0]);
        }
        // the point on the circle at angle 1.5 is far more likely given c = 1.5 than given c = -2
        assert!(at_one[2] > at_one[0] + 2.0, "{kind:?}: {at_one:?}");
        if embed > 0 {
            // the embedding's weights travel with the model: bit-identical conditional densities after loading
            let dir = std::env::temp_dir().join(format!("nflow-embed-{}", std::process::id()));
            model.save(&dir).unwrap();
            let back = Model::load(&dir).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            assert!(back.flow.embedding.is_some());
            let cg = Table::new(vec!["c".into()], 9, vec![0.7; 9], "c");
            let (pts, _) = midpoint_grid(-2.0, 2.0, 3);
            assert_eq!(
                model.log_prob_ctx(&pts, Some(&cg)).unwrap(),
                back.log_prob_ctx(&pts, Some(&cg)).unwrap()
            );
        }
    }
}

/// On several threads a small flow's large batch runs in shards (one per thread, on the flow and on replicas
/// of it): the same loss and gradients as the whole batch on one thread, up to the order of the sums, in every
/// step (the replicas follow the flow's parameters); the same log-probabilities and samples to the bit. A
/// flow with batch statistics keeps whole batches (the same bits as on one thread), and a NaN in a shard
/// is still an error naming the layer.
#[test]
fn sharded_batches_match_whole_ones() {
    let [one, two] = [1, 2].map(|t| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
    });
    for (kind, actnorm, bn, base, permute, ctx, embed) in [
        (FlowKind::Realnvp, false, false, None, Permute::None, 0, 0),
        (
            FlowKind::Realnvp,
            true,
            false,
            Some(BaseKind::Mixture),
            Permute::None,
            0,
            0,
        ),
        (FlowKind::Maf, false, false, None, Permute::Lu, 0, 0),
        (FlowKind::Iaf, false, false, None, Permute::Random, 2, 3),
        (
            FlowKind::MafMog,
            false,
            false,
            Some(BaseKind::MadeMog),
            Permute::Reverse,
            2,
            0,
        ),
        (FlowKind::NsfC, true, false, None, Permute::Lu, 2, 0),
        (FlowKind::Maf, false, true, None, Permute::None, 0, 0),
    ] {
        for dim in [2, 5] {
            let spec = FlowSpec {
                actnorm,
                batch_norm: bn,
                base,
                permute,
                components: 3,
                context_dim: ctx,
                context_embed: embed,
                embed_hidden: 5,
                ..small_spec(kind, dim)
            };
            let tag = format!("{kind:?} D={dim} actnorm={actnorm} batch_norm={bn}");
            let x: Mat<f64> = randn(&mut rng(3), 300, dim);
            let c: Option<Mat<f64>> = (ctx > 0).then(|| randn(&mut rng(9), 300, ctx));
            let c = c.as_ref();
            let mut whole = spec.build::<f64>().unwrap();
            let mut split = spec.build::<f64>().unwrap();
            let mut shards = nflow::train::DataParallel::new();
            for step in 0..3 {
                // the first step initialises ActNorm and the mixture (whole batches); then new parameters
                if step > 0 {
                    randomize(&mut whole, step, 0.2);
                    randomize(&mut split, step, 0.2);
                }
                whole.zero_grad();
                split.zero_grad();
                let l1 = one.install(|| whole.nll_backward(&x, c)).unwrap();
                let l2 = two
                    .install(|| shards.nll_backward(&mut split, &x, c))
                    .unwrap();
                assert!(
                    (l1 - l2).abs() < 1e-12 * l1.abs().max(1.0),
                    "{tag} step {step}: loss {l1} vs {l2}"
                );
                for ((name, p), (_, q)) in whole.named_params().iter().zip(split.named_params()) {
                    let (g1, g2) = (p.grad(), q.grad());
                    for (k, (a, b)) in g1.iter().zip(g2.iter()).enumerate() {
                        if bn {
                            assert_eq!(
                                a, b,
                                "{tag}: {name}[{k}]: a whole batch gives the same bits"
                            );
                        }
                        assert!(
                            (a - b).abs() < 1e-11 * (1.0 + a.abs()),
                            "{tag} step {step}: {name}[{k}] {a} vs {b}"
                        );
                    }
                }
            }
            whole.set_training(false);
            split.set_training(false);
            let lp1 = one.install(|| whole.log_prob(&x, c));
            let lp2 = two.install(|| split.log_prob(&x, c));
            assert_eq!(lp1, lp2, "{tag}: log-probabilities");
            let s1 = one.install(|| whole.sample(300, &mut rng(5), c));
            let s2 = two.install(|| split.sample(300, &mut rng(5), c));
            assert_eq!(s1.data, s2.data, "{tag}: samples");
            // a NaN in the second shard's rows
            let mut bad = x.clone();
            bad.data[250 * dim] = f64::NAN;
            split.set_training(true);
            match two.install(|| shards.nll_backward(&mut split, &bad, c)) {
                Err(Error::NonFinite { layer }) => {
                    assert!(layer.contains("layer"), "{tag}: {layer}")
                }
                r => panic!("{tag}: a NaN in the second shard gave {r:?}"),
            }
        }
    }
}

/// Sampling runs in chunks with one random stream: more rows than a chunk come as full chunks then the rest,
/// no chunk repeats another's rows, the samples in memory are the chunks joined, and the same seed gives the
/// same rows.
#[test]
fn samples_come_in_chunks_of_one_random_stream() {
    let t = data::toy("moons", 2000, 0).unwrap();
    let model = quick_fit(small_spec(FlowKind::Realnvp, 2), &t, 30, 1);
    let chunk = model.sample_chunk_rows();
    let n = 2 * chunk + 5;
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    model
        .sample_chunks(n, 3, None, 1.0, |x, c| {
            assert!(c.is_none());
            sizes.push(x.rows);
            all.extend_from_slice(&x.data);
            Ok(true)
        })
        .unwrap();
    assert_eq!(sizes, [chunk, chunk, 5]);
    assert_ne!(
        all[..10],
        all[2 * chunk..2 * chunk + 10],
        "a chunk repeated the first's rows"
    );
    let whole = model.sample(n, 3, None).unwrap();
    assert_eq!(whole.data, all);
    // stopping early hands over no more chunks
    let mut calls = 0;
    model
        .sample_chunks(n, 3, None, 1.0, |_, _| {
            calls += 1;
            Ok(false)
        })
        .unwrap();
    assert_eq!(calls, 1);
}

/// A weighted likelihood is the likelihood of the rows repeated by their (integer) weights: the same loss and
/// gradients, also when the batch runs in shards; a weight of 0 leaves a row out.
#[test]
fn weighted_likelihood_is_that_of_repeated_rows() {
    let spec = small_spec(FlowKind::Realnvp, 3);
    let mut flow = spec.build::<f64>().unwrap();
    randomize(&mut flow, 4, 0.2);
    let x = randn::<f64>(&mut rng(5), 160, 3);
    let w: Vec<f64> = (0..160).map(|i| (i % 4) as f64).collect();
    let rep: Vec<usize> = (0..160)
        .flat_map(|i| std::iter::repeat_n(i, i % 4))
        .collect();
    let xr = x.take_rows(&rep);
    let grads = |f: &Flow<f64>| -> Vec<f64> {
        f.named_params()
            .iter()
            .flat_map(|(_, p)| p.grad().to_vec())
            .collect()
    };
    flow.zero_grad();
    let lr = flow.nll_backward(&xr, None).unwrap();
    let gr = grads(&flow);
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let pool = if threads == 2 { &two } else { &pool };
        flow.zero_grad();
        let mut dp = nflow::train::DataParallel::new();
        let lw = pool
            .install(|| dp.nll_backward_weighted(&mut flow, &x, None, Some(&w)))
            .unwrap();
        assert!(
            (lw - lr).abs() < 1e-12 * lr.abs().max(1.0),
            "{threads} threads: {lw} vs {lr}"
        );
        let gw = grads(&flow);
        let scale = gr.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        assert!(scale > 0.0);
        for (a, b) in gw.iter().zip(&gr) {
            assert!(
                (a - b).abs() < 1e-10 * scale,
                "{threads} threads: gradient {a} vs {b}"
            );
        }
    }
}

#[test]
fn stage_densities_follow_the_change_of_variables() {
    // log p(x) = log p_k(y_k) + Σ_{j<=k} log|det J_j| at every stage k, through couplings, LU and splines
    for kind in [FlowKind::Realnvp, FlowKind::NsfAr] {
        let spec = FlowSpec {
            layers: 3,
            hidden: 6,
            ..FlowSpec::preset(kind, 2)
        };
        let mut flow = spec.build::<f64>().unwrap();
        randomize(&mut flow, 4, 0.3);
        let x: Mat<f64> = randn(&mut rng(3), 9, 2);
        let lp = flow.log_prob(&x, None);
        let stages = flow.forward_stages(&x, None);
        assert_eq!(stages.len(), flow.transforms.len());
        let mut acc = vec![0.0; x.rows];
        assert_eq!(flow.stage_log_prob(0, &x, None), lp);
        for (k, (y, ld)) in stages.iter().enumerate() {
            acc.iter_mut().zip(ld).for_each(|(a, b)| *a += b);
            let here = flow.stage_log_prob(k + 1, y, None);
            for r in 0..x.rows {
                assert!(
                    (here[r] + acc[r] - lp[r]).abs() < 1e-10,
                    "{kind:?} stage {}: {} + {} vs {}",
                    k + 1,
                    here[r],
                    acc[r],
                    lp[r]
                );
            }
        }
        // the last stage is the noise: its density is the base's
        let (z, _) = flow.transform_to_noise(&x, None);
        assert_eq!(stages.last().unwrap().0.data, z.data);
    }
}

#[test]
fn spline_kernels_agree_and_old_configs_keep_the_reference_one() {
    use nflow::flows::FlowConfig;
    use nflow::transforms::{RqSpline, SplineKernel};
    let old: RqSpline = serde_json::from_str(r#"{"bins": 8, "bound": 3.0}"#).unwrap();
    assert_eq!(old.kernel, SplineKernel::Reference);
    assert_eq!(RqSpline::default().kernel, SplineKernel::Vectorised);
    // the same nsf-c and nsf-ar weights evaluated and sampled by both f32 kernels
    for kind in [FlowKind::NsfC, FlowKind::NsfAr] {
        let spec = FlowSpec {
            layers: 2,
            hidden: 16,
            ..FlowSpec::preset(kind, 11)
        };
        let arch = spec.architecture().unwrap();
        let text = arch.to_json_pretty();
        assert!(text.contains("\"vectorised\""), "{text}");
        let old = FlowConfig::from_json(&text.replace("\"vectorised\"", "\"reference\"")).unwrap();
        let mut fast = arch.build::<f32>().unwrap();
        // non-trivial splines: every weight moved
        use rand::Rng as _;
        let mut r = rng(3);
        for (_, p) in fast.named_params_mut() {
            if p.trainable {
                for k in 0..p.value().len() {
                    if p.is_free(k) {
                        p.value_mut()[k] += r.gen_range(-0.4..0.4);
                    }
                }
            }
        }
        let mut slow = old.build::<f32>().unwrap();
        let snap = fast.snapshot();
        slow.restore(&snap);
        let x: Mat<f32> = randn(&mut rng(5), 300, 11);
        let (a, b) = (fast.log_prob(&x, None), slow.log_prob(&x, None));
        assert_ne!(a, b, "{kind:?}: the kernels are different code");
        for (u, v) in a.iter().zip(&b) {
            assert!(
                (u - v).abs() < 2e-4 * (1.0 + v.abs()),
                "{kind:?}: {u} vs {v}"
            );
        }
        let (s, t) = (
            fast.sample(50, &mut rng(9), None),
            slow.sample(50, &mut rng(9), None),
        );
        for (u, v) in s.data.iter().zip(&t.data) {
            assert!(
                (u - v).abs() < 2e-4 * (1.0 + v.abs()),
                "{kind:?}: {u} vs {v}"
            );
        }
    }
}
