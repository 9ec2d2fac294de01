//! Image flows (Glow, RealNVP multi-scale) as whole flows: log-det against a finite-difference Jacobian of
//! the full multi-scale map, round trips, parameter gradients, bits/dim by hand, checkpoint / resume.

use nflow::data::{Preprocess, Standardizer, Table};
use nflow::engine::{randn, rng, Mat};
use nflow::flows::testing::flow_param_fd;
use nflow::flows::{CouplingKind, Flow, FlowKind, FlowSpec, Permute};
use nflow::train::{bits_per_dim, TrainConfig, Trainer};
use nflow::transforms::testing::log_abs_det;
use nflow::transforms::ImageShape;
use nflow::Model;

fn spec(kind: FlowKind, shape: ImageShape, ctx: usize) -> FlowSpec {
    FlowSpec {
        layers: 2,
        hidden: 4,
        depth: 1,
        image: Some(shape),
        context_dim: ctx,
        ..FlowSpec::preset(kind, shape.dim())
    }
}

fn variants() -> Vec<(String, FlowSpec)> {
    let s = ImageShape::new(1, 4, 4);
    let mut v = Vec::new();
    for permute in [
        Permute::Conv1x1,
        Permute::Lu,
        Permute::Reverse,
        Permute::Random,
        Permute::None,
    ] {
        for coupling in [CouplingKind::Affine, CouplingKind::Additive] {
            let split_prior = permute == Permute::Lu;
            v.push((
                format!("glow {permute:?} {coupling:?} split_prior={split_prior}"),
                FlowSpec {
                    permute,
                    coupling,
                    split_prior,
                    ..spec(FlowKind::Glow, s, 0)
                },
            ));
        }
    }
    v.push((
        "glow, context, 2 channels".into(),
        FlowSpec {
            scales: 1,
            ..spec(FlowKind::Glow, ImageShape::new(2, 2, 4), 2)
        },
    ));
    v.push((
        "glow, split prior, context through a learned embedding".into(),
        FlowSpec {
            split_prior: true,
            context_embed: 3,
            embed_hidden: 4,
            ..spec(FlowKind::Glow, s, 2)
        },
    ));
    v.push((
        "realnvp-multiscale".into(),
        FlowSpec {
            scale: nflow::transforms::ScaleBound::SoftClamp { bound: 3.0 },
            ..spec(FlowKind::RealnvpMultiscale, s, 0)
        },
    ));
    v.push((
        "realnvp-multiscale, 3 scales, split prior, context".into(),
        FlowSpec {
            scales: 3,
            split_prior: true,
            layers: 1,
            ..spec(FlowKind::RealnvpMultiscale, ImageShape::new(1, 8, 8), 1)
        },
    ));
    v
}

/// Perturb every trainable parameter so no layer is the identity.
fn randomize(flow: &mut Flow<f64>, seed: u64, scale: f64) {
    use rand::Rng;
    let mut r = rng(seed);
    for (_, p) in flow.named_params_mut() {
        if p.trainable {
            p.value_mut()
                .iter_mut()
                .for_each(|v| *v += scale * r.gen_range(-1.0..1.0));
        }
    }
}

