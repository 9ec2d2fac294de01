//! The numeric core: a row-major matrix type generic over `f32`/`f64`, the kernels that operate on it
//! (behind the narrow interface in [`kernels`]), and the seeded random number generator.
//!
//! Batches of vectors are `(batch, features)` matrices. Images (later) are `(batch, C*H*W)` matrices whose
//! transforms know their `(C, H, W)` layout, so the same type carries NCHW tensors without a second tensor type.

pub mod conv;
mod conv_x86;
pub mod kernels;
pub mod pool;
pub(crate) mod sgemm;
pub mod vmath;

use num_traits::{Float as NumFloat, FromPrimitive, ToPrimitive};
use rand::SeedableRng;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// Floating-point element type of the engine: `f32` for training, `f64` for gradient and Jacobian tests.
pub trait Float:
    NumFloat
    + FromPrimitive
    + ToPrimitive
    + Default
    + Debug
    + Send
    + Sync
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + 'static
{
    /// Name used in the weights file (`"f32"` / `"f64"`).
    const DTYPE: &'static str;
    fn c(v: f64) -> Self;
    fn f64(self) -> f64;
    /// Little-endian bytes, for the weights file.
    fn to_le(v: &[Self]) -> Vec<u8>;
    fn from_le(b: &[u8]) -> Vec<Self>;
}

impl Float for f32 {
    const DTYPE: &'static str = "f32";
    #[inline(always)]
    fn c(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    fn to_le(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_le(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

impl Float for f64 {
    const DTYPE: &'static str = "f64";
    #[inline(always)]
    fn c(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    fn to_le(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_le(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }
}

/// Row-major `rows x cols` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat<F> {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<F>,
}

impl<F: Float> Mat<F> {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![F::zero(); rows * cols],
        }
    }
    pub fn from_vec(rows: usize, cols: usize, data: Vec<F>) -> Self {
        assert_eq!(data.len(), rows * cols, "Mat::from_vec: size mismatch");
        Mat { rows, cols, data }
    }
    pub fn from_f64(rows: usize, cols: usize, data: &[f64]) -> Self {
        Self::from_vec(rows, cols, data.iter().map(|&v| F::c(v)).collect())
    }
    pub fn to_f64(&self) -> Vec<f64> {
        self.data.iter().map(|v| v.f64()).collect()
    }
    #[inline]
    pub fn row(&self, i: usize) -> &[F] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
    #[inline]
    pub fn row_mut(&mut self, i: usize) -> &mut [F] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> F {
        self.data[i * self.cols + j]
    }
    /// Gather columns `idx` into a new `rows x idx.len()` matrix.
    pub fn gather_cols(&self, idx: &[usize]) -> Mat<F> {
        let mut out = Mat::zeros(self.rows, idx.len());
        for r in 0..self.rows {
            let src = self.row(r);
            let dst = out.row_mut(r);
            for (d, &j) in dst.iter_mut().zip(idx) {
                *d = src[j];
            }
        }
        out
    }
    /// Write the columns of `src` into columns `idx` of `self`.
    pub fn scatter_cols(&mut self, idx: &[usize], src: &Mat<F>) {
        assert_eq!(src.cols, idx.len());
        assert_eq!(src.rows, self.rows);
        for r in 0..self.rows {
            let s = src.row(r);
            let cols = self.cols;
            let d = &mut self.data[r * cols..(r + 1) * cols];
            for (&v, &j) in s.iter().zip(idx) {
                d[j] = v;
            }
        }
    }
    /// `[self | other]` column-wise concatenation.
    pub fn hcat(&self, other: &Mat<F>) -> Mat<F> {
        assert_eq!(self.rows, other.rows);
        let cols = self.cols + other.cols;
        let mut out = Mat::zeros(self.rows, cols);
        for r in 0..self.rows {
            let d = out.row_mut(r);
            d[..self.cols].copy_from_slice(self.row(r));
            d[self.cols..].copy_from_slice(other.row(r));
        }
        out
    }
    /// Rows `idx` of `self`.
    pub fn take_rows(&self, idx: &[usize]) -> Mat<F> {
        let mut out = Mat::zeros(idx.len(), self.cols);
        for (k, &i) in idx.iter().enumerate() {
            out.row_mut(k).copy_from_slice(self.row(i));
        }
        out
    }
    /// Rows `start..end`.
    pub fn slice_rows(&self, start: usize, end: usize) -> Mat<F> {
        Mat::from_vec(
            end - start,
            self.cols,
            self.data[start * self.cols..end * self.cols].to_vec(),
        )
    }
    /// Index of the first non-finite entry, if any.
    pub fn first_non_finite(&self) -> Option<(usize, usize)> {
        // whole blocks checked without an early exit (so the check vectorises), then the first bad block searched
        const BLOCK: usize = 256;
        let bad = self
            .data
            .chunks(BLOCK)
            .position(|c| !c.iter().fold(true, |ok, v| ok & v.is_finite()))?;
        let p = bad * BLOCK
            + self.data[bad * BLOCK..]
                .iter()
                .position(|v| !v.is_finite())
                .expect("the block holds one");
        Some((p / self.cols.max(1), p % self.cols.max(1)))
    }
}

/// The seeded random number generator used everywhere: same seed, same stream, on every platform.
pub type Rng = rand_chacha::ChaCha8Rng;

/// Whether `F` is `f32` (the vectorised kernels' type).
pub fn is_f32<F: Float>() -> bool {
    std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>()
}

/// `v` as `f32` when `F` is `f32`.
pub fn as_f32<F: Float>(v: &[F]) -> Option<&[f32]> {
    // SAFETY: F is f32 (same type, same layout)
    is_f32::<F>().then(|| unsafe { std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len()) })
}

/// `v` as `f32` when `F` is `f32`.
pub fn as_f32_mut<F: Float>(v: &mut [F]) -> Option<&mut [f32]> {
    // SAFETY: F is f32 (same type, same layout)
    is_f32::<F>()
        .then(|| unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut f32, v.len()) })
}

