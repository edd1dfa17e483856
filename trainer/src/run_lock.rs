//! One training process per run folder.
//!
//! Two `polylm train` (or `sft`) processes on the same `run.out_dir` would interleave their
//! metrics, prune each other's checkpoints and remove each other's half-written saves as
//! leftovers of a crash. [`RunLock::acquire`] takes an advisory lock (`flock`) on
//! `<out_dir>/.polylm-run.lock` for as long as the process lives; a second process gets an error
//! naming the holder's process id. The kernel drops the lock when the holder exits, however it
//! exits, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result, TrainError};

/// The lock file's name inside the run folder.
pub const LOCK_FILE: &str = ".polylm-run.lock";

/// Holds the run folder's lock until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Creates `out_dir` if needed and locks it, or says which process holds it.
    pub fn acquire(out_dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
        let path = out_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        if !try_lock(&file) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who =
                if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
            return Err(TrainError::Usage(format!(
                "{} is in use: {who} is training there (one run per folder; wait for it, stop it, or \
                 use another run.out_dir)",
                out_dir.display()
            )));
        }
        // Ours now: record who holds it, for the message above.
        let pid = std::process::id().to_string();
        let written = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        written.map_err(io_err(&path))?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows; no memory is involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("polylm-run-lock-{}", std::process::id()));
        let first = RunLock::acquire(&dir).unwrap();
        // flock locks belong to the open file description: a second open in the same process
        // conflicts like another process would.
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains("is in use") && err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        let again = RunLock::acquire(&dir).unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
