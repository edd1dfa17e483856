//! Token shards: one binary file per (split, language), read back through a memory map.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! offset  size  field
//!      0     8  magic b"PLMSHARD"
//!      8     4  version (1)
//!     12     4  token width in bytes: 2 (u16, vocabulary ≤ 65,536) or 4 (u32)
//!     16     4  vocabulary size
//!     20     4  flags (0)
//!     24     8  document count
//!     32     8  token count
//!     40     8  UTF-8 bytes of the documents' source text
//!     48    16  reserved (0)
//!     64     …  tokens (count × width), zero-padded to a multiple of 8 bytes
//!      …     …  index: per document 24 bytes: token offset u64, token count u32,
//!               UTF-8 byte length u32, source id u16, 6 reserved bytes
//!      …     8  checksum: a word-wise FNV-1a 64 over tokens ‖ index ‖ header
//! ```
//!
//! The checksum takes one 64-bit little-endian word at a time (`h = (h ^ w) · prime`), so any
//! change confined to one word is always detected; the token region comes first so that the
//! writer can hash while it streams. [`Shard::open`] checks the size, the header, the
//! checksum, the index (contiguous, in bounds, totals) and every token id against the
//! vocabulary, so a truncated or corrupt file gives [`DataError::Corrupt`], never a panic.
//!
//! Files are written atomically: to `<name>.tmp-<pid>`, synced, renamed over the final name,
//! and the directory synced.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{DataError, Result};

/// The magic bytes at the start of every shard.
pub const SHARD_MAGIC: &[u8; 8] = b"PLMSHARD";
/// The shard format version this code writes and reads.
pub const SHARD_VERSION: u32 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 64;
/// Size of one document's index entry in bytes.
pub const INDEX_ENTRY_LEN: usize = 24;
const CHECKSUM_LEN: usize = 8;

/// The token width (in bytes) used for a vocabulary: 2 when every id fits a `u16`, else 4.
pub fn token_width(vocab_size: u32) -> usize {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

/// What the index records about one document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DocMeta {
    /// Number of tokens (the end-of-sequence separator is not stored).
    pub tokens: u32,
    /// UTF-8 bytes of the document's source text.
    pub bytes: u32,
    /// Source id (an index into the manifest's `sources`).
    pub source: u16,
}

