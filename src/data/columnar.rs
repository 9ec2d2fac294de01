//! Parquet and Arrow IPC (Feather v2) tables, read and written with the `parquet` / `arrow` crates.
//!
//! Reading: every numeric column (integers, floats, booleans, decimals) becomes f64; a null is a missing cell
//! (an error naming its row and column, or a row left out by `--drop-missing`, as for CSV); a column of text
//! (or of any type that does not convert to numbers) is kept aside like a CSV's text column, an error only
//! where it is selected. Messages count rows from 1 in place of CSV's lines. Writing: a Float64 column per
//! table column (Parquet: snappy-compressed), chunk by chunk through [`super::TableSink`].

use std::fs::File;
use std::path::Path;
#[cfg(feature = "columnar")]
use std::sync::Arc;

#[cfg(feature = "columnar")]
use arrow_array::{cast::AsArray, types::Float64Type, Array, ArrayRef, Float64Array, RecordBatch};
#[cfg(feature = "columnar")]
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use super::open::path_str;
use super::Table;
#[cfg(feature = "columnar")]
use super::{MissingCells, TextColumn};
use crate::data::{DataError, Result};

/// The table formats recognised by their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Columnar {
    Parquet,
    Arrow,
}

/// Which columnar format a file is, from its first bytes (`PAR1`, `ARROW1`); `None` for anything else.
pub fn sniff(path: &Path) -> Option<Columnar> {
    use std::io::Read;
    let mut head = [0u8; 6];
    let mut f = File::open(path).ok()?;
    let n = f.read(&mut head).ok()?;
    if n >= 4 && &head[..4] == b"PAR1" {
        Some(Columnar::Parquet)
    } else if n >= 6 && &head[..6] == b"ARROW1" {
        Some(Columnar::Arrow)
    } else {
        None
    }
}

/// Reads a Parquet or Arrow IPC file (by its first bytes): in a build without the `columnar` feature (the
/// Python package's), an error naming the format.
#[cfg(not(feature = "columnar"))]
pub fn read_columnar(path: &Path, kind: Columnar) -> Result<Table> {
    Err(DataError::Format {
        path: path_str(path),
        msg: format!(
            "a {} file, which this build of nflow (without the columnar feature) does not read",
            match kind {
                Columnar::Parquet => "Parquet",
                Columnar::Arrow => "Arrow IPC (Feather v2)",
            }
        ),
    })
}

/// Reads a Parquet or Arrow IPC file (by its first bytes).
#[cfg(feature = "columnar")]
pub fn read_columnar(path: &Path, kind: Columnar) -> Result<Table> {
    // the readers are another crate's code: a malformed file that makes one panic is an error, not a crash
    std::panic::catch_unwind(|| read(path, kind)).unwrap_or_else(|_| {
        Err(DataError::Format {
            path: path_str(path),
            msg: "a corrupt Parquet / Arrow file (its reader failed on it)".into(),
        })
    })
}

