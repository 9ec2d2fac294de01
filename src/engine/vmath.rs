//! Vectorisable f32 `exp` and `tanh` for the affine layers' scales (`exp(B tanh(h / B))` per element): glibc's
//! scalar `expf` / `tanhf` calls, one element at a time, were a visible share of a MAF or RealNVP step
//! (docs/results/speed.md, "Vectorised f32 exp / tanh"). Branch-free polynomial forms (Cephes' `expf` and `tanhf`
//! coefficients, S. Moshier), compiled for AVX2 where the CPU has it, so the compiler runs eight at a time, with fused
//! multiply-adds there (`FMA`: each polynomial step one instruction, rounded once).
//! f64 (the gradient and Jacobian tests) keeps the standard library's functions.

use super::{as_f32, as_f32_mut, Float};

/// `a * b + c`, rounded once with `FMA` (a single instruction where the caller enables the feature; a library
/// call elsewhere, so only the AVX2 path asks for it).
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for f32, within 2 ulp of the exact value on [-87, 88] (clamped outside).
#[inline(always)]
pub fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HI is exact
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // adding and subtracting 1.5 * 2^23 rounds to the nearest integer
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    // `k` holds `n` in its low mantissa bits (same exponent as ROUND): integer arithmetic on the bits gives 2^n
    // without a float-to-int conversion, which Rust saturates lane by lane and so would not vectorise
    let k = madd::<FMA>(x, LOG2E, ROUND);
    let n = k - ROUND;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let y = madd::<FMA>(p * r, r, r + 1.0);
    let n_bits = k.to_bits().wrapping_sub(ROUND.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// `ln(x)` for f32 on positive normal `x` (Cephes' `logf`, S. Moshier), within 2 ulp; branch-free, so a loop of
/// them vectorises. Zero, negative, subnormal or non-finite inputs give unspecified values: callers pass
/// positive normal numbers.
#[inline(always)]
pub fn ln_f32<const FMA: bool>(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    // x = m 2^e with m in [0.5, 1)
    let e = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    // m in [sqrt(1/2), sqrt(2)) after moving a factor 2 into the exponent
    let small = m < SQRT_HALF;
    let e = (e - i32::from(small)) as f32;
    let x = if small { m + m - 1.0 } else { m - 1.0 };
    let z = x * x;
    let mut p = 7.037_683_6e-2f32;
    p = madd::<FMA>(p, x, -1.151_461e-1);
    p = madd::<FMA>(p, x, 1.167_699_9e-1);
    p = madd::<FMA>(p, x, -1.242_014_1e-1);
    p = madd::<FMA>(p, x, 1.424_932_3e-1);
    p = madd::<FMA>(p, x, -1.666_805_8e-1);
    p = madd::<FMA>(p, x, 2.000_071_5e-1);
    p = madd::<FMA>(p, x, -2.499_999_4e-1);
    p = madd::<FMA>(p, x, 3.333_333e-1);
    let mut y = p * x * z;
    y = madd::<FMA>(e, -2.121_944_4e-4, y);
    y = madd::<FMA>(-0.5, z, y);
    madd::<FMA>(e, 0.693_359_4, x + y)
}

/// `tanh(x)` for f32, within 2e-7 of the exact value (relative near 0).
#[inline(always)]
pub fn tanh_f32<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    // small |x|: odd polynomial; large: 1 - 2 / (e^2|x| + 1)
    let z = x * x;
    let mut p = -5.704_988_7e-3f32;
    p = madd::<FMA>(p, z, 2.063_909e-2);
    p = madd::<FMA>(p, z, -5.373_971_6e-2);
    p = madd::<FMA>(p, z, 1.333_144_2e-1);
    p = madd::<FMA>(p, z, -3.333_328e-1);
    let small = madd::<FMA>(p * z, x, x);
    let big = (1.0 - 2.0 / (exp_f32::<FMA>(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        big
    }
}

/// The soft-clamped log-scales of an affine layer and their exponentials, element by element:
/// `l = B tanh(h / B)`, `dl/dh = 1 - tanh^2`, `e = exp(l)` (`exp(-l)` when `inverse`), through the vectorised f32
/// functions. `false` (nothing written) when `F` is not f32: the caller evaluates those with the standard library.
pub fn soft_clamp_exp<F: Float>(
    h: &[F],
    bound: f64,
    inverse: bool,
    l: &mut [F],
    dl: &mut [F],
    e: &mut [F],
) -> bool {
    assert!(h.len() == l.len() && h.len() == dl.len() && h.len() == e.len());
    let (Some(h), Some(l), Some(dl), Some(e)) =
        (as_f32(h), as_f32_mut(l), as_f32_mut(dl), as_f32_mut(e))
    else {
        return false;
    };
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() {
        // SAFETY: the CPU has AVX2 and FMA
        unsafe { soft_clamp_exp_avx2(h, bound as f32, inverse, l, dl, e) };
        return true;
    }
    soft_clamp_exp_f32::<false>(h, bound as f32, inverse, l, dl, e);
    true
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn soft_clamp_exp_avx2(
    h: &[f32],
    b: f32,
    inverse: bool,
    l: &mut [f32],
    dl: &mut [f32],
    e: &mut [f32],
) {
    soft_clamp_exp_f32::<true>(h, b, inverse, l, dl, e)
}

#[inline(always)]
fn soft_clamp_exp_f32<const FMA: bool>(
    h: &[f32],
    b: f32,
    inverse: bool,
    l: &mut [f32],
    dl: &mut [f32],
    e: &mut [f32],
) {
    let (inv_b, sign) = (1.0 / b, if inverse { -1.0 } else { 1.0 });
    // two passes: each element's chain of dependent steps (tanh, then exp) is long enough that the core holds
    // under three of them in flight; half a chain per pass, twice as many (docs/results/speed.md, eighth
    // session)
    for ((&h, l), dl) in h.iter().zip(l.iter_mut()).zip(dl.iter_mut()) {
        let t = tanh_f32::<FMA>(h * inv_b);
        *l = b * t;
        *dl = madd::<FMA>(-t, t, 1.0);
    }
    for (&l, e) in l.iter().zip(e.iter_mut()) {
        *e = exp_f32::<FMA>(sign * l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64 references on a fine grid: exp within 2 ulp (relative 2.4e-7), tanh within 2e-7 absolute and
    /// 1e-6 relative; with and without fused multiply-adds.
    #[test]
    fn ln_within_two_ulp() {
        fn check<const FMA: bool>() {
            let mut worst = 0.0f64;
            // every exponent, a dense mantissa grid near 1 (where the result is small), both reductions
            let mut xs: Vec<f32> = (0..200_000).map(|i| 0.5 + i as f32 * 1e-5).collect();
            xs.extend(
                (-120..120)
                    .flat_map(|e| (0..50).map(move |k| 2f32.powi(e) * (1.0 + k as f32 / 50.0))),
            );
            for x in xs {
                let want = (x as f64).ln();
                let got = ln_f32::<FMA>(x) as f64;
                // 2 ulp of the result, or of ln near 1 an absolute 2^-24
                let tol = 2.0 * (want.abs() * f32::EPSILON as f64).max(6e-8);
                worst = worst.max((got - want).abs() / tol);
            }
            assert!(worst <= 1.0, "ln error {worst} x tolerance (fma {FMA})");
        }
        check::<false>();
        check::<true>();
    }

    fn accuracy<const FMA: bool>() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64);
        for i in -800_000..=800_000 {
            let x = i as f32 * 1e-4;
            let ex = (x as f64).exp();
            worst.0 = worst.0.max(((exp_f32::<FMA>(x) as f64) - ex).abs() / ex);
            let tx = (x as f64).tanh();
            let err = ((tanh_f32::<FMA>(x) as f64) - tx).abs();
            worst.1 = worst.1.max(err);
            if x != 0.0 {
                worst.2 = worst.2.max(err / tx.abs());
            }
        }
        for x in [-86.5f32, -50.0, 40.0, 87.5] {
            let ex = (x as f64).exp();
            worst.0 = worst.0.max(((exp_f32::<FMA>(x) as f64) - ex).abs() / ex);
        }
        assert!(
            worst.0 < 2.4e-7,
            "exp relative error {} (fma {FMA})",
            worst.0
        );
        assert!(
            worst.1 < 2e-7,
            "tanh absolute error {} (fma {FMA})",
            worst.1
        );
        assert!(
            worst.2 < 1e-6,
            "tanh relative error {} (fma {FMA})",
            worst.2
        );
    }

    #[test]
    fn exp_and_tanh_are_accurate() {
        accuracy::<false>();
        accuracy::<true>();
    }

    /// The f32 slice path agrees with the formula in f64 (both directions); other types are left to the caller.
    #[test]
    fn soft_clamp_exp_f32_matches_f64() {
        let h64: Vec<f64> = (0..1000).map(|i| (i as f64 - 500.0) * 0.03).collect();
        let h32: Vec<f32> = h64.iter().map(|&v| v as f32).collect();
        let n = h64.len();
        let mut unused = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        assert!(!soft_clamp_exp(
            &h64,
            3.0,
            false,
            &mut unused.0,
            &mut unused.1,
            &mut unused.2
        ));
        for inverse in [false, true] {
            let (mut l, mut dl, mut e) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
            assert!(soft_clamp_exp(&h32, 3.0, inverse, &mut l, &mut dl, &mut e));
            for i in 0..n {
                let t = (h64[i] / 3.0).tanh();
                let (lw, dlw) = (3.0 * t, 1.0 - t * t);
                let ew = if inverse { (-lw).exp() } else { lw.exp() };
                assert!((lw - l[i] as f64).abs() < 1e-6, "l at {}", h64[i]);
                assert!((dlw - dl[i] as f64).abs() < 1e-6, "dl at {}", h64[i]);
                assert!((ew - e[i] as f64).abs() < 2e-6 * ew, "e at {}", h64[i]);
            }
        }
    }
}
