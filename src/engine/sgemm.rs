//! Single-precision matrix product with an AVX2/FMA micro-kernel, on BLIS's loop structure (Goto & van de Geijn,
//! "Anatomy of high-performance matrix multiplication", ACM TOMS 2008; Van Zee & van de Geijn, "BLIS", ACM TOMS
//! 2015).
//!
//! Why our own: the products of a flow are small to mid-sized (256-512 rows, 100-1000 columns), where a
//! general library's per-thread packing and threading weigh heavily against the arithmetic (providers compared in
//! docs/results/speed.md, "GEMM providers on the flows' shapes"). Here A and B are packed once per product into
//! `MR`-row and `NR`-column micro-panels that all threads share (each core packs part of them), then each thread
//! computes whole tiles of C. The sum for one element of C runs in the same order whatever the tiling, so results do
//! not depend on the number of threads.
//!
//! Self-contained (std and rayon only) so that `bench/gemm` can time the same file.

use rayon::prelude::*;
use std::cell::RefCell;

/// Rows of the micro-tile (6 x 16: twelve 8-wide accumulators, two B loads, one A broadcast per step).
pub const MR: usize = 6;
/// Columns of the micro-tile.
pub const NR: usize = 16;
/// Depth of a packed block (a kc x NR micro-panel of B, 16 KB, stays in L1 across the A panels).
const KC: usize = 256;
/// Most rows of C a task takes (its MC x KC block of packed A, 144 KB, stays in L2).
const MC: usize = 144;
/// Largest B (floats) that each thread packs for itself when the product is split by rows.
const SMALL_B: usize = 256 * 256;
/// Most columns of C a task takes (its KC x NC block of packed B, 1 MB, in L3).
const NC: usize = 1024;

/// Whether this CPU runs the kernel (x86-64 with AVX2 and FMA; detected once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a product of `m x k` by `k x n` should use this kernel: it pads to whole micro-tiles, so very thin
/// products are left to the caller's general path, and it packs all of A and B before computing, so products
/// whose operands exceed [`MAX_PACK`] (a convolution's im2col matrix: tens of thousands of rows) are left to a
/// library that streams them block by block.
pub fn suits(m: usize, k: usize, n: usize) -> bool {
    available() && m >= 2 * MR && n >= NR && k >= 8 && (m + n) * k <= MAX_PACK
}

/// Most floats of A and B one product packs (16 MB): a flow layer's batch of a few hundred rows, not an image
/// batch's im2col matrix.
const MAX_PACK: usize = 1 << 22;

/// A strided operand: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct Operand {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// The part of the depth that tile `(i, j)` of C (row panel `i` of `MR` rows, column panel `j` of `NR`
/// columns) needs: `[lo, hi)`; empty skips the tile (left as it was, or zero when not accumulating). For
/// products with structural zeros (MADE's masked layers): a product over the whole depth computes the same.
pub type Depth<'a> = dyn Fn(usize, usize) -> (usize, usize) + Sync + 'a;

/// What a product does as it writes C: `C = act(init + bias + A B)`, where `init` is C's values (`accumulate`)
/// or zero, `bias` (when not null) holds one value per column of C and `act` is `max(0, .)` when `relu`. The
/// bias and the ReLU ride on the tile stores (no pass of their own over C), and a product that does not
/// accumulate writes every element of C (given a positive depth, as [`suits`] requires): it may start as
/// uninitialised memory.
#[derive(Clone, Copy)]
pub struct Out {
    pub accumulate: bool,
    pub bias: *const f32,
    pub relu: bool,
}

// SAFETY: the bias is only read, by every task of the product
unsafe impl Send for Out {}
// SAFETY: as for Send, above
unsafe impl Sync for Out {}

impl Out {
    /// `C (+)= A B`, nothing more.
    #[allow(dead_code)] // (for the tests and `bench/gemm`: the library goes through `kernels::Epilogue`)
    pub fn plain(accumulate: bool) -> Self {
        Out {
            accumulate,
            bias: std::ptr::null(),
            relu: false,
        }
    }
}

/// Packing buffers, reused across products by the thread that starts them.
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = const { RefCell::new(Buffers { a: Vec::new(), b: Vec::new() }) };
}

/// `f` on this thread's packing buffers; a nested call on the thread (work stolen while it waits inside a
/// product) gets buffers of its own.
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => f(&mut bufs),
        Err(_) => f(&mut Buffers {
            a: Vec::new(),
            b: Vec::new(),
        }),
    })
}

/// A 64-byte aligned region of `len` floats inside `v` (grown as needed).
fn aligned(v: &mut Vec<f32>, len: usize) -> *mut f32 {
    if v.len() < len + 16 {
        *v = vec![0.0; len + 16];
    }
    let p = v.as_mut_ptr();
    let skip = (64 - (p as usize % 64)) % 64 / 4;
    // SAFETY: `skip < 16` and the vector holds `len + 16` floats
    unsafe { p.add(skip) }
}

/// Raw pointers shared by the tasks of one product (each task writes disjoint parts).
#[derive(Clone, Copy)]
struct Shared<'d> {
    a: Operand,
    b: Operand,
    c: *mut f32,
    crs: isize,
    ccs: isize,
    pa: *mut f32,
    pb: *mut f32,
    depth: Option<&'d Depth<'d>>,
}
// SAFETY: tasks read A and B, write disjoint micro-panels of the packing buffers and disjoint tiles of C.
unsafe impl Send for Shared<'_> {}
// SAFETY: as for Send, above
unsafe impl Sync for Shared<'_> {}

/// `C = act((accumulate ? C : 0) + bias + A B)` ([`Out`]) for `A` `m x k`, `B` `k x n`, `C` `m x n` (row stride
/// `crs`, column stride `ccs`), on up to `threads` threads of the current rayon pool; with `depth`, each tile of C
/// runs only over its part of the depth ([`Depth`]).
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`available`]); every element the operands' strides address must be valid,
/// and C's elements distinct from one another and from A's and B's; a bias must hold `n` values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c: *mut f32,
    crs: isize,
    ccs: isize,
    out: Out,
    threads: usize,
    depth: Option<&Depth<'_>>,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (pm, pn) = (m.div_ceil(MR), n.div_ceil(NR));
    if threads > 1 && k * n <= SMALL_B && pm >= 2 * threads {
        // a small B: every thread packs its own copy and takes a slab of rows, one parallel region instead
        // of two (packing, then tiles) for a product that lasts ~100 us
        let shared = &Shared {
            a,
            b,
            c,
            crs,
            ccs,
            pa: std::ptr::null_mut(),
            pb: std::ptr::null_mut(),
            depth,
        };
        // slabs of equal work: with depth ranges (a masked layer's weight gradient, whose rows are the outputs
        // of a triangular mask) equal numbers of rows can differ in work several times over
        let cuts: Vec<usize> = match depth {
            None => (0..=threads).map(|q| q * pm / threads).collect(),
            Some(f) => {
                let work: Vec<usize> = (0..pm)
                    .map(|i| (0..pn).map(|j| tile_work(f(i, j))).sum())
                    .collect();
                let total: usize = work.iter().sum();
                // cut `q` before or after the panel that crosses `q / threads` of the work, whichever is nearer
                let mut cuts = vec![0];
                let mut acc = 0;
                for (i, w) in work.iter().enumerate() {
                    let (before, after) = (acc * threads, (acc + w) * threads);
                    while cuts.len() < threads && after >= cuts.len() * total {
                        let target = cuts.len() * total;
                        let at = if target - before.min(target) < after - target {
                            i
                        } else {
                            i + 1
                        };
                        cuts.push(at.max(cuts[cuts.len() - 1]));
                    }
                    acc += w;
                }
                cuts.resize(threads + 1, pm);
                cuts
            }
        };
        (0..threads).into_par_iter().for_each(|q| {
            let s = *shared;
            let (i0, i1) = (cuts[q], cuts[q + 1]);
            if i0 >= i1 {
                return;
            }
            let (r0, r1) = (i0 * MR, (i1 * MR).min(m));
            let a = Operand {
                ptr: s.a.ptr.offset(r0 as isize * s.a.rs),
                ..s.a
            };
            let c = s.c.offset(r0 as isize * s.crs);
            let shifted = s.depth.map(|f| move |i: usize, j: usize| f(i + i0, j));
            let depth = shifted.as_ref().map(|f| f as &Depth<'_>);
            sgemm(r1 - r0, n, k, a, s.b, c, s.crs, s.ccs, out, 1, depth);
        });
        return;
    }
    let (len_a, len_b) = (pm * MR * k, pn * NR * k);
    with_buffers(|bufs| {
        let s = Shared {
            a,
            b,
            c,
            crs,
            ccs,
            pa: aligned(&mut bufs.a, len_a),
            pb: aligned(&mut bufs.b, len_b),
            depth,
        };
        run(m, n, k, s, out, threads.max(1));
    });
}

