//! The checks every transform gets for free (used by the unit and integration tests): round trip,
//! forward/inverse log-det consistency, log-det against a central-difference Jacobian, and input and
//! parameter gradients against finite differences. All in f64.

use super::Transform;
use crate::engine::{randn, Mat, Rng};
use rand::Rng as _;

/// Perturb every free parameter entry by a small random value so the checks see a non-identity map
/// (conditioners start at zero). Structural zeros (masked weights) stay zero.
pub fn randomize(t: &mut dyn Transform<f64>, rng: &mut Rng, scale: f64) {
    for p in t.params_mut() {
        if p.trainable {
            for k in 0..p.value().len() {
                let e = scale * rng.gen_range(-1.0..1.0);
                if p.is_free(k) {
                    p.value_mut()[k] += e;
                }
            }
        }
    }
}

/// log|det A| of a dense row-major `n x n` matrix by LU with partial pivoting.
pub fn log_abs_det(a: &[f64], n: usize) -> f64 {
    let mut m = a.to_vec();
    let mut ld = 0.0;
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs()))
            .expect("non-empty");
        if p != c {
            for k in 0..n {
                m.swap(c * n + k, p * n + k);
            }
        }
        let piv = m[c * n + c];
        ld += piv.abs().ln();
        for i in c + 1..n {
            let f = m[i * n + c] / piv;
            for k in c..n {
                m[i * n + k] -= f * m[c * n + k];
            }
        }
    }
    ld
}

/// Jacobian of `x -> forward(x)` at one point by central differences.
pub fn fd_jacobian(t: &dyn Transform<f64>, x: &[f64], ctx: Option<&[f64]>, h: f64) -> Vec<f64> {
    let d = x.len();
    let c = ctx.map(|c| Mat::from_vec(1, c.len(), c.to_vec()));
    let mut jac = vec![0.0; d * d];
    for j in 0..d {
        let mut xp = x.to_vec();
        let mut xm = x.to_vec();
        xp[j] += h;
        xm[j] -= h;
        let (zp, _) = t.forward(&Mat::from_vec(1, d, xp), c.as_ref());
        let (zm, _) = t.forward(&Mat::from_vec(1, d, xm), c.as_ref());
        for i in 0..d {
            jac[i * d + j] = (zp.data[i] - zm.data[i]) / (2.0 * h);
        }
    }
    jac
}

fn max_rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / (1.0 + a.abs().max(b.abs()))
}

/// A scalar loss of the training path, `L = sum(w * z) + sum(c * logdet)`, so that both dL/dz and
/// dL/dlogdet are non-trivial.
fn train_loss(
    t: &mut dyn Transform<f64>,
    x: &Mat<f64>,
    ctx: Option<&Mat<f64>>,
    w: &Mat<f64>,
    c: &[f64],
) -> f64 {
    let (z, ld) = t.forward_train(x, ctx);
    z.data.iter().zip(&w.data).map(|(a, b)| a * b).sum::<f64>()
        + ld.iter().zip(c).map(|(a, b)| a * b).sum::<f64>()
}

