//! IDX files (MNIST, Fashion-MNIST), gzipped or not: `idx3-ubyte` images become one row of `H*W` pixel columns
//! (`p0`, `p1`, ... row-major, values 0..255) per image; `idx1-ubyte` labels one column `label`.
//!
//! Sources: a file path whose name contains `-idx`, or `idx:DIR` (DIR/train-images-idx3-ubyte[.gz]),
//! `idx:DIR:test` (t10k images), `idx:DIR:train:labels` / `idx:DIR:test:labels`.

use super::open::open_maybe_gz;
use super::table::Table;
use super::{DataError, Result};
use std::path::{Path, PathBuf};

/// Whether a path names an IDX file.
pub fn is_idx_name(path: &str) -> bool {
    let l = path.to_ascii_lowercase();
    l.contains("-idx1-ubyte") || l.contains("-idx3-ubyte")
}

/// Reads an IDX file of unsigned bytes with 1 (labels) or 3 (images) dimensions.
pub fn read_idx(path: &Path) -> Result<Table> {
    let p = path.display().to_string();
    let (mut r, gz) = open_maybe_gz(path)?;
    let buf = super::open::read_all(&mut r, &p, gz)?;
    // every byte becomes one value of the table
    super::check_room(buf.len() as u128, &p)?;
    let bad = |msg: String| DataError::Npy {
        path: p.clone(),
        msg,
    };
    if buf.len() < 4 || buf[0] != 0 || buf[1] != 0 {
        return Err(bad("not an IDX file (bad magic number)".into()));
    }
    if buf[2] != 0x08 {
        return Err(bad(format!(
            "IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)",
            buf[2]
        )));
    }
    let ndim = buf[3] as usize;
    if ndim != 1 && ndim != 3 {
        return Err(bad(format!(
            "IDX file with {ndim} dimensions (expected 1: labels or 3: images)"
        )));
    }
    let head = 4 + 4 * ndim;
    if buf.len() < head {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            u32::from_be_bytes(buf[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let n = dims[0];
    if dims[1..].contains(&0) {
        return Err(bad(format!(
            "IDX image dimensions {:?}: an image needs at least one row and one column",
            &dims[1..]
        )));
    }
    let per: usize = dims[1..]
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| bad(format!("IDX dimensions {dims:?} are too large")))?;
    let need = n
        .checked_mul(per)
        .and_then(|v| v.checked_add(head))
        .ok_or_else(|| bad(format!("IDX dimensions {dims:?} are too large")))?;
    if buf.len() != need {
        return Err(bad(format!(
            "{} bytes of data for {} items of {} values: expected {} (truncated or corrupt)",
            buf.len() - head,
            n,
            per,
            n * per
        )));
    }
    if n == 0 {
        return Err(DataError::NoRows { source_name: p });
    }
    let columns: Vec<String> = if ndim == 1 {
        vec!["label".into()]
    } else if ndim == 3 {
        // (items, rows, cols): grey images
        super::images::pixel_columns(crate::engine::conv::ImageShape::new(1, dims[1], dims[2]))
    } else {
        (0..per).map(|i| format!("p{i}")).collect()
    };
    let data = buf[head..].iter().map(|&b| b as f64).collect();
    Ok(Table::new(columns, n, data, p))
}

/// Resolves `idx:DIR[:train|test][:images|labels]` to a file (gzipped or not) and reads it.
pub fn load_idx_source(src: &str, rest: &str) -> Result<Table> {
    let mut parts = rest.split(':');
    let dir = PathBuf::from(parts.next().unwrap_or(""));
    let split = parts.next().unwrap_or("train");
    let what = parts.next().unwrap_or("images");
    let bad = |msg: String| DataError::BadSource {
        src: src.to_string(),
        msg,
    };
    if parts.next().is_some() {
        return Err(bad(
            "expected idx:DIR[:train|test][:images|labels|both]".into()
        ));
    }
    let prefix = match split {
        "train" => "train",
        "test" | "t10k" => "t10k",
        s => return Err(bad(format!("'{s}' is not a split (train or test)"))),
    };
    if what == "both" {
        // images with a `label` column (class-conditional models: --context label)
        let base = format!("idx:{}:{split}", dir.display());
        let images = load_idx_source(src, &format!("{}:{split}:images", dir.display()))?;
        let labels = load_idx_source(src, &format!("{}:{split}:labels", dir.display()))?;
        if images.rows != labels.rows {
            return Err(bad(format!(
                "{base}: {} images but {} labels",
                images.rows, labels.rows
            )));
        }
        return images.hcat(&labels);
    }
    let stem = match what {
        "images" => format!("{prefix}-images-idx3-ubyte"),
        "labels" => format!("{prefix}-labels-idx1-ubyte"),
        s => return Err(bad(format!("'{s}' is neither images, labels nor both"))),
    };
    for name in [format!("{stem}.gz"), stem.clone()] {
        let f = dir.join(&name);
        if f.exists() {
            return read_idx(&f);
        }
    }
    Err(DataError::Open {
        path: dir.join(&stem).display().to_string(),
        msg: "No such file (looked for it with and without .gz)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn reads_images_and_labels_and_rejects_corrupt_files() {
        let dir = std::env::temp_dir().join(format!("nflow-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // two 2x3 images
        let mut img = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        img.extend([0, 1, 2, 3, 4, 255, 9, 8, 7, 6, 5, 4]);
        write(&dir.join("train-images-idx3-ubyte"), &img);
        let lab = [0u8, 0, 8, 1, 0, 0, 0, 2, 7, 3];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &lab).unwrap();
        write(
            &dir.join("train-labels-idx1-ubyte.gz"),
            &gz.finish().unwrap(),
        );
        let d = dir.display().to_string();
        let both = load_idx_source(&format!("idx:{d}::both"), &format!("{d}:train:both")).unwrap();
        assert_eq!((both.rows, both.cols), (2, 7));
        assert_eq!(both.columns[6], "label");
        assert_eq!(both.row(1)[6], 3.0);
        let t = load_idx_source(&format!("idx:{d}"), &d).unwrap();
        assert_eq!((t.rows, t.cols), (2, 6));
        assert_eq!(t.row(0), &[0.0, 1.0, 2.0, 3.0, 4.0, 255.0]);
        assert_eq!(t.columns[5], "c0_y1_x2");
        let l = load_idx_source("idx", &format!("{d}:train:labels")).unwrap();
        assert_eq!(l.data, vec![7.0, 3.0]);
        // truncated data, wrong magic, missing split
        write(&dir.join("bad-idx3-ubyte"), &img[..img.len() - 1]);
        let e = read_idx(&dir.join("bad-idx3-ubyte"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad-idx3-ubyte") && e.contains("truncated"),
            "{e}"
        );
        write(&dir.join("x-idx3-ubyte"), b"PK\x03\x04junk");
        let e = read_idx(&dir.join("x-idx3-ubyte")).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        let e = load_idx_source("idx:X", &format!("{d}:test"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("t10k-images-idx3-ubyte"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
