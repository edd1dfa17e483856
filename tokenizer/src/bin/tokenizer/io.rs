//! File and stdout helpers with one-line error messages.

use std::io::{Read, Write};
use std::path::Path;

use polylm_tokenizer::Tokenizer;

use crate::{CliError, CliResult};

/// Load a model file; errors name the file.
pub fn load_tokenizer(path: &Path) -> CliResult<Tokenizer> {
    if !path.exists() {
        return Err(CliError(format!("model file {} does not exist", path.display())));
    }
    Ok(Tokenizer::load(path)?)
}

/// Check bytes are UTF-8, naming the file and 1-based line of the first bad byte.
pub fn utf8(bytes: Vec<u8>, path: &Path) -> CliResult<String> {
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..good].iter().filter(|&&b| b == b'\n').count() + 1;
        CliError(format!("invalid UTF-8 in {} at line {line}", path.display()))
    })
}

/// Read a whole UTF-8 text file.
pub fn read_utf8_file(path: &Path) -> CliResult<String> {
    let bytes = std::fs::read(path).map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
    utf8(bytes, path)
}

/// Read all of stdin as UTF-8.
pub fn read_stdin() -> CliResult<String> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).map_err(|e| CliError(format!("cannot read stdin: {e}")))?;
    utf8(bytes, Path::new("<stdin>"))
}

/// Buffered stdout that stops quietly when the reader goes away (e.g. `| head`).
pub struct Stdout {
    inner: std::io::BufWriter<std::io::StdoutLock<'static>>,
    closed: bool,
}

impl Stdout {
    /// Lock stdout.
    pub fn new() -> Self {
        Stdout { inner: std::io::BufWriter::new(std::io::stdout().lock()), closed: false }
    }

    fn check(&mut self, r: std::io::Result<()>) -> CliResult<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(CliError(format!("cannot write to stdout: {e}"))),
        }
    }

    /// Write one line.
    pub fn line(&mut self, s: &str) -> CliResult<()> {
        if self.closed {
            return Ok(());
        }
        let r = writeln!(self.inner, "{s}");
        self.check(r)
    }

    /// Flush.
    pub fn finish(mut self) -> CliResult<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.inner.flush();
        self.check(r)
    }
}
