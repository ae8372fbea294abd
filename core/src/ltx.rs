//! The LTX file codec, byte-compatible with superfly/ltx format version 3 (Litestream 0.5.x).
//!
//! ```text
//! header   100 B  "LTX1" flags:u32 page_size:u32 commit:u32 min_txid:u64 max_txid:u64
//!                 timestamp_ms:i64 pre_apply:u64 wal_offset:i64 wal_size:i64 wal_salt1:u32
//!                 wal_salt2:u32 node_id:u64 reserved[20]            (all big-endian)
//! pages    per page, ascending pgno: pgno:u32 flags:u16 (bit 0 = a size follows)
//!                 size:u32 lz4-block(page)
//!          end    six zero bytes
//! index    uvarint (pgno, offset, size) triples, uvarint 0, index_size:u64
//! trailer  16 B   post_apply:u64 file_checksum:u64
//! ```
//!
//! The file checksum covers every byte above except compressed page bodies (the *decompressed*
//! page is hashed instead) and except the file checksum itself. Files without the size flag
//! carry each page as an LZ4 *frame* (early 0.5 releases); the decoder reads both.

use std::io::{self, Read, Write};

use crate::checksum::{CHECKSUM_FLAG, DbChecksum, Hasher, lock_pgno, page_checksum};

pub const MAGIC: &[u8; 4] = b"LTX1";
pub const HEADER_SIZE: usize = 100;
pub const PAGE_HEADER_SIZE: usize = 6;
pub const TRAILER_SIZE: usize = 16;
/// Header flag: the file carries no database checksums (Litestream sets it on every file).
pub const HEADER_FLAG_NO_CHECKSUM: u32 = 1 << 1;
const HEADER_FLAG_MASK: u32 = HEADER_FLAG_NO_CHECKSUM;
/// Page-header flag: a u32 compressed size follows and the body is an LZ4 block.
pub const PAGE_FLAG_SIZE: u16 = 1;
/// Marks sluice's database checksums in the header's reserved bytes 80..100 (see [`ExtChecksums`]).
pub const EXT_MAGIC: &[u8; 4] = b"SLCK";

/// Errors found while decoding or encoding an LTX file. The caller adds the file name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LtxError {
    #[error("not an LTX file (bad magic)")]
    BadMagic,
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    #[error("invalid page: {0}")]
    InvalidPage(String),
    #[error("file is truncated")]
    Truncated,
    #[error(
        "file checksum mismatch: trailer says {stored:016x}, content hashes to {computed:016x}"
    )]
    FileChecksumMismatch { stored: u64, computed: u64 },
    #[error(
        "database checksum mismatch: the file records {stored:016x}, the pages hash to {computed:016x}"
    )]
    DbChecksumMismatch { stored: u64, computed: u64 },
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for LtxError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            LtxError::Truncated
        } else {
            LtxError::Io(e)
        }
    }
}

/// The fixed header at the start of every LTX file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub page_size: u32,
    /// Database size in pages after this file is applied.
    pub commit: u32,
    pub min_txid: u64,
    pub max_txid: u64,
    pub timestamp_ms: i64,
    /// Database checksum before applying; zero on snapshots and no-checksum files.
    pub pre_apply_checksum: u64,
    pub wal_offset: i64,
    pub wal_size: i64,
    pub wal_salt1: u32,
    pub wal_salt2: u32,
    pub node_id: u64,
    /// sluice's database checksums, carried in the reserved bytes.
    pub ext: Option<ExtChecksums>,
}

/// Database checksums stored in header bytes 80..100 as `"SLCK" pre:u64 post:u64`.
///
/// Why not the standard fields: Litestream 0.5.17's restore re-encodes its inputs with the
/// no-checksum flag but copies the last input's post-apply checksum into the output, which then
/// fails its own validation ("post-apply checksum not allowed"), so it cannot restore any file
/// that uses the standard checksum fields. sluice therefore writes no-checksum files, which
/// Litestream restores, and keeps its checksums where Litestream ignores them (superfly/ltx
/// neither reads nor checks the reserved bytes; the file checksum covers them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtChecksums {
    /// Database checksum before applying; zero on snapshots.
    pub pre: u64,
    /// Database checksum after applying.
    pub post: u64,
}

