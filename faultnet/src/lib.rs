//! A TCP proxy on 127.0.0.1 that injects network faults between a client and one upstream
//! server, switched at run time (sluice's S3 fault tests and `sluice-sim chaos`), and that can
//! emulate a network's latency and count the S3 requests passing through (benchmarks):
//!
//! | mode | new connections | open connections |
//! | --- | --- | --- |
//! | `Pass` | forwarded | forwarded |
//! | `Reset` | closed at once | cut when the mode is set |
//! | `Http503` | answered `503 Service Unavailable` after the request head, then closed | cut when the mode is set |
//! | `Stall` | accepted, nothing forwarded until the mode changes | stop moving until the mode changes |
//! | `DropResponses` | forwarded; cut as the server's answer arrives, which is not relayed | the same |
//! | `Slow` | forwarded, each chunk [`SLOW_CHUNK_DELAY`] late (a slow store: latency per round trip) | the same |
//! | `DropOneCompletion` | forwarded; the answer to the next `CompleteMultipartUpload` is cut as it arrives (the upload completed, the client never learns), then the mode is `Pass` again | the same |
//!
//! | knob, independent of the mode | default | effect |
//! | --- | --- | --- |
//! | [`Proxy::set_latency`]`(rtt)` | 0, off | each direction forwards every chunk rtt/2 after the proxy read it, pipelined (later bytes never wait behind earlier ones, so throughput is not capped); a new connection's client bytes also wait until one rtt after it was accepted, the emulated handshake, so a fresh connection costs one more round trip, as on a real network |
//! | [`Proxy::requests`] / [`Proxy::reset_requests`] | counting | every forwarded client stream is parsed as HTTP/1.1 requests and each is counted by S3 kind ([`RequestKind`]: `LIST`, `GET`, `PUT`, `UPLOAD_PART`, ...); a stream that stops parsing counts once as [`UNPARSED`] and is still forwarded. Parsing reads a copy of the bytes, never alters or holds them, and keeps at most [`HEAD_BYTES_MAX`] per connection |
//!
//! A partition is `Reset` held for a while; `DropResponses` makes ambiguous writes (the server
//! applied the request, the client never learns). Threads only, no async runtime: each
//! connection has a reader and a writer thread per direction (module `pipe`), and every
//! blocking call has a short timeout so a connection notices a mode change. The proxy lives
//! as long as the process (its threads are detached). Requests answered by `Http503` never
//! reach the server and are not counted.

mod http;
mod pipe;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use http::{HEAD_BYTES_MAX, RequestKind, UNPARSED};

/// How often a blocked connection looks at the mode.
const POLL: Duration = Duration::from_millis(20);
/// How late `Slow` forwards each chunk it reads, in each direction.
pub const SLOW_CHUNK_DELAY: Duration = Duration::from_millis(150);
/// The largest round trip [`Proxy::set_latency`] takes; longer ones are clamped (an hour is
/// no network, and the bound keeps instant arithmetic far from overflow).
pub const RTT_MAX: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    Reset = 1,
    Http503 = 2,
    Stall = 3,
    DropResponses = 4,
    Slow = 5,
    DropOneCompletion = 6,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Reset,
            2 => Mode::Http503,
            3 => Mode::Stall,
            4 => Mode::DropResponses,
            5 => Mode::Slow,
            6 => Mode::DropOneCompletion,
            _ => Mode::Pass,
        }
    }
}

#[derive(Debug)]
struct Shared {
    mode: AtomicU8,
    /// Bumped when open connections must be cut.
    generation: AtomicU64,
    /// Connections refused or cut, and 503s sent: proof the faults happened.
    faults: AtomicU64,
    /// The emulated round trip, in nanoseconds; 0 is off.
    rtt_ns: AtomicU64,
    requests: http::Tally,
}

impl Shared {
    fn rtt(&self) -> Duration {
        Duration::from_nanos(self.rtt_ns.load(Ordering::SeqCst))
    }
}

