//! `nflow bench`: the workloads of `shared/bench/peers.py step`, timed the same way (median ms over repeats
//! after warm-up), printed as one JSON line with the same fields so the two can be set side by side.

use anyhow::{bail, Result};
use clap::Args;
use nflow::engine::{randn, rng, Mat};
use nflow::flows::{FlowKind, FlowSpec};
use nflow::optim::{Adam, OptimConfig};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// w1: RealNVP 8 couplings, MLP 2x128, D=2, batch 512; w2: MAF 5 MADE layers, hidden 2x512, D=64,
    /// batch 256; w3: RealNVP 6 couplings, MLP 2x1024, D=784, batch 256; w4: spline autoregressive (nsf-ar)
    /// 5 layers, MADE 2x128, 8 bins, D=10, batch 256; w5: spline coupling (nsf-c) 5 layers, MLP 2x256, 8 bins,
    /// D=64, batch 256.
    /// (`tradeoff`: the MAF paper's density-vs-sampling table: RealNVP, MAF and IAF at each of --dims, timing
    /// log p of a batch and drawing a batch; prints JSON lines and a markdown table of ratios.)
    /// (`images`: Glow and RealNVP multi-scale on MNIST-sized images at the sizes of the README's runs:
    /// images per second for a training step, log p and sampling, batch --batch.)
    /// (`vi`: a reverse-KL training step (draw, sample through the inverses, target, backward, Adam) and a
    /// sample-with-log-density pass, for realnvp and nsf-c at D = 2 and 64: 5 layers, MLP 2x128, batch 256,
    /// against a standard normal target.)
    #[arg(long, default_value = "w1")]
    workload: String,
    /// tradeoff: dimensions.
    #[arg(long, value_delimiter = ',', default_value = "8,64,784")]
    dims: Vec<usize>,
    /// tradeoff: batch size.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// tradeoff: layers, each conditioner 2 x --hidden.
    #[arg(long, default_value_t = 5)]
    layers: usize,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Evaluate one-input ReLU conditioners as dense layers (off: their first two layers run as the
    /// piecewise-affine function they are, which is what 2-D coupling flows such as w1 get by default).
    #[arg(long)]
    no_piecewise: bool,
    #[arg(long, default_value_t = 30)]
    repeats: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Median ms of `f`: at least 3 runs, more while under ~2 s in total (at most `max`).
fn time_ms(max: usize, mut f: impl FnMut()) -> f64 {
    let mut v = Vec::new();
    let start = Instant::now();
    while v.len() < 3 || (v.len() < max && start.elapsed().as_secs_f64() < 2.0) {
        let t0 = Instant::now();
        f();
        v.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    median(v)
}

/// Times (ms) of `repeats` training steps (forward log-prob, backward, Adam at lr 1e-4) after `warmup`
/// untimed ones.
fn train_step_ms(
    flow: &mut nflow::flows::Flow<f32>,
    x: &Mat<f32>,
    warmup: usize,
    repeats: usize,
) -> Result<Vec<f64>> {
    let mut opt = Adam::new(OptimConfig {
        lr: 1e-4,
        ..OptimConfig::default()
    });
    let mut ts = Vec::new();
    let mut shards = nflow::train::DataParallel::new();
    for s in 0..warmup + repeats {
        let t0 = Instant::now();
        flow.zero_grad();
        shards.nll_backward(flow, x, None)?;
        let mut ps: Vec<_> = flow
            .named_params_mut()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        opt.step(&mut ps, 1e-4);
        if s >= warmup {
            ts.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(ts)
}

fn tradeoff(a: &BenchArgs) -> Result<()> {
    let kinds = [FlowKind::Realnvp, FlowKind::Maf, FlowKind::Iaf];
    let mut rows = Vec::new();
    for &d in &a.dims {
        if d < 2 {
            bail!("--dims: each dimension must be at least 2");
        }
        let mut r = rng(0);
        let x: Mat<f32> = randn(&mut r, a.batch, d);
        let mut row = Vec::new();
        for kind in kinds {
            let spec = FlowSpec {
                layers: a.layers,
                hidden: a.hidden,
                depth: 2,
                ..FlowSpec::preset(kind, d)
            };
            let mut flow = spec.build::<f32>()?;
            // non-trivial weights (the last layers start at zero): one training pass, then perturb everything
            flow.nll_backward(&x, None)?;
            let mut pr = rng(1);
            for (_, p) in flow.named_params_mut() {
                if p.trainable {
                    for k in 0..p.value().len() {
                        if p.is_free(k) {
                            p.value_mut()[k] +=
                                0.01 * (rand::Rng::gen_range(&mut pr, -1.0f32..1.0));
                        }
                    }
                }
            }
            flow.set_training(false);
            let lp = time_ms(a.repeats, || {
                std::hint::black_box(flow.log_prob(&x, None));
            });
            let mut sr = rng(2);
            let sm = time_ms(a.repeats, || {
                std::hint::black_box(flow.sample(a.batch, &mut sr, None));
            });
            let o = serde_json::json!({
                "mode": "tradeoff", "lib": "nflow", "flow": kind.to_string(), "dim": d, "batch": a.batch,
                "layers": a.layers, "hidden": a.hidden, "log_prob_ms": (lp * 1e3).round() / 1e3,
                "sample_ms": (sm * 1e3).round() / 1e3, "threads": rayon::current_num_threads(),
            });
            println!("{o}");
            row.push((lp, sm));
        }
        rows.push((d, row));
    }
    println!();
    println!(
        "| D | RealNVP log p | RealNVP sample | MAF log p | MAF sample | IAF log p | IAF sample |  (ms; in brackets: x RealNVP's time for the same job)"
    );
    println!("|---|---|---|---|---|---|---|");
    for (d, row) in rows {
        let (rl, rs) = row[0];
        let cell = |v: f64, base: f64| format!("{v:.2} ({:.1}x)", v / base);
        println!(
            "| {d} | {rl:.2} | {rs:.2} | {} | {} | {} | {} |",
            cell(row[1].0, rl),
            cell(row[1].1, rs),
            cell(row[2].0, rl),
            cell(row[2].1, rs)
        );
    }
    Ok(())
}

/// w6: Glow on MNIST-sized images (1x28x28, 2 levels of 8 steps, conditioners 64 channels wide, a standard
/// normal prior on every level), batch 64, on pixels uniform in [0, 1) (dequantised data's range): the same
/// JSON fields as w1-w5 and the training images per second, beside `bench/glow_normflows.py`.
fn w6(a: &BenchArgs) -> Result<()> {
    use nflow::transforms::ImageShape;
    use rand::Rng as _;
    let shape = ImageShape::new(1, 28, 28);
    let b = 64;
    let spec = FlowSpec {
        layers: 8,
        hidden: 64,
        scales: 2,
        image: Some(shape),
        ..FlowSpec::preset(FlowKind::Glow, shape.dim())
    };
    let mut r = rng(0);
    let x = Mat::<f32>::from_f64(
        b,
        shape.dim(),
        &(0..b * shape.dim())
            .map(|_| r.gen::<f64>())
            .collect::<Vec<_>>(),
    );
    let mut flow = spec.build::<f32>()?;
    let ts = train_step_ms(&mut flow, &x, a.warmup, a.repeats.min(20))?;
    flow.set_training(false);
    let lp = time_ms(10, || {
        std::hint::black_box(flow.log_prob(&x, None));
    });
    let mut sr = rng(1);
    let sm = time_ms(10, || {
        std::hint::black_box(flow.sample(b, &mut sr, None));
    });
    let step = median(ts);
    let o = serde_json::json!({
        "mode": "step", "lib": "nflow", "workload": "w6",
        "train_step_ms": (step * 1e3).round() / 1e3,
        "log_prob_ms": (lp * 1e3).round() / 1e3,
        "sample_ms": (sm * 1e3).round() / 1e3,
        "train_images_per_s": (b as f64 / step * 1e3).round(),
        "batch": b, "params": flow.num_params(), "threads": rayon::current_num_threads(),
    });
    println!("{o}");
    Ok(())
}

/// Images per second of training (forward + backward + Adam), log p and sampling for the image flows.
fn images(a: &BenchArgs) -> Result<()> {
    use nflow::flows::Permute;
    use nflow::transforms::ImageShape;
    let shape = ImageShape::new(1, 28, 28);
    let b = a.batch;
    let glow = |k: usize, w: usize, permute: Permute| FlowSpec {
        layers: k,
        hidden: w,
        split_prior: true,
        permute,
        image: Some(shape),
        ..FlowSpec::preset(FlowKind::Glow, shape.dim())
    };
    let cases = [
        ("glow K=8 W=64 (1x1)", glow(8, 64, Permute::Conv1x1)),
        (
            "glow K=4 W=32 (ablation size)",
            glow(4, 32, Permute::Conv1x1),
        ),
        (
            "realnvp-multiscale K=3 W=32 blocks=1",
            FlowSpec {
                layers: 3,
                hidden: 32,
                depth: 1,
                image: Some(shape),
                ..FlowSpec::preset(FlowKind::RealnvpMultiscale, shape.dim())
            },
        ),
    ];
    let x: Mat<f32> = randn(&mut rng(0), b, shape.dim());
    println!("| flow | params | train images/s | log p images/s | sample images/s |");
    println!("|---|---|---|---|---|");
    for (name, spec) in cases {
        let mut flow = spec.build::<f32>()?;
        let step_ms = train_step_ms(&mut flow, &x, a.warmup.min(2), a.repeats.clamp(3, 10))?;
        flow.set_training(false);
        let lp = time_ms(5, || {
            std::hint::black_box(flow.log_prob(&x, None));
        });
        let mut sr = rng(2);
        let sm = time_ms(5, || {
            std::hint::black_box(flow.sample(b, &mut sr, None));
        });
        let tr = b as f64 / median(step_ms) * 1e3;
        let o = serde_json::json!({
            "mode": "images", "lib": "nflow", "flow": name, "batch": b, "params": flow.num_params(),
            "train_images_per_s": tr.round(), "log_prob_images_per_s": (b as f64 / lp * 1e3).round(),
            "sample_images_per_s": (b as f64 / sm * 1e3).round(), "threads": rayon::current_num_threads(),
        });
        eprintln!("{o}");
        println!(
            "| {name} | {} | {tr:.0} | {:.0} | {:.0} |",
            flow.num_params(),
            b as f64 / lp * 1e3,
            b as f64 / sm * 1e3
        );
    }
    Ok(())
}

/// The reverse-KL workload: per flow and dimension, the median ms of a training step and of drawing a batch with
/// its log-density.
fn vi(a: &BenchArgs) -> Result<()> {
    use nflow::train::{reverse_kl_backward, targets::Gaussian};
    let b = 256;
    for (kind, name) in [(FlowKind::Realnvp, "realnvp"), (FlowKind::NsfC, "nsf-c")] {
        for d in [2usize, 64] {
            let target = Gaussian::new(d, 0.0, 1.0)?;
            let spec = FlowSpec {
                layers: 5,
                hidden: 128,
                depth: 2,
                ..FlowSpec::preset(kind, d)
            };
            let mut flow = spec.build::<f32>()?;
            let mut opt = Adam::new(OptimConfig {
                lr: 1e-4,
                ..OptimConfig::default()
            });
            let mut r = rng(0);
            let mut ts = Vec::new();
            for s in 0..a.warmup + a.repeats {
                let t0 = Instant::now();
                let z = flow.sample_noise(b, &mut r, None);
                flow.zero_grad();
                reverse_kl_backward(&mut flow, &target, &z, None)?;
                let mut ps: Vec<_> = flow
                    .named_params_mut()
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect();
                opt.step(&mut ps, 1e-4);
                if s >= a.warmup {
                    ts.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            flow.set_training(false);
            let mut sr = rng(1);
            let sm = time_ms(a.repeats.max(3), || {
                std::hint::black_box(flow.sample_and_log_prob(b, &mut sr, None));
            });
            let o = serde_json::json!({
                "mode": "vi", "lib": "nflow", "flow": name, "dim": d, "batch": b, "params": flow.num_params(),
                "vi_step_ms": (median(ts) * 1e3).round() / 1e3, "sample_log_prob_ms": (sm * 1e3).round() / 1e3,
                "threads": rayon::current_num_threads(),
            });
            println!("{o}");
        }
    }
    Ok(())
}

pub fn run(a: BenchArgs) -> Result<()> {
    nflow::nn::mlp::set_piecewise_default(!a.no_piecewise);
    if a.workload == "tradeoff" {
        return tradeoff(&a);
    }
    if a.workload == "images" {
        return images(&a);
    }
    if a.workload == "vi" {
        return vi(&a);
    }
    if a.workload == "w6" {
        return w6(&a);
    }
    let (kind, d, layers, hidden, b) = match a.workload.as_str() {
        "w1" => (FlowKind::Realnvp, 2, 8, 128, 512),
        "w2" => (FlowKind::Maf, 64, 5, 512, 256),
        "w3" => (FlowKind::Realnvp, 784, 6, 1024, 256),
        "w4" => (FlowKind::NsfAr, 10, 5, 128, 256),
        "w5" => (FlowKind::NsfC, 64, 5, 256, 256),
        w => bail!("unknown workload '{w}' (known: w1, w2, w3, w4, w5, w6, tradeoff, images, vi)"),
    };
    if a.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    // Same synthetic data as peers.py: n ~ N(0, I), x[:, 1:] = n[:, 1:] + 0.5 (n[:, :-1]^2 - 1).
    let mut r = rng(0);
    let n: Mat<f32> = randn(&mut r, b, d);
    let mut x = n.clone();
    for i in 0..b {
        for j in 1..d {
            x.data[i * d + j] = n.at(i, j) + 0.5 * (n.at(i, j - 1).powi(2) - 1.0);
        }
    }
    let spec = FlowSpec {
        layers,
        hidden,
        depth: 2,
        ..FlowSpec::preset(kind, d)
    };
    let mut flow = spec.build::<f32>()?;
    let ts = train_step_ms(&mut flow, &x, a.warmup, a.repeats)?;
    flow.set_training(false);
    let (mut tf, mut tsm) = (Vec::new(), Vec::new());
    let mut sr = rng(1);
    for _ in 0..(a.repeats / 2).max(5) {
        let t0 = Instant::now();
        let lp = flow.log_prob(&x, None);
        std::hint::black_box(lp);
        tf.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        let s = flow.sample(b, &mut sr, None);
        std::hint::black_box(s);
        tsm.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let o = serde_json::json!({
        "mode": "step", "lib": "nflow", "workload": a.workload,
        "train_step_ms": (median(ts) * 1e3).round() / 1e3,
        "log_prob_ms": (median(tf) * 1e3).round() / 1e3,
        "sample_ms": (median(tsm) * 1e3).round() / 1e3,
        "batch": b, "params": flow.num_params(), "threads": rayon::current_num_threads(),
        "piecewise": !a.no_piecewise,
    });
    println!("{o}");
    Ok(())
}
