//! Counts the HTTP/1.1 requests in a client's byte stream by S3 operation kind, for benchmarks
//! that must know how many LISTs, GETs and PUTs a run cost.
//!
//! [`RequestCounter`] is a push parser over one connection's client-to-server bytes: it does no
//! I/O and never sees, alters or holds the bytes the proxy forwards; it only reads a copy. Its
//! memory is one head buffer of at most [`HEAD_BYTES_MAX`] plus a few integers: bodies are
//! skipped by count (`Content-Length`) or by walking the chunk framing (`Transfer-Encoding:
//! chunked`), never stored. A request is counted once its head is complete, before its body.
//!
//! What it does not check: that a request is valid S3 (the kind is read from the method and
//! the query keys only), that the server answered, or that the body arrived whole (a connection
//! cut mid-body just ends). `Expect: 100-continue` needs nothing special: the body follows the
//! head in the same stream once the server says continue. Bytes after a `CONNECT` or a protocol
//! upgrade are not HTTP and would count as [`UNPARSED`]; S3 clients send neither.

use std::sync::atomic::{AtomicU64, Ordering};

/// The largest request head (request line plus headers) that is buffered; a longer one makes
/// the connection [`UNPARSED`]. S3 heads are a few KiB (AWS caps headers at 8 KiB).
pub const HEAD_BYTES_MAX: usize = 64 << 10;
/// Headers per request beyond which the head is not parsed (httparse needs a fixed array).
const HEADERS_MAX: usize = 128;
/// A chunk-size line (hex size plus extensions) longer than this is malformed.
const CHUNK_LINE_BYTES_MAX: usize = 4 << 10;
/// Trailer fields after a chunked body, all lines together.
const TRAILER_BYTES_MAX: usize = HEAD_BYTES_MAX;
/// Capacity kept in the head buffer between requests, so one large head does not pin
/// [`HEAD_BYTES_MAX`] for the rest of a long keep-alive connection.
const HEAD_BUFFER_KEEP_BYTES: usize = 8 << 10;
/// A chunk size has at most this many hex digits (it must fit in a u64).
const CHUNK_SIZE_DIGITS_MAX: u8 = 16;

/// The key of [`crate::Proxy::requests`] counting connections whose stream stopped parsing.
pub const UNPARSED: &str = "UNPARSED";

/// Query keys that make a GET of a bucket root a ListObjects (v1 or v2).
const LIST_QUERY_KEYS: [&str; 8] = [
    "prefix",
    "delimiter",
    "marker",
    "max-keys",
    "encoding-type",
    "continuation-token",
    "start-after",
    "fetch-owner",
];

/// An S3 operation, as far as a method and a query tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestKind {
    /// `GET` with `list-type=`, or of a bucket root with a listing query (`prefix=`, ...), or of `/`.
    List,
    /// `GET` of an object.
    Get,
    Head,
    /// `PUT` of a whole object (not a part, a copy or a sub-resource such as `?tagging`).
    Put,
    /// `PUT` with `partNumber=` and `uploadId=`.
    UploadPart,
    /// `POST` with `uploads`.
    CreateMultipart,
    /// `POST` with `uploadId=`.
    CompleteMultipart,
    /// `DELETE` with `uploadId=`.
    AbortMultipart,
    /// `POST` with `delete`.
    DeleteObjects,
    /// `DELETE` of an object.
    Delete,
    /// Anything else: other methods, sub-resources (`?acl`, `?uploads` listings), copies.
    Other,
}

impl RequestKind {
    pub const ALL: [RequestKind; 11] = [
        RequestKind::List,
        RequestKind::Get,
        RequestKind::Head,
        RequestKind::Put,
        RequestKind::UploadPart,
        RequestKind::CreateMultipart,
        RequestKind::CompleteMultipart,
        RequestKind::AbortMultipart,
        RequestKind::DeleteObjects,
        RequestKind::Delete,
        RequestKind::Other,
    ];