/// The word-wise FNV-1a 64 used for shard checksums; fed bytes in any pieces, it hashes them
/// as consecutive little-endian 64-bit words (the total must be a multiple of 8).
#[derive(Clone, Debug)]
pub(crate) struct WordHasher {
    h: u64,
    pending: [u8; 8],
    npending: usize,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl WordHasher {
    pub(crate) fn new() -> WordHasher {
        WordHasher { h: FNV_OFFSET, pending: [0; 8], npending: 0 }
    }

    #[inline]
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(FNV_PRIME);
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        if self.npending > 0 {
            let take = (8 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&data[..take]);
            self.npending += take;
            data = &data[take..];
            if self.npending < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.pending);
            self.word(w);
            self.npending = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.word(w);
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    /// The hash; a trailing partial word is zero-padded.
    pub(crate) fn finish(mut self) -> u64 {
        if self.npending > 0 {
            self.pending[self.npending..].fill(0);
            let w = u64::from_le_bytes(self.pending);
            self.word(w);
        }
        self.h
    }
}

fn padded8(n: u64) -> Option<u64> {
    n.checked_add(7).map(|v| v & !7)
}

/// A read-only, memory-mapped token shard whose every bound was checked on open.
///
/// The file must not be modified or truncated while it is open (another process doing so
/// could fault the memory map); shards are only ever replaced by an atomic rename.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    width: usize,
    vocab_size: u32,
    num_docs: usize,
    num_tokens: u64,
    num_bytes: u64,
    payload: Range<usize>,
    index: Range<usize>,
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Shard {
    /// Opens and fully validates a shard (size, header, checksum, index, token ids).
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        let min = (HEADER_LEN + CHECKSUM_LEN) as u64;
        if len < min {
            return Err(DataError::corrupt(
                path,
                format!("truncated: {len} bytes, but the header and checksum alone take {min}"),
            ));
        }
        // SAFETY: the map is read-only; shards are replaced only by atomic renames, never
        // rewritten in place (see the type's documentation).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        let b = &map[..];
        if &b[..8] != SHARD_MAGIC {
            return Err(DataError::corrupt(path, format!("bad magic {:?}, expected \"PLMSHARD\"", &b[..8])));
        }
        let version = read_u32(b, 8);
        if version != SHARD_VERSION {
            return Err(DataError::corrupt(
                path,
                format!("version {version}, this build reads {SHARD_VERSION}"),
            ));
        }
        let width = read_u32(b, 12) as usize;
        let vocab_size = read_u32(b, 16);
        if width != 2 && width != 4 {
            return Err(DataError::corrupt(path, format!("token width {width}, expected 2 or 4")));
        }
        if vocab_size == 0 || (width == 2 && vocab_size > 1 << 16) {
            return Err(DataError::corrupt(
                path,
                format!("vocabulary size {vocab_size} with token width {width}"),
            ));
        }
        let num_docs = read_u64(b, 24);
        let num_tokens = read_u64(b, 32);
        let num_bytes = read_u64(b, 40);
        let too_big = || DataError::corrupt(path, "counts in the header overflow the file size");
        let payload_len = num_tokens.checked_mul(width as u64).ok_or_else(too_big)?;
        let payload_padded = padded8(payload_len).ok_or_else(too_big)?;
        let index_len = num_docs.checked_mul(INDEX_ENTRY_LEN as u64).ok_or_else(too_big)?;
        let expected = (HEADER_LEN as u64)
            .checked_add(payload_padded)
            .and_then(|v| v.checked_add(index_len))
            .and_then(|v| v.checked_add(CHECKSUM_LEN as u64))
            .ok_or_else(too_big)?;
        if expected != len {
            let what = if len < expected { "truncated" } else { "trailing data" };
            return Err(DataError::corrupt(
                path,
                format!(
                    "{what}: {len} bytes, but the header describes {num_docs} documents and {num_tokens} \
                     tokens, {expected} bytes"
                ),
            ));
        }
        // `expected == len` and the map holds `len` bytes, so these fit in usize.
        let payload = HEADER_LEN..HEADER_LEN + payload_len as usize;
        let index_start = HEADER_LEN + payload_padded as usize;
        let index = index_start..index_start + index_len as usize;
        let body_end = index.end;
        let mut h = WordHasher::new();
        h.update(&b[HEADER_LEN..body_end]);
        h.update(&b[..HEADER_LEN]);
        let computed = h.finish();
        let stored = read_u64(b, body_end);
        if computed != stored {
            return Err(DataError::corrupt(
                path,
                format!("checksum mismatch: stored {stored:016x}, computed {computed:016x}"),
            ));
        }
        let shard = Shard {
            path: path.to_path_buf(),
            width,
            vocab_size,
            num_docs: num_docs as usize,
            num_tokens,
            num_bytes,
            payload,
            index,
            map,
        };
        shard.validate_index()?;
        shard.validate_tokens()?;
        Ok(shard)
    }

