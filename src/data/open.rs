//! Opening data files: plain or gzipped (detected by the magic bytes 1f 8b), shared by every reader.

use super::{io_msg, DataError, Result};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// Opens `path` for reading, transparently decompressing gzip. Returns the reader and whether it is gzip.
pub(crate) fn open_maybe_gz(path: &Path) -> Result<(Box<dyn Read>, bool)> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|e| DataError::Open {
        path: p.clone(),
        msg: io_msg(&e),
    })?;
    if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(DataError::Open {
            path: p,
            msg: "is a directory".to_string(),
        });
    }
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(DataError::Read {
                    path: p,
                    msg: io_msg(&e),
                })
            }
        }
    }
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let chained = head.chain(BufReader::new(f));
    if got == 2 && magic == [0x1f, 0x8b] {
        Ok((Box::new(MultiGzDecoder::new(chained)), true))
    } else {
        Ok((Box::new(chained), false))
    }
}

/// A path as messages show it.
pub(crate) fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Whether a process with this id is running (on Linux; elsewhere every process counts as running, so nothing
/// of another run is ever taken over).
pub(crate) fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// The process id at the end of a name `PREFIX<pid>` (a run's temporary file or folder).
pub(crate) fn pid_suffix(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.parse().ok()
}
