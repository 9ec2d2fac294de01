//! Per-column supports (`--bounds`, `--positive`, `--integer`): the data-space density of a trained model
//! integrates (an integer column: sums) to one over the column's support, samples stay inside it, and a saved
//! model gives the same log-densities after loading.

use nflow::data::{ColumnSupport, Preprocess, Table};
use nflow::flows::{FlowKind, FlowSpec};
use nflow::train::{TrainConfig, Trainer};
use nflow::Model;

/// 3000 rows: column "a" standard normal-ish, column "b" from `b(u, a)` with `u` uniform in (0, 1).
fn data(b: impl Fn(f64, f64) -> f64) -> Table {
    let mut s = 12345u64;
    let mut unif = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut v = Vec::new();
    for _ in 0..3000 {
        let a = (unif() + unif() + unif() - 1.5) * 2.0;
        let u = unif();
        v.push(a);
        v.push(b(u, a));
    }
    Table::new(vec!["a".into(), "b".into()], 3000, v, "support.csv")
}

fn fit(t: &Table, cs: ColumnSupport) -> Model {
    let mut spec = FlowSpec::preset(FlowKind::Maf, 2);
    spec.layers = 3;
    spec.hidden = 32;
    let cfg = TrainConfig {
        steps: Some(300),
        batch_size: 128,
        ..TrainConfig::default()
    };
    let pre = Preprocess {
        columns: vec![cs],
        ..Preprocess::default()
    };
    Trainer::new(cfg)
        .with_preprocess(Some(pre))
        .fit(spec, t, None, |_| {})
        .unwrap()
        .model
}

/// `∫∫ p(a, b) da db` by the midpoint rule, `b = g(t)` over `t` in `[t0, t1]` with `db = g'(t) dt`.
fn mass(model: &Model, t0: f64, t1: f64, g: impl Fn(f64) -> (f64, f64)) -> f64 {
    let (na, nb) = (300, 600);
    let (ha, hb) = (16.0 / na as f64, (t1 - t0) / nb as f64);
    let mut pts = Vec::with_capacity(na * nb * 2);
    let mut jac = Vec::with_capacity(na * nb);
    for j in 0..nb {
        let (b, db) = g(t0 + (j as f64 + 0.5) * hb);
        for i in 0..na {
            pts.push(-8.0 + (i as f64 + 0.5) * ha);
            pts.push(b);
            jac.push(db);
        }
    }
    let grid = Table::new(vec!["a".into(), "b".into()], na * nb, pts, "grid");
    let lp = model.log_prob_table(&grid).unwrap();
    lp.iter().zip(&jac).map(|(l, d)| l.exp() * d).sum::<f64>() * ha * hb
}

fn support(integer: bool, bounds: Option<(f64, f64)>, positive: bool) -> ColumnSupport {
    ColumnSupport {
        column: "b".into(),
        integer,
        bounds,
        positive,
    }
}

/// Samples inside the support, and a save / load round trip with bit-identical log-densities.
fn samples_and_round_trip(model: &Model, t: &Table, inside: impl Fn(f64) -> bool, name: &str) {
    let s = model.sample(4000, 3, None).unwrap();
    for r in 0..s.rows {
        let b = s.data[r * 2 + 1];
        assert!(inside(b), "{name}: sample {r} has b = {b}");
    }
    let dir = std::env::temp_dir().join(format!("nflow-support-{name}-{}", std::process::id()));
    model.save(&dir).unwrap();
    let back = Model::load(&dir).unwrap();
    assert_eq!(back.preprocess, model.preprocess);
    let rows: Vec<usize> = (0..200).collect();
    let some = t.take_rows(&rows);
    let (x, y) = (
        model.log_prob_table(&some).unwrap(),
        back.log_prob_table(&some).unwrap(),
    );
    assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bounded_column_integrates_to_one_and_samples_stay_inside() {
    // b in [2, 5], piled up near the upper bound (a Beta(3, 1) shape)
    let t = data(|u, a| 2.0 + 3.0 * u.cbrt() * (0.9 + 0.1 * a.tanh().abs()));
    let model = fit(&t, support(false, Some((2.0, 5.0)), false));
    let m = mass(&model, 2.0, 5.0, |b| (b, 1.0));
    assert!((m - 1.0).abs() < 0.01, "bounded: mass {m}");
    samples_and_round_trip(&model, &t, |b| (2.0..=5.0).contains(&b), "bounded");
}

#[test]
fn a_positive_column_integrates_to_one_and_samples_stay_positive() {
    // log-normal b: heavy right tail, mass near 0
    let t = data(|u, a| (2.0 * (u - 0.5) + 0.5 * a).exp());
    let model = fit(&t, support(false, None, true));
    // b = e^s over s in [-25, 25], db = e^s ds
    let m = mass(&model, -25.0, 25.0, |s| (s.exp(), s.exp()));
    assert!((m - 1.0).abs() < 0.01, "positive: mass {m}");
    samples_and_round_trip(&model, &t, |b| b > 0.0, "positive");
}

#[test]
fn an_integer_column_sums_to_one_and_samples_are_its_integers() {
    // ratings 1..=5 that depend on a
    let t = data(|u, a| {
        (1.0 + 5.0 * (0.5 * u + 0.5 * (a / 4.0 + 0.5).clamp(0.0, 0.999)))
            .floor()
            .min(5.0)
    });
    let mut model = fit(&t, support(true, Some((1.0, 5.0)), false));
    // P(a, v) = ∫_0^1 p(a, v + u) du: the model's density of the dequantised column, which is what the
    // integer column's model is without its noise (dequantisation has Jacobian 1), over [1, 6)
    let integer = model.preprocess.replace(Preprocess {
        columns: vec![support(false, Some((1.0, 6.0)), false)],
        ..Preprocess::default()
    });
    let m = mass(&model, 1.0, 6.0, |b| (b, 1.0));
    model.preprocess = integer;
    assert!((m - 1.0).abs() < 0.01, "integer: total probability {m}");
    samples_and_round_trip(
        &model,
        &t,
        |b| b.fract() == 0.0 && (1.0..=5.0).contains(&b),
        "integer",
    );
    // the reported log-likelihood of integer rows: the dequantised density at the fixed evaluation noise
    let lp = model.log_prob_table(&t.take_rows(&[0, 1, 2])).unwrap();
    assert!(lp.iter().all(|v| v.is_finite()));
    let frac = Table::new(vec!["a".into(), "b".into()], 1, vec![0.0, 2.5], "new.csv");
    let e = model.log_prob_table(&frac).unwrap_err().to_string();
    assert!(e.contains("new.csv row 0") && e.contains("'b'"), "{e}");
}
