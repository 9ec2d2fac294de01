//! The dense (optionally masked, block-sparse) layer `y = x W^T + b` with its backward, the weight packs
//! kept for the GEMM, and the block structure of a MADE mask.

use super::activation::Activation;
use super::Param;
use crate::engine::kernels;
use crate::engine::kernels::View;
use crate::engine::{Float, Mat, Rng};
use rand::Rng as _;
use std::sync::{Arc, Mutex};

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
    pub(super) blocks: Vec<Block>,
    /// Masked layers: the depth range of every tile of the products on the f32 kernel (the block-sparse form
    /// at the kernel's own tile size, in one product).
    pub(super) panels: Option<MaskPanels>,
    /// Inference: the weights packed for the products, kept while they are unchanged.
    pub(super) packed: PackedWeights,
}

/// A layer's weights packed for its inference products ([`kernels::PreparedWeight`]), with the
/// [`Param::version`] they were packed from: reused while the version is the same (repeated inference with
/// fixed weights: scoring a data set batch by batch, sampling), repacked after any write to the weights.
/// Costs one more copy of the weights while it is held; training drops it. Clones start empty.
#[derive(Default)]
pub(super) struct PackedWeights(pub(super) Mutex<Option<(u64, Arc<kernels::PreparedWeight>)>>);

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
pub(super) struct MaskPanels {
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
    pub(super) fn packs_for(&self, rows: usize) -> Option<&kernels::WeightPacks> {
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
