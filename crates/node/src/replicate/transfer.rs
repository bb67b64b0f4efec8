//! Transfers: a bundle going out as chunks (one send path for the node and
//! the client, paced to a rate), and a bundle coming in (checked chunk by
//! chunk into a file of the repository, then verified and ingested).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::PublicKey;
use mmogit_proto::{BranchTip, GitBundle, MemoryResponse, Message, TransferInfo};
use mmogit_store::{Bundle, BundleWriter, IngestReport};

use super::answers::open;
use crate::error::NodeError;

/// Paces sending to `rate` bytes per second.
struct Throttle {
    rate: Option<u64>,
    start: Instant,
    sent: u64,
}

impl Throttle {
    fn new(rate: Option<u64>) -> Throttle {
        Throttle {
            rate: rate.filter(|r| *r > 0),
            start: Instant::now(),
            sent: 0,
        }
    }

    async fn take(&mut self, bytes: usize) {
        self.sent += bytes as u64;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.sent as f64 / rate as f64);
            let elapsed = self.start.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }
}

/// The messages answering sync request `id` with `bundle`: the transfer
/// announcement, then the chunks (made lazily).
fn bundle_messages(
    id: u64,
    bundle: Arc<Bundle>,
    tips: Vec<BranchTip>,
    chunk: usize,
) -> impl Iterator<Item = Message> {
    let total = bundle.bytes.len();
    let chunks = total.div_ceil(chunk).max(1);
    let transfer_id = id.to_string();
    let head = Message::MemoryResponse(MemoryResponse {
        id: Some(id),
        tips: Some(tips),
        transfer: Some(TransferInfo {
            transfer_id: transfer_id.clone(),
            total_size: total as u64,
            sha256: bundle.sha256.clone(),
            chunks: chunks as u64,
            commits: bundle.commits as u64,
        }),
        ..Default::default()
    });
    std::iter::once(head).chain((0..chunks).map(move |i| {
        let data = bundle.bytes[i * chunk..((i + 1) * chunk).min(total)].to_vec();
        Message::GitBundle(GitBundle {
            transfer_id: transfer_id.clone(),
            index: i as u64,
            total_size: total as u64,
            sha256: bundle.sha256.clone(),
            data,
        })
    }))
}

/// A bundle being received.
pub struct Incoming {
    pub(crate) transfer_id: String,
    next: u64,
    chunks: u64,
    pub(crate) total: u64,
    sha256: String,
    writer: Option<BundleWriter>,
}

static TRANSFER_SEQ: AtomicU64 = AtomicU64::new(0);

impl Incoming {
    /// Checks the announced transfer against `max` and opens its file in
    /// the repository's incoming directory.
    pub(crate) fn start(
        repo: &std::path::Path,
        info: &TransferInfo,
        max: u64,
        chunk_max: usize,
    ) -> Result<Incoming, String> {
        if info.total_size > max {
            return Err(format!(
                "transfer refused: {} bytes declared, the limit is {max}",
                info.total_size
            ));
        }
        if info.total_size == 0 {
            return Err("transfer refused: empty bundle".into());
        }
        let min_chunks = info.total_size.div_ceil(chunk_max as u64);
        if info.chunks < min_chunks || info.chunks > info.total_size {
            return Err(format!(
                "transfer refused: {} chunks cannot carry {} bytes",
                info.chunks, info.total_size
            ));
        }
        if info.sha256.len() != 64 || !info.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("transfer refused: bad sha256".into());
        }
        let seq = TRANSFER_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = repo
            .join(mmogit_store::INCOMING_DIR)
            .join(format!("{}-{seq}.bundle", std::process::id()));
        let writer = BundleWriter::create(path, info.total_size, &info.sha256)
            .map_err(|e| format!("cannot store the transfer: {e}"))?;
        Ok(Incoming {
            transfer_id: info.transfer_id.clone(),
            next: 0,
            chunks: info.chunks,
            total: info.total_size,
            sha256: info.sha256.to_ascii_lowercase(),
            writer: Some(writer),
        })
    }

    /// Takes one chunk (blocking file write). Ok(true) when complete.
    pub(crate) fn chunk(&mut self, g: &GitBundle) -> Result<bool, String> {
        if g.transfer_id != self.transfer_id {
            return Err(format!("chunk of unknown transfer {:?}", g.transfer_id));
        }
        if g.index != self.next || g.index >= self.chunks {
            return Err(format!(
                "chunk {} out of order (expected {})",
                g.index, self.next
            ));
        }
        if g.total_size != self.total || !g.sha256.eq_ignore_ascii_case(&self.sha256) {
            return Err("chunk declares another size or hash than its transfer".into());
        }
        let w = self.writer.as_mut().ok_or("transfer already finished")?;
        w.write(&g.data).map_err(|e| e.to_string())?;
        self.next += 1;
        if w.complete() {
            if self.next != self.chunks {
                return Err("fewer chunks than announced".into());
            }
            return Ok(true);
        }
        if self.next == self.chunks {
            return Err(format!(
                "all {} chunks arrived but only {} of {} bytes",
                self.chunks,
                w.written(),
                self.total
            ));
        }
        Ok(false)
    }

    /// Checks size and hash, then ingests (blocking).
    pub(crate) fn ingest(
        mut self,
        repo: &std::path::Path,
        tag: &str,
    ) -> Result<IngestReport, String> {
        let w = self.writer.take().ok_or("transfer already finished")?;
        let path = w.finish().map_err(|e| e.to_string())?;
        let result = open(repo)
            .map_err(|e| e.to_string())
            .and_then(|s| s.ingest_bundle(&path, tag).map_err(|e| e.to_string()));
        let _ = std::fs::remove_file(&path);
        result
    }
}

pub(crate) fn ingest_tag(peer: &PublicKey) -> String {
    format!(
        "p2p-{}-{}-{}",
        peer.short(8),
        std::process::id(),
        TRANSFER_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where the chunks of a transfer go: a session of the node, or a client's
/// connection.
pub(crate) trait ChunkSink {
    /// Sends one message of the transfer; waits while the peer is slow.
    async fn put(&mut self, m: Message) -> Result<(), NodeError>;
}

/// Sends the bundle answering sync request `id` on `sink`, paced to `rate`
/// bytes per second; `sent` hears the bundle bytes sent so far and the
/// total. Returns the bundle's size and commit count.
pub(crate) async fn send_bundle(
    sink: &mut impl ChunkSink,
    id: u64,
    bundle: Bundle,
    tips: Vec<BranchTip>,
    chunk: usize,
    rate: Option<u64>,
    mut sent: impl FnMut(u64, u64),
) -> Result<(u64, u64), NodeError> {
    let total = bundle.bytes.len() as u64;
    let commits = bundle.commits as u64;
    let mut throttle = Throttle::new(rate);
    let mut done = 0u64;
    for m in bundle_messages(id, Arc::new(bundle), tips, chunk) {
        let len = match &m {
            Message::GitBundle(g) => g.data.len(),
            _ => 0,
        };
        sink.put(m).await?;
        done += len as u64;
        sent(done, total);
        throttle.take(len).await;
    }
    Ok((total, commits))
}
