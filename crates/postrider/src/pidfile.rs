//! `postrider.pid` in the data directory: the running relay holds an exclusive lock on it for
//! its whole life and writes its process id into it. A second relay on the same directory learns
//! who holds it (and says so) instead of failing inside the store; `postrider reload` finds the
//! process to signal there.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// The pid file's name inside `data_dir`.
pub(crate) const PID_FILE: &str = "postrider.pid";

/// Longest pid file content read (a process id and a newline).
const MAX_PID_FILE_BYTES: u64 = 64;

/// Why the pid file cannot be taken or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PidFileError {
    /// Another live process holds the lock.
    #[error("another postrider (pid {}) is using {}; stop it first or give this one another data_dir", pid_text(*.pid), .dir.display())]
    InUse {
        /// The holder's process id, when the file names one.
        pid: Option<u32>,
        /// The data directory.
        dir: PathBuf,
    },
    /// No relay holds the lock.
    #[error("no postrider is running on {}", .dir.display())]
    NotRunning {
        /// The data directory.
        dir: PathBuf,
    },
    /// The file cannot be created, locked or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The pid file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
}

/// The lock of a running relay on its data directory; released when dropped (or when the
/// process ends, however it ends).
#[derive(Debug)]
pub(crate) struct PidLock {
    _file: File,
}

/// Takes the lock of `data_dir` (which must exist) and writes this process's id into it.
pub(crate) fn acquire(data_dir: &Path) -> Result<PidLock, PidFileError> {
    let path = data_dir.join(PID_FILE);
    let io = |source| PidFileError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    if file.try_lock().is_err() {
        return Err(PidFileError::InUse {
            pid: read_pid(&mut file),
            dir: data_dir.to_owned(),
        });
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(PidLock { _file: file })
}

/// The process id of the relay running on `data_dir`, if one holds the lock.
pub(crate) fn running_pid(data_dir: &Path) -> Result<u32, PidFileError> {
    let path = data_dir.join(PID_FILE);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PidFileError::NotRunning {
                dir: data_dir.to_owned(),
            });
        }
        Err(source) => return Err(PidFileError::Io { path, source }),
    };
    if file.try_lock_shared().is_ok() {
        let _ = file.unlock();
        return Err(PidFileError::NotRunning {
            dir: data_dir.to_owned(),
        });
    }
    read_pid(&mut file).ok_or(PidFileError::InUse {
        pid: None,
        dir: data_dir.to_owned(),
    })
}

/// The process id written in the file, if it holds one.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(MAX_PID_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok().filter(|&p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_holder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            running_pid(dir.path()),
            Err(PidFileError::NotRunning { .. })
        ));
        let lock = acquire(dir.path()).unwrap();
        assert_eq!(running_pid(dir.path()).unwrap(), std::process::id());
        let e = acquire(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("another postrider (pid {})", std::process::id())),
            "{e}"
        );
        drop(lock);
        assert!(matches!(
            running_pid(dir.path()),
            Err(PidFileError::NotRunning { .. })
        ));
        acquire(dir.path()).unwrap();
    }
}