/// B packed once for many products with different A (a layer's weights at inference): every micro-panel over
/// the whole depth, in the layout [`sgemm`] packs for itself, so [`sgemm_packed`] only packs A.
pub struct PackedB {
    buf: Vec<f32>,
    start: usize,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Pack the `k x n` matrix `b` on up to `threads` threads of the current pool.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA ([`available`]) and every element `b`'s strides address must be valid.
    pub unsafe fn new(k: usize, n: usize, b: Operand, threads: usize) -> Self {
        let pn = n.div_ceil(NR);
        let mut packed = Self::zeroed(k, n);
        let s = packed.writer().shared(b);
        let pack = |j: usize| pack_b(s, n, k, j, pn, (0, k));
        if threads > 1 {
            (0..pn).into_par_iter().with_min_len(4).for_each(pack);
        } else {
            (0..pn).for_each(pack);
        }
        packed
    }

    /// Room for a packed `k x n` matrix, written later part by part ([`PackedB::writer`]); zeros until then.
    pub fn zeroed(k: usize, n: usize) -> Self {
        let mut buf = Vec::new();
        let pb = aligned(&mut buf, n.div_ceil(NR) * NR * k);
        // SAFETY: `aligned` returns a pointer into `buf`
        let start = unsafe { pb.offset_from(buf.as_ptr()) } as usize;
        PackedB { buf, start, k, n }
    }

    /// `(k, n)`: the depth and columns of the packed matrix.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// A handle that repacks parts of the matrix from its source, from several threads at once (disjoint
    /// parts); valid while `self` is neither moved nor dropped, and nothing reads it meanwhile.
    pub fn writer(&mut self) -> PackWriter {
        PackWriter {
            pb: self.buf[self.start..].as_mut_ptr(),
            k: self.k,
            n: self.n,
        }
    }
}

/// Writes parts of a [`PackedB`] (from [`PackedB::writer`]): an optimiser's step repacks the rows of a weight
/// it has just updated while they are still in cache, instead of every product packing the whole weight again.
#[derive(Clone, Copy)]
pub struct PackWriter {
    pb: *mut f32,
    k: usize,
    n: usize,
}

// SAFETY: the writers of one matrix write disjoint parts of it ([`PackWriter::lanes`], [`PackWriter::steps`])
unsafe impl Send for PackWriter {}
// SAFETY: as for Send, above
unsafe impl Sync for PackWriter {}

/// Lanes or depth steps per part a [`PackWriter`] writes: a part starts at a multiple of it.
pub const PACK_PART: usize = NR;

impl PackWriter {
    fn shared(&self, b: Operand) -> Shared<'static> {
        Shared {
            a: b,
            b,
            c: std::ptr::null_mut(),
            crs: 0,
            ccs: 0,
            pa: std::ptr::null_mut(),
            pb: self.pb,
            depth: None,
        }
    }

    /// Repack columns `q0..q1` of B (every depth step) from `b` (the whole `k x n` source); `q0` a multiple of
    /// [`PACK_PART`], `q1` too or `n`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, `b` must address the `k x n` source, and no other thread may write or
    /// read the same columns meanwhile.
    pub unsafe fn lanes(&self, b: Operand, q0: usize, q1: usize) {
        debug_assert!(
            q0.is_multiple_of(NR) && (q1.is_multiple_of(NR) || q1 == self.n) && q1 <= self.n
        );
        let (s, pn) = (self.shared(b), self.n.div_ceil(NR));
        for j in q0 / NR..q1.div_ceil(NR) {
            #[cfg(target_arch = "x86_64")]
            if b.rs == 1 && (j + 1) * NR <= self.n {
                stream_lanes(b, self.k, j, pn, self.pb);
                continue;
            }
            pack_b(s, self.n, self.k, j, pn, (0, self.k));
        }
        fence();
    }

    /// Repack depth steps `p0..p1` of B (every column) from `b` (the whole `k x n` source, columns contiguous:
    /// `b.cs == 1`); `p0` a multiple of [`PACK_PART`], `p1` too or `k`.
    ///
    /// # Safety
    /// As [`PackWriter::lanes`], for these depth steps.
    pub unsafe fn steps(&self, b: Operand, p0: usize, p1: usize) {
        debug_assert!(
            b.cs == 1 && p0.is_multiple_of(BAND) && (p1.is_multiple_of(BAND) || p1 == self.k)
        );
        #[cfg(target_arch = "x86_64")]
        {
            stream_steps(b, self.n, self.k, p0, p1, self.pb);
            fence();
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let used = vec![(0, self.k); self.n.div_ceil(NR)];
            for p in (p0..p1).step_by(BAND) {
                pack_band::<NR>(b.ptr, b.rs, self.n, self.k, p, &used, self.pb);
            }
        }
    }
}

/// Order the non-temporal stores of a [`PackWriter`] before whatever the thread does next (they bypass the
/// caches, and the products that read the packs may run on another thread).
#[inline(always)]
fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a store fence has no operands
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Column panel `j` (all `NR` lanes present) of a B whose lanes are contiguous along the depth (`b.rs == 1`),
/// every depth block, into the packed layout at `pb` (`pn` panels), with non-temporal stores: the packs of a
/// weight are written once per optimiser step and read in the next step's products, long after, so the stores
/// go to memory without first reading each line in, and without evicting the caches' contents. 8 lanes x 8
/// steps per register transpose; a depth block's last `kc % 8` steps plainly.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn stream_lanes(b: Operand, k: usize, j: usize, pn: usize, pb: *mut f32) {
    use std::arch::x86_64::*;
    let src = |q: usize, p: usize| b.ptr.offset((j * NR + q) as isize * b.cs).add(p);
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        let dst = pb.add(panel_offset(p0, kc, j, NR, pn));
        let mut t = 0;
        while t + 8 <= kc {
            let mut halves = [[_mm256_setzero_ps(); 8]; 2];
            for (h, half) in halves.iter_mut().enumerate() {
                let rows: [__m256; 8] =
                    std::array::from_fn(|q| _mm256_loadu_ps(src(8 * h + q, p0 + t)));
                *half = transpose8(rows);
            }
            for u in 0..8 {
                let d = dst.add((t + u) * NR);
                _mm256_stream_ps(d, halves[0][u]);
                _mm256_stream_ps(d.add(8), halves[1][u]);
            }
            t += 8;
        }
        for t in t..kc {
            for q in 0..NR {
                *dst.add(t * NR + q) = *src(q, p0 + t);
            }
        }
    }
}