#[derive(Debug, Clone)]
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Pass as u8),
            generation: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            rtt_ns: AtomicU64::new(0),
            requests: http::Tally::default(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("faultnet-accept".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let accepted_at = Instant::now();
                    let s = s.clone();
                    // A failed spawn drops the client, which closes it: a refused connection.
                    let _ = std::thread::Builder::new()
                        .name("faultnet-conn".into())
                        .spawn(move || serve(client, upstream, &s, accepted_at));
                }
            })?;
        Ok(Proxy { port, shared })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
        if matches!(mode, Mode::Reset | Mode::Http503) {
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Connections refused or cut (one each), 503s sent and answers dropped so far.
    pub fn faults(&self) -> u64 {
        self.shared.faults.load(Ordering::SeqCst)
    }

    /// Emulates a network with round trip `rtt` (clamped to [`RTT_MAX`]; zero turns it off,
    /// the default). Applies to bytes read from now on, in open connections too; the
    /// handshake wait applies to connections accepted less than one rtt ago.
    pub fn set_latency(&self, rtt: Duration) {
        let rtt_ns = u64::try_from(rtt.min(RTT_MAX).as_nanos()).unwrap_or(u64::MAX);
        self.shared.rtt_ns.store(rtt_ns, Ordering::SeqCst);
    }

    /// The requests forwarded so far (since the last [`Proxy::reset_requests`]) by
    /// [`RequestKind::name`], plus [`UNPARSED`]: connections whose stream stopped parsing.
    /// Only non-zero counts are listed. A request is counted when its head has been read,
    /// before it is forwarded, so one the client has an answer to is always in.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.shared.requests.snapshot()
    }

    /// Sets every request count to zero; open connections go on counting.
    pub fn reset_requests(&self) {
        self.shared.requests.reset();
    }
}

fn mode(s: &Shared) -> Mode {
    Mode::from_u8(s.mode.load(Ordering::SeqCst))
}

fn serve(client: TcpStream, upstream: SocketAddr, s: &Shared, accepted_at: Instant) {
    loop {
        match mode(s) {
            Mode::Reset => {
                s.faults.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Mode::Http503 => {
                s.faults.fetch_add(1, Ordering::SeqCst);
                answer_503(client);
                return;
            }
            Mode::Stall => std::thread::sleep(POLL),
            Mode::Pass | Mode::DropResponses | Mode::Slow | Mode::DropOneCompletion => break,
        }
    }
    let Ok(up) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let generation = s.generation.load(Ordering::SeqCst);
    let ends = pipe::Ends {
        client,
        upstream: up,
        cut_seen: std::sync::atomic::AtomicBool::new(false),
        completing: std::sync::atomic::AtomicBool::new(false),
    };
    // Without the timeouts a thread could block for good and miss a cut; without nodelay,
    // Nagle's algorithm would hold small chunks and add delay that is not the emulated one.
    let ready = [&ends.client, &ends.upstream].iter().all(|sock| {
        sock.set_read_timeout(Some(POLL)).is_ok()
            && sock.set_write_timeout(Some(POLL)).is_ok()
            && sock.set_nodelay(true).is_ok()
    });
    if !ready {
        ends.shutdown_both();
        return;
    }
    let (to_server, from_client) = std::sync::mpsc::sync_channel(pipe::CHUNKS_IN_FLIGHT_MAX);
    let (to_client, from_server) = std::sync::mpsc::sync_channel(pipe::CHUNKS_IN_FLIGHT_MAX);
    let writer = |to| pipe::Writer {
        to,
        ends: &ends,
        shared: s,
        generation,
    };
    let requests = pipe::Reader {
        from: &ends.client,
        ends: &ends,
        shared: s,
        generation,
        answers: false,
        accepted_at: Some(accepted_at),
        counter: Some(http::RequestCounter::new()),
    };
    let answers = pipe::Reader {
        from: &ends.upstream,
        ends: &ends,
        shared: s,
        generation,
        answers: true,
        accepted_at: None,
        counter: None,
    };
    let (to_upstream, to_downstream) = (writer(&ends.upstream), writer(&ends.client));
    std::thread::scope(|scope| {
        let spawned = [
            std::thread::Builder::new()
                .name("faultnet-c2s-write".into())
                .spawn_scoped(scope, move || to_upstream.run(from_client))
                .is_ok(),
            std::thread::Builder::new()
                .name("faultnet-s2c-write".into())
                .spawn_scoped(scope, move || to_downstream.run(from_server))
                .is_ok(),
            std::thread::Builder::new()
                .name("faultnet-s2c-read".into())
                .spawn_scoped(scope, move || answers.run(to_client))
                .is_ok(),
        ];
        if spawned.iter().all(|ok| *ok) {
            requests.run(to_server);
        } else {
            // The spawned threads end once their sockets are shut.
            ends.shutdown_both();
        }
    });
}
fn answer_503(mut client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let _ = write!(
        client,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.shutdown(Shutdown::Both);
}
