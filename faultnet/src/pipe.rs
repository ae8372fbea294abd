//! One direction of a proxied connection: a reader thread that reads chunks, stamps each with
//! the instant it is due, and queues it; a writer thread that forwards each chunk when due.
//!
//! Splitting the two is what makes latency pipelined: a chunk waits only for its own due time
//! (read time plus rtt/2), never behind an earlier chunk's wait, so throughput is bounded by
//! the queue ([`CHUNKS_IN_FLIGHT_MAX`] chunks per rtt/2), not by rtt. With no latency set a
//! chunk is due when read, and the pair behaves as a plain copy loop.
//!
//! Teardown: a reader that sees end of stream lets its writer drain what is queued (those
//! bytes were sent before the close), then the writer shuts both sockets, which ends the other
//! direction. Any error, a cut (generation change) or `DropResponses` shuts both sockets at
//! once. Every blocking call has a [`POLL`] timeout, so idle threads wake 1/POLL times a
//! second to look at the mode and never spin.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Instant;

use crate::http::RequestCounter;
use crate::{Mode, POLL, SLOW_CHUNK_DELAY, Shared, mode};

/// Bytes the proxy reads at once.
pub(crate) const CHUNK_BYTES: usize = 64 << 10;
/// Chunks queued per direction between the reader and the writer: at most
/// `CHUNKS_IN_FLIGHT_MAX * CHUNK_BYTES` (8 MiB) held per direction, like a TCP window. A
/// sender faster than that is held back by the kernel's buffers, as on a real link.
pub(crate) const CHUNKS_IN_FLIGHT_MAX: usize = 128;

pub(crate) struct Chunk {
    due: Instant,
    bytes: Vec<u8>,
}

/// The two sockets of a connection; any thread may shut both.
pub(crate) struct Ends {
    pub(crate) client: TcpStream,
    pub(crate) upstream: TcpStream,
    /// Set by the first thread to see the connection cut, which counts the fault.
    pub(crate) cut_seen: AtomicBool,
    /// The client's latest request is a `CompleteMultipartUpload` (HTTP/1.1 answers in order,
    /// and clients do not pipeline: the next answer is its).
    pub(crate) completing: AtomicBool,
}

impl Ends {
    pub(crate) fn shutdown_both(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }

    /// Tears down a connection cut by a mode change, counting one fault per connection. The
    /// count comes before the shutdown so that whoever sees the close also sees the fault.
    fn cut(&self, s: &Shared) {
        if !self.cut_seen.swap(true, Ordering::SeqCst) {
            s.faults.fetch_add(1, Ordering::SeqCst);
        }
        self.shutdown_both();
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) from: &'a TcpStream,
    pub(crate) ends: &'a Ends,
    pub(crate) shared: &'a Shared,
    pub(crate) generation: u64,
    /// The server-to-client direction, which `DropResponses` cuts.
    pub(crate) answers: bool,
    /// For client-to-server: when the proxy accepted the connection, so the first bytes wait
    /// out the emulated handshake.
    pub(crate) accepted_at: Option<Instant>,
    /// For client-to-server: counts the requests.
    pub(crate) counter: Option<RequestCounter>,
}

enum End {
    /// The sender closed: the writer forwards what is queued, then tears down.
    Eof,
    /// Tear down now.
    Now,
}