#[cfg(feature = "columnar")]
fn read(path: &Path, kind: Columnar) -> Result<Table> {
    let p = path_str(path);
    let file = File::open(path).map_err(|e| DataError::Open {
        path: p.clone(),
        msg: crate::data::io_msg(&e),
    })?;
    let bad = |e: &dyn std::fmt::Display| DataError::Format {
        path: p.clone(),
        msg: format!(
            "not a readable {} file: {e}",
            match kind {
                Columnar::Parquet => "Parquet",
                Columnar::Arrow => "Arrow IPC (Feather v2)",
            }
        ),
    };
    let (schema, batches): (
        SchemaRef,
        Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>>>,
    ) = match kind {
        Columnar::Parquet => {
            let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| bad(&e))?;
            let schema = b.schema().clone();
            (schema, Box::new(b.build().map_err(|e| bad(&e))?))
        }
        Columnar::Arrow => {
            let r = arrow_ipc::reader::FileReader::try_new(file, None).map_err(|e| bad(&e))?;
            (r.schema(), Box::new(r))
        }
    };
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let ncols = names.len();
    if ncols == 0 {
        return Err(DataError::EmptyFile { path: p });
    }
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); ncols];
    let mut text: Vec<Option<TextColumn>> = vec![None; ncols];
    let mut missing: Vec<Option<MissingCells>> = vec![None; ncols];
    let mut rows = 0usize;
    for batch in batches {
        let batch = batch.map_err(|e| bad(&e))?;
        super::check_room(
            ((rows + batch.num_rows()) as u128).saturating_mul(ncols as u128),
            &p,
        )?;
        for (j, col) in batch.columns().iter().enumerate() {
            if text[j].is_none() {
                match numbers(col) {
                    Ok(v) => {
                        for (i, x) in v.iter().enumerate() {
                            if x.is_nan() {
                                let m = missing[j].get_or_insert_with(|| MissingCells {
                                    name: names[j].clone(),
                                    line: (rows + i + 1) as u64,
                                    value: if col.is_null(i) { "null" } else { "NaN" }.into(),
                                    count: 0,
                                });
                                m.count += 1;
                            }
                        }
                        cols[j].extend(v);
                        continue;
                    }
                    Err(value) => {
                        text[j] = Some(TextColumn {
                            name: names[j].clone(),
                            line: (rows + 1) as u64,
                            value,
                        })
                    }
                }
            }
            cols[j].resize(rows + batch.num_rows(), f64::NAN);
        }
        rows += batch.num_rows();
    }
    if rows == 0 {
        return Err(DataError::NoRows { source_name: p });
    }
    // row-major, the text columns left out
    let keep: Vec<usize> = (0..ncols).filter(|&j| text[j].is_none()).collect();
    let mut data = Vec::with_capacity(rows * keep.len());
    for i in 0..rows {
        data.extend(keep.iter().map(|&j| cols[j][i]));
    }
    let mut t = Table::new(
        keep.iter().map(|&j| names[j].clone()).collect(),
        rows,
        data,
        p,
    );
    t.text = text.into_iter().flatten().collect();
    t.missing = missing
        .into_iter()
        .enumerate()
        .filter(|(j, _)| keep.contains(j))
        .filter_map(|(_, m)| m)
        .collect();
    Ok(t)
}

#[cfg(feature = "columnar")]
/// A column as f64 (nulls as NaN), or the description of its first value when it is not numeric.
fn numbers(col: &ArrayRef) -> std::result::Result<Vec<f64>, String> {
    let dt = col.data_type();
    let numeric = dt.is_numeric() || matches!(dt, DataType::Boolean | DataType::Null);
    if !numeric {
        let first = (0..col.len())
            .find(|&i| !col.is_null(i))
            .and_then(|i| arrow_cast::display::array_value_to_string(col, i).ok())
            .unwrap_or_default();
        return Err(first);
    }
    let f = arrow_cast::cast(col, &DataType::Float64).map_err(|e| format!("{dt}: {e}"))?;
    let f = f.as_primitive::<Float64Type>();
    Ok((0..f.len())
        .map(|i| if f.is_null(i) { f64::NAN } else { f.value(i) })
        .collect())
}

#[cfg(feature = "columnar")]
/// The Arrow schema of a table of f64 columns.
pub(crate) fn schema(columns: &[String]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(c, DataType::Float64, false))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(feature = "columnar")]
/// The rows of `t` as one record batch of f64 columns.
pub(crate) fn batch(schema: &SchemaRef, t: &Table) -> std::result::Result<RecordBatch, ArrowError> {
    let cols: Vec<ArrayRef> = (0..t.cols)
        .map(|j| {
            Arc::new(Float64Array::from_iter_values(
                (0..t.rows).map(|i| t.data[i * t.cols + j]),
            )) as ArrayRef
        })
        .collect();
    RecordBatch::try_new(schema.clone(), cols)
}

