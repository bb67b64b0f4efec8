//! Writing many blobs at once as one git pack (no deltas): what `import`
//! uses instead of one loose object per memory.

use std::io::Write;

use git2::{ObjectType, Oid, Repository};
use sha1::{Digest, Sha1};

use crate::StoreError;

const OBJ_COMMIT: u8 = 1;
const OBJ_TREE: u8 = 2;
const OBJ_BLOB: u8 = 3;

pub(crate) fn object_header(out: &mut Vec<u8>, kind: u8, mut size: usize) {
    let mut byte = (kind << 4) | (size as u8 & 0x0f);
    size >>= 4;
    while size > 0 {
        out.push(byte | 0x80);
        byte = size as u8 & 0x7f;
        size >>= 7;
    }
    out.push(byte);
}

/// Compresses pack entries one zlib stream each, with one compressor and
/// one scratch buffer for all of them. (flate2's `compress_vec` zero-fills
/// the whole spare capacity of its output on every call: appending to a
/// growing multi-megabyte pack that way cost more than the compression.)
pub(crate) struct Deflater {
    z: flate2::Compress,
    buf: Vec<u8>,
}

impl Deflater {
    pub fn new() -> Deflater {
        Deflater {
            z: flate2::Compress::new(flate2::Compression::fast(), true),
            buf: Vec::new(),
        }
    }

    /// Appends `data` to `out` as one complete zlib stream.
    pub fn append(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), flate2::CompressError> {
        self.z.reset();
        // zlib's bound for one stream (deflateBound plus some slack).
        let bound = data.len() + (data.len() >> 10) + 64;
        if self.buf.len() < bound {
            self.buf.resize(bound, 0);
        }
        loop {
            let consumed = self.z.total_in() as usize;
            let before = self.z.total_out();
            let status = self.z.compress(
                &data[consumed..],
                &mut self.buf,
                flate2::FlushCompress::Finish,
            )?;
            let produced = (self.z.total_out() - before) as usize;
            out.extend_from_slice(&self.buf[..produced]);
            if status == flate2::Status::StreamEnd {
                return Ok(());
            }
        }
    }
}

/// Stores `blobs` in the repository as one pack (indexed by libgit2) and
/// returns their ids, in order. Blobs already present are stored again
/// harmlessly (git keeps one copy per pack).
pub(crate) fn write_blob_pack(
    repo: &Repository,
    blobs: &[Vec<u8>],
) -> Result<Vec<Oid>, StoreError> {
    let objects: Vec<(ObjectType, &[u8])> = blobs
        .iter()
        .map(|b| (ObjectType::Blob, b.as_slice()))
        .collect();
    write_pack(repo, &objects)
}

/// Stores `objects` (blobs, trees, commits) in the repository as one pack
/// without deltas (indexed, and with fsync on synced, by libgit2) and
/// returns their ids, in order.
pub(crate) fn write_pack(
    repo: &Repository,
    objects: &[(ObjectType, &[u8])],
) -> Result<Vec<Oid>, StoreError> {
    let mut pack =
        Vec::with_capacity(12 + objects.iter().map(|(_, b)| b.len() / 2 + 16).sum::<usize>());
    pack.extend_from_slice(b"PACK");
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&(objects.len() as u32).to_be_bytes());
    let mut ids = Vec::with_capacity(objects.len());
    let mut z = Deflater::new();
    for (kind, data) in objects {
        let code = match kind {
            ObjectType::Commit => OBJ_COMMIT,
            ObjectType::Tree => OBJ_TREE,
            ObjectType::Blob => OBJ_BLOB,
            other => {
                return Err(StoreError::Git(git2::Error::from_str(&format!(
                    "cannot pack a {other:?}"
                ))))
            }
        };
        ids.push(Oid::hash_object(*kind, data)?);
        object_header(&mut pack, code, data.len());
        z.append(data, &mut pack)
            .map_err(|e| StoreError::Git(git2::Error::from_str(&format!("compressing: {e}"))))?;
    }
    let trailer = Sha1::digest(&pack);
    pack.extend_from_slice(&trailer);
    let odb = repo.odb()?;
    let mut writer = odb.packwriter()?;
    writer
        .write_all(&pack)
        .map_err(|e| StoreError::Git(git2::Error::from_str(&format!("writing pack: {e}"))))?;
    writer.commit()?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip_including_large_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let blobs: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"hello".to_vec(),
            vec![b'x'; 15],
            vec![b'y'; 16],
            vec![7u8; 100_000],
        ];
        let ids = write_blob_pack(&repo, &blobs).unwrap();
        for (id, data) in ids.iter().zip(&blobs) {
            assert_eq!(repo.find_blob(*id).unwrap().content(), data.as_slice());
        }
    }
}
