//! Data sources by name: `toy:NAME[:N]`, `idx:DIR[...]`, a PNG folder, a Parquet or Arrow file (by its first
//! bytes), a `.npy`, an IDX file or a CSV; the
//! one place that knows every reader.

use super::csv::read_csv;
use super::npy::read_npy;
use super::{toy, DataError, Result, Table, TOY_NAMES};
use std::path::Path;

/// Loads a data source: `toy:NAME` (`toy_n` samples of a built-in generator
/// with `seed`), `toy:NAME:N` (N samples), a `.npy` file, or anything else as
/// CSV (plain or gzipped, e.g. `.csv` / `.csv.gz`).
pub fn load_source(src: &str, toy_n: usize, seed: u64) -> Result<Table> {
    if let Some(rest) = src.strip_prefix("toy:") {
        let (name, n) = match rest.split_once(':') {
            Some((name, n_str)) => {
                let n = n_str
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| DataError::BadSource {
                        src: src.to_string(),
                        msg: format!(
                            "'{n_str}' is not a sample count (expected toy:NAME or toy:NAME:N)"
                        ),
                    })?;
                (name, n)
            }
            None => (rest, toy_n),
        };
        if n == 0 {
            return Err(DataError::BadSource {
                src: src.to_string(),
                msg: "number of toy samples must be at least 1".to_string(),
            });
        }
        return toy(name, n, seed);
    }
    if let Some(rest) = src.strip_prefix("idx:") {
        return super::idx::load_idx_source(src, rest);
    }
    if src == "-" {
        return super::csv::read_csv_stdin();
    }
    let path = Path::new(src);
    if !path.exists() {
        let mut msg = "No such file or directory".to_string();
        let lower = src.to_ascii_lowercase();
        if TOY_NAMES.contains(&lower.as_str()) {
            msg.push_str(&format!(
                " (for the built-in toy data set write 'toy:{lower}')"
            ));
        }
        return Err(DataError::Open {
            path: src.to_string(),
            msg,
        });
    }
    if path.is_dir() {
        super::images::load_png_folder(path)
    } else if let Some(kind) = super::open::is_regular(path)
        .then(|| super::columnar::sniff(path))
        .flatten()
    {
        // (a regular file's first bytes only: a pipe's would be gone for the reader after)
        super::columnar::read_columnar(path, kind)
    } else if src.to_ascii_lowercase().ends_with(".npy") {
        read_npy(path)
    } else if super::idx::is_idx_name(src) {
        super::idx::read_idx(path)
    } else {
        read_csv(path)
    }
}
