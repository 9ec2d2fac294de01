//! Built-in 2-D toy data sets (the usual ones of the flows literature, after
//! FFJORD's `toy_data.py`). Every generator returns a [`Table`] with columns
//! `["x", "y"]` and source `toy:NAME`, and is driven by
//! `ChaCha8Rng::seed_from_u64(seed)`: the same `(name, n, seed)` gives the
//! same data bit for bit.
//!
//! `moons`, `8gaussians`, `checkerboard` and `rings` follow the definitions of
//! `shared/bench/make_toy.py` (which generated the reference CSVs under
//! `shared/data/toy/`) exactly, so their distributions are the ones whose best
//! achievable log-likelihood is in `limits.json`:
//!
//! * `moons`: two half circles of radius 1 in sklearn's layout (upper:
//!   `(cos t, sin t)`, lower: `(1 - cos t, 0.5 - sin t)`, `t ~ U(0, pi)`, each
//!   half with probability 1/2), plus isotropic Gaussian noise of sd 0.1.
//! * `8gaussians`: 8 isotropic Gaussians of sd 0.2, centres `2 (cos a, sin a)`
//!   for `a = k pi / 4`, equal weights.
//! * `checkerboard`: uniform on the 8 dark unit squares `[i-2, i-1) x [j-2, j-1)`,
//!   `i + j` even, of a 4x4 board over `[-2, 2]^2`.
//! * `rings`: 4 concentric circles of radii 0.5, 1, 1.5, 2 (equal weights,
//!   uniform angle), plus Gaussian noise of sd 0.08.
//!
//! The other three follow FFJORD:
//!
//! * `circles`: sklearn's `make_circles(factor=0.5, noise=0.08) * 3`: a circle
//!   of radius 1 or 0.5 (probability 1/2 each), uniform angle, noise sd 0.08,
//!   then everything scaled by 3.
//! * `pinwheel`: 5 arms; radial coordinate `1 + 0.3 z1`, tangential `0.1 z2`,
//!   rotated by `2 pi k / 5 + 0.25 exp(radial)`, scaled by 2.
//! * `2spirals`: two interleaved spirals, `r = sqrt(u) * 3 pi`,
//!   `(-cos r * r + u1/2, sin r * r + u2/2)` and its negative, divided by 3,
//!   plus Gaussian noise of sd 0.1.
//!
//! Where FFJORD draws fixed class counts (`n // 2`, `n // 5`) each point here
//! draws its class at random, so any `n` is honoured; the distribution is the same.

use std::f64::consts::PI;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

use crate::data::{DataError, Result, Table};

/// Names of the built-in toy data sets, as accepted by [`toy`] and `toy:NAME` sources.
pub const TOY_NAMES: &[&str] = &[
    "moons",
    "circles",
    "8gaussians",
    "checkerboard",
    "pinwheel",
    "2spirals",
    "rings",
];

