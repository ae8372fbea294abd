//! CRC-64 checksums as LTX defines them.
//!
//! Two checksums matter:
//! - the **file checksum** of an LTX file: CRC-64 (Go's `crc64.ISO` table, the `CRC_64_GO_ISO`
//!   catalogue entry) over the file's logical content, with bit 63 set;
//! - the **database checksum**: XOR over every page but the lock-byte page of
//!   `CRC-64(pgno as u32 big-endian || page)`, each term with bit 63 set, and the result with
//!   bit 63 set. XOR makes it incremental: replacing a page is `sum ^ old ^ new`.

use crc_fast::{CrcAlgorithm, Digest};

/// Bit 63, set on every stored checksum so that zero always means "absent".
pub const CHECKSUM_FLAG: u64 = 1 << 63;

/// A running CRC-64 (ISO) digest. `crc-fast` computes it with carry-less multiplication where
/// the CPU has it (every checksum of the engine, restore and compaction goes through here).
pub struct Hasher(Digest);

impl Hasher {
    pub fn new() -> Self {
        Self(Digest::new(CrcAlgorithm::Crc64GoIso))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest so far with [`CHECKSUM_FLAG`] set, as LTX stores it.
    pub fn finish_flagged(self) -> u64 {
        CHECKSUM_FLAG | self.0.finalize()
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

/// The checksum of one page as it contributes to the database checksum.
pub fn page_checksum(pgno: u32, page: &[u8]) -> u64 {
    let mut digest = Hasher::new();
    digest.update(&pgno.to_be_bytes());
    digest.update(page);
    digest.finish_flagged()
}

/// The page number holding byte offset 1 GiB (SQLite's PENDING_BYTE). SQLite never writes it, LTX
/// files never carry it and the database checksum leaves it out.
pub fn lock_pgno(page_size: u32) -> u32 {
    const PENDING_BYTE: u32 = 0x4000_0000;
    PENDING_BYTE / page_size + 1
}

/// An incremental database checksum (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbChecksum(u64);

impl DbChecksum {
    /// The checksum of an empty database.
    pub const EMPTY: DbChecksum = DbChecksum(CHECKSUM_FLAG);

    pub fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    /// Adds (or, applied twice, removes) one page's contribution.
    pub fn toggle(&mut self, page_sum: u64) {
        self.0 = CHECKSUM_FLAG | (self.0 ^ page_sum);
    }

    /// Computes the checksum of a whole database image read page by page.
    pub fn of_pages<'a>(pages: impl IntoIterator<Item = (u32, &'a [u8])>, page_size: u32) -> Self {
        let lock = lock_pgno(page_size);
        let mut sum = Self::EMPTY;
        for (pgno, page) in pages {
            if pgno != lock {
                sum.toggle(page_checksum(pgno, page));
            }
        }
        sum
    }
}

/// Computes the database checksum of a file, streaming it one page at a time.
pub fn checksum_file(file: &std::fs::File, page_size: u32) -> std::io::Result<DbChecksum> {
    use std::io::Read;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let lock = lock_pgno(page_size);
    let mut page = vec![0u8; page_size as usize];
    let mut sum = DbChecksum::EMPTY;
    let mut pgno: u32 = 0;
    loop {
        match reader.read_exact(&mut page) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        pgno += 1;
        if pgno != lock {
            sum.toggle(page_checksum(pgno, &page));
        }
    }
    Ok(sum)
}

/// Per-page checksums of a database state and their total: the replica's state in the engine,
/// the output as a restore writes it. Eight bytes per page: a 10 GiB database of 4 KiB pages costs 20 MiB. The lock page's entry is zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageSums {
    page_size: u32,
    sums: Vec<u64>,
    total: DbChecksum,
}

impl PageSums {
    pub fn new(page_size: u32) -> Self {
        Self {
            page_size,
            sums: Vec::new(),
            total: DbChecksum::EMPTY,
        }
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Database size in pages.
    pub fn commit(&self) -> u32 {
        u32::try_from(self.sums.len()).unwrap_or(u32::MAX)
    }

    /// The table's memory: 8 bytes a page, the one part of a replicator that grows with its
    /// database.
    pub fn table_bytes(&self) -> u64 {
        8 * self.sums.len() as u64
    }

    pub fn total(&self) -> DbChecksum {
        self.total
    }

    pub fn get(&self, pgno: u32) -> Option<u64> {
        self.sums.get(pgno.checked_sub(1)? as usize).copied()
    }

    /// Sets page `pgno`'s checksum, growing the database if needed (new pages in between count
    /// as all-zero pages until set).
    pub fn set(&mut self, pgno: u32, sum: u64) {
        if pgno == 0 || pgno == lock_pgno(self.page_size) {
            return;
        }
        if pgno > self.commit() {
            self.resize(pgno);
        }
        let slot = &mut self.sums[pgno as usize - 1];
        self.total.toggle(*slot);
        self.total.toggle(sum);
        *slot = sum;
    }

    /// Grows (with zero pages) or shrinks the database to `commit` pages.
    pub fn resize(&mut self, commit: u32) {
        let lock = lock_pgno(self.page_size);
        while self.commit() > commit {
            if let Some(sum) = self.sums.pop() {
                self.total.toggle(sum);
            }
        }
        if commit > self.commit() {
            let zero = vec![0u8; self.page_size as usize];
            for pgno in self.commit() + 1..=commit {
                let sum = if pgno == lock {
                    0
                } else {
                    page_checksum(pgno, &zero)
                };
                self.total.toggle(sum);
                self.sums.push(sum);
            }
        }
    }

    /// Page numbers whose checksum differs from `other`'s (pages beyond either size count as
    /// different).
    pub fn diff(&self, other: &PageSums) -> Vec<u32> {
        let n = self.commit().max(other.commit());
        (1..=n)
            .filter(|&p| p != lock_pgno(self.page_size) && self.get(p) != other.get(p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_matches_go_iso_check_value() {
        let mut h = Hasher::new();
        h.update(b"123456789");
        assert_eq!(h.finish_flagged(), CHECKSUM_FLAG | 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn lock_page_numbers() {
        assert_eq!(lock_pgno(4096), 262_145);
        assert_eq!(lock_pgno(512), 2_097_153);
        assert_eq!(lock_pgno(65536), 16_385);
    }

    #[test]
    fn database_checksum_is_incremental() {
        let a = vec![1u8; 512];
        let b = vec![2u8; 512];
        let c = vec![3u8; 512];
        let full = DbChecksum::of_pages([(1, &a[..]), (2, &b[..])], 512);
        let mut inc = DbChecksum::of_pages([(1, &a[..]), (2, &c[..])], 512);
        inc.toggle(page_checksum(2, &c));
        inc.toggle(page_checksum(2, &b));
        assert_eq!(full, inc);
        assert_ne!(full, DbChecksum::EMPTY);
    }
}
