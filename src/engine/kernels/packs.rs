//! Weights packed once in the f32 kernel's layout: [`PreparedWeight`] (inference with fixed weights),
//! [`WeightPacks`] (a trained weight packed for its forward and input-gradient products, repacked by the
//! optimiser through [`PacksWriter`]), and the products on them ([`gemm_prepared`], [`gemm_prepared_new`]).

use super::dispatch::{own_kernel, threads_for, written, Epilogue};
use crate::engine::{sgemm, Float};

/// A weight matrix `W` (`out x inp`, row-major) prepared once for many products `X W^T` with the same `W`
/// (inference with fixed weights): `W^T` packed in the f32 kernel's layout, so that each product packs only `X`
/// and runs as one parallel region ([`sgemm::sgemm_packed`]; the same bits as [`gemm`]).
pub struct PreparedWeight(sgemm::PackedB);

/// Whether `rows x inp` by `(out x inp)^T` products of `F` run on the kernel that [`PreparedWeight`] serves
/// (f32, a CPU with AVX2 and FMA, a shape it suits).
pub fn preparable<F: Float>(rows: usize, inp: usize, out: usize) -> bool {
    own_kernel::<F>(rows, inp, out)
}

/// [`PreparedWeight`] of `w` (`out x inp`), or `None` where [`preparable`] says no for `rows`-row inputs.
pub fn prepare_weight<F: Float>(
    w: &[F],
    out: usize,
    inp: usize,
    rows: usize,
) -> Option<PreparedWeight> {
    assert_eq!(w.len(), out * inp, "prepare_weight: weight size");
    if !preparable::<F>(rows, inp, out) {
        return None;
    }
    let b = sgemm::Operand {
        ptr: w.as_ptr() as *const f32,
        rs: 1,
        cs: inp as isize,
    };
    let threads = threads_for(rows * inp * out);
    // SAFETY: F is f32 and the CPU runs the kernel (`preparable`); `b` addresses the `out x inp` elements of `w`
    // as its transpose
    Some(PreparedWeight(unsafe {
        sgemm::PackedB::new(inp, out, b, threads)
    }))
}

/// A trained weight `W` (`out x inp`) packed for both products its layer runs on the kernel, `x W^T` (forward)
/// and `dy W` (input gradient), and kept in step with the weight by the optimiser, which repacks rows of `W` as
/// it updates them ([`PacksWriter`]) while they are in cache. Packing the weight inside each product read it
/// from memory in a cache-hostile order (a line from every row per depth step), slower than the same product on a
/// weight packed beforehand (docs/results/speed.md, tenth session). Costs two more copies of the weight; the products
/// give the same bits either way.
pub struct WeightPacks {
    fwd: PreparedWeight,
    bwd: PreparedWeight,
}

/// Weights of at most this many floats (1 MB) are packed by each product: they stay in cache, and the packs
/// would cost the optimiser more than they save (MAF's 512 x 512 layers: docs/results/speed.md, tenth session).
const PACKS_MIN: usize = 1 << 18;

impl WeightPacks {
    /// Whether a layer with an `out x inp` weight of `F`, run on `rows`-row batches, gains from [`WeightPacks`]:
    /// both products on the kernel, and a weight too big for the caches.
    pub fn suit<F: Float>(rows: usize, out: usize, inp: usize) -> bool {
        out * inp > PACKS_MIN && preparable::<F>(rows, inp, out) && preparable::<F>(rows, out, inp)
    }

    /// Room for the packed forms of an `out x inp` weight, all to be written ([`WeightPacks::writer`]).
    /// (On huge pages where the program allows: they live as long as the weight and are streamed every step.)
    pub fn zeroed(out: usize, inp: usize) -> Self {
        crate::engine::lasting(|| WeightPacks {
            fwd: PreparedWeight(sgemm::PackedB::zeroed(inp, out)),
            bwd: PreparedWeight(sgemm::PackedB::zeroed(out, inp)),
        })
    }

    /// `(out, inp)`: the weight's shape.
    pub fn dims(&self) -> (usize, usize) {
        let (inp, out) = self.fwd.0.dims();
        (out, inp)
    }

    /// `W` packed for `x W^T` ([`gemm_prepared`]).
    pub fn forward(&self) -> &PreparedWeight {
        &self.fwd
    }

    /// `W^T` packed for `dy W = dy (W^T)^T` ([`gemm_prepared`] with `W^T`, `inp x out`, as its weight).
    pub fn input_grad(&self) -> &PreparedWeight {
        &self.bwd
    }

    /// A handle for repacking rows of the weight ([`PacksWriter::rows`]), valid while `self` is neither moved
    /// nor dropped, and nothing reads it meanwhile.
    pub fn writer(&mut self) -> PacksWriter {
        let (out, inp) = self.dims();
        PacksWriter {
            fwd: self.fwd.0.writer(),
            bwd: self.bwd.0.writer(),
            out,
            inp,
        }
    }
}

/// Repacks rows of a weight into its [`WeightPacks`], from several threads at once (disjoint rows).
#[derive(Clone, Copy)]
pub struct PacksWriter {
    fwd: sgemm::PackWriter,
    bwd: sgemm::PackWriter,
    out: usize,
    inp: usize,
}

