//! Drives a [`Session`] over a [`TcpStream`]: the only place bytes meet the
//! socket. No read buffer lives across an await: bytes are read into a stack
//! buffer inside a synchronous call and handed to the session at once, so an
//! idle connection holds no heap for input.

use std::time::{Duration, Instant};

use mmogit_proto::Session;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::error::NodeError;

/// Size of the on-stack read buffer.
const READ_CHUNK: usize = 4096;

/// How a write that made no progress for the send timeout is reported.
const NOT_READING: &str = "peer took none of our data";

/// Whether `e` is [`Conn::flush`] giving up on a peer that stopped reading.
pub(crate) fn is_not_reading(e: &NodeError) -> bool {
    matches!(e, NodeError::Timeout(s) if s.starts_with(NOT_READING))
}

pub(crate) struct Conn {
    pub stream: TcpStream,
    /// Boxed: connection futures move `Conn` around, and every copy of a
    /// 776-byte session would stay in the task's future (idle memory).
    pub session: Box<Session>,
    pub write_timeout: Duration,
    /// A frame the socket took only part of in a non-blocking write, and
    /// how much of it is written; finished before any other frame.
    partial: Option<(Vec<u8>, usize)>,
}

/// What woke [`Conn::wait`].
pub(crate) enum Wake {
    /// Bytes were fed to the session (or EOF was).
    Input,
    /// The session timer or the caller's deadline passed (session timers handled).
    Timer,
    /// The cancellation token fired.
    Cancelled,
}

impl Conn {
    pub fn new(stream: TcpStream, session: Session, write_timeout: Duration) -> Conn {
        Conn {
            stream,
            session: Box::new(session),
            partial: None,
            write_timeout,
        }
    }

    /// Writes every queued frame. Fails with [`NodeError::Timeout`] (see
    /// [`is_not_reading`]) when the peer takes no byte for `write_timeout`:
    /// a peer that stops reading is cut off, a slow one that keeps reading
    /// is not.
    pub async fn flush(&mut self) -> Result<(), NodeError> {
        loop {
            let (frame, mut done) = match self.partial.take() {
                Some(p) => p,
                None => match self.session.poll_transmit() {
                    Some(f) => (f, 0),
                    None => return Ok(()),
                },
            };
            while done < frame.len() {
                match tokio::time::timeout(self.write_timeout, self.stream.write(&frame[done..]))
                    .await
                {
                    Ok(Ok(0)) => return Err(NodeError::Io(std::io::ErrorKind::WriteZero.into())),
                    Ok(Ok(n)) => done += n,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => return Err(NodeError::Io(e)),
                    Err(_) => {
                        return Err(NodeError::Timeout(format!(
                            "{NOT_READING} for {:?}",
                            self.write_timeout
                        )))
                    }
                }
            }
        }
    }

    /// Waits for input, the session's next timer, `deadline` or `cancel`,
    /// and feeds the session accordingly. Bounded by the session timers.
    pub async fn wait(
        &mut self,
        deadline: Option<Instant>,
        cancel: Option<&CancellationToken>,
    ) -> Result<Wake, NodeError> {
        let timer = match (self.session.poll_timeout(), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match timer {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let cancelled = async {
            match cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancelled => Ok(Wake::Cancelled),
            r = self.stream.readable() => {
                r?;
                self.read_into()?;
                Ok(Wake::Input)
            }
            _ = sleep => {
                self.session.handle_timeout(Instant::now());
                Ok(Wake::Timer)
            }
        }
    }

    /// Best-effort: flush what is queued (e.g. Bye) and shut the socket.
    pub async fn finish(&mut self, bound: Duration) {
        let _ = tokio::time::timeout(bound, async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

impl Conn {
    /// Reads what is available into a stack buffer and feeds the session,
    /// writing its replies as they are produced (never waiting: what the
    /// socket does not take now is left for [`Conn::flush`]).
    fn read_into(&mut self) -> Result<(), NodeError> {
        let mut buf = [0u8; READ_CHUNK];
        // A few reads per wake at most, so one busy peer cannot starve the timer.
        for _ in 0..16 {
            match self.stream.try_read(&mut buf) {
                Ok(0) => {
                    self.session.handle_eof(Instant::now());
                    return Ok(());
                }
                Ok(n) => {
                    // Errors close the session and surface as its Closed event.
                    let _ = self.session.handle_input(Instant::now(), &buf[..n]);
                    if self.session.is_closed() {
                        return Ok(());
                    }
                    // Replies to this chunk (e.g. Pongs) go out before the
                    // next chunk is worked on, so the peer can process them
                    // meanwhile: both ends busy instead of taking turns.
                    self.try_flush()?;
                    if n < READ_CHUNK {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NodeError::Io(e)),
            }
        }
        Ok(())
    }

    /// Writes queued frames while the socket takes them without blocking.
    fn try_flush(&mut self) -> Result<(), NodeError> {
        loop {
            let (frame, done) = match self.partial.take() {
                Some(p) => p,
                None => match self.session.poll_transmit() {
                    Some(f) => (f, 0),
                    None => return Ok(()),
                },
            };
            match self.stream.try_write(&frame[done..]) {
                Ok(n) if done + n == frame.len() => {}
                Ok(n) => {
                    self.partial = Some((frame, done + n));
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.partial = Some((frame, done));
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    self.partial = Some((frame, done));
                }
                Err(e) => return Err(NodeError::Io(e)),
            }
        }
    }
}