    /// The key of this kind in [`crate::Proxy::requests`].
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::List => "LIST",
            RequestKind::Get => "GET",
            RequestKind::Head => "HEAD",
            RequestKind::Put => "PUT",
            RequestKind::UploadPart => "UPLOAD_PART",
            RequestKind::CreateMultipart => "CREATE_MULTIPART",
            RequestKind::CompleteMultipart => "COMPLETE_MULTIPART",
            RequestKind::AbortMultipart => "ABORT_MULTIPART",
            RequestKind::DeleteObjects => "DELETE_OBJECTS",
            RequestKind::Delete => "DELETE",
            RequestKind::Other => "OTHER",
        }
    }
}

/// What the counter saw in a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tallied {
    Request(RequestKind),
    /// The stream stopped parsing; nothing more is counted on this connection.
    Unparsed,
}

/// The proxy-wide counts, shared by every connection's counter.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    kinds: [AtomicU64; RequestKind::ALL.len()],
    unparsed: AtomicU64,
}

impl Tally {
    pub(crate) fn add(&self, t: Tallied) {
        let counter = match t {
            Tallied::Request(kind) => self.kinds.get(kind as usize),
            Tallied::Unparsed => Some(&self.unparsed),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The non-zero counts by name.
    pub(crate) fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        let kinds = RequestKind::ALL
            .iter()
            .zip(&self.kinds)
            .map(|(k, c)| (k.name(), c));
        kinds
            .chain(std::iter::once((UNPARSED, &self.unparsed)))
            .map(|(name, c)| (name.to_string(), c.load(Ordering::SeqCst)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub(crate) fn reset(&self) {
        for c in self.kinds.iter().chain(std::iter::once(&self.unparsed)) {
            c.store(0, Ordering::SeqCst);
        }
    }
}

/// The stream is not HTTP/1.1 as we frame it; the reason is for debugging only.
#[derive(Debug)]
struct Malformed(
    #[expect(dead_code, reason = "read only through Debug, when debugging a stream")] &'static str,
);

#[derive(Debug)]
enum State {
    /// Between requests or inside a head (the bytes so far are in `RequestCounter::head`).
    Head,
    Body {
        left_bytes: u64,
    },
    /// Inside a chunk-size line; `in_ext` once past the digits (extensions are ignored).
    ChunkSize {
        size: u64,
        digits: u8,
        in_ext: bool,
        line_bytes: usize,
    },
    ChunkData {
        left_bytes: u64,
    },
    /// After a chunk's data, where CRLF must follow.
    ChunkEnd {
        seen_cr: bool,
    },
    /// After the last (zero) chunk: trailer lines until an empty one.
    Trailer {
        line_bytes: usize,
        total_bytes: usize,
    },
    /// Stopped for good: the rest of the connection is not counted.
    Unparsed,
}

/// One connection's request parser; see the module doc.
#[derive(Debug)]
pub(crate) struct RequestCounter {
    state: State,
    /// The current head so far; never longer than [`HEAD_BYTES_MAX`].
    head: Vec<u8>,
}

impl RequestCounter {
    pub(crate) fn new() -> RequestCounter {
        RequestCounter {
            state: State::Head,
            head: Vec::new(),
        }
    }

    /// Reads the next bytes of the client's stream, calling `tally` for each request head
    /// completed and once if the stream stops parsing.
    pub(crate) fn feed(&mut self, mut input: &[u8], tally: &mut impl FnMut(Tallied)) {
        while !input.is_empty() {
            match self.step(input) {
                Ok((consumed, kind)) => {
                    // Every step consumes at least one byte, so the loop ends.
                    debug_assert!(consumed > 0 && consumed <= input.len());
                    input = input.get(consumed..).unwrap_or_default();
                    if let Some(kind) = kind {
                        tally(Tallied::Request(kind));
                    }
                }
                Err(Malformed(_)) => {
                    self.state = State::Unparsed;
                    self.head = Vec::new();
                    tally(Tallied::Unparsed);
                    return;
                }
            }
        }
    }

    /// Consumes a non-empty prefix of `input`; returns its length and the kind of a request
    /// whose head it completed.
    fn step(&mut self, input: &[u8]) -> Result<(usize, Option<RequestKind>), Malformed> {
        let Some(&b) = input.first() else {
            return Ok((0, None));
        };
        match &mut self.state {
            State::Head => return self.step_head(input),
            State::Unparsed => return Ok((input.len(), None)),
            State::Body { left_bytes } | State::ChunkData { left_bytes } => {
                let n = skip(left_bytes, input.len());
                if *left_bytes == 0 {
                    self.state = match self.state {
                        State::ChunkData { .. } => State::ChunkEnd { seen_cr: false },
                        _ => State::Head,
                    };
                }
                return Ok((n, None));
            }
            State::ChunkSize {
                size,
                digits,
                in_ext,
                line_bytes,
            } => {
                *line_bytes += 1;
                if *line_bytes > CHUNK_LINE_BYTES_MAX {
                    return Err(Malformed("chunk-size line too long"));
                }
                match b {
                    b'\n' if *digits == 0 => return Err(Malformed("chunk size missing")),
                    b'\n' if *size == 0 => {
                        self.state = State::Trailer {
                            line_bytes: 0,
                            total_bytes: 0,
                        }
                    }
                    b'\n' => self.state = State::ChunkData { left_bytes: *size },
                    b'\r' => {}
                    _ if *in_ext => {}
                    b';' | b' ' | b'\t' if *digits > 0 => *in_ext = true,
                    _ => {
                        let Some(v) = (b as char).to_digit(16) else {
                            return Err(Malformed("chunk size not hex"));
                        };
                        if *digits == CHUNK_SIZE_DIGITS_MAX {
                            return Err(Malformed("chunk size overflows"));
                        }
                        *size = (*size << 4) | u64::from(v);
                        *digits += 1;
                    }
                }
            }
            State::ChunkEnd { seen_cr } => match b {
                b'\r' if !*seen_cr => *seen_cr = true,
                b'\n' => self.state = chunk_size_start(),
                _ => return Err(Malformed("chunk data not followed by CRLF")),
            },
            State::Trailer {
                line_bytes,
                total_bytes,
            } => {
                *total_bytes += 1;
                if *total_bytes > TRAILER_BYTES_MAX {
                    return Err(Malformed("trailer too long"));
                }
                match b {
                    b'\n' if *line_bytes == 0 => self.state = State::Head,
                    b'\n' => *line_bytes = 0,
                    b'\r' => {}
                    _ => *line_bytes += 1,
                }
            }
        }
        Ok((1, None))
    }

    fn step_head(&mut self, input: &[u8]) -> Result<(usize, Option<RequestKind>), Malformed> {
        if self.head.is_empty() {
            // Blank lines between requests are allowed (RFC 9112 section 2.2); dropping them
            // here means the first blank line found below always ends a head.
            let blank = input
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                return Ok((blank, None));
            }
        }
        let old_len = self.head.len();
        let room = HEAD_BYTES_MAX - old_len;
        if room == 0 {
            return Err(Malformed("request head too long"));
        }
        let take = input.len().min(room);
        self.head
            .extend_from_slice(input.get(..take).unwrap_or_default());
        let Some(end) = head_end(&self.head, old_len) else {
            return Ok((take, None));
        };
        let kind = {
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(self.head.get(..end).unwrap_or_default()) {
                Ok(httparse::Status::Complete(len)) if len == end => {}
                Ok(_) => return Err(Malformed("head does not end at its blank line")),
                Err(_) => return Err(Malformed("head does not parse")),
            }
            let method = req.method.unwrap_or_default();
            let target = req.path.unwrap_or_default();
            self.state = match framing(req.headers)? {
                Framing::None => State::Head,
                Framing::Length(n) => State::Body { left_bytes: n },
                Framing::Chunked => chunk_size_start(),
            };
            classify(method, target, req.headers)
        };
        self.head.clear();
        self.head.shrink_to(HEAD_BUFFER_KEEP_BYTES);
        // `head_end` only finds ends past `old_len`, so this is at least 1.
        Ok((end - old_len, Some(kind)))
    }
}

fn chunk_size_start() -> State {
    State::ChunkSize {
        size: 0,
        digits: 0,
        in_ext: false,
        line_bytes: 0,
    }
}

/// Takes up to `available` bytes off `left`, returning how many.
fn skip(left: &mut u64, available: usize) -> usize {
    let n = usize::try_from(*left).map_or(available, |l| l.min(available));
    *left -= n as u64;
    n
}

/// The end of the head in `buf` (just past its blank line, CRLF or bare LF), looking only at
/// line ends from `from` on (earlier ones were looked at before).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from.max(1)..buf.len())
        .find(|&i| {
            buf.get(i) == Some(&b'\n')
                && match buf.get(i - 1) {
                    Some(b'\n') => true,
                    Some(b'\r') => i >= 2 && buf.get(i - 2) == Some(&b'\n'),
                    _ => false,
                }
        })
        .map(|i| i + 1)
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// How the body of a request is delimited (RFC 9112 section 6.3, for requests).
fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, Malformed> {
    let mut chunked = None;
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| Malformed("transfer-encoding not text"))?;
            // The last coding of the last header decides; only chunked frames a request body.
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let value =
                std::str::from_utf8(h.value).map_err(|_| Malformed("content-length not text"))?;
            for v in value.split(',').map(str::trim) {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Malformed("content-length not a number"));
                }
                let n: u64 = v
                    .parse()
                    .map_err(|_| Malformed("content-length overflows"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Malformed("content-lengths disagree"));
                }
                length = Some(n);
            }
        }
    }
    match (chunked, length) {
        // Transfer-Encoding overrides Content-Length.
        (Some(true), _) => Ok(Framing::Chunked),
        (Some(false), _) => Err(Malformed("request body coding other than chunked")),
        (None, Some(n)) if n > 0 => Ok(Framing::Length(n)),
        (None, _) => Ok(Framing::None),
    }
}

