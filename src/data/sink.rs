//! Writing a table chunk by chunk: CSV (gzipped for a `.gz` name), NPY, Parquet, Arrow IPC (Feather v2), or CSV
//! on standard output. Memory
//! stays bounded whatever the number of rows, and a file appears whole or not at all: it is written under a
//! temporary name beside the target, synced, and renamed into place only when every row is in; a run that
//! fails or is stopped half-way leaves the target as it was.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use super::open::path_str;
use super::Table;
use crate::data::{io_msg, DataError, Result};

enum Out {
    Csv(csv::Writer<BufWriter<File>>),
    CsvGz(csv::Writer<GzEncoder<BufWriter<File>>>),
    Stdout(csv::Writer<std::io::StdoutLock<'static>>),
    Npy(npyz::NpyWriter<f64, BufWriter<File>>),
    /// A row group per chunk.
    #[cfg(feature = "columnar")]
    Parquet(
        Box<parquet::arrow::ArrowWriter<BufWriter<File>>>,
        arrow_schema::SchemaRef,
    ),
    /// A record batch per chunk.
    #[cfg(feature = "columnar")]
    Arrow(
        Box<arrow_ipc::writer::FileWriter<BufWriter<File>>>,
        arrow_schema::SchemaRef,
    ),
}

/// A table being written; [`TableSink::finish`] puts the file in place.
pub struct TableSink {
    /// `None` once finished (or after a failure).
    out: Option<Out>,
    /// The file being written: its temporary path, its final path and a handle to sync it.
    file: Option<(PathBuf, PathBuf, File)>,
    /// How messages name the output.
    what: String,
    cols: usize,
    /// The rows the caller will write, when known: with the first chunk's size per row, the file's size is
    /// estimated and checked against the disk's free space before the rest is written.
    rows: Option<usize>,
    /// Standard output's reader went away (`nflow sample | head`): the rest is not written.
    closed: bool,
}

/// Whether the output name asks for gzip.
pub(crate) fn is_gz_name(path: &Path) -> bool {
    path.to_string_lossy().to_ascii_lowercase().ends_with(".gz")
}

impl TableSink {
    /// A CSV file (gzipped when the name ends in `.gz`) with the header `columns`; `rows`, when known, lets
    /// the first chunk's size check that the whole file fits on the disk.
    pub fn csv(path: &Path, columns: &[String], rows: Option<usize>) -> Result<TableSink> {
        let (tmp, file, what) = Self::temp_file(path)?;
        let w = BufWriter::with_capacity(1 << 16, file.try_clone().map_err(werr(&what))?);
        let out = match is_gz_name(path) {
            true => Out::CsvGz(csv::Writer::from_writer(GzEncoder::new(
                w,
                Compression::default(),
            ))),
            false => Out::Csv(csv::Writer::from_writer(w)),
        };
        let mut s = TableSink {
            out: Some(out),
            file: Some((tmp, path.to_path_buf(), file)),
            what,
            cols: columns.len(),
            rows,
            closed: false,
        };
        s.header(columns)?;
        Ok(s)
    }

    /// CSV with the header `columns` on standard output.
    pub fn stdout(columns: &[String]) -> Result<TableSink> {
        let mut s = TableSink {
            out: Some(Out::Stdout(csv::Writer::from_writer(
                std::io::stdout().lock(),
            ))),
            file: None,
            what: "standard output".into(),
            cols: columns.len(),
            rows: None,
            closed: false,
        };
        s.header(columns)?;
        Ok(s)
    }

