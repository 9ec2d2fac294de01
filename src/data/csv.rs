//! CSV tables (a header row; plain or gzipped, detected by content): reading with errors that name the
//! line and column, writing.

use std::path::Path;

use super::open::{open_maybe_gz, path_str};
use super::sink::TableSink;
use super::{MissingCells, Table, TextColumn};
use crate::data::{io_msg, DataError, Result};

/// How data files mark a cell with no value: empty, or R's / pandas' / SQL's / numpy's spellings.
fn is_missing(s: &str) -> bool {
    matches!(
        s,
        "" | "NA"
            | "N/A"
            | "n/a"
            | "na"
            | "NaN"
            | "nan"
            | "NAN"
            | "null"
            | "NULL"
            | "None"
            | "?"
            | "-"
    )
}

fn parse_cell(s: &str) -> Option<f64> {
    s.parse::<f64>().ok()
}

/// Reads a CSV file with a header row (plain or gzip-compressed, detected by the
/// magic bytes). Fields are trimmed. Every cell must be a finite number.
pub fn read_csv(path: &Path) -> Result<Table> {
    let p = path_str(path);
    // Parquet / Arrow by their first bytes (a regular file: a pipe cannot be read twice, nor seeked)
    let regular = super::open::is_regular(path);
    if regular {
        if let Some(kind) = super::columnar::sniff(path) {
            return super::columnar::read_columnar(path, kind);
        }
    }
    let (mut reader, gz) = open_maybe_gz(path)?;
    let bytes = super::open::read_all(&mut reader, &p, gz)?;
    drop(reader);
    if !regular && (bytes.starts_with(b"PAR1") || bytes.starts_with(b"ARROW1")) {
        return Err(DataError::Format {
            path: p,
            msg: "a Parquet / Arrow file from a pipe: these are read by seeking, so save it to a file first"
                .into(),
        });
    }
    parse_csv(&bytes, p)
}

/// Reads a CSV table (with a header row) from standard input (`--data -`); messages call it "standard input".
pub fn read_csv_stdin() -> Result<Table> {
    let p = "standard input".to_string();
    let bytes = super::open::read_all(&mut std::io::stdin().lock(), &p, false)?;
    parse_csv(&bytes, p)
}

