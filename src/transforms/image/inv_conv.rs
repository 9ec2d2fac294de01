//! Glow's invertible 1x1 convolution (sec. 3.2), plain or LU-parameterised, with the small dense linear
//! algebra it needs (inverse and log-determinant, PLU, a random rotation to start from).

use super::*;

/// `(W^-1, log|det W|)` of a small row-major `n x n` matrix by Gauss-Jordan elimination with partial
/// pivoting, in f64.
pub(super) fn inverse_logdet(w: &[f64], n: usize) -> (Vec<f64>, f64) {
    let mut a = w.to_vec();
    let mut inv: Vec<f64> = (0..n * n)
        .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
        .collect();
    let mut ld = 0.0;
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| a[i * n + c].abs().total_cmp(&a[j * n + c].abs()))
            .expect("non-empty");
        if p != c {
            for k in 0..n {
                a.swap(c * n + k, p * n + k);
                inv.swap(c * n + k, p * n + k);
            }
        }
        let piv = a[c * n + c];
        ld += piv.abs().ln();
        for k in 0..n {
            a[c * n + k] /= piv;
            inv[c * n + k] /= piv;
        }
        for i in 0..n {
            if i != c {
                let f = a[i * n + c];
                if f != 0.0 {
                    for k in 0..n {
                        a[i * n + k] -= f * a[c * n + k];
                        inv[i * n + k] -= f * inv[c * n + k];
                    }
                }
            }
        }
    }
    (inv, ld)
}

/// `P A = L U` with partial pivoting: `(perm, L, U)` where row `i` of `A` is row `perm[i]` of `L U`.
pub(super) fn plu(a: &[f64], n: usize) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
    let mut u = a.to_vec();
    let mut l = vec![0.0; n * n];
    let mut rows: Vec<usize> = (0..n).collect(); // rows[k]: original row now at position k
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| u[i * n + c].abs().total_cmp(&u[j * n + c].abs()))
            .expect("non-empty");
        if p != c {
            for k in 0..n {
                u.swap(c * n + k, p * n + k);
                l.swap(c * n + k, p * n + k);
            }
            rows.swap(c, p);
        }
        for i in c + 1..n {
            let f = u[i * n + c] / u[c * n + c];
            l[i * n + c] = f;
            for k in c..n {
                u[i * n + k] -= f * u[c * n + k];
            }
        }
    }
    for i in 0..n {
        l[i * n + i] = 1.0;
    }
    let mut perm = vec![0; n];
    for (k, &r) in rows.iter().enumerate() {
        perm[r] = k;
    }
    (perm, l, u)
}

/// A random orthogonal matrix (Gram-Schmidt on a Gaussian one): Glow's initialisation of the 1x1 convolution.
pub(super) fn random_rotation(n: usize, rng: &mut Rng) -> Vec<f64> {
    let mut q: Vec<f64> = (0..n * n).map(|_| StandardNormal.sample(rng)).collect();
    for i in 0..n {
        for j in 0..i {
            let d: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
            for k in 0..n {
                q[i * n + k] -= d * q[j * n + k];
            }
        }
        let norm = (0..n).map(|k| q[i * n + k].powi(2)).sum::<f64>().sqrt();
        for k in 0..n {
            q[i * n + k] /= norm;
        }
    }
    q
}

// one per layer: the size difference between the variants does not matter
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Weight<F> {
    Plain(Param<F>),
    Lu {
        perm: Param<F>,
        lower: Param<F>,
        upper: Param<F>,
        log_s: Param<F>,
        sign: Param<F>,
    },
}

/// Glow's invertible 1x1 convolution.
#[derive(Clone, Debug)]
pub struct InvConv1x1<F> {
    shape: ImageShape,
    weight: Weight<F>,
    x: Mat<F>,
}

impl<F: Float> InvConv1x1<F> {
    /// Initialised with a random rotation (log|det| = 0); `lu`: LU-parameterised.
    pub fn new(shape: ImageShape, lu: bool, rng: &mut Rng) -> Self {
        let c = shape.c;
        let q = random_rotation(c, rng);
        let cv = |v: &[f64]| v.iter().map(|&x| F::c(x)).collect::<Vec<F>>();
        let weight = if lu {
            let (perm, l, u) = plu(&q, c);
            let strict = |m: &[f64], lower: bool| {
                (0..c * c)
                    .map(|k| {
                        let (i, j) = (k / c, k % c);
                        if (lower && j < i) || (!lower && j > i) {
                            m[k]
                        } else {
                            0.0
                        }
                    })
                    .collect::<Vec<f64>>()
            };
            let d: Vec<f64> = (0..c).map(|i| u[i * c + i]).collect();
            Weight::Lu {
                perm: Param::buffer(
                    "perm",
                    vec![c],
                    perm.iter().map(|&i| F::c(i as f64)).collect(),
                ),
                lower: Param::new("lower", vec![c, c], cv(&strict(&l, true))),
                upper: Param::new("upper", vec![c, c], cv(&strict(&u, false))),
                log_s: Param::new(
                    "log_s",
                    vec![c],
                    d.iter().map(|v| F::c(v.abs().ln())).collect(),
                ),
                sign: Param::buffer(
                    "sign",
                    vec![c],
                    d.iter().map(|v| F::c(v.signum())).collect(),
                ),
            }
        } else {
            Weight::Plain(Param::new("weight", vec![c, c], cv(&q)))
        };
        InvConv1x1 {
            shape,
            weight,
            x: Mat::zeros(0, shape.dim()),
        }
    }