impl Reader<'_> {
    pub(crate) fn run(mut self, tx: SyncSender<Chunk>) {
        let end = self.pump(&tx);
        drop(tx);
        if self.shared.generation.load(Ordering::SeqCst) != self.generation {
            self.ends.cut(self.shared);
        } else if matches!(end, End::Now) {
            self.ends.shutdown_both();
        }
    }

    fn pump(&mut self, tx: &SyncSender<Chunk>) -> End {
        let s = self.shared;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            if s.generation.load(Ordering::SeqCst) != self.generation {
                return End::Now;
            }
            if mode(s) == Mode::Stall {
                std::thread::sleep(POLL);
                continue;
            }
            let n = match self.from.read(&mut buf) {
                Ok(0) => return End::Eof,
                Ok(n) => n,
                Err(e) if transient(&e) => continue,
                Err(_) => return End::Now,
            };
            if self.answers && mode(s) == Mode::DropResponses {
                s.faults.fetch_add(1, Ordering::SeqCst);
                return End::Now;
            }
            if self.answers
                && self.ends.completing.load(Ordering::SeqCst)
                && s.mode
                    .compare_exchange(
                        Mode::DropOneCompletion as u8,
                        Mode::Pass as u8,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .is_ok()
            {
                s.faults.fetch_add(1, Ordering::SeqCst);
                return End::Now;
            }
            let bytes = buf.get(..n).unwrap_or_default();
            if mode(s) == Mode::Slow {
                std::thread::sleep(SLOW_CHUNK_DELAY);
            }
            // Counted before forwarding, so a request whose answer the client has seen is
            // always in `Proxy::requests`. The counter only reads the bytes.
            if let Some(counter) = &mut self.counter {
                let completing = &self.ends.completing;
                counter.feed(bytes, &mut |t| {
                    if let crate::http::Tallied::Request(kind) = t {
                        completing.store(
                            kind == crate::http::RequestKind::CompleteMultipart,
                            Ordering::SeqCst,
                        );
                    }
                    s.requests.add(t);
                });
            }
            let rtt = s.rtt();
            let mut sent_at = Instant::now();
            if let Some(accepted_at) = self.accepted_at {
                // A real client could send nothing before its handshake completed, one rtt
                // after it connected; the bytes then still take rtt/2 to arrive.
                sent_at = sent_at.max(accepted_at + rtt);
            }
            let chunk = Chunk {
                due: sent_at + rtt / 2,
                bytes: bytes.to_vec(),
            };
            if tx.send(chunk).is_err() {
                // The writer ended: it failed to write, or saw the cut.
                return End::Now;
            }
        }
    }
}

pub(crate) struct Writer<'a> {
    pub(crate) to: &'a TcpStream,
    pub(crate) ends: &'a Ends,
    pub(crate) shared: &'a Shared,
    pub(crate) generation: u64,
}

impl Writer<'_> {
    /// Forwards chunks when due until the reader ends and the queue is drained, or a write
    /// fails, or the connection is cut; then shuts both sockets.
    pub(crate) fn run(self, rx: Receiver<Chunk>) {
        loop {
            let chunk = match rx.recv_timeout(POLL) {
                Ok(chunk) => chunk,
                Err(RecvTimeoutError::Timeout) if !self.cut() => continue,
                Err(_) => break,
            };
            if !self.wait_until(chunk.due) || !self.write_all(&chunk.bytes) {
                break;
            }
        }
        if self.cut() {
            self.ends.cut(self.shared);
        } else {
            self.ends.shutdown_both();
        }
    }

    fn cut(&self) -> bool {
        self.shared.generation.load(Ordering::SeqCst) != self.generation
    }

    /// Sleeps until `due` in steps of at most [`POLL`]; false if the connection was cut.
    fn wait_until(&self, due: Instant) -> bool {
        loop {
            if self.cut() {
                return false;
            }
            let now = Instant::now();
            if now >= due {
                return true;
            }
            std::thread::sleep((due - now).min(POLL));
        }
    }

    /// Writes `bytes`, holding them while the mode is `Stall`; false if the write failed or
    /// the connection was cut. The socket's write timeout keeps each call under [`POLL`].
    fn write_all(&self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.cut() {
                return false;
            }
            if mode(self.shared) == Mode::Stall {
                std::thread::sleep(POLL);
                continue;
            }
            match (&*self.to).write(bytes) {
                Ok(0) => return false,
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(e) if transient(&e) => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// A timeout or an interrupted call: look at the mode and try again.
fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}