/// Run every generic check on `t` (already randomised) at the points `x` (rows) with optional context.
/// Panics with a message naming the check, the transform and the error.
pub fn check_transform(
    t: &mut dyn Transform<f64>,
    x: &Mat<f64>,
    ctx: Option<&Mat<f64>>,
    rng: &mut Rng,
) {
    let kind = t.kind();
    let d = t.dim();
    assert_eq!(x.cols, d);
    // 1. round trip and log-det consistency (inference paths)
    let (z, ld_f) = t.forward(x, ctx);
    let (xr, ld_i) = t.inverse(&z, ctx);
    for (a, b) in x.data.iter().zip(&xr.data) {
        assert!(
            max_rel_err(*a, *b) < 1e-9,
            "{kind}: inverse(forward(x)) != x: {a} vs {b}"
        );
    }
    for (a, b) in ld_f.iter().zip(&ld_i) {
        assert!(
            (a + b).abs() < 1e-9,
            "{kind}: forward log-det {a} != -inverse log-det {b}"
        );
    }
    // forward(inverse(z)) = z as well, from fresh noise
    let e: Mat<f64> = randn(rng, x.rows, d);
    let (xe, _) = t.inverse(&e, ctx);
    let (ze, _) = t.forward(&xe, ctx);
    for (a, b) in e.data.iter().zip(&ze.data) {
        assert!(
            max_rel_err(*a, *b) < 1e-9,
            "{kind}: forward(inverse(z)) != z: {a} vs {b}"
        );
    }
    // 2. log-det against a central-difference Jacobian, per example
    for r in 0..x.rows {
        let jac = fd_jacobian(t, x.row(r), ctx.map(|c| c.row(r)), 1e-5);
        let want = log_abs_det(&jac, d);
        assert!(
            (want - ld_f[r]).abs() < 1e-6 * (1.0 + want.abs()),
            "{kind}: log-det {} vs finite-difference {want} at row {r}",
            ld_f[r]
        );
    }
    // 3. gradients of the training path against finite differences
    grad_checks(t, x, ctx, rng, Dir::Forward);
    let w: Mat<f64> = randn(rng, x.rows, d);
    let c: Vec<f64> = (0..x.rows).map(|_| rng.gen_range(-1.0..1.0)).collect();
    // 4. the backward that skips dL/dx (a flow's first transform) leaves the same parameter and context
    // gradients as the full one, to the bit (at the parameters as they are now: the steps above moved them
    // by rounding)
    let mut run = |full: bool| {
        for p in t.params_mut() {
            p.zero_grad();
        }
        t.forward_train(x, ctx);
        if full {
            t.backward(&w, &c);
        } else {
            t.backward_params(&w, &c);
        }
        let grads: Vec<Vec<u64>> = t
            .params()
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.grad().iter().map(|g| g.to_bits()).collect())
            .collect();
        (grads, t.context_grad().map(|m| m.data))
    };
    let (full, partial) = (run(true), run(false));
    assert!(
        full.0 == partial.0,
        "{kind}: backward_params gives other parameter gradients"
    );
    assert_eq!(
        full.1, partial.1,
        "{kind}: backward_params gives another context gradient"
    );
    // 5. the sampling direction's training pass, where the transform has one: the same map as `inverse`,
    // and its gradients (input, parameters, context) against finite differences
    let z = t.forward(x, ctx).0;
    if let Some((xt, ldt)) = t.inverse_train(&z, ctx) {
        let (xi, ldi) = t.inverse(&z, ctx);
        assert!(
            xt.data
                .iter()
                .zip(&xi.data)
                .all(|(a, b)| max_rel_err(*a, *b) < 1e-12)
                && ldt
                    .iter()
                    .zip(&ldi)
                    .all(|(a, b)| max_rel_err(*a, *b) < 1e-12),
            "{kind}: inverse_train differs from inverse"
        );
        grad_checks(t, &z, ctx, rng, Dir::Inverse);
    }
}

/// Which training pass [`grad_checks`] differentiates.
#[derive(Clone, Copy, PartialEq)]
enum Dir {
    /// `forward_train` / `backward` (data -> noise, maximum likelihood).
    Forward,
    /// `inverse_train` / `backward_inverse` (noise -> data, reverse KL).
    Inverse,
}