    fn validate_index(&self) -> Result<()> {
        let (mut next, mut bytes) = (0u64, 0u64);
        for i in 0..self.num_docs {
            let (offset, meta) = self.entry(i);
            if offset != next {
                return Err(DataError::corrupt(
                    &self.path,
                    format!(
                        "index entry {i}: token offset {offset}, expected {next} (documents are contiguous)"
                    ),
                ));
            }
            next = offset + u64::from(meta.tokens);
            if next > self.num_tokens {
                return Err(DataError::corrupt(
                    &self.path,
                    format!("index entry {i}: tokens {offset}..{next} past the {} tokens", self.num_tokens),
                ));
            }
            bytes += u64::from(meta.bytes);
        }
        if next != self.num_tokens {
            return Err(DataError::corrupt(
                &self.path,
                format!("the index covers {next} tokens, the header says {}", self.num_tokens),
            ));
        }
        if bytes != self.num_bytes {
            return Err(DataError::corrupt(
                &self.path,
                format!("the index sums to {bytes} text bytes, the header says {}", self.num_bytes),
            ));
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Result<()> {
        let p = &self.map[self.payload.clone()];
        let bad = if self.width == 2 {
            p.chunks_exact(2)
                .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
                .position(|t| t >= self.vocab_size)
        } else {
            p.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .position(|t| t >= self.vocab_size)
        };
        if let Some(pos) = bad {
            let mut id = Vec::new();
            self.append_range(pos..pos + 1, &mut id);
            return Err(DataError::corrupt(
                &self.path,
                format!("token {pos} is id {}, outside the vocabulary of {}", id[0], self.vocab_size),
            ));
        }
        Ok(())
    }

    fn entry(&self, i: usize) -> (u64, DocMeta) {
        let at = self.index.start + i * INDEX_ENTRY_LEN;
        let b = &self.map[at..at + INDEX_ENTRY_LEN];
        let offset = read_u64(b, 0);
        let tokens = read_u32(b, 8);
        let bytes = read_u32(b, 12);
        let source = u16::from_le_bytes([b[16], b[17]]);
        (offset, DocMeta { tokens, bytes, source })
    }

    /// Appends the tokens at global positions `range` (within the payload) to `out`.
    fn append_range(&self, range: Range<usize>, out: &mut Vec<u32>) {
        let w = self.width;
        let start = self.payload.start + range.start * w;
        let end = self.payload.start + range.end * w;
        let bytes = &self.map[start..end];
        out.reserve(range.len());
        if w == 2 {
            out.extend(bytes.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))));
        } else {
            out.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        }
    }

    /// The file this shard was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of documents.
    pub fn num_docs(&self) -> usize {
        self.num_docs
    }

    /// Number of tokens over all documents (separators not included).
    pub fn total_tokens(&self) -> u64 {
        self.num_tokens
    }

    /// UTF-8 bytes of all documents' source text.
    pub fn total_bytes(&self) -> u64 {
        self.num_bytes
    }

    /// The vocabulary size the shard was written for (every id is below it).
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// Bytes per stored token: 2 or 4.
    pub fn token_width(&self) -> usize {
        self.width
    }

    /// What the index records about document `i`.
    ///
    /// # Panics
    /// If `i >= self.num_docs()` (a caller bug; the file itself was validated on open).
    pub fn doc_meta(&self, i: usize) -> DocMeta {
        assert!(i < self.num_docs, "document {i} of a shard with {} documents", self.num_docs);
        self.entry(i).1
    }

    /// Appends the tokens of document `i` to `out`.
    ///
    /// # Panics
    /// If `i >= self.num_docs()`.
    pub fn doc_tokens(&self, i: usize, out: &mut Vec<u32>) {
        let n = self.doc_meta(i).tokens as usize;
        self.doc_tokens_range(i, 0..n, out);
    }

    /// Appends tokens `range` (positions within document `i`) to `out`.
    ///
    /// # Panics
    /// If `i >= self.num_docs()` or the range is not within the document.
    pub fn doc_tokens_range(&self, i: usize, range: Range<usize>, out: &mut Vec<u32>) {
        assert!(i < self.num_docs, "document {i} of a shard with {} documents", self.num_docs);
        let (offset, meta) = self.entry(i);
        assert!(
            range.start <= range.end && range.end <= meta.tokens as usize,
            "tokens {range:?} of a document of {} tokens",
            meta.tokens
        );
        let start = offset as usize + range.start;
        self.append_range(start..start + range.len(), out);
    }
}

/// Streams documents into a new shard file, written atomically by [`ShardWriter::finish`].
///
/// Dropping a writer without finishing it removes its temporary file.
#[derive(Debug)]
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    width: usize,
    vocab_size: u32,
    index: Vec<u8>,
    docs: u64,
    tokens: u64,
    bytes: u64,
    hasher: WordHasher,
    buf: Vec<u8>,
}

/// Totals of a finished shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardTotals {
    /// Documents written.
    pub docs: u64,
    /// Tokens written.
    pub tokens: u64,
    /// UTF-8 bytes of the documents' source text.
    pub bytes: u64,
}