pub fn rng(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// Memory the system can still give this process, in bytes: the least of the kernel's `MemAvailable`, what
/// the process's control group may still use (cgroup v2 `memory.max` less `memory.current`) and what its
/// address-space limit (`ulimit -v`) leaves; `None` where none of them can be read (not Linux). What size checks
/// compare an allocation's estimate with before they start.
pub fn memory_available() -> Option<u64> {
    fn kb_field(text: &str, key: &str) -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb.saturating_mul(1024))
    }
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut least: Option<u64> = read("/proc/meminfo").and_then(|t| kb_field(&t, "MemAvailable:"));
    let mut take = |v: Option<u64>| {
        if let Some(v) = v {
            least = Some(least.map_or(v, |l| l.min(v)));
        }
    };
    let num = |s: Option<String>| s.and_then(|t| t.trim().parse::<u64>().ok());
    if let Some(max) = num(read("/sys/fs/cgroup/memory.max")) {
        let used = num(read("/sys/fs/cgroup/memory.current")).unwrap_or(0);
        take(Some(max.saturating_sub(used)));
    }
    #[cfg(target_os = "linux")]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0;
        if ok && lim.rlim_cur != libc::RLIM_INFINITY {
            let size = read("/proc/self/status").and_then(|t| kb_field(&t, "VmSize:"));
            take(Some(lim.rlim_cur.saturating_sub(size.unwrap_or(0))));
        }
    }
    least
}

/// `Err(message)` when `bytes` cannot fit in the memory available (see [`memory_available`]).
pub fn check_fits(bytes: u128, what: &str) -> Result<(), String> {
    match memory_available() {
        Some(avail) if bytes > u128::from(avail) => Err(format!(
            "{what} needs about {:.1} GB, more than the {:.1} GB of memory available",
            bytes as f64 / 1e9,
            avail as f64 / 1e9
        )),
        _ => Ok(()),
    }
}