    /// `(W, log|det W|)` in f64.
    pub(super) fn matrix(&self) -> (Vec<f64>, f64) {
        let c = self.shape.c;
        match &self.weight {
            Weight::Plain(w) => {
                let w: Vec<f64> = w.value().iter().map(|v| v.f64()).collect();
                let ld = inverse_logdet(&w, c).1;
                (w, ld)
            }
            Weight::Lu {
                perm,
                lower,
                upper,
                log_s,
                sign,
            } => {
                let (l, u) = self.lu_parts(lower, upper, log_s, sign);
                let mut m = vec![0.0; c * c];
                for i in 0..c {
                    for k in 0..=i {
                        let lik = l[i * c + k];
                        for j in k..c {
                            m[i * c + j] += lik * u[k * c + j];
                        }
                    }
                }
                let mut w = vec![0.0; c * c];
                for i in 0..c {
                    let p = perm.value()[i].f64() as usize;
                    w[i * c..(i + 1) * c].copy_from_slice(&m[p * c..(p + 1) * c]);
                }
                let ld = log_s.value().iter().map(|v| v.f64()).sum();
                (w, ld)
            }
        }
    }

    fn lu_parts(
        &self,
        lower: &Param<F>,
        upper: &Param<F>,
        log_s: &Param<F>,
        sign: &Param<F>,
    ) -> (Vec<f64>, Vec<f64>) {
        let c = self.shape.c;
        let mut l = vec![0.0; c * c];
        let mut u = vec![0.0; c * c];
        for i in 0..c {
            for j in 0..c {
                let k = i * c + j;
                if j < i {
                    l[k] = lower.value()[k].f64();
                } else if j == i {
                    l[k] = 1.0;
                    u[k] = sign.value()[i].f64() * log_s.value()[i].f64().exp();
                } else {
                    u[k] = upper.value()[k].f64();
                }
            }
        }
        (l, u)
    }

    /// Gradients of the LU factors `(dL, dU, d log_s)` given `G = dL/dW`: `W[i] = M[perm[i]]` with `M = L U`, so
    /// `dM[perm[i]] = G[i]`, `dL = dM U^T`, `dU = L^T dM`, and `U_ii = sign_i exp(log_s_i)`.
    fn lu_grads(&self, g: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let Weight::Lu {
            perm,
            lower,
            upper,
            log_s,
            sign,
        } = &self.weight
        else {
            unreachable!("LU weights")
        };
        let c = self.shape.c;
        let (l, u) = self.lu_parts(lower, upper, log_s, sign);
        let mut dm = vec![0.0; c * c];
        for i in 0..c {
            let p = perm.value()[i].f64() as usize;
            dm[p * c..(p + 1) * c].copy_from_slice(&g[i * c..(i + 1) * c]);
        }
        let mut dl = vec![0.0; c * c];
        let mut du = vec![0.0; c * c];
        for i in 0..c {
            for j in 0..c {
                dl[i * c + j] = (0..c).map(|k| dm[i * c + k] * u[j * c + k]).sum();
                du[i * c + j] = (0..c).map(|k| l[k * c + i] * dm[k * c + j]).sum();
            }
        }
        let ds = (0..c).map(|i| du[i * c + i] * u[i * c + i]).collect();
        (dl, du, ds)
    }

    /// `out_r = M x_r` at every pixel of every row (`M` is `c x c`, f64).
    fn apply(&self, x: &Mat<F>, m: &[f64]) -> Mat<F> {
        let (c, hw) = (self.shape.c, self.shape.hw());
        let mf: Vec<F> = m.iter().map(|&v| F::c(v)).collect();
        let mut z = Mat::zeros(x.rows, x.cols);
        z.data
            .par_chunks_mut(c * hw)
            .zip(x.data.par_chunks(c * hw))
            .with_min_len(crate::engine::pool::min_len())
            .for_each(|(zr, xr)| {
                for i in 0..c {
                    let out = &mut zr[i * hw..(i + 1) * hw];
                    for j in 0..c {
                        let a = mf[i * c + j];
                        out.iter_mut()
                            .zip(&xr[j * hw..(j + 1) * hw])
                            .for_each(|(o, &v)| *o += a * v);
                    }
                }
            });
        z
    }
}