#[test]
fn multiscale_log_det_matches_finite_difference_jacobian_and_inverts() {
    for (name, spec) in variants() {
        let d = spec.dim;
        let mut flow = spec.build::<f64>().unwrap();
        let x: Mat<f64> = randn(&mut rng(1), 3, d);
        let c: Option<Mat<f64>> =
            (spec.context_dim > 0).then(|| randn(&mut rng(2), 3, spec.context_dim));
        flow.nll_backward(&x, c.as_ref()).unwrap(); // ActNorm initialisation
        flow.set_training(false);
        randomize(&mut flow, 3, 0.2);
        let (z, ld) = flow.transform_to_noise(&x, c.as_ref());
        let (xr, ldi) = flow.inverse(&z, c.as_ref());
        for (a, b) in x.data.iter().zip(&xr.data) {
            assert!((a - b).abs() < 1e-9, "{name}: round trip {a} vs {b}");
        }
        for r in 0..x.rows {
            assert!(
                (ld[r] + ldi[r]).abs() < 1e-9,
                "{name}: forward/inverse log-det"
            );
            let cr = c.as_ref().map(|c| c.slice_rows(r, r + 1));
            let h = 1e-5;
            let mut jac = vec![0.0; d * d];
            for j in 0..d {
                let mut xp = x.slice_rows(r, r + 1);
                let mut xm = xp.clone();
                xp.data[j] += h;
                xm.data[j] -= h;
                let zp = flow.transform_to_noise(&xp, cr.as_ref()).0;
                let zm = flow.transform_to_noise(&xm, cr.as_ref()).0;
                for i in 0..d {
                    jac[i * d + j] = (zp.data[i] - zm.data[i]) / (2.0 * h);
                }
            }
            let want = log_abs_det(&jac, d);
            assert!(
                (want - ld[r]).abs() < 1e-6 * (1.0 + want.abs()),
                "{name}: log-det {} vs finite-difference {want}",
                ld[r]
            );
        }
        // sample then log_prob = sample_and_log_prob
        let n = 4;
        let cs: Option<Mat<f64>> =
            (spec.context_dim > 0).then(|| randn(&mut rng(5), n, spec.context_dim));
        let (s, lp) = flow.sample_and_log_prob(n, &mut rng(6), cs.as_ref());
        let lp2 = flow.log_prob(&s, cs.as_ref());
        for (a, b) in lp.iter().zip(&lp2) {
            assert!((a - b).abs() < 1e-8 * (1.0 + a.abs()), "{name}: {a} vs {b}");
        }
    }
}