impl Header {
    /// A snapshot starts at TXID 1 and carries every page of the database.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    pub fn has_checksums(&self) -> bool {
        self.flags & HEADER_FLAG_NO_CHECKSUM == 0
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        if let Some(ext) = self.ext {
            b[80..84].copy_from_slice(EXT_MAGIC);
            b[84..92].copy_from_slice(&ext.pre.to_be_bytes());
            b[92..100].copy_from_slice(&ext.post.to_be_bytes());
        }
        b
    }

    /// The database checksums before and after this file, from whichever form it uses.
    pub fn db_checksums(&self, trailer: &Trailer) -> Option<(u64, u64)> {
        match self.ext {
            Some(e) => Some((e.pre, e.post)),
            None if self.has_checksums() => {
                Some((self.pre_apply_checksum, trailer.post_apply_checksum))
            }
            None => None,
        }
    }

    /// Decodes and validates a header.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Self, LtxError> {
        if &b[0..4] != MAGIC {
            return Err(LtxError::BadMagic);
        }
        let h = Header {
            flags: be_u32(b, 4),
            page_size: be_u32(b, 8),
            commit: be_u32(b, 12),
            min_txid: be_u64(b, 16),
            max_txid: be_u64(b, 24),
            timestamp_ms: be_u64(b, 32) as i64,
            pre_apply_checksum: be_u64(b, 40),
            wal_offset: be_u64(b, 48) as i64,
            wal_size: be_u64(b, 56) as i64,
            wal_salt1: be_u32(b, 64),
            wal_salt2: be_u32(b, 68),
            node_id: be_u64(b, 72),
            ext: (&b[80..84] == EXT_MAGIC).then(|| ExtChecksums {
                pre: be_u64(b, 84),
                post: be_u64(b, 92),
            }),
        };
        h.validate()?;
        Ok(h)
    }

    /// The rules superfly/ltx enforces, so we never write a file Litestream would refuse.
    pub fn validate(&self) -> Result<(), LtxError> {
        let bad = |s: String| Err(LtxError::InvalidHeader(s));
        if self.flags & !HEADER_FLAG_MASK != 0 {
            return bad(format!("unknown flags 0x{:08x}", self.flags));
        }
        if !is_valid_page_size(self.page_size) {
            return bad(format!("invalid page size {}", self.page_size));
        }
        if self.min_txid == 0 || self.max_txid == 0 {
            return bad("transaction ids must be non-zero".into());
        }
        if self.min_txid > self.max_txid {
            return bad(format!(
                "transaction ids out of order ({:016x} > {:016x})",
                self.min_txid, self.max_txid
            ));
        }
        if self.wal_offset < 0 || self.wal_size < 0 {
            return bad("negative WAL offset or size".into());
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return bad("WAL salt without a WAL offset".into());
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return bad("WAL size without a WAL offset".into());
        }
        if self.is_snapshot() || !self.has_checksums() {
            if self.pre_apply_checksum != 0 {
                return bad(
                    "pre-apply checksum not allowed on a snapshot or no-checksum file".into(),
                );
            }
        } else if self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
            return bad("pre-apply checksum missing".into());
        }
        if let Some(ext) = self.ext {
            if self.has_checksums() {
                return bad(
                    "sluice checksums on a file that uses the standard checksum fields".into(),
                );
            }
            if ext.post & CHECKSUM_FLAG == 0
                || (self.is_snapshot() != (ext.pre == 0))
                || (ext.pre != 0 && ext.pre & CHECKSUM_FLAG == 0)
            {
                return bad("malformed sluice checksums".into());
            }
        }
        Ok(())
    }
}

pub fn is_valid_page_size(size: u32) -> bool {
    (512..=65536).contains(&size) && size.is_power_of_two()
}

/// The 16-byte trailer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trailer {
    /// Database checksum after applying; zero on no-checksum files.
    pub post_apply_checksum: u64,
    pub file_checksum: u64,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The page index of a file being written or read, kept compactly. LTX's own index holds three
/// uvarints a page with absolute offsets (about 11 bytes a page in a 10 GiB file); this holds
/// two, the step from the previous page number and the page's frame size (about 3 bytes a
/// page): frames are contiguous from the end of the header, so offsets follow from the sizes.
/// Expanded to LTX's entries only while they are written out or compared.
#[derive(Debug, Default)]
struct PageLog {
    bytes: Vec<u8>,
    last_pgno: u32,
}

impl PageLog {
    /// Page `pgno` (above every page before it) has a frame of `size` bytes right after the
    /// previous page's.
    fn push(&mut self, pgno: u32, size: u64) {
        put_uvarint(&mut self.bytes, u64::from(pgno - self.last_pgno));
        put_uvarint(&mut self.bytes, size);
        self.last_pgno = pgno;
    }

    /// LTX's index entries: page number, offset of its frame, frame size.
    fn entries(&self) -> impl Iterator<Item = [u64; 3]> + '_ {
        let (mut pos, mut pgno, mut offset) = (0usize, 0u64, HEADER_SIZE as u64);
        std::iter::from_fn(move || {
            if pos >= self.bytes.len() {
                return None;
            }
            // Written by `push`: always whole.
            pgno += read_uvarint(&self.bytes, &mut pos).ok()?;
            let size = read_uvarint(&self.bytes, &mut pos).ok()?;
            let entry = [pgno, offset, size];
            offset += size;
            Some(entry)
        })
    }
}

/// The bytes after a file's page block, read in bounded chunks: each byte is hashed into the
/// file checksum once eight more have been read, so that at the end of the file the eight
/// not hashed are the stored checksum.
struct Tail<'a, R> {
    input: &'a mut R,
    buf: Vec<u8>,
    /// `buf[start..pos]` is read but not hashed; `buf[pos..len]` not read yet.
    start: usize,
    pos: usize,
    len: usize,
    /// Bytes read so far.
    read: u64,
}