/// The temporary name a file is written under before its atomic rename.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Syncs `file`, renames `tmp` over `path` and syncs the directory.
pub(crate) fn commit_file(file: &File, tmp: &Path, path: &Path) -> Result<()> {
    file.sync_all().map_err(|e| DataError::io(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| DataError::io(path, e))?;
    sync_dir(path);
    Ok(())
}

/// Best-effort fsync of the directory holding `path` (so the rename itself is durable).
pub(crate) fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename, directory fsync).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        f.write_all(data).map_err(|e| DataError::io(&tmp, e))?;
        commit_file(&f, &tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl ShardWriter {
    /// Starts a shard at `path` (written first to `<name>.tmp-<pid>`) for ids below
    /// `vocab_size`.
    pub fn create(path: &Path, vocab_size: u32) -> Result<ShardWriter> {
        if vocab_size == 0 {
            return Err(DataError::BadInput(format!("{}: vocabulary size 0", path.display())));
        }
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&[0u8; HEADER_LEN]).map_err(|e| DataError::io(&tmp, e))?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            tmp,
            file: Some(w),
            width: token_width(vocab_size),
            vocab_size,
            index: Vec::new(),
            docs: 0,
            tokens: 0,
            bytes: 0,
            hasher: WordHasher::new(),
            buf: Vec::new(),
        })
    }

    /// Appends one document: its tokens, the UTF-8 byte length of its text and its source id.
    pub fn push(&mut self, tokens: &[u32], bytes: u32, source: u16) -> Result<()> {
        if let Some(&id) = tokens.iter().find(|&&t| t >= self.vocab_size) {
            return Err(DataError::TokenOutOfVocab {
                path: self.path.clone(),
                doc: self.docs as usize,
                id,
                vocab_size: self.vocab_size,
            });
        }
        let count = u32::try_from(tokens.len()).map_err(|_| {
            DataError::BadInput(format!(
                "{}: document {} has {} tokens, more than a shard entry holds",
                self.path.display(),
                self.docs,
                tokens.len()
            ))
        })?;
        self.buf.clear();
        if self.width == 2 {
            for &t in tokens {
                self.buf.extend_from_slice(&(t as u16).to_le_bytes());
            }
        } else {
            for &t in tokens {
                self.buf.extend_from_slice(&t.to_le_bytes());
            }
        }
        let file =
            self.file.as_mut().ok_or_else(|| DataError::BadInput("shard writer already finished".into()))?;
        file.write_all(&self.buf).map_err(|e| DataError::io(&self.tmp, e))?;
        self.hasher.update(&self.buf);
        self.index.extend_from_slice(&self.tokens.to_le_bytes());
        self.index.extend_from_slice(&count.to_le_bytes());
        self.index.extend_from_slice(&bytes.to_le_bytes());
        self.index.extend_from_slice(&source.to_le_bytes());
        self.index.extend_from_slice(&[0u8; 6]);
        self.docs += 1;
        self.tokens += u64::from(count);
        self.bytes += u64::from(bytes);
        Ok(())
    }

    /// Documents pushed so far.
    pub fn docs(&self) -> u64 {
        self.docs
    }

    /// Writes the index, header and checksum, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<ShardTotals> {
        let tmp = self.tmp.clone();
        let io = |e| DataError::io(&tmp, e);
        let mut file =
            self.file.take().ok_or_else(|| DataError::BadInput("shard writer already finished".into()))?;
        let payload_len = self.tokens * self.width as u64;
        let pad = (padded8(payload_len).unwrap_or(payload_len) - payload_len) as usize;
        let zeros = [0u8; 8];
        file.write_all(&zeros[..pad]).map_err(io)?;
        self.hasher.update(&zeros[..pad]);
        file.write_all(&self.index).map_err(io)?;
        self.hasher.update(&self.index);
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(SHARD_MAGIC);
        header[8..12].copy_from_slice(&SHARD_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(self.width as u32).to_le_bytes());
        header[16..20].copy_from_slice(&self.vocab_size.to_le_bytes());
        header[24..32].copy_from_slice(&self.docs.to_le_bytes());
        header[32..40].copy_from_slice(&self.tokens.to_le_bytes());
        header[40..48].copy_from_slice(&self.bytes.to_le_bytes());
        self.hasher.update(&header);
        let checksum = std::mem::replace(&mut self.hasher, WordHasher::new()).finish();
        file.write_all(&checksum.to_le_bytes()).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header).map_err(io)?;
        let file = file.into_inner().map_err(|e| DataError::io(&tmp, e.into_error()))?;
        commit_file(&file, &tmp, &self.path)?;
        Ok(ShardTotals { docs: self.docs, tokens: self.tokens, bytes: self.bytes })
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes a whole shard at once (see [`ShardWriter`] for streaming). Each document's token
/// count is the length of its token vector (`DocMeta::tokens` is not consulted).
pub fn write_shard(path: &Path, vocab_size: u32, docs: &[(Vec<u32>, DocMeta)]) -> Result<ShardTotals> {
    let mut w = ShardWriter::create(path, vocab_size)?;
    for (tokens, meta) in docs {
        w.push(tokens, meta.bytes, meta.source)?;
    }
    w.finish()
}
