//! Fixed element-wise preprocessing applied before standardisation, with its exact log-Jacobian so that
//! log-likelihoods stay in the units of the data the user gave:
//!
//! - uniform dequantisation (Uria et al. 2013; Theis et al. 2016): `x = v + u`, `u ~ U(0, 1)`, for integer data
//!   `v` (Jacobian 1; the density of `x` bounds the probability of `v` from below);
//! - the logit of RealNVP / MAF: `y = logit(λ + (1 - 2λ) x / K)` for `x` in `[0, K]` (K = `levels`, 256 for 8-bit
//!   pixels), `log|dy/dx| = log(1 - 2λ) - log K - log p - log(1 - p)` with `p = λ + (1 - 2λ) x / K`.
//!
//! - `bits = n` (Glow's n-bit images): 8-bit values are first reduced to `n` bits, `v -> floor(v / 2^(8-n))`, so
//!   the model (and every reported likelihood and bits/dim) is of the `n`-bit data; `levels` is then `2^n`.
//!
//! For dequantised 8-bit data the resulting density over `[0, 256)^D` gives bits/dim directly:
//! `-log p(x) / (D ln 2)`.
//!
//! Per column ([`ColumnSupport`], for tabular data whose columns have a support other than the real line):
//!
//! - `integer`: uniform dequantisation of that column, `x = v + u` with `u ~ U(0, 1)` (open), so its reported
//!   likelihoods are of the integers (a lower bound on `log P(v)`, as for pixels) and its samples are floored
//!   back to integers;
//! - `bounds (a, b)`: `y = logit(p)`, `p = λ + (1 - 2λ)(x - a)/(b - a)` with `λ = 1e-6` (the bounds
//!   themselves stay finite), `log|dy/dx| = log(1 - 2λ) - log(b - a) - log p - log(1 - p)`; an integer column's
//!   bounds cover its dequantised values, `[a, b + 1]`;
//! - `positive`: `y = log x`, `log|dy/dx| = -log x` (an integer column may then hold 0: `v + u > 0`).
//!
//! Samples are mapped back inside the support.

use super::{DataError, Result, Table};
use crate::engine::rng;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Add U(0, 1) noise to every value.
    pub dequantize: bool,
    /// Range `[0, levels]` of the (dequantised) values, used by the logit.
    pub levels: f64,
    /// `Some(λ)`: apply `logit(λ + (1 - 2λ) x / levels)`.
    pub logit: Option<f64>,
    /// `Some(n)`: reduce 8-bit values to `n` bits first.
    #[serde(default)]
    pub bits: Option<u32>,
    /// Per-column supports (tabular data), applied instead of the element-wise options above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnSupport>,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            dequantize: false,
            levels: 256.0,
            logit: None,
            bits: None,
            columns: Vec::new(),
        }
    }
}

/// The squeeze of the bounded map: the bounds themselves map to `±logit(1 - λ) ≈ ±13.8`.
pub const BOUNDS_SQUEEZE: f64 = 1e-6;

/// The support of one column (by name): integer-valued, within bounds, positive (bounds and positive exclude
/// each other).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnSupport {
    pub column: String,
    /// Integer values, dequantised (likelihoods of the integers; samples floored).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub integer: bool,
    /// Values in `[low, high]` (an integer column: integers in `low..=high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<(f64, f64)>,
    /// Values above 0 (an integer column: at least 0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub positive: bool,
}

impl ColumnSupport {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(DataError::InvalidArgument(format!(
                "column '{}': {m}",
                self.column
            )))
        };
        if let Some((a, b)) = self.bounds {
            if !(a.is_finite() && b.is_finite() && a < b) {
                return bad(format!("bounds {a}:{b} need finite low < high"));
            }
            if self.positive {
                return bad("give bounds or positive, not both".into());
            }
        }
        if !(self.integer || self.positive || self.bounds.is_some()) {
            return bad("no support given".into());
        }
        Ok(())
    }

    /// The continuous range the map sees: an integer column's `[a, b + 1]`.
    fn range(&self) -> Option<(f64, f64)> {
        self.bounds
            .map(|(a, b)| if self.integer { (a, b + 1.0) } else { (a, b) })
    }

    /// A readable description (`nflow info`).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if self.integer {
            s.push_str("integer (dequantised)");
        }
        let sep = if s.is_empty() { "" } else { ", " };
        if let Some((a, b)) = self.bounds {
            s.push_str(&format!("{sep}in [{a}, {b}] (logit map)"));
        }
        if self.positive {
            s.push_str(&format!(
                "{sep}{} (log map)",
                if self.integer {
                    "at least 0"
                } else {
                    "positive"
                }
            ));
        }
        s
    }
}

