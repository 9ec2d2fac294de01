//! Couplings on images with CNN conditioners: channel-wise or checkerboard masks (Dinh et al. 2017 sec. 3.4),
//! Glow's channel split.

use super::*;

/// Which features of an image a convolutional coupling keeps (conditions on) and which it transforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ImageMask {
    /// Channel split: the first `C/2` channels condition the rest (`swap`: the last `C/2` condition the rest).
    Channel { swap: bool },
    /// Spatial checkerboard: pixels with `(y + x + parity)` even condition the others, in every channel.
    Checkerboard { parity: usize },
}

/// Coupling on an image with a CNN conditioner: `z_b = x_b * exp(l) + t` (affine, `l` bounded by `bound`) or
/// `z_b = x_b + t` (additive), `(t, h) = CNN(x_a, context planes)`, `l = bound(h)`. The conditioner's last
/// convolution is zero-initialised, so the layer starts as the identity. A context (one vector per image) is
/// fed to the CNN as constant extra input planes.
#[derive(Clone, Debug)]
pub struct ConvCoupling<F> {
    shape: ImageShape,
    affine: bool,
    bound: ScaleBound,
    ctx_dim: usize,
    net: ConvNet<F>,
    /// identity features: (feature, pixel, CNN input channel)
    a_map: Vec<(usize, usize, usize)>,
    cin: usize,
    /// transformed features: (feature, pixel, CNN output channel of its shift; its scale is `half` further)
    b_map: Vec<(usize, usize, usize)>,
    half: usize,
    /// training cache: x_b, exp(l), dl/dh
    xb: Vec<F>,
    s: Vec<F>,
    dl: Vec<F>,
    /// dL/dcontext of the last backward
    dctx: Option<Mat<F>>,
}

impl<F: Float> ConvCoupling<F> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        shape: ImageShape,
        mask: ImageMask,
        affine: bool,
        bound: ScaleBound,
        net: ConvNetKind,
        width: usize,
        ctx_dim: usize,
        rng: &mut Rng,
    ) -> Self {
        let (c, hw) = (shape.c, shape.hw());
        let feat = |ch: usize, p: usize| ch * hw + p;
        let (a_map, cin, b_map, half): (Vec<_>, usize, Vec<_>, usize) = match mask {
            ImageMask::Channel { swap } => {
                assert!(c >= 2, "a channel coupling needs at least 2 channels");
                let na = c / 2;
                let (a, b): (Vec<usize>, Vec<usize>) = if swap {
                    ((c - na..c).collect(), (0..c - na).collect())
                } else {
                    ((0..na).collect(), (na..c).collect())
                };
                let am = a
                    .iter()
                    .enumerate()
                    .flat_map(|(ic, &ch)| (0..hw).map(move |p| (feat(ch, p), p, ic)))
                    .collect();
                let bm = b
                    .iter()
                    .enumerate()
                    .flat_map(|(oc, &ch)| (0..hw).map(move |p| (feat(ch, p), p, oc)))
                    .collect();
                (am, a.len(), bm, b.len())
            }
            ImageMask::Checkerboard { parity } => {
                let on = |p: usize| (p / shape.w + p % shape.w + parity).is_multiple_of(2);
                let mut am = Vec::new();
                let mut bm = Vec::new();
                for ch in 0..c {
                    for p in 0..hw {
                        if on(p) {
                            am.push((feat(ch, p), p, ch));
                        } else {
                            bm.push((feat(ch, p), p, ch));
                        }
                    }
                }
                (am, c, bm, c)
            }
        };
        let cout = if affine { 2 * half } else { half };
        ConvCoupling {
            shape,
            affine,
            bound,
            ctx_dim,
            net: ConvNet::new(name, net, cin + ctx_dim, width, cout, rng),
            a_map,
            cin,
            b_map,
            half,
            xb: Vec::new(),
            s: Vec::new(),
            dl: Vec::new(),
            dctx: None,
        }
    }

    fn hw(&self) -> Hw {
        Hw {
            n: 0,
            h: self.shape.h,
            w: self.shape.w,
        }
    }

    /// The CNN input: identity features at their pixels and channels (zero elsewhere), context planes.
    fn net_input(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        let hw = self.shape.hw();
        let ci = self.cin + self.ctx_dim;
        let mut inp = Mat::zeros(x.rows * hw, ci);
        if let Some(c) = ctx {
            assert_eq!(c.cols, self.ctx_dim, "context columns");
        } else {
            assert_eq!(self.ctx_dim, 0, "conditional coupling needs a context");
        }
        inp.data
            .par_chunks_mut(hw * ci)
            .enumerate()
            .for_each(|(r, dst)| {
                let xr = x.row(r);
                for &(j, p, ic) in &self.a_map {
                    dst[p * ci + ic] = xr[j];
                }
                if let Some(c) = ctx {
                    let cr = c.row(r);
                    for p in 0..hw {
                        dst[p * ci + self.cin..(p + 1) * ci].copy_from_slice(cr);
                    }
                }
            });
        inp
    }

    fn conditioner(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        let s = Hw {
            n: x.rows,
            ..self.hw()
        };
        self.net.forward(&self.net_input(x, ctx), s)
    }

    /// Element-wise part, one pass: scale/shift and log-det; with `cache`, keep x_b, exp(l), dl/dh.
    fn apply(
        &self,
        x: &Mat<F>,
        h: &Mat<F>,
        inverse: bool,
        cache: bool,
    ) -> (Mat<F>, Vec<F>, Vec<[F; 3]>) {
        let hw = self.shape.hw();
        let cout = h.cols;
        let nb = self.b_map.len();
        let mut z = x.clone();
        let mut ld = vec![F::zero(); x.rows];
        let mut kept = vec![[F::zero(); 3]; if cache { x.rows * nb } else { 0 }];
        let d = x.cols;
        let body = |r: usize, zr: &mut [F], ldr: &mut F, mut keep: Option<&mut [[F; 3]]>| {
            let hr = &h.data[r * hw * cout..(r + 1) * hw * cout];
            let mut acc = F::zero();
            for (k, &(j, p, oc)) in self.b_map.iter().enumerate() {
                let t = hr[p * cout + oc];
                if !self.affine {
                    zr[j] = if inverse { zr[j] - t } else { zr[j] + t };
                    continue;
                }
                let (l, dldh) = self.bound.eval(hr[p * cout + self.half + oc]);
                acc += l;
                if inverse {
                    zr[j] = (zr[j] - t) * (-l).exp();
                } else {
                    let e = l.exp();
                    if let Some(kp) = keep.as_deref_mut() {
                        kp[k] = [zr[j], e, dldh];
                    }
                    zr[j] = zr[j] * e + t;
                }
            }
            *ldr = if inverse { -acc } else { acc };
        };
        let rows = z.data.par_chunks_mut(d).zip(ld.par_iter_mut()).enumerate();
        if cache {
            rows.zip(kept.par_chunks_mut(nb))
                .for_each(|((r, (zr, ldr)), kp)| body(r, zr, ldr, Some(kp)));
        } else {
            rows.for_each(|(r, (zr, ldr))| body(r, zr, ldr, None));
        }
        (z, ld, kept)
    }
}

