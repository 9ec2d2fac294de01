//! Couplings on images with CNN conditioners: channel-wise or checkerboard masks (Dinh et al. 2017 sec. 3.4),
//! Glow's channel split.

use super::*;
use crate::transforms::ElementwiseMap;

/// Which features of an image a convolutional coupling keeps (conditions on) and which it transforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ImageMask {
    /// Channel split: the first `C/2` channels condition the rest (`swap`: the last `C/2` condition the rest).
    Channel { swap: bool },
    /// Spatial checkerboard: pixels with `(y + x + parity)` even condition the others, in every channel.
    Checkerboard { parity: usize },
}

/// The `Transform` methods every image coupling (`self.core: ConvCore`) hands to its core: context gradient,
/// parameters, replica.
macro_rules! delegate_to_conv_core {
    () => {
        fn context_grad(&mut self) -> Option<Mat<F>> {
            self.core.dctx.take()
        }
        fn params(&self) -> Vec<&Param<F>> {
            self.core.net.params()
        }
        fn params_mut(&mut self) -> Vec<&mut Param<F>> {
            self.core.net.params_mut()
        }
        fn replica(&self) -> Option<Box<dyn Transform<F>>> {
            Some(Box::new(self.clone()))
        }
    };
}

/// What every image coupling shares: the mask's layout, the CNN conditioner (fed the identity features and
/// the context as constant planes), and its backward into the input and the context. The conditioner outputs
/// `P` planes per transformed channel (`P` parameters per element, parameter `q` of output channel `oc` in
/// plane `q * half + oc`); its last convolution is zero-initialised, so every coupling starts as the identity.
#[derive(Clone, Debug)]
pub(crate) struct ConvCore<F> {
    shape: ImageShape,
    ctx_dim: usize,
    net: ConvNet<F>,
    /// identity features: (feature, pixel, CNN input channel)
    a_map: Vec<(usize, usize, usize)>,
    cin: usize,
    /// transformed features: (feature, pixel, CNN output channel of its first parameter)
    b_map: Vec<(usize, usize, usize)>,
    half: usize,
    /// the CNN's output planes (`P * half`)
    cout: usize,
    /// dL/dcontext of the last backward
    dctx: Option<Mat<F>>,
}

/// Coupling on an image with a CNN conditioner: `z_b = x_b * exp(l) + t` (affine, `l` bounded by `bound`) or
/// `z_b = x_b + t` (additive), `(t, h) = CNN(x_a, context planes)`, `l = bound(h)`: Glow's and RealNVP's,
/// fused and tuned. Other element-wise maps: [`MapConvCoupling`].
#[derive(Clone, Debug)]
pub struct ConvCoupling<F> {
    core: ConvCore<F>,
    affine: bool,
    bound: ScaleBound,
    /// training cache: x_b, exp(l), dl/dh
    xb: Vec<F>,
    s: Vec<F>,
    dl: Vec<F>,
}

/// Coupling on an image of any element-wise map `M`: `z_b = g(x_b; θ)`, `θ = CNN(x_a, context planes)`.
#[derive(Clone, Debug)]
pub struct MapConvCoupling<F, M> {
    core: ConvCore<F>,
    map: M,
    /// training cache: the input and the conditioner's output
    x: Mat<F>,
    h: Mat<F>,
}