impl<'a, R: Read> Tail<'a, R> {
    const CHUNK: usize = 64 << 10;

    /// `hint`: about how many bytes the tail holds (the buffer is no larger than needed).
    fn new(input: &'a mut R, hint: usize) -> Self {
        Self {
            input,
            buf: vec![0u8; hint.clamp(64, Self::CHUNK)],
            start: 0,
            pos: 0,
            len: 0,
            read: 0,
        }
    }

    /// The next byte, or `None` at the end of the file.
    fn byte(&mut self, hash: &mut Hasher) -> Result<Option<u8>, LtxError> {
        if self.pos == self.len {
            // Hash all but the last eight read, move those to the front, refill after them.
            let keep = (self.pos - self.start).min(8);
            hash.update(&self.buf[self.start..self.pos - keep]);
            self.buf.copy_within(self.pos - keep..self.pos, 0);
            let n = loop {
                match self.input.read(&mut self.buf[keep..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            };
            (self.start, self.pos, self.len) = (0, keep, keep + n);
            if n == 0 {
                return Ok(None);
            }
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        self.read += 1;
        Ok(Some(b))
    }

    fn uvarint(&mut self, hash: &mut Hasher) -> Result<u64, LtxError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte(hash)?.ok_or(LtxError::Truncated)?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(LtxError::InvalidPage("page index varint overflows".into()))
    }

    fn u64(&mut self, hash: &mut Hasher) -> Result<u64, LtxError> {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte(hash)?.ok_or(LtxError::Truncated)?;
        }
        Ok(u64::from_be_bytes(b))
    }

    /// Reads to the end of the file and returns the last eight bytes, the ones not hashed, or
    /// `None` if fewer than eight were read. Memory stays one buffer, whatever the length (the
    /// index of a 100 GB database is about 270 MB).
    fn drain(&mut self, hash: &mut Hasher) -> Result<Option<u64>, LtxError> {
        loop {
            // Skip what the buffer holds; `byte` hashes what was skipped when it refills.
            self.read += (self.len - self.pos) as u64;
            self.pos = self.len;
            if self.byte(hash)?.is_none() {
                break;
            }
        }
        if self.pos - self.start < 8 {
            return Ok(None);
        }
        hash.update(&self.buf[self.start..self.pos - 8]);
        Ok(Some(be_u64(&self.buf, self.pos - 8)))
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_uvarint(b: &[u8], pos: &mut usize) -> Result<u64, LtxError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = b.get(*pos) else {
            return Err(LtxError::Truncated);
        };
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(LtxError::InvalidPage("page index varint overflows".into()))
}

/// A writer that counts bytes and hashes what the file checksum covers.
struct Counted<W> {
    inner: W,
    offset: u64,
    hash: Hasher,
}

impl<W: Write> Counted<W> {
    fn write_hashed(&mut self, b: &[u8]) -> io::Result<()> {
        self.inner.write_all(b)?;
        self.hash.update(b);
        self.offset += b.len() as u64;
        Ok(())
    }
}

/// Streams one LTX file out. Pages must arrive in ascending order; a snapshot must carry
/// every page 1..=commit except the lock page. Memory: one compressed page plus the page index,
/// kept compactly as it is written (about 3 bytes a page: 8 MiB for a 10 GiB snapshot).
pub struct Encoder<W: Write> {
    out: Counted<W>,
    header: Header,
    prev_pgno: u32,
    /// The page index, written out at the end.
    index: PageLog,
    compressed: Vec<u8>,
    /// Database checksum accumulated over a snapshot's pages.
    snapshot_sum: DbChecksum,
}

impl<W: Write> Encoder<W> {
    pub fn new(inner: W, header: Header) -> Result<Self, LtxError> {
        header.validate()?;
        let mut out = Counted {
            inner,
            offset: 0,
            hash: Hasher::new(),
        };
        out.write_hashed(&header.encode())?;
        let bound = lz4_flex::block::get_maximum_output_size(header.page_size as usize);
        Ok(Self {
            out,
            header,
            prev_pgno: 0,
            index: PageLog::default(),
            compressed: vec![0u8; bound],
            snapshot_sum: DbChecksum::EMPTY,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn encode_page(&mut self, pgno: u32, page: &[u8]) -> Result<(), LtxError> {
        let h = &self.header;
        let bad = |s: String| Err(LtxError::InvalidPage(s));
        if page.len() != h.page_size as usize {
            return bad(format!(
                "page {pgno} has {} bytes, want {}",
                page.len(),
                h.page_size
            ));
        }
        if pgno == 0 || pgno > h.commit {
            return bad(format!("page {pgno} outside 1..={}", h.commit));
        }
        let lock = lock_pgno(h.page_size);
        if pgno == lock {
            return bad(format!("page {pgno} is the lock page"));
        }
        if h.is_snapshot() {
            let expected = if self.prev_pgno + 1 == lock {
                lock + 1
            } else {
                self.prev_pgno + 1
            };
            if pgno != expected {
                return bad(format!(
                    "snapshot pages not sequential: {} then {pgno}",
                    self.prev_pgno
                ));
            }
            self.snapshot_sum.toggle(page_checksum(pgno, page));
        } else if pgno <= self.prev_pgno {
            return bad(format!(
                "pages out of order: {} then {pgno}",
                self.prev_pgno
            ));
        }
        let n = lz4_flex::block::compress_into(page, &mut self.compressed)
            .map_err(|e| LtxError::InvalidPage(format!("lz4 compression failed: {e}")))?;
        let offset = self.out.offset;
        let mut ph = [0u8; PAGE_HEADER_SIZE + 4];
        ph[0..4].copy_from_slice(&pgno.to_be_bytes());
        ph[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        ph[6..10].copy_from_slice(&(n as u32).to_be_bytes());
        self.out.write_hashed(&ph)?;
        self.out.inner.write_all(&self.compressed[..n])?;
        self.out.offset += n as u64;
        self.out.hash.update(page);
        self.index.push(pgno, self.out.offset - offset);
        self.prev_pgno = pgno;
        Ok(())
    }

    /// Finishes the file. `post_apply` is the database checksum after applying it; it must be
    /// `None` exactly when the header has the no-checksum flag.
    pub fn finish(mut self, post_apply: Option<DbChecksum>) -> Result<(W, Trailer), LtxError> {
        let h = self.header;
        let post = match (h.has_checksums(), post_apply) {
            (true, Some(sum)) => sum.raw(),
            (false, None) => 0,
            (true, None) => {
                return Err(LtxError::InvalidHeader(
                    "post-apply checksum required".into(),
                ));
            }
            (false, Some(_)) => {
                return Err(LtxError::InvalidHeader(
                    "no-checksum file given a checksum".into(),
                ));
            }
        };
        if h.is_snapshot() {
            let last = if h.commit == lock_pgno(h.page_size) {
                h.commit - 1
            } else {
                h.commit
            };
            if self.prev_pgno != last {
                return Err(LtxError::InvalidPage(format!(
                    "snapshot ends at page {} but the database has {} pages",
                    self.prev_pgno, h.commit
                )));
            }
            let claimed = h.ext.map_or(post, |e| e.post);
            if (h.has_checksums() || h.ext.is_some()) && claimed != self.snapshot_sum.raw() {
                return Err(LtxError::DbChecksumMismatch {
                    stored: claimed,
                    computed: self.snapshot_sum.raw(),
                });
            }
        }
        self.out.write_hashed(&[0u8; PAGE_HEADER_SIZE])?;
        // The index, expanded to LTX's entries a chunk at a time.
        const CHUNK: usize = 64 << 10;
        let mut buf = Vec::with_capacity(CHUNK + 64);
        // The size field counts the index entries and terminator, not itself.
        let mut index_len = 0u64;
        for entry in self.index.entries() {
            for v in entry {
                put_uvarint(&mut buf, v);
            }
            if buf.len() >= CHUNK {
                index_len += buf.len() as u64;
                self.out.write_hashed(&buf)?;
                buf.clear();
            }
        }
        put_uvarint(&mut buf, 0);
        index_len += buf.len() as u64;
        buf.extend_from_slice(&index_len.to_be_bytes());
        self.out.write_hashed(&buf)?;
        self.out.write_hashed(&post.to_be_bytes())?;
        let Counted {
            mut inner, hash, ..
        } = self.out;
        let trailer = Trailer {
            post_apply_checksum: post,
            file_checksum: hash.finish_flagged(),
        };
        inner.write_all(&trailer.file_checksum.to_be_bytes())?;
        inner.flush()?;
        Ok((inner, trailer))
    }
}

/// Streams one LTX file in, verifying as it goes. Call [`Decoder::next_page`] until it returns
/// `None`, then [`Decoder::finish`], which checks the page index, the trailer and the file
/// checksum. Pages handed out before `finish` are unverified: apply them to scratch space only.
pub struct Decoder<R: Read> {
    input: R,
    header: Header,
    hash: Hasher,
    offset: u64,
    prev_pgno: u32,
    pages: u32,
    done: bool,
    compressed: Vec<u8>,
    snapshot_sum: DbChecksum,
    /// The page index the pages read call for (the file's must list exactly these).
    index: PageLog,
}

/// Reads a whole file and checks it: header, every page, trailer and CRC. Returns the header
/// and trailer (a damaged file's error says how it is damaged).
pub fn check_whole<R: Read>(input: R) -> Result<(Header, Trailer), LtxError> {
    let mut d = Decoder::new(input)?;
    let header = *d.header();
    let mut page = vec![0u8; header.page_size as usize];
    while d.next_page(&mut page)?.is_some() {}
    Ok((header, d.finish()?))
}

impl<R: Read> Decoder<R> {
    pub fn new(mut input: R) -> Result<Self, LtxError> {
        let mut hb = [0u8; HEADER_SIZE];
        input.read_exact(&mut hb)?;
        let header = Header::decode(&hb)?;
        let mut hash = Hasher::new();
        hash.update(&hb);
        Ok(Self {
            input,
            header,
            hash,
            offset: HEADER_SIZE as u64,
            prev_pgno: 0,
            pages: 0,
            done: false,
            compressed: Vec::new(),
            snapshot_sum: DbChecksum::EMPTY,
            index: PageLog::default(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Reads the next page into `page` (exactly `page_size` bytes) and returns its number, or
    /// `None` at the end of the page block.
    pub fn next_page(&mut self, page: &mut [u8]) -> Result<Option<u32>, LtxError> {
        if self.done {
            return Ok(None);
        }
        let page_size = self.header.page_size as usize;
        if page.len() != page_size {
            return Err(LtxError::InvalidPage(format!(
                "buffer of {} bytes for page size {page_size}",
                page.len()
            )));
        }
        // The page header and, when flagged, the compressed size after it: hashed together
        // once both are read (one checksum update for the two).
        let mut ph = [0u8; PAGE_HEADER_SIZE + 4];
        self.input.read_exact(&mut ph[..PAGE_HEADER_SIZE])?;
        let start = self.offset;
        self.offset += PAGE_HEADER_SIZE as u64;
        let pgno = be_u32(&ph, 0);
        let flags = u16::from_be_bytes([ph[4], ph[5]]);
        if pgno == 0 && flags == 0 {
            self.hash.update(&ph[..PAGE_HEADER_SIZE]);
            self.done = true;
            return Ok(None);
        }
        if pgno == 0 || flags & !PAGE_FLAG_SIZE != 0 {
            return Err(LtxError::InvalidPage(format!(
                "bad page header (pgno {pgno}, flags 0x{flags:04x})"
            )));
        }
        if pgno <= self.prev_pgno {
            return Err(LtxError::InvalidPage(format!(
                "pages out of order: {} then {pgno}",
                self.prev_pgno
            )));
        }
        if pgno == lock_pgno(self.header.page_size) {
            return Err(LtxError::InvalidPage(format!(
                "page {pgno} is the lock page"
            )));
        }
        if pgno > self.header.commit {
            return Err(LtxError::InvalidPage(format!(
                "page {pgno} beyond commit size {}",
                self.header.commit
            )));
        }
        if flags & PAGE_FLAG_SIZE != 0 {
            self.input.read_exact(&mut ph[PAGE_HEADER_SIZE..])?;
            self.hash.update(&ph);
            let size = be_u32(&ph, PAGE_HEADER_SIZE) as usize;
            let bound = lz4_flex::block::get_maximum_output_size(page_size);
            if size > bound {
                return Err(LtxError::InvalidPage(format!(
                    "page {pgno} claims {size} compressed bytes"
                )));
            }
            self.compressed.resize(size, 0);
            self.input.read_exact(&mut self.compressed)?;
            self.offset += 4 + size as u64;
            let n = lz4_flex::block::decompress_into(&self.compressed, page).map_err(|e| {
                LtxError::InvalidPage(format!("page {pgno} does not decompress: {e}"))
            })?;
            if n != page_size {
                return Err(LtxError::InvalidPage(format!(
                    "page {pgno} decompresses to {n} bytes"
                )));
            }
        } else {
            // Legacy: one LZ4 frame per page. Find the frame's extent from its structure, then
            // let lz4_flex decode it.
            self.hash.update(&ph[..PAGE_HEADER_SIZE]);
            let frame = read_lz4_frame(&mut self.input)?;
            self.offset += frame.len() as u64;
            let mut decoded = Vec::with_capacity(page_size);
            lz4_flex::frame::FrameDecoder::new(&frame[..])
                .read_to_end(&mut decoded)
                .map_err(|e| {
                    LtxError::InvalidPage(format!("page {pgno} frame does not decode: {e}"))
                })?;
            if decoded.len() != page_size {
                return Err(LtxError::InvalidPage(format!(
                    "page {pgno} decodes to {} bytes",
                    decoded.len()
                )));
            }
            page.copy_from_slice(&decoded);
        }
        self.hash.update(page);
        self.index.push(pgno, self.offset - start);
        if self.header.is_snapshot() {
            self.snapshot_sum.toggle(page_checksum(pgno, page));
        }
        self.prev_pgno = pgno;
        self.pages += 1;
        Ok(Some(pgno))
    }

    /// Reads the rest of the file and verifies it. Returns the trailer.
    pub fn finish(mut self) -> Result<Trailer, LtxError> {
        if !self.done {
            let mut page = vec![0u8; self.header.page_size as usize];
            while self.next_page(&mut page)?.is_some() {}
        }
        let h = self.header;
        if h.is_snapshot() {
            let lock = lock_pgno(h.page_size);
            // Pages are strictly ascending, within 1..=commit and never the lock page, so the
            // count alone proves every page is present.
            let expected = h.commit - u32::from(h.commit >= lock);
            if self.pages != expected {
                return Err(LtxError::InvalidPage(format!(
                    "snapshot holds {} pages but the database has {}",
                    self.pages, h.commit
                )));
            }
        }
        // The index, read and compared entry by entry in bounded chunks (never held whole):
        // it must list exactly the pages read, at the offsets they were read at. A damaged
        // file is reported as its checksum mismatch first, as the bytes show it. No bound on
        // its size is needed: nothing of it is kept, and the parse stops at the first entry
        // the pages read do not call for.
        // LTX's entries take about three times the compact log's bytes, plus the trailer.
        let hint = self.index.bytes.len() * 3 + 64;
        let mut tail = Tail::new(&mut self.input, hint);
        let mut expected = self.index.entries();
        let parsed = (|| {
            loop {
                let pgno = tail.uvarint(&mut self.hash)?;
                let want = expected.next();
                if pgno == 0 {
                    if let Some(e) = want {
                        return Err(LtxError::InvalidPage(format!(
                            "page index disagrees with page {}",
                            e[0]
                        )));
                    }
                    break;
                }
                let Some(want) = want else {
                    return Err(LtxError::InvalidPage(
                        "page index lists pages the file lacks".into(),
                    ));
                };
                let entry = [
                    pgno,
                    tail.uvarint(&mut self.hash)?,
                    tail.uvarint(&mut self.hash)?,
                ];
                if entry != want {
                    return Err(LtxError::InvalidPage(format!(
                        "page index disagrees with page {}",
                        want[0]
                    )));
                }
            }
            let entries_len = tail.read;
            let index_len = tail.u64(&mut self.hash)?;
            let post = tail.u64(&mut self.hash)?;
            tail.u64(&mut self.hash)?;
            Ok((entries_len, index_len, post, tail.read))
        })();
        let stored = match tail.drain(&mut self.hash)? {
            Some(stored) if tail.read >= (TRAILER_SIZE + 8 + 1) as u64 => stored,
            _ => return Err(LtxError::Truncated),
        };
        let computed = self.hash.finish_flagged();
        if stored != computed {
            return Err(LtxError::FileChecksumMismatch { stored, computed });
        }
        let (entries_len, index_len, post, parsed_len) = parsed?;
        if parsed_len != tail.read || index_len != entries_len {
            return Err(LtxError::InvalidPage(
                "page index size field is wrong".into(),
            ));
        }
        let trailer = Trailer {
            post_apply_checksum: post,
            file_checksum: stored,
        };
        if h.has_checksums() {
            if trailer.post_apply_checksum & CHECKSUM_FLAG == 0 {
                return Err(LtxError::InvalidHeader(
                    "post-apply checksum missing".into(),
                ));
            }
            if h.is_snapshot() && trailer.post_apply_checksum != self.snapshot_sum.raw() {
                return Err(LtxError::DbChecksumMismatch {
                    stored: trailer.post_apply_checksum,
                    computed: self.snapshot_sum.raw(),
                });
            }
        } else if trailer.post_apply_checksum != 0 {
            return Err(LtxError::InvalidHeader(
                "post-apply checksum on a no-checksum file".into(),
            ));
        }
        if let (Some(ext), true) = (h.ext, h.is_snapshot())
            && ext.post != self.snapshot_sum.raw()
        {
            return Err(LtxError::DbChecksumMismatch {
                stored: ext.post,
                computed: self.snapshot_sum.raw(),
            });
        }
        Ok(trailer)
    }
}

/// Reads exactly one LZ4 frame (magic, descriptor, blocks, end mark, optional content
/// checksum) and returns its bytes. Bounded: a frame holding one page is never larger than
/// [`LEGACY_FRAME_BYTES_MAX`].
fn read_lz4_frame(input: &mut impl Read) -> Result<Vec<u8>, LtxError> {
    const LZ4_MAGIC: u32 = 0x184D_2204;
    let bad = |s: &str| LtxError::InvalidPage(format!("legacy LZ4 frame: {s}"));
    let mut frame = vec![0u8; 6];
    input.read_exact(&mut frame)?;
    if u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) != LZ4_MAGIC {
        return Err(bad("bad magic"));
    }
    let flg = frame[4];
    let block_checksums = flg & 0x10 != 0;
    let content_size = flg & 0x08 != 0;
    let content_checksum = flg & 0x04 != 0;
    let dict_id = flg & 0x01 != 0;
    // Optional content size and dictionary id, then the header checksum byte.
    let rest = 8 * usize::from(content_size) + 4 * usize::from(dict_id) + 1;
    read_append(input, &mut frame, rest)?;
    loop {
        let at = frame.len();
        read_append(input, &mut frame, 4)?;
        let word = u32::from_le_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
        if word == 0 {
            break;
        }
        let size = (word & 0x7fff_ffff) as usize + 4 * usize::from(block_checksums);
        if frame.len() + size > LEGACY_FRAME_BYTES_MAX {
            return Err(bad("frame larger than a page can be"));
        }
        read_append(input, &mut frame, size)?;
    }
    if content_checksum {
        read_append(input, &mut frame, 4)?;
    }
    Ok(frame)
}

const LEGACY_FRAME_BYTES_MAX: usize = 2 * 65536 + 1024;

fn read_append(input: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> Result<(), LtxError> {
    let at = buf.len();
    buf.resize(at + n, 0);
    input.read_exact(&mut buf[at..])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(min: u64, max: u64, commit: u32, flags: u32, pre: u64) -> Header {
        Header {
            flags,
            page_size: 512,
            commit,
            min_txid: min,
            max_txid: max,
            timestamp_ms: 1_700_000_000_000,
            pre_apply_checksum: pre,
            ..Header::default()
        }
    }

    fn page(seed: u8) -> Vec<u8> {
        (0..512u32)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect()
    }

    fn snapshot(pages: u32) -> Vec<u8> {
        let mut enc = Encoder::new(Vec::new(), header(1, 1, pages, 0, 0)).expect("encoder");
        let mut sum = DbChecksum::EMPTY;
        for p in 1..=pages {
            let data = page(p as u8);
            sum.toggle(page_checksum(p, &data));
            enc.encode_page(p, &data).expect("page");
        }
        enc.finish(Some(sum)).expect("finish").0
    }

    type Decoded = (Header, Vec<(u32, Vec<u8>)>, Trailer);

    fn decode_all(bytes: &[u8]) -> Result<Decoded, LtxError> {
        let mut dec = Decoder::new(bytes)?;
        let h = *dec.header();
        let mut out = Vec::new();
        let mut buf = vec![0u8; h.page_size as usize];
        while let Some(p) = dec.next_page(&mut buf)? {
            out.push((p, buf.clone()));
        }
        Ok((h, out, dec.finish()?))
    }

    #[test]
    fn snapshot_round_trips() {
        let bytes = snapshot(5);
        let (h, pages, t) = decode_all(&bytes).expect("decode");
        assert_eq!(h.commit, 5);
        assert_eq!(pages.len(), 5);
        assert_eq!(pages[2], (3, page(3)));
        assert!(t.file_checksum & CHECKSUM_FLAG != 0);
    }

    /// The file checksum covers the logical content (decompressed pages), so a flip inside a
    /// compressed body that still decompresses to the same page is harmless; anything else must
    /// be refused.
    #[test]
    fn every_flipped_bit_is_detected_or_harmless() {
        let bytes = snapshot(3);
        let good = decode_all(&bytes).expect("clean file decodes");
        for i in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                if let Ok(decoded) = decode_all(&bad) {
                    assert_eq!(
                        decoded.1, good.1,
                        "flip of bit {bit} at byte {i} changed a page unnoticed"
                    );
                    assert_eq!(
                        decoded.0, good.0,
                        "flip of bit {bit} at byte {i} changed the header"
                    );
                }
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = snapshot(2);
        for len in 0..bytes.len() {
            assert!(
                decode_all(&bytes[..len]).is_err(),
                "truncation to {len} bytes went unnoticed"
            );
        }
    }

    #[test]
    fn incremental_file_needs_pre_apply_checksum() {
        assert!(Encoder::new(Vec::new(), header(2, 2, 3, 0, 0)).is_err());
        let enc = Encoder::new(Vec::new(), header(2, 2, 3, HEADER_FLAG_NO_CHECKSUM, 0));
        assert!(enc.is_ok());
    }

    #[test]
    fn encoder_refuses_out_of_order_and_lock_pages() {
        let mut enc =
            Encoder::new(Vec::new(), header(2, 3, 10, HEADER_FLAG_NO_CHECKSUM, 0)).expect("enc");
        enc.encode_page(4, &page(1)).expect("page 4");
        assert!(matches!(
            enc.encode_page(4, &page(1)),
            Err(LtxError::InvalidPage(_))
        ));
        assert!(matches!(
            enc.encode_page(11, &page(1)),
            Err(LtxError::InvalidPage(_))
        ));
    }

    #[test]
    fn snapshot_with_wrong_post_apply_checksum_is_refused() {
        let mut enc = Encoder::new(Vec::new(), header(1, 1, 1, 0, 0)).expect("enc");
        enc.encode_page(1, &page(1)).expect("page");
        assert!(matches!(
            enc.finish(Some(DbChecksum::EMPTY)),
            Err(LtxError::DbChecksumMismatch { .. })
        ));
    }

    #[test]
    fn sluice_checksums_ride_in_reserved_bytes() {
        let data = page(4);
        let mut sum = DbChecksum::EMPTY;
        sum.toggle(page_checksum(1, &data));
        let mut h = header(1, 1, 1, HEADER_FLAG_NO_CHECKSUM, 0);
        h.ext = Some(ExtChecksums {
            pre: 0,
            post: sum.raw(),
        });
        let mut enc = Encoder::new(Vec::new(), h).expect("enc");
        enc.encode_page(1, &data).expect("page");
        let bytes = enc.finish(None).expect("finish").0;
        assert_eq!(&bytes[80..84], EXT_MAGIC);
        let (dh, _, t) = decode_all(&bytes).expect("decode");
        assert_eq!(dh.db_checksums(&t), Some((0, sum.raw())));
        // Litestream's view: a no-checksum file with zero checksum fields.
        assert_eq!((dh.pre_apply_checksum, t.post_apply_checksum), (0, 0));
        // A snapshot whose recorded checksum disagrees with its pages is refused both ways.
        let mut wrong = h;
        wrong.ext = Some(ExtChecksums {
            pre: 0,
            post: DbChecksum::EMPTY.raw(),
        });
        let mut enc = Encoder::new(Vec::new(), wrong).expect("enc");
        enc.encode_page(1, &data).expect("page");
        assert!(matches!(
            enc.finish(None),
            Err(LtxError::DbChecksumMismatch { .. })
        ));
    }

    /// A file built by hand whose one page uses the old LZ4-frame body (no size flag), its
    /// index naming the frame at `index_offset`, its CRC right.
    fn legacy_file(index_offset: u64) -> (Vec<u8>, Vec<u8>) {
        let h = header(2, 2, 2, HEADER_FLAG_NO_CHECKSUM, 0);
        let data = page(9);
        let mut frame = Vec::new();
        {
            let mut w = lz4_flex::frame::FrameEncoder::new(&mut frame);
            w.write_all(&data).expect("frame");
            w.finish().expect("finish");
        }
        let mut hash = Hasher::new();
        let mut file = Vec::new();
        let hb = h.encode();
        file.extend_from_slice(&hb);
        hash.update(&hb);
        let ph = [0, 0, 0, 2, 0, 0];
        file.extend_from_slice(&ph);
        hash.update(&ph);
        file.extend_from_slice(&frame);
        hash.update(&data);
        let mut tail = vec![0u8; 6];
        put_uvarint(&mut tail, 2);
        put_uvarint(&mut tail, index_offset);
        put_uvarint(&mut tail, (PAGE_HEADER_SIZE + frame.len()) as u64);
        put_uvarint(&mut tail, 0);
        let index_len = (tail.len() - 6) as u64;
        tail.extend_from_slice(&index_len.to_be_bytes());
        tail.extend_from_slice(&0u64.to_be_bytes());
        hash.update(&tail);
        file.extend_from_slice(&tail);
        file.extend_from_slice(&hash.finish_flagged().to_be_bytes());
        (file, data)
    }

    #[test]
    fn legacy_frame_pages_decode() {
        let (file, data) = legacy_file(HEADER_SIZE as u64);
        let (_, pages, _) = decode_all(&file).expect("legacy decode");
        assert_eq!(pages, vec![(2, data)]);
    }

    /// A page index that does not name the frames where they are is damage, even under a right
    /// file checksum.
    #[test]
    fn an_index_that_misplaces_a_page_is_refused() {
        let (file, _) = legacy_file(HEADER_SIZE as u64 + 1);
        let err = decode_all(&file).expect_err("a misplaced page in the index");
        assert!(
            err.to_string().contains("page index disagrees with page 2"),
            "{err}"
        );
    }

    /// A reader that hands out at most `n` bytes a call, to push the tail's refills through
    /// every boundary.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// An index larger than the tail's read buffer, read in reads of every small size, still
    /// verifies; a byte after the trailer is refused.
    #[test]
    fn a_long_index_streams_through_small_reads() {
        // 30,000 pages of 512 bytes: an index of about 150 KiB, over two chunks.
        let bytes = snapshot(30_000);
        for n in [1, 7, 8, 9, 4096, 1 << 20] {
            let mut dec = Decoder::new(Trickle(&bytes, n)).expect("header");
            let mut page = vec![0u8; 512];
            let mut count = 0;
            while dec.next_page(&mut page).expect("page").is_some() {
                count += 1;
            }
            assert_eq!(count, 30_000);
            dec.finish().expect("a whole file verifies");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_all(&longer).is_err(), "a byte after the trailer");
    }

    /// The page log the encoder and decoder keep is a fraction of LTX's index: about 3 bytes a
    /// page where the index takes three uvarints with absolute offsets.
    #[test]
    fn the_page_log_is_compact_and_expands_to_the_index() {
        let mut log = PageLog::default();
        let (mut offset, mut want) = (HEADER_SIZE as u64, Vec::new());
        for pgno in 1..=100_000u32 {
            let size = 10 + u64::from(pgno % 4000);
            log.push(pgno, size);
            want.push([u64::from(pgno), offset, size]);
            offset += size;
        }
        assert!(log.bytes.len() <= 3 * 100_000, "{} bytes", log.bytes.len());
        assert_eq!(log.entries().collect::<Vec<_>>(), want);
    }
}