/// Keep freed memory in the process instead of returning it to the kernel. Training allocates and frees the
/// same large activation buffers every step; with glibc's defaults each one is a fresh `mmap` whose pages are
/// faulted in and zeroed by the kernel again, a cost paid on every step. Call once at start-up.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// The global allocator of programs built on nflow (the CLI installs it: `#[global_allocator] static A: HugePages =
/// HugePages;`): the system allocator, except for the big, lasting blocks made inside [`lasting`] (a layer's
/// weights and gradients, Adam's moments, the packed weights), which get a mapping of their own on 2 MB
/// transparent huge pages (Linux, where THP is in `madvise` mode as on most distributions; elsewhere, or with THP
/// off, plain pages). Why: a training step streams every parameter, its gradient, Adam's moments and the packed
/// weights through memory (w3: 13.5M parameters, about 300 MB a step), each 4 KB page a TLB miss; huge pages
/// cover the same memory with far fewer TLB entries, which shortens mostly the optimiser's streaming pass
/// (docs/results/speed.md, tenth session). Blocks from the system allocator's heap could not be relied on for
/// it: parts of them had been used before, on small pages.
pub struct HugePages;

/// Size of a transparent huge page on x86-64 (2 MB): the alignment, and the least size, of a lasting block.
pub const HUGE_PAGE: usize = 1 << 21;

thread_local! {
    /// Whether this thread is inside [`lasting`].
    static LASTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `f`, with the blocks of [`HUGE_PAGE`] or more that it allocates on this thread made on huge pages when the
/// program runs on [`HugePages`] (otherwise as usual): for buffers that live as long as a model and are streamed
/// through every step.
pub fn lasting<R>(f: impl FnOnce() -> R) -> R {
    // the thread's setting restored however `f` ends (a panic unwinding through it included)
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0;
            let _ = LASTING.try_with(|l| l.set(before));
        }
    }
    let _restore = Restore(LASTING.with(|l| l.replace(true)));
    f()
}

/// The start of every block [`HugePages`] has mapped and not yet unmapped (0: a free slot); a fixed table, so that
/// the allocator needs no allocation of its own. When it is full, blocks come from the system allocator.
static MAPPED: [std::sync::atomic::AtomicUsize; 4096] =
    [const { std::sync::atomic::AtomicUsize::new(0) }; 4096];

impl HugePages {
    /// Whether a block of `l` is made on huge pages: big, inside [`lasting`], on Linux.
    fn wanted(l: std::alloc::Layout) -> bool {
        cfg!(target_os = "linux")
            && l.size() >= HUGE_PAGE
            && l.align() <= HUGE_PAGE
            && LASTING.try_with(|v| v.get()).unwrap_or(false)
    }