impl<F: Float> ConvCore<F> {
    fn set_direct(&mut self, on: bool) {
        self.net.set_direct(on);
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        shape: ImageShape,
        mask: ImageMask,
        params: usize,
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
        let cout = params * half;
        ConvCore {
            shape,
            ctx_dim,
            net: ConvNet::new(name, net, cin + ctx_dim, width, cout, rng),
            a_map,
            cin,
            b_map,
            half,
            cout,
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
            .with_min_len(crate::engine::pool::min_len())
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

    /// The conditioner's output for a training pass (its caches kept).
    fn conditioner_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> Mat<F> {
        let s = Hw {
            n: x.rows,
            ..self.hw()
        };
        let inp = self.net_input(x, ctx);
        self.net.forward_train_owned(inp, s)
    }

    /// The conditioner's backward for its output gradient `dh`: keeps the context's gradient and adds the
    /// identity features' into `dx`.
    fn backward_net(&mut self, dx: &mut Mat<F>, dh: &Mat<F>) {
        let hw = self.shape.hw();
        let din = self.net.backward(dh);
        let ci = self.cin + self.ctx_dim;
        let d = dx.cols;
        // a context plane is the same value at every pixel: its gradient sums over the pixels
        self.dctx = (self.ctx_dim > 0).then(|| {
            let mut g = Mat::zeros(dx.rows, self.ctx_dim);
            g.data
                .par_chunks_mut(self.ctx_dim)
                .zip(din.data.par_chunks(hw * ci))
                .with_min_len(crate::engine::pool::min_len())
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
            .with_min_len(crate::engine::pool::min_len())
            .for_each(|(dxr, dr)| {
                for &(j, p, ic) in &self.a_map {
                    dxr[j] += dr[p * ci + ic];
                }
            });
    }
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
        let params = if affine { 2 } else { 1 };
        ConvCoupling {
            core: ConvCore::new(name, shape, mask, params, net, width, ctx_dim, rng),
            affine,
            bound,
            xb: Vec::new(),
            s: Vec::new(),
            dl: Vec::new(),
        }
    }

    /// With the conditioner's few-output convolutions evaluated directly (`on`) or through im2col.
    pub fn with_direct(mut self, on: bool) -> Self {
        self.core.set_direct(on);
        self
    }

    /// A training pass in either direction: the conditioner with its caches, then the element-wise part
    /// keeping (affine) x_b on the data side, `exp(±l)` and dl/dh for the backward of that direction.
    fn train_pass(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>, inverse: bool) -> (Mat<F>, Vec<F>) {
        let h = self.core.conditioner_train(x, ctx);
        let (z, ld, kept) = self.apply(x, &h, inverse, self.affine);
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

    /// The backward of either direction given dL/d(output) `d` and dL/dlogdet, from the cache of the last
    /// training pass (`x_b` on the data side, `e^±l`, dl/dh):
    /// forward `z_b = x_b e^l + t`: `dL/dx_b = d e^l`, `dL/dt = d`, `dL/dl = d x_b e^l + g`;
    /// inverse `x_b = (z_b - t) e^-l`: `dL/dz_b = d e^-l`, `dL/dt = -dL/dz_b`, `dL/dl = -d x_b - g`
    /// (additive: the same with `l = 0`).
    fn backward_dir(&mut self, d_out: &Mat<F>, dlogdet: &[F], inverse: bool) -> Mat<F> {
        let core = &self.core;
        let (hw, nb, cout, half) = (core.shape.hw(), core.b_map.len(), core.cout, core.half);
        let mut d_in = d_out.clone();
        let mut dh = Mat::zeros(d_out.rows * hw, cout);
        let d = d_out.cols;
        dh.data
            .par_chunks_mut(hw * cout)
            .zip(d_in.data.par_chunks_mut(d))
            .enumerate()
            .with_min_len(crate::engine::pool::min_len())
            .for_each(|(r, (dhr, dr))| {
                let g = dlogdet[r];
                for (k, &(j, p, oc)) in core.b_map.iter().enumerate() {
                    let dj = dr[j];
                    let (t, l) = (p * cout + oc, p * cout + half + oc);
                    if !self.affine {
                        dhr[t] = if inverse { -dj } else { dj };
                        continue;
                    }
                    let c = r * nb + k;
                    let v = dj * self.s[c];
                    dr[j] = v;
                    if inverse {
                        dhr[t] = -v;
                        dhr[l] = (-dj * self.xb[c] - g) * self.dl[c];
                    } else {
                        dhr[t] = dj;
                        dhr[l] = (dj * self.xb[c] * self.s[c] + g) * self.dl[c];
                    }
                }
            });
        self.core.backward_net(&mut d_in, &dh);
        d_in
    }

    /// Element-wise part, one pass: scale/shift and log-det; with `cache`, keep x_b (data side), exp(±l), dl/dh.
    fn apply(
        &self,
        x: &Mat<F>,
        h: &Mat<F>,
        inverse: bool,
        cache: bool,
    ) -> (Mat<F>, Vec<F>, Vec<[F; 3]>) {
        let hw = self.core.shape.hw();
        let cout = h.cols;
        let nb = self.core.b_map.len();
        let mut z = x.clone();
        let mut ld = vec![F::zero(); x.rows];
        let mut kept = vec![[F::zero(); 3]; if cache { x.rows * nb } else { 0 }];
        let d = x.cols;
        let body = |r: usize, zr: &mut [F], ldr: &mut F, mut keep: Option<&mut [[F; 3]]>| {
            let hr = &h.data[r * hw * cout..(r + 1) * hw * cout];
            let mut acc = F::zero();
            for (k, &(j, p, oc)) in self.core.b_map.iter().enumerate() {
                let t = hr[p * cout + oc];
                if !self.affine {
                    zr[j] = if inverse { zr[j] - t } else { zr[j] + t };
                    continue;
                }
                let (l, dldh) = self.bound.eval(hr[p * cout + self.core.half + oc]);
                acc += l;
                if inverse {
                    // the sampling direction keeps x_b (its output here) and exp(-l)
                    let e = (-l).exp();
                    zr[j] = (zr[j] - t) * e;
                    if let Some(kp) = keep.as_deref_mut() {
                        kp[k] = [zr[j], e, dldh];
                    }
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
                .with_min_len(crate::engine::pool::min_len())
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
        self.core.shape.dim()
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.core.conditioner(x, ctx);
        let (z, ld, _) = self.apply(x, &h, false, false);
        (z, ld)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        // x_a = z_a: the conditioner's input is available from z
        let h = self.core.conditioner(z, ctx);
        let (x, ld, _) = self.apply(z, &h, true, false);
        (x, ld)
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        self.train_pass(x, ctx, false)
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        self.backward_dir(dz, dlogdet, false)
    }
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        // x_a = z_a: the conditioner sees the same input in both directions
        Some(self.train_pass(z, ctx, true))
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        self.backward_dir(dx, dlogdet, true)
    }
    delegate_to_conv_core!();
}

impl<F: Float, M: ElementwiseMap> MapConvCoupling<F, M> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        shape: ImageShape,
        mask: ImageMask,
        map: M,
        net: ConvNetKind,
        width: usize,
        ctx_dim: usize,
        rng: &mut Rng,
    ) -> Self {
        let p = map.params_per_element();
        MapConvCoupling {
            core: ConvCore::new(name, shape, mask, p, net, width, ctx_dim, rng),
            map,
            x: Mat::zeros(0, 0),
            h: Mat::zeros(0, 0),
        }
    }

    /// With the conditioner's few-output convolutions evaluated directly (`on`) or through im2col.
    pub fn with_direct(mut self, on: bool) -> Self {
        self.core.set_direct(on);
        self
    }

    /// The maps of one batch given the conditioner's output `h`: the new rows and their log-dets.
    fn apply(&self, x: &Mat<F>, h: &Mat<F>, inverse: bool) -> (Mat<F>, Vec<F>) {
        let core = &self.core;
        let (hw, cout, half) = (core.shape.hw(), core.cout, core.half);
        let np = self.map.params_per_element();
        let mut z = x.clone();
        let mut ld = vec![F::zero(); x.rows];
        z.data
            .par_chunks_mut(x.cols)
            .zip(ld.par_iter_mut())
            .enumerate()
            .with_min_len(crate::engine::pool::min_len())
            .for_each(|(r, (zr, ldr))| {
                let hr = &h.data[r * hw * cout..(r + 1) * hw * cout];
                let mut st = M::State::<F>::default();
                let mut prm = vec![F::zero(); np];
                let mut acc = F::zero();
                for &(j, p, oc) in &core.b_map {
                    for (q, v) in prm.iter_mut().enumerate() {
                        *v = hr[p * cout + q * half + oc];
                    }
                    self.map.prepare(&prm, &mut st);
                    let (v, l) = match inverse {
                        true => self.map.inverse(zr[j], &st),
                        false => self.map.forward(zr[j], &st),
                    };
                    zr[j] = v;
                    acc += l;
                }
                *ldr = acc;
            });
        (z, ld)
    }

    /// The backward of either direction at the data-side point `x` (cached): `dz` holds dL/d(output).
    fn backward_dir(&mut self, dz: &Mat<F>, dlogdet: &[F], inverse: bool) -> Mat<F> {
        let core = &self.core;
        let (hw, cout, half) = (core.shape.hw(), core.cout, core.half);
        let np = self.map.params_per_element();
        let mut dx = dz.clone();
        let mut dh = Mat::zeros(dz.rows * hw, cout);
        let (x, h) = (&self.x, &self.h);
        dh.data
            .par_chunks_mut(hw * cout)
            .zip(dx.data.par_chunks_mut(dz.cols))
            .enumerate()
            .with_min_len(crate::engine::pool::min_len())
            .for_each(|(r, (dhr, dxr))| {
                let (xr, hr) = (x.row(r), &h.data[r * hw * cout..(r + 1) * hw * cout]);
                let mut st = M::State::<F>::default();
                let (mut prm, mut dp) = (vec![F::zero(); np], vec![F::zero(); np]);
                for &(j, p, oc) in &core.b_map {
                    for (q, v) in prm.iter_mut().enumerate() {
                        *v = hr[p * cout + q * half + oc];
                    }
                    self.map.prepare(&prm, &mut st);
                    dp.iter_mut().for_each(|v| *v = F::zero());
                    dxr[j] = match inverse {
                        false => self.map.backward(xr[j], &st, dxr[j], dlogdet[r], &mut dp),
                        true => self
                            .map
                            .backward_inverse(xr[j], &st, dxr[j], dlogdet[r], &mut dp),
                    };
                    for (q, &v) in dp.iter().enumerate() {
                        dhr[p * cout + q * half + oc] = v;
                    }
                }
            });
        self.core.backward_net(&mut dx, &dh);
        dx
    }
}

impl<F: Float, M: ElementwiseMap> Transform<F> for MapConvCoupling<F, M> {
    fn kind(&self) -> &'static str {
        M::COUPLING_2D
    }
    fn dim(&self) -> usize {
        self.core.shape.dim()
    }
    fn forward(&self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.core.conditioner(x, ctx);
        self.apply(x, &h, false)
    }
    fn inverse(&self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.core.conditioner(z, ctx);
        self.apply(z, &h, true)
    }
    fn forward_train(&mut self, x: &Mat<F>, ctx: Option<&Mat<F>>) -> (Mat<F>, Vec<F>) {
        let h = self.core.conditioner_train(x, ctx);
        let out = self.apply(x, &h, false);
        self.x = x.clone();
        self.h = h;
        out
    }
    fn backward(&mut self, dz: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        self.backward_dir(dz, dlogdet, false)
    }
    fn inverse_train(&mut self, z: &Mat<F>, ctx: Option<&Mat<F>>) -> Option<(Mat<F>, Vec<F>)> {
        // x_a = z_a: the conditioner sees the same input in both directions
        let h = self.core.conditioner_train(z, ctx);
        let out = self.apply(z, &h, true);
        self.x = out.0.clone();
        self.h = h;
        Some(out)
    }
    fn backward_inverse(&mut self, dx: &Mat<F>, dlogdet: &[F]) -> Mat<F> {
        self.backward_dir(dx, dlogdet, true)
    }
    delegate_to_conv_core!();
}
