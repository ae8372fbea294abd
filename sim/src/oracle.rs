//! The oracle's record of committed states, kept page by page so that a commit costs what it
//! changed, not what the database holds.
//!
//! An image's digest is XXH3-64 over the XXH3-64 of each of its pages, in page order.
//! [`PageDigest::of`] computes it from a whole image (a restore, or `sqlite3_serialize` of the
//! application's database); [`WalFeed`] keeps it up to date commit by commit from the frames
//! SQLite reports committing (`sqlite3_wal_hook`): the frames after the previous commit up to the
//! one the hook names, each giving a page number and its new content, and the commit frame the
//! database's size in pages. That uses only the WAL's frame layout and SQLite's own count of
//! committed frames; none of the engine's logic (checksum chains, salts, generations) is reused.
//!
//! What it does not trust itself with: the first commit, and every state the checker compares
//! against a restore, are also computed from `sqlite3_serialize` and compared with the running
//! digest; a disagreement is reported as a simulator bug.

use std::sync::{Arc, Mutex, PoisonError};

use crate::vfs;

/// XXH3-64 of each page; the digest of an image is the hash of these hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageDigest {
    page_size: usize,
    pages: Vec<u64>,
}

fn page_hash(page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}

impl PageDigest {
    pub fn new(page_size: usize) -> Self {
        Self {
            page_size,
            pages: Vec::new(),
        }
    }

    /// The digest of a whole image (a trailing partial page counts as a page).
    pub fn of(image: &[u8], page_size: usize) -> Self {
        Self {
            page_size,
            pages: image.chunks(page_size.max(1)).map(page_hash).collect(),
        }
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Page `pgno` (1-based) now holds `page`; the image grows if needed.
    pub fn set(&mut self, pgno: u32, page: &[u8]) {
        self.set_hash(pgno, page_hash(page));
    }

    fn set_hash(&mut self, pgno: u32, h: u64) {
        let i = pgno.saturating_sub(1) as usize;
        if self.pages.len() <= i {
            // A page past the end that nobody wrote reads as zeros.
            let zero = page_hash(&vec![0; self.page_size]);
            self.pages.resize(i + 1, zero);
        }
        self.pages[i] = h;
    }

    /// The image now has `pages` pages.
    pub fn truncate(&mut self, pages: u32) {
        let n = pages as usize;
        if self.pages.len() > n {
            self.pages.truncate(n);
        } else if self.pages.len() < n {
            let zero = page_hash(&vec![0; self.page_size]);
            self.pages.resize(n, zero);
        }
    }

    pub fn len_pages(&self) -> usize {
        self.pages.len()
    }

    pub fn digest(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.pages.len() * 8);
        for h in &self.pages {
            bytes.extend_from_slice(&h.to_le_bytes());
        }
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }
}

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

/// Pages the application committed since the oracle last looked, fed by `sqlite3_wal_hook`.
#[derive(Debug, Default)]
pub struct WalFeed {
    wal: String,
    /// Salts of the WAL generation seen at the last commit, and its committed frame count.
    salts: Option<[u8; 8]>,
    frames: u32,
    /// Committed (page number, page hash) in commit order since the last [`Self::take`].
    changes: Vec<(u32, u64)>,
    /// The database size in pages after the last observed commit.
    db_pages: Option<u32>,
    /// Something the feed cannot account for (an unreadable frame): recompute from scratch.
    broken: Option<String>,
}

/// What [`WalFeed::take`] hands over.
#[derive(Debug)]
pub enum Changes {
    /// No commit was observed.
    None,
    Pages {
        changes: Vec<(u32, u64)>,
        db_pages: u32,
    },
    /// The feed lost track; the caller must recompute the digest from the whole image.
    Unknown(String),
}