/// Generates `n` samples of the toy data set `name` (one of [`TOY_NAMES`],
/// case-insensitive) with the given seed.
pub fn toy(name: &str, n: usize, seed: u64) -> Result<Table> {
    let key = name.trim().to_ascii_lowercase();
    let gen: fn(&mut ChaCha8Rng) -> (f64, f64) = match key.as_str() {
        "moons" => moons,
        "circles" => circles,
        "8gaussians" => gaussians8,
        "checkerboard" => checkerboard,
        "pinwheel" => pinwheel,
        "2spirals" => spirals2,
        "rings" => rings,
        _ => {
            return Err(DataError::UnknownToy {
                name: name.to_string(),
                known: TOY_NAMES.join(", "),
            })
        }
    };
    if n == 0 {
        return Err(DataError::InvalidArgument(format!(
            "toy data set '{key}': number of samples must be at least 1"
        )));
    }
    super::check_room((n as u128).saturating_mul(2), &format!("toy:{key}:{n}"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let (x, y) = gen(&mut rng);
        data.push(x);
        data.push(y);
    }
    Ok(Table::new(
        vec!["x".to_string(), "y".to_string()],
        n,
        data,
        format!("toy:{key}"),
    ))
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// Uniform on [lo, hi).
fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    Uniform::new(lo, hi).sample(rng)
}

fn moons(rng: &mut ChaCha8Rng) -> (f64, f64) {
    let upper = rng.gen_range(0..2) == 0;
    let t = uniform(rng, 0.0, PI);
    let (x, y) = if upper {
        (t.cos(), t.sin())
    } else {
        (1.0 - t.cos(), 0.5 - t.sin())
    };
    (x + 0.1 * normal(rng), y + 0.1 * normal(rng))
}

fn circles(rng: &mut ChaCha8Rng) -> (f64, f64) {
    let r = if rng.gen_range(0..2) == 0 { 1.0 } else { 0.5 };
    let t = uniform(rng, 0.0, 2.0 * PI);
    let x = r * t.cos() + 0.08 * normal(rng);
    let y = r * t.sin() + 0.08 * normal(rng);
    (3.0 * x, 3.0 * y)
}

fn gaussians8(rng: &mut ChaCha8Rng) -> (f64, f64) {
    let a = rng.gen_range(0..8) as f64 * PI / 4.0;
    (
        2.0 * a.cos() + 0.2 * normal(rng),
        2.0 * a.sin() + 0.2 * normal(rng),
    )
}

/// The 8 dark squares of make_toy.py: (i, j) in 0..4 with (i + j) even, minus 2,
/// in the same order (i outer, j inner).
const CHECKER_SQUARES: [(f64, f64); 8] = [
    (-2.0, -2.0),
    (-2.0, 0.0),
    (-1.0, -1.0),
    (-1.0, 1.0),
    (0.0, -2.0),
    (0.0, 0.0),
    (1.0, -1.0),
    (1.0, 1.0),
];

fn checkerboard(rng: &mut ChaCha8Rng) -> (f64, f64) {
    let (sx, sy) = CHECKER_SQUARES[rng.gen_range(0..8)];
    (sx + uniform(rng, 0.0, 1.0), sy + uniform(rng, 0.0, 1.0))
}

const RING_RADII: [f64; 4] = [0.5, 1.0, 1.5, 2.0];

fn rings(rng: &mut ChaCha8Rng) -> (f64, f64) {
    let r = RING_RADII[rng.gen_range(0..4)];
    let t = uniform(rng, 0.0, 2.0 * PI);
    (
        r * t.cos() + 0.08 * normal(rng),
        r * t.sin() + 0.08 * normal(rng),
    )
}

fn pinwheel(rng: &mut ChaCha8Rng) -> (f64, f64) {
    const RADIAL_STD: f64 = 0.3;
    const TANGENTIAL_STD: f64 = 0.1;
    const NUM_CLASSES: usize = 5;
    const RATE: f64 = 0.25;
    let k = rng.gen_range(0..NUM_CLASSES);
    let f0 = 1.0 + RADIAL_STD * normal(rng);
    let f1 = TANGENTIAL_STD * normal(rng);
    let angle = 2.0 * PI * k as f64 / NUM_CLASSES as f64 + RATE * f0.exp();
    let (s, c) = angle.sin_cos();
    // FFJORD: features @ [[c, -s], [s, c]] (row vector times rotation).
    (2.0 * (f0 * c + f1 * s), 2.0 * (-f0 * s + f1 * c))
}

fn spirals2(rng: &mut ChaCha8Rng) -> (f64, f64) {
    let r = uniform(rng, 0.0, 1.0).sqrt() * 540.0 * (2.0 * PI) / 360.0;
    let mut x = -r.cos() * r + uniform(rng, 0.0, 1.0) * 0.5;
    let mut y = r.sin() * r + uniform(rng, 0.0, 1.0) * 0.5;
    if rng.gen_range(0..2) == 1 {
        x = -x;
        y = -y;
    }
    (x / 3.0 + 0.1 * normal(rng), y / 3.0 + 0.1 * normal(rng))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::read_csv;
    use std::path::Path;

    fn col_stats(t: &Table, c: usize) -> (f64, f64) {
        let n = t.rows as f64;
        let m = (0..t.rows).map(|i| t.row(i)[c]).sum::<f64>() / n;
        let v = (0..t.rows).map(|i| (t.row(i)[c] - m).powi(2)).sum::<f64>() / n;
        (m, v.sqrt())
    }

    #[test]
    fn all_generators_shape_finite_reproducible() {
        for &name in TOY_NAMES {
            let a = toy(name, 1000, 7).expect("generate");
            assert_eq!(a.rows, 1000, "{name}");
            assert_eq!(a.cols, 2, "{name}");
            assert_eq!(a.data.len(), 2000, "{name}");
            assert_eq!(a.columns, vec!["x".to_string(), "y".to_string()]);
            assert_eq!(a.source, format!("toy:{name}"));
            assert!(a.data.iter().all(|v| v.is_finite()), "{name}");
            a.check_finite().expect("finite");
            let b = toy(name, 1000, 7).expect("generate");
            assert_eq!(
                a.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{name}: same seed must give identical data"
            );
            let c = toy(name, 1000, 8).expect("generate");
            assert_ne!(a.data, c.data, "{name}: different seed, same data");
            // not degenerate: both coordinates spread out
            for k in 0..2 {
                let (_, s) = col_stats(&a, k);
                assert!(s > 0.1, "{name} column {k} std {s}");
            }
        }
    }

    #[test]
    fn unknown_and_empty() {
        let e = toy("foo", 10, 0).unwrap_err().to_string();
        assert!(e.contains("unknown toy data set 'foo'"), "{e}");
        assert!(e.contains("moons") && e.contains("2spirals"), "{e}");
        let e = toy("moons", 0, 0).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        // case-insensitive
        assert_eq!(toy("MOONS", 5, 1).unwrap(), toy("moons", 5, 1).unwrap());
    }

    #[test]
    fn eight_gaussians_cluster_near_centres() {
        let t = toy("8gaussians", 4000, 3).unwrap();
        let mut counts = [0usize; 8];
        for i in 0..t.rows {
            let p = t.row(i);
            let (k, d) = (0..8)
                .map(|k| {
                    let a = k as f64 * PI / 4.0;
                    (
                        k,
                        ((p[0] - 2.0 * a.cos()).powi(2) + (p[1] - 2.0 * a.sin()).powi(2)).sqrt(),
                    )
                })
                .fold((0, f64::INFINITY), |b, x| if x.1 < b.1 { x } else { b });
            // sd 0.2 per coordinate: distance > 1.2 is ~ exp(-18), never happens
            assert!(d < 1.2, "point {p:?} far from every centre ({d})");
            counts[k] += 1;
        }
        for c in counts {
            assert!((400..600).contains(&c), "uneven cluster counts {counts:?}");
        }
        // mean squared distance to nearest centre ~ 2 * 0.2^2
        let r: f64 = (0..t.rows)
            .map(|i| (t.row(i)[0].powi(2) + t.row(i)[1].powi(2)).sqrt())
            .sum::<f64>()
            / t.rows as f64;
        assert!((r - 2.0).abs() < 0.05, "mean radius {r}");
    }

    #[test]
    fn checkerboard_points_in_dark_squares() {
        let t = toy("checkerboard", 4000, 5).unwrap();
        let mut counts = [[0usize; 4]; 4];
        for i in 0..t.rows {
            let p = t.row(i);
            let (fi, fj) = ((p[0] + 2.0).floor(), (p[1] + 2.0).floor());
            assert!(
                (0.0..4.0).contains(&fi) && (0.0..4.0).contains(&fj),
                "{p:?}"
            );
            let (ci, cj) = (fi as usize, fj as usize);
            assert_eq!((ci + cj) % 2, 0, "point {p:?} in a light square");
            counts[ci][cj] += 1;
        }
        for (i, row) in counts.iter().enumerate() {
            for (j, &c) in row.iter().enumerate() {
                if (i + j) % 2 == 0 {
                    assert!((400..600).contains(&c), "square ({i},{j}) has {c}");
                }
            }
        }
    }

    #[test]
    fn rings_radii_and_circles_radii() {
        let t = toy("rings", 4000, 9).unwrap();
        for i in 0..t.rows {
            let r = (t.row(i)[0].powi(2) + t.row(i)[1].powi(2)).sqrt();
            let d = RING_RADII
                .iter()
                .map(|&q| (r - q).abs())
                .fold(f64::INFINITY, f64::min);
            assert!(d < 0.5, "radius {r} far from every ring");
        }
        // circles: radii 1.5 and 3 (after the x3 scaling), noise sd 0.24, half each
        let t = toy("circles", 4000, 9).unwrap();
        let (mut inner, mut outer) = (Vec::new(), Vec::new());
        for i in 0..t.rows {
            let r = (t.row(i)[0].powi(2) + t.row(i)[1].powi(2)).sqrt();
            assert!(r < 4.5, "circles radius {r}");
            if r < 2.25 {
                inner.push(r);
            } else {
                outer.push(r);
            }
        }
        assert!(
            inner.len() > 1800 && outer.len() > 1800,
            "{} {}",
            inner.len(),
            outer.len()
        );
        let mi = inner.iter().sum::<f64>() / inner.len() as f64;
        let mo = outer.iter().sum::<f64>() / outer.len() as f64;
        assert!(
            (mi - 1.5).abs() < 0.05 && (mo - 3.0).abs() < 0.05,
            "{mi} {mo}"
        );
    }

    #[test]
    fn pinwheel_and_spirals_symmetry() {
        // pinwheel: 5-fold symmetric around the origin, radius ~ 2 * (1 +- 0.3)
        let t = toy("pinwheel", 5000, 2).unwrap();
        for k in 0..2 {
            let (m, _) = col_stats(&t, k);
            assert!(m.abs() < 0.1, "pinwheel mean {m}");
        }
        let mr = (0..t.rows)
            .map(|i| (t.row(i)[0].powi(2) + t.row(i)[1].powi(2)).sqrt())
            .sum::<f64>()
            / t.rows as f64;
        assert!((mr - 2.0).abs() < 0.2, "pinwheel mean radius {mr}");
        // 2spirals: point symmetric, radius at most (3 pi + 0.71) / 3 + noise
        let t = toy("2spirals", 5000, 2).unwrap();
        for k in 0..2 {
            let (m, _) = col_stats(&t, k);
            assert!(m.abs() < 0.15, "2spirals mean {m}");
        }
        for i in 0..t.rows {
            let r = (t.row(i)[0].powi(2) + t.row(i)[1].powi(2)).sqrt();
            assert!(r < 4.0, "2spirals radius {r}");
        }
    }

    #[test]
    fn matches_shared_reference_csvs() {
        let dir = Path::new("/work/shared/data/toy");
        for name in ["moons", "8gaussians", "checkerboard", "rings"] {
            let p = dir.join(format!("{name}-train.csv"));
            if !p.exists() {
                eprintln!("skipping {name}: {} absent", p.display());
                continue;
            }
            let reference = read_csv(&p).expect("read shared csv");
            assert_eq!(reference.columns, vec!["x", "y"]);
            let ours = toy(name, 20000, 11).unwrap();
            for k in 0..2 {
                let (m0, s0) = col_stats(&reference, k);
                let (m1, s1) = col_stats(&ours, k);
                assert!((m0 - m1).abs() < 0.04, "{name} col {k}: mean {m1} vs {m0}");
                assert!((s0 - s1).abs() < 0.04, "{name} col {k}: std {s1} vs {s0}");
            }
            // 4th moment of radius, sensitive to the radial layout
            let r4 = |t: &Table| {
                (0..t.rows)
                    .map(|i| (t.row(i)[0].powi(2) + t.row(i)[1].powi(2)).powi(2))
                    .sum::<f64>()
                    / t.rows as f64
            };
            let (a, b) = (r4(&reference), r4(&ours));
            assert!((a - b).abs() / a < 0.05, "{name}: E r^4 {b} vs {a}");
        }
    }
}
