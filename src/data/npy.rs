//! NPY tables: 2-D `f32` / `f64` arrays, C or Fortran order.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::open::path_str;
use super::Table;
use crate::data::{io_msg, DataError, Result};

fn describe_dtype(dtype: &npyz::DType) -> String {
    match dtype {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => other.descr(),
    }
}

/// Reads a 2-D NPY array of f32 or f64 (C or Fortran order). Columns are named
/// `x0, x1, ...`. NaN/Inf is an error naming the 0-based row and the column.
pub fn read_npy(path: &Path) -> Result<Table> {
    let p = path_str(path);
    let f = File::open(path).map_err(|e| DataError::Open {
        path: p.clone(),
        msg: io_msg(&e),
    })?;
    let npy_err = |msg: String| DataError::Npy {
        path: p.clone(),
        msg,
    };
    let file = npyz::NpyFile::new(BufReader::new(f))
        .map_err(|e| npy_err(format!("not a valid .npy file: {}", io_msg(&e))))?;
    let dtype = file.dtype();
    let shape = file.shape().to_vec();
    let order = file.order();
    let width = match &dtype {
        npyz::DType::Plain(ts) if ts.type_char() == npyz::TypeChar::Float => ts.size_field(),
        _ => 0,
    };
    if shape.len() != 2 || !(width == 4 || width == 8) {
        return Err(npy_err(format!(
            "expected a 2-D array of f32 or f64, found a {}-D array of shape {:?} with dtype '{}'",
            shape.len(),
            shape,
            describe_dtype(&dtype)
        )));
    }
    let too_big = || npy_err(format!("array shape {shape:?} is too large"));
    let rows = usize::try_from(shape[0]).map_err(|_| too_big())?;
    let cols = usize::try_from(shape[1]).map_err(|_| too_big())?;
    rows.checked_mul(cols).ok_or_else(too_big)?;
    if cols == 0 {
        return Err(npy_err(format!("array of shape {shape:?} has no columns")));
    }
    if rows == 0 {
        return Err(DataError::NoRows { source_name: p });
    }
    // the header's shape against the file's size, before any allocation for the data
    let need = (rows as u128) * (cols as u128) * (width as u128);
    let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if need > u128::from(have) {
        return Err(npy_err(format!(
            "the header says {rows} x {cols} values ({need} bytes of data), the file has only {have} bytes"
        )));
    }
    let read_err =
        |e: std::io::Error| npy_err(format!("truncated or unreadable data: {}", io_msg(&e)));
    let raw: Vec<f64> = if width == 8 {
        file.into_vec::<f64>().map_err(read_err)?
    } else {
        file.into_vec::<f32>()
            .map_err(read_err)?
            .into_iter()
            .map(f64::from)
            .collect()
    };
    if raw.len() != rows * cols {
        return Err(npy_err(format!(
            "expected {} values for shape {shape:?}, found {}",
            rows * cols,
            raw.len()
        )));
    }
    let data = match order {
        npyz::Order::C => raw,
        npyz::Order::Fortran => {
            let mut d = vec![0.0; rows * cols];
            for c in 0..cols {
                for r in 0..rows {
                    d[r * cols + c] = raw[c * rows + r];
                }
            }
            d
        }
    };
    let columns = (0..cols).map(|i| format!("x{i}")).collect();
    let t = Table::new(columns, rows, data, p);
    t.check_finite()?;
    Ok(t)
}

/// Writes the table as a 2-D f64 C-order `.npy` array (column names are not stored); the file appears whole
/// or not at all ([`super::TableSink`]).
pub fn write_npy(path: &Path, t: &Table) -> Result<()> {
    let mut w = super::TableSink::npy(path, t.rows, t.cols)?;
    w.push(t)?;
    w.finish()
}
