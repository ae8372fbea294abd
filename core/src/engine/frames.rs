//! The pages a sync's WAL scans read, kept for its encoding.
//!
//! A scan reads every frame whole (header and page) to check the checksum chain, and the
//! encoding then wanted each committed page again: two reads of every frame shipped, three
//! with the checkpoint's (measured in `ci/bench`'s large database: 3.2 bytes read from the
//! database per byte of WAL written). The scan's bytes are the very ones its checksums
//! validated, so encoding from them ships exactly what was proven; the check at the end of the
//! sync still finds a WAL restarted meanwhile. Bounded: the newest frame of at most
//! [`FRAME_CACHE_BYTES_MAX`] worth of distinct pages; the rest is read again, as before.

use std::collections::HashMap;

use crate::planted::{self, Bug};
use crate::wal::FRAME_HEADER_SIZE;

/// Pages kept per sync: 8 MiB (2,048 pages of 4 KiB; a sync at 100 commits a second of one
/// page each keeps about 100).
pub const FRAME_CACHE_BYTES_MAX: usize = 8 << 20;

/// Page number to (frame offset, page bytes), the newest frame read for each page.
#[derive(Debug, Default)]
pub(super) struct FrameCache {
    pages: HashMap<u32, (u64, Vec<u8>)>,
    bytes: usize,
    /// Filled only while a sync is being prepared ([`FrameCache::begin`] to [`FrameCache::end`]).
    active: bool,
}

impl FrameCache {
    pub(super) fn begin(&mut self) {
        self.end();
        self.active = true;
    }

    /// Forgets every page (and its memory).
    pub(super) fn end(&mut self) {
        self.pages = HashMap::new();
        self.bytes = 0;
        self.active = false;
    }

    /// Keeps the page of the whole frame just read at `offset` (its checksum is checked by
    /// the scan that read it; a frame that fails the check is never in a state's map).
    pub(super) fn keep(&mut self, offset: u64, frame: &[u8]) {
        if !self.active || frame.len() <= FRAME_HEADER_SIZE {
            return;
        }
        let pgno = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let page = &frame[FRAME_HEADER_SIZE..];
        match self.pages.get_mut(&pgno) {
            Some((at, bytes)) if bytes.len() == page.len() => {
                *at = offset;
                bytes.copy_from_slice(page);
            }
            Some(_) => {}
            None if self.bytes + page.len() <= FRAME_CACHE_BYTES_MAX => {
                self.bytes += page.len();
                self.pages.insert(pgno, (offset, page.to_vec()));
            }
            None => {}
        }
    }

    /// The page of the frame at `offset`, if that is the frame kept for `pgno`.
    pub(super) fn page(&self, pgno: u32, offset: u64) -> Option<&[u8]> {
        let (at, bytes) = self.pages.get(&pgno)?;
        (*at == offset || planted::active(Bug::FrameCacheIgnoresOffset)).then_some(bytes.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pgno: u32, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; FRAME_HEADER_SIZE + 16];
        f[..4].copy_from_slice(&pgno.to_be_bytes());
        f
    }

    #[test]
    fn keeps_the_newest_frame_of_a_page_and_answers_only_for_its_offset() {
        let mut c = FrameCache::default();
        c.keep(100, &frame(7, 1));
        assert!(c.page(7, 100).is_none(), "nothing kept outside a sync");
        c.begin();
        c.keep(100, &frame(7, 1));
        c.keep(200, &frame(7, 2));
        assert_eq!(c.page(7, 200), Some(&[2u8; 16][..]));
        assert!(
            c.page(7, 100).is_none(),
            "an older frame of the page is read from the file"
        );
        assert!(c.page(8, 200).is_none());
        c.end();
        assert!(c.page(7, 200).is_none(), "forgotten at the sync's end");
    }

    #[test]
    fn stops_keeping_new_pages_at_the_bound() {
        let mut c = FrameCache::default();
        c.begin();
        let page = 4096;
        let fits = FRAME_CACHE_BYTES_MAX / page;
        let big = |pgno: u32| {
            let mut f = vec![0u8; FRAME_HEADER_SIZE + page];
            f[..4].copy_from_slice(&pgno.to_be_bytes());
            f
        };
        for pgno in 1..=u32::try_from(fits + 10).expect("fits") {
            c.keep(u64::from(pgno) * 5000, &big(pgno));
        }
        assert!(c.bytes <= FRAME_CACHE_BYTES_MAX);
        assert!(c.page(1, 5000).is_some());
        let past = u32::try_from(fits + 1).expect("fits");
        assert!(c.page(past, u64::from(past) * 5000).is_none());
        // A page already kept is still replaced by its newer frame at the bound.
        c.keep(1, &big(1));
        assert!(c.page(1, 1).is_some());
    }
}
