//! GEMM providers on the shapes nflow's flows run (f32, row-major, `C = op(A) op(B)`), at a given thread count.
//! Prints one JSON line per (provider, shape) with GFLOP/s (best of the repeats after a warm-up) and a
//! summary line per provider: the FLOP-weighted rate over the shapes of each workload.
//!
//! Usage: gemm-compare [THREADS]   (default: all cores)

use std::time::Instant;

/// nflow's own kernel, the same file the library builds.
#[allow(dead_code)] // (the library uses more of the file than this benchmark does)
#[path = "../../../src/engine/sgemm.rs"]
mod sgemm;

#[cfg(feature = "blis")]
extern crate blis_src;
#[cfg(feature = "blis")]
extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn cblas_sgemm(
        layout: i32,
        ta: i32,
        tb: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
    fn bli_thread_set_num_threads(n: i64);
}

/// (name, m, k, n, a transposed, b transposed): a linear layer's forward is `x W^T` (NT), its weight
/// gradient `dy^T x` (TN) and its input gradient `dy W` (NN).
fn shapes() -> Vec<(&'static str, usize, usize, usize, bool, bool)> {
    let mut v = Vec::new();
    // w3: RealNVP D=784, MLP 392 -> 1024 -> 1024 -> 784, batch 256
    for (i, o) in [(392, 1024), (1024, 1024), (1024, 784)] {
        v.push(("w3", 256, i, o, false, true)); // forward
        v.push(("w3", o, 256, i, true, false)); // dW = dy^T x
        v.push(("w3", 256, o, i, false, false)); // dx = dy W
    }
    // w2: MAF D=64, MADE 64 -> 512 -> 512 -> 128, batch 256
    for (i, o) in [(64, 512), (512, 512), (512, 128)] {
        v.push(("w2", 256, i, o, false, true));
        v.push(("w2", o, 256, i, true, false));
        v.push(("w2", 256, o, i, false, false));
    }
    // w1: RealNVP D=2, MLP 1 -> 128 -> 128 -> 2, batch 512 (the middle layer is the only real product)
    v.push(("w1", 512, 128, 128, false, true));
    v.push(("w1", 128, 512, 128, true, false));
    v.push(("w1", 512, 128, 128, false, false));
    v
}

/// Row/column strides of op(X) for X stored row-major `rows x cols`.
fn strides(t: bool, cols: usize) -> (isize, isize) {
    if t {
        (1, cols as isize)
    } else {
        (cols as isize, 1)
    }
}

/// `C = A B` with `gemm`: C row-major with `ldc` columns; A and B as (pointer, row stride, column stride).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rm(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    (a, ars, acs): (*const f32, isize, isize),
    (b, brs, bcs): (*const f32, isize, isize),
    par: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        false,
        a,
        acs,
        ars,
        b,
        bcs,
        brs,
        0.0,
        1.0,
        false,
        false,
        false,
        par,
    )
}

struct Case<'a> {
    m: usize,
    k: usize,
    n: usize,
    a: &'a [f32],
    ta: bool,
    b: &'a [f32],
    tb: bool,
}

