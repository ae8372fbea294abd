//! Reading SQLite's write-ahead log.
//!
//! ```text
//! header 32 B  magic:u32 version:u32 page_size:u32 checkpoint_seq:u32 salt1:u32 salt2:u32
//!              checksum1:u32 checksum2:u32                          (all big-endian)
//! frame        pgno:u32 commit_size:u32 salt1:u32 salt2:u32 checksum1:u32 checksum2:u32
//!              page[page_size]
//! ```
//!
//! The checksum is cumulative: the header's is over its first 24 bytes, each frame's over its
//! first 8 header bytes and its page, seeded with the previous checksum. Checksum words are read
//! little-endian when the magic is `0x377f0682` and big-endian when it is `0x377f0683`. A frame is
//! valid only if its salts equal the header's and its checksum matches; the first invalid frame
//! ends the log. Only frames up to the last commit frame (`commit_size != 0`) are committed.
//!
//! [`WalScanner`] is pure: it is fed frame bytes and says what they mean, so the engine, the tests
//! and the simulator share one implementation no matter where the bytes come from.

use std::collections::BTreeMap;

pub const WAL_HEADER_SIZE: usize = 32;
pub const FRAME_HEADER_SIZE: usize = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const WAL_VERSION: u32 = 3_007_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalError {
    #[error("WAL header is shorter than 32 bytes")]
    ShortHeader,
    #[error("WAL header has bad magic 0x{0:08x}")]
    BadMagic(u32),
    #[error("WAL header has unsupported version {0}")]
    BadVersion(u32),
    #[error("WAL header has invalid page size {0}")]
    BadPageSize(u32),
    #[error("WAL header checksum mismatch")]
    BadHeaderChecksum,
}

/// A parsed and verified WAL header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian_checksums: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: (u32, u32),
}

impl WalHeader {
    pub fn parse(b: &[u8]) -> Result<Self, WalError> {
        let b = b.get(..WAL_HEADER_SIZE).ok_or(WalError::ShortHeader)?;
        let magic = be32(b, 0);
        let big_endian_checksums = match magic {
            MAGIC_LE => false,
            MAGIC_BE => true,
            other => return Err(WalError::BadMagic(other)),
        };
        let version = be32(b, 4);
        if version != WAL_VERSION {
            return Err(WalError::BadVersion(version));
        }
        // SQLite stores 65536 as 1 in the WAL header as it does in the database header.
        let raw = be32(b, 8);
        let page_size = if raw == 1 { 65536 } else { raw };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(WalError::BadPageSize(raw));
        }
        let checksum = (be32(b, 24), be32(b, 28));
        if wal_checksum(big_endian_checksums, (0, 0), &b[..24]) != checksum {
            return Err(WalError::BadHeaderChecksum);
        }
        Ok(Self {
            big_endian_checksums,
            page_size,
            checkpoint_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum,
        })
    }

    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE as u64 + u64::from(self.page_size)
    }

    /// Byte offset of the frame with the given zero-based index.
    pub fn frame_offset(&self, index: u64) -> u64 {
        WAL_HEADER_SIZE as u64 + index * self.frame_size()
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's WAL checksum (`walChecksumBytes`) over `data`, whose length is a multiple of 8.
pub fn wal_checksum(big_endian: bool, seed: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s0, mut s1) = seed;
    for chunk in data.chunks_exact(8) {
        let word = |i: usize| {
            let w = [chunk[i], chunk[i + 1], chunk[i + 2], chunk[i + 3]];
            if big_endian {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            }
        };
        s0 = s0.wrapping_add(word(0)).wrapping_add(s1);
        s1 = s1.wrapping_add(word(4)).wrapping_add(s0);
    }
    (s0, s1)
}

/// What one frame turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A valid frame that is not the last of its transaction.
    Page { pgno: u32 },
    /// A valid commit frame: the database has `commit_size` pages after it.
    Commit { pgno: u32, commit_size: u32 },
    /// The log ends here: the salts or the checksum do not match (a torn or stale frame).
    End,
}

/// Validates frames in order. Holds only the running checksum and the position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalScanner {
    header: WalHeader,
    /// Offset of the next frame to validate.
    offset: u64,
    checksum: (u32, u32),
    ended: bool,
}