/// Depth steps `p0..p1` of every column panel of a B whose columns are contiguous (`b.cs == 1`), `n` columns
/// (zero past them) and depth `k`, into the packed layout at `pb`: panel by panel, each step's `NR` lanes one
/// line, with non-temporal stores ([`stream_lanes`] says why).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn stream_steps(b: Operand, n: usize, k: usize, p0: usize, p1: usize, pb: *mut f32) {
    use std::arch::x86_64::*;
    let pn = n.div_ceil(NR);
    for j in 0..pn {
        let w = NR.min(n - j * NR);
        for p in p0..p1 {
            let (b0, kc) = (p / KC * KC, KC.min(k - p / KC * KC));
            let d = pb.add(panel_offset(b0, kc, j, NR, pn) + (p - b0) * NR);
            let row = b.ptr.offset(p as isize * b.rs).add(j * NR);
            if w == NR {
                _mm256_stream_ps(d, _mm256_loadu_ps(row));
                _mm256_stream_ps(d.add(8), _mm256_loadu_ps(row.add(8)));
            } else {
                for q in 0..NR {
                    *d.add(q) = if q < w { *row.add(q) } else { 0.0 };
                }
            }
        }
    }
}

/// [`sgemm`] with B packed beforehand ([`PackedB`], `k x n`): each task packs its own rows of A and computes
/// their tiles against the shared packed B, one parallel region per product. The same sums in the same order
/// as [`sgemm`], so the same bits.
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_packed(
    m: usize,
    a: Operand,
    b: &PackedB,
    c: *mut f32,
    crs: isize,
    ccs: isize,
    out: Out,
    threads: usize,
    depth: Option<&Depth<'_>>,
) {
    let (k, n) = b.dims();
    if m == 0 || n == 0 {
        return;
    }
    let (pm, pn) = (m.div_ceil(MR), n.div_ceil(NR));
    // row slabs of at most MC rows, a whole number per thread (more with uneven depth ranges, for the pool to
    // balance: as `run` cuts its row groups)
    let mut slabs = pm.div_ceil(MC / MR);
    if threads > 1 {
        let least = if depth.is_some() {
            4 * threads
        } else {
            threads
        };
        slabs = slabs.max(least).div_ceil(threads) * threads;
    }
    let slabs = slabs.min(pm);
    let shared = &Shared {
        a,
        b: a,
        c,
        crs,
        ccs,
        pa: std::ptr::null_mut(),
        pb: b.buf.as_ptr().add(b.start) as *mut f32,
        depth,
    };
    // without depth ranges, on several threads, a task takes an equal share of the (row panel, column panel)
    // cells in row-major order, so its first and last row panels may be partial: the split is even to a cell
    // where whole row panels split a batch of 256 rows (43 panels) 21 / 22, one thread waiting 4.6% of the
    // product. Each task packs the row panels it touches (a panel shared by two tasks is packed by both).
    let cells = |q: usize| match depth {
        None if threads > 1 => {
            let (c0, c1) = (q * pm * pn / slabs, (q + 1) * pm * pn / slabs);
            match c0 < c1 {
                true => ((c0 / pn, c0 % pn), (c1.div_ceil(pn), (c1 - 1) % pn + 1)),
                false => ((0, 0), (0, 0)),
            }
        }
        _ => ((q * pm / slabs, 0), ((q + 1) * pm / slabs, pn)),
    };
    let task = |q: usize| {
        let s = *shared;
        // panels i0..i1; the first starts at column panel j0, the last ends at j1
        let ((i0, j0), (i1, j1)) = cells(q);
        if i0 >= i1 {
            return;
        }
        let (r0, r1) = (i0 * MR, (i1 * MR).min(m));
        let shifted = s.depth.map(|f| move |i: usize, j: usize| f(i + i0, j));
        let depth = shifted.as_ref().map(|f| f as &Depth<'_>);
        let panels = i1 - i0;
        with_buffers(|bufs| {
            let s = Shared {
                a: Operand {
                    ptr: s.a.ptr.offset(r0 as isize * s.a.rs),
                    ..s.a
                },
                c: s.c.offset(r0 as isize * s.crs),
                pa: aligned(&mut bufs.a, panels * MR * k),
                depth,
                ..s
            };
            for i in 0..panels {
                let used = match depth {
                    None => (0, k),
                    Some(f) => (0..pn).fold((k, 0), |(lo, hi), j| match f(i, j) {
                        (l, h) if l < h => (lo.min(l), hi.max(h)),
                        _ => (lo, hi),
                    }),
                };
                pack_a(s, r1 - r0, k, i, panels, used);
            }
            let run = |rows: (usize, usize), cols: (usize, usize)| {
                if rows.0 < rows.1 && cols.0 < cols.1 {
                    compute(s, r1 - r0, n, k, rows, cols, panels, pn, out, true, false);
                }
            };
            if panels == 1 {
                run((0, 1), (j0, j1));
            } else {
                // column ranges cut at j0 and j1, each over the rows that have its columns (contiguous): every
                // column's packed weights streamed once, as for whole rows
                let mut cuts = [0, j0, j1, pn];
                cuts.sort_unstable();
                for w in cuts.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    let first = if a >= j0 { 0 } else { 1 };
                    let last = if a < j1 { panels } else { panels - 1 };
                    run((first, last), (a, b));
                }
            }
        });
    };
    if threads > 1 {
        (0..slabs).into_par_iter().for_each(task);
    } else {
        (0..slabs).for_each(task);
    }
}

/// Offset of micro-panel `i` of the depth block starting at `p0` (depth `kc`), for panels of `w` rows or
/// columns and `panels` of them: block after block, panel after panel, `kc x w` each.
#[inline(always)]
fn panel_offset(p0: usize, kc: usize, i: usize, w: usize, panels: usize) -> usize {
    p0 * panels * w + i * kc * w
}