/// The S3 operation of a request, from its method, target and (for copies) headers. Both
/// path-style (`/bucket/key`) and virtual-host style (`/key`) targets are read: a "bucket
/// root" is a path of at most one segment, which is ambiguous between the two styles only for
/// a GET with no listing query, read as an object GET.
pub(crate) fn classify(
    method: &str,
    target: &str,
    headers: &[httparse::Header<'_>],
) -> RequestKind {
    // Absolute form (`http://host/path`), which a client talking to a proxy may send.
    let target = match target.split_once("://") {
        Some((_, rest)) if !target.starts_with('/') => {
            rest.find('/').map_or("/", |i| rest.get(i..).unwrap_or("/"))
        }
        _ => target,
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params = || query.split('&').filter(|p| !p.is_empty());
    let has = |key: &str| params().any(|p| p.split_once('=').map_or(p, |(k, _)| k) == key);
    // A key with no `=` is a sub-resource (`?acl`, `?uploads`, `?tagging`, `?delete`).
    let sub_resource = params().any(|p| !p.contains('='));
    let segments = path.trim_matches('/');
    let bucket_root = !segments.contains('/');
    let copy = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("x-amz-copy-source"));
    match method {
        "GET" if has("list-type") => RequestKind::List,
        // `?uploadId=` is ListParts; sub-resources are ListMultipartUploads, GetObjectAcl, ...
        "GET" if has("uploadId") || sub_resource => RequestKind::Other,
        "GET" if bucket_root && LIST_QUERY_KEYS.iter().any(|k| has(k)) => RequestKind::List,
        // No object has an empty key: a bare `/` lists (a virtual-host bucket or the buckets).
        "GET" if segments.is_empty() => RequestKind::List,
        "GET" => RequestKind::Get,
        "HEAD" => RequestKind::Head,
        "PUT" if has("partNumber") && has("uploadId") => RequestKind::UploadPart,
        "PUT" if sub_resource || copy || segments.is_empty() => RequestKind::Other,
        "PUT" => RequestKind::Put,
        "POST" if has("uploads") => RequestKind::CreateMultipart,
        "POST" if has("uploadId") => RequestKind::CompleteMultipart,
        "POST" if has("delete") => RequestKind::DeleteObjects,
        "DELETE" if has("uploadId") => RequestKind::AbortMultipart,
        "DELETE" if sub_resource => RequestKind::Other,
        "DELETE" => RequestKind::Delete,
        _ => RequestKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: &str, target: &str) -> RequestKind {
        classify(method, target, &[])
    }

    /// Feeds `pieces` one after another, returning what was tallied.
    fn count(pieces: &[&[u8]]) -> Vec<Tallied> {
        let mut c = RequestCounter::new();
        let mut out = Vec::new();
        for p in pieces {
            c.feed(p, &mut |t| out.push(t));
        }
        out
    }

    fn requests(kinds: &[RequestKind]) -> Vec<Tallied> {
        kinds.iter().map(|&k| Tallied::Request(k)).collect()
    }

    #[test]
    fn classifies_path_style_targets() {
        use RequestKind::*;
        let cases = [
            ("GET", "/b?list-type=2&prefix=db%2F&delimiter=%2F", List),
            ("GET", "/b?prefix=db/", List),
            ("GET", "/b/?delimiter=/", List),
            ("GET", "/b/db/ltx/0001", Get),
            ("GET", "/b/db/ltx/0001?x-id=GetObject", Get),
            ("GET", "/b/db?prefix=x", Get),
            ("GET", "/b?uploads", Other),
            ("GET", "/b/k?uploadId=u1", Other),
            ("HEAD", "/b/k", Head),
            ("PUT", "/b/k", Put),
            ("PUT", "/b/k?x-id=PutObject", Put),
            ("PUT", "/b/k?partNumber=3&uploadId=u1", UploadPart),
            (
                "PUT",
                "/b/k?uploadId=u1&partNumber=3&x-id=UploadPart",
                UploadPart,
            ),
            ("PUT", "/b/k?tagging", Other),
            ("POST", "/b/k?uploads", CreateMultipart),
            ("POST", "/b/k?uploads=", CreateMultipart),
            ("POST", "/b/k?uploadId=u1", CompleteMultipart),
            ("POST", "/b?delete", DeleteObjects),
            ("POST", "/b?delete&x-id=DeleteObjects", DeleteObjects),
            ("POST", "/b/k", Other),
            ("DELETE", "/b/k?uploadId=u1", AbortMultipart),
            ("DELETE", "/b/k", Delete),
            ("DELETE", "/b/k?tagging", Other),
            ("OPTIONS", "/b/k", Other),
            ("get", "/b/k", Other),
        ];
        for (method, target, want) in cases {
            assert_eq!(kind(method, target), want, "{method} {target}");
        }
    }

    #[test]
    fn classifies_virtual_host_and_absolute_targets() {
        use RequestKind::*;
        let cases = [
            ("GET", "/?list-type=2&prefix=chaos/run/", List),
            ("GET", "/?prefix=chaos/&delimiter=/", List),
            ("GET", "/", List),
            ("GET", "/chaos/run/ltx/0001", Get),
            ("GET", "/k", Get),
            ("PUT", "/", Other),
            ("POST", "/?delete", DeleteObjects),
            ("GET", "http://b.localhost:9000/?list-type=2", List),
            ("GET", "http://localhost:9000/b/k", Get),
            ("GET", "http://localhost:9000", List),
        ];
        for (method, target, want) in cases {
            assert_eq!(kind(method, target), want, "{method} {target}");
        }
    }

    #[test]
    fn a_copy_is_not_a_plain_put() {
        let h = [httparse::Header {
            name: "X-Amz-Copy-Source",
            value: b"/b/src",
        }];
        assert_eq!(classify("PUT", "/b/dst", &h), RequestKind::Other);
        let part = "/b/dst?partNumber=1&uploadId=u";
        assert_eq!(classify("PUT", part, &h), RequestKind::UploadPart);
    }

    #[test]
    fn a_head_split_at_every_byte_counts_once() {
        let stream = b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b/k HTTP/1.1\r\nHost: h\r\n\r\n";
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            let got = count(&[a, b]);
            assert_eq!(
                got,
                requests(&[RequestKind::Put, RequestKind::Get]),
                "split at {at}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            count(&bytes),
            requests(&[RequestKind::Put, RequestKind::Get])
        );
    }

    #[test]
    fn a_body_that_looks_like_a_request_is_skipped() {
        let body = b"GET /b/other HTTP/1.1\r\n\r\n";
        let head = format!(
            "PUT /b/k HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let got = count(&[head.as_bytes(), body, b"HEAD /b/k HTTP/1.1\r\n\r\n"]);
        assert_eq!(got, requests(&[RequestKind::Put, RequestKind::Head]));
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers_are_skipped() {
        let stream = b"PUT /b/k?partNumber=1&uploadId=u HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
            5;chunk-signature=abc\r\nGET /\r\n\
            A\r\n0123456789\r\n\
            0\r\nx-amz-checksum-crc32: AAAA\r\n\r\n\
            \r\nDELETE /b/k HTTP/1.1\r\n\r\n";
        let want = requests(&[RequestKind::UploadPart, RequestKind::Delete]);
        assert_eq!(count(&[stream]), want);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(count(&bytes), want);
    }

    #[test]
    fn bare_lf_heads_parse() {
        let got = count(&[b"GET /b/k HTTP/1.1\nHost: h\n\nHEAD /b/k HTTP/1.1\n\n"]);
        assert_eq!(got, requests(&[RequestKind::Get, RequestKind::Head]));
    }

    #[test]
    fn garbage_is_unparsed_once_and_then_ignored() {
        let got = count(&[
            b"\x16\x03\x01 not http\r\n\r\n",
            b"GET /b/k HTTP/1.1\r\n\r\n",
        ]);
        assert_eq!(got, vec![Tallied::Unparsed]);
    }

    #[test]
    fn an_oversize_head_is_unparsed() {
        let mut c = RequestCounter::new();
        let mut out = Vec::new();
        c.feed(b"GET /b/k HTTP/1.1\r\n", &mut |t| out.push(t));
        let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
        while out.is_empty() {
            c.feed(filler.as_bytes(), &mut |t| out.push(t));
            assert!(c.head.len() <= HEAD_BYTES_MAX);
        }
        assert_eq!(out, vec![Tallied::Unparsed]);
        assert_eq!(c.head.capacity(), 0, "the head buffer is released");
    }

    #[test]
    fn malformed_framing_is_unparsed() {
        let cases: [&[u8]; 5] = [
            b"PUT /b/k HTTP/1.1\r\nContent-Length: 12x\r\n\r\n",
            b"PUT /b/k HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"PUT /b/k HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"PUT /b/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"PUT /b/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        ];
        for stream in cases {
            let got = count(&[stream]);
            let text = String::from_utf8_lossy(stream);
            assert_eq!(got.last(), Some(&Tallied::Unparsed), "{text}");
            assert_eq!(got.iter().filter(|t| **t == Tallied::Unparsed).count(), 1);
        }
    }

    #[test]
    fn a_large_body_holds_no_memory() {
        let mut c = RequestCounter::new();
        let mut out = Vec::new();
        let body_bytes: u64 = 1 << 30;
        let head = format!("PUT /b/k HTTP/1.1\r\nContent-Length: {body_bytes}\r\n\r\n");
        c.feed(head.as_bytes(), &mut |t| out.push(t));
        let piece = vec![b'G'; 1 << 20];
        for _ in 0..(body_bytes >> 20) {
            c.feed(&piece, &mut |t| out.push(t));
        }
        assert!(c.head.capacity() <= HEAD_BUFFER_KEEP_BYTES);
        c.feed(b"GET /b/k HTTP/1.1\r\n\r\n", &mut |t| out.push(t));
        assert_eq!(out, requests(&[RequestKind::Put, RequestKind::Get]));
    }

    #[test]
    fn tally_snapshot_lists_non_zero_counts_and_resets() {
        let t = Tally::default();
        t.add(Tallied::Request(RequestKind::Put));
        t.add(Tallied::Request(RequestKind::Put));
        t.add(Tallied::Unparsed);
        let want: std::collections::BTreeMap<String, u64> =
            [("PUT".to_string(), 2), (UNPARSED.to_string(), 1)].into();
        assert_eq!(t.snapshot(), want);
        t.reset();
        assert!(t.snapshot().is_empty());
    }
}