    /// A 2-D f64 `.npy` array of `rows x cols` (column names are not stored; the shape is written first, so
    /// exactly `rows` rows must come).
    pub fn npy(path: &Path, rows: usize, cols: usize) -> Result<TableSink> {
        use npyz::WriterBuilder;
        let (tmp, file, what) = Self::temp_file(path)?;
        let bytes = (rows as u128 * cols as u128).saturating_mul(8);
        if let Err(msg) = fits_on_disk(path, bytes, rows) {
            let _ = std::fs::remove_file(&tmp);
            return Err(DataError::Write { path: what, msg });
        }
        let w = BufWriter::with_capacity(1 << 16, file.try_clone().map_err(werr(&what))?);
        let npy = npyz::WriteOptions::<f64>::new()
            .default_dtype()
            .shape(&[rows as u64, cols as u64])
            .writer(w)
            .begin_nd()
            .map_err(werr(&what))?;
        Ok(TableSink {
            out: Some(Out::Npy(npy)),
            file: Some((tmp, path.to_path_buf(), file)),
            what,
            cols,
            rows: None,
            closed: false,
        })
    }

    /// A Parquet file (`arrow: false`; snappy-compressed) or an Arrow IPC file (Feather v2) of f64 columns: in
    /// a build without the `columnar` feature, an error naming the format.
    #[cfg(not(feature = "columnar"))]
    pub fn columnar(path: &Path, _columns: &[String], arrow: bool) -> Result<TableSink> {
        Err(DataError::Write {
            path: path_str(path),
            msg: format!(
                "this build of nflow (without the columnar feature) writes no {} files",
                if arrow { "Arrow" } else { "Parquet" }
            ),
        })
    }

    /// A Parquet file (`arrow: false`; snappy-compressed) or an Arrow IPC file (Feather v2) of f64 columns.
    #[cfg(feature = "columnar")]
    pub fn columnar(path: &Path, columns: &[String], arrow: bool) -> Result<TableSink> {
        let (tmp, file, what) = Self::temp_file(path)?;
        let w = BufWriter::with_capacity(1 << 16, file.try_clone().map_err(werr(&what))?);
        let schema = super::columnar::schema(columns);
        let out = if arrow {
            arrow_ipc::writer::FileWriter::try_new(w, &schema)
                .map(|f| Out::Arrow(Box::new(f), schema))
                .map_err(|e| e.to_string())
        } else {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build();
            parquet::arrow::ArrowWriter::try_new(w, schema.clone(), Some(props))
                .map(|f| Out::Parquet(Box::new(f), schema))
                .map_err(|e| e.to_string())
        };
        let out = match out {
            Ok(o) => o,
            Err(msg) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(DataError::Write { path: what, msg });
            }
        };
        Ok(TableSink {
            out: Some(out),
            file: Some((tmp, path.to_path_buf(), file)),
            what,
            cols: columns.len(),
            rows: None,
            closed: false,
        })
    }

    /// By the name's ending: `.npy`, `.parquet`, `.arrow` / `.feather`, or `.csv` / `.csv.gz`; any other is an
    /// error naming the file.
    pub fn for_path(path: &Path, columns: &[String], rows: usize) -> Result<TableSink> {
        let name = path.to_string_lossy().to_lowercase();
        if name.ends_with(".npy") {
            Self::npy(path, rows, columns.len())
        } else if name.ends_with(".parquet") {
            Self::columnar(path, columns, false)
        } else if name.ends_with(".arrow") || name.ends_with(".feather") {
            Self::columnar(path, columns, true)
        } else if name.ends_with(".csv") || name.ends_with(".csv.gz") {
            Self::csv(path, columns, Some(rows))
        } else {
            Err(DataError::Write {
                path: path_str(path),
                msg: "unknown output format (use .csv, .csv.gz, .npy, .parquet or .arrow)".into(),
            })
        }
    }

