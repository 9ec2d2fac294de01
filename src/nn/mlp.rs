//! Multi-layer perceptron conditioner: `Linear -> act -> ... -> Linear`, last layer zero-initialised so that
//! the transform it parameterises starts as the identity.

use super::piecewise::{negative_slope, Pieces, TableCache};
use super::Param;
use crate::engine::kernels;
use crate::engine::kernels::View;
use crate::engine::{Float, Mat, Rng};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// Hidden-layer non-linearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    #[default]
    Relu,
    Tanh,
    Elu,
    LeakyRelu,
    Silu,
}

impl Activation {
    /// Whether the derivative can be computed from the activation's output alone (`deriv(a, a)` is then
    /// exact): everything but SiLU.
    pub(crate) fn deriv_from_output(self) -> bool {
        !matches!(self, Activation::Silu)
    }
    /// `v = act(v)` over a buffer: one loop per activation (the match outside it, so it vectorises), split over
    /// the pool when large.
    pub(crate) fn apply_slice<F: Float>(self, v: &mut [F]) {
        match self {
            Activation::Relu => kernels::map_inplace(v, |h| Activation::Relu.apply(h)),
            Activation::Tanh => kernels::map_inplace(v, |h| Activation::Tanh.apply(h)),
            Activation::Elu => kernels::map_inplace(v, |h| Activation::Elu.apply(h)),
            Activation::LeakyRelu => kernels::map_inplace(v, |h| Activation::LeakyRelu.apply(h)),
            Activation::Silu => kernels::map_inplace(v, |h| Activation::Silu.apply(h)),
        }
    }
    /// `d *= act'(pre)` over a buffer (`post` = act(pre)), like [`Activation::apply_slice`].
    pub(crate) fn backward_slice<F: Float>(self, d: &mut [F], pre: &[F], post: &[F]) {
        macro_rules! each {
            ($a:expr) => {
                kernels::zip3_inplace(d, pre, post, |g, h, y| g * $a.deriv(h, y))
            };
        }
        match self {
            Activation::Relu => {
                kernels::zip3_inplace(
                    d,
                    pre,
                    post,
                    |g, h, _| {
                        if h > F::zero() {
                            g
                        } else {
                            F::zero()
                        }
                    },
                )
            }
            Activation::Tanh => each!(Activation::Tanh),
            Activation::Elu => each!(Activation::Elu),
            Activation::LeakyRelu => each!(Activation::LeakyRelu),
            Activation::Silu => each!(Activation::Silu),
        }
    }
    #[inline(always)]
    pub(crate) fn apply<F: Float>(self, h: F) -> F {
        match self {
            Activation::Relu => h.max(F::zero()),
            Activation::Tanh => h.tanh(),
            Activation::Elu => {
                if h > F::zero() {
                    h
                } else {
                    h.exp_m1()
                }
            }
            Activation::LeakyRelu => {
                if h > F::zero() {
                    h
                } else {
                    F::c(0.01) * h
                }
            }
            Activation::Silu => h / (F::one() + (-h).exp()),
        }
    }
    /// Derivative given the pre-activation `h` and the output `a`.
    #[inline(always)]
    fn deriv<F: Float>(self, h: F, a: F) -> F {
        match self {
            Activation::Relu => {
                if h > F::zero() {
                    F::one()
                } else {
                    F::zero()
                }
            }
            Activation::Tanh => F::one() - a * a,
            Activation::Elu => {
                if h > F::zero() {
                    F::one()
                } else {
                    a + F::one()
                }
            }
            Activation::LeakyRelu => {
                if h > F::zero() {
                    F::one()
                } else {
                    F::c(0.01)
                }
            }
            Activation::Silu => {
                let s = F::one() / (F::one() + (-h).exp());
                s * (F::one() + h * (F::one() - s))
            }
        }
    }
}

/// Rows `o0..o1` of a masked layer's weight read only input columns `i0..i1`: one dense product of the
/// layer's block-sparse form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub o0: usize,
    pub o1: usize,
    pub i0: usize,
    pub i1: usize,
}

impl Block {
    /// Weights it covers.
    pub fn area(&self) -> usize {
        (self.o1 - self.o0) * (self.i1 - self.i0)
    }
}

/// Runs of masked-out columns shorter than this stay inside a block (computing a few zeros is cheaper than
/// another product).
const MIN_GAP: usize = 32;
/// What one more product costs, in multiply-adds per batch row (call, packing and a less efficient kernel on
/// thin blocks), when choosing a masked layer's block height.
const BLOCK_OVERHEAD: usize = 32 * 32;

/// Fully connected layer `y = x W^T + b`, `W` stored `(out, in)` as in PyTorch.
#[derive(Clone, Debug)]
pub struct Linear<F> {
    pub weight: Param<F>,
    pub bias: Param<F>,
    pub inp: usize,
    pub out: usize,
    /// Masked layers whose mask leaves whole blocks empty: the blocks that hold every unmasked weight.
    /// Empty: dense products.
    blocks: Vec<Block>,
    /// Masked layers: the depth range of every tile of the products on the f32 kernel (the block-sparse form
    /// at the kernel's own tile size, in one product).
    panels: Option<MaskPanels>,
    /// Inference: the weights packed for the products, kept while they are unchanged.
    packed: PackedWeights,
}

/// A layer's weights packed for its inference products ([`kernels::PreparedWeight`]), with the
/// [`Param::version`] they were packed from: reused while the version is the same (repeated inference with
/// fixed weights: scoring a data set batch by batch, sampling), repacked after any write to the weights.
/// Costs one more copy of the weights while it is held; training drops it. Clones start empty.
#[derive(Default)]
struct PackedWeights(Mutex<Option<(u64, Arc<kernels::PreparedWeight>)>>);

impl Clone for PackedWeights {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PackedWeights")
    }
}

impl PackedWeights {
    /// The packed form of `w` (`out x inp`) for `rows`-row inputs, packed now if the held one is stale;
    /// `None` where the products do not run on the packed kernel.
    fn get<F: Float>(
        &self,
        w: &Param<F>,
        out: usize,
        inp: usize,
        rows: usize,
    ) -> Option<Arc<kernels::PreparedWeight>> {
        if !kernels::preparable::<F>(rows, inp, out) {
            return None;
        }
        // the lock is held only to read or replace the entry, never across the packing: the packing runs on the
        // pool, and a thread waiting for it may pick up another row block's inference, which comes here too
        if let Some((v, p)) = self.0.lock().ok()?.as_ref() {
            if *v == w.version() {
                return Some(p.clone());
            }
        }
        let p = Arc::new(kernels::prepare_weight(w.value(), out, inp, rows)?);
        *self.0.lock().ok()? = Some((w.version(), p.clone()));
        Some(p)
    }

    fn clear(&mut self) {
        if let Ok(h) = self.0.get_mut() {
            *h = None;
        }
    }
}

