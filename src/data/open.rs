//! Opening data files: plain or gzipped (detected by the magic bytes 1f 8b), shared by every reader.

use super::{io_msg, DataError, Result};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Opens `path` for reading, transparently decompressing gzip. Returns the reader and whether it is gzip.
pub(crate) fn open_maybe_gz(path: &Path) -> Result<(Box<dyn Read>, bool)> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|e| DataError::Open {
        path: p.clone(),
        msg: io_msg(&e),
    })?;
    if let Ok(m) = f.metadata() {
        let t = m.file_type();
        if t.is_dir() {
            return Err(DataError::Open {
                path: p,
                msg: "is a directory".to_string(),
            });
        }
        // a device (/dev/zero, a disk) is no data file and might never end; pipes, FIFOs and process
        // substitutions are read like files
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if t.is_char_device() || t.is_block_device() {
                return Err(DataError::Open {
                    path: p,
                    msg: "is a device, not a data file (give a file, a pipe, or - for standard input)"
                        .to_string(),
                });
            }
        }
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

/// Whether `path` is a regular file (following links): what can be opened twice and seeked, unlike a pipe.
pub(crate) fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Everything `r` gives, read in pieces with the room for each checked first ([`super::check_room`]): a
/// compressed stream or a pipe may give more than fits in memory, and that is a clean error, not an abort.
/// `gz`: the stream is decompressed (its read errors are gzip errors).
pub(crate) fn read_all(r: &mut dyn Read, p: &str, gz: bool) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    loop {
        let before = buf.len();
        let want = before.max(1 << 20);
        // the text, and the table of about one value per 8 bytes of it that is made from it
        crate::engine::check_fits(
            ((before + want) as u128).saturating_mul(2),
            &format!("reading {} MB of it", (before + want) >> 20),
        )
        .map_err(|msg| DataError::Format {
            path: p.to_string(),
            msg,
        })?;
        let got = r.take(want as u64).read_to_end(&mut buf).map_err(|e| {
            let msg = io_msg(&e);
            let path = p.to_string();
            if gz {
                DataError::Gzip { path, msg }
            } else {
                DataError::Read { path, msg }
            }
        })?;
        if got == 0 {
            return Ok(buf);
        }
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

/// The process id in a name `PREFIX<pid>` or `PREFIX<pid>.<random>` (a run's temporary file or folder).
pub(crate) fn pid_suffix(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    rest.split_once('.')
        .map_or(rest, |(pid, _)| pid)
        .parse()
        .ok()
}

/// The name of `path`'s temporary siblings: `.NAME.tmp-`.
fn temp_prefix(path: &Path) -> std::io::Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, format!(".{}.tmp-", name.to_string_lossy())))
}

/// A new file beside `path` to write its contents into before they are put in place: named
/// `.NAME.tmp-PID.RANDOM` (the process id lets a later run clean up after a killed one, the random part makes
/// the name unpredictable), created exclusively, so never an existing file or one a link points to, mode 0600.
pub fn temp_file_beside(path: &Path) -> std::io::Result<(PathBuf, File)> {
    let (parent, prefix) = temp_prefix(path)?;
    let (file, p) = tempfile::Builder::new()
        .prefix(&format!("{prefix}{}.", std::process::id()))
        .rand_bytes(8)
        .tempfile_in(parent)?
        .keep()
        .map_err(|e| e.error)?;
    // what is put in place is read like any other output (the temporary file alone was private)
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    Ok((p, file))
}

/// A new folder beside `path` on the same terms as [`temp_file_beside`] (mode 0700).
pub(crate) fn temp_dir_beside(path: &Path) -> std::io::Result<PathBuf> {
    let (parent, prefix) = temp_prefix(path)?;
    Ok(tempfile::Builder::new()
        .prefix(&format!("{prefix}{}.", std::process::id()))
        .rand_bytes(8)
        .tempdir_in(parent)?
        .keep())
}