    /// A new zeroed mapping of `size` bytes (rounded up to huge pages), starting on a huge page, advised for huge
    /// pages and recorded in [`MAPPED`]; null when the system refuses or the table is full.
    #[cfg(target_os = "linux")]
    fn map(size: usize) -> *mut u8 {
        use std::sync::atomic::Ordering;
        let len = size.next_multiple_of(HUGE_PAGE);
        let Some(slot) = MAPPED.iter().find(|s| {
            s.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        }) else {
            return std::ptr::null_mut();
        };
        // SAFETY: an anonymous private mapping of fresh memory; the parts before the first huge-page boundary and
        // after the block's end are unmapped again, and the advice only changes how the kernel backs the pages
        unsafe {
            let raw = libc::mmap(
                std::ptr::null_mut(),
                len + HUGE_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if raw == libc::MAP_FAILED {
                slot.store(0, Ordering::Release);
                return std::ptr::null_mut();
            }
            let start = raw as usize;
            let at = start.next_multiple_of(HUGE_PAGE);
            if at > start {
                libc::munmap(raw, at - start);
            }
            let end = start + len + HUGE_PAGE;
            if end > at + len {
                libc::munmap((at + len) as *mut libc::c_void, end - at - len);
            }
            libc::madvise(at as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            slot.store(at, Ordering::Release);
            at as *mut u8
        }
    }

    /// The slot of [`MAPPED`] that records the block at `p` of `size` bytes, if [`HugePages::map`] made it.
    fn mapped(p: *mut u8, size: usize) -> Option<&'static std::sync::atomic::AtomicUsize> {
        if size < HUGE_PAGE || p.is_null() || !cfg!(target_os = "linux") {
            return None;
        }
        MAPPED
            .iter()
            .find(|s| s.load(std::sync::atomic::Ordering::Acquire) == p as usize)
    }

    /// Unmap the block at `p` (`size` bytes) if [`HugePages::map`] made it; whether it did.
    fn unmap(p: *mut u8, size: usize) -> bool {
        let Some(slot) = Self::mapped(p, size) else {
            return false;
        };
        #[cfg(target_os = "linux")]
        // SAFETY: the block was mapped by `map` with this size rounded up, and its owner is done with it
        unsafe {
            libc::munmap(p as *mut libc::c_void, size.next_multiple_of(HUGE_PAGE));
        }
        slot.store(0, std::sync::atomic::Ordering::Release);
        true
    }

    /// A block for `l`: mapped when [`HugePages::wanted`] (zeroed), else from the system allocator.
    unsafe fn block(l: std::alloc::Layout, zeroed: bool) -> *mut u8 {
        use std::alloc::GlobalAlloc as _;
        #[cfg(target_os = "linux")]
        if Self::wanted(l) {
            let p = Self::map(l.size());
            if !p.is_null() {
                return p;
            }
        }
        match zeroed {
            true => std::alloc::System.alloc_zeroed(l),
            false => std::alloc::System.alloc(l),
        }
    }
}

// SAFETY: a block is either mapped by `map` (recorded in MAPPED until `unmap`) or the system allocator's, and goes
// back the same way; mapped blocks are aligned to huge pages, at least as much as any layout that gets one asks
unsafe impl std::alloc::GlobalAlloc for HugePages {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        Self::block(l, false)
    }

    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        // (a fresh mapping is zero, and its pages are faulted in only when written: as huge pages)
        Self::block(l, true)
    }

    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        if !Self::unmap(p, l.size()) {
            std::alloc::System.dealloc(p, l)
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, size: usize) -> *mut u8 {
        let new = std::alloc::Layout::from_size_align_unchecked(size, l.align());
        if Self::mapped(p, l.size()).is_none() && !Self::wanted(new) {
            return std::alloc::System.realloc(p, l, size);
        }
        let q = Self::block(new, false);
        if !q.is_null() {
            std::ptr::copy_nonoverlapping(p, q, l.size().min(size));
            self.dealloc(p, l);
        }
        q
    }
}

/// Values per separately seeded block of a large [`randn`] draw: a fixed size, so the same values on any
/// number of threads.
const RANDN_BLOCK: usize = 1 << 14;

