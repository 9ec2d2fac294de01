//! The narrow kernel interface: every transform and network does its numeric work through these functions
//! (GEMM, element-wise maps, row/column reductions), so another implementation (e.g. a GPU one) can replace
//! this module without touching the transforms.
//!
//! f32 matrix products of flow-sized shapes run on our own AVX2/FMA kernel ([`sgemm`]: operands packed once
//! and shared by the threads, results independent of the thread count; masked layers skip their zero blocks
//! per tile through [`gemm_view_ranged`]); f64, thin products and CPUs without AVX2 go through the `gemm`
//! crate, one single-threaded product per thread on its own slab of the output (providers compared in
//! `bench/gemm`). Element-wise work over large buffers is split over the rayon pool in fixed-size chunks, so
//! its results do not depend on the number of threads (a `gemm`-crate product's may, in the last bits, through
//! its blocking of the slabs).

//!
//! The module's files, by job: `dispatch.rs` (the products' entry points, [`View`] and [`Epilogue`], and the
//! choice between the f32 kernel, the thin loops and the `gemm` crate), `thin.rs` (products with a dimension
//! of at most 4), `ranged.rs` (MADE's products over per-tile depth ranges), `packs.rs` (weights packed once:
//! [`PreparedWeight`], [`WeightPacks`]) and `elementwise.rs` (fills, maps and zips, column sums).

use super::sgemm;
pub use sgemm::Depth;

mod dispatch;
mod elementwise;
mod packs;
mod ranged;
mod thin;

pub use dispatch::{
    gemm, gemm_tasks, gemm_view, gemm_view_ep, gemm_view_new, slabs, threads_for, Epilogue,
    Product, View,
};
pub use elementwise::{
    add_col_sums, bias_rows, fill_rows, linear, map_inplace, zeros, zip3_inplace, zip_inplace,
};
pub use packs::{
    gemm_prepared, gemm_prepared_new, preparable, prepare_weight, PacksWriter, PreparedWeight,
    WeightPacks,
};
pub use ranged::{gemm_view_ranged, ranged_available, TILE};
