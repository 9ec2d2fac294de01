//! Writing an output folder so that nothing is lost: one writer at a time (a lock file naming its process),
//! files synced before they are put in place, the new folder swapped with the old one in one step where the
//! system can (Linux `renameat2(RENAME_EXCHANGE)`), and what interrupted runs left behind recovered or cleaned.
//!
//! Beside an output `DIR` these names are used: `.DIR.lock` (the writer's process id), `.DIR.tmp-PID` (a folder
//! being written), `.DIR.old-PID` (the previous folder during a two-step replacement).

use crate::data::{pid_suffix, process_alive as alive};
use crate::{Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The parent folder and file name of an output path.
pub(crate) fn split(dir: &Path) -> Result<(PathBuf, String)> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .ok_or_else(|| Error::Model {
            path: dir.display().to_string(),
            msg: "not a folder name".into(),
        })?
        .to_string_lossy()
        .to_string();
    Ok((parent, name))
}

/// Make `path`'s contents durable: the file itself, or a folder's entries.
pub(crate) fn sync_path(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Before writing `dir`: put back a previous model that a run killed between the two steps of a replacement
/// left in `.DIR.old-PID` (when `dir` itself is missing), and remove the temporary and old folders of runs that
/// are no longer running.
pub fn recover(dir: &Path) -> Result<()> {
    let (parent, name) = split(dir)?;
    let Ok(entries) = fs::read_dir(&parent) else {
        return Ok(());
    };
    let (tmp, old) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    let mut olds = Vec::new();
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if let Some(pid) = pid_suffix(&n, &tmp) {
            if !alive(pid) {
                let _ = fs::remove_dir_all(e.path());
            }
        } else if let Some(pid) = pid_suffix(&n, &old) {
            if !alive(pid) {
                olds.push(e.path());
            }
        }
    }
    for o in olds {
        if !dir.exists() {
            fs::rename(&o, dir).map_err(io_err(dir))?;
            sync_path(&parent)?;
        } else {
            let _ = fs::remove_dir_all(&o);
        }
    }
    Ok(())
}

/// What nflow itself writes into a model folder (a model, a checkpoint): a folder holding anything else is
/// not replaced.
pub(crate) const MODEL_FILES: &[&str] = &[
    "config.json",
    "weights.safetensors",
    "train_log.jsonl",
    "trainer_state.json",
    "trainer_state.safetensors",
    "vi_state.json",
    "vi_state.safetensors",
    "training.gif",
];

/// The most bytes a `config.json` may have (a larger one is not nflow's).
pub(crate) const MAX_CONFIG_BYTES: u64 = 256 << 20;

/// Whether `dir/config.json` is nflow's: a regular file (not a link, not a pipe), of a sane size, JSON with
/// `"format": "nflow-model"` (another tool's `config.json`, a Hugging Face model's say, has no such field).
fn has_nflow_config(dir: &Path) -> bool {
    let path = dir.join("config.json");
    // a link is not what nflow writes (a link's target is checked by the read below for the rest)
    if fs::symlink_metadata(&path).map_or(true, |m| m.file_type().is_symlink()) {
        return false;
    }
    let Ok(bytes) = super::read_regular(&path, MAX_CONFIG_BYTES) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("format").and_then(|f| f.as_str()).map(String::from))
        .as_deref()
        == Some(super::FORMAT)
}