    /// Standard output's reader has gone: nothing more will be written (stop producing rows).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Append the rows of `t` (as many columns as the header).
    pub fn push(&mut self, t: &Table) -> Result<()> {
        assert_eq!(
            t.cols, self.cols,
            "a chunk with other columns than the header"
        );
        if self.closed {
            return Ok(());
        }
        let (r, gz) = match self.out.as_mut() {
            Some(Out::Npy(w)) => (
                w.extend(t.data.iter().copied())
                    .map(|_| 0)
                    .map_err(|e| io_fail(&e)),
                false,
            ),
            #[cfg(feature = "columnar")]
            Some(Out::Parquet(w, schema)) => (
                super::columnar::batch(schema, t)
                    .map_err(|e| e.to_string())
                    .and_then(|b| w.write(&b).map_err(|e| e.to_string()))
                    .map(|_| 0)
                    .map_err(|msg| Fail { msg, pipe: false }),
                false,
            ),
            #[cfg(feature = "columnar")]
            Some(Out::Arrow(w, schema)) => (
                super::columnar::batch(schema, t)
                    .and_then(|b| w.write(&b))
                    .map(|_| 0)
                    .map_err(|e| Fail {
                        msg: e.to_string(),
                        pipe: false,
                    }),
                false,
            ),
            Some(Out::Csv(w)) => (csv_rows(w, t), false),
            Some(Out::CsvGz(w)) => (csv_rows(w, t), true),
            Some(Out::Stdout(w)) => (csv_rows(w, t), false),
            None => (
                Err(Fail {
                    msg: "already finished".into(),
                    pipe: false,
                }),
                false,
            ),
        };
        let r = r.and_then(|chars| {
            // the first chunk tells the text's size per row: will the whole file fit?
            match (self.rows.take(), &self.file) {
                (Some(rows), Some((_, path, _))) if t.rows > 0 => {
                    let per_row = (chars + t.rows * self.cols) as u128 / t.rows as u128;
                    // gzip packs digits about 2.5x; a quarter is surely no more
                    let bytes = (rows as u128).saturating_mul(per_row) / if gz { 4 } else { 1 };
                    fits_on_disk(path, bytes, rows).map_err(|msg| Fail { msg, pipe: false })
                }
                (rows, _) => {
                    self.rows = rows;
                    Ok(())
                }
            }
        });
        self.check(r)
    }

