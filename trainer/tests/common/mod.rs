//! Helpers shared by the trainer's tests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A temporary file with the given content, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Writes `content` to a fresh file in the system's temporary folder.
    pub fn new(content: &[u8]) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "polylm-trainer-test-{}-{}.jsonl",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, content).expect("writes a temporary file");
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