#[cfg(all(test, feature = "columnar"))]
mod tests {
    use super::*;
    use crate::data::{load_source, TableSink};
    use arrow_array::{Int32Array, StringArray};

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("nflow-columnar-{}-{name}", std::process::id()))
    }

    #[test]
    fn parquet_and_arrow_round_trip_chunk_by_chunk() {
        let t = Table::new(
            vec!["x".into(), "y".into()],
            5,
            vec![
                0.5,
                -1.0,
                2.25,
                3.0,
                f64::MIN_POSITIVE,
                1e300,
                -0.0,
                7.0,
                1.0 / 3.0,
                8.0,
            ],
            "t",
        );
        for name in ["t.parquet", "t.arrow", "t.feather"] {
            let p = tmp(name);
            let mut w = TableSink::for_path(&p, &t.columns, t.rows).unwrap();
            w.push(&t.take_rows(&[0, 1])).unwrap();
            w.push(&t.take_rows(&[2, 3, 4])).unwrap();
            w.finish().unwrap();
            let back = load_source(p.to_str().unwrap(), 0, 0).unwrap();
            assert_eq!(back.columns, t.columns, "{name}");
            assert!(
                back.data
                    .iter()
                    .zip(&t.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: {:?}",
                back.data
            );
            let _ = std::fs::remove_file(&p);
        }
    }

    /// Files as pandas / polars / pyarrow write them by default: Parquet with snappy, zstd, gzip or lz4 pages,
    /// Feather with lz4 or zstd buffers.
    #[test]
    fn compressed_files_read() {
        use parquet::basic::{Compression, GzipLevel, ZstdLevel};
        let t = Table::new(
            vec!["x".into(), "y".into()],
            3,
            vec![1.5, -2.0, 0.25, 8.0, 3.0, -0.5],
            "t",
        );
        let sch = schema(&t.columns);
        let b = batch(&sch, &t).unwrap();
        let same = |p: &std::path::Path| {
            let back = load_source(p.to_str().unwrap(), 0, 0).unwrap();
            assert_eq!(back.data, t.data, "{}", p.display());
            let _ = std::fs::remove_file(p);
        };
        for (k, c) in [
            Compression::SNAPPY,
            Compression::ZSTD(ZstdLevel::default()),
            Compression::GZIP(GzipLevel::default()),
            Compression::LZ4_RAW,
        ]
        .into_iter()
        .enumerate()
        {
            let p = tmp(&format!("c{k}.parquet"));
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(c)
                .build();
            let mut w = parquet::arrow::ArrowWriter::try_new(
                File::create(&p).unwrap(),
                sch.clone(),
                Some(props),
            )
            .unwrap();
            w.write(&b).unwrap();
            w.close().unwrap();
            same(&p);
        }
        for (k, c) in [
            arrow_ipc::CompressionType::LZ4_FRAME,
            arrow_ipc::CompressionType::ZSTD,
        ]
        .into_iter()
        .enumerate()
        {
            let p = tmp(&format!("c{k}.feather"));
            let opts = arrow_ipc::writer::IpcWriteOptions::default()
                .try_with_compression(Some(c))
                .unwrap();
            let mut w = arrow_ipc::writer::FileWriter::try_new_with_options(
                File::create(&p).unwrap(),
                &sch,
                opts,
            )
            .unwrap();
            w.write(&b).unwrap();
            w.finish().unwrap();
            same(&p);
        }
    }

    #[test]
    fn nulls_are_missing_cells_and_text_columns_are_kept_aside() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("label", DataType::Utf8, false),
            Field::new("b", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![Some(1), Some(2), Some(3)])),
                Arc::new(StringArray::from(vec!["cat", "dog", "cat"])),
                Arc::new(Float64Array::from(vec![Some(0.5), None, Some(1.5)])),
            ],
        )
        .unwrap();
        let p = tmp("mixed.parquet");
        let f = File::create(&p).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let t = load_source(p.to_str().unwrap(), 0, 0).unwrap();
        assert_eq!(t.columns, ["a", "b"]);
        assert_eq!(t.data[..2], [1.0, 0.5]);
        assert!(t.data[3].is_nan());
        let e = t.check_finite().unwrap_err().to_string();
        assert!(e.contains("mixed.parquet") && e.contains("'b'"), "{e}");
        let e = t
            .select(Some(&["label".to_string()]), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'label'") && e.contains("cat"), "{e}");
        let (kept, _, dropped) = crate::data::drop_missing_rows(&t, None);
        assert_eq!((kept.rows, dropped), (2, 1));
        let _ = std::fs::remove_file(&p);
        // a file cut short is an error naming it
        let q = tmp("cut.parquet");
        std::fs::write(&q, b"PAR1 not really").unwrap();
        let e = load_source(q.to_str().unwrap(), 0, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.parquet") && e.contains("Parquet"), "{e}");
        let _ = std::fs::remove_file(&q);
    }
}
