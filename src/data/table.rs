//! The numeric table every reader returns and every writer takes.

use crate::data::{DataError, Result};

/// A dense numeric table, row-major (`rows x cols`).
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// Column names, `cols` of them.
    pub columns: Vec<String>,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns (`columns.len()`).
    pub cols: usize,
    /// Row-major values, `rows * cols` of them.
    pub data: Vec<f64>,
    /// Where the data came from (a file path or `toy:NAME`), for messages.
    pub source: String,
    /// Columns of a CSV that hold something other than numbers (a class name, say), left out of `columns`:
    /// [`Table::select`] accepts them only where they are dropped or not selected, and otherwise reports the
    /// first cell that is not a number.
    pub text: Vec<TextColumn>,
    /// Columns of a CSV with missing cells (empty, NA, NaN, null, ...), which hold NaN: the first such cell
    /// of each and their count, for [`Table::check_finite`]'s message ([`drop_missing_rows`] leaves the rows
    /// out instead).
    pub missing: Vec<MissingCells>,
}

/// The missing cells of one column of a CSV: the first (its line and text) and how many.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingCells {
    pub name: String,
    pub line: u64,
    pub value: String,
    pub count: usize,
}

/// The indices of the rows with no missing (NaN) cell in `x` nor in `c` (row for row).
pub fn complete_rows(x: &Table, c: Option<&Table>) -> Vec<usize> {
    let complete = |t: &Table, r: usize| t.row(r).iter().all(|v| !v.is_nan());
    (0..x.rows)
        .filter(|&r| complete(x, r) && c.is_none_or(|c| complete(c, r)))
        .collect()
}

/// The rows of `x` (and of its context `c`, row for row) with no missing (NaN) cell in either, and how many
/// rows were left out.
pub fn drop_missing_rows(x: &Table, c: Option<&Table>) -> (Table, Option<Table>, usize) {
    let keep = complete_rows(x, c);
    let gone = x.rows - keep.len();
    let strip = |t: &Table| {
        let mut k = t.take_rows(&keep);
        k.missing.clear();
        k
    };
    (strip(x), c.map(strip), gone)
}

/// A column left out of a [`Table`] because a cell of it is not a number: the first such cell.
#[derive(Clone, Debug, PartialEq)]
pub struct TextColumn {
    pub name: String,
    pub line: u64,
    pub value: String,
}

impl Table {
    /// Builds a table. Panics if `data.len() != rows * columns.len()` (a programming error).
    pub fn new(
        columns: Vec<String>,
        rows: usize,
        data: Vec<f64>,
        source: impl Into<String>,
    ) -> Table {
        let cols = columns.len();
        assert_eq!(
            data.len(),
            rows * cols,
            "Table::new: data has {} values, expected rows {} x cols {}",
            data.len(),
            rows,
            cols
        );
        Table {
            columns,
            rows,
            cols,
            data,
            source: source.into(),
            text: Vec::new(),
            missing: Vec::new(),
        }
    }

    /// The error for a text column the caller wanted as numbers.
    fn text_error(&self, t: &TextColumn) -> DataError {
        DataError::NotANumber {
            path: self.source.clone(),
            line: t.line,
            column: t.name.clone(),
            value: t.value.clone(),
        }
    }

    /// An error if a column holds text (a table used whole, with no selection).
    pub fn check_numeric(&self) -> Result<()> {
        match self.text.first() {
            Some(t) => Err(self.text_error(t)),
            None => Ok(()),
        }
    }

    /// Row `i` (panics if out of range, like slice indexing).
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// A new table with the given rows, in the given order (indices may repeat).
    pub fn take_rows(&self, idx: &[usize]) -> Table {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        let mut t = Table::new(self.columns.clone(), idx.len(), data, self.source.clone());
        t.missing = self.missing.clone();
        t
    }