/// `dir` may be written over: it is missing, an empty folder, or an nflow model folder (a `config.json` whose
/// `format` field says so, and no file that nflow does not write). Anything else (a file, a link, a folder of
/// someone else's, a model folder with files added to it) is refused, naming what is there.
pub fn check_replaceable(dir: &Path) -> Result<()> {
    let refuse = |msg: String| {
        Err(Error::Model {
            path: dir.display().to_string(),
            msg,
        })
    };
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return refuse(format!("cannot inspect it ({e}); refusing to replace it")),
    };
    if meta.file_type().is_symlink() {
        return refuse(
            "is a symbolic link; refusing to replace it (give the folder it points to)".into(),
        );
    }
    if !meta.is_dir() {
        return refuse("exists and is not a folder; refusing to replace it".into());
    }
    let entries: Vec<String> = match fs::read_dir(dir) {
        Ok(d) => d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect(),
        Err(e) => return refuse(format!("cannot list it ({e}); refusing to replace it")),
    };
    if entries.is_empty() {
        return Ok(());
    }
    if !has_nflow_config(dir) {
        let mut shown: Vec<&str> = entries.iter().map(String::as_str).collect();
        shown.sort_unstable();
        let more = shown.len().saturating_sub(5);
        shown.truncate(5);
        return refuse(format!(
            "exists and is not an nflow model folder (it holds {}{}; an nflow model's config.json says \
             \"format\": \"{}\"); refusing to replace it",
            shown.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() },
            super::FORMAT
        ));
    }
    let mut foreign: Vec<&str> = entries
        .iter()
        .map(String::as_str)
        .filter(|n| !MODEL_FILES.contains(n))
        .collect();
    if !foreign.is_empty() {
        foreign.sort_unstable();
        return refuse(format!(
            "is an nflow model folder holding files nflow did not write ({}); refusing to replace it \
             (move them out, or choose another output)",
            foreign.join(", ")
        ));
    }
    Ok(())
}