impl WalScanner {
    /// Starts at the first frame.
    pub fn new(header: WalHeader) -> Self {
        Self {
            header,
            offset: WAL_HEADER_SIZE as u64,
            checksum: header.checksum,
            ended: false,
        }
    }

    /// Resumes at `offset`, the end of a frame whose cumulative checksum was `checksum`.
    pub fn resume(header: WalHeader, offset: u64, checksum: (u32, u32)) -> Self {
        Self {
            header,
            offset,
            checksum,
            ended: false,
        }
    }

    pub fn header(&self) -> &WalHeader {
        &self.header
    }

    /// Offset of the next frame this scanner expects.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The cumulative checksum after the last accepted frame.
    pub fn checksum(&self) -> (u32, u32) {
        self.checksum
    }

    /// Judges the frame at [`WalScanner::offset`]; `frame` is its header and page
    /// (`frame_size` bytes, or fewer if the file ends: a short frame is a torn frame).
    /// Once a frame is judged [`Frame::End`] every later call says so too.
    pub fn next(&mut self, frame: &[u8]) -> Frame {
        let ps = self.header.page_size as usize;
        if self.ended || frame.len() < FRAME_HEADER_SIZE + ps {
            self.ended = true;
            return Frame::End;
        }
        let (salt1, salt2) = (be32(frame, 8), be32(frame, 12));
        if salt1 != self.header.salt1 || salt2 != self.header.salt2 {
            self.ended = true;
            return Frame::End;
        }
        let be = self.header.big_endian_checksums;
        let sum = wal_checksum(be, self.checksum, &frame[..8]);
        let sum = wal_checksum(be, sum, &frame[FRAME_HEADER_SIZE..FRAME_HEADER_SIZE + ps]);
        if sum != (be32(frame, 16), be32(frame, 20)) {
            self.ended = true;
            return Frame::End;
        }
        let pgno = be32(frame, 0);
        if pgno == 0 {
            self.ended = true;
            return Frame::End;
        }
        self.checksum = sum;
        self.offset += self.header.frame_size();
        match be32(frame, 4) {
            0 => Frame::Page { pgno },
            commit_size => Frame::Commit { pgno, commit_size },
        }
    }
}

/// Offset just past the last valid frame from `scanner`'s position, committed or not: how far
/// this WAL generation has written. Uncommitted frames count: they overwrite older bytes too.
pub fn scan_extent<E>(
    mut scanner: WalScanner,
    mut read_frame: impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
) -> Result<u64, E> {
    let mut buf = vec![0u8; scanner.header().frame_size() as usize];
    loop {
        let n = read_frame(scanner.offset(), &mut buf)?;
        if scanner.next(&buf[..n]) == Frame::End {
            return Ok(scanner.offset());
        }
    }
}

/// The committed content of a stretch of WAL: for each page the offset of its newest committed
/// frame, and the database size after the last commit. Pages beyond that size (dropped by a
/// VACUUM that shrank the database) are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Page number to the byte offset of its newest committed frame (frame header start).
    pub pages: BTreeMap<u32, u64>,
    /// Database size in pages after the last commit, if any commit was seen.
    pub commit_size: Option<u32>,
    /// Offset just past the last committed frame.
    pub end_offset: u64,
    /// Cumulative checksum at `end_offset`, to resume from.
    pub end_checksum: (u32, u32),
    /// Number of transactions (commit frames) included.
    pub transactions: u64,
}

