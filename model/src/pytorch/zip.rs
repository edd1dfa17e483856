//! The part of the ZIP format that `torch.save` writes: a central directory (ZIP64 when the
//! archive or an entry passes 4 GiB) of entries stored without compression, each behind a
//! local header whose extra field pads the data to an aligned offset.
//!
//! Only stored (method 0) entries can be read; every offset and length is checked against the
//! archive, so damaged bytes give an error, never a panic or an out-of-bounds read.

use std::collections::BTreeMap;

/// End of central directory record.
const EOCD_SIG: u32 = 0x0605_4b50;
/// ZIP64 end of central directory locator and record.
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
/// Central directory file header and local file header.
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
/// The extra-field id of the ZIP64 sizes and offset.
const ZIP64_EXTRA_ID: u16 = 0x0001;

const EOCD_LEN: usize = 22;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;

/// One stored entry: where its bytes lie in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Offset of the first data byte in the archive.
    pub start: usize,
    /// Length of the data in bytes.
    pub len: usize,
}

/// The stored entries of an archive, by name.
#[derive(Debug, Default)]
pub struct Directory {
    /// Entries by their name in the archive.
    pub entries: BTreeMap<String, Entry>,
}

/// Little-endian reads at checked offsets.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn slice(&self, at: usize, len: usize) -> Result<&[u8], String> {
        at.checked_add(len).and_then(|end| self.0.get(at..end)).ok_or_else(|| {
            format!("{len} bytes at offset {at} run past the end of the archive ({})", self.0.len())
        })
    }

    fn u16(&self, at: usize) -> Result<u16, String> {
        let b = self.slice(at, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&self, at: usize) -> Result<u32, String> {
        let b = self.slice(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&self, at: usize) -> Result<u64, String> {
        let b = self.slice(at, 8)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
}

fn to_usize(v: u64, what: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} {v} does not fit this machine's address space"))
}

/// Where the central directory lies and how many entries it holds.
struct CentralDirectory {
    offset: usize,
    size: usize,
    count: usize,
}

/// Finds the end-of-central-directory record (the last one, scanning back over at most the
/// 64 KiB a trailing comment can take) and, when its fields are saturated, the ZIP64 record.
fn locate(b: &Bytes<'_>) -> Result<CentralDirectory, String> {
    let data = b.0;
    if data.len() < EOCD_LEN {
        return Err(format!("{} bytes is too short for a ZIP archive", data.len()));
    }
    let lowest = data.len().saturating_sub(EOCD_LEN + usize::from(u16::MAX));
    let eocd = (lowest..=data.len() - EOCD_LEN)
        .rev()
        .find(|&at| b.u32(at).ok() == Some(EOCD_SIG))
        .ok_or("no end-of-central-directory record: not a ZIP archive, or truncated")?;
    let count = b.u16(eocd + 10)?;
    let size = b.u32(eocd + 12)?;
    let offset = b.u32(eocd + 16)?;
    if count != u16::MAX && size != u32::MAX && offset != u32::MAX {
        return Ok(CentralDirectory {
            offset: offset as usize,
            size: size as usize,
            count: usize::from(count),
        });
    }
    // ZIP64: a 20-byte locator right before the record points at the ZIP64 record.
    let locator = eocd.checked_sub(20).ok_or("saturated directory fields but no room for a ZIP64 locator")?;
    if b.u32(locator)? != ZIP64_LOCATOR_SIG {
        return Err("saturated directory fields but no ZIP64 locator".into());
    }
    let record = to_usize(b.u64(locator + 8)?, "ZIP64 record offset")?;
    if b.u32(record)? != ZIP64_EOCD_SIG {
        return Err(format!("no ZIP64 end-of-central-directory record at offset {record}"));
    }
    Ok(CentralDirectory {
        count: to_usize(b.u64(record + 32)?, "entry count")?,
        size: to_usize(b.u64(record + 40)?, "central directory size")?,
        offset: to_usize(b.u64(record + 48)?, "central directory offset")?,
    })
}

/// The ZIP64 extra field's values for the central header fields that were saturated, in the
/// order the format lists them (uncompressed size, compressed size, local header offset).
fn zip64_values(b: &Bytes<'_>, extra: usize, extra_len: usize, wanted: usize) -> Result<Vec<u64>, String> {
    let mut at = extra;
    let end = extra + extra_len;
    while at + 4 <= end {
        let id = b.u16(at)?;
        let len = usize::from(b.u16(at + 2)?);
        if at + 4 + len > end {
            return Err("an extra field runs past its header".into());
        }
        if id == ZIP64_EXTRA_ID {
            if len < 8 * wanted {
                return Err(format!("ZIP64 extra field of {len} bytes, {} needed", 8 * wanted));
            }
            return (0..wanted).map(|i| b.u64(at + 4 + 8 * i)).collect();
        }
        at += 4 + len;
    }
    Err("saturated entry fields but no ZIP64 extra field".into())
}

/// Reads the central directory of the archive in `data`. Entries that are compressed or
/// encrypted are refused with their name.
pub fn read_directory(data: &[u8]) -> Result<Directory, String> {
    let b = Bytes(data);
    let cd = locate(&b)?;
    b.slice(cd.offset, cd.size).map_err(|_| "the central directory lies outside the archive".to_string())?;
    // A central header takes at least 46 bytes, so a count beyond size/46 is corrupt (and must
    // not size an allocation).
    if cd.count > cd.size / CENTRAL_LEN {
        return Err(format!("{} entries cannot fit a {}-byte central directory", cd.count, cd.size));
    }
    let mut dir = Directory::default();
    let mut at = cd.offset;
    for _ in 0..cd.count {
        if b.u32(at)? != CENTRAL_SIG {
            return Err(format!("no central directory header at offset {at}"));
        }
        let flags = b.u16(at + 8)?;
        let method = b.u16(at + 10)?;
        let mut compressed = u64::from(b.u32(at + 20)?);
        let mut size = u64::from(b.u32(at + 24)?);
        let name_len = usize::from(b.u16(at + 28)?);
        let extra_len = usize::from(b.u16(at + 30)?);
        let comment_len = usize::from(b.u16(at + 32)?);
        let mut local = u64::from(b.u32(at + 42)?);
        let name_bytes = b.slice(at + CENTRAL_LEN, name_len)?;
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| format!("an entry name at offset {at} is not UTF-8"))?
            .to_string();
        let saturated = [size, compressed, local].iter().filter(|&&v| v == u64::from(u32::MAX)).count();
        if saturated > 0 {
            let values = zip64_values(&b, at + CENTRAL_LEN + name_len, extra_len, saturated)?;
            let mut values = values.into_iter();
            for field in [&mut size, &mut compressed, &mut local] {
                if *field == u64::from(u32::MAX) {
                    *field = values.next().unwrap_or(*field);
                }
            }
        }
        if flags & 1 != 0 {
            return Err(format!("entry {name} is encrypted"));
        }
        if method != 0 {
            return Err(format!(
                "entry {name} is compressed (method {method}); torch.save stores entries uncompressed"
            ));
        }
        if compressed != size {
            return Err(format!(
                "stored entry {name} has {compressed} bytes in the archive but {size} uncompressed"
            ));
        }
        let local = to_usize(local, "local header offset")?;
        if b.u32(local)? != LOCAL_SIG {
            return Err(format!("entry {name}: no local header at offset {local}"));
        }
        // The local header's own name and extra lengths place the data (torch pads the
        // local extra field so that the data is aligned; the central one may differ).
        let start = local + LOCAL_LEN + usize::from(b.u16(local + 26)?) + usize::from(b.u16(local + 28)?);
        let len = to_usize(size, "entry size")?;
        b.slice(start, len).map_err(|e| format!("entry {name}: {e}"))?;
        dir.entries.insert(name, Entry { start, len });
        at += CENTRAL_LEN + name_len + extra_len + comment_len;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored archive of `files`, each data block padded to 64 bytes as torch does, with the
    /// ZIP64 extra fields when `zip64` (sizes and offsets saturated in the central headers).
    fn archive(files: &[(&str, &[u8])], zip64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in files {
            let local = out.len();
            let pad = (64 - (local + LOCAL_LEN + name.len() + 4) % 64) % 64;
            out.extend(LOCAL_SIG.to_le_bytes());
            out.extend([0u8; 22]);
            out.extend((name.len() as u16).to_le_bytes());
            out.extend(((pad + 4) as u16).to_le_bytes());
            out.extend(name.as_bytes());
            out.extend(0xfeedu16.to_le_bytes());
            out.extend((pad as u16).to_le_bytes());
            out.extend(vec![0u8; pad]);
            assert_eq!(out.len() % 64, 0);
            out.extend(*data);
            central.extend(CENTRAL_SIG.to_le_bytes());
            central.extend([0u8; 16]);
            let (size, offset) = if zip64 { (u32::MAX, u32::MAX) } else { (data.len() as u32, local as u32) };
            central.extend(size.to_le_bytes());
            central.extend(size.to_le_bytes());
            central.extend((name.len() as u16).to_le_bytes());
            central.extend((if zip64 { 28u16 } else { 0 }).to_le_bytes());
            central.extend([0u8; 10]);
            central.extend(offset.to_le_bytes());
            central.extend(name.as_bytes());
            if zip64 {
                central.extend(ZIP64_EXTRA_ID.to_le_bytes());
                central.extend(24u16.to_le_bytes());
                for v in [data.len() as u64, data.len() as u64, local as u64] {
                    central.extend(v.to_le_bytes());
                }
            }
        }
        let cd_offset = out.len();
        out.extend(&central);
        let n = files.len() as u16;
        if zip64 {
            let record = out.len();
            out.extend(ZIP64_EOCD_SIG.to_le_bytes());
            out.extend(44u64.to_le_bytes());
            out.extend([0u8; 20]);
            out.extend((files.len() as u64).to_le_bytes());
            out.extend((central.len() as u64).to_le_bytes());
            out.extend((cd_offset as u64).to_le_bytes());
            out.extend(ZIP64_LOCATOR_SIG.to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend((record as u64).to_le_bytes());
            out.extend(1u32.to_le_bytes());
        }
        out.extend(EOCD_SIG.to_le_bytes());
        out.extend([0u8; 4]);
        out.extend(n.to_le_bytes());
        out.extend(n.to_le_bytes());
        let (size, offset) =
            if zip64 { (u32::MAX, u32::MAX) } else { (central.len() as u32, cd_offset as u32) };
        out.extend(size.to_le_bytes());
        out.extend(offset.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out
    }

    #[test]
    fn reads_plain_and_zip64_directories() {
        let files: [(&str, &[u8]); 3] =
            [("a/data.pkl", b"pickle"), ("a/data/0", &[7u8; 100]), ("a/version", b"3\n")];
        for zip64 in [false, true] {
            let bytes = archive(&files, zip64);
            let dir = read_directory(&bytes).expect("a well-formed archive");
            assert_eq!(dir.entries.len(), 3);
            for (name, data) in files {
                let e = dir.entries[name];
                assert_eq!(&bytes[e.start..e.start + e.len], data, "{name} (zip64 {zip64})");
            }
            assert_eq!(dir.entries["a/data/0"].start % 64, 0);
        }
    }

    #[test]
    fn every_truncation_and_byte_flip_is_an_error_or_a_directory() {
        let files: [(&str, &[u8]); 2] = [("x/data.pkl", b"abc"), ("x/data/0", &[1u8; 40])];
        for zip64 in [false, true] {
            let bytes = archive(&files, zip64);
            for cut in 0..bytes.len() {
                // Whatever a cut leaves, reading it returns; entries found stay in bounds.
                if let Ok(dir) = read_directory(&bytes[..cut]) {
                    assert!(dir.entries.values().all(|e| e.start + e.len <= cut));
                }
            }
            for at in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[at] ^= 0xa5;
                if let Ok(dir) = read_directory(&bad) {
                    assert!(dir.entries.values().all(|e| e.start + e.len <= bad.len()));
                }
            }
        }
    }

    #[test]
    fn compressed_entries_are_refused_by_name() {
        let mut bytes = archive(&[("m/data.pkl", b"abc")], false);
        let cd = bytes.len() - EOCD_LEN - CENTRAL_LEN - "m/data.pkl".len();
        bytes[cd + 10] = 8; // deflate
        let err = read_directory(&bytes).unwrap_err();
        assert!(err.contains("m/data.pkl") && err.contains("compressed"), "{err}");
    }
}
