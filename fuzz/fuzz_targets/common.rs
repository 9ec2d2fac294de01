//! Shared by the file-reading targets: the bytes written to a temporary file of this process, `f` run on it.
use std::path::Path;

pub fn with_file(data: &[u8], ext: &str, f: impl FnOnce(&Path)) {
    let p = std::env::temp_dir().join(format!("nflow-fuzz-{}.{ext}", std::process::id()));
    if std::fs::write(&p, data).is_ok() {
        f(&p);
    }
}
