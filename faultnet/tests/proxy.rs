//! The proxy against small upstream servers on 127.0.0.1: request counts by S3 kind, latency
//! emulation (handshake, pipelining, teardown), and the fault modes over the new pipeline.
//!
//! Timing assertions are lower bounds the design guarantees, plus upper bounds with several
//! times the expected duration as margin (a stop-and-wait proxy would miss them by far).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use faultnet::{Mode, Proxy, UNPARSED};

/// How long a test waits for bytes that must come before calling it a hang.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `serve` on each connection to a fresh listener; returns its address.
fn upstream(serve: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let addr = listener.local_addr().expect("upstream address");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    addr
}

fn echo(mut conn: TcpStream) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let _ = std::io::copy(&mut conn, &mut out);
}

/// A keep-alive HTTP/1.1 server that reads each request with its body (`Content-Length` or
/// chunked), says `100 Continue` when asked, and answers `200 OK` with an empty body.
fn http_ok(conn: TcpStream) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut length = 0usize;
        let mut chunked = false;
        let mut expect = false;
        let mut saw_line = false;
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                if saw_line {
                    break;
                }
                continue;
            }
            saw_line = true;
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("transfer-encoding:") && lower.ends_with("chunked") {
                chunked = true;
            } else if lower.starts_with("expect:") && lower.ends_with("100-continue") {
                expect = true;
            }
        }
        if expect && out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
            return;
        }
        let body_ok = if chunked {
            read_chunked(&mut r)
        } else {
            let mut body = vec![0u8; length];
            r.read_exact(&mut body).is_ok()
        };
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        if !body_ok || out.write_all(answer).is_err() {
            return;
        }
    }
}

fn read_chunked(r: &mut impl BufRead) -> bool {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            return false;
        }
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return false;
        };
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let mut t = String::new();
                match r.read_line(&mut t) {
                    Ok(0) | Err(_) => return false,
                    Ok(_) if t.trim_end().is_empty() => return true,
                    Ok(_) => {}
                }
            }
        }
        let mut data = vec![0u8; size + 2];
        if r.read_exact(&mut data).is_err() {
            return false;
        }
    }
}

fn connect(proxy: &Proxy) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect to the proxy");
    c.set_read_timeout(Some(READ_TIMEOUT))
        .expect("read timeout");
    c
}

/// Reads one response head (the test server's answers have no body).
fn read_head(c: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).expect("a response from the proxy");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("a text head")
}