impl Preprocess {
    /// New noise per batch in training: dequantisation of every value or of some columns.
    pub fn dequantizes(&self) -> bool {
        self.dequantize || self.columns.iter().any(|c| c.integer)
    }

    pub fn validate(&self) -> Result<()> {
        if !self.columns.is_empty()
            && (self.dequantize || self.logit.is_some() || self.bits.is_some())
        {
            return Err(DataError::InvalidArgument(
                "per-column supports (bounds, positive, integer) cannot be combined with dequantisation / logit \
                 / n-bit preprocessing of every value"
                    .into(),
            ));
        }
        for (i, c) in self.columns.iter().enumerate() {
            c.validate()?;
            if self.columns[..i].iter().any(|o| o.column == c.column) {
                return Err(DataError::InvalidArgument(format!(
                    "column '{}' has two support entries",
                    c.column
                )));
            }
        }
        if !(self.levels.is_finite() && self.levels > 0.0) {
            return Err(DataError::InvalidArgument(format!(
                "levels must be positive, got {}",
                self.levels
            )));
        }
        if let Some(b) = self.bits {
            if !(1..=8).contains(&b) {
                return Err(DataError::InvalidArgument(format!(
                    "bits must be in 1..=8, got {b}"
                )));
            }
        }
        if let Some(l) = self.logit {
            if !(l > 0.0 && l < 0.5) {
                return Err(DataError::InvalidArgument(format!(
                    "logit λ must be in (0, 0.5), got {l}"
                )));
            }
        }
        Ok(())
    }

    /// Transform `t` in place (dequantisation noise drawn from `seed`); returns `log|det|` of the
    /// deterministic part per row. Values outside `[0, levels]` for the logit are an error naming the row
    /// and column.
    pub fn apply(&self, t: &mut Table, seed: u64) -> Result<Vec<f64>> {
        self.validate()?;
        let mut r = rng(seed ^ 0x6465_7175);
        let k = self.levels;
        let mut ld = vec![0.0; t.rows];
        for row in 0..t.rows {
            for c in 0..t.cols {
                let v = &mut t.data[row * t.cols + c];
                if let Some(b) = self.bits {
                    if !(0.0..=255.0).contains(v) || v.fract() != 0.0 {
                        return Err(DataError::InvalidArgument(format!(
                            "{} row {row} (0-based), column '{}': {} is not an 8-bit value (0..255), which \
                             --n-bits expects",
                            t.source, t.columns[c], v
                        )));
                    }
                    *v = (*v / f64::from(1u32 << (8 - b))).floor();
                }
                // with dequantisation every draw must stay in range: v + u <= K for all u < 1
                let top = if self.dequantize { k - 1.0 } else { k };
                if self.logit.is_some() && !(0.0..=top).contains(v) {
                    return Err(DataError::InvalidArgument(format!(
                        "{} row {row} (0-based), column '{}': {} is outside [0, {top}], the range the logit \
                         transform accepts with --levels {k}{}",
                        t.source,
                        t.columns[c],
                        v,
                        if self.dequantize { " and dequantisation" } else { "" }
                    )));
                }
                if self.dequantize {
                    *v += r.gen_range(0.0..1.0);
                }
                if let Some(lam) = self.logit {
                    let p = lam + (1.0 - 2.0 * lam) * *v / k;
                    *v = p.ln() - (-p).ln_1p();
                    ld[row] += (1.0 - 2.0 * lam).ln() - k.ln() - p.ln() - (-p).ln_1p();
                }
            }
        }
        for cs in &self.columns {
            let c = self.column_index(cs, t)?;
            for row in 0..t.rows {
                let v = &mut t.data[row * t.cols + c];
                let bad = |m: String| {
                    Err(DataError::InvalidArgument(format!(
                        "{} row {row} (0-based), column '{}': {m}",
                        t.source, cs.column
                    )))
                };
                if cs.integer && v.fract() != 0.0 {
                    return bad(format!("{v} is not an integer, which --integer expects"));
                }
                if let Some((a, b)) = cs.bounds {
                    if !(a..=b).contains(v) {
                        return bad(format!("{v} is outside the bounds [{a}, {b}]"));
                    }
                }
                if cs.positive && (*v < 0.0 || (*v == 0.0 && !cs.integer)) {
                    return bad(format!(
                        "{v} is not {}, which --positive expects",
                        if cs.integer { "at least 0" } else { "positive" }
                    ));
                }
                if cs.integer {
                    *v += r.gen::<f64>().max(f64::EPSILON);
                }
                if let Some((a, b)) = cs.range() {
                    let lam = BOUNDS_SQUEEZE;
                    let p = lam + (1.0 - 2.0 * lam) * (*v - a) / (b - a);
                    *v = p.ln() - (-p).ln_1p();
                    ld[row] += (1.0 - 2.0 * lam).ln() - (b - a).ln() - p.ln() - (-p).ln_1p();
                } else if cs.positive {
                    ld[row] -= v.ln();
                    *v = v.ln();
                }
            }
        }
        Ok(ld)
    }

