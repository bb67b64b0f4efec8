//! Raw entries of the repository's own packs, so that a bundle can carry an
//! object's compressed bytes as they are stored instead of inflating it and
//! compressing it again (what `git pack-objects` calls reuse).
//!
//! Only whole objects are reused (pack types 1–4, not deltas), only from
//! packs with a version 2 index, and only when the entry's CRC-32 matches
//! the one its index records. Anything else is compressed anew by the
//! caller, so a pack this module cannot read costs speed, never
//! correctness; the receiver hashes every object it indexes anyway.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use git2::Oid;

/// The largest entry copied raw; bigger ones are compressed anew.
const MAX_RAW_ENTRY: u64 = 16 << 20;

/// Where a whole object's entry lies in one of our packs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loc {
    pack: usize,
    start: u64,
    end: u64,
    crc: u32,
}

/// The entries found for a set of wanted objects.
pub(crate) struct RawEntries {
    packs: Vec<PathBuf>,
    found: HashMap<Oid, Loc>,
}

impl RawEntries {
    /// Looks up `wanted` in every `*.idx` of `<git_dir>/objects/pack`. An
    /// index that cannot be read or parsed is skipped.
    pub fn locate(git_dir: &Path, wanted: &[Oid]) -> RawEntries {
        let mut out = RawEntries {
            packs: Vec::new(),
            found: HashMap::new(),
        };
        let want: HashSet<&[u8]> = wanted.iter().map(|o| o.as_bytes()).collect();
        let Ok(dir) = std::fs::read_dir(git_dir.join("objects").join("pack")) else {
            return out;
        };
        for entry in dir.flatten() {
            let idx = entry.path();
            if idx.extension().and_then(|e| e.to_str()) != Some("idx") {
                continue;
            }
            let pack = idx.with_extension("pack");
            let (Ok(bytes), Ok(meta)) = (std::fs::read(&idx), std::fs::metadata(&pack)) else {
                continue;
            };
            let n = out.packs.len();
            if let Some(found) = parse_idx(&bytes, meta.len(), &want) {
                if !found.is_empty() {
                    out.packs.push(pack);
                    for (oid, (start, end, crc)) in found {
                        out.found.entry(oid).or_insert(Loc {
                            pack: n,
                            start,
                            end,
                            crc,
                        });
                    }
                }
            }
        }
        out
    }

    /// How many of the wanted objects were found.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// A reader for one thread.
    pub fn reader(&self) -> RawReader<'_> {
        RawReader {
            entries: self,
            files: (0..self.packs.len()).map(|_| None).collect(),
        }
    }
}

/// Reads raw entries; holds its own open pack files.
pub(crate) struct RawReader<'a> {
    entries: &'a RawEntries,
    files: Vec<Option<File>>,
}

impl RawReader<'_> {
    /// Appends `oid`'s stored entry (type and size header, then its zlib
    /// stream) to `out` and returns true, if it is a whole object whose
    /// CRC-32 matches its index; otherwise leaves `out` as it was and
    /// returns false.
    pub fn append(&mut self, oid: &Oid, out: &mut Vec<u8>) -> bool {
        let Some(loc) = self.entries.found.get(oid).copied() else {
            return false;
        };
        let len = loc.end - loc.start;
        if len == 0 || len > MAX_RAW_ENTRY {
            return false;
        }
        if self.files[loc.pack].is_none() {
            match File::open(&self.entries.packs[loc.pack]) {
                Ok(f) => self.files[loc.pack] = Some(f),
                Err(_) => return false,
            }
        }
        let f = self.files[loc.pack].as_ref().expect("opened above");
        let before = out.len();
        out.resize(before + len as usize, 0);
        let ok = f.read_exact_at(&mut out[before..], loc.start).is_ok()
            && matches!((out[before] >> 4) & 7, 1..=4)
            && crc32fast::hash(&out[before..]) == loc.crc;
        if !ok {
            out.truncate(before);
        }
        ok
    }
}