/// A CSV table from its bytes; `p` names it in messages.
fn parse_csv(bytes: &[u8], p: String) -> Result<Table> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);

    // The csv crate reports a record's start as the position right after the
    // previous record, i.e. on a skipped blank line if there is one. Recompute
    // the line from the byte offset: skip line breaks, then count '\n' before.
    let mut counted = (0usize, 1u64); // (byte offset, line at that offset)
    let mut line_of = |pos: Option<&csv::Position>, fallback: u64| -> u64 {
        let Some(pos) = pos else { return fallback };
        let mut off = usize::try_from(pos.byte())
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        while off < bytes.len() && (bytes[off] == b'\n' || bytes[off] == b'\r') {
            off += 1;
        }
        if off < counted.0 {
            counted = (0, 1);
        }
        let extra = bytes[counted.0..off]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        counted = (off, counted.1 + extra);
        counted.1
    };

    let conv_err = |e: csv::Error, line: u64| -> DataError {
        match e.into_kind() {
            csv::ErrorKind::Io(io) => DataError::Read {
                path: p.clone(),
                msg: io_msg(&io),
            },
            csv::ErrorKind::Utf8 { err, .. } => DataError::Csv {
                path: p.clone(),
                line,
                msg: format!("invalid UTF-8 in field {}", err.field() + 1),
            },
            other => DataError::Csv {
                path: p.clone(),
                line,
                msg: format!("{other:?}"),
            },
        }
    };

    let mut records = rdr.records();
    let header = match records.next() {
        None => return Err(DataError::EmptyFile { path: p }),
        Some(Err(e)) => {
            let line = line_of(e.position(), 1);
            return Err(conv_err(e, line));
        }
        Some(Ok(h)) => h,
    };
    let header_line = line_of(header.position(), 1);
    let mut columns: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    if let Some(first) = columns.first_mut() {
        if let Some(stripped) = first.strip_prefix('\u{feff}') {
            *first = stripped.trim().to_string();
        }
    }
    if columns.len() == 1 && columns[0].is_empty() {
        return Err(DataError::EmptyFile { path: p });
    }
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return Err(DataError::BadHeader {
                path: p,
                line: header_line,
                msg: format!("duplicate column name '{c}'"),
            });
        }
    }
    let cols = columns.len();

    let mut data = Vec::new();
    let mut text: Vec<Option<TextColumn>> = vec![None; cols];
    let mut missing: Vec<Option<MissingCells>> = vec![None; cols];
    let mut rows = 0usize;
    let mut last_line = header_line;
    for rec in records {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = line_of(e.position(), last_line + 1);
                return Err(conv_err(e, line));
            }
        };
        let line = line_of(rec.position(), last_line + 1);
        last_line = line;
        if rec.len() != cols {
            return Err(DataError::FieldCount {
                path: p,
                line,
                expected: cols,
                found: rec.len(),
            });
        }
        super::check_growth(&data, cols, &p)?;
        for (j, cell) in rec.iter().enumerate() {
            if text[j].is_some() {
                data.push(f64::NAN);
                continue;
            }
            if is_missing(cell) {
                match &mut missing[j] {
                    Some(m) => m.count += 1,
                    None => {
                        missing[j] = Some(MissingCells {
                            name: columns[j].clone(),
                            line,
                            value: cell.to_string(),
                            count: 1,
                        })
                    }
                }
                data.push(f64::NAN);
                continue;
            }
            match parse_cell(cell) {
                None => {
                    // a column of text (a class name): left out, remembered with its first such cell
                    text[j] = Some(TextColumn {
                        name: columns[j].clone(),
                        line,
                        value: cell.to_string(),
                    });
                    data.push(f64::NAN);
                }
                Some(v) if !v.is_finite() => {
                    return Err(DataError::NonFiniteCell {
                        path: p,
                        line,
                        column: columns[j].clone(),
                    })
                }
                Some(v) => data.push(v),
            }
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(DataError::NoRows { source_name: p });
    }
    // a column with text is text, whatever else it holds
    let missing: Vec<MissingCells> = (0..cols)
        .filter(|&j| text[j].is_none())
        .filter_map(|j| missing[j].take())
        .collect();
    if text.iter().all(Option::is_none) {
        let mut t = Table::new(columns, rows, data, p);
        t.missing = missing;
        return Ok(t);
    }
    // the numeric columns only (a text column's cells before its first text are dropped with it)
    let keep: Vec<usize> = (0..cols).filter(|&j| text[j].is_none()).collect();
    let mut kept = Vec::with_capacity(rows * keep.len());
    for r in 0..rows {
        kept.extend(keep.iter().map(|&j| data[r * cols + j]));
    }
    let names = keep.iter().map(|&j| columns[j].clone()).collect();
    let mut t = Table::new(names, rows, kept, p);
    t.text = text.into_iter().flatten().collect();
    t.missing = missing;
    Ok(t)
}

/// Writes a header row and the rows, values in Rust's shortest round-trip formatting of f64. A path ending
/// in ".gz" is gzip-compressed. The file appears whole or not at all ([`TableSink`]).
pub fn write_csv(path: &Path, t: &Table) -> Result<()> {
    let mut w = TableSink::csv(path, &t.columns, Some(t.rows))?;
    w.push(t)?;
    w.finish()
}

/// Writes a table in the format its name asks for (`.csv`, `.csv.gz`, `.npy`, `.parquet`, `.arrow`).
pub fn write_table(path: &Path, t: &Table) -> Result<()> {
    let mut w = TableSink::for_path(path, &t.columns, t.rows)?;
    w.push(t)?;
    w.finish()
}
