//! A TCP proxy on 127.0.0.1 that injects network faults between a client and one upstream
//! server, switched at run time (sluice's S3 fault tests and `sluice-sim chaos`):
//!
//! | mode | new connections | open connections |
//! | --- | --- | --- |
//! | `Pass` | forwarded | forwarded |
//! | `Reset` | closed at once | cut when the mode is set |
//! | `Http503` | answered `503 Service Unavailable` after the request head, then closed | cut when the mode is set |
//! | `Stall` | accepted, nothing forwarded until the mode changes | stop moving until the mode changes |
//! | `DropResponses` | forwarded; cut as the server's answer arrives, which is not relayed | the same |
//! | `Slow` | forwarded, each chunk [`SLOW_CHUNK_DELAY`] late (a slow store: latency per round trip) | the same |
//!
//! A partition is `Reset` held for a while; `DropResponses` makes ambiguous writes (the server
//! applied the request, the client never learns). Threads only, no async runtime; every read
//! has a short timeout so a connection notices a mode change. The proxy lives as long as the
//! process (its threads are detached).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// How often a blocked connection looks at the mode.
const POLL: Duration = Duration::from_millis(20);
const CHUNK_BYTES: usize = 64 << 10;
/// How late `Slow` forwards each chunk it reads, in each direction.
pub const SLOW_CHUNK_DELAY: Duration = Duration::from_millis(150);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    Reset = 1,
    Http503 = 2,
    Stall = 3,
    DropResponses = 4,
    Slow = 5,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Reset,
            2 => Mode::Http503,
            3 => Mode::Stall,
            4 => Mode::DropResponses,
            5 => Mode::Slow,
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
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(client, upstream, &s));
            }
        });
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

    /// Connections refused or cut, 503s sent and answers dropped so far.
    pub fn faults(&self) -> u64 {
        self.shared.faults.load(Ordering::SeqCst)
    }
}

fn mode(s: &Shared) -> Mode {
    Mode::from_u8(s.mode.load(Ordering::SeqCst))
}

fn serve(client: TcpStream, upstream: SocketAddr, s: &Arc<Shared>) {
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
            Mode::Pass | Mode::DropResponses | Mode::Slow => break,
        }
    }
    let Ok(up) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let generation = s.generation.load(Ordering::SeqCst);
    let (c2, u2) = match (client.try_clone(), up.try_clone()) {
        (Ok(c), Ok(u)) => (c, u),
        _ => return,
    };
    let s2 = s.clone();
    std::thread::spawn(move || pump(c2, u2, &s2, generation, false));
    pump(up, client, s, generation, true);
}

/// Copies `from` to `to` until either side closes or the connection is cut; `answers` is the
/// server-to-client direction, which `DropResponses` cuts.
fn pump(mut from: TcpStream, mut to: TcpStream, s: &Shared, generation: u64, answers: bool) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        if s.generation.load(Ordering::SeqCst) != generation {
            s.faults.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if mode(s) == Mode::Stall {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(_) if answers && mode(s) == Mode::DropResponses => {
                s.faults.fetch_add(1, Ordering::SeqCst);
                break;
            }
            Ok(n) => {
                if mode(s) == Mode::Slow {
                    std::thread::sleep(SLOW_CHUNK_DELAY);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
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