impl<F: Float> Transform<F> for InvConv1x1<F> {
    fn kind(&self) -> &'static str {
        match self.weight {
            Weight::Plain(_) => "InvConv1x1",
            Weight::Lu { .. } => "InvConv1x1LU",
        }
    }
    fn dim(&self) -> usize {
        self.shape.dim()
    }
    fn forward(&self, x: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let (w, ld) = self.matrix();
        let ld = F::c(ld * self.shape.hw() as f64);
        (self.apply(x, &w), vec![ld; x.rows])
    }
    fn inverse(&self, z: &Mat<F>, _ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let (w, ld) = self.matrix();
        let (winv, _) = inverse_logdet(&w, self.shape.c);
        let ld = F::c(-ld * self.shape.hw() as f64);
        (self.apply(z, &winv), vec![ld; z.rows])
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.x = x.clone();
        self.forward(x, ctx)
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let (c, hw) = (self.shape.c, self.shape.hw());
        let (w, _) = self.matrix();
        // dx = W^T dz at every pixel
        let wt: Vec<f64> = (0..c * c).map(|k| w[(k % c) * c + k / c]).collect();
        let dx = self.apply(dz, &wt);
        // G = dL/dW = sum over rows and pixels of dz x^T (fixed-size row chunks summed in order, so the
        // result does not depend on the thread count)
        let parts: Vec<Vec<f64>> = dz
            .data
            .par_chunks(64 * c * hw)
            .zip(self.x.data.par_chunks(64 * c * hw))
            .with_min_len(crate::engine::pool::min_len())
            .map(|(dzc, xc)| {
                let mut g = vec![0.0; c * c];
                for (dzr, xr) in dzc.chunks(c * hw).zip(xc.chunks(c * hw)) {
                    for i in 0..c {
                        let a = &dzr[i * hw..(i + 1) * hw];
                        for j in 0..c {
                            let b = &xr[j * hw..(j + 1) * hw];
                            g[i * c + j] += a.iter().zip(b).map(|(&p, &q)| p * q).sum::<F>().f64();
                        }
                    }
                }
                g
            })
            .collect();
        let mut g = vec![0.0; c * c];
        for p in &parts {
            g.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        let gld: f64 = dlogdet.iter().map(|v| v.f64()).sum::<f64>() * hw as f64;
        match &mut self.weight {
            Weight::Plain(wp) => {
                // d log|det W| / dW = W^-T
                let (winv, _) = inverse_logdet(&w, c);
                for i in 0..c {
                    for j in 0..c {
                        wp.grad_mut()[i * c + j] += F::c(g[i * c + j] + gld * winv[j * c + i]);
                    }
                }
            }
            Weight::Lu { .. } => {
                let (dl, du, ds) = self.lu_grads(&g);
                if let Weight::Lu {
                    lower,
                    upper,
                    log_s,
                    ..
                } = &mut self.weight
                {
                    let c = self.shape.c;
                    for i in 0..c {
                        for j in 0..c {
                            let k = i * c + j;
                            if j < i {
                                lower.grad_mut()[k] += F::c(dl[k]);
                            } else if j > i {
                                upper.grad_mut()[k] += F::c(du[k]);
                            }
                        }
                        log_s.grad_mut()[i] += F::c(ds[i] + gld);
                    }
                }
            }
        }
        dx
    }
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        let out = self.inverse(z, ctx);
        self.x = out.0.clone();
        Some(out)
    }
    /// `x = W^-1 z` at every pixel: `dL/dz = W^-T dL/dx`; the parameters' gradients are the forward
    /// backward's at `x` for the upstream `(-dL/dz, -dL/dlogdet)`.
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let c = self.shape.c;
        let (w, _) = self.matrix();
        let (winv, _) = inverse_logdet(&w, c);
        let wit: Vec<f64> = (0..c * c).map(|k| winv[(k % c) * c + k / c]).collect();
        let dz = self.apply(dx, &wit);
        let mut neg = dz.clone();
        neg.data.iter_mut().for_each(|v| *v = -*v);
        let g: Vec<F> = dlogdet.iter().map(|&v| -v).collect();
        self.backward(&neg, &g);
        dz
    }
    fn params(&self) -> Vec<&Param<F>> {
        match &self.weight {
            Weight::Plain(w) => vec![w],
            Weight::Lu {
                perm,
                lower,
                upper,
                log_s,
                sign,
            } => vec![perm, lower, upper, log_s, sign],
        }
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        match &mut self.weight {
            Weight::Plain(w) => vec![w],
            Weight::Lu {
                perm,
                lower,
                upper,
                log_s,
                sign,
            } => vec![perm, lower, upper, log_s, sign],
        }
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        Some(Box::new(self.clone()))
    }
}