impl<F: Float> Transform<F> for ConvCoupling<F> {
    fn kind(&self) -> &'static str {
        if self.affine {
            "AffineCoupling2d"
        } else {
            "AdditiveCoupling2d"
        }
    }
    fn dim(&self) -> usize {
        self.shape.dim()
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.conditioner(x, ctx);
        let (z, ld, _) = self.apply(x, &h, false, false);
        (z, ld)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        // x_a = z_a: the conditioner's input is available from z
        let h = self.conditioner(z, ctx);
        let (x, ld, _) = self.apply(z, &h, true, false);
        (x, ld)
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let s = Hw {
            n: x.rows,
            ..self.hw()
        };
        let inp = self.net_input(x, ctx);
        let h = self.net.forward_train_owned(inp, s);
        let (z, ld, kept) = self.apply(x, &h, false, self.affine);
        self.xb.clear();
        self.s.clear();
        self.dl.clear();
        for [a, b, c] in kept {
            self.xb.push(a);
            self.s.push(b);
            self.dl.push(c);
        }
        (z, ld)
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        let hw = self.shape.hw();
        let nb = self.b_map.len();
        let cout = if self.affine {
            2 * self.half
        } else {
            self.half
        };
        let mut dx = dz.clone();
        let mut dh = Mat::zeros(dz.rows * hw, cout);
        let d = dz.cols;
        dh.data
            .par_chunks_mut(hw * cout)
            .zip(dx.data.par_chunks_mut(d))
            .enumerate()
            .for_each(|(r, (dhr, dxr))| {
                let g = dlogdet[r];
                for (k, &(j, p, oc)) in self.b_map.iter().enumerate() {
                    let dzj = dxr[j];
                    dhr[p * cout + oc] = dzj;
                    if self.affine {
                        let c = r * nb + k;
                        let s = self.s[c];
                        dxr[j] = dzj * s;
                        dhr[p * cout + self.half + oc] = (dzj * self.xb[c] * s + g) * self.dl[c];
                    }
                }
            });
        let din = self.net.backward(&dh);
        let ci = self.cin + self.ctx_dim;
        // a context plane is the same value at every pixel: its gradient sums over the pixels
        self.dctx = (self.ctx_dim > 0).then(|| {
            let mut g = Mat::zeros(dz.rows, self.ctx_dim);
            g.data
                .par_chunks_mut(self.ctx_dim)
                .zip(din.data.par_chunks(hw * ci))
                .for_each(|(gr, dr)| {
                    for p in 0..hw {
                        for (k, v) in gr.iter_mut().enumerate() {
                            *v += dr[p * ci + self.cin + k];
                        }
                    }
                });
            g
        });
        dx.data
            .par_chunks_mut(d)
            .zip(din.data.par_chunks(hw * ci))
            .for_each(|(dxr, dr)| {
                for &(j, p, ic) in &self.a_map {
                    dxr[j] += dr[p * ci + ic];
                }
            });
        dx
    }
    fn context_grad(&mut self) -> Option<Mat<F>> {
        self.dctx.take()
    }
    fn params(&self) -> Vec<&Param<F>> {
        self.net.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        self.net.params_mut()
    }
    fn replica(&self) -> Option<Box<dyn Transform<F>>> {
        Some(Box::new(self.clone()))
    }
}
