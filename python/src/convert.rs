//! Array conversion: contiguous float64 numpy arrays (the Python layer converts) to the library's tables, and
//! the library's results back to numpy arrays.

use crate::errors::config_err;
use nflow::data::Table;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2};
use pyo3::prelude::*;

/// `(log p(x), d log p / dx)` as numpy arrays.
pub(crate) type Scored<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray2<f64>>);

/// The rows of `x` as a table with these column names (none given: `x0`, `x1`, ...); `source` names the data
/// in errors.
pub(crate) fn table(
    x: &PyReadonlyArray2<'_, f64>,
    columns: Vec<String>,
    source: &str,
) -> PyResult<Table> {
    let v = x.as_array();
    let (rows, cols) = v.dim();
    let columns = if columns.is_empty() {
        (0..cols).map(|j| format!("x{j}")).collect()
    } else {
        columns
    };
    if columns.len() != cols {
        return Err(config_err(format!(
            "{source}: {cols} columns but {} column names",
            columns.len()
        )));
    }
    let data: Vec<f64> = match v.as_slice() {
        Some(s) => s.to_vec(),
        None => v.iter().copied().collect(),
    };
    Ok(Table::new(columns, rows, data, source))
}

/// The context rows `c` as a table: with these column names when there are as many as columns, otherwise
/// `c0`, `c1`, ... (the model then says which columns it expects).
pub(crate) fn table_ctx(
    c: &PyReadonlyArray2<'_, f64>,
    columns: Vec<String>,
    source: &str,
) -> PyResult<Table> {
    let cols = c.as_array().dim().1;
    let columns = if columns.len() == cols {
        columns
    } else {
        (0..cols).map(|j| format!("c{j}")).collect()
    };
    table(c, columns, source)
}

/// `rows x cols` values, row-major, as a 2-D numpy array.
pub(crate) fn array2<'py>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
    v: Vec<f64>,
) -> Bound<'py, PyArray2<f64>> {
    Array2::from_shape_vec((rows, cols), v)
        .expect("rows x cols values")
        .into_pyarray(py)
}