fn run(p: &str, c: &Case, out: &mut [f32], threads: usize) {
    let (m, k, n) = (c.m, c.k, c.n);
    // stored shapes: op(A) is m x k, so A is k x m when transposed
    let a_cols = if c.ta { m } else { k };
    let b_cols = if c.tb { k } else { n };
    let (ars, acs) = strides(c.ta, a_cols);
    let (brs, bcs) = strides(c.tb, b_cols);
    match p {
        "gemm" => unsafe {
            let par = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            let a = (c.a.as_ptr(), ars, acs);
            let b = (c.b.as_ptr(), brs, bcs);
            gemm_rm(m, n, k, out.as_mut_ptr(), n, a, b, par)
        },
        // nflow's engine: C cut into one slab per thread (rows when tall, columns when wide), each slab one
        // single-threaded `gemm` product
        "gemm-slabs" => {
            let by_rows = m >= n;
            let len = if by_rows { m } else { n };
            let parts = if threads > 1 {
                threads.min(len.div_ceil(16))
            } else {
                1
            };
            let (ap, bp, cp) = (
                c.a.as_ptr() as usize,
                c.b.as_ptr() as usize,
                out.as_mut_ptr() as usize,
            );
            let slab = |q: usize| unsafe {
                let (lo, hi) = (q * len / parts, (q + 1) * len / parts);
                let (a, b, cc) = (ap as *const f32, bp as *const f32, cp as *mut f32);
                let (mm, nn, a, b, cc) = if by_rows {
                    (hi - lo, n, a.offset(lo as isize * ars), b, cc.add(lo * n))
                } else {
                    (m, hi - lo, a, b.offset(lo as isize * bcs), cc.add(lo))
                };
                gemm_rm(
                    mm,
                    nn,
                    k,
                    cc,
                    n,
                    (a, ars, acs),
                    (b, brs, bcs),
                    gemm::Parallelism::None,
                )
            };
            if parts == 1 {
                slab(0);
            } else {
                use rayon::prelude::*;
                (0..parts).into_par_iter().for_each(slab);
            }
        }
        "sgemm" => unsafe {
            let a = sgemm::Operand {
                ptr: c.a.as_ptr(),
                rs: ars,
                cs: acs,
            };
            let b = sgemm::Operand {
                ptr: c.b.as_ptr(),
                rs: brs,
                cs: bcs,
            };
            sgemm::sgemm(m, n, k, a, b, out.as_mut_ptr(), n as isize, 1, sgemm::Out::plain(false), threads, None)
        },
        "matrixmultiply" => unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                c.a.as_ptr(),
                ars,
                acs,
                c.b.as_ptr(),
                brs,
                bcs,
                0.0,
                out.as_mut_ptr(),
                n as isize,
                1,
            )
        },
        "faer" => unsafe {
            let a = faer::MatRef::from_raw_parts(c.a.as_ptr(), m, k, ars, acs);
            let b = faer::MatRef::from_raw_parts(c.b.as_ptr(), k, n, brs, bcs);
            let dst = faer::MatMut::from_raw_parts_mut(out.as_mut_ptr(), m, n, n as isize, 1);
            let par = if threads > 1 {
                faer::Par::rayon(threads)
            } else {
                faer::Par::Seq
            };
            faer::linalg::matmul::matmul(dst, faer::Accum::Replace, a, b, 1.0f32, par);
        },
        #[cfg(feature = "blis")]
        "blis" => unsafe {
            // row-major (101); no-trans 111, trans 112; leading dimensions are the stored column counts
            cblas_sgemm(
                101,
                if c.ta { 112 } else { 111 },
                if c.tb { 112 } else { 111 },
                m as i32,
                n as i32,
                k as i32,
                1.0,
                c.a.as_ptr(),
                a_cols as i32,
                c.b.as_ptr(),
                b_cols as i32,
                0.0,
                out.as_mut_ptr(),
                n as i32,
            )
        },
        _ => unreachable!(),
    }
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("THREADS"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    // matrixmultiply reads its thread count from the environment
    std::env::set_var("MATMUL_NUM_THREADS", threads.to_string());
    let mut seed = 1u64;
    let mut rnd = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    };
    #[cfg(feature = "blis")]
    unsafe {
        bli_thread_set_num_threads(threads as i64)
    };
    let all: &[&str] = if cfg!(feature = "blis") {
        &["gemm", "gemm-slabs", "sgemm", "matrixmultiply", "faer", "blis"]
    } else {
        &["gemm", "gemm-slabs", "sgemm", "matrixmultiply", "faer"]
    };
    // PROVIDERS=a,b limits the run to those
    let chosen = std::env::var("PROVIDERS").unwrap_or_default();
    let providers: Vec<&str> = all
        .iter()
        .copied()
        .filter(|p| chosen.is_empty() || chosen.split(',').any(|c| c == *p))
        .collect();
    let mut totals: Vec<(String, String, f64, f64)> = Vec::new(); // provider, workload, flops, seconds
    // WORKLOADS=w1,w3 limits the shapes to those workloads
    let only = std::env::var("WORKLOADS").unwrap_or_default();
    for (w, m, k, n, ta, tb) in shapes() {
        if !only.is_empty() && !only.split(',').any(|o| o == w) {
            continue;
        }
        let a = rnd(m * k);
        let b = rnd(k * n);
        let case = Case {
            m,
            k,
            n,
            a: &a,
            ta,
            b: &b,
            tb,
        };
        let mut reference: Option<Vec<f32>> = None;
        let mut outs: Vec<Vec<f32>> = Vec::new();
        for &p in &providers {
            let mut out = vec![0.0f32; m * n];
            run(p, &case, &mut out, threads);
            // every provider computes the same product
            match &reference {
                None => reference = Some(out.clone()),
                Some(r) => {
                    let err = r
                        .iter()
                        .zip(&out)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0f32, f32::max);
                    assert!(err < 1e-3, "{p} differs from gemm by {err} on {m}x{k}x{n}");
                }
            }
            outs.push(out);
        }
        // providers interleaved repeat by repeat (this machine's speed drifts from second to second), best kept
        let flops = 2.0 * (m * k * n) as f64;
        let reps = ((4e9 / flops) as usize).clamp(10, 800);
        let mut best = vec![f64::INFINITY; providers.len()];
        for _ in 0..reps {
            for (i, &p) in providers.iter().enumerate() {
                let t0 = Instant::now();
                run(p, &case, &mut outs[i], threads);
                best[i] = best[i].min(t0.elapsed().as_secs_f64());
            }
        }
        for (i, &p) in providers.iter().enumerate() {
            println!(
                "{{\"provider\":\"{p}\",\"workload\":\"{w}\",\"m\":{m},\"k\":{k},\"n\":{n},\"op\":\"{}{}\",\"threads\":{threads},\"gflops\":{:.1}}}",
                if ta { "T" } else { "N" },
                if tb { "T" } else { "N" },
                flops / best[i] / 1e9
            );
            totals.push((p.into(), w.into(), flops, best[i]));
        }
    }
    for &p in &providers {
        for w in ["w1", "w2", "w3"] {
            let (f, s) = totals
                .iter()
                .filter(|t| t.0 == p && t.1 == w)
                .fold((0.0, 0.0), |acc, t| (acc.0 + t.2, acc.1 + t.3));
            println!(
                "{{\"provider\":\"{p}\",\"workload\":\"{w}\",\"summary\":true,\"threads\":{threads},\"gflops\":{:.1}}}",
                f / s / 1e9
            );
        }
    }
}