impl PacksWriter {
    /// Rows are repacked in groups of this many (a part starts at a multiple of it).
    pub const ROWS: usize = sgemm::PACK_PART;

    /// Values per row of the weight (`inp`).
    pub fn row_len(&self) -> usize {
        self.inp
    }

    /// Repack rows `r0..r1` of the weight from `rows`, which holds exactly those rows (`(r1 - r0) x inp`
    /// values); `r0` a multiple of [`PacksWriter::ROWS`], `r1` too or `out`.
    ///
    /// # Safety
    /// No other thread may repack the same rows or read the packs meanwhile.
    pub unsafe fn rows<F: Float>(&self, rows: &[F], r0: usize, r1: usize) {
        let (out, inp) = (self.out, self.inp);
        assert!(
            std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>()
                && r0.is_multiple_of(Self::ROWS)
                && (r1.is_multiple_of(Self::ROWS) || r1 == out)
                && r0 <= r1
                && r1 <= out
                && rows.len() == (r1 - r0) * inp,
            "PacksWriter::rows: parts"
        );
        // the sources address W from its row 0 (only rows r0..r1 are read): `W^T` for the forward (columns
        // r0..r1), `W` for the input gradient (depth steps r0..r1)
        let w = (rows.as_ptr() as *const f32).wrapping_sub(r0 * inp);
        let wt = sgemm::Operand {
            ptr: w,
            rs: 1,
            cs: inp as isize,
        };
        self.fwd.lanes(wt, r0, r1);
        let w = sgemm::Operand {
            ptr: w,
            rs: inp as isize,
            cs: 1,
        };
        self.bwd.steps(w, r0, r1);
    }
}

/// `y = act((accumulate ? y : 0) + bias + x W^T)` ([`Epilogue`]) for a prepared `W` (`out x inp`): `x` is
/// `rows x inp` (row stride `ldx`), `y` `rows x out` (row stride `ldy`); with `depth`, each tile of `y` sums only
/// over its range ([`gemm_view_ranged`](super::gemm_view_ranged)). Needs [`preparable`] for these rows.
#[allow(clippy::too_many_arguments)]
pub fn gemm_prepared<F: Float>(
    x: &[F],
    rows: usize,
    ldx: usize,
    w: &PreparedWeight,
    y: &mut [F],
    ldy: usize,
    ep: Epilogue<'_, F>,
    depth: Option<&sgemm::Depth<'_>>,
) {
    let out = w.0.dims().1;
    if rows > 0 {
        assert!(
            y.len() >= (rows - 1) * ldy + out,
            "gemm_prepared: operand sizes"
        );
    }
    // SAFETY: `y` is borrowed mutably, so it aliases neither `x` nor the packed weights, and it holds the rows
    // checked above
    unsafe { prepared_into(x, rows, ldx, w, y.as_mut_ptr(), ldy, ep, depth) }
}

/// A new `rows x out` matrix holding `act(bias + x W^T)` for a prepared `W` ([`gemm_prepared`], not
/// accumulating): its memory is written once, by the product.
pub fn gemm_prepared_new<F: Float>(
    x: &[F],
    rows: usize,
    ldx: usize,
    w: &PreparedWeight,
    bias: Option<&[F]>,
    relu: bool,
    depth: Option<&sgemm::Depth<'_>>,
) -> Vec<F> {
    let out = w.0.dims().1;
    let ep = Epilogue {
        accumulate: false,
        bias,
        relu,
    };
    // SAFETY: the new matrix holds `rows` rows of `out` values and aliases nothing; a product that does not
    // accumulate writes every one of them
    unsafe {
        written(rows * out, |y| {
            prepared_into(x, rows, ldx, w, y.as_mut_ptr() as *mut F, out, ep, depth)
        })
    }
}

/// [`gemm_prepared`] into raw memory.
///
/// # Safety
/// `y` must be valid for writes (and, when accumulating, reads) of `rows` rows of `out` values, `ldy` apart,
/// and alias neither `x` nor the packed weights.
#[allow(clippy::too_many_arguments)]
unsafe fn prepared_into<F: Float>(
    x: &[F],
    rows: usize,
    ldx: usize,
    w: &PreparedWeight,
    y: *mut F,
    ldy: usize,
    ep: Epilogue<'_, F>,
    depth: Option<&sgemm::Depth<'_>>,
) {
    let (inp, out) = w.0.dims();
    assert!(
        preparable::<F>(rows, inp, out),
        "gemm_prepared: not available for these rows"
    );
    assert!(ldx >= inp && ldy >= out, "gemm_prepared: row strides");
    if let Some(bias) = ep.bias {
        assert_eq!(bias.len(), out, "gemm_prepared: bias length");
    }
    if rows == 0 {
        return;
    }
    assert!(
        x.len() >= (rows - 1) * ldx + inp,
        "gemm_prepared: operand sizes"
    );
    let a = sgemm::Operand {
        ptr: x.as_ptr() as *const f32,
        rs: ldx as isize,
        cs: 1,
    };
    let threads = threads_for(rows * inp * out);
    // F is f32 and the CPU runs the kernel (`preparable`); `x`'s size was checked above, `y`'s is the caller's
    sgemm::sgemm_packed(
        rows,
        a,
        &w.0,
        y as *mut f32,
        ldy as isize,
        1,
        ep.out(),
        threads,
        depth,
    )
}