    /// Write what is left, sync the file and rename it into place (standard output: flush).
    pub fn finish(mut self) -> Result<()> {
        let what = self.what.clone();
        let r = match self.out.take() {
            Some(Out::Npy(w)) => w.finish().map_err(|e| io_fail(&e)),
            #[cfg(feature = "columnar")]
            Some(Out::Parquet(w, _)) => w.close().map(|_| ()).map_err(|e| Fail {
                msg: e.to_string(),
                pipe: false,
            }),
            #[cfg(feature = "columnar")]
            Some(Out::Arrow(mut w, _)) => w
                .finish()
                .and_then(|_| w.into_inner().map(|_| ()))
                .map_err(|e| Fail {
                    msg: e.to_string(),
                    pipe: false,
                }),
            Some(Out::Csv(w)) => w.into_inner().map(|_| ()).map_err(|e| io_fail(e.error())),
            Some(Out::CsvGz(w)) => w
                .into_inner()
                .map_err(|e| io_fail(e.error()))
                .and_then(|gz| gz.finish().map_err(|e| io_fail(&e)))
                .and_then(|b| b.into_inner().map(|_| ()).map_err(|e| io_fail(e.error()))),
            Some(Out::Stdout(mut w)) => w.flush().map_err(|e| io_fail(&e)),
            None => Ok(()),
        };
        self.check(r)?;
        if let Some((tmp, path, file)) = self.file.take() {
            let done = file
                .sync_all()
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| DataError::Write {
                    path: what,
                    msg: io_msg(&e),
                });
            if done.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            done?;
            // the rename itself on disk (where the system lets a folder be synced)
            let _ = File::open(folder(&path)).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// A new temporary file beside `path`, created now (so an unwritable folder is found before any work).
    fn temp_file(path: &Path) -> Result<(PathBuf, File, String)> {
        let what = path_str(path);
        if path.is_dir() {
            return Err(DataError::Write {
                path: what,
                msg: "is a folder".into(),
            });
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| DataError::Write {
                path: what.clone(),
                msg: "not a file name".into(),
            })?;
        let prefix = format!(".{name}.tmp-");
        // temporary files of runs that died half-way (killed: no chance to remove their own)
        if let Ok(entries) = std::fs::read_dir(folder(path)) {
            for e in entries.flatten() {
                let dead = e
                    .file_name()
                    .to_str()
                    .and_then(|n| super::pid_suffix(n, &prefix));
                if dead.is_some_and(|pid| !super::process_alive(pid)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let (tmp, file) = super::open::temp_file_beside(path).map_err(werr(&what))?;
        Ok((tmp, file, what))
    }

    /// A write's outcome: standard output's closed pipe ends the output quietly, any other failure is an
    /// error naming the output (and the temporary file goes).
    fn check(&mut self, r: std::result::Result<(), Fail>) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(f) if f.pipe && self.file.is_none() => {
                self.closed = true;
                Ok(())
            }
            Err(Fail { msg, .. }) => {
                self.out = None;
                if let Some((tmp, _, _)) = self.file.take() {
                    let _ = std::fs::remove_file(tmp);
                }
                Err(DataError::Write {
                    path: self.what.clone(),
                    msg,
                })
            }
        }
    }

    fn header(&mut self, columns: &[String]) -> Result<()> {
        let r = match self.out.as_mut() {
            Some(Out::Csv(w)) => w.write_record(columns).map_err(csv_fail),
            Some(Out::CsvGz(w)) => w.write_record(columns).map_err(csv_fail),
            Some(Out::Stdout(w)) => w.write_record(columns).map_err(csv_fail),
            _ => Ok(()),
        };
        self.check(r)
    }
}

impl Drop for TableSink {
    /// Not finished: the temporary file goes, the target stays as it was.
    fn drop(&mut self) {
        if let Some((tmp, _, _)) = self.file.take() {
            self.out = None;
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// A failed write: its message, and whether the reader of a pipe went away.
struct Fail {
    msg: String,
    pipe: bool,
}

fn io_fail(e: &std::io::Error) -> Fail {
    Fail {
        msg: io_msg(e),
        pipe: e.kind() == std::io::ErrorKind::BrokenPipe,
    }
}

fn werr(what: &str) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |e| DataError::Write {
        path: what.to_string(),
        msg: io_msg(&e),
    }
}

fn csv_fail(e: csv::Error) -> Fail {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io_fail(&io),
        other => Fail {
            msg: format!("{other:?}"),
            pipe: false,
        },
    }
}

/// The rows of `t`, values in Rust's shortest round-trip formatting of f64; the characters of the values.
fn csv_rows<W: Write>(w: &mut csv::Writer<W>, t: &Table) -> std::result::Result<usize, Fail> {
    let mut buf: Vec<String> = Vec::with_capacity(t.cols);
    let mut chars = 0;
    for r in 0..t.rows {
        buf.clear();
        buf.extend(t.row(r).iter().map(|v| format!("{v}")));
        chars += buf.iter().map(String::len).sum::<usize>();
        w.write_record(&buf).map_err(csv_fail)?;
    }
    Ok(chars)
}

/// The folder a file is written in (`.` for a bare name).
fn folder(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Bytes free to this user on the disk holding `path`'s folder (`None` where the system does not say).
fn free_bytes(path: &Path) -> Option<u128> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::ffi::CString::new(folder(path).as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs is a plain C struct, for which all zero bytes are a valid value
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a statvfs to fill
        if unsafe { libc::statvfs(dir.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail as u128 * st.f_frsize as u128)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// An error message when `bytes` (the whole file, estimated) will not fit on `path`'s disk.
fn fits_on_disk(path: &Path, bytes: u128, rows: usize) -> std::result::Result<(), String> {
    match free_bytes(path) {
        Some(free) if bytes > free => Err(format!(
            "{rows} rows need about {:.1} GB, and its disk has {:.1} GB free: write fewer rows",
            bytes as f64 / 1e9,
            free as f64 / 1e9
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{read_csv, read_npy};

    fn table(rows: usize, from: usize) -> Table {
        let data = (0..rows * 2)
            .map(|i| (from * 2 + i) as f64 * 0.25 - 3.0)
            .collect();
        Table::new(vec!["a".into(), "b".into()], rows, data, "t")
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nflow-sink-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Chunks written one after the other read back as the whole table, in CSV, gzipped CSV and NPY, and
    /// no temporary file stays.
    #[test]
    fn chunks_read_back_as_the_whole_table() {
        let d = dir("chunks");
        let whole = table(7, 0);
        for name in ["t.csv", "t.csv.gz", "t.npy"] {
            let p = d.join(name);
            let mut w = TableSink::for_path(&p, &whole.columns, 7).unwrap();
            w.push(&table(3, 0)).unwrap();
            w.push(&table(0, 3)).unwrap();
            w.push(&table(4, 3)).unwrap();
            w.finish().unwrap();
            let back = match name.ends_with(".npy") {
                true => read_npy(&p).unwrap(),
                false => read_csv(&p).unwrap(),
            };
            assert_eq!((back.rows, back.cols), (7, 2), "{name}");
            assert_eq!(back.data, whole.data, "{name}");
        }
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        std::fs::remove_dir_all(d).unwrap();
    }

    /// A write that stops half-way (dropped, or an NPY short of its rows) leaves the old file as it was and
    /// no temporary file; a dead run's temporary file is removed by the next write.
    #[test]
    fn an_unfinished_write_leaves_the_target_alone() {
        let d = dir("unfinished");
        let p = d.join("t.csv");
        std::fs::write(&p, "a,b\n1,2\n").unwrap();
        let mut w = TableSink::csv(&p, &["a".into(), "b".into()], None).unwrap();
        w.push(&table(5, 0)).unwrap();
        drop(w);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a,b\n1,2\n");
        let q = d.join("t.npy");
        let mut w = TableSink::npy(&q, 5, 2).unwrap();
        w.push(&table(4, 0)).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("t.npy") && e.contains("item"), "{e}");
        assert!(!q.exists());
        // a dead process's leftover (no such pid), and one of a live one (ours)
        let dead = d.join(".t.csv.tmp-4294967290");
        let live = format!(".t.csv.tmp-{}.", std::process::id());
        std::fs::write(&dead, "x").unwrap();
        let w = TableSink::csv(&p, &["a".into(), "b".into()], None).unwrap();
        assert!(!dead.exists());
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(&live) && n.len() > live.len()),
            "this run's own temporary file, under an unpredictable name: {names:?}"
        );
        w.finish().unwrap();
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        std::fs::remove_dir_all(d).unwrap();
    }

    /// Bad targets are refused when the sink is made, naming the file.
    #[test]
    fn bad_targets_are_refused_up_front() {
        let d = dir("bad");
        let cols = ["a".to_string()];
        std::fs::create_dir(d.join("folder.csv")).unwrap();
        for (p, want) in [
            (d.join("x.txt"), "unknown output format"),
            (d.join("no/such/x.csv"), "no/such/x.csv"),
            (d.join("folder.csv"), "is a folder"),
        ] {
            let e = TableSink::for_path(&p, &cols, 1).err().unwrap().to_string();
            assert!(e.contains(want), "{e}");
        }
        // more rows than the disk holds: NPY at once, CSV at its first chunk (8 bytes a row here)
        let huge = usize::MAX / 64;
        let e = TableSink::npy(&d.join("h.npy"), huge, 1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("h.npy") && e.contains("GB free"), "{e}");
        let mut w = TableSink::csv(&d.join("h.csv"), &cols, Some(huge)).unwrap();
        let e = w
            .push(&Table::new(cols.to_vec(), 2, vec![1.25, 2.5], "t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("h.csv") && e.contains("GB free"), "{e}");
        drop(w);
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "only the folder.csv folder"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