    /// The index of a support's column in `t` (an error naming it when `t` has no such column).
    fn column_index(&self, cs: &ColumnSupport, t: &Table) -> Result<usize> {
        t.columns
            .iter()
            .position(|c| *c == cs.column)
            .ok_or_else(|| {
                DataError::InvalidArgument(format!(
                    "{}: no column '{}' (its support was given; columns: {})",
                    t.source,
                    cs.column,
                    t.columns.join(", ")
                ))
            })
    }

    /// Back to the data's space (samples): the inverse logit. Dequantisation is not undone: samples are
    /// continuous values in `[0, levels]` (floor them for integer data).
    pub fn invert(&self, t: &mut Table) {
        if let Some(lam) = self.logit {
            let k = self.levels;
            for v in &mut t.data {
                let p = 1.0 / (1.0 + (-*v).exp());
                *v = ((p - lam) / (1.0 - 2.0 * lam) * k).clamp(0.0, k);
            }
        }
        if let Some(b) = self.bits {
            let f = f64::from(1u32 << (8 - b));
            t.data.iter_mut().for_each(|v| *v *= f);
        }
        for cs in &self.columns {
            let Ok(c) = self.column_index(cs, t) else {
                continue;
            };
            for row in 0..t.rows {
                let v = &mut t.data[row * t.cols + c];
                if let Some((a, b)) = cs.range() {
                    let lam = BOUNDS_SQUEEZE;
                    let p = 1.0 / (1.0 + (-*v).exp());
                    *v = (a + (p - lam) / (1.0 - 2.0 * lam) * (b - a)).clamp(a, b);
                } else if cs.positive {
                    // exp underflows to 0 only below -745: the smallest positive value instead
                    *v = v.exp().max(f64::MIN_POSITIVE);
                }
                if cs.integer {
                    *v = v.floor();
                    if let Some((a, b)) = cs.bounds {
                        *v = v.clamp(a, b);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_jacobian_matches_finite_differences_and_inverts() {
        let p = Preprocess {
            dequantize: false,
            levels: 256.0,
            logit: Some(1e-6),
            bits: None,
            columns: Vec::new(),
        };
        let xs = [0.0, 0.5, 17.25, 128.0, 255.9];
        for &x in &xs {
            let mut t = Table::new(vec!["a".into()], 1, vec![x], "t");
            let ld = p.apply(&mut t, 0).unwrap()[0];
            let y = t.data[0];
            let h = 1e-4;
            let f = |x: f64| {
                let mut t = Table::new(vec!["a".into()], 1, vec![x], "t");
                p.apply(&mut t, 0).unwrap();
                t.data[0]
            };
            if x > h {
                let fd = ((f(x + h) - f(x - h)) / (2.0 * h)).ln();
                assert!(
                    (fd - ld).abs() < 1e-6 * ld.abs().max(1.0),
                    "x={x}: {fd} vs {ld}"
                );
            }
            p.invert(&mut t);
            assert!((t.data[0] - x).abs() < 1e-6, "{x} -> {y} -> {}", t.data[0]);
        }
        // hand-computed: x = 128 of 256 gives p = 1/2, y = 0, log|dy/dx| = ln(1 - 2λ) - ln 256 + ln 4
        let mut t = Table::new(vec!["a".into()], 1, vec![128.0], "t");
        let ld = p.apply(&mut t, 0).unwrap()[0];
        assert!(t.data[0].abs() < 1e-12);
        assert!((ld - ((1.0 - 2e-6f64).ln() - 256f64.ln() + 4f64.ln())).abs() < 1e-12);
        // with dequantisation the value moves by u in [0, 1) and the Jacobian follows the noisy value
        let q = Preprocess {
            dequantize: true,
            ..p.clone()
        };
        let mut t = Table::new(vec!["a".into()], 1, vec![127.0], "t");
        let ld = q.apply(&mut t, 3).unwrap()[0];
        let mut back = t.clone();
        q.invert(&mut back);
        let x = back.data[0];
        let pp = 1e-6 + (1.0 - 2e-6) * x / 256.0;
        let expect = (1.0 - 2e-6f64).ln() - 256f64.ln() - pp.ln() - (1.0 - pp).ln();
        assert!((ld - expect).abs() < 1e-9 && (127.0..128.0).contains(&x) && x != 127.0);
        // validation
        let bad = Preprocess {
            logit: Some(0.0),
            ..p.clone()
        };
        assert!(bad.apply(&mut t, 0).is_err());
    }

    #[test]
    fn n_bit_reduction() {
        let p = Preprocess {
            dequantize: false,
            levels: 32.0,
            logit: None,
            bits: Some(5),
            columns: Vec::new(),
        };
        let mut t = Table::new(vec!["a".into()], 3, vec![0.0, 7.0, 255.0], "t");
        p.apply(&mut t, 0).unwrap();
        assert_eq!(t.data, vec![0.0, 0.0, 31.0]);
        p.invert(&mut t);
        assert_eq!(t.data, vec![0.0, 0.0, 248.0]);
        let mut t = Table::new(vec!["a".into()], 1, vec![3.5], "t");
        let e = p.apply(&mut t, 0).unwrap_err().to_string();
        assert!(e.contains("'a'") && e.contains("8-bit"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_errors() {
        let p = Preprocess {
            dequantize: true,
            levels: 256.0,
            logit: Some(1e-6),
            bits: None,
            columns: Vec::new(),
        };
        let mut t = Table::new(vec!["a".into(), "b".into()], 1, vec![3.0, 255.5], "img.csv");
        let e = p.apply(&mut t, 0).unwrap_err().to_string();
        assert!(
            e.contains("img.csv") && e.contains("'b'") && e.contains("levels"),
            "{e}"
        );
    }
}

/// Class labels to one-hot columns: column `c` of `t` holds integers `0..classes[c]` and becomes `classes[c]`
/// indicator columns named `{name}={k}`. A value that is not such an integer is an error naming the row and
/// column.
pub fn one_hot(t: &Table, classes: &[usize]) -> Result<Table> {
    if classes.len() != t.cols {
        return Err(DataError::InvalidArgument(format!(
            "{}: {} context columns, {} class counts",
            t.source,
            t.cols,
            classes.len()
        )));
    }
    let width: usize = classes.iter().sum();
    let mut columns = Vec::with_capacity(width);
    for (name, &k) in t.columns.iter().zip(classes) {
        columns.extend((0..k).map(|v| format!("{name}={v}")));
    }
    let mut data = vec![0.0; t.rows * width];
    for r in 0..t.rows {
        let mut off = 0;
        for (c, &k) in classes.iter().enumerate() {
            let v = t.data[r * t.cols + c];
            if !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < k) {
                return Err(DataError::InvalidArgument(format!(
                    "{} row {r} (0-based), column '{}': {v} is not a class label in 0..{}",
                    t.source,
                    t.columns[c],
                    k.saturating_sub(1)
                )));
            }
            data[r * width + off + v as usize] = 1.0;
            off += k;
        }
    }
    Ok(Table::new(columns, t.rows, data, t.source.clone()))
}

/// Number of classes of each column of integer labels `0..K-1` (`K` = largest value + 1); an error names a
/// value that is not a non-negative integer.
pub fn count_classes(t: &Table) -> Result<Vec<usize>> {
    let mut k = vec![0usize; t.cols];
    for r in 0..t.rows {
        for c in 0..t.cols {
            let v = t.data[r * t.cols + c];
            if !(v >= 0.0 && v.fract() == 0.0 && v < 1e6) {
                return Err(DataError::InvalidArgument(format!(
                    "{} row {r} (0-based), column '{}': {v} is not a class label (a non-negative integer)",
                    t.source, t.columns[c]
                )));
            }
            k[c] = k[c].max(v as usize + 1);
        }
    }
    Ok(k)
}

#[cfg(test)]
mod support_tests {
    use super::*;

    fn support(bounds: Option<(f64, f64)>, positive: bool, integer: bool) -> Preprocess {
        Preprocess {
            columns: vec![ColumnSupport {
                column: "b".into(),
                integer,
                bounds,
                positive,
            }],
            ..Preprocess::default()
        }
    }

    /// The map of column "b" of a two-column row (column "a" is left alone) and its log-Jacobian.
    fn map(p: &Preprocess, x: f64) -> (f64, f64, f64) {
        let mut t = Table::new(vec!["a".into(), "b".into()], 1, vec![0.25, x], "t.csv");
        let ld = p.apply(&mut t, 7).unwrap()[0];
        (t.data[0], t.data[1], ld)
    }

    #[test]
    fn bounded_and_positive_maps_match_central_differences_and_invert() {
        for p in [
            support(Some((-2.0, 3.0)), false, false),
            support(None, true, false),
        ] {
            for x in [0.01, 0.5, 1.7, 2.9] {
                let (a, y, ld) = map(&p, x);
                assert_eq!(a, 0.25, "other columns are left alone");
                let h = 1e-6;
                let fd = ((map(&p, x + h).1 - map(&p, x - h).1) / (2.0 * h)).ln();
                assert!((fd - ld).abs() < 1e-6, "x={x}: {fd} vs {ld}");
                let mut t = Table::new(vec!["a".into(), "b".into()], 1, vec![0.25, y], "s");
                p.invert(&mut t);
                assert!((t.data[1] - x).abs() < 1e-9, "{x} -> {y} -> {}", t.data[1]);
            }
        }
        // the bounds themselves stay finite; values beyond them are errors naming row and column
        let p = support(Some((0.0, 1.0)), false, false);
        assert!(map(&p, 0.0).1.is_finite() && map(&p, 1.0).1.is_finite());
        let mut t = Table::new(
            vec!["a".into(), "b".into()],
            2,
            vec![0.0, 0.5, 0.0, 1.5],
            "t.csv",
        );
        let e = p.apply(&mut t, 0).unwrap_err().to_string();
        assert!(
            e.contains("t.csv row 1") && e.contains("'b'") && e.contains("[0, 1]"),
            "{e}"
        );
        let e = support(None, true, false).apply(
            &mut Table::new(vec!["a".into(), "b".into()], 1, vec![0.0, 0.0], "t"),
            0,
        );
        assert!(e.unwrap_err().to_string().contains("positive"));
    }

    #[test]
    fn integer_columns_are_dequantised_and_sampled_as_integers() {
        let p = support(Some((1.0, 5.0)), false, true);
        for v in [1.0, 3.0, 5.0] {
            let (_, y, _) = map(&p, v);
            let mut t = Table::new(vec!["a".into(), "b".into()], 1, vec![0.0, y], "s");
            p.invert(&mut t);
            assert_eq!(
                t.data[1], v,
                "a dequantised value floors back to its integer"
            );
        }
        // the extreme latent values stay inside 1..=5
        let mut t = Table::new(
            vec!["a".into(), "b".into()],
            2,
            vec![0.0, -40.0, 0.0, 40.0],
            "s",
        );
        p.invert(&mut t);
        assert_eq!((t.data[1], t.data[3]), (1.0, 5.0));
        // counts: 0 allowed with positive, fractions refused
        let c = support(None, true, true);
        assert!(map(&c, 0.0).1.is_finite());
        let mut t = Table::new(vec!["a".into(), "b".into()], 1, vec![0.0, 2.5], "t");
        assert!(c
            .apply(&mut t, 0)
            .unwrap_err()
            .to_string()
            .contains("not an integer"));
        // noise is fresh per seed, values stay within [v, v + 1)
        let (_, y1, _) = map(&support(None, false, true), 4.0);
        assert!((4.0..5.0).contains(&y1) && y1 != 4.0);
        // combinations refused
        assert!(support(Some((0.0, 1.0)), true, false).validate().is_err());
        let both = Preprocess {
            dequantize: true,
            ..support(None, true, false)
        };
        assert!(both.validate().is_err());
    }
}

#[cfg(test)]
mod one_hot_tests {
    use super::*;

    #[test]
    fn one_hot_columns_and_errors() {
        let t = Table::new(
            vec!["y".into(), "g".into()],
            2,
            vec![2.0, 0.0, 0.0, 1.0],
            "t",
        );
        let k = count_classes(&t).unwrap();
        assert_eq!(k, vec![3, 2]);
        let o = one_hot(&t, &k).unwrap();
        assert_eq!(o.columns, ["y=0", "y=1", "y=2", "g=0", "g=1"]);
        assert_eq!(
            o.data,
            vec![0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        );
        let bad = Table::new(vec!["y".into()], 1, vec![1.5], "t");
        assert!(count_classes(&bad).unwrap_err().to_string().contains("'y'"));
        let e = one_hot(&Table::new(vec!["y".into()], 1, vec![3.0], "t"), &[3])
            .unwrap_err()
            .to_string();
        assert!(e.contains("0..2"), "{e}");
    }
}