unsafe fn run(m: usize, n: usize, k: usize, s: Shared<'_>, out: Out, threads: usize) {
    let (pm, pn) = (m.div_ceil(MR), n.div_ceil(NR));
    // 1. pack: one unit per micro-panel of A (all depth blocks) and of B, each over the depth its tiles use (or
    // per band of depth steps, below)
    // (with depth ranges, also the work of every tile of panels as 2-D prefix sums, `work[i][j]` the sum over
    // panels `< i` by `< j`, for dealing the tiles to the threads)
    let wk = pn + 1;
    let (a_used, b_used, work) = match s.depth {
        None => (vec![(0, k); pm], vec![(0, k); pn], Vec::new()),
        Some(f) => {
            let mut a_used = vec![(k, 0); pm];
            let mut b_used = vec![(k, 0); pn];
            let mut work = vec![0usize; (pm + 1) * wk];
            for i in 0..pm {
                for j in 0..pn {
                    let (lo, hi) = f(i, j);
                    if lo < hi {
                        let (a, b) = (&mut a_used[i], &mut b_used[j]);
                        *a = (a.0.min(lo), a.1.max(hi));
                        *b = (b.0.min(lo), b.1.max(hi));
                    }
                    work[(i + 1) * wk + j + 1] =
                        tile_work((lo, hi)) + work[i * wk + j + 1] + work[(i + 1) * wk + j]
                            - work[i * wk + j];
                }
            }
            (a_used, b_used, work)
        }
    };
    // an operand whose lanes (A's rows, B's columns) are contiguous in memory is packed a band of depth steps
    // at a time across all its panels, so its reads sweep memory in order; panel by panel, each would read one
    // line per depth step, a row stride apart (4 KB for a 1024-wide weight: a line per page, which the
    // prefetcher does not follow, so such a product ran slower than its other shapes until packed in bands;
    // docs/results/speed.md, fifth session)
    // (with depth ranges, each panel only over the steps its tiles use: MADE's input gradient, whose weight
    // is B with contiguous lanes)
    let by_rows = |o: Operand| o.cs == 1 && k >= 2 * BAND;
    let (a_rows, b_rows) = (by_rows(Operand { cs: s.a.rs, ..s.a }), by_rows(s.b));
    // A big B (a layer's weights) for few rows of A (a batch of a few hundred): B is packed micro-panel by
    // micro-panel just before its tiles use it, its source lines fetched while the panel before is in use
    // ([`compute`]), instead of all of it up front into a buffer that outgrows L2 and is read back panel by
    // panel (slower than the weight gradient of the same size, whose operands are small; docs/results/speed.md, ninth
    // session). Each B panel then belongs to one tile: the tiles split the columns only.
    let fuse = s.depth.is_none()
        && pm <= 2 * (MC / MR)
        && k * n >= FUSE_B
        && k >= 2 * BAND
        && pn >= 4 * threads;
    let a_units = if a_rows { k.div_ceil(BAND) } else { pm };
    let b_units = match (fuse, b_rows) {
        (true, _) => 0,
        (false, true) => k.div_ceil(BAND),
        (false, false) => pn,
    };
    let pack = |u: usize| match u < a_units {
        true if a_rows => pack_band::<MR>(s.a.ptr, s.a.cs, m, k, u * BAND, &a_used, s.pa),
        true => pack_a(s, m, k, u, pm, a_used[u]),
        false if b_rows => {
            pack_band::<NR>(s.b.ptr, s.b.rs, n, k, (u - a_units) * BAND, &b_used, s.pb)
        }
        false => pack_b(s, n, k, u - a_units, pn, b_used[u - a_units]),
    };
    let units = a_units + b_units;
    // 2. tiles of C: row groups of whole A panels, column groups of whole B panels; at least one per thread
    // (uneven depth ranges make uneven tiles: more of them, for the pool to balance)
    let mut rp = pm.div_ceil(MC / MR);
    if s.depth.is_some() && threads > 1 {
        rp = rp.max((4 * threads).min(pm / 2).max(1));
    }
    let mut cp = pn.div_ceil(NC / NR);
    while threads > 1 && (rp * cp) % threads != 0 {
        if pm / (rp + 1) >= 2 && (pm >= pn * 2 || pn / (cp + 1) < 2) {
            rp += 1;
        } else if pn / (cp + 1) >= 1 {
            cp += 1;
        } else {
            break;
        }
    }
    // every tile's work is known (its area; with depth ranges, the sum of its panels' depths): each thread gets
    // a list of tiles dealt up front (a grid of the default size or finer, the one whose busiest thread has
    // least to do). Why: a batch of 256 rows is 43 row panels, which two row groups split 21 / 22, so one
    // thread waited 4.6% of the product for the other; a 2 x 2 grid dealt diagonally is off by one panel's
    // width. With depth ranges the pool balanced the tiles by stealing, but a triangular mask's weight gradient
    // has 8 row groups whose work grows from nothing to the whole depth: the pool's halving of the tile range
    // split them about 10 : 26, and stealing only evened that out to about 25 : 11.
    if fuse {
        (rp, cp) = (
            1,
            if threads > 1 {
                threads
            } else {
                pn.div_ceil(NC / NR)
            },
        );
    }
    let lists = match threads > 1 && !fuse {
        true => {
            let (r, c, lists) = match s.depth {
                None => deal(pm, pn, (rp, cp), threads, &|i0, i1, j0, j1| {
                    (i1 - i0) * (j1 - j0)
                }),
                Some(_) => deal(pm, pn, (rp, cp), threads, &|i0, i1, j0, j1| {
                    work[i1 * wk + j1] + work[i0 * wk + j0]
                        - work[i0 * wk + j1]
                        - work[i1 * wk + j0]
                }),
            };
            (rp, cp) = (r, c);
            lists
        }
        false => Vec::new(),
    };
    let tile = |t: usize| {
        let (ri, ci) = (t / cp, t % cp);
        let (i0, i1) = (ri * pm / rp, (ri + 1) * pm / rp);
        let (j0, j1) = (ci * pn / cp, (ci + 1) * pn / cp);
        compute(s, m, n, k, (i0, i1), (j0, j1), pm, pn, out, false, fuse);
    };
    if threads == 1 {
        (0..units).for_each(pack);
        (0..rp * cp).for_each(tile);
    } else {
        (0..units).into_par_iter().with_min_len(4).for_each(pack);
        if lists.is_empty() {
            (0..rp * cp).into_par_iter().for_each(tile);
        } else {
            lists
                .par_iter()
                .with_max_len(1)
                .for_each(|l| l.iter().for_each(|&t| tile(t)));
        }
    }
}

/// Tiles of C (row-major indices into an `rp x cp` grid of `pm x pn` panels) dealt to `threads` lists, largest
/// first to the least loaded (LPT), on the grid among `start` and finer ones (up to twice as many row and column
/// groups, at most four tiles per thread) whose busiest list has the least work (`cost(i0, i1, j0, j1)` of the
/// tile of row panels `i0..i1` by column panels `j0..j1`); a finer grid must gain more than 1% to be chosen.
/// Returns the grid and the lists, each in row-major order.
fn deal(
    pm: usize,
    pn: usize,
    start: (usize, usize),
    threads: usize,
    cost: &dyn Fn(usize, usize, usize, usize) -> usize,
) -> (usize, usize, Vec<Vec<usize>>) {
    let lpt = |rp: usize, cp: usize| {
        let area = |t: usize| {
            let (ri, ci) = (t / cp, t % cp);
            let (i0, i1) = (ri * pm / rp, (ri + 1) * pm / rp);
            cost(i0, i1, ci * pn / cp, (ci + 1) * pn / cp)
        };
        let mut order: Vec<usize> = (0..rp * cp).collect();
        order.sort_by_key(|&t| std::cmp::Reverse(area(t)));
        let (mut lists, mut load) = (vec![Vec::new(); threads], vec![0usize; threads]);
        for t in order {
            let q = (0..threads).min_by_key(|&q| load[q]).unwrap_or(0);
            lists[q].push(t);
            load[q] += area(t);
        }
        lists.iter_mut().for_each(|l| l.sort_unstable());
        (load.into_iter().max().unwrap_or(0), lists)
    };
    let (rp0, cp0) = start;
    let (mut best_load, mut best) = {
        let (load, lists) = lpt(rp0, cp0);
        (load, (rp0, cp0, lists))
    };
    for rp in rp0..=(2 * rp0).min(pm) {
        for cp in cp0..=(2 * cp0).min(pn) {
            if (rp, cp) == (rp0, cp0) || rp * cp < threads || rp * cp > 4 * threads {
                continue;
            }
            let (load, lists) = lpt(rp, cp);
            if load * 101 < best_load * 100 {
                (best_load, best) = (load, (rp, cp, lists));
            }
        }
    }
    best
}

/// Floats of B from which a product with few rows of A packs B as it goes ([`run`], [`compute`]): 1 MB.
const FUSE_B: usize = 1 << 18;

/// The source lines of one micro-panel of B (column panel `j`, depth steps `p0..p1`), fetched one by one
/// ([`RawLines::fetch_next`]) without divisions: `outer` runs of `inner` lines, `stride` floats apart.
struct RawLines {
    base: *const f32,
    stride: isize,
    inner: usize,
    outer: usize,
    o: usize,
    i: usize,
}

impl RawLines {
    fn none() -> Self {
        RawLines {
            base: std::ptr::null(),
            stride: 0,
            inner: 0,
            outer: 0,
            o: 0,
            i: 0,
        }
    }

