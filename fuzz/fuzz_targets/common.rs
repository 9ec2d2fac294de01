//! Shared by the file-reading targets: the bytes written to a temporary file of this process, `f` run on it.
use std::path::Path;

#[allow(dead_code)]
pub fn with_file(data: &[u8], ext: &str, f: impl FnOnce(&Path)) {
    let p = std::env::temp_dir().join(format!("nflow-fuzz-{}.{ext}", std::process::id()));
    if std::fs::write(&p, data).is_ok() {
        f(&p);
    }
}

/// The bytes written as `a.png` in a temporary folder of this process, `f` run on the folder.
#[allow(dead_code)]
pub fn with_folder(data: &[u8], file: &str, f: impl FnOnce(&Path)) {
    let d = std::env::temp_dir().join(format!("nflow-fuzz-dir-{}", std::process::id()));
    if std::fs::create_dir_all(&d).is_ok() && std::fs::write(d.join(file), data).is_ok() {
        f(&d);
    }
}