/// Input, context and parameter gradients of one training pass against central differences of
/// `L = sum(w * out) + sum(c * logdet)`.
fn grad_checks(
    t: &mut dyn Transform<f64>,
    x: &Mat<f64>,
    ctx: Option<&Mat<f64>>,
    rng: &mut Rng,
    dir: Dir,
) {
    let kind = match dir {
        Dir::Forward => t.kind().to_string(),
        Dir::Inverse => format!("{} (inverse training)", t.kind()),
    };
    let d = t.dim();
    let train_loss = |t: &mut dyn Transform<f64>,
                      x: &Mat<f64>,
                      ctx: Option<&Mat<f64>>,
                      w: &Mat<f64>,
                      c: &[f64]| match dir {
        Dir::Forward => train_loss(t, x, ctx, w, c),
        Dir::Inverse => {
            let (z, ld) = t.inverse_train(x, ctx).expect("inverse training pass");
            z.data.iter().zip(&w.data).map(|(a, b)| a * b).sum::<f64>()
                + ld.iter().zip(c).map(|(a, b)| a * b).sum::<f64>()
        }
    };
    let w: Mat<f64> = randn(rng, x.rows, d);
    let c: Vec<f64> = (0..x.rows).map(|_| rng.gen_range(-1.0..1.0)).collect();
    for p in t.params_mut() {
        p.zero_grad();
    }
    let dx = match dir {
        Dir::Forward => {
            let (z_t, _) = t.forward_train(x, ctx);
            assert_eq!(z_t.cols, d);
            t.backward(&w, &c)
        }
        Dir::Inverse => {
            t.inverse_train(x, ctx).expect("inverse training pass");
            t.backward_inverse(&w, &c)
        }
    };
    let h = 1e-6;
    for r in 0..x.rows {
        for j in 0..d {
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp.data[r * d + j] += h;
            xm.data[r * d + j] -= h;
            let fd =
                (train_loss(t, &xp, ctx, &w, &c) - train_loss(t, &xm, ctx, &w, &c)) / (2.0 * h);
            let an = dx.data[r * d + j];
            assert!(
                (fd - an).abs() < 1e-5 * (1.0 + fd.abs()),
                "{kind}: dL/dx[{r},{j}] analytic {an} vs finite difference {fd}"
            );
        }
    }
    // the context's gradient (what a learned context embedding in front of the flow trains on)
    if let Some(cm) = ctx {
        let dc = t.context_grad();
        assert!(
            t.context_grad().is_none(),
            "{kind}: context_grad must be taken"
        );
        let k = cm.cols;
        for r in 0..cm.rows {
            for j in 0..k {
                let mut cp = cm.clone();
                let mut cn = cm.clone();
                cp.data[r * k + j] += h;
                cn.data[r * k + j] -= h;
                let fd = (train_loss(t, x, Some(&cp), &w, &c)
                    - train_loss(t, x, Some(&cn), &w, &c))
                    / (2.0 * h);
                let an = dc.as_ref().map_or(0.0, |m| m.data[r * k + j]);
                assert!(
                    (fd - an).abs() < 1e-5 * (1.0 + fd.abs()),
                    "{kind}: dL/dcontext[{r},{j}] analytic {an} vs finite difference {fd}"
                );
            }
        }
    }
    let grads: Vec<(String, Vec<f64>, Vec<bool>)> = t
        .params()
        .iter()
        .filter(|p| p.trainable)
        .map(|p| {
            let free = (0..p.value().len()).map(|k| p.is_free(k)).collect();
            (p.name.clone(), p.grad().to_vec(), free)
        })
        .collect();
    for (pi, (name, grad, free)) in grads.iter().enumerate() {
        // structural zeros are no parameters: they must get no gradient at all
        for (k, g) in grad.iter().enumerate() {
            assert!(
                free[k] || *g == 0.0,
                "{kind}: masked entry {name}[{k}] got gradient {g}"
            );
        }
        // check up to 12 entries per parameter tensor, spread over it
        let n = grad.len();
        let step = (n / 12).max(1);
        for k in (0..n).step_by(step).filter(|&k| free[k]) {
            let set = |t: &mut dyn Transform<f64>, delta: f64| {
                let mut ps = t.params_mut();
                let p = ps
                    .iter_mut()
                    .filter(|p| p.trainable)
                    .nth(pi)
                    .expect("param");
                p.value_mut()[k] += delta;
            };
            set(t, h);
            let lp = train_loss(t, x, ctx, &w, &c);
            set(t, -2.0 * h);
            let lm = train_loss(t, x, ctx, &w, &c);
            set(t, h);
            let fd = (lp - lm) / (2.0 * h);
            assert!(
                (fd - grad[k]).abs() < 1e-5 * (1.0 + fd.abs()),
                "{kind}: gradient of {name}[{k}] analytic {} vs finite difference {fd}",
                grad[k]
            );
        }
    }
}