    /// Lanes contiguous along the depth (`x W^T`'s B): per lane, its steps' lines; lanes contiguous (`dy W`'s B):
    /// per step, the lanes' line (two, as it may straddle); otherwise none.
    unsafe fn new(b: Operand, n: usize, j: usize, p0: usize, p1: usize) -> Self {
        let (q0, lanes) = (j * NR, NR.min(n - j * NR));
        let at = |p: usize, q: usize| b.ptr.offset(p as isize * b.rs + q as isize * b.cs);
        match (b.rs, b.cs) {
            (1, cs) => RawLines {
                base: at(p0, q0),
                stride: cs,
                inner: (p1 - p0).div_ceil(16) + 1,
                outer: lanes,
                o: 0,
                i: 0,
            },
            (rs, 1) => RawLines {
                base: at(p0, q0),
                stride: rs,
                inner: 2,
                outer: p1 - p0,
                o: 0,
                i: 0,
            },
            _ => Self::none(),
        }
    }

    fn len(&self) -> usize {
        self.inner * self.outer
    }

    /// Fetch the next line into the caches (nothing past the last).
    #[inline(always)]
    fn fetch_next(&mut self) {
        if self.o >= self.outer {
            return;
        }
        prefetch_line(
            self.base
                .wrapping_offset(self.o as isize * self.stride)
                .wrapping_add(self.i * 16),
        );
        self.i += 1;
        if self.i == self.inner {
            self.i = 0;
            self.o += 1;
        }
    }
}

