//! `nflow._nflow`: the Python binding, a thin shell over the library (the pure-Python layer in
//! `python/nflow/` gives it its API). Arrays cross as contiguous float64 numpy arrays (the Python layer
//! converts); every library error becomes a Python exception of the usual type carrying the Rust message;
//! the GIL is released while Rust computes, and all work runs on this module's own thread pools
//! (`set_num_threads` threads each): every operation in flight (a fit, a score from another thread or from a
//! fit's callback) on a pool of its own, so that any number of threads may use any models at once, callbacks
//! and nested fits included, and a forked child starts pools of its own. Models are immutable (no lock).
//!
//! This file holds the module registration and the allocator; the rest, by job:
//! - `errors`: library errors as Python exceptions;
//! - `runtime`: the thread pools, `compute` and the training driver `drive`;
//! - `convert`: numpy arrays to tables and results back to numpy;
//! - `flows`: flow definitions (presets, composed architectures);
//! - `options`: training and VI options from the Python dict;
//! - `model`: the `Model` class (training, loading and saving, scoring);
//! - `vi`: variational inference's Python targets, built-in targets and diagnostics.

// Every unsafe block says why it is sound.
#![warn(clippy::undocumented_unsafe_blocks)]

mod convert;
mod errors;
mod flows;
mod model;
mod options;
mod runtime;
mod vi;

use pyo3::prelude::*;

// The module's Rust allocations (the layers' buffers, result arrays) go through mimalloc, as polars' wheel
// uses jemalloc: glibc's malloc with an explicit trim threshold (Dask's nanny sets MALLOC_TRIM_THRESHOLD_ for its
// workers) stops adapting its mmap threshold, so every buffer over 128 KiB was mapped, faulted in and unmapped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[pymodule]
fn _nflow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(runtime::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(flows::architecture, m)?)?;
    m.add_function(wrap_pyfunction!(flows::presets, m)?)?;
    m.add_function(wrap_pyfunction!(vi::diagnostics, m)?)?;
    m.add_function(wrap_pyfunction!(vi::target_log_prob, m)?)?;
    m.add_function(wrap_pyfunction!(vi::target_info, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