/// Sends `request` and reads its `200 OK`.
fn exchange(c: &mut TcpStream, request: &str) {
    c.write_all(request.as_bytes()).expect("send a request");
    let head = read_head(c);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

#[test]
fn counts_each_s3_request_kind_on_keep_alive_connections() {
    let proxy = Proxy::start(upstream(http_ok)).expect("start the proxy");
    let mut c = connect(&proxy);
    let h = "Host: 127.0.0.1\r\n";
    exchange(
        &mut c,
        &format!("GET /b?list-type=2&prefix=db%2F HTTP/1.1\r\n{h}\r\n"),
    );
    exchange(
        &mut c,
        &format!("GET /b?prefix=db/&delimiter=/ HTTP/1.1\r\n{h}\r\n"),
    );
    exchange(&mut c, &format!("GET /b/db/ltx/1 HTTP/1.1\r\n{h}\r\n"));
    exchange(&mut c, &format!("HEAD /b/db/ltx/1 HTTP/1.1\r\n{h}\r\n"));
    exchange(
        &mut c,
        &format!("PUT /b/k HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\nhello"),
    );
    exchange(&mut c, &format!("POST /b/big?uploads HTTP/1.1\r\n{h}\r\n"));
    let part = "PUT /b/big?partNumber=1&uploadId=u1 HTTP/1.1\r\n";
    exchange(&mut c, &format!("{part}{h}Content-Length: 3\r\n\r\nabc"));
    // A chunked part whose data looks like a request: it must be skipped, not counted.
    let chunked = "Transfer-Encoding: chunked\r\n\r\n";
    let body = "5;chunk-signature=x\r\nGET /\r\n3\r\nabc\r\n0\r\nx-amz-checksum: y\r\n\r\n";
    let part = "PUT /b/big?partNumber=2&uploadId=u1 HTTP/1.1\r\n";
    exchange(&mut c, &format!("{part}{h}{chunked}{body}"));
    let done = "<CompleteMultipartUpload></CompleteMultipartUpload>";
    let complete = format!(
        "POST /b/big?uploadId=u1 HTTP/1.1\r\n{h}Content-Length: {}\r\n\r\n{done}",
        done.len()
    );
    exchange(&mut c, &complete);
    exchange(
        &mut c,
        &format!("DELETE /b/big?uploadId=u2 HTTP/1.1\r\n{h}\r\n"),
    );
    exchange(
        &mut c,
        &format!("POST /b?delete HTTP/1.1\r\n{h}Content-Length: 2\r\n\r\n<>"),
    );
    exchange(&mut c, &format!("DELETE /b/k HTTP/1.1\r\n{h}\r\n"));
    exchange(&mut c, &format!("GET /b?versioning HTTP/1.1\r\n{h}\r\n"));

    // A head split over two writes, a pause between so the proxy reads them apart.
    c.write_all(b"PUT /b/split HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        .expect("first half");
    std::thread::sleep(Duration::from_millis(100));
    c.write_all(b"ngth: 4\r\n\r\nbody").expect("second half");
    assert!(read_head(&mut c).starts_with("HTTP/1.1 200 OK"));

    // Expect: 100-continue: the body goes only after the server says so.
    let put = format!("PUT /b/k2 HTTP/1.1\r\n{h}Content-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    c.write_all(put.as_bytes()).expect("send the head");
    assert!(read_head(&mut c).starts_with("HTTP/1.1 100 Continue"));
    exchange(&mut c, "data");

    // Two requests in one write (pipelined), answered in order.
    let two = format!("GET /b/a HTTP/1.1\r\n{h}\r\nGET /b/c HTTP/1.1\r\n{h}\r\n");
    c.write_all(two.as_bytes()).expect("send two requests");
    assert!(read_head(&mut c).starts_with("HTTP/1.1 200 OK"));
    assert!(read_head(&mut c).starts_with("HTTP/1.1 200 OK"));

    // Virtual-host style, on a second connection.
    let mut v = connect(&proxy);
    let vh = "Host: b.localhost\r\n";
    exchange(
        &mut v,
        &format!("GET /?list-type=2&prefix=chaos/ HTTP/1.1\r\n{vh}\r\n"),
    );
    exchange(&mut v, &format!("GET /chaos/ltx/1 HTTP/1.1\r\n{vh}\r\n"));

    let want = counts(&[
        ("LIST", 3),
        ("GET", 4),
        ("HEAD", 1),
        ("PUT", 3),
        ("UPLOAD_PART", 2),
        ("CREATE_MULTIPART", 1),
        ("COMPLETE_MULTIPART", 1),
        ("ABORT_MULTIPART", 1),
        ("DELETE_OBJECTS", 1),
        ("DELETE", 1),
        ("OTHER", 1),
    ]);
    assert_eq!(proxy.requests(), want);

    proxy.reset_requests();
    assert!(proxy.requests().is_empty());
    exchange(&mut c, &format!("HEAD /b/k HTTP/1.1\r\n{h}\r\n"));
    assert_eq!(proxy.requests(), counts(&[("HEAD", 1)]));
}

#[test]
fn an_unparseable_stream_counts_once_and_is_still_forwarded() {
    let proxy = Proxy::start(upstream(echo)).expect("start the proxy");
    let mut c = connect(&proxy);
    let mut sent = Vec::new();
    for piece in [
        &b"\x16\x03\x01 a TLS hello?\r\n\r\n"[..],
        b"GET /b/k HTTP/1.1\r\n\r\n",
    ] {
        c.write_all(piece).expect("send");
        let mut back = vec![0u8; piece.len()];
        c.read_exact(&mut back).expect("the bytes come back");
        assert_eq!(back, piece);
        sent.extend_from_slice(piece);
    }
    assert_eq!(proxy.requests(), counts(&[(UNPARSED, 1)]));

    // An oversize head: 100 KiB of headers, forwarded whole, then unparsed.
    let mut big = b"GET /b/k HTTP/1.1\r\n".to_vec();
    while big.len() < 100 << 10 {
        big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let mut o = connect(&proxy);
    let mut reader = o.try_clone().expect("clone");
    let len = big.len();
    let back = std::thread::spawn(move || {
        let mut back = vec![0u8; len];
        reader.read_exact(&mut back).map(|()| back)
    });
    o.write_all(&big).expect("send the big head");
    let back = back
        .join()
        .expect("reader thread")
        .expect("the bytes come back");
    assert!(back == big, "the proxy altered the bytes");
    assert_eq!(proxy.requests(), counts(&[(UNPARSED, 2)]));
}

/// Connect, send one byte, read its echo: the time a fresh connection's first round trip takes.
fn first_round_trip(proxy: &Proxy) -> (TcpStream, Duration) {
    let t0 = Instant::now();
    let mut c = connect(proxy);
    c.write_all(b"x").expect("send");
    let mut back = [0u8; 1];
    c.read_exact(&mut back).expect("echo");
    (c, t0.elapsed())
}

fn round_trip(c: &mut TcpStream) -> Duration {
    let t0 = Instant::now();
    c.write_all(b"y").expect("send");
    let mut back = [0u8; 1];
    c.read_exact(&mut back).expect("echo");
    t0.elapsed()
}

#[test]
fn a_fresh_connection_pays_the_emulated_handshake() {
    let rtt = Duration::from_millis(200);
    let proxy = Proxy::start(upstream(echo)).expect("start the proxy");
    proxy.set_latency(rtt);
    // The byte leaves the proxy no earlier than accept + rtt (handshake) + rtt/2, and its echo
    // another rtt/2 after the proxy reads it: two round trips from before connect.
    let (mut c, fresh) = first_round_trip(&proxy);
    assert!(
        fresh >= 2 * rtt,
        "fresh connection round trip {fresh:?} < 2 rtt"
    );
    // On the open connection, one round trip: rtt/2 each way.
    let warm = round_trip(&mut c);
    assert!(warm >= rtt, "warm round trip {warm:?} < rtt");
    assert!(
        warm < 5 * rtt,
        "warm round trip {warm:?}: latency is added more than once"
    );
}

#[test]
fn zero_latency_turns_emulation_off() {
    let proxy = Proxy::start(upstream(echo)).expect("start the proxy");
    proxy.set_latency(Duration::from_secs(20));
    proxy.set_latency(Duration::ZERO);
    let (mut c, fresh) = first_round_trip(&proxy);
    let warm = round_trip(&mut c);
    // 20 s of latency would take 40 s; no latency takes milliseconds.
    assert!(
        fresh + warm < Duration::from_secs(10),
        "{fresh:?} + {warm:?}"
    );
}

#[test]
fn latency_is_pipelined_not_stop_and_wait() {
    let rtt = Duration::from_millis(100);
    let total_bytes = 4 << 20;
    let proxy = Proxy::start(upstream(echo)).expect("start the proxy");
    proxy.set_latency(rtt);
    let (mut c, _) = first_round_trip(&proxy);
    let mut w = c.try_clone().expect("clone");
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || w.write_all(&vec![7u8; total_bytes]));
    let mut back = vec![0u8; total_bytes];
    c.read_exact(&mut back).expect("the echo of 4 MiB");
    let elapsed = t0.elapsed();
    writer.join().expect("writer thread").expect("write 4 MiB");
    assert!(back.iter().all(|&b| b == 7));
    // Through and back: at least rtt. Holding each 64 KiB chunk rtt/2 in turn would take
    // 64 chunks * 50 ms = 3.2 s per direction.
    assert!(elapsed >= rtt, "{elapsed:?} < rtt");
    assert!(
        elapsed < Duration::from_millis(1500),
        "4 MiB took {elapsed:?}: not pipelined"
    );
}

/// Accepts one connection on a fresh listener and hands it over.
fn one_upstream() -> (SocketAddr, std::sync::mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let addr = listener.local_addr().expect("upstream address");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((conn, _)) = listener.accept() {
            let _ = tx.send(conn);
        }
    });
    (addr, rx)
}

/// Reads until end of stream; panics on a timeout, so a connection left open fails the test.
fn read_to_close(c: &mut TcpStream) -> Vec<u8> {
    c.set_read_timeout(Some(READ_TIMEOUT))
        .expect("read timeout");
    let mut got = Vec::new();
    match c.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the connection was not closed: {e}"),
    }
    got
}

