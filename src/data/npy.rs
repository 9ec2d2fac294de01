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
/// The header dictionary's limits, checked before the NPY parser sees it: its grammar parser backtracks
/// exponentially on deeply nested brackets (found by fuzzing; docs/results/robustness.md), and a plain or
/// structured array's header nests at most three deep and takes a few hundred bytes.
const MAX_HEADER_DEPTH: usize = 4;
const MAX_HEADER_BYTES: usize = 1 << 16;

/// An error message if the NPY header in `f` (read from its start; the file is rewound) nests brackets
/// deeper than [`MAX_HEADER_DEPTH`] or is longer than [`MAX_HEADER_BYTES`]. Anything else is left to the
/// parser.
fn check_header<R: std::io::Read + std::io::Seek>(f: &mut R) -> std::result::Result<(), String> {
    let mut head = [0u8; 12];
    let n = f.read(&mut head).map_err(|e| io_msg(&e))?;
    f.rewind().map_err(|e| io_msg(&e))?;
    if n < 10 || &head[..6] != b"\x93NUMPY" {
        return Ok(());
    }
    let (len, start) = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10),
        _ if n >= 12 => (
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
            12,
        ),
        _ => return Ok(()),
    };
    if len > MAX_HEADER_BYTES {
        return Err(format!(
            "its header is {len} bytes long (a plain array's takes a few hundred): not a plain array"
        ));
    }
    let mut text = vec![0u8; start + len];
    let got = f.read(&mut text).map_err(|e| io_msg(&e))?;
    f.rewind().map_err(|e| io_msg(&e))?;
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &b in &text[start.min(got)..got] {
        match b {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_HEADER_DEPTH {
        return Err(format!(
            "its header nests brackets {deepest} deep (a plain array's: 2): not a plain array"
        ));
    }
    Ok(())
}

trait ReadSeek: std::io::Read + std::io::Seek {}
impl<T: std::io::Read + std::io::Seek> ReadSeek for T {}

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
    // a pipe (a FIFO, a process substitution) is read whole first: the header check seeks
    let mut input: Box<dyn ReadSeek> = if super::open::is_regular(path) {
        Box::new(BufReader::new(f))
    } else {
        let mut f = f;
        Box::new(std::io::Cursor::new(super::open::read_all(
            &mut f, &p, false,
        )?))
    };
    check_header(&mut input).map_err(npy_err)?;
    let file = npyz::NpyFile::new(input)
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
    // (a regular file's: a pipe's size says nothing, and a short one ends in a read error below)
    let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if super::open::is_regular(path) && need > u128::from(have) {
        return Err(npy_err(format!(
            "the header says {rows} x {cols} values ({need} bytes of data), the file has only {have} bytes"
        )));
    }
    super::check_room((rows as u128) * (cols as u128), &p)?;
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