/// Parses a version 2 pack index and returns, for each wanted object it
/// holds, its entry's start and end offsets in the pack (the end is where
/// the next entry, or the trailing checksum, begins) and its CRC-32.
/// `None` if the index is not a well-formed version 2 index for a pack of
/// `pack_len` bytes.
#[allow(clippy::type_complexity)]
fn parse_idx(
    b: &[u8],
    pack_len: u64,
    want: &HashSet<&[u8]>,
) -> Option<Vec<(Oid, (u64, u64, u32))>> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    if b.get(0..4)? != b"\xfftOc" || u32_at(4)? != 2 {
        return None;
    }
    let n = u32_at(8 + 255 * 4)? as usize;
    let oids_at: usize = 8 + 256 * 4;
    let crcs_at = oids_at.checked_add(n.checked_mul(20)?)?;
    let offs_at = crcs_at.checked_add(n.checked_mul(4)?)?;
    let large_at = offs_at.checked_add(n.checked_mul(4)?)?;
    if b.len() < large_at.checked_add(40)? || pack_len < 32 {
        return None;
    }
    let pack_end = pack_len - 20;
    let offset = |i: usize| -> Option<u64> {
        let o = u32_at(offs_at + i * 4)?;
        if o & 0x8000_0000 == 0 {
            return Some(o as u64);
        }
        let j = large_at + (o & 0x7fff_ffff) as usize * 8;
        Some(u64::from_be_bytes(b.get(j..j + 8)?.try_into().ok()?))
    };
    let mut sorted: Vec<u64> = (0..n).map(offset).collect::<Option<_>>()?;
    sorted.sort_unstable();
    if sorted.last().is_some_and(|&o| o >= pack_end) || sorted.first().is_some_and(|&o| o < 12) {
        return None;
    }
    let mut out = Vec::new();
    for i in 0..n {
        let raw = &b[oids_at + i * 20..oids_at + i * 20 + 20];
        if !want.contains(raw) {
            continue;
        }
        let start = offset(i)?;
        let next = sorted.partition_point(|&o| o <= start);
        let end = sorted.get(next).copied().unwrap_or(pack_end);
        let crc = u32_at(crcs_at + i * 4)?;
        out.push((Oid::from_bytes(raw).ok()?, (start, end, crc)));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every object of a repository whose objects are all in one pack is
    /// found, and its raw entry inflates to the object.
    #[test]
    fn raw_entries_of_a_real_pack_match_the_objects() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let blobs: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("memory number {i} with some text").into_bytes())
            .collect();
        let ids = crate::pack::write_blob_pack(&repo, &blobs).unwrap();
        let mut missing = ids.clone();
        missing.push(Oid::hash_object(git2::ObjectType::Blob, b"not stored").unwrap());
        let raw = RawEntries::locate(repo.path(), &missing);
        assert_eq!(raw.len(), ids.len());
        let mut r = raw.reader();
        for (id, data) in ids.iter().zip(&blobs) {
            let mut out = vec![7u8];
            assert!(r.append(id, &mut out));
            // Header: type 3 (blob) and the size, then zlib of the data.
            let mut i = 1;
            assert_eq!((out[i] >> 4) & 7, 3);
            while out[i] & 0x80 != 0 {
                i += 1;
            }
            let mut z = flate2::Decompress::new(true);
            let mut inflated = Vec::with_capacity(data.len() + 16);
            z.decompress_vec(
                &out[i + 1..],
                &mut inflated,
                flate2::FlushDecompress::Finish,
            )
            .unwrap();
            assert_eq!(&inflated, data);
        }
        let mut out = vec![7u8];
        assert!(!r.append(missing.last().unwrap(), &mut out));
        assert_eq!(out, vec![7u8]);
    }

    /// A damaged entry (CRC mismatch) is not copied.
    #[test]
    fn a_damaged_entry_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let ids = crate::pack::write_blob_pack(&repo, &[b"one".to_vec(), b"two".to_vec()]).unwrap();
        let raw = RawEntries::locate(repo.path(), &ids);
        let loc = raw.found[&ids[0]];
        let pack = &raw.packs[loc.pack];
        let mut bytes = std::fs::read(pack).unwrap();
        bytes[loc.end as usize - 1] ^= 0xff;
        std::fs::write(pack, bytes).unwrap();
        let mut out = Vec::new();
        assert!(!raw.reader().append(&ids[0], &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_indexes_are_refused() {
        let want = HashSet::new();
        assert!(parse_idx(b"", 100, &want).is_none());
        assert!(parse_idx(b"\xfftOc\0\0\0\x01", 100, &want).is_none());
        let mut idx = b"\xfftOc\0\0\0\x02".to_vec();
        idx.extend(std::iter::repeat_n(0xff, 256 * 4));
        assert!(parse_idx(&idx, 100, &want).is_none());
    }
}
