//! Variational inference (reverse KL) support: a target density given as a Python function, the fit's
//! diagnostics as JSON, and the module functions `diagnostics`, `target_log_prob` and `target_info` (the
//! built-in targets). The fit itself is `Model.fit_vi` (model.rs).

use crate::convert::{array2, Scored};
use crate::errors::{config_err, py_err};
use crate::runtime::compute;
use nflow::train::diagnostics::Diagnostics;
use nflow::train::Target;
use nflow::Mat;
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A target density from Python: `f(x) -> (log p~(x), d log p~ / dx)` as float64 arrays `(n,)`, `(n, dim)`
/// (`f(x, c)` for an amortised target; the Python layer checks shapes and dtypes). The first exception it
/// raises is kept and stops training; the trainer then sees NaN and stops at once.
pub(crate) struct PyTarget {
    pub(crate) f: Py<PyAny>,
    pub(crate) dim: usize,
    pub(crate) error: Arc<Mutex<Option<PyErr>>>,
    pub(crate) stop: Arc<AtomicBool>,
}

impl PyTarget {
    fn call(&self, x: &Mat<f32>, ctx: Option<&Mat<f32>>) -> PyResult<(Vec<f32>, Mat<f32>)> {
        Python::attach(|py| {
            let xa = array2(py, x.rows, x.cols, x.to_f64());
            let out = match ctx {
                Some(c) => self
                    .f
                    .call1(py, (xa, array2(py, c.rows, c.cols, c.to_f64())))?,
                None => self.f.call1(py, (xa,))?,
            };
            let (lp, g): (PyReadonlyArray1<'_, f64>, PyReadonlyArray2<'_, f64>) =
                out.extract(py)?;
            let (lp, g) = (lp.as_array(), g.as_array());
            if lp.len() != x.rows || g.dim() != (x.rows, x.cols) {
                return Err(config_err(format!(
                    "the target returned log p of {} rows and a gradient of {:?} for {} rows of {} columns",
                    lp.len(),
                    g.dim(),
                    x.rows,
                    x.cols
                )));
            }
            let lp: Vec<f32> = lp.iter().map(|&v| v as f32).collect();
            let g: Vec<f32> = g.iter().map(|&v| v as f32).collect();
            Ok((lp, Mat::from_vec(x.rows, x.cols, g)))
        })
    }
}

impl Target<f32> for PyTarget {
    fn dim(&self) -> usize {
        self.dim
    }
    fn log_prob_and_grad(&self, x: &Mat<f32>, ctx: Option<&Mat<f32>>) -> (Vec<f32>, Mat<f32>) {
        let failed = || (vec![f32::NAN; x.rows], Mat::zeros(x.rows, x.cols));
        let mut err = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if err.is_some() {
            return failed();
        }
        match self.call(x, ctx) {
            Ok(v) => v,
            Err(e) => {
                *err = Some(e);
                self.stop.store(true, Ordering::Relaxed);
                failed()
            }
        }
    }
}

/// The diagnostics as JSON, with the target's true `log Z` (where known) and the KL divergence it gives.
pub(crate) fn diagnostics_json(d: &Diagnostics, log_z: Option<f64>) -> String {
    let mut o = serde_json::to_value(d).expect("diagnostics serialise");
    o["true_log_z"] = serde_json::json!(log_z);
    o["kl"] = serde_json::json!(log_z.map(|z| z - d.elbo));
    o.to_string()
}

/// The diagnostics (ELBO ± SE, importance-sampling log Z ± SE, ESS) of log-weights `log_target - log_q`.
#[pyfunction]
pub(crate) fn diagnostics(log_target: Vec<f64>, log_q: Vec<f64>) -> PyResult<String> {
    if log_target.len() != log_q.len() || log_q.len() < 2 {
        return Err(config_err(format!(
            "diagnostics need one log q per log p~ and at least 2 samples (got {} and {})",
            log_target.len(),
            log_q.len()
        )));
    }
    Ok(diagnostics_json(
        &nflow::train::diagnostics::diagnostics(&log_target, &log_q),
        None,
    ))
}

/// A built-in target's `(log p~(x), d log p~ / dx)` in float64, and its `log Z` where known.
#[pyfunction]
pub(crate) fn target_log_prob<'py>(
    py: Python<'py>,
    name: &str,
    x: PyReadonlyArray2<'py, f64>,
) -> PyResult<(Scored<'py>, Option<f64>)> {
    let t = nflow::train::targets::by_name::<f64>(name).map_err(py_err)?;
    let v = x.as_array();
    let (rows, cols) = v.dim();
    if cols != t.dim() {
        return Err(config_err(format!(
            "target {name} has {} dimensions, x has {cols} columns",
            t.dim()
        )));
    }
    let m = Mat::from_vec(rows, cols, v.iter().copied().collect());
    let (lp, g) = compute(py, || t.log_prob_and_grad(&m, None))?;
    Ok((
        (PyArray1::from_vec(py, lp), array2(py, rows, cols, g.data)),
        t.log_z(),
    ))
}

/// A built-in target's dimensions and its `log Z` where known.
#[pyfunction]
pub(crate) fn target_info(name: &str) -> PyResult<(usize, Option<f64>)> {
    let t = nflow::train::targets::by_name::<f64>(name).map_err(py_err)?;
    Ok((t.dim(), t.log_z()))
}