#[test]
fn multiscale_parameter_gradients_match_finite_differences() {
    for (name, spec) in variants() {
        let d = spec.dim;
        let mut flow = spec.build::<f64>().unwrap();
        let x: Mat<f64> = randn(&mut rng(11), 5, d);
        let c: Option<Mat<f64>> =
            (spec.context_dim > 0).then(|| randn(&mut rng(12), 5, spec.context_dim));
        let c = c.as_ref();
        flow.nll_backward(&x, c).unwrap();
        randomize(&mut flow, 13, 0.2);
        flow.zero_grad();
        flow.nll_backward(&x, c).unwrap();
        let grads: Vec<(String, Vec<f64>)> = flow
            .named_params()
            .iter()
            .filter(|(_, p)| p.trainable)
            .map(|(n, p)| (n.clone(), p.grad().to_vec()))
            .collect();
        assert!(grads.len() > 4, "{name}: parameters");
        let h = 1e-6;
        for (pname, g) in &grads {
            for k in (0..g.len()).step_by((g.len() / 3).max(1)) {
                let fd = flow_param_fd(&mut flow, &x, c, pname, k, h);
                assert!(
                    (fd - g[k]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "{name} {pname}[{k}]: analytic {} vs finite difference {fd}",
                    g[k]
                );
            }
        }
    }
}

#[test]
fn bits_per_dim_of_an_identity_flow_computed_by_hand() {
    // A freshly built Glow with reversals between its steps is the identity (ActNorm not yet initialised,
    // zero-initialised couplings); an image whose pixels are all 128 maps through the logit to 0 exactly.
    // Per dimension: log N(0; 0, 1) plus the logit Jacobian log((1 - 2λ) / 256) - log(1/2) - log(1/2).
    let shape = ImageShape::new(1, 4, 4);
    let spec = FlowSpec {
        permute: Permute::Reverse,
        ..spec(FlowKind::Glow, shape, 0)
    };
    let lam: f64 = 0.05;
    let model = Model {
        flow: spec.build::<f32>().unwrap(),
        arch: spec.architecture().unwrap(),
        preset: Some(spec),
        columns: nflow::data::pixel_columns(shape),
        norm: Standardizer::identity(16),
        context_columns: vec![],
        context_norm: None,
        context_classes: vec![],
        preprocess: Some(Preprocess {
            dequantize: false,
            levels: 256.0,
            logit: Some(lam),
            bits: None,
            columns: Vec::new(),
        }),
        summary: None,
        log: vec![],
    };
    let t = Table::new(model.columns.clone(), 2, vec![128.0; 32], "grey");
    let lp = model.log_prob_table(&t).unwrap();
    let mean = lp.iter().sum::<f64>() / 2.0;
    let ln2 = std::f64::consts::LN_2;
    // by hand, in bits: 1/2 log2(2 pi) - log2(1 - 2λ) + log2(256) - 2
    let want = 0.5 * (2.0 * std::f64::consts::PI).log2() - (1.0 - 2.0 * lam).log2() + 8.0 - 2.0;
    let got = bits_per_dim(mean, 16);
    assert!((got - want).abs() < 1e-5, "bits/dim {got} vs {want}");
    assert!((want - 7.4778).abs() < 1e-3);
    // and the function itself: 16 dims at -16 ln 2 nats is 1 bit/dim
    assert!((bits_per_dim(-16.0 * ln2, 16) - 1.0).abs() < 1e-12);
}

/// Random 4x4 "images" with integer pixels in 0..16.
fn images(n: usize, seed: u64) -> Table {
    use rand::Rng;
    let mut r = rng(seed);
    let shape = ImageShape::new(1, 4, 4);
    let data = (0..n * 16)
        .map(|k| {
            let base = if (k % 16) % 5 == 0 { 12 } else { 3 };
            (base + r.gen_range(0..4)) as f64
        })
        .collect();
    Table::new(nflow::data::pixel_columns(shape), n, data, "images")
}

#[test]
fn resuming_from_a_checkpoint_gives_the_uninterrupted_run() {
    let t = images(300, 1);
    let spec = FlowSpec {
        permute: Permute::Lu,
        ..spec(FlowKind::Glow, ImageShape::new(1, 4, 4), 0)
    };
    let cfg = TrainConfig {
        steps: Some(24),
        batch_size: 32,
        eval_every: Some(6),
        seed: 5,
        ..TrainConfig::default()
    };
    let pre = Some(Preprocess {
        dequantize: true,
        levels: 16.0,
        logit: Some(0.05),
        bits: None,
        columns: Vec::new(),
    });
    let dir = std::env::temp_dir().join(format!("nflow-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let trainer = |resume: bool| {
        Trainer::new(cfg.clone())
            .with_preprocess(pre.clone())
            .with_monitor(images(40, 2), None)
            .with_checkpoints(dir.clone(), 10, resume)
    };
    // the full run leaves its last checkpoint at step 20
    let full = trainer(false).fit(spec.clone(), &t, None, |_| {}).unwrap();
    let resumed = trainer(true).fit(spec.clone(), &t, None, |_| {}).unwrap();
    let a: Vec<(String, Vec<f32>)> = full
        .model
        .flow
        .named_params()
        .into_iter()
        .map(|(n, p)| (n, p.value().to_vec()))
        .collect();
    let b: Vec<(String, Vec<f32>)> = resumed
        .model
        .flow
        .named_params()
        .into_iter()
        .map(|(n, p)| (n, p.value().to_vec()))
        .collect();
    assert_eq!(a, b, "resumed weights differ");
    let la: Vec<String> = full.log.iter().map(|e| format!("{e:?}")).collect();
    let lb: Vec<String> = resumed.log.iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(la.len(), lb.len());
    for (x, y) in full.log.iter().zip(&resumed.log) {
        assert_eq!(
            (x.step, x.train_nll, x.val_nll),
            (y.step, y.train_nll, y.val_nll)
        );
        assert_eq!(x.monitor_log_prob, y.monitor_log_prob);
        assert!(x.monitor_bits_per_dim.is_some());
    }
    // a checkpoint of another architecture is refused
    let other = FlowSpec {
        hidden: 5,
        ..spec.clone()
    };
    let e = trainer(true)
        .fit(other, &t, None, |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("different flow"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn image_model_save_load_round_trip() {
    let t = images(200, 3);
    let spec = FlowSpec {
        split_prior: true,
        ..spec(FlowKind::Glow, ImageShape::new(1, 4, 4), 0)
    };
    let cfg = TrainConfig {
        steps: Some(10),
        batch_size: 50,
        ..TrainConfig::default()
    };
    let model = Trainer::new(cfg)
        .with_preprocess(Some(Preprocess {
            dequantize: true,
            levels: 16.0,
            logit: None,
            bits: None,
            columns: Vec::new(),
        }))
        .fit(spec, &t, None, |_| {})
        .unwrap()
        .model;
    let dir = std::env::temp_dir().join(format!("nflow-img-model-{}", std::process::id()));
    model.save(&dir).unwrap();
    let back = Model::load(&dir).unwrap();
    assert_eq!(back.arch.image, Some(ImageShape::new(1, 4, 4)));
    assert_eq!(
        model.log_prob_table(&t).unwrap(),
        back.log_prob_table(&t).unwrap()
    );
    assert_eq!(
        model.sample_with_temperature(5, 1, None, 0.7).unwrap(),
        back.sample_with_temperature(5, 1, None, 0.7).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // from_noise is sampling after the draw, and undoes to_noise up to the dequantisation
    let mut z = model.flow.sample_noise(5, &mut rng(1), None).to_f64();
    z.iter_mut().for_each(|v| *v *= 0.7);
    let (a, b) = (
        model.from_noise(&z, None).unwrap(),
        model.sample_with_temperature(5, 1, None, 0.7).unwrap(),
    );
    // the same up to where 0.7 multiplies (f64 here, f32 in sampling)
    for (u, v) in a.data.iter().zip(&b.data) {
        assert!((u - v).abs() < 1e-5 * v.abs().max(1.0), "{u} vs {v}");
    }
    let few = t.take_rows(&[0, 1, 2]);
    let back = model
        .from_noise(&model.to_noise(&few, None).unwrap(), None)
        .unwrap();
    // dequantisation adds u in [0, 1) to each pixel: the rebuilt value is the pixel plus its noise
    for (a, b) in back.data.iter().zip(&few.data) {
        assert!(a - b > -1e-4 && a - b < 1.0 + 1e-4, "{a} vs {b}");
    }
    assert!(model.from_noise(&[0.0; 15], None).is_err());
}

/// Image flows in shards (on two threads a batch of 128 images or more runs as two shards, training on the flow
/// and a replica: ActNorm's initialisation first, then replicas of every layer kind): the loss and gradients of
/// one thread up to the order of the sums, in every step; log-probabilities and samples to the bit.
#[test]
fn image_flows_in_shards_match_one_thread() {
    let pools = [1, 2].map(|t| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
    });
    for (name, spec) in variants() {
        let d = spec.image.unwrap().dim();
        let x: Mat<f64> = randn(&mut rng(3), 160, d);
        let c: Option<Mat<f64>> =
            (spec.context_dim > 0).then(|| randn(&mut rng(9), 160, spec.context_dim));
        let c = c.as_ref();
        let mut flows = [spec.build::<f64>().unwrap(), spec.build::<f64>().unwrap()];
        let mut shards = [
            nflow::train::DataParallel::new(),
            nflow::train::DataParallel::new(),
        ];
        for step in 0..3 {
            let mut res = Vec::new();
            for ((pool, flow), sh) in pools.iter().zip(flows.iter_mut()).zip(shards.iter_mut()) {
                if step > 0 {
                    randomize(flow, step, 0.05);
                }
                flow.zero_grad();
                res.push(pool.install(|| sh.nll_backward(flow, &x, c)).unwrap());
            }
            assert!(
                (res[0] - res[1]).abs() < 1e-12 * res[0].abs().max(1.0),
                "{name} step {step}: {res:?}"
            );
            for ((n, p), (_, q)) in flows[0].named_params().iter().zip(flows[1].named_params()) {
                for (k, (a, b)) in p.grad().iter().zip(q.grad().iter()).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-11 * (1.0 + a.abs()),
                        "{name} step {step}: {n}[{k}] {a} vs {b}"
                    );
                }
            }
        }
        let [f1, f2] = &mut flows;
        f1.set_training(false);
        f2.set_training(false);
        let (lp1, lp2) = (
            pools[0].install(|| f1.log_prob(&x, c)),
            pools[1].install(|| f2.log_prob(&x, c)),
        );
        assert_eq!(lp1, lp2, "{name}: log-probabilities");
        let s1 = pools[0].install(|| f1.sample(160, &mut rng(5), c));
        let s2 = pools[1].install(|| f2.sample(160, &mut rng(5), c));
        assert_eq!(s1.data, s2.data, "{name}: samples");
    }
}

#[test]
fn latent_scales_are_where_each_level_factors_out() {
    // a level's latents stop changing once it is factored out, while the features just before them (the
    // kept half) still change: the recorded boundaries are the flow's own
    use nflow::flows::image::latent_scales;
    for kind in [FlowKind::Glow, FlowKind::RealnvpMultiscale] {
        let spec = FlowSpec {
            scales: 3,
            ..spec(kind, ImageShape::new(1, 8, 8), 0)
        };
        let ls = latent_scales(&spec).unwrap();
        assert_eq!(ls.len(), 3);
        let mut covered = vec![0; 64];
        for l in &ls {
            assert_eq!(l.shape.dim(), l.range.len(), "{kind:?} {l:?}");
            l.range.clone().for_each(|i| covered[i] += 1);
        }
        assert!(covered.iter().all(|&c| c == 1), "{kind:?}: {covered:?}");
        let mut flow = spec.build::<f64>().unwrap();
        randomize(&mut flow, 2, 0.2);
        let x: Mat<f64> = randn(&mut rng(4), 2, 64);
        let stages = flow.forward_stages(&x, None);
        // the last stage at which any value in [a, b) changed
        let last_change = |a: usize, b: usize| {
            let mut prev = x.clone();
            let mut last = 0;
            for (k, (y, _)) in stages.iter().enumerate() {
                let moved = (0..y.rows).any(|r| (a..b).any(|c| y.at(r, c) != prev.at(r, c)));
                if moved {
                    last = k;
                }
                prev = y.clone();
            }
            last
        };
        for w in ls.windows(2) {
            let (fine, coarse) = (&w[0], &w[1]);
            let done = last_change(fine.range.start, fine.range.end);
            let kept = last_change(fine.range.start - 1, fine.range.start);
            assert!(done < kept, "{kind:?} {fine:?}: {done} vs {kept}");
            assert!(done < last_change(coarse.range.start, coarse.range.end));
        }
        assert_eq!(last_change(0, ls[2].range.end), stages.len() - 1);
    }
    let maf = FlowSpec::preset(FlowKind::Maf, 4);
    assert!(latent_scales(&maf).is_none());
}

#[test]
fn conv_kernels_agree_and_old_configs_keep_im2col() {
    // a Glow's couplings evaluate their last convolution directly; the same weights through im2col (what a
    // config without the field gets) give the same densities up to f32 rounding
    use nflow::flows::FlowConfig;
    let spec = FlowSpec {
        hidden: 8,
        ..spec(FlowKind::Glow, ImageShape::new(1, 4, 4), 0)
    };
    let text = spec.architecture().unwrap().to_json_pretty();
    assert!(text.contains("\"conv\": \"direct\""), "{text}");
    let old = text.replace("\"conv\": \"direct\"", "\"conv\": \"im2col\"");
    let mut fast = FlowConfig::from_json(&text)
        .unwrap()
        .build::<f32>()
        .unwrap();
    use rand::Rng as _;
    let mut r = rng(8);
    for (_, p) in fast.named_params_mut() {
        if p.trainable {
            p.value_mut()
                .iter_mut()
                .for_each(|v| *v += r.gen_range(-0.2..0.2));
        }
    }
    let mut slow = FlowConfig::from_json(&old).unwrap().build::<f32>().unwrap();
    slow.restore(&fast.snapshot());
    let x: Mat<f32> = randn(&mut rng(2), 6, 16);
    let (a, b) = (fast.log_prob(&x, None), slow.log_prob(&x, None));
    assert_ne!(a, b, "the config's kernel reaches the convolutions");
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() < 1e-4 * (1.0 + v.abs()), "{u} vs {v}");
    }
    // a config written before the field existed reads as im2col
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("conv");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut without: serde_json::Value = serde_json::from_str(&text).unwrap();
    strip(&mut without);
    let back = FlowConfig::from_json(&without.to_string())
        .unwrap()
        .to_json_pretty();
    assert!(
        back.contains("\"conv\": \"im2col\"") && !back.contains("direct"),
        "{back}"
    );
}