/// Bring the 64-byte line holding `p` into L1 (a hint: never faults, whatever the address).
#[inline(always)]
fn prefetch_line(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and does not fault
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// What a tile costs beside its depth steps, in depth steps, for dealing tiles of uneven depth ([`deal`]).
const TILE_COST: usize = 8;

/// The work of a tile (one A panel by one B panel) over the depth range `[lo, hi)`, for splitting products with
/// depth ranges by work: its depth steps plus [`TILE_COST`].
fn tile_work((lo, hi): (usize, usize)) -> usize {
    hi.saturating_sub(lo) + TILE_COST
}

/// Depth steps per unit of [`pack_band`].
const BAND: usize = 16;

/// Depth steps `p0..p0 + BAND` (within `k`) of every `W`-lane micro-panel of an operand whose lanes are
/// contiguous: lane `q` at depth `p` is `src[q + p * ps]`, `lanes` of them (zero past the last); into the
/// packed layout at `dst` ([`panel_offset`]), panel `j` only at the steps inside `used[j]`.
unsafe fn pack_band<const W: usize>(
    src: *const f32,
    ps: isize,
    lanes: usize,
    k: usize,
    p0: usize,
    used: &[(usize, usize)],
    dst: *mut f32,
) {
    let panels = used.len();
    let (b0, kc) = (p0 / KC * KC, KC.min(k - p0 / KC * KC));
    let p1 = (p0 + BAND).min(k);
    // panel by panel, each panel's steps of the band in turn: the band's rows are read as BAND sequential
    // streams either way, and each panel's part is then written contiguously (step by step across the panels,
    // every store went to another panel, `kc * W` floats apart: for B that is a multiple of 4 KB, so all of a
    // step's stores fell in one L1 set)
    for (j, &(lo, hi)) in used.iter().enumerate() {
        let (s0, s1) = (p0.max(lo), p1.min(hi));
        if s0 >= s1 {
            continue;
        }
        let d = dst.add(panel_offset(b0, kc, j, W, panels) + (s0 - b0) * W);
        let w = W.min(lanes - j * W);
        let at = src.add(j * W);
        for (t, p) in (s0..s1).enumerate() {
            let (row, d) = (at.offset(p as isize * ps), d.add(t * W));
            prefetch_line(row.wrapping_add(4 * W));
            if w == W {
                std::ptr::copy_nonoverlapping(row, d, W);
            } else {
                for q in 0..W {
                    *d.add(q) = if q < w { *row.add(q) } else { 0.0 };
                }
            }
        }
    }
}

/// Pack rows `MR*i..` of A as `kc x MR` panels (zero rows past `m`), in every depth block the part inside
/// `used`.
unsafe fn pack_a(s: Shared<'_>, m: usize, k: usize, i: usize, pm: usize, used: (usize, usize)) {
    let (a, r0) = (s.a, i * MR);
    let src = a.ptr.offset(r0 as isize * a.rs);
    pack_panel::<MR>(src, a.rs, a.cs, m - r0, k, used, |p0, kc| {
        s.pa.add(panel_offset(p0, kc, i, MR, pm))
    });
}

/// Pack columns `NR*j..` of B as `kc x NR` panels (zero columns past `n`), in every depth block the part
/// inside `used`.
unsafe fn pack_b(s: Shared<'_>, n: usize, k: usize, j: usize, pn: usize, used: (usize, usize)) {
    let (b, c0) = (s.b, j * NR);
    let src = b.ptr.offset(c0 as isize * b.cs);
    pack_panel::<NR>(src, b.cs, b.rs, n - c0, k, used, |p0, kc| {
        s.pb.add(panel_offset(p0, kc, j, NR, pn))
    });
}

/// One micro-panel of `W` lanes (A's rows or B's columns): lane `q` at depth `p` is `src[q * qs + p * ps]`;
/// lanes past `lanes` are zero. Each depth block's part inside `used` goes to `dst(p0, kc)`, depth step by depth
/// step (`W` contiguous floats each).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn pack_panel<const W: usize>(
    src: *const f32,
    qs: isize,
    ps: isize,
    lanes: usize,
    k: usize,
    used: (usize, usize),
    dst: impl Fn(usize, usize) -> *mut f32,
) {
    let lanes = W.min(lanes);
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        let (mut lo, hi) = (used.0.max(p0), used.1.min(p0 + kc));
        let dst = dst(p0, kc);
        // each lane contiguous along the depth (x W^T's B, a row-major A): 8 lanes x 8 steps per register
        // transpose
        #[cfg(target_arch = "x86_64")]
        if ps == 1 && lanes == W {
            use std::arch::x86_64::*;
            while lo + 8 <= hi {
                for h in (0..W).step_by(8) {
                    let mut v = [_mm256_setzero_ps(); 8];
                    for (q, v) in v.iter_mut().enumerate().take(W - h) {
                        *v = _mm256_loadu_ps(src.offset((h + q) as isize * qs).add(lo));
                    }
                    for (t, col) in transpose8(v).iter().enumerate() {
                        let d = dst.add((lo - p0 + t) * W + h);
                        if W - h >= 8 {
                            _mm256_storeu_ps(d, *col);
                        } else {
                            // the MR = 6 rows of an A panel: 4 + 2 lanes
                            _mm_storeu_ps(d, _mm256_castps256_ps128(*col));
                            let hi2 = _mm_castps_pd(_mm256_extractf128_ps::<1>(*col));
                            _mm_store_sd(d.add(4) as *mut f64, hi2);
                        }
                    }
                }
                lo += 8;
            }
        }
        for p in lo..hi {
            let d = dst.add((p - p0) * W);
            let at = src.offset(p as isize * ps);
            if lanes == W && qs == 1 {
                std::ptr::copy_nonoverlapping(at, d, W);
            } else {
                for q in 0..W {
                    *d.add(q) = if q < lanes {
                        *at.offset(q as isize * qs)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Columns of an 8 x 8 block given as its rows: `out[k][q] = rows[q][k]` (also the direct convolution's
/// ordered lane sums, `conv_x86`). Inlined into its callers, which all enable AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn transpose8(
    r: [std::arch::x86_64::__m256; 8],
) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// One task: C's A panels `i0..i1` by B panels `j0..j1`, over every depth block (with `prefetch`, each B panel
/// fetched ahead while the one before is in use; with `pack`, each B panel packed here just before its use, from
/// source lines fetched while the one before is in use: the task must be the only one using these B panels);
/// the bias goes in with the first depth block, the ReLU with the last.
#[allow(clippy::too_many_arguments)]
unsafe fn compute(
    s: Shared<'_>,
    m: usize,
    n: usize,
    k: usize,
    (i0, i1): (usize, usize),
    (j0, j1): (usize, usize),
    pm: usize,
    pn: usize,
    out: Out,
    prefetch: bool,
    pack: bool,
) {
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        let overwrite = p0 == 0 && !out.accumulate;
        let relu = out.relu && p0 + kc >= k;
        for j in j0..j1 {
            let bp = s.pb.add(panel_offset(p0, kc, j, NR, pn));
            // with `pack`, this micro-panel of B is packed now (its source lines fetched while the one before
            // was in use), and the next one's source lines are fetched a slice per A panel
            let mut raw = RawLines::none();
            if pack {
                pack_b(s, n, k, j, pn, (p0, p0 + kc));
                raw = match (j + 1 < j1, p0 + KC < k) {
                    (true, _) => RawLines::new(s.b, n, j + 1, p0, p0 + kc),
                    (false, true) => RawLines::new(s.b, n, j0, p0 + KC, (p0 + 2 * KC).min(k)),
                    _ => RawLines::none(),
                };
            }
            let raw_per = raw.len().div_ceil(i1 - i0);
            let cols = NR.min(n - j * NR);
            let bias = match p0 == 0 && !out.bias.is_null() {
                true => out.bias.add(j * NR),
                false => std::ptr::null(),
            };
            // with `prefetch`, the next B micro-panel (the next one in memory: the next column panel, or the
            // first of the next depth block) comes into L1 a slice per A panel while this one is in use. For
            // weights packed beforehand, which come from memory when a flow's layers outgrow the caches: a cold
            // panel stalled the first tiles of each column (docs/results/speed.md, fourth session). Not for B
            // packed just before (training): there it cost time instead.
            let next = bp.wrapping_add(kc * NR) as *const i8;
            // Each tile's kernel fetches a slice of `per` lines, one per four depth steps (issued together before
            // each tile, behind two divisions, they waited on lines from memory; docs/results/speed.md, eighth
            // session).
            let lines = kc * NR / 16;
            let per = lines.div_ceil(i1 - i0);
            for i in i0..i1 {
                let l0 = ((i - i0) * per).min(lines);
                let pf_lines = if prefetch {
                    (l0 + per).min(lines) - l0
                } else {
                    0
                };
                for _ in 0..raw_per {
                    raw.fetch_next();
                }
                let ap = s.pa.add(panel_offset(p0, kc, i, MR, pm));
                let rows = MR.min(m - i * MR);
                let c =
                    s.c.offset((i * MR) as isize * s.crs + (j * NR) as isize * s.ccs);
                let (lo, hi) = match s.depth {
                    None => (p0, p0 + kc),
                    Some(f) => {
                        let (lo, hi) = f(i, j);
                        (lo.max(p0), hi.min(p0 + kc))
                    }
                };
                let tile = Tile {
                    c,
                    crs: s.crs,
                    ccs: s.ccs,
                    rows,
                    cols,
                    overwrite,
                    bias,
                    relu,
                    pf: next.wrapping_add(l0 * 64),
                    pf_lines,
                };
                if lo >= hi {
                    // nothing to add in this block: the epilogue alone (an empty sum)
                    if overwrite || !bias.is_null() || relu {
                        kernel::<MR>(0, ap, bp, tile);
                    }
                    continue;
                }
                let (ap, bp) = (ap.add((lo - p0) * MR), bp.add((lo - p0) * NR));
                // a short last panel (256 rows: 42 panels of 6 and one of 4) computes only its rows
                match rows {
                    MR | 5 => kernel::<MR>(hi - lo, ap, bp, tile),
                    3 | 4 => kernel::<4>(hi - lo, ap, bp, tile),
                    _ => kernel::<2>(hi - lo, ap, bp, tile),
                }
            }
        }
    }
}

/// Where and how the micro-kernel writes its tile: `rows x cols` of C at `c`, `C = act((overwrite ? 0 : C) +
/// bias + sum)` (`bias`: the tile's first column's value, or null).
#[derive(Clone, Copy)]
struct Tile {
    c: *mut f32,
    crs: isize,
    ccs: isize,
    rows: usize,
    cols: usize,
    overwrite: bool,
    bias: *const f32,
    relu: bool,
    /// Lines (64 bytes from `pf`) to bring into L1 while computing: the next B panel's, for a later tile.
    pf: *const i8,
    pf_lines: usize,
}

/// The 6 x 16 micro-kernel: `C[0..rows, 0..cols] = [act]((C | 0) [+ bias] + Apanel (kc x 6)^T-ish . Bpanel
/// (kc x 16))` ([`Tile`]), computing the panel's first `R` rows (`rows <= R <= MR`; each element's sum the same
/// whatever `R`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const R: usize>(kc: usize, a: *const f32, b: *const f32, t: Tile) {
    use std::arch::x86_64::*;
    let Tile {
        c,
        crs,
        ccs,
        rows,
        cols,
        overwrite,
        bias,
        relu,
        pf,
        pf_lines,
    } = t;
    // C's rows start coming in while the products run (also when overwriting: the stores need the lines)
    for r in 0..rows {
        let p = c.offset(r as isize * crs) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(p);
        _mm_prefetch::<_MM_HINT_T0>(p.offset((NR as isize - 1) * ccs * 4));
    }
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    let (mut a, mut b) = (a, b);
    // one depth step: a row of the B panel times a column of the A panel
    macro_rules! step {
        ($acc:expr, $a:expr, $b:expr) => {{
            let (a, b) = ($a, $b);
            let b0 = _mm256_load_ps(b);
            let b1 = _mm256_load_ps(b.add(8));
            for r in 0..R {
                let ar = _mm256_broadcast_ss(&*a.add(r));
                $acc[2 * r] = _mm256_fmadd_ps(ar, b0, $acc[2 * r]);
                $acc[2 * r + 1] = _mm256_fmadd_ps(ar, b1, $acc[2 * r + 1]);
            }
        }};
    }
    // four depth steps per iteration (fewer loop instructions between the FMAs)
    macro_rules! four {
        () => {{
            step!(acc, a, b);
            step!(acc, a.add(MR), b.add(NR));
            step!(acc, a.add(2 * MR), b.add(2 * NR));
            step!(acc, a.add(3 * MR), b.add(3 * NR));
            a = a.add(4 * MR);
            b = b.add(4 * NR);
        }};
    }
    // the first `pf_lines` iterations each fetch a line
    let fetching = pf_lines.min(kc / 4);
    for l in 0..fetching {
        _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(l * 64));
        four!();
    }
    for _ in fetching..kc / 4 {
        four!();
    }
    // (a depth too short to spread them over)
    for l in fetching..pf_lines {
        _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(l * 64));
    }
    for _ in 0..kc % 4 {
        step!(acc, a, b);
        a = a.add(MR);
        b = b.add(NR);
    }
    debug_assert!(rows <= R && R <= MR);
    if rows == R && cols == NR && ccs == 1 {
        let zero = _mm256_setzero_ps();
        let (bias0, bias1) = match bias.is_null() {
            true => (zero, zero),
            false => (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))),
        };
        for (r, pair) in acc.chunks_exact(2).take(R).enumerate() {
            let p = c.offset(r as isize * crs);
            let (mut v0, mut v1) = (pair[0], pair[1]);
            if !bias.is_null() {
                v0 = _mm256_add_ps(v0, bias0);
                v1 = _mm256_add_ps(v1, bias1);
            }
            if !overwrite {
                v0 = _mm256_add_ps(_mm256_loadu_ps(p), v0);
                v1 = _mm256_add_ps(_mm256_loadu_ps(p.add(8)), v1);
            }
            if relu {
                v0 = _mm256_max_ps(v0, zero);
                v1 = _mm256_max_ps(v1, zero);
            }
            _mm256_storeu_ps(p, v0);
            _mm256_storeu_ps(p.add(8), v1);
        }
    } else {
        let mut t = [0.0f32; MR * NR];
        for (r, pair) in acc.chunks_exact(2).take(R).enumerate() {
            _mm256_storeu_ps(t.as_mut_ptr().add(r * NR), pair[0]);
            _mm256_storeu_ps(t.as_mut_ptr().add(r * NR + 8), pair[1]);
        }
        for r in 0..rows {
            for j in 0..cols {
                let p = c.offset(r as isize * crs + j as isize * ccs);
                let mut v = t[r * NR + j];
                if !bias.is_null() {
                    v += *bias.add(j);
                }
                if !overwrite {
                    v += *p;
                }
                *p = if relu { v.max(0.0) } else { v };
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const R: usize>(_kc: usize, _a: *const f32, _b: *const f32, _t: Tile) {
    unreachable!("sgemm::available() is false off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(len: usize, seed: &mut u64) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// `C (+)= op(A) op(B)` ([`Out`]) on a pool of `threads`, A and B transposed or not, C a block inside a
    /// wider matrix (row stride `ldc`), with a tile-depth function when given.
    #[allow(clippy::too_many_arguments)]
    fn product(
        (m, k, n): (usize, usize, usize),
        (a, ta): (&[f32], bool),
        (b, tb): (&[f32], bool),
        c: &mut [f32],
        ldc: usize,
        out: Out,
        threads: usize,
        depth: Option<&Depth<'_>>,
    ) {
        let op = |p: usize, t: bool, cols: usize| Operand {
            ptr: p as *const f32,
            rs: if t { 1 } else { cols as isize },
            cs: if t { cols as isize } else { 1 },
        };
        let (ap, bp) = (a.as_ptr() as usize, b.as_ptr() as usize);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let cp = c.as_mut_ptr() as usize;
        // SAFETY: the operands' pointers and strides describe the test's own buffers, which outlive the call
        pool.install(|| unsafe {
            // stored shapes: op(A) m x k is A k x m when transposed
            sgemm(
                m,
                n,
                k,
                op(ap, ta, if ta { m } else { k }),
                op(bp, tb, if tb { k } else { n }),
                cp as *mut f32,
                ldc as isize,
                1,
                out,
                threads,
                depth,
            )
        });
    }

    /// [`product`] through [`sgemm_packed`]: B (transposed when `tb`) packed beforehand, A as stored.
    #[allow(clippy::too_many_arguments)]
    fn packed_product(
        (m, k, n): (usize, usize, usize),
        a: &[f32],
        (b, tb): (&[f32], bool),
        c: &mut [f32],
        ldc: usize,
        out: Out,
        threads: usize,
        depth: Option<&Depth<'_>>,
    ) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        // SAFETY: the operands' pointers and strides describe the test's own buffers, which outlive the call
        pool.install(|| unsafe {
            let bo = Operand {
                ptr: b.as_ptr(),
                rs: if tb { 1 } else { n as isize },
                cs: if tb { k as isize } else { 1 },
            };
            let packed = PackedB::new(k, n, bo, threads);
            let ao = Operand {
                ptr: a.as_ptr(),
                rs: k as isize,
                cs: 1,
            };
            let c = c.as_mut_ptr();
            sgemm_packed(m, ao, &packed, c, ldc as isize, 1, out, threads, depth);
        });
    }

    /// Against a naive f64 product: every transpose, edges of the micro-tile in both directions, a depth over
    /// two blocks, accumulate and overwrite, a C inside a wider matrix (its other columns untouched); 1 and 3
    /// threads give the same bits.
    #[test]
    fn matches_naive_and_is_independent_of_threads() {
        if !available() {
            return;
        }
        let mut seed = 7;
        // (the last one's B is too big for per-thread copies: shared packing)
        for &(m, k, n) in &[
            (13, 9, 17),
            (50, 300, 70),
            (6, 256, 16),
            (97, 513, 33),
            (40, 300, 300),
            // a last row panel of every height (13, 50, 97: 1 or 2 rows; 45: 3; 40: 4; 53: 5)
            (45, 40, 20),
            (53, 70, 40),
            // few rows and a big B: B packed panel by panel as the tiles go, over a ragged last column panel and
            // depth block
            (40, 600, 450),
        ] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = rand(m * k, &mut seed);
                let b = rand(k * n, &mut seed);
                let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
                let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
                let ldc = n + 3;
                let c0 = rand(m * ldc, &mut seed);
                for accumulate in [false, true] {
                    let mut results = Vec::new();
                    for threads in [1, 3] {
                        let mut c = c0.clone();
                        product(
                            (m, k, n),
                            (&a, ta),
                            (&b, tb),
                            &mut c,
                            ldc,
                            Out::plain(accumulate),
                            threads,
                            None,
                        );
                        results.push(c);
                    }
                    assert_eq!(results[0], results[1], "{m}x{k}x{n}: thread counts differ");
                    let c = &results[0];
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j] as f64;
                            let base = c0[i * ldc + j] as f64;
                            if j >= n {
                                assert_eq!(got, base, "column {j} outside C was written");
                                continue;
                            }
                            let dot: f64 = (0..k).map(|p| at(i, p) as f64 * bt(p, j) as f64).sum();
                            let want = dot + if accumulate { base } else { 0.0 };
                            assert!(
                                (got - want).abs() < 1e-5 * (k as f64).sqrt(),
                                "{m}x{k}x{n} ta={ta} tb={tb} acc={accumulate} ({i},{j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A prepacked B gives [`sgemm`]'s bits: row counts over one and several slabs, edges of the tile, a depth
    /// over several blocks, C inside a wider matrix, accumulate and overwrite, with and without depth ranges,
    /// on 1 and 3 threads.
    #[test]
    fn prepacked_b_gives_the_same_bits() {
        if !available() {
            return;
        }
        let mut seed = 11;
        let range = |i: usize, j: usize| -> (usize, usize) {
            match (i + 2 * j) % 3 {
                0 => (0, 0),
                1 => (40, 530),
                _ => (260, 600),
            }
        };
        for (m, k, n) in [(13, 9, 17), (300, 600, 70), (40, 256, 33)] {
            let a = rand(m * k, &mut seed);
            let b = rand(k * n, &mut seed);
            let ldc = n + 5;
            let c0 = rand(m * ldc, &mut seed);
            for depth in [None, Some(&range as &Depth<'_>)] {
                for accumulate in [false, true] {
                    for threads in [1, 2, 3] {
                        let mut want = c0.clone();
                        product(
                            (m, k, n),
                            (&a, false),
                            (&b, true),
                            &mut want,
                            ldc,
                            Out::plain(accumulate),
                            threads,
                            depth,
                        );
                        let mut got = c0.clone();
                        packed_product(
                            (m, k, n),
                            &a,
                            (&b, true),
                            &mut got,
                            ldc,
                            Out::plain(accumulate),
                            threads,
                            depth,
                        );
                        assert!(
                            got == want,
                            "{m}x{k}x{n} depth {} acc {accumulate} threads {threads}",
                            depth.is_some()
                        );
                    }
                }
            }
        }
    }

    /// A matrix packed part by part ([`PackWriter`]: by columns, or by depth steps for a source with contiguous
    /// columns; parts written from several threads at once, in any order) is the matrix packed whole: ragged last
    /// panels and depth blocks, a source with either stride contiguous.
    #[test]
    fn packing_part_by_part_equals_packing_whole() {
        if !available() {
            return;
        }
        let mut seed = 5;
        for (k, n) in [(600, 70), (37, 300), (256, 16), (20, 33)] {
            let src = rand(k * n, &mut seed);
            let row_major = Operand {
                ptr: src.as_ptr(),
                rs: n as isize,
                cs: 1,
            };
            let col_major = Operand {
                ptr: src.as_ptr(),
                rs: 1,
                cs: k as isize,
            };
            for b in [row_major, col_major] {
                // SAFETY: the CPU runs the kernel (checked above) and `b` addresses `k x n` elements of `src`
                let whole = unsafe { PackedB::new(k, n, b, 1) };
                // (the packed floats only: the slack after them depends on the buffer's alignment)
                let len = n.div_ceil(NR) * NR * k;
                let of = |p: &PackedB| p.buf[p.start..p.start + len].to_vec();
                let want = of(&whole);
                let parts = |len: usize| -> Vec<(usize, usize)> {
                    let cuts: Vec<usize> = (0..len.div_ceil(PACK_PART))
                        .step_by(3)
                        .map(|p| p * PACK_PART)
                        .chain([len])
                        .collect();
                    cuts.windows(2).rev().map(|w| (w[0], w[1])).collect()
                };
                // (the source by address: an `Operand` is not `Sync`)
                let (at, rs, cs) = (b.ptr as usize, b.rs, b.cs);
                let b = move || Operand {
                    ptr: at as *const f32,
                    rs,
                    cs,
                };
                // the matrix packed by parts of `len` columns or depth steps, written in parallel
                let by = |len: usize, write: &(dyn Fn(&PackWriter, usize, usize) + Sync)| {
                    let mut packed = PackedB::zeroed(k, n);
                    let w = packed.writer();
                    parts(len)
                        .into_par_iter()
                        .for_each(|(lo, hi)| write(&w, lo, hi));
                    of(&packed)
                };
                // SAFETY: the parts are disjoint, nothing reads the matrix meanwhile
                let lanes = by(n, &|w, q0, q1| unsafe { w.lanes(b(), q0, q1) });
                assert!(lanes == want, "{k}x{n} by columns, rs {rs}");
                if cs == 1 {
                    // SAFETY: as for the lanes, above
                    let steps = by(k, &|w, p0, p1| unsafe { w.steps(b(), p0, p1) });
                    assert!(steps == want, "{k}x{n} by depth steps");
                }
            }
        }
    }

    /// With per-tile depth ranges each tile sums over its range only, and an empty range leaves the tile as it
    /// was (accumulate) or zero (overwrite), also when the range starts past the first depth block.
    #[test]
    fn depth_ranges_restrict_each_tile() {
        if !available() {
            return;
        }
        let mut seed = 3;
        // per-thread copies of B, then shared packing
        for (m, k, n) in [(40, 600, 50), (40, 600, 200)] {
            depth_case(m, k, n, false, &mut seed);
        }
        // rows of very different work (a triangular mask's weight gradient): per-thread slabs cut by work, one
        // of them a single panel
        depth_case(60, 600, 50, true, &mut seed);
    }

    fn depth_case(m: usize, k: usize, n: usize, skewed: bool, seed: &mut u64) {
        let a = rand(m * k, seed);
        let b = rand(k * n, seed);
        let range = |i: usize, j: usize| match (skewed, (i + j) % 4) {
            (true, _) => (0, if i + 1 == m.div_ceil(MR) { k } else { i * 8 }),
            (_, 0) => (0, k),
            (_, 1) => (300, 590),
            (_, 2) => (0, 0),
            _ => (17, 260),
        };
        let c0 = rand(m * n, seed);
        for accumulate in [false, true] {
            for threads in [1, 2] {
                let mut c = c0.clone();
                product(
                    (m, k, n),
                    (&a, false),
                    (&b, false),
                    &mut c,
                    n,
                    Out::plain(accumulate),
                    threads,
                    Some(&range),
                );
                for i in 0..m {
                    for j in 0..n {
                        let (lo, hi) = range(i / MR, j / NR);
                        let dot: f64 = (lo..hi)
                            .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                            .sum();
                        let want = dot
                            + if accumulate {
                                c0[i * n + j] as f64
                            } else {
                                0.0
                            };
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "({i},{j}) range {lo}..{hi}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The epilogue (bias per column, ReLU) against a plain product finished by hand: accumulate and
    /// overwrite, edge tiles, a depth over several blocks, per-tile depth ranges with empty ones (also where the
    /// only range starts past the first block), C inside a wider matrix, shared and packed-beforehand B, 1 and 3
    /// threads. An overwriting product writes every element of its block: C starts as NaN there, and the
    /// columns outside the block keep their NaN.
    #[test]
    fn epilogue_adds_the_bias_and_clamps() {
        if !available() {
            return;
        }
        let mut seed = 11;
        for (m, k, n) in [(13, 9, 17), (50, 600, 70), (40, 600, 300)] {
            let a = rand(m * k, &mut seed);
            let b = rand(k * n, &mut seed);
            let bias = rand(n, &mut seed);
            let ldc = n + 5;
            let c0 = rand(m * ldc, &mut seed);
            let range = |i: usize, j: usize| match (i + 2 * j) % 4 {
                0 => (0, k),
                1 => (300.min(k), k),
                2 => (0, 0),
                _ => (3, k / 2),
            };
            for ranged in [false, true] {
                let depth = ranged.then_some(&range as &Depth<'_>);
                for accumulate in [false, true] {
                    for (with_bias, relu) in [(true, false), (false, true), (true, true)] {
                        for threads in [1, 3] {
                            let start = match accumulate {
                                true => c0.clone(),
                                false => vec![f32::NAN; m * ldc],
                            };
                            let out = Out {
                                accumulate,
                                bias: if with_bias {
                                    bias.as_ptr()
                                } else {
                                    std::ptr::null()
                                },
                                relu,
                            };
                            let mut got = start.clone();
                            product(
                                (m, k, n),
                                (&a, false),
                                (&b, false),
                                &mut got,
                                ldc,
                                out,
                                threads,
                                depth,
                            );
                            // the same through B packed beforehand
                            let mut packed_got = start.clone();
                            packed_product(
                                (m, k, n),
                                &a,
                                (&b, false),
                                &mut packed_got,
                                ldc,
                                out,
                                threads,
                                depth,
                            );
                            for i in 0..m {
                                for j in 0..ldc {
                                    let what = format!(
                                        "{m}x{k}x{n} ({i},{j}) ranged {ranged} acc {accumulate} bias {with_bias} \
                                         relu {relu} threads {threads}"
                                    );
                                    if j >= n {
                                        assert_eq!(
                                            got[i * ldc + j].to_bits(),
                                            start[i * ldc + j].to_bits(),
                                            "{what}"
                                        );
                                        assert_eq!(
                                            packed_got[i * ldc + j].to_bits(),
                                            start[i * ldc + j].to_bits()
                                        );
                                        continue;
                                    }
                                    let (lo, hi) = if ranged {
                                        range(i / MR, j / NR)
                                    } else {
                                        (0, k)
                                    };
                                    let mut want: f64 = (lo..hi)
                                        .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                                        .sum();
                                    if accumulate {
                                        want += c0[i * ldc + j] as f64;
                                    }
                                    if with_bias {
                                        want += bias[j] as f64;
                                    }
                                    if relu {
                                        want = want.max(0.0);
                                    }
                                    for v in [got[i * ldc + j], packed_got[i * ldc + j]] {
                                        assert!(
                                            (v as f64 - want).abs() < 1e-4,
                                            "{what}: {v} vs {want}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