/// Standard normal draws. A large draw (a sampling batch of image-sized noise) takes one seed from `rng` and
/// fills blocks of [`RANDN_BLOCK`] values from their own ChaCha streams of that seed, on the pool.
pub fn randn<F: Float>(rng: &mut Rng, rows: usize, cols: usize) -> Mat<F> {
    use rand_distr::{Distribution, StandardNormal};
    let fill = |r: &mut Rng, out: &mut [F]| {
        for v in out {
            let z: f64 = StandardNormal.sample(r);
            *v = F::c(z);
        }
    };
    let mut data = vec![F::zero(); rows * cols];
    if data.len() < 2 * RANDN_BLOCK {
        fill(rng, &mut data);
    } else {
        use rand::Rng as _;
        use rayon::prelude::*;
        let seed: u64 = rng.gen();
        data.par_chunks_mut(RANDN_BLOCK)
            .enumerate()
            .for_each(|(i, block)| {
                let mut r = Rng::seed_from_u64(seed);
                r.set_stream(i as u64);
                fill(&mut r, block);
            });
    }
    Mat::from_vec(rows, cols, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`HugePages`]: outside [`lasting`] the system allocator's blocks; inside, big blocks mapped on a huge-page
    /// boundary, zeroed and writable, kept when grown, copied out when shrunk below the size that gets a mapping,
    /// and unmapped when freed.
    #[test]
    fn huge_page_blocks() {
        use std::alloc::{GlobalAlloc, Layout};
        let a = HugePages;
        let mapped = |p: *mut u8| HugePages::mapped(p, HUGE_PAGE).is_some();
        let big = Layout::array::<f32>(HUGE_PAGE / 2).unwrap();
        // SAFETY: every block is used within its layout's size and freed with the layout it has then
        unsafe {
            let p = a.alloc_zeroed(big);
            assert!(
                !p.is_null() && !mapped(p),
                "a block outside `lasting` was mapped"
            );
            a.dealloc(p, big);
            let p = lasting(|| a.alloc_zeroed(big));
            assert!(!p.is_null());
            if cfg!(target_os = "linux") {
                assert!(mapped(p) && (p as usize).is_multiple_of(HUGE_PAGE));
            }
            let v = std::slice::from_raw_parts_mut(p as *mut f32, HUGE_PAGE / 2);
            assert!(v.iter().all(|&x| x == 0.0));
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            let q = lasting(|| a.realloc(p, big, 2 * big.size()));
            assert!(!mapped(p) || p == q, "the old block still recorded");
            let w = std::slice::from_raw_parts(q as *const f32, HUGE_PAGE / 2);
            assert!(w.iter().enumerate().all(|(i, &x)| x == i as f32), "grown");
            let grown = Layout::array::<f32>(HUGE_PAGE).unwrap();
            let r = a.realloc(q, grown, 4000);
            assert!(!mapped(r) && !mapped(q));
            let w = std::slice::from_raw_parts(r as *const f32, 1000);
            assert!(w.iter().enumerate().all(|(i, &x)| x == i as f32), "shrunk");
            a.dealloc(r, Layout::array::<f32>(1000).unwrap());
        }
    }

    /// A large draw gives the same values on one thread and on two, standard normal moments over the whole
    /// draw, and blocks that differ from each other (each from its own stream); the caller's stream moves on.
    #[test]
    fn large_randn_is_the_same_on_any_pool() {
        let draw = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut r = rng(7);
                let a: Mat<f64> = randn(&mut r, 5, RANDN_BLOCK);
                let b: Mat<f64> = randn(&mut r, 5, RANDN_BLOCK);
                (a, b)
            })
        };
        let ((a1, b1), (a2, _)) = (draw(1), draw(2));
        assert_eq!(a1.data, a2.data);
        assert_ne!(a1.data, b1.data, "two draws from one stream repeat");
        let n = a1.data.len() as f64;
        let mean = a1.data.iter().sum::<f64>() / n;
        let var = a1.data.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        // 81920 draws: the standard error of the mean is 0.0035, of the variance 0.005
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "mean {mean} var {var}"
        );
        let blocks: Vec<&[f64]> = a1.data.chunks(RANDN_BLOCK).collect();
        for i in 1..blocks.len() {
            assert_ne!(blocks[0][..8], blocks[i][..8], "block {i} repeats block 0");
        }
    }

    /// The first NaN / Inf in row-major order, wherever it sits relative to the checked blocks; none when all
    /// are finite.
    #[test]
    fn first_non_finite_finds_the_first() {
        let (rows, cols) = (9, 70);
        let clean = Mat::from_vec(rows, cols, (0..rows * cols).map(|i| i as f32).collect());
        assert_eq!(clean.first_non_finite(), None);
        for at in [0, 255, 256, 300, rows * cols - 1] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut m = clean.clone();
                m.data[at] = bad;
                // a later one in the same or a later block does not matter
                m.data[(at + 1).min(rows * cols - 1)] = f32::NAN;
                m.data[rows * cols - 1] = f32::INFINITY;
                assert_eq!(
                    m.first_non_finite(),
                    Some((at / cols, at % cols)),
                    "at {at}"
                );
            }
        }
    }
}
