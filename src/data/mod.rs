//! Data loading for nflow: built-in 2-D toy generators, CSV / NPY tables,
//! train/validation splits and per-column standardisation.
//!
//! Every error names the data source (file path or `toy:NAME`) and, where it
//! applies, the 1-based line number as in the file (the header is line 1) or
//! the 0-based row index (said so explicitly), and the column name.

pub mod columnar;
pub mod csv;
pub mod idx;
pub mod images;
pub mod npy;
mod open;
pub mod preprocess;
pub mod sink;
pub mod source;
pub mod split;
pub mod table;
pub mod toy;

pub use csv::{read_csv, write_csv, write_table};
pub use idx::{load_idx_source, read_idx};
pub use images::{load_png_folder, parse_shape, pixel_columns, shape_from_columns};
pub use npy::{read_npy, write_npy};
pub use open::temp_file_beside;
pub(crate) use open::{pid_suffix, process_alive, temp_dir_beside};
pub use preprocess::{count_classes, one_hot, ColumnSupport, Preprocess};
pub use sink::TableSink;
pub use source::load_source;
pub use split::{split_indices, Standardizer};
pub use table::*;
pub use toy::*;

/// Errors produced while loading, checking or transforming data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened (missing, permissions, ...).
    #[error("cannot open {path}: {msg}")]
    Open { path: String, msg: String },

    /// An I/O error while reading an already opened file.
    #[error("{path}: read error: {msg}")]
    Read { path: String, msg: String },

    /// A file in a format nflow does not read (Parquet, Arrow, ...), recognised by its first bytes.
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },

    /// The file could not be created or written.
    #[error("cannot write {path}: {msg}")]
    Write { path: String, msg: String },

    /// The file starts with the gzip magic bytes but does not decompress.
    #[error("{path}: corrupt gzip stream: {msg}")]
    Gzip { path: String, msg: String },

    /// A CSV file with no content at all (not even a header row).
    #[error("{path}: empty file (no header)")]
    EmptyFile { path: String },

    /// A data source with a header / shape but zero data rows.
    #[error("{source_name}: no data rows")]
    NoRows { source_name: String },

    /// A problem with the header row of a CSV file.
    #[error("{path} line {line}: {msg}")]
    BadHeader {
        path: String,
        line: u64,
        msg: String,
    },

    /// Any other malformed CSV content (e.g. invalid UTF-8) at a given line.
    #[error("{path} line {line}: {msg}")]
    Csv {
        path: String,
        line: u64,
        msg: String,
    },

    /// A CSV row with a different number of fields than the header.
    #[error("{path} line {line}: expected {expected} fields, found {found}")]
    FieldCount {
        path: String,
        line: u64,
        expected: usize,
        found: usize,
    },

    /// A CSV cell that does not parse as a number.
    #[error("{path} line {line}, column '{column}': '{value}' is not a number")]
    NotANumber {
        path: String,
        line: u64,
        column: String,
        value: String,
    },

    /// Empty or NA-like CSV cells (the first one of the column, and how many rows of it have one).
    #[error(
        "{path} line {line}, column '{column}': missing value ('{value}'; {rows} row(s) of the column have \
         one): fill them in, or give --drop-missing to leave out the rows with missing cells"
    )]
    Missing {
        path: String,
        line: u64,
        column: String,
        value: String,
        rows: usize,
    },

    /// A CSV cell that parses to NaN or +-Inf.
    #[error("{path} line {line}, column '{column}': value is NaN/Inf (not allowed)")]
    NonFiniteCell {
        path: String,
        line: u64,
        column: String,
    },

    /// A NaN / Inf value located by 0-based row index (NPY files, in-memory tables).
    #[error(
        "{source_name} row {row} (0-based), column '{column}': value is NaN/Inf (not allowed)"
    )]
    NonFiniteRow {
        source_name: String,
        row: usize,
        column: String,
    },

    /// A column name that is not in the table.
    #[error("unknown column '{name}' in {source_name} (columns: {available})")]
    UnknownColumn {
        name: String,
        source_name: String,
        available: String,
    },

    /// Column selection left nothing.
    #[error("{source_name}: no columns left after selecting/dropping columns")]
    NoColumns { source_name: String },

    /// A column that is the same value in every row.
    #[error("{source_name}, column '{column}': constant column (std = 0); a density on a constant column is degenerate, drop the column")]
    ConstantColumn { source_name: String, column: String },

    /// A column whose values cannot be standardised in double precision.
    #[error("{source_name}, column '{column}': {msg}")]
    ColumnRange {
        source_name: String,
        column: String,
        msg: String,
    },

    /// A toy data set name that is not built in.
    #[error("unknown toy data set '{name}' (known: {known})")]
    UnknownToy { name: String, known: String },

    /// A malformed data-source string (e.g. `toy:moons:abc`).
    #[error("invalid data source '{src}': {msg}")]
    BadSource { src: String, msg: String },

    /// An NPY file whose layout or dtype is unsupported or which is malformed.
    #[error("{path}: {msg}")]
    Npy { path: String, msg: String },

    /// An invalid argument to a data function (e.g. a validation fraction out of range).
    #[error("{0}")]
    InvalidArgument(String),
}

/// Result type of the data module.
pub type Result<T> = std::result::Result<T, DataError>;

/// Copies of a table's values a run holds at its peak while reading and preparing data (the values read, the
/// kept columns, the training and validation splits).
const TABLE_COPIES: u128 = 3;

/// An error unless a table of `values` numbers (f64), with the copies a run makes of it, fits in memory: what
/// readers check as the data grows, so an input that expands past memory (a compressed file, a generator's
/// count) stops with a clean error instead of an aborted allocation.
pub(crate) fn check_room(values: u128, path: &str) -> Result<()> {
    crate::engine::check_fits(
        values.saturating_mul(8).saturating_mul(TABLE_COPIES),
        &format!("a table of {values} values"),
    )
    .map_err(|msg| DataError::Format {
        path: path.to_string(),
        msg,
    })
}

/// [`check_room`] for a vector about to grow by `extra` values: checked only when it would reallocate (its
/// capacity doubles), so a reader pays for it a few dozen times, not once a row.
pub(crate) fn check_growth(v: &Vec<f64>, extra: usize, path: &str) -> Result<()> {
    if v.len() + extra <= v.capacity() {
        return Ok(());
    }
    let next = (v.capacity().saturating_mul(2)).max(v.len() + extra);
    check_room(next as u128, path)
}

/// An `io::Error` rendered without the trailing " (os error N)" noise.
pub(crate) fn io_msg(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}