#[test]
fn closing_either_side_tears_both_down_after_the_bytes_in_flight() {
    let rtt = Duration::from_millis(100);
    for client_closes in [true, false] {
        let (addr, accepted) = one_upstream();
        let proxy = Proxy::start(addr).expect("start the proxy");
        proxy.set_latency(rtt);
        let mut c = connect(&proxy);
        let mut u = accepted.recv().expect("the proxy connects upstream");
        let t0 = Instant::now();
        let (closer, other) = if client_closes {
            (&mut c, &mut u)
        } else {
            (&mut u, &mut c)
        };
        closer.write_all(b"bye").expect("send");
        closer.shutdown(std::net::Shutdown::Both).expect("close");
        // Still in the proxy's queue when the sender closed: delivered, then closed.
        assert_eq!(
            read_to_close(other),
            b"bye",
            "client closes: {client_closes}"
        );
        assert!(t0.elapsed() < READ_TIMEOUT);
    }
}

#[test]
fn reset_cuts_open_connections_under_latency() {
    let proxy = Proxy::start(upstream(echo)).expect("start the proxy");
    proxy.set_latency(Duration::from_millis(50));
    let (mut c, _) = first_round_trip(&proxy);
    let faults = proxy.faults();
    proxy.set(Mode::Reset);
    assert!(read_to_close(&mut c).is_empty());
    assert!(proxy.faults() > faults, "the cut was not counted");
    proxy.set(Mode::Pass);
    let (mut c, _) = first_round_trip(&proxy);
    round_trip(&mut c);
}

#[test]
fn stall_holds_bytes_until_the_mode_changes() {
    let proxy = Proxy::start(upstream(echo)).expect("start the proxy");
    let (mut c, _) = first_round_trip(&proxy);
    proxy.set(Mode::Stall);
    c.write_all(b"z").expect("send");
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    let mut back = [0u8; 1];
    let early = c.read(&mut back);
    assert!(early.is_err(), "a stalled proxy forwarded: {early:?}");
    proxy.set(Mode::Pass);
    c.set_read_timeout(Some(READ_TIMEOUT))
        .expect("read timeout");
    c.read_exact(&mut back).expect("the byte after the stall");
    assert_eq!(&back, b"z");
}

#[test]
fn drop_responses_cuts_without_relaying_the_answer() {
    let proxy = Proxy::start(upstream(http_ok)).expect("start the proxy");
    proxy.set(Mode::DropResponses);
    let mut c = connect(&proxy);
    c.write_all(b"PUT /b/k HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
        .expect("send");
    assert!(read_to_close(&mut c).is_empty(), "the answer was relayed");
    assert!(proxy.faults() > 0);
    // The server did get the request: the write is ambiguous to the client.
    assert_eq!(proxy.requests(), counts(&[("PUT", 1)]));
}