impl WalFeed {
    pub fn new(db: &str) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            wal: format!("{db}-wal"),
            ..Self::default()
        }))
    }

    /// Called from the application's WAL hook after a commit left `committed` frames in the WAL.
    pub fn observe(&mut self, committed: u32) {
        let wal = self.wal.clone();
        let outcome = vfs::with(|s| {
            let mut hdr = [0u8; WAL_HEADER];
            if s.disk.read(&wal, 0, &mut hdr) < WAL_HEADER {
                return Err("the WAL header is missing after a commit".to_string());
            }
            let page_size = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
            let salts: [u8; 8] = [
                hdr[16], hdr[17], hdr[18], hdr[19], hdr[20], hdr[21], hdr[22], hdr[23],
            ];
            // A new generation (salts changed) or a WAL that did not grow starts at frame 1;
            // frame 1 onwards of a generation are all committed, so re-reading them is safe.
            let first = if self.salts == Some(salts) && committed > self.frames {
                self.frames + 1
            } else {
                1
            };
            let mut frame = vec![0u8; FRAME_HEADER + page_size];
            let mut db_pages = 0;
            for i in first..=committed {
                let at = WAL_HEADER + (i as usize - 1) * frame.len();
                if s.disk.read(&wal, at, &mut frame) < frame.len() {
                    return Err(format!("frame {i} of a committed WAL is short"));
                }
                let pgno = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                let size = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                self.changes.push((pgno, page_hash(&frame[FRAME_HEADER..])));
                if size != 0 {
                    db_pages = size;
                }
            }
            if db_pages == 0 {
                return Err(format!("frames {first}..={committed} hold no commit frame"));
            }
            self.salts = Some(salts);
            self.frames = committed;
            self.db_pages = Some(db_pages);
            Ok(())
        });
        if let Err(e) = outcome {
            self.broken.get_or_insert(e);
        }
    }

    /// Forget the WAL generation (after a power loss or a new host: the next commit is read
    /// from frame 1).
    pub fn reset(&mut self) {
        self.salts = None;
        self.frames = 0;
        self.changes.clear();
        self.db_pages = None;
        self.broken = None;
    }

    /// Whether a commit was observed since the last [`Self::take`].
    pub fn has_commit(&self) -> bool {
        self.db_pages.is_some() || self.broken.is_some()
    }

    pub fn take(&mut self) -> Changes {
        if let Some(e) = self.broken.take() {
            self.changes.clear();
            self.db_pages = None;
            return Changes::Unknown(e);
        }
        match self.db_pages.take() {
            None => Changes::None,
            Some(db_pages) => Changes::Pages {
                changes: std::mem::take(&mut self.changes),
                db_pages,
            },
        }
    }
}

/// Applies `changes` to `digest`.
pub fn apply(digest: &mut PageDigest, changes: &[(u32, u64)], db_pages: u32) {
    for &(pgno, h) in changes {
        digest.set_hash(pgno, h);
    }
    digest.truncate(db_pages);
}

/// Locks a feed (a poisoned lock still holds usable data).
pub fn lock(feed: &Mutex<WalFeed>) -> std::sync::MutexGuard<'_, WalFeed> {
    feed.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_updates_match_a_digest_of_the_whole_image() {
        let ps = 512;
        let mut image = vec![0u8; ps * 4];
        image[ps..2 * ps].fill(7);
        let mut d = PageDigest::of(&image, ps);
        image[3 * ps..].fill(9);
        d.set(4, &image[3 * ps..]);
        assert_eq!(d.digest(), PageDigest::of(&image, ps).digest());
        image.truncate(2 * ps);
        d.truncate(2);
        assert_eq!(d.digest(), PageDigest::of(&image, ps).digest());
        image.resize(5 * ps, 0);
        image[4 * ps..].fill(1);
        d.set(5, &image[4 * ps..]);
        assert_eq!(d, PageDigest::of(&image, ps));
    }

    #[test]
    fn different_images_differ() {
        let ps = 512;
        let a = vec![1u8; ps * 2];
        let mut b = a.clone();
        b[ps + 3] = 0;
        assert_ne!(
            PageDigest::of(&a, ps).digest(),
            PageDigest::of(&b, ps).digest()
        );
        // Same pages, different count.
        assert_ne!(
            PageDigest::of(&a[..ps], ps).digest(),
            PageDigest::of(&a, ps).digest()
        );
    }
}
