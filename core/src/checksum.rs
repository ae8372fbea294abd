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

/// Pages per chunk of a [`PageSums`] table (8 KiB of checksums).
const SUMS_CHUNK_PAGES: usize = 1024;

/// Per-page checksums of a database state and their total: the replica's state in the engine.
/// Eight bytes per page: a 10 GiB database of 4 KiB pages costs 20 MiB. The lock page's entry
/// is zero.
///
/// The table is kept in chunks shared copy-on-write: a clone costs a pointer per chunk, and a
/// clone then changed copies only the chunks it changes. The engine clones the replica's table
/// for every file it prepares (the file's state, kept until its upload is acknowledged) and
/// for every full compare of the database (the new state's table, built over the old one):
/// both then cost memory in proportion to the pages that changed, not to the database, so the
/// one table is the only part of a replicator that grows with its database. Setting a page to
/// the checksum it has already copies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageSums {
    page_size: u32,
    /// Database size in pages; entries past it (in the last chunk) are zero.
    len: usize,
    chunks: Vec<std::sync::Arc<[u64; SUMS_CHUNK_PAGES]>>,
    total: DbChecksum,
}

impl PageSums {
    pub fn new(page_size: u32) -> Self {
        Self {
            page_size,
            len: 0,
            chunks: Vec::new(),
            total: DbChecksum::EMPTY,
        }
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Database size in pages.
    pub fn commit(&self) -> u32 {
        u32::try_from(self.len).unwrap_or(u32::MAX)
    }

    /// The table's memory: 8 bytes a page (whole chunks), the one part of a replicator that
    /// grows with its database. Chunks shared with a clone count in each.
    pub fn table_bytes(&self) -> u64 {
        (self.chunks.len() * SUMS_CHUNK_PAGES * 8) as u64
    }

    pub fn total(&self) -> DbChecksum {
        self.total
    }

    pub fn get(&self, pgno: u32) -> Option<u64> {
        let at = pgno.checked_sub(1)? as usize;
        (at < self.len).then(|| self.chunks[at / SUMS_CHUNK_PAGES][at % SUMS_CHUNK_PAGES])
    }

    /// Writes entry `at` (0-based, below `len`), copying its chunk first if a clone shares it.
    fn put(&mut self, at: usize, sum: u64) -> u64 {
        let chunk = &mut self.chunks[at / SUMS_CHUNK_PAGES];
        let slot = at % SUMS_CHUNK_PAGES;
        let old = chunk[slot];
        if old != sum {
            std::sync::Arc::make_mut(chunk)[slot] = sum;
        }
        old
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
        let old = self.put(pgno as usize - 1, sum);
        self.total.toggle(old);
        self.total.toggle(sum);
    }

    /// Grows (with zero pages) or shrinks the database to `commit` pages.
    pub fn resize(&mut self, commit: u32) {
        let commit = commit as usize;
        if commit < self.len {
            for at in commit..self.len {
                let c = &self.chunks[at / SUMS_CHUNK_PAGES];
                self.total.toggle(c[at % SUMS_CHUNK_PAGES]);
            }
            // Entries past the end stay zero (the last chunk kept is cleared past it).
            let kept_end = self
                .len
                .min(commit.div_ceil(SUMS_CHUNK_PAGES) * SUMS_CHUNK_PAGES);
            for at in commit..kept_end {
                self.put(at, 0);
            }
            self.chunks.truncate(commit.div_ceil(SUMS_CHUNK_PAGES));
            self.len = commit;
        }
        if commit > self.len {
            let lock = lock_pgno(self.page_size) as usize;
            let zero = vec![0u8; self.page_size as usize];
            while self.chunks.len() < commit.div_ceil(SUMS_CHUNK_PAGES) {
                self.chunks.push(std::sync::Arc::new([0; SUMS_CHUNK_PAGES]));
            }
            for at in self.len..commit {
                let pgno = at + 1;
                let sum = if pgno == lock {
                    0
                } else {
                    page_checksum(u32::try_from(pgno).unwrap_or(u32::MAX), &zero)
                };
                self.put(at, sum);
                self.total.toggle(sum);
            }
            self.len = commit;
        }
    }

    /// Page numbers whose checksum differs from `other`'s (pages beyond either size count as
    /// different). Chunks the two tables share are skipped unread.
    pub fn diff(&self, other: &PageSums) -> Vec<u32> {
        let n = self.len.max(other.len);
        let both = self.len.min(other.len);
        let lock = lock_pgno(self.page_size) as usize;
        let mut out = Vec::new();
        let mut at = 0;
        while at < n {
            let c = at / SUMS_CHUNK_PAGES;
            let chunk_end = (c + 1) * SUMS_CHUNK_PAGES;
            if chunk_end <= both && std::sync::Arc::ptr_eq(&self.chunks[c], &other.chunks[c]) {
                at = chunk_end;
                continue;
            }
            for a in at..chunk_end.min(n) {
                let pgno = u32::try_from(a + 1).unwrap_or(u32::MAX);
                if a + 1 != lock && self.get(pgno) != other.get(pgno) {
                    out.push(pgno);
                }
            }
            at = chunk_end;
        }
        out
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

    /// The chunked, shared table against a plain vector: contents, totals and diffs, and a
    /// clone never sees what is changed after it was taken.
    mod page_sums {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Set(u32, u64),
            Resize(u32),
            Clone,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (1u32..3000, 0u64..4).prop_map(|(p, v)| Op::Set(p, CHECKSUM_FLAG | v)),
                1 => (0u32..3000).prop_map(Op::Resize),
                1 => Just(Op::Clone),
            ]
        }

        fn model_total(model: &[u64]) -> DbChecksum {
            let mut t = DbChecksum::EMPTY;
            model.iter().for_each(|&s| t.toggle(s));
            t
        }

        fn model_diff(a: &[u64], b: &[u64]) -> Vec<u32> {
            (0..a.len().max(b.len()))
                .filter(|&i| a.get(i) != b.get(i))
                .map(|i| i as u32 + 1)
                .collect()
        }

        fn zero_sum(pgno: u32) -> u64 {
            page_checksum(pgno, &[0u8; 512])
        }

        fn same(sums: &PageSums, model: &[u64]) -> Result<(), TestCaseError> {
            prop_assert_eq!(sums.commit() as usize, model.len());
            for (i, &want) in model.iter().enumerate() {
                prop_assert_eq!(sums.get(i as u32 + 1), Some(want), "page {}", i + 1);
            }
            prop_assert_eq!(sums.get(model.len() as u32 + 1), None);
            prop_assert_eq!(sums.total(), model_total(model));
            Ok(())
        }

        proptest! {
            #[test]
            fn behaves_like_a_vector(ops in proptest::collection::vec(op(), 1..60)) {
                let mut sums = PageSums::new(512);
                let mut model: Vec<u64> = Vec::new();
                let mut clones: Vec<(PageSums, Vec<u64>)> = Vec::new();
                for op in ops {
                    match op {
                        Op::Set(p, v) => {
                            sums.set(p, v);
                            while model.len() < p as usize {
                                model.push(zero_sum(model.len() as u32 + 1));
                            }
                            model[p as usize - 1] = v;
                        }
                        Op::Resize(n) => {
                            sums.resize(n);
                            model.truncate(n as usize);
                            while model.len() < n as usize {
                                model.push(zero_sum(model.len() as u32 + 1));
                            }
                        }
                        Op::Clone => clones.push((sums.clone(), model.clone())),
                    }
                    same(&sums, &model)?;
                    for (c, m) in &clones {
                        same(c, m)?;
                        prop_assert_eq!(sums.diff(c), model_diff(&model, m));
                        prop_assert_eq!(c.diff(&sums), model_diff(m, &model));
                        prop_assert_eq!(c == &sums, m == &model);
                    }
                }
            }
        }

        /// A table grown and shrunk back equals the one it was (nothing stale past the end).
        #[test]
        fn grown_and_shrunk_back_is_equal() {
            let mut a = PageSums::new(512);
            a.resize(1100);
            let mut b = a.clone();
            b.set(1500, CHECKSUM_FLAG | 7);
            b.resize(1100);
            assert_eq!(a, b);
            assert_eq!(a.total(), b.total());
        }

        /// A clone changed in one page copies one chunk; the rest stays shared.
        #[test]
        fn a_changed_clone_shares_the_chunks_it_did_not_change() {
            let mut a = PageSums::new(512);
            a.resize(10 * SUMS_CHUNK_PAGES as u32);
            let mut b = a.clone();
            b.set(5, CHECKSUM_FLAG | 7);
            b.set(5 + 2 * SUMS_CHUNK_PAGES as u32, CHECKSUM_FLAG | 7);
            let shared = (0..a.chunks.len())
                .filter(|&c| std::sync::Arc::ptr_eq(&a.chunks[c], &b.chunks[c]))
                .count();
            assert_eq!(shared, 8);
            // Setting the checksum a page already has copies nothing.
            let mut c = a.clone();
            c.set(9, a.get(9).expect("page 9"));
            assert!(std::sync::Arc::ptr_eq(&a.chunks[0], &c.chunks[0]));
            assert_eq!(b.diff(&a), vec![5, 5 + 2 * SUMS_CHUNK_PAGES as u32]);
        }
    }
}