/// The parts of a masked layer's products that hold unmasked weights, per tile of
/// [`kernels::gemm_view_ranged`] (`TILE = (rows, cols)` of C).
#[derive(Clone, Debug)]
struct MaskPanels {
    /// Forward `x W^T`, per group of `TILE.1` outputs: the inputs any of them reads, `[lo, hi)`.
    out_inputs: Vec<(usize, usize)>,
    /// Input gradient `dy W`, per group of `TILE.1` inputs: the outputs that read any of them.
    in_outputs: Vec<(usize, usize)>,
    /// Weight gradient `dy^T x`, per tile of `TILE.0` outputs by `TILE.1` inputs: any unmasked weight.
    live: Vec<bool>,
    live_cols: usize,
    /// The structural zeros inside live weight-gradient tiles, as runs `[start, end)` of the flattened weight:
    /// the only masked entries that product writes nonzero (in MADE's hidden and output layers, whose hidden
    /// degrees are sorted, each row's free weights are a prefix: these are the ends of its last partial tile).
    fix: Vec<(usize, usize)>,
}

impl MaskPanels {
    /// `panels` when a `m x k` by `k x n` product of `F` runs on the ranged kernel (a free function over the
    /// field, so the weight-gradient product can borrow the gradient mutably beside it).
    fn ranged<F: Float>(panels: &Option<Self>, m: usize, k: usize, n: usize) -> Option<&Self> {
        panels
            .as_ref()
            .filter(|_| kernels::ranged_available::<F>(m, k, n))
    }

    fn new<F: Float>(mask: &[F], out: usize, inp: usize) -> Self {
        let (tr, tc) = kernels::TILE;
        let on = |o: usize, i: usize| mask[o * inp + i] != F::zero();
        // the span of the union of `items`' ranges (empty when none has one)
        let span = |items: std::ops::Range<usize>,
                    range: &dyn Fn(usize) -> Option<(usize, usize)>| {
            items
                .filter_map(range)
                .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
                .unwrap_or((0, 0))
        };
        let row_range = |o: usize| {
            let lo = (0..inp).find(|&i| on(o, i))?;
            let hi = (0..inp).rposition(|i| on(o, i))? + 1;
            Some((lo, hi))
        };
        let col_range = |i: usize| {
            let lo = (0..out).find(|&o| on(o, i))?;
            let hi = (0..out).rposition(|o| on(o, i))? + 1;
            Some((lo, hi))
        };
        let rows: Vec<_> = (0..out).map(row_range).collect();
        let cols: Vec<_> = (0..inp).map(col_range).collect();
        let out_inputs = (0..out.div_ceil(tc))
            .map(|j| span(j * tc..(j * tc + tc).min(out), &|o| rows[o]))
            .collect();
        let in_outputs = (0..inp.div_ceil(tc))
            .map(|j| span(j * tc..(j * tc + tc).min(inp), &|i| cols[i]))
            .collect();
        let live_cols = inp.div_ceil(tc);
        let live: Vec<bool> = (0..out.div_ceil(tr) * live_cols)
            .map(|t| {
                let (o0, i0) = ((t / live_cols) * tr, (t % live_cols) * tc);
                (o0..(o0 + tr).min(out)).any(|o| (i0..(i0 + tc).min(inp)).any(|i| on(o, i)))
            })
            .collect();
        let mut fix: Vec<(usize, usize)> = Vec::new();
        for o in 0..out {
            for i in 0..inp {
                if on(o, i) || !live[(o / tr) * live_cols + i / tc] {
                    continue;
                }
                let k = o * inp + i;
                match fix.last_mut() {
                    Some(r) if r.1 == k => r.1 = k + 1,
                    _ => fix.push((k, k + 1)),
                }
            }
        }
        MaskPanels {
            out_inputs,
            in_outputs,
            live,
            live_cols,
            fix,
        }
    }
}