    /// The columns of `self` followed by those of `other` (same number of rows).
    pub fn hcat(&self, other: &Table) -> Result<Table> {
        if self.rows != other.rows {
            return Err(DataError::InvalidArgument(format!(
                "cannot put {} ({} rows) beside {} ({} rows)",
                other.source, other.rows, self.source, self.rows
            )));
        }
        let mut data = Vec::with_capacity(self.rows * (self.cols + other.cols));
        for r in 0..self.rows {
            data.extend_from_slice(self.row(r));
            data.extend_from_slice(other.row(r));
        }
        let mut columns = self.columns.clone();
        columns.extend(other.columns.iter().cloned());
        let mut t = Table::new(columns, self.rows, data, self.source.clone());
        t.missing = self.missing.iter().chain(&other.missing).cloned().collect();
        Ok(t)
    }

    fn column_index(&self, name: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| DataError::UnknownColumn {
                name: name.to_string(),
                source_name: self.source.clone(),
                available: self.columns.join(", "),
            })
    }

    /// Keep only the `keep` columns (in the given order) if `Some`, then remove
    /// the `drop` columns. Unknown names are an error naming the source and
    /// listing the available columns; a name kept twice is an error; selecting
    /// zero columns is an error. A `drop` name that exists in the table but was
    /// not kept is ignored.
    pub fn select(&self, keep: Option<&[String]>, drop: &[String]) -> Result<Table> {
        let text = |n: &String| self.text.iter().find(|t| &t.name == n);
        if keep.is_none() {
            // every column is kept but the dropped ones: a text column must be among those
            if let Some(t) = self.text.iter().find(|t| !drop.contains(&t.name)) {
                return Err(self.text_error(t));
            }
        }
        let drop: Vec<String> = drop.iter().filter(|n| text(n).is_none()).cloned().collect();
        let mut idx: Vec<usize> = match keep {
            Some(names) => {
                let mut v = Vec::with_capacity(names.len());
                for n in names {
                    if let Some(t) = text(n) {
                        return Err(self.text_error(t));
                    }
                    let i = self.column_index(n)?;
                    if v.contains(&i) {
                        return Err(DataError::InvalidArgument(format!(
                            "column '{n}' of {} selected more than once",
                            self.source
                        )));
                    }
                    v.push(i);
                }
                v
            }
            None => (0..self.cols).collect(),
        };
        for n in &drop {
            let i = self.column_index(n)?;
            idx.retain(|&k| k != i);
        }
        if idx.is_empty() {
            return Err(DataError::NoColumns {
                source_name: self.source.clone(),
            });
        }
        let columns: Vec<String> = idx.iter().map(|&i| self.columns[i].clone()).collect();
        let mut data = Vec::with_capacity(self.rows * idx.len());
        for r in 0..self.rows {
            let row = self.row(r);
            data.extend(idx.iter().map(|&i| row[i]));
        }
        let mut t = Table::new(columns, self.rows, data, self.source.clone());
        t.missing = self
            .missing
            .iter()
            .filter(|m| t.columns.contains(&m.name))
            .cloned()
            .collect();
        Ok(t)
    }

    /// Error if the table has no rows, or any value is NaN/Inf (naming the
    /// 0-based row and the column).
    pub fn check_finite(&self) -> Result<()> {
        if self.rows == 0 {
            return Err(DataError::NoRows {
                source_name: self.source.clone(),
            });
        }
        // data is non-empty here only if cols > 0, so the divisions are safe
        if let Some(k) = self.data.iter().position(|v| !v.is_finite()) {
            let column = &self.columns[k % self.cols];
            if let Some(m) = self.missing.iter().find(|m| &m.name == column) {
                return Err(DataError::Missing {
                    path: self.source.clone(),
                    line: m.line,
                    column: m.name.clone(),
                    value: m.value.clone(),
                    rows: m.count,
                });
            }
            return Err(DataError::NonFiniteRow {
                source_name: self.source.clone(),
                row: k / self.cols,
                column: self.columns[k % self.cols].clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // (the readers are also checked through the source names that reach them)
    use crate::data::*;
    use std::fs::File;
    use std::path::Path;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A unique temp path whose file name ends with `suffix`.
    fn tmp(suffix: &str) -> PathBuf {
        let k = COUNTER.fetch_add(1, Ordering::SeqCst);
        std::env::temp_dir().join(format!(
            "nflow_data_test_{}_{}_{}",
            std::process::id(),
            k,
            suffix
        ))
    }

    fn write_text(suffix: &str, text: &str) -> PathBuf {
        let p = tmp(suffix);
        std::fs::write(&p, text).expect("write temp file");
        p
    }

    /// The error of reading `p` and using every column.
    fn err_of(p: &Path) -> String {
        let e = read_csv(p)
            .and_then(|t| t.select(None, &[]))
            .and_then(|t| t.check_finite())
            .expect_err("expected an error")
            .to_string();
        let _ = std::fs::remove_file(p);
        e
    }

    fn fname(p: &Path) -> String {
        p.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn sample_table() -> Table {
        Table::new(
            vec!["a".into(), "b".into(), "c".into()],
            4,
            vec![
                0.1,
                -2.5,
                1e-300, //
                1.0 / 3.0,
                7.0,
                -0.0, //
                123_456_789.123_456_79,
                2.0f64.sqrt(),
                5e17, //
                -1.5,
                0.0,
                1e300,
            ],
            "mem",
        )
    }

    #[test]
    fn table_basics_and_select() {
        let t = sample_table();
        assert_eq!(t.row(1), &[1.0 / 3.0, 7.0, -0.0]);
        let s = t.take_rows(&[3, 0]);
        assert_eq!(s.rows, 2);
        assert_eq!(s.row(0), t.row(3));
        assert_eq!(s.row(1), t.row(0));
        let keep = vec!["c".to_string(), "a".to_string()];
        let k = t.select(Some(&keep), &[]).unwrap();
        assert_eq!(k.columns, vec!["c", "a"]);
        assert_eq!(k.cols, 2);
        assert_eq!(k.row(2), &[5e17, 123_456_789.123_456_79]);
        let d = t.select(None, &["b".to_string()]).unwrap();
        assert_eq!(d.columns, vec!["a", "c"]);
        assert_eq!(d.row(0), &[0.1, 1e-300]);
        let kd = t.select(Some(&keep), &["a".to_string()]).unwrap();
        assert_eq!(kd.columns, vec!["c"]);
        let e = t
            .select(None, &["foo".to_string()])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "unknown column 'foo' in mem (columns: a, b, c)");
        let e = t
            .select(Some(&["zz".to_string()]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'zz'") && e.contains("mem") && e.contains("a, b, c"),
            "{e}"
        );
        let all: Vec<String> = t.columns.clone();
        let e = t.select(None, &all).unwrap_err().to_string();
        assert!(e.contains("no columns"), "{e}");
        let e = t.select(Some(&[]), &[]).unwrap_err().to_string();
        assert!(e.contains("no columns"), "{e}");
    }

    #[test]
    fn check_finite_names_row_and_column() {
        let mut t = sample_table();
        t.check_finite().unwrap();
        t.data[2 * 3 + 1] = f64::NAN;
        let e = t.check_finite().unwrap_err().to_string();
        assert!(
            e.contains("row 2 (0-based)") && e.contains("column 'b'"),
            "{e}"
        );
        let empty = Table::new(vec!["a".into()], 0, vec![], "empty.csv");
        let e = empty.check_finite().unwrap_err().to_string();
        assert_eq!(e, "empty.csv: no data rows");
    }

    #[test]
    fn csv_round_trip_plain_and_gz() {
        let t = sample_table();
        for suffix in ["rt.csv", "rt.csv.gz"] {
            let p = tmp(suffix);
            write_csv(&p, &t).unwrap();
            let raw = std::fs::read(&p).unwrap();
            assert_eq!(
                raw[..2] == [0x1f, 0x8b],
                suffix.ends_with(".gz"),
                "{suffix}"
            );
            let r = read_csv(&p).unwrap();
            assert_eq!(r.columns, t.columns);
            assert_eq!(r.rows, t.rows);
            assert_eq!(r.cols, t.cols);
            // bit-exact round trip (including -0.0)
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&r.data), bits(&t.data), "{suffix}");
            assert_eq!(r.source, p.display().to_string());
            let _ = std::fs::remove_file(&p);
        }
    }

    #[test]
    fn csv_gzip_detected_by_magic_not_extension() {
        let t = sample_table();
        let gz = tmp("magic.csv.gz");
        write_csv(&gz, &t).unwrap();
        let plain_name = tmp("actually_gz.csv");
        std::fs::copy(&gz, &plain_name).unwrap();
        assert_eq!(read_csv(&plain_name).unwrap().data, t.data);
        let _ = std::fs::remove_file(&gz);
        let _ = std::fs::remove_file(&plain_name);
    }

    #[test]
    fn csv_trims_whitespace_and_counts_lines() {
        let p = write_text("trim.csv", " a , b \n 1 ,2\n\n3,  4.5e0 \n");
        let t = read_csv(&p).unwrap();
        assert_eq!(t.columns, vec!["a", "b"]);
        assert_eq!(t.data, vec![1.0, 2.0, 3.0, 4.5]);
        let _ = std::fs::remove_file(&p);
        // blank line 3 still counts in line numbers
        let p = write_text("lines.csv", "a,b\n1,2\n\n3,x\n");
        let e = err_of(&p);
        assert!(e.contains(&fname(&p)), "{e}");
        assert!(e.contains("line 4, column 'b': 'x' is not a number"), "{e}");
        let p = write_text("crlf.csv", "a,b\r\n1,2\r\n\r\n\r\n3,x\r\n");
        let e = err_of(&p);
        assert!(e.contains("line 5, column 'b': 'x' is not a number"), "{e}");
        // a quoted field spanning two lines: the next record's line is still right
        let p = write_text("multi.csv", "a,b\n\"1\n\",2\n3,y\n");
        let e = err_of(&p);
        assert!(e.contains("line 4, column 'b': 'y' is not a number"), "{e}");
    }

    #[test]
    fn csv_error_not_a_number() {
        let p = write_text("nan.csv", "x,y,z\n1,2,3\n4,abc,6\n");
        let e = err_of(&p);
        assert!(e.contains(&fname(&p)), "{e}");
        assert!(
            e.ends_with("line 3, column 'y': 'abc' is not a number"),
            "{e}"
        );
        let p = write_text("textcell.csv", "x,y\n1,1\n1,-\n1,a\n");
        let e = err_of(&p);
        assert!(e.contains("line 4, column 'y': 'a' is not a number"), "{e}");
    }

    /// A column of text (class names) is left out of the table: it can be dropped or left unselected, and
    /// selecting it (or every column) names its first cell that is not a number. The numeric columns keep
    /// every row, also those before the first text cell.
    #[test]
    fn csv_text_columns_can_be_dropped_or_left_unselected() {
        let p = write_text(
            "text.csv",
            "a,label,b
1,2,3
4,cat,6
7,dog,9
",
        );
        let t = read_csv(&p).unwrap();
        assert_eq!(t.columns, ["a", "b"]);
        assert_eq!(t.data, [1.0, 3.0, 4.0, 6.0, 7.0, 9.0]);
        let d = t.select(None, &["label".into()]).unwrap();
        assert_eq!(
            (d.columns.clone(), d.data.clone()),
            (t.columns.clone(), t.data.clone())
        );
        let k = t.select(Some(&["b".into()]), &[]).unwrap();
        assert_eq!(k.data, [3.0, 6.0, 9.0]);
        for e in [
            t.select(None, &[]).unwrap_err(),
            t.select(Some(&["a".into(), "label".into()]), &[])
                .unwrap_err(),
            t.check_numeric().unwrap_err(),
        ] {
            assert!(
                e.to_string()
                    .ends_with("line 3, column 'label': 'cat' is not a number"),
                "{e}"
            );
        }
        // a misspelt drop is still an error
        let e = t
            .select(None, &["label".into(), "lable".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lable"), "{e}");
        let _ = std::fs::remove_file(&p);
    }

    /// Empty and NA-like cells are missing values: reported with the column's first one (line, text) and
    /// their count when the rows are used, or their rows left out (data and context together).
    #[test]
    fn csv_missing_cells_are_named_or_their_rows_left_out() {
        let p = write_text(
            "miss.csv",
            "x,y,c\n1,2,0\n,3,1\n4,NA,0\n5,6,null\n7,nan,1\n8,9,?\n",
        );
        let e = err_of(&p);
        assert!(e.contains("line 3, column 'x': missing value ('';"), "{e}");
        let p = write_text(
            "miss.csv",
            "x,y,c\n1,2,0\n,3,1\n4,NA,0\n5,6,null\n7,nan,1\n8,9,?\n",
        );
        let t = read_csv(&p).unwrap();
        let y = t.select(Some(&["y".into()]), &[]).unwrap();
        let e = y.check_finite().unwrap_err().to_string();
        assert!(
            e.contains("line 4, column 'y': missing value ('NA'; 2 row(s)"),
            "{e}"
        );
        let (x, c, gone) = drop_missing_rows(
            &t.select(Some(&["x".into(), "y".into()]), &[]).unwrap(),
            Some(&t.select(Some(&["c".into()]), &[]).unwrap()),
        );
        assert_eq!(gone, 5);
        assert_eq!(
            (x.data.clone(), c.unwrap().data),
            (vec![1.0, 2.0], vec![0.0])
        );
        x.check_finite().unwrap();
        let _ = std::fs::remove_file(&p);
    }

    /// Binary table formats are read as what they are: a truncated one is an error naming its format.
    #[test]
    fn parquet_and_arrow_files_are_named() {
        for (magic, kind) in [
            (&b"PAR1\x15\x04"[..], "Parquet file"),
            (b"ARROW1\0\0", "Arrow IPC"),
        ] {
            let p = tmp("t.bin");
            std::fs::write(&p, magic).unwrap();
            let e = read_csv(&p).unwrap_err().to_string();
            assert!(e.contains(&fname(&p)) && e.contains(kind), "{e}");
            let _ = std::fs::remove_file(&p);
        }
    }

    #[test]
    fn csv_error_non_finite() {
        for (k, bad) in ["inf", "-Infinity", "1e400"].iter().enumerate() {
            let p = write_text(&format!("inf{k}.csv"), &format!("x,y\n1,2\n3,4\n{bad},5\n"));
            let e = err_of(&p);
            assert!(e.contains(&fname(&p)), "{e}");
            assert!(
                e.ends_with("line 4, column 'x': value is NaN/Inf (not allowed)"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn csv_error_field_count() {
        let p = write_text("fields.csv", "a,b,c\n1,2,3\n1,2\n");
        let e = err_of(&p);
        assert!(e.contains(&fname(&p)), "{e}");
        assert!(e.ends_with("line 3: expected 3 fields, found 2"), "{e}");
        let p = write_text("fields2.csv", "a,b\n1,2,3\n");
        let e = err_of(&p);
        assert!(e.ends_with("line 2: expected 2 fields, found 3"), "{e}");
    }

    #[test]
    fn csv_error_empty_and_no_rows() {
        let p = write_text("empty.csv", "");
        let e = err_of(&p);
        assert!(
            e.contains(&fname(&p)) && e.ends_with(": empty file (no header)"),
            "{e}"
        );
        let p = write_text("header_only.csv", "a,b,c\n");
        let e = err_of(&p);
        assert!(
            e.contains(&fname(&p)) && e.ends_with(": no data rows"),
            "{e}"
        );
        let p = write_text("dup.csv", "a,b,a\n1,2,3\n");
        let e = err_of(&p);
        assert!(e.contains("line 1: duplicate column name 'a'"), "{e}");
    }

    #[test]
    fn csv_error_missing_file() {
        let p = tmp("does_not_exist.csv");
        let e = read_csv(&p).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("cannot open {}: No such file or directory", p.display())
        );
        let e = load_source(&p.display().to_string(), 10, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot open ") && e.contains(&fname(&p)),
            "{e}"
        );
        let e = load_source("moons", 10, 0).unwrap_err().to_string();
        assert!(
            e.contains("cannot open moons") && e.contains("toy:moons"),
            "{e}"
        );
    }

    #[test]
    fn csv_error_corrupt_gzip() {
        let t = sample_table();
        let p = tmp("corrupt.csv.gz");
        write_csv(&p, &t).unwrap();
        let mut raw = std::fs::read(&p).unwrap();
        // keep the magic and header, garble the deflate stream
        for b in raw.iter_mut().skip(12) {
            *b ^= 0x5a;
        }
        std::fs::write(&p, &raw).unwrap();
        let e = err_of(&p);
        assert!(
            e.contains(&fname(&p)) && e.contains("corrupt gzip stream"),
            "{e}"
        );
        // truncated gzip
        let p = tmp("trunc.csv.gz");
        write_csv(&p, &t).unwrap();
        let raw = std::fs::read(&p).unwrap();
        std::fs::write(&p, &raw[..raw.len() / 2]).unwrap();
        let e = err_of(&p);
        assert!(
            e.contains(&fname(&p)) && e.contains("corrupt gzip stream"),
            "{e}"
        );
    }

    #[test]
    fn magic04_shared_file() {
        let p = Path::new("/work/shared/data/tabular/magic04.csv.gz");
        if !p.exists() {
            eprintln!("skipping: {} absent", p.display());
            return;
        }
        let t = read_csv(p).unwrap();
        assert_eq!((t.rows, t.cols), (19020, 11));
        assert!(t.columns.iter().any(|c| c == "class"));
        let s = t.select(None, &["class".to_string()]).unwrap();
        assert_eq!((s.rows, s.cols), (19020, 10));
        assert!(!s.columns.iter().any(|c| c == "class"));
        Standardizer::fit(&s).unwrap();
        let via_source = load_source(&p.display().to_string(), 0, 0).unwrap();
        assert_eq!(via_source, t);
    }

    #[test]
    fn npy_round_trip_f64() {
        let t = sample_table();
        let p = tmp("rt.npy");
        write_npy(&p, &t).unwrap();
        let r = read_npy(&p).unwrap();
        assert_eq!(r.columns, vec!["x0", "x1", "x2"]);
        assert_eq!((r.rows, r.cols), (4, 3));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&r.data), bits(&t.data));
        let via_source = load_source(&p.display().to_string(), 0, 0).unwrap();
        assert_eq!(via_source.data, t.data);
        let _ = std::fs::remove_file(&p);
    }

    fn write_npy_with<T: npyz::AutoSerialize + Copy>(
        p: &Path,
        shape: &[u64],
        order: npyz::Order,
        vals: &[T],
    ) {
        use npyz::WriterBuilder;
        let f = std::io::BufWriter::new(File::create(p).unwrap());
        let mut w = npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(shape)
            .order(order)
            .writer(f)
            .begin_nd()
            .unwrap();
        w.extend(vals.iter().copied()).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn npy_f32_c_and_fortran() {
        let p = tmp("f32.npy");
        write_npy_with(
            &p,
            &[2, 3],
            npyz::Order::C,
            &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.5],
        );
        let r = read_npy(&p).unwrap();
        assert_eq!((r.rows, r.cols), (2, 3));
        assert_eq!(r.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        // Fortran order: column-major storage of the same logical matrix
        write_npy_with(
            &p,
            &[2, 3],
            npyz::Order::Fortran,
            &[1.0f32, 4.0, 2.0, 5.0, 3.0, 6.5],
        );
        let r = read_npy(&p).unwrap();
        assert_eq!(r.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        write_npy_with(
            &p,
            &[3, 2],
            npyz::Order::Fortran,
            &[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0],
        );
        let r = read_npy(&p).unwrap();
        assert_eq!(r.data, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn npy_errors() {
        let p = tmp("bad.npy");
        // a header nesting 80 braces (found by fuzzing: the header parser backtracked exponentially)
        let dict = format!("{{'descr': {}'<f8', 'shape': (3, 2), }}", "{".repeat(80));
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let t0 = std::time::Instant::now();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("nests brackets 82 deep"), "{e}");
        assert!(t0.elapsed().as_secs_f64() < 1.0);
        write_npy_with(&p, &[4], npyz::Order::C, &[1.0f64, 2.0, 3.0, 4.0]);
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains(&fname(&p)), "{e}");
        assert!(
            e.contains("expected a 2-D array of f32 or f64, found a 1-D array"),
            "{e}"
        );
        write_npy_with(&p, &[2, 2], npyz::Order::C, &[1i64, 2, 3, 4]);
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(
            e.contains("expected a 2-D array of f32 or f64") && e.contains("i8"),
            "{e}"
        );
        write_npy_with(
            &p,
            &[2, 2],
            npyz::Order::C,
            &[1.0f64, 2.0, f64::INFINITY, 4.0],
        );
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains(&fname(&p)), "{e}");
        assert!(
            e.contains("row 1 (0-based), column 'x0'") && e.contains("NaN/Inf"),
            "{e}"
        );
        write_npy_with(&p, &[0, 2], npyz::Order::C, &[] as &[f64]);
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.ends_with("no data rows"), "{e}");
        std::fs::write(&p, b"this is not numpy").unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(
            e.contains(&fname(&p)) && e.contains("not a valid .npy"),
            "{e}"
        );
        let _ = std::fs::remove_file(&p);
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot open") && e.contains(&fname(&p)),
            "{e}"
        );
    }

    #[test]
    fn load_source_toy_forms() {
        let a = load_source("toy:moons", 100, 4).unwrap();
        assert_eq!(a.rows, 100);
        assert_eq!(a.source, "toy:moons");
        assert_eq!(a, toy("moons", 100, 4).unwrap());
        let b = load_source("toy:rings:37", 100, 4).unwrap();
        assert_eq!(b.rows, 37);
        let e = load_source("toy:foo", 10, 0).unwrap_err().to_string();
        assert!(
            e.starts_with("unknown toy data set 'foo' (known: moons, circles"),
            "{e}"
        );
        let e = load_source("toy:moons:abc", 10, 0).unwrap_err().to_string();
        assert!(e.contains("toy:moons:abc") && e.contains("'abc'"), "{e}");
        let e = load_source("toy:moons:0", 10, 0).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn split_reproducible_disjoint_covering() {
        let (tr, va) = split_indices(100, 0.2, 42).unwrap();
        assert_eq!(va.len(), 20);
        assert_eq!(tr.len(), 80);
        let (tr2, va2) = split_indices(100, 0.2, 42).unwrap();
        assert_eq!((&tr, &va), (&tr2, &va2));
        let (tr3, _) = split_indices(100, 0.2, 43).unwrap();
        assert_ne!(tr, tr3);
        let mut all: Vec<usize> = tr.iter().chain(&va).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        // shuffled, not just a tail split
        assert_ne!(va, (80..100).collect::<Vec<_>>());
        // at least one validation row, at least one training row
        assert_eq!(split_indices(10, 0.01, 0).unwrap().1.len(), 1);
        assert_eq!(split_indices(2, 0.9, 0).unwrap().0.len(), 1);
        assert_eq!(split_indices(10, 0.0, 0).unwrap().1.len(), 0);
        assert_eq!(split_indices(1, 0.5, 0).unwrap(), (vec![0], vec![]));
        assert_eq!(split_indices(0, 0.5, 0).unwrap(), (vec![], vec![]));
        assert_eq!(split_indices(7, 0.5, 0).unwrap().1.len(), 4); // round(3.5)
        for bad in [1.0, -0.1, f64::NAN, 2.0] {
            let e = split_indices(10, bad, 0).unwrap_err().to_string();
            assert!(e.contains("[0, 1)"), "{e}");
        }
    }

    #[test]
    fn standardizer_round_trip_and_log_det() {
        let t = Table::new(
            vec!["u".into(), "v".into()],
            4,
            vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0],
            "mem",
        );
        let s = Standardizer::fit(&t).unwrap();
        assert!((s.mean[0] - 2.5).abs() < 1e-12 && (s.mean[1] - 25.0).abs() < 1e-12);
        let sd0 = 1.25f64.sqrt(); // population std of 1..4
        assert!((s.std[0] - sd0).abs() < 1e-12, "{:?}", s.std);
        assert!((s.std[1] - 10.0 * sd0).abs() < 1e-12, "{:?}", s.std);
        let mut d = t.data.clone();
        s.apply(&mut d);
        for c in 0..2 {
            let col: Vec<f64> = (0..4).map(|r| d[r * 2 + c]).collect();
            let m = col.iter().sum::<f64>() / 4.0;
            let v = col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 4.0;
            assert!(m.abs() < 1e-12 && (v - 1.0).abs() < 1e-12);
        }
        s.invert(&mut d);
        for (a, b) in d.iter().zip(&t.data) {
            assert!((a - b).abs() < 1e-12);
        }
        let want = -(sd0.ln() + (10.0 * sd0).ln());
        assert!((s.log_abs_det() - want).abs() < 1e-12);
        let id = Standardizer::identity(3);
        assert_eq!(id.log_abs_det(), 0.0);
        let mut x = vec![1.5, -2.0, 3.0];
        id.apply(&mut x);
        assert_eq!(x, vec![1.5, -2.0, 3.0]);
    }

    #[test]
    fn standardizer_errors() {
        let t = Table::new(
            vec!["u".into(), "k".into()],
            3,
            vec![1.0, 0.1, 2.0, 0.1, 3.0, 0.1],
            "c.csv",
        );
        let e = Standardizer::fit(&t).unwrap_err().to_string();
        assert!(
            e.contains("c.csv") && e.contains("column 'k'") && e.contains("constant"),
            "{e}"
        );
        let one = Table::new(vec!["u".into()], 1, vec![5.0], "one.csv");
        let e = Standardizer::fit(&one).unwrap_err().to_string();
        assert!(e.contains("column 'u'"), "{e}");
        let empty = Table::new(vec!["u".into()], 0, vec![], "e.csv");
        assert!(Standardizer::fit(&empty).is_err());
        let nan = Table::new(vec!["u".into()], 2, vec![1.0, f64::NAN], "n.csv");
        let e = Standardizer::fit(&nan).unwrap_err().to_string();
        assert!(e.contains("row 1 (0-based)"), "{e}");
        // values near the top of f64's range are no constant column: their spread is found without overflow
        let big = Table::new(vec!["b".into()], 3, vec![1e300, -1e300, 5e299], "big.csv");
        let s = Standardizer::fit(&big).unwrap();
        let want_mean = (1e300 - 1e300 + 5e299) / 3.0;
        assert!((s.mean[0] - want_mean).abs() < 1e286, "{}", s.mean[0]);
        assert!((s.std[0] / 8.498e299 - 1.0).abs() < 1e-3, "{}", s.std[0]);
        // even at the very top of the range
        let huge = Table::new(vec!["h".into()], 2, vec![f64::MAX, -f64::MAX], "h.csv");
        let s = Standardizer::fit(&huge).unwrap();
        assert_eq!((s.mean[0], s.std[0]), (0.0, f64::MAX));
    }
}