/// Scans frames from `scanner`'s position, reading each through `read_frame(offset, buf)`
/// (which fills what it can and returns the byte count), and collects the committed ones.
/// Stops at the end of the log, after `max_bytes` worth of frames rounded up to a commit, or at
/// the first read error.
pub fn scan_committed<E>(
    scanner: &mut WalScanner,
    max_bytes: u64,
    mut read_frame: impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
) -> Result<Committed, E> {
    let start = scanner.offset();
    let mut out = Committed {
        end_offset: start,
        end_checksum: scanner.checksum(),
        ..Committed::default()
    };
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut buf = vec![0u8; scanner.header().frame_size() as usize];
    loop {
        let at = scanner.offset();
        let n = read_frame(at, &mut buf)?;
        match scanner.next(&buf[..n]) {
            Frame::End => break,
            Frame::Page { pgno }
                if crate::planted::active(crate::planted::Bug::ShipUncommitted) =>
            {
                out.pages.insert(pgno, at);
                out.commit_size = Some(out.commit_size.unwrap_or(pgno).max(pgno));
                out.end_offset = scanner.offset();
                out.end_checksum = scanner.checksum();
            }
            Frame::Page { pgno } => pending.push((pgno, at)),
            Frame::Commit { pgno, commit_size } => {
                pending.push((pgno, at));
                for (p, off) in pending.drain(..) {
                    out.pages.insert(p, off);
                }
                out.pages.retain(|&p, _| p <= commit_size);
                out.commit_size = Some(commit_size);
                out.end_offset = scanner.offset();
                out.end_checksum = scanner.checksum();
                out.transactions += 1;
                if out.end_offset - start >= max_bytes {
                    break;
                }
            }
        }
    }
    // Leave the scanner just past the last commit so the next scan starts there.
    *scanner = WalScanner::resume(*scanner.header(), out.end_offset, out.end_checksum);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a WAL image in memory the way SQLite writes one.
    pub(crate) struct WalBuilder {
        pub bytes: Vec<u8>,
        big_endian: bool,
        page_size: u32,
        sum: (u32, u32),
        salts: (u32, u32),
    }

    impl WalBuilder {
        pub(crate) fn new(page_size: u32, big_endian: bool, salts: (u32, u32)) -> Self {
            let mut h = Vec::with_capacity(32);
            h.extend_from_slice(&(if big_endian { MAGIC_BE } else { MAGIC_LE }).to_be_bytes());
            h.extend_from_slice(&WAL_VERSION.to_be_bytes());
            h.extend_from_slice(&page_size.to_be_bytes());
            h.extend_from_slice(&7u32.to_be_bytes());
            h.extend_from_slice(&salts.0.to_be_bytes());
            h.extend_from_slice(&salts.1.to_be_bytes());
            let sum = wal_checksum(big_endian, (0, 0), &h);
            h.extend_from_slice(&sum.0.to_be_bytes());
            h.extend_from_slice(&sum.1.to_be_bytes());
            Self {
                bytes: h,
                big_endian,
                page_size,
                sum,
                salts,
            }
        }

        pub(crate) fn frame(&mut self, pgno: u32, commit: u32, fill: u8) -> &mut Self {
            let mut f = Vec::with_capacity(24 + self.page_size as usize);
            f.extend_from_slice(&pgno.to_be_bytes());
            f.extend_from_slice(&commit.to_be_bytes());
            f.extend_from_slice(&self.salts.0.to_be_bytes());
            f.extend_from_slice(&self.salts.1.to_be_bytes());
            let page = vec![fill; self.page_size as usize];
            let s = wal_checksum(self.big_endian, self.sum, &f[..8]);
            let s = wal_checksum(self.big_endian, s, &page);
            self.sum = s;
            f.extend_from_slice(&s.0.to_be_bytes());
            f.extend_from_slice(&s.1.to_be_bytes());
            f.extend_from_slice(&page);
            self.bytes.extend_from_slice(&f);
            self
        }
    }

    fn scan(bytes: &[u8]) -> Committed {
        let header = WalHeader::parse(bytes).expect("header");
        let mut sc = WalScanner::new(header);
        scan_committed::<()>(&mut sc, u64::MAX, |off, buf| {
            let off = off as usize;
            let avail = bytes.len().saturating_sub(off).min(buf.len());
            buf[..avail].copy_from_slice(&bytes[off..off + avail]);
            Ok(avail)
        })
        .expect("scan")
    }

    #[test]
    fn clean_log_keeps_newest_copy_of_each_page() {
        for be in [false, true] {
            let mut w = WalBuilder::new(512, be, (1, 2));
            w.frame(1, 0, 1).frame(2, 2, 2).frame(1, 2, 3);
            let c = scan(&w.bytes);
            assert_eq!(c.transactions, 2);
            assert_eq!(c.commit_size, Some(2));
            assert_eq!(c.pages.get(&1), Some(&(32 + 2 * 536)));
            assert_eq!(c.pages.get(&2), Some(&(32 + 536)));
            assert_eq!(c.end_offset, w.bytes.len() as u64);
        }
    }

    #[test]
    fn uncommitted_tail_is_ignored() {
        let mut w = WalBuilder::new(512, false, (1, 2));
        w.frame(1, 1, 1).frame(2, 0, 2);
        let c = scan(&w.bytes);
        assert_eq!(c.transactions, 1);
        assert!(!c.pages.contains_key(&2));
        assert_eq!(c.end_offset, 32 + 536);
    }

    #[test]
    fn torn_final_frame_ends_the_log() {
        let mut w = WalBuilder::new(512, false, (1, 2));
        w.frame(1, 1, 1).frame(2, 2, 2);
        let torn = &w.bytes[..w.bytes.len() - 100];
        let c = scan(torn);
        assert_eq!(c.transactions, 1);
        assert_eq!(c.commit_size, Some(1));
    }

    #[test]
    fn bad_checksum_ends_the_log() {
        let mut w = WalBuilder::new(512, false, (1, 2));
        w.frame(1, 1, 1).frame(2, 2, 2).frame(3, 3, 3);
        let mut bytes = w.bytes.clone();
        bytes[32 + 536 + 24 + 10] ^= 0x40; // a byte inside frame 2's page
        let c = scan(&bytes);
        assert_eq!(
            c.transactions, 1,
            "frame 3 is valid on its own but follows a bad frame"
        );
    }

    #[test]
    fn stale_salt_after_restart_ends_the_log() {
        // A restarted WAL: new header and one new frame over an old, longer log.
        let mut old = WalBuilder::new(512, false, (1, 2));
        old.frame(1, 1, 1).frame(2, 2, 2).frame(3, 3, 3);
        let mut new = WalBuilder::new(512, false, (2, 99));
        new.frame(5, 5, 9);
        let mut bytes = old.bytes.clone();
        bytes[..new.bytes.len()].copy_from_slice(&new.bytes);
        let c = scan(&bytes);
        assert_eq!(c.transactions, 1);
        assert_eq!(c.pages.keys().copied().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn vacuum_drops_pages_above_shrunken_size() {
        let mut w = WalBuilder::new(512, false, (1, 2));
        w.frame(1, 0, 1)
            .frame(2, 0, 1)
            .frame(3, 3, 1)
            .frame(1, 1, 4);
        let c = scan(&w.bytes);
        assert_eq!(c.commit_size, Some(1));
        assert_eq!(c.pages.keys().copied().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn resume_continues_from_a_saved_position() {
        let mut w = WalBuilder::new(512, false, (1, 2));
        w.frame(1, 1, 1);
        let first = scan(&w.bytes);
        w.frame(2, 2, 2);
        let header = WalHeader::parse(&w.bytes).expect("header");
        let mut sc = WalScanner::resume(header, first.end_offset, first.end_checksum);
        let bytes = w.bytes.clone();
        let c = scan_committed::<()>(&mut sc, u64::MAX, |off, buf| {
            let off = off as usize;
            let avail = bytes.len().saturating_sub(off).min(buf.len());
            buf[..avail].copy_from_slice(&bytes[off..off + avail]);
            Ok(avail)
        })
        .expect("scan");
        assert_eq!(c.pages.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(c.transactions, 1);
    }

    #[test]
    fn extent_counts_uncommitted_frames() {
        let mut w = WalBuilder::new(512, false, (1, 2));
        w.frame(1, 1, 1).frame(2, 0, 2).frame(3, 0, 3);
        let bytes = w.bytes.clone();
        let header = WalHeader::parse(&bytes).expect("header");
        let end = scan_extent::<()>(WalScanner::new(header), |off, buf| {
            let off = off as usize;
            let avail = bytes.len().saturating_sub(off).min(buf.len());
            buf[..avail].copy_from_slice(&bytes[off..off + avail]);
            Ok(avail)
        })
        .expect("extent");
        assert_eq!(end, bytes.len() as u64);
        assert_eq!(
            scan(&bytes).end_offset,
            32 + 536,
            "only the first frame is committed"
        );
    }

    #[test]
    fn header_errors_are_specific() {
        let w = WalBuilder::new(4096, false, (1, 2));
        let mut bad = w.bytes.clone();
        bad[20] ^= 1;
        assert_eq!(WalHeader::parse(&bad), Err(WalError::BadHeaderChecksum));
        assert_eq!(WalHeader::parse(&w.bytes[..10]), Err(WalError::ShortHeader));
        let mut magic = w.bytes.clone();
        magic[3] = 0;
        assert!(matches!(
            WalHeader::parse(&magic),
            Err(WalError::BadMagic(_))
        ));
    }
}