/// Put the finished folder `tmp` in place of `dir`. With a previous `dir`, the two are exchanged in one step
/// where the system can, so `dir` is never missing; elsewhere the old one is moved aside first (and put back by
/// [`recover`] if the run dies in between). The previous folder is then deleted.
pub(crate) fn replace(tmp: &Path, dir: &Path) -> Result<()> {
    let (parent, name) = split(dir)?;
    if dir.exists() {
        if exchange(tmp, dir) {
            // `tmp` now holds the previous model
            sync_path(&parent)?;
            let _ = fs::remove_dir_all(tmp);
            return Ok(());
        }
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        fs::rename(dir, &old).map_err(io_err(dir))?;
        fs::rename(tmp, dir).map_err(io_err(dir))?;
        sync_path(&parent)?;
        let _ = fs::remove_dir_all(&old);
        return Ok(());
    }
    fs::rename(tmp, dir).map_err(io_err(dir))?;
    sync_path(&parent)
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> bool {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (Ok(ca), Ok(cb)) = (
        CString::new(a.as_os_str().as_bytes()),
        CString::new(b.as_os_str().as_bytes()),
    ) else {
        return false;
    };
    // SAFETY: two valid NUL-terminated paths; the call only renames.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    r == 0
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> bool {
    false
}

/// One writer per output folder: held while a run trains into `dir` (and its checkpoint folder), released
/// when dropped. Taking it also checks, before any training, that `dir` can be written and is not something
/// other than a model folder.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
}

impl OutputLock {
    /// Take the lock of `dir`, or fail at once naming the process that holds it. A lock left by a run that
    /// is no longer running is taken over.
    pub fn acquire(dir: &Path) -> Result<OutputLock> {
        let (parent, name) = split(dir)?;
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        check_replaceable(dir)?;
        let path = parent.join(format!(".{name}.lock"));
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(std::process::id().to_string().as_bytes())
                        .map_err(io_err(&path))?;
                    return Ok(OutputLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match holder {
                        Some(pid) if alive(pid) => {
                            return Err(Error::Model {
                                path: dir.display().to_string(),
                                msg: format!(
                                    "another nflow run (process {pid}) is writing it; wait for it to finish \
                                     or choose another output (lock file {})",
                                    path.display()
                                ),
                            })
                        }
                        // a dead run's lock (or a half-written one): take it over
                        _ => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => {
                    return Err(Error::Model {
                        path: dir.display().to_string(),
                        msg: format!("cannot write beside it ({}): {e}", parent.display()),
                    })
                }
            }
        }
        Err(Error::Model {
            path: dir.display().to_string(),
            msg: format!("cannot take the lock file {}", path.display()),
        })
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nflow-output-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_second_writer_is_refused_and_a_dead_ones_lock_taken_over() {
        let d = tmp("lock");
        let out = d.join("model");
        let lock = OutputLock::acquire(&out).unwrap();
        let e = OutputLock::acquire(&out).unwrap_err().to_string();
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(lock);
        assert!(!d.join(".model.lock").exists());
        // a lock naming a process that does not exist (pid beyond the kernel's limit)
        fs::write(d.join(".model.lock"), "4294967").unwrap();
        let again = OutputLock::acquire(&out).unwrap();
        drop(again);
        // not a model folder, or a file: refused before any work
        fs::create_dir_all(d.join("photos")).unwrap();
        fs::write(d.join("photos").join("a.jpg"), "x").unwrap();
        assert!(OutputLock::acquire(&d.join("photos"))
            .unwrap_err()
            .to_string()
            .contains("not an nflow model folder"));
        fs::write(d.join("file"), "x").unwrap();
        assert!(OutputLock::acquire(&d.join("file")).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    #[cfg(unix)]
    fn only_nflow_model_folders_are_replaceable() {
        let d = tmp("replaceable");
        let ok = |p: &Path| check_replaceable(p).is_ok();
        let why = |p: &Path| check_replaceable(p).unwrap_err().to_string();
        assert!(ok(&d.join("missing")));
        fs::create_dir_all(d.join("empty")).unwrap();
        assert!(ok(&d.join("empty")));
        // another tool's folder with a config.json (a Hugging Face model)
        let hf = d.join("hf");
        fs::create_dir_all(&hf).unwrap();
        fs::write(hf.join("config.json"), "{}").unwrap();
        fs::write(hf.join("pytorch_model.bin"), "w").unwrap();
        let e = why(&hf);
        assert!(
            e.contains("not an nflow model folder") && e.contains("pytorch_model.bin"),
            "{e}"
        );
        // nflow's own folder, and the same with a file of the user's added
        let m = d.join("m");
        fs::create_dir_all(&m).unwrap();
        fs::write(
            m.join("config.json"),
            r#"{"format": "nflow-model", "version": 2}"#,
        )
        .unwrap();
        fs::write(m.join("weights.safetensors"), "w").unwrap();
        assert!(ok(&m));
        fs::write(m.join("notes.txt"), "mine").unwrap();
        let e = why(&m);
        assert!(e.contains("files nflow did not write (notes.txt)"), "{e}");
        fs::remove_file(m.join("notes.txt")).unwrap();
        // a config.json that is a link to an nflow config elsewhere is not nflow's writing
        fs::remove_file(m.join("config.json")).unwrap();
        fs::write(d.join("elsewhere.json"), r#"{"format": "nflow-model"}"#).unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere.json"), m.join("config.json")).unwrap();
        assert!(why(&m).contains("not an nflow model folder"));
        // a file, and a link to a model folder
        fs::write(d.join("file"), "x").unwrap();
        assert!(why(&d.join("file")).contains("not a folder"));
        std::os::unix::fs::symlink(d.join("empty"), d.join("link")).unwrap();
        assert!(why(&d.join("link")).contains("symbolic link"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn replacing_exchanges_and_recovery_puts_a_stranded_model_back() {
        let d = tmp("replace");
        let out = d.join("m");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("config.json"), "old").unwrap();
        let new = d.join(".m.tmp-1");
        fs::create_dir_all(&new).unwrap();
        fs::write(new.join("config.json"), "new").unwrap();
        replace(&new, &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("config.json")).unwrap(), "new");
        assert!(!new.exists());
        // a run killed between the two steps of a replacement: the model sits in .m.old-PID, m is missing
        fs::rename(&out, d.join(".m.old-4294967")).unwrap();
        fs::create_dir_all(d.join(".m.tmp-4294967")).unwrap();
        recover(&out).unwrap();
        assert_eq!(fs::read_to_string(out.join("config.json")).unwrap(), "new");
        assert!(!d.join(".m.old-4294967").exists() && !d.join(".m.tmp-4294967").exists());
        // a live run's temporary folder is left alone
        let mine = d.join(format!(".m.tmp-{}", std::process::id()));
        fs::create_dir_all(&mine).unwrap();
        recover(&out).unwrap();
        assert!(mine.exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