impl<F: Float> Linear<F> {
    /// PyTorch's default initialisation: U(-1/sqrt(in), 1/sqrt(in)) for weights and biases.
    pub fn new(name: &str, inp: usize, out: usize, rng: &mut Rng) -> Self {
        let bound = 1.0 / (inp.max(1) as f64).sqrt();
        let w = (0..inp * out)
            .map(|_| F::c(rng.gen_range(-bound..bound)))
            .collect();
        let b = (0..out)
            .map(|_| F::c(rng.gen_range(-bound..bound)))
            .collect();
        Linear {
            weight: Param::new(format!("{name}.weight"), vec![out, inp], w),
            bias: Param::new(format!("{name}.bias"), vec![out], b),
            inp,
            out,
            blocks: Vec::new(),
            panels: None,
            packed: PackedWeights::default(),
        }
    }
    /// Make this a masked layer (MADE): `mask` is `(out, in)`; disconnected weights are zero from now on and
    /// stay zero because their gradients are masked in every backward. Where the mask leaves large blocks
    /// empty (MADE with sorted degrees: block-triangular), the products skip them.
    pub fn set_mask(&mut self, mask: Vec<F>) {
        self.blocks = mask_blocks(&mask, self.out, self.inp);
        self.panels = Some(MaskPanels::new(&mask, self.out, self.inp));
        self.weight.set_mask(mask);
    }
    /// Whether a mask fixes some weights at zero (MADE).
    pub fn masked(&self) -> bool {
        self.weight.mask.is_some()
    }
    /// The blocks the products run over (empty: dense).
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }
    pub fn zero_init(&mut self) {
        self.weight.fill(F::zero());
        self.bias.fill(F::zero());
    }
    pub fn forward(&self, x: &Mat<F>) -> Mat<F> {
        self.output(x, None, false, false).expect("new output")
    }
    /// `y = x W^T + b`, then `max(0, y)` when `relu` (the activation of the layer after it, applied as the
    /// product writes `y` where it runs on the f32 kernel: no pass of its own).
    pub fn forward_relu(&self, x: &Mat<F>, relu: bool) -> Mat<F> {
        self.output(x, None, false, relu).expect("new output")
    }
    /// `y = x W^T + b` into an existing `rows x out` buffer.
    pub fn forward_to(&self, x: &Mat<F>, y: &mut Mat<F>) {
        self.output(x, Some(y), false, false);
    }
    /// [`Linear::forward`] for inference: the same values, with the weights packed once and kept while they
    /// are unchanged ([`PackedWeights`]).
    pub fn infer(&self, x: &Mat<F>) -> Mat<F> {
        self.output(x, None, true, false).expect("new output")
    }
    /// [`Linear::forward_relu`] for inference (see [`Linear::infer`]).
    pub fn infer_relu(&self, x: &Mat<F>, relu: bool) -> Mat<F> {
        self.output(x, None, true, relu).expect("new output")
    }
    /// [`Linear::forward_to`] for inference (see [`Linear::infer`]), with the ReLU of [`Linear::forward_relu`].
    pub fn infer_to(&self, x: &Mat<F>, y: &mut Mat<F>, relu: bool) {
        self.output(x, Some(y), true, relu);
    }

    /// `act(x W^T + b)` (block-sparse for a masked layer with blocks; `act` ReLU when `relu`) into `y`, or into a
    /// new matrix when `y` is `None` (returned); with `keep`, on the packed weights ([`PackedWeights`]) where the
    /// product runs on that kernel. On the f32 kernel the bias and the ReLU go in as the product writes `y`, and
    /// a new output is not cleared first.
    fn output(&self, x: &Mat<F>, y: Option<&mut Mat<F>>, keep: bool, relu: bool) -> Option<Mat<F>> {
        let (n, inp, out) = (x.rows, self.inp, self.out);
        assert_eq!(x.cols, inp);
        if let Some(y) = &y {
            assert_eq!((y.rows, y.cols), (n, out));
        }
        let bias = Some(self.bias.value());
        let ranged = self.ranged(n, inp, out);
        let depth = |_: usize, j: usize| ranged.expect("masked").out_inputs[j];
        let depth = ranged.is_some().then_some(&depth as &kernels::Depth<'_>);
        // the training packs when they hold the current weights, else for inference the inference packing (a
        // masked layer only on the kernel that skips its empty tiles)
        let held;
        let packed = match self.packs_for(n) {
            Some(p) => Some(p.forward()),
            None => {
                held = (keep && (ranged.is_some() || !self.masked()))
                    .then(|| self.packed.get(&self.weight, out, inp, n))
                    .flatten();
                held.as_deref()
            }
        };
        let ep = kernels::Epilogue {
            accumulate: false,
            bias,
            relu,
        };
        let (xv, wv) = (
            View::block(inp, 0, n, 0, inp),
            View::block(inp, 0, out, 0, inp).t(),
        );
        let w = self.weight.value();
        match (packed, y) {
            (Some(p), None) => {
                let data = kernels::gemm_prepared_new(&x.data, n, inp, p, bias, relu, depth);
                Some(Mat::from_vec(n, out, data))
            }
            (Some(p), Some(y)) => {
                kernels::gemm_prepared(&x.data, n, inp, p, &mut y.data, out, ep, depth);
                None
            }
            (None, y) if ranged.is_some() || self.blocks.is_empty() => match y {
                None => {
                    let data = kernels::gemm_view_new(&x.data, xv, w, wv, bias, relu, depth);
                    Some(Mat::from_vec(n, out, data))
                }
                Some(y) => {
                    let yv = View::block(out, 0, n, 0, out);
                    kernels::gemm_view_ep(&x.data, xv, w, wv, &mut y.data, yv, ep, depth);
                    None
                }
            },
            (None, y) => {
                // the block-sparse form: the bias first, the blocks' products onto it, then the ReLU
                let tasks = self.batch_tasks(n, |lo, rows, b| {
                    let (h, w) = (b.o1 - b.o0, b.i1 - b.i0);
                    (
                        View::block(inp, lo, rows, b.i0, w),
                        View::block(inp, b.o0, h, b.i0, w).t(),
                        View::block(out, lo, rows, b.o0, h),
                    )
                });
                let mut fresh = None;
                let y = match y {
                    Some(y) => {
                        kernels::fill_rows(y, self.bias.value());
                        y
                    }
                    None => fresh.insert(kernels::bias_rows(n, self.bias.value())),
                };
                kernels::gemm_tasks(&x.data, w, &mut y.data, &tasks, true);
                if relu {
                    Activation::Relu.apply_slice(&mut y.data);
                }
                fresh
            }
        }
    }

    /// The weight's training packs ([`Param::want_packs`]) for `rows`-row products, where they hold the current
    /// weights and both products run on the kernel that uses them (a masked layer only on the ranged kernel).
    fn packs_for(&self, rows: usize) -> Option<&kernels::WeightPacks> {
        let p = self.weight.packs()?;
        self.packs_suit(rows).then_some(p)
    }

    /// Whether `rows`-row products of this layer gain from packs kept in step ([`kernels::WeightPacks::suit`]),
    /// a masked layer only where its products run on the ranged kernel.
    fn packs_suit(&self, rows: usize) -> bool {
        kernels::WeightPacks::suit::<F>(rows, self.out, self.inp)
            && (!self.masked() || self.ranged(rows, self.inp, self.out).is_some())
    }

    /// The mask's tile ranges when a `m x k` by `k x n` product of this layer runs on the ranged f32 kernel.
    fn ranged(&self, m: usize, k: usize, n: usize) -> Option<&MaskPanels> {
        MaskPanels::ranged::<F>(&self.panels, m, k, n)
    }

    /// The products of the block-sparse form over `n` batch rows, one task per slab of rows:
    /// `make(first row, rows, block)`.
    fn batch_tasks(
        &self,
        n: usize,
        make: impl Fn(usize, usize, &Block) -> kernels::Product,
    ) -> Vec<Vec<kernels::Product>> {
        let area: usize = self.blocks.iter().map(Block::area).sum();
        let parts = kernels::threads_for(n * area).min(n.div_ceil(16)).max(1);
        (0..parts)
            .map(|q| {
                let (lo, hi) = (q * n / parts, (q + 1) * n / parts);
                self.blocks.iter().map(|b| make(lo, hi - lo, b)).collect()
            })
            .collect()
    }
    /// Columns `o0..o1` of `y = x W^T + b` only, reading only the input columns the mask connects to those
    /// rows (all of them for an unmasked layer): the incremental passes of autoregressive sampling.
    pub fn forward_rows(&self, x: &Mat<F>, y: &mut Mat<F>, o0: usize, o1: usize) {
        assert!(o0 <= o1 && o1 <= self.out && x.cols == self.inp);
        assert_eq!((y.rows, y.cols), (x.rows, self.out));
        let n = x.rows;
        for r in 0..n {
            y.row_mut(r)[o0..o1].copy_from_slice(&self.bias.value()[o0..o1]);
        }
        let runs = match &self.weight.mask {
            Some(m) => column_runs(m, self.inp, o0, o1),
            None => vec![(0, self.inp)],
        };
        for (i0, i1) in runs {
            kernels::gemm_view(
                &x.data,
                View::block(self.inp, 0, n, i0, i1 - i0),
                self.weight.value(),
                View::block(self.inp, o0, o1 - o0, i0, i1 - i0).t(),
                &mut y.data,
                View::block(self.out, 0, n, o0, o1 - o0),
                true,
            );
        }
    }
    /// `dx = dy W` without touching the gradients.
    pub fn input_grad(&self, dy: &Mat<F>) -> Mat<F> {
        let (n, inp, out) = (dy.rows, self.inp, self.out);
        let ranged = self.ranged(n, out, inp);
        if ranged.is_some() || self.blocks.is_empty() {
            // a product that writes every element (on the kernel, into memory not cleared first)
            let depth = |_: usize, j: usize| ranged.expect("masked").in_outputs[j];
            let depth = ranged.is_some().then_some(&depth as &kernels::Depth<'_>);
            if let Some(p) = self.packs_for(n) {
                let data = kernels::gemm_prepared_new(
                    &dy.data,
                    n,
                    out,
                    p.input_grad(),
                    None,
                    false,
                    depth,
                );
                return Mat::from_vec(n, inp, data);
            }
            let data = kernels::gemm_view_new(
                &dy.data,
                View::block(out, 0, n, 0, out),
                self.weight.value(),
                View::block(inp, 0, out, 0, inp),
                None,
                false,
                depth,
            );
            return Mat::from_vec(n, inp, data);
        }
        let mut dx = kernels::zeros(n, inp);
        let tasks = self.batch_tasks(dy.rows, |lo, n, b| {
            let (h, w) = (b.o1 - b.o0, b.i1 - b.i0);
            (
                View::block(self.out, lo, n, b.o0, h),
                View::block(self.inp, b.o0, h, b.i0, w),
                View::block(self.inp, lo, n, b.i0, w),
            )
        });
        kernels::gemm_tasks(&dy.data, self.weight.value(), &mut dx.data, &tasks, true);
        dx
    }

    /// Accumulate `dW += dy^T x`, `db += sum dy`; return `dx = dy W` if asked.
    pub fn backward(&mut self, x: &Mat<F>, dy: &Mat<F>, want_dx: bool) -> Option<Mat<F>> {
        let (n, inp, out) = (dy.rows, self.inp, self.out);
        // training: the weights are about to change, so the inference packing is not worth its memory; a big
        // weight asks the optimiser to keep its packed forms in step instead (a masked layer only where its
        // products run on the ranged kernel)
        self.packed.clear();
        if self.packs_suit(n) {
            self.weight.want_packs(out, inp);
        }
        // whether the structural zeros' gradients are already zero (else the whole gradient is masked below)
        let masked = if let Some(p) = MaskPanels::ranged::<F>(&self.panels, out, n, inp) {
            // a zeroed gradient is overwritten (a tile with no live block gets zeros), not cleared and added to
            let (g, accumulate) = self.weight.grad_for_write();
            kernels::gemm_view_ranged(
                &dy.data,
                View::block(out, 0, n, 0, out).t(),
                &x.data,
                View::block(inp, 0, n, 0, inp),
                g,
                View::block(inp, 0, out, 0, inp),
                accumulate,
                &|i, j| match p.live[i * p.live_cols + j] {
                    true => (0, n),
                    false => (0, 0),
                },
            );
            // not accumulating, the dead tiles were written with zeros: only the masked entries of the live ones
            // are zeroed, not every entry multiplied by the mask (a pass over the gradient and the mask); when
            // accumulating, what was there may hold anything, in the dead tiles too
            if !accumulate {
                let g = self.weight.grad_mut();
                for &(a, b) in &p.fix {
                    g[a..b].fill(F::zero());
                }
            }
            !accumulate
        } else if self.blocks.is_empty() {
            // after `zero_grad` the product writes the gradient instead of adding to zeros
            let (g, accumulate) = self.weight.grad_for_write();
            kernels::gemm(
                &dy.data, dy.rows, dy.cols, true, &x.data, x.rows, x.cols, false, g, accumulate,
            );
            false
        } else {
            // every block owns its own weights: split the blocks over the threads by area
            let n = dy.rows;
            let area: usize = self.blocks.iter().map(Block::area).sum();
            let parts = kernels::threads_for(n * area);
            let mut tasks: Vec<Vec<kernels::Product>> = vec![Vec::new(); parts];
            let mut acc = 0;
            for b in &self.blocks {
                let (h, w) = (b.o1 - b.o0, b.i1 - b.i0);
                let q = (acc * parts / area.max(1)).min(parts - 1);
                acc += b.area();
                tasks[q].push((
                    View::block(self.out, 0, n, b.o0, h).t(),
                    View::block(self.inp, 0, n, b.i0, w),
                    View::block(self.inp, b.o0, h, b.i0, w),
                ));
            }
            kernels::gemm_tasks(&dy.data, &x.data, self.weight.grad_mut(), &tasks, true);
            false
        };
        if !masked {
            self.weight.mask_grad();
        }
        kernels::add_col_sums(dy, self.bias.grad_mut());
        want_dx.then(|| self.input_grad(dy))
    }
}

/// The columns of an `(out, in)` mask used by any of rows `o0..o1`, as runs `[i0, i1)` (gaps under
/// [`MIN_GAP`] kept inside a run).
fn column_runs<F: Float>(mask: &[F], inp: usize, o0: usize, o1: usize) -> Vec<(usize, usize)> {
    // the rows are read one after another (contiguous), not column by column
    let mut used = vec![false; inp];
    for row in mask[o0 * inp..o1 * inp].chunks_exact(inp.max(1)) {
        for (u, &m) in used.iter_mut().zip(row) {
            *u |= m != F::zero();
        }
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for i in (0..inp).filter(|&i| used[i]) {
        match runs.last_mut() {
            Some(last) if i - last.1 < MIN_GAP => last.1 = i + 1,
            _ => runs.push((i, i + 1)),
        }
    }
    runs
}

/// The blocks of an `(out, in)` mask that hold all its non-zeros: rows in groups of 64, 32 or 16 (whichever
/// costs least), each group's used columns merged into runs (gaps under [`MIN_GAP`] kept). Empty when that
/// saves too little to beat one dense product.
fn mask_blocks<F: Float>(mask: &[F], out: usize, inp: usize) -> Vec<Block> {
    let with_height = |rows: usize| {
        let mut blocks = Vec::new();
        for o0 in (0..out).step_by(rows) {
            let o1 = (o0 + rows).min(out);
            let runs = column_runs(mask, inp, o0, o1);
            blocks.extend(runs.into_iter().map(|(i0, i1)| Block { o0, o1, i0, i1 }));
        }
        let area: usize = blocks.iter().map(Block::area).sum();
        (area + blocks.len() * BLOCK_OVERHEAD, area, blocks)
    };
    let (_, area, blocks) = [64, 32, 16]
        .into_iter()
        .map(with_height)
        .min_by_key(|c| c.0)
        .expect("three candidates");
    if area * 10 > out * inp * 8 {
        Vec::new()
    } else {
        blocks
    }
}

/// Whether networks built from now on use the piecewise front ([`Mlp::piecewise`]); on unless switched off.
static PIECEWISE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Switch the piecewise front on or off for networks built afterwards (the benchmark's `--no-piecewise`,
/// to time the dense layers it replaces).
pub fn set_piecewise_default(on: bool) {
    PIECEWISE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Training cache being filled: every layer's input and the pre-activation it came from.
type Cache<'a, F> = (&'a mut Vec<Mat<F>>, &'a mut Vec<Mat<F>>);

/// `in -> [hidden]*depth -> out` perceptron; the last layer starts at zero. With `residual`, the hidden part
/// is `depth` residual blocks `h + W2 act(W1 act(h))` (He et al. 2016, as in ResMADE, Nash & Durkan 2019)
/// between an input layer and an output layer applied to `act(h)`; each block's second layer starts at zero,
/// so every block starts as the identity.
#[derive(Clone, Debug)]
pub struct Mlp<F> {
    pub layers: Vec<Linear<F>>,
    pub act: Activation,
    pub residual: bool,
    /// Evaluate the first two layers of a one-input ReLU / leaky-ReLU network as the piecewise-affine function
    /// they are ([`super::piecewise`]; on by default: same function, `O(H)` instead of `O(H^2)` per row).
    pub piecewise: bool,
    /// Training cache: the input of every layer and the pre-activations of hidden layers (with the
    /// piecewise front, the table and an empty second input).
    inputs: Vec<Mat<F>>,
    pre: Vec<Mat<F>>,
    front: Option<Arc<Pieces<F>>>,
    pub(crate) tables: TableCache<F>,
}

impl<F: Float> Mlp<F> {
    pub fn new(
        name: &str,
        inp: usize,
        hidden: usize,
        depth: usize,
        out: usize,
        act: Activation,
        rng: &mut Rng,
    ) -> Self {
        let mut sizes = vec![inp];
        sizes.extend(std::iter::repeat_n(hidden, depth));
        sizes.push(out);
        let mut layers: Vec<Linear<F>> = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(&format!("{name}.{i}"), w[0], w[1], rng))
            .collect();
        layers.last_mut().expect("at least one layer").zero_init();
        Mlp {
            layers,
            act,
            residual: false,
            piecewise: PIECEWISE.load(std::sync::atomic::Ordering::Relaxed),
            inputs: Vec::new(),
            pre: Vec::new(),
            front: None,
            tables: TableCache::default(),
        }
    }

    /// `in -> hidden -> [residual block] * blocks -> out`.
    pub fn new_residual(
        name: &str,
        inp: usize,
        hidden: usize,
        blocks: usize,
        out: usize,
        act: Activation,
        rng: &mut Rng,
    ) -> Self {
        assert!(blocks >= 1, "a residual MLP needs at least one block");
        let mut layers = vec![Linear::new(&format!("{name}.0"), inp, hidden, rng)];
        for b in 0..blocks {
            layers.push(Linear::new(
                &format!("{name}.{}", 1 + 2 * b),
                hidden,
                hidden,
                rng,
            ));
            let mut second = Linear::new(&format!("{name}.{}", 2 + 2 * b), hidden, hidden, rng);
            second.zero_init();
            layers.push(second);
        }
        let mut last = Linear::new(&format!("{name}.{}", 1 + 2 * blocks), hidden, out, rng);
        last.zero_init();
        layers.push(last);
        Mlp {
            layers,
            act,
            residual: true,
            piecewise: PIECEWISE.load(std::sync::atomic::Ordering::Relaxed),
            inputs: Vec::new(),
            pre: Vec::new(),
            front: None,
            tables: TableCache::default(),
        }
    }

    /// Whether layer `l`'s output is added to the running hidden state (second layer of a residual block).
    #[inline]
    fn adds_residual(&self, l: usize) -> bool {
        self.residual && l >= 2 && l + 1 < self.layers.len() && l.is_multiple_of(2)
    }

    /// The table of the first two layers when they are one piecewise-affine function of a one-column input.
    pub(crate) fn pieces(&self) -> Option<Arc<Pieces<F>>> {
        let (l0, l1) = (self.layers.first()?, self.layers.get(1)?);
        let alpha = negative_slope(self.act)?;
        (self.piecewise && !self.residual && l0.inp == 1 && !l0.masked() && !l1.masked())
            .then(|| self.tables.get(l0, l1, alpha))
    }

    /// The output of the first layers: the piecewise front's (two layers, and the activation that follows them
    /// where another layer does) with its table, or the first layer's.
    fn front_forward(&self, x: &Mat<F>) -> (Mat<F>, Option<Arc<Pieces<F>>>) {
        match self.pieces() {
            Some(p) => {
                let act = (self.layers.len() > 2).then_some(self.act);
                (p.eval(x, act), Some(p))
            }
            // (a ReLU goes in with the product: `fused_relu`)
            None => (self.layers[0].forward_relu(x, self.fused_relu(0)), None),
        }
    }

    /// Whether layer `l`'s output gets the activation as its product writes it (ReLU after a hidden layer,
    /// [`Linear::forward_relu`]) rather than in a pass of its own.
    fn fused_relu(&self, l: usize) -> bool {
        self.act == Activation::Relu && l + 1 < self.layers.len()
    }

    pub fn forward(&self, x: &Mat<F>) -> Mat<F> {
        if self.residual {
            return self.forward_residual(Cow::Borrowed(x), None);
        }
        if let Some(p) = self.pieces() {
            return self.forward_pieces(&p, x);
        }
        let n = self.layers.len();
        let mut h = self.layers[0].infer_relu(x, self.fused_relu(0));
        for l in 1..n {
            if !self.fused_relu(l - 1) {
                self.act.apply_slice(&mut h.data);
            }
            h = self.layers[l].infer_relu(&h, self.fused_relu(l));
        }
        h
    }

    /// Inference with the piecewise front: the whole network on blocks of rows (its hidden activations stay
    /// in cache), the blocks over the pool. Each row is computed the same way whichever thread takes it.
    fn forward_pieces(&self, p: &Pieces<F>, x: &Mat<F>) -> Mat<F> {
        use rayon::prelude::*;
        const ROWS: usize = 64;
        let n = self.layers.len();
        let block = |xb: &Mat<F>| {
            let mut h = p.eval(xb, (n > 2).then_some(self.act));
            for l in 2..n {
                if l > 2 && !self.fused_relu(l - 1) {
                    self.act.apply_slice(&mut h.data);
                }
                h = self.layers[l].infer_relu(&h, self.fused_relu(l));
            }
            h
        };
        if x.rows <= ROWS {
            return block(x);
        }
        let parts: Vec<Mat<F>> = (0..x.rows.div_ceil(ROWS))
            .into_par_iter()
            .map(|b| block(&x.slice_rows(b * ROWS, ((b + 1) * ROWS).min(x.rows))))
            .collect();
        let cols = parts[0].cols;
        let mut data = Vec::with_capacity(x.rows * cols);
        parts.iter().for_each(|m| data.extend_from_slice(&m.data));
        Mat::from_vec(x.rows, cols, data)
    }

    /// Residual forward; with `cache`, keeps every layer's input and the pre-activation it came from.
    fn forward_residual(&self, x: Cow<'_, Mat<F>>, mut cache: Option<Cache<'_, F>>) -> Mat<F> {
        let n = self.layers.len();
        let act = self.act;
        let activate = |m: &Mat<F>| {
            let mut a = m.clone();
            act.apply_slice(&mut a.data);
            a
        };
        // (inference keeps its packed weights: `Linear::infer`)
        let training = cache.is_some();
        let layer = |l: usize, x: &Mat<F>| match training {
            true => self.layers[l].forward(x),
            false => self.layers[l].infer(x),
        };
        let mut h = layer(0, &x);
        if let Some((inputs, pre)) = cache.as_mut() {
            inputs.clear();
            pre.clear();
            inputs.push(x.into_owned());
        }
        let mut t = Mat::zeros(0, 0);
        for l in 1..n {
            // layer l reads act(h) (first layer of a block, and the output layer) or act(t) (second layer)
            let src = if self.adds_residual(l) { &t } else { &h };
            let a = activate(src);
            let y = layer(l, &a);
            if let Some((inputs, pre)) = cache.as_mut() {
                pre.push(src.clone());
                inputs.push(a);
            }
            if self.adds_residual(l) {
                kernels::zip_inplace(&mut h.data, &y.data, |a, b| a + b);
            } else if l + 1 < n {
                t = y;
            } else {
                return y;
            }
        }
        h
    }

    /// Inference forward into reusable buffers (`ws` holds one matrix per layer and is resized only when the
    /// batch size changes): the allocation-free pass for sequential (autoregressive) sampling.
    pub fn forward_into<'a>(&self, x: &Mat<F>, ws: &'a mut Vec<Mat<F>>) -> &'a Mat<F> {
        if self.residual {
            // (residual networks take the allocating path)
            *ws = vec![self.forward_residual(Cow::Borrowed(x), None)];
            return &ws[0];
        }
        let n = self.layers.len();
        if ws.len() != n || ws[0].rows != x.rows {
            *ws = self
                .layers
                .iter()
                .map(|l| Mat::zeros(x.rows, l.out))
                .collect();
        }
        let start = match self.pieces() {
            Some(p) => {
                ws[1] = p.eval(x, (n > 2).then_some(self.act));
                2
            }
            None => 0,
        };
        for l in start..n {
            let (done, rest) = ws.split_at_mut(l);
            let inp = if l == 0 { x } else { &done[l - 1] };
            let y = &mut rest[0];
            self.layers[l].infer_to(inp, y, self.fused_relu(l));
            if l + 1 < n && !self.fused_relu(l) {
                self.act.apply_slice(&mut y.data);
            }
        }
        &ws[n - 1]
    }

    pub fn forward_train(&mut self, x: &Mat<F>) -> Mat<F> {
        self.forward_train_owned(x.clone())
    }

    /// [`Mlp::forward_train`] taking its input by value (it is kept for the backward: no copy).
    pub fn forward_train_owned(&mut self, x: Mat<F>) -> Mat<F> {
        if self.residual {
            let (mut inputs, mut pre) = (
                std::mem::take(&mut self.inputs),
                std::mem::take(&mut self.pre),
            );
            let y = self.forward_residual(Cow::Owned(x), Some((&mut inputs, &mut pre)));
            self.inputs = inputs;
            self.pre = pre;
            return y;
        }
        let n = self.layers.len();
        self.inputs.clear();
        self.pre.clear();
        let (mut h, front) = self.front_forward(&x);
        let start = if front.is_some() { 2 } else { 1 };
        self.front = front;
        self.inputs.push(x);
        if start == 2 {
            // the front's hidden layer is never formed
            self.inputs.push(Mat::zeros(0, 0));
        }
        let act = self.act;
        // activations whose derivative follows from their output are applied in place (no pre-activation kept)
        let keep_pre = !act.deriv_from_output();
        for l in start..n {
            if keep_pre {
                self.pre.push(h.clone());
            }
            if (self.front.is_none() || l > start) && !self.fused_relu(l - 1) {
                act.apply_slice(&mut h.data);
            }
            let next = self.layers[l].forward_relu(&h, self.fused_relu(l));
            self.inputs.push(h);
            h = next;
        }
        h
    }

    /// Back-propagate `dy` (gradient w.r.t. the output) through the cached forward; returns dL/dx.
    pub fn backward(&mut self, dy: &Mat<F>, want_dx: bool) -> Option<Mat<F>> {
        self.backprop(dy, want_dx, true)
    }

    /// dL/dx of the cached forward for an output gradient `dy`, leaving parameter gradients untouched (a
    /// vector-Jacobian product, used by implicit differentiation through IAF's sequential solve).
    pub fn backward_input(&mut self, dy: &Mat<F>) -> Mat<F> {
        self.backprop(dy, true, false).expect("requested")
    }

    fn backprop(&mut self, dy: &Mat<F>, want_dx: bool, params: bool) -> Option<Mat<F>> {
        let n = self.layers.len();
        assert_eq!(self.inputs.len(), n, "Mlp backward without forward_train");
        let act = self.act;
        // gradient w.r.t. layer l's input, optionally accumulating its parameter gradients
        let back = |layer: &mut Linear<F>, x: &Mat<F>, g: &Mat<F>, need: bool| -> Option<Mat<F>> {
            if params {
                layer.backward(x, g, need)
            } else {
                need.then(|| layer.input_grad(g))
            }
        };
        // through act: d pre = d input * act'(pre)
        let through_act = |mut dx: Mat<F>, pre: &Mat<F>, post: &Mat<F>| {
            act.backward_slice(&mut dx.data, &pre.data, &post.data);
            dx
        };
        if !self.residual {
            let mut g = dy.clone();
            for l in (0..n).rev() {
                if l == 1 {
                    if let Some(front) = &self.front {
                        let (l0, l1) = self.layers.split_at_mut(1);
                        return front.backward(
                            &mut l0[0],
                            &mut l1[0],
                            &self.inputs[0],
                            &g,
                            params,
                            want_dx,
                        );
                    }
                }
                let need = l > 0 || want_dx;
                let dx = back(&mut self.layers[l], &self.inputs[l], &g, need);
                if l == 0 {
                    return dx;
                }
                // (without kept pre-activations the derivative is computed from the output)
                let pre = self.pre.get(l - 1).unwrap_or(&self.inputs[l]);
                g = through_act(dx.expect("requested"), pre, &self.inputs[l]);
            }
            return None;
        }
        // residual: gh is the gradient w.r.t. the running hidden state h
        let last = n - 1;
        let dx = back(&mut self.layers[last], &self.inputs[last], dy, true).expect("requested");
        let mut gh = through_act(dx, &self.pre[last - 1], &self.inputs[last]);
        let mut l = last - 1;
        while l >= 2 {
            // block: h_out = h_in + L_l(act(t)), t = L_{l-1}(act(h_in))
            let du = back(&mut self.layers[l], &self.inputs[l], &gh, true).expect("requested");
            let dt = through_act(du, &self.pre[l - 1], &self.inputs[l]);
            let da =
                back(&mut self.layers[l - 1], &self.inputs[l - 1], &dt, true).expect("requested");
            let dh = through_act(da, &self.pre[l - 2], &self.inputs[l - 1]);
            kernels::zip_inplace(&mut gh.data, &dh.data, |a, b| a + b);
            l -= 2;
        }
        back(&mut self.layers[0], &self.inputs[0], &gh, want_dx)
    }

    pub fn params(&self) -> Vec<&Param<F>> {
        self.layers
            .iter()
            .flat_map(|l| [&l.weight, &l.bias])
            .collect()
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param<F>> {
        self.layers
            .iter_mut()
            .flat_map(|l| [&mut l.weight, &mut l.bias])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{randn, rng};
    use crate::nn::{Made, MadeOpts};

    /// The block-sparse products of a masked layer equal the dense ones (forward, input gradient, weight and
    /// bias gradients), for a triangular mask, one with two separate runs of columns per block and one whose
    /// input gradient has tiles with no depth in the first block and columns nobody reads; in f64 (the
    /// blocks) and f32 (the ranged kernel, where the CPU has it), with batches above and below its tile.
    #[test]
    fn block_sparse_products_equal_dense() {
        for n in [7, 40] {
            masked_equal_dense::<f64>(n, 1e-12);
            masked_equal_dense::<f32>(n, 2e-5);
        }
    }

    fn masked_equal_dense<F: Float>(n: usize, tol: f64) {
        let mut r = rng(1);
        let (out, inp) = (300, 280);
        let masks: [Box<dyn Fn(usize, usize) -> bool>; 3] = [
            Box::new(|o, i| i * out <= o * inp),
            Box::new(|o, i| i < o / 8 || (i > 100 && i < 110 + o / 40)),
            Box::new(|o, i| i < 270 && (o > 260 || (i < 50 && o > 20))),
        ];
        for (k, on) in masks.iter().enumerate() {
            let mut l: Linear<F> = Linear::new("l", inp, out, &mut r);
            let mask: Vec<F> = (0..out * inp)
                .map(|j| {
                    if on(j / inp, j % inp) {
                        F::one()
                    } else {
                        F::zero()
                    }
                })
                .collect();
            l.set_mask(mask);
            assert!(k == 2 || !l.blocks().is_empty(), "mask {k}: no blocks");
            let mut dense = l.clone();
            dense.blocks.clear();
            dense.panels = None;
            let x: Mat<F> = randn(&mut r, n, inp);
            let dy: Mat<F> = randn(&mut r, n, out);
            // relative to the size of the sums (f32 rounding grows with the depth)
            let close = |a: &[F], b: &[F], what: &str| {
                let scale = b.iter().fold(1.0f64, |m, v| m.max(v.f64().abs()));
                for (u, v) in a.iter().zip(b) {
                    let (u, v) = (u.f64(), v.f64());
                    assert!((u - v).abs() < tol * scale, "mask {k}, {what}: {u} vs {v}");
                }
            };
            close(&l.forward(&x).data, &dense.forward(&x).data, "forward");
            // gradients accumulate onto what is there
            l.weight.grad_mut().iter_mut().for_each(|g| *g = F::one());
            dense
                .weight
                .grad_mut()
                .iter_mut()
                .for_each(|g| *g = F::one());
            let dx = l.backward(&x, &dy, true).unwrap();
            let dxd = dense.backward(&x, &dy, true).unwrap();
            close(&dx.data, &dxd.data, "input gradient");
            close(&l.weight.grad(), &dense.weight.grad(), "weight gradient");
            close(&l.bias.grad(), &dense.bias.grad(), "bias gradient");
        }
    }

    /// A layer's weight gradient after `zero_grad` is the product alone, whatever the memory held (the product
    /// overwrites it), and a second backward adds to it; dense and masked (triangular: tiles with no live
    /// block), f64 and f32 (the kernel, where the CPU has it).
    #[test]
    fn weight_gradient_after_zero_grad_is_overwritten() {
        for masked in [false, true] {
            overwritten::<f64>(masked);
            overwritten::<f32>(masked);
        }
    }

    fn overwritten<F: Float>(masked: bool) {
        let mut r = rng(5);
        let mut fresh: Linear<F> = Linear::new("l", 40, 50, &mut r);
        if masked {
            let mask = (0..50 * 40)
                .map(|j| F::c(((j % 40) * 50 <= (j / 40) * 40) as u8 as f64))
                .collect();
            fresh.set_mask(mask);
        }
        let x: Mat<F> = randn(&mut r, 30, 40);
        let dy: Mat<F> = randn(&mut r, 30, 50);
        let mut want = fresh.clone();
        want.backward(&x, &dy, false);
        let mut l = fresh.clone();
        l.weight.set_grad(vec![F::nan(); 40 * 50]);
        l.bias.set_grad(vec![F::nan(); 50]);
        l.weight.zero_grad();
        l.bias.zero_grad();
        l.backward(&x, &dy, false);
        assert_eq!(l.weight.grad(), want.weight.grad());
        assert_eq!(l.bias.grad(), want.bias.grad());
        l.backward(&x, &dy, false);
        let twice: Vec<F> = want.weight.grad().iter().map(|&g| g + g).collect();
        assert_eq!(*l.weight.grad(), twice[..]);
    }

    /// A big weight trained with Adam keeps its packed forms in step (the layer asks for them in its backward,
    /// the optimiser writes them as it updates the weight): from the first step on the products run on them and
    /// give the bits of products that pack the weight themselves (a clone, which holds no packs), step after step,
    /// masked or not; a write other than the optimiser's makes them stale until its next step.
    #[test]
    fn trained_weights_keep_their_packs_in_step() {
        use crate::optim::{Adam, OptimConfig};
        let mut r = rng(8);
        let (inp, out, n) = (300, 900, 64);
        assert!(
            kernels::WeightPacks::suit::<f32>(n, out, inp) || !crate::engine::sgemm::available()
        );
        for masked in [false, true] {
            let mut l: Linear<f32> = Linear::new("l", inp, out, &mut r);
            if masked {
                let mask = (0..out * inp)
                    .map(|j| ((j % inp) * out <= (j / inp) * inp) as u8 as f32)
                    .collect();
                l.set_mask(mask);
            }
            let mut plain = l.clone();
            let cfg = OptimConfig {
                lr: 1e-2,
                ..OptimConfig::default()
            };
            let (mut opt, mut opt_plain) = (Adam::new(cfg), Adam::new(cfg));
            for step in 0..4 {
                assert_eq!(
                    l.packs_for(n).is_some(),
                    step > 0 && crate::engine::sgemm::available(),
                    "masked {masked}, step {step}: packs in use"
                );
                // the plain layer: a fresh clone each step, so its products always pack the weight
                plain = plain.clone();
                let x: Mat<f32> = randn(&mut r, n, inp);
                let (y, y_plain) = (l.forward_relu(&x, true), plain.forward_relu(&x, true));
                assert!(
                    y.data == y_plain.data,
                    "masked {masked}, step {step}: forward"
                );
                let dy = Mat::from_vec(n, out, y.data.iter().map(|v| v - 0.3).collect());
                let dx = l.backward(&x, &dy, true).unwrap();
                let dx_plain = plain.backward(&x, &dy, true).unwrap();
                assert!(dx.data == dx_plain.data, "masked {masked}, step {step}: dx");
                opt.step(&mut [&mut l.weight, &mut l.bias], 1e-2);
                opt_plain.step(&mut [&mut plain.weight, &mut plain.bias], 1e-2);
                assert!(l.weight.value() == plain.weight.value(), "step {step}");
            }
            // a write of its own: stale, and the products pack the weight again
            l.weight.value_mut()[3] += 0.25;
            plain.weight.value_mut()[3] += 0.25;
            assert!(
                l.packs_for(n).is_none(),
                "masked {masked}: stale packs in use"
            );
            let x: Mat<f32> = randn(&mut r, n, inp);
            assert!(l.forward(&x).data == plain.clone().forward(&x).data);
        }
    }

    /// Inference on packed weights gives the training forward's bits (dense and masked layers, batches on and
    /// off the kernel, `infer_to` into a dirty buffer); the packing is reused while the weights are unchanged,
    /// redone after any write to them (and then again equal to the forward), dropped by a backward; clones
    /// start without it.
    #[test]
    fn inference_packs_weights_once_while_unchanged() {
        let mut r = rng(3);
        for masked in [false, true] {
            let mut l: Linear<f32> = Linear::new("l", 200, 90, &mut r);
            if masked {
                let mask = (0..90 * 200)
                    .map(|j| {
                        if (j % 200) * 90 <= (j / 200) * 200 {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                l.set_mask(mask);
            }
            let held =
                |l: &Linear<f32>| l.packed.0.lock().unwrap().as_ref().map(|(_, p)| p.clone());
            for n in [5, 40, 256] {
                let x: Mat<f32> = randn(&mut r, n, 200);
                assert_eq!(
                    l.infer(&x).data,
                    l.forward(&x).data,
                    "masked {masked}, {n} rows"
                );
                let mut y = Mat::from_vec(n, 90, vec![7.0; n * 90]);
                l.infer_to(&x, &mut y, false);
                assert_eq!(
                    y.data,
                    l.forward(&x).data,
                    "infer_to, masked {masked}, {n} rows"
                );
            }
            let x: Mat<f32> = randn(&mut r, 40, 200);
            let first = held(&l);
            assert_eq!(
                first.is_some(),
                kernels::preparable::<f32>(40, 200, 90),
                "packed exactly where the kernel runs"
            );
            let Some(first) = first else { continue };
            l.infer(&x);
            assert!(
                Arc::ptr_eq(&first, &held(&l).unwrap()),
                "repacked unchanged weights"
            );
            assert!(
                l.clone().packed.0.lock().unwrap().is_none(),
                "clone holds a packing"
            );
            l.weight.value_mut()[5] += 0.5;
            assert_eq!(l.infer(&x).data, l.forward(&x).data, "after a write");
            let second = held(&l).unwrap();
            assert!(!Arc::ptr_eq(&first, &second), "stale packing used");
            l.backward(&x, &randn(&mut r, 40, 90), false);
            assert!(held(&l).is_none(), "training kept the packing");
        }
    }

    /// The ReLU applied as the product writes (`forward_relu`, `infer_relu`, `infer_to` into a dirty buffer)
    /// gives the bits of a separate pass over the plain output: f32 (on the kernel, also on packed weights) and
    /// f64 (the passes around the product), dense and masked layers, batches on and off the kernel.
    #[test]
    fn fused_relu_equals_a_separate_pass() {
        fn case<F: Float>(masked: bool, r: &mut Rng) {
            let mut l: Linear<F> = Linear::new("l", 70, 90, r);
            if masked {
                let mask = (0..90 * 70)
                    .map(|j| {
                        if (j % 70) * 90 <= (j / 70) * 70 {
                            F::one()
                        } else {
                            F::zero()
                        }
                    })
                    .collect();
                l.set_mask(mask);
            }
            for n in [5, 40, 256] {
                let x: Mat<F> = randn(r, n, 70);
                let mut want = l.forward(&x);
                assert!(want.data.iter().any(|&v| v < F::zero()), "nothing to clamp");
                Activation::Relu.apply_slice(&mut want.data);
                let what = format!("masked {masked}, {n} rows");
                assert_eq!(l.forward_relu(&x, true).data, want.data, "forward, {what}");
                assert_eq!(l.infer_relu(&x, true).data, want.data, "infer, {what}");
                let mut y = Mat::from_vec(n, 90, vec![F::from(-7.0).unwrap(); n * 90]);
                l.infer_to(&x, &mut y, true);
                assert_eq!(y.data, want.data, "infer_to, {what}");
            }
        }
        let mut r = rng(5);
        for masked in [false, true] {
            case::<f32>(masked, &mut r);
            case::<f64>(masked, &mut r);
        }
    }

    /// A piecewise network with a hidden layer after its front runs its row blocks in parallel, each on the
    /// same packed weights (packed by whichever block comes first, the lock not held across the packing, which
    /// runs on the pool too): the result equals the training forward's, bit for bit.
    #[test]
    fn parallel_row_blocks_share_the_packed_weights() {
        let mut m: Mlp<f32> = Mlp::new("n", 1, 160, 3, 2, Activation::Relu, &mut rng(4));
        for l in &mut m.layers {
            for (k, v) in l.weight.value_mut().iter_mut().enumerate() {
                *v += 0.01 * ((k % 7) as f32 - 3.0);
            }
        }
        let x: Mat<f32> = randn(&mut rng(5), 3000, 1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for _ in 0..2 {
            let y = pool.install(|| m.forward(&x));
            let want = m.clone().forward_train(&x);
            assert_eq!(y.data, want.data);
        }
    }

    /// MADE sorts its hidden degrees, so every layer's mask is block-triangular and about half of each
    /// product is skipped (both input orderings).
    #[test]
    fn made_layers_skip_masked_blocks() {
        let d = 64;
        for order in [(0..d).collect::<Vec<_>>(), (0..d).rev().collect()] {
            let m: Made<f32> = Made::new(
                d,
                0,
                512,
                2,
                2,
                Activation::Relu,
                &order,
                MadeOpts::default(),
                &mut rng(0),
            );
            for (l, layer) in m.net.layers.iter().enumerate() {
                let area: usize = layer.blocks().iter().map(Block::area).sum();
                let frac = area as f64 / (layer.out * layer.inp) as f64;
                // hidden layers: 64-row blocks of a triangle; output layer: parameter-major rows, thinner blocks
                let limit = if l + 1 < m.net.layers.len() { 0.6 } else { 0.7 };
                assert!(
                    !layer.blocks().is_empty() && frac < limit,
                    "layer {l}: {} blocks cover {frac:.2} of the weight",
                    layer.blocks().len()
                );
            }
        }
    }
}
