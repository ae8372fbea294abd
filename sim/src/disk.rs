//! The simulated disk: written vs durable bytes per file (see `FAULT_MODEL.md`).

use std::collections::BTreeMap;

use rand::Rng;

/// Sector size for torn writes.
pub const SECTOR_BYTES: usize = 512;

#[derive(Clone, Debug)]
enum Pending {
    Write { offset: usize, bytes: Vec<u8> },
    Truncate { len: usize },
}

#[derive(Clone, Debug, Default)]
pub struct File {
    written: Vec<u8>,
    /// `None` until the file's first sync: a power loss makes it disappear.
    durable: Option<Vec<u8>>,
    pending: Vec<Pending>,
    /// Bumped by every write and truncate: the simulated modification time.
    version: u64,
}

/// Counts of what a power loss did, for the event log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerLoss {
    pub persisted: u32,
    pub dropped: u32,
    pub torn: u32,
    pub vanished_files: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Disk {
    files: BTreeMap<String, File>,
}

impl Disk {
    pub fn exists(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    pub fn create(&mut self, name: &str) {
        self.files.entry(name.to_string()).or_default();
    }

    pub fn delete(&mut self, name: &str) {
        self.files.remove(name);
    }

    pub fn len(&self, name: &str) -> Option<usize> {
        self.files.get(name).map(|f| f.written.len())
    }

    /// Reads into `buf` from `offset`; returns the bytes available (fewer at the end).
    pub fn read(&self, name: &str, offset: usize, buf: &mut [u8]) -> usize {
        let Some(f) = self.files.get(name) else {
            return 0;
        };
        let avail = f.written.len().saturating_sub(offset).min(buf.len());
        if avail > 0 {
            buf[..avail].copy_from_slice(&f.written[offset..offset + avail]);
        }
        avail
    }

    /// The file's modification counter (0 if it does not exist).
    pub fn version(&self, name: &str) -> u64 {
        self.files.get(name).map_or(0, |f| f.version)
    }

    pub fn contents(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(|f| f.written.as_slice())
    }

    pub fn write(&mut self, name: &str, offset: usize, bytes: &[u8]) {
        let f = self.files.entry(name.to_string()).or_default();
        apply_write(&mut f.written, offset, bytes);
        f.pending.push(Pending::Write {
            offset,
            bytes: bytes.to_vec(),
        });
        f.version += 1;
    }

    pub fn truncate(&mut self, name: &str, len: usize) {
        let f = self.files.entry(name.to_string()).or_default();
        f.written.resize(len, 0);
        f.pending.push(Pending::Truncate { len });
        f.version += 1;
    }

    pub fn sync(&mut self, name: &str) {
        if let Some(f) = self.files.get_mut(name) {
            // Replaying the pending operations costs what changed, not the file's size.
            match f.durable.as_mut() {
                Some(durable) => {
                    for op in f.pending.drain(..) {
                        match op {
                            Pending::Write { offset, bytes } => {
                                apply_write(durable, offset, &bytes)
                            }
                            Pending::Truncate { len } => durable.resize(len, 0),
                        }
                    }
                }
                None => {
                    f.durable = Some(f.written.clone());
                    f.pending.clear();
                }
            }
            debug_assert!(f.durable.as_deref() == Some(&f.written[..]));
        }
    }

    /// Renames `from` to `to`, replacing `to`. The rename itself is durable at once (the
    /// directory entry is journaled), the data is not: a file renamed before its first sync
    /// keeps the new name across a power loss with empty durable contents, its pending writes
    /// then persisting, dropping or tearing like any other (the zero-length or torn file a
    /// rename before fsync leaves on a journaling filesystem).
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        let Some(mut f) = self.files.remove(from) else {
            return false;
        };
        f.durable.get_or_insert_with(Vec::new);
        f.version += 1;
        self.files.insert(to.to_string(), f);
        true
    }

    /// Number of operations not yet durable, over all files.
    pub fn pending_ops(&self) -> usize {
        self.files.values().map(|f| f.pending.len()).sum()
    }

    /// A power loss: each file becomes its durable image plus, in order, each pending operation
    /// persisted, dropped or (writes) torn at sector granularity.
    pub fn power_loss(&mut self, rng: &mut impl Rng) -> PowerLoss {
        let mut report = PowerLoss::default();
        let names: Vec<String> = self.files.keys().cloned().collect();
        for name in names {
            let Some(f) = self.files.get_mut(&name) else {
                continue;
            };
            let Some(mut image) = f.durable.clone() else {
                report.vanished_files += 1;
                self.files.remove(&name);
                continue;
            };
            for op in std::mem::take(&mut f.pending) {
                match rng.random_range(0..3u8) {
                    0 => {
                        report.persisted += 1;
                        match op {
                            Pending::Write { offset, bytes } => {
                                apply_write(&mut image, offset, &bytes)
                            }
                            Pending::Truncate { len } => image.resize(len, 0),
                        }
                    }
                    1 => report.dropped += 1,
                    _ => match op {
                        Pending::Write { offset, bytes } => {
                            report.torn += 1;
                            for (i, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
                                if rng.random_bool(0.5) {
                                    apply_write(&mut image, offset + i * SECTOR_BYTES, sector);
                                }
                            }
                        }
                        Pending::Truncate { .. } => report.dropped += 1,
                    },
                }
            }
            f.written = image.clone();
            f.durable = Some(image);
            f.version += 1;
        }
        report
    }
}

fn apply_write(image: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    if image.len() < offset + bytes.len() {
        image.resize(offset + bytes.len(), 0);
    }
    image[offset..offset + bytes.len()].copy_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn synced_bytes_survive_power_loss_and_unsynced_files_vanish() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut d = Disk::default();
        d.write("a", 0, &[1; 1024]);
        d.sync("a");
        d.write("b", 0, &[2; 10]);
        let r = d.power_loss(&mut rng);
        assert_eq!(d.contents("a"), Some(&[1u8; 1024][..]));
        assert!(!d.exists("b"));
        assert_eq!(r.vanished_files, 1);
    }

    #[test]
    fn pending_writes_persist_drop_or_tear_by_sector() {
        let mut seen_torn = false;
        for seed in 0..64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut d = Disk::default();
            d.write("a", 0, &[0; 2048]);
            d.sync("a");
            d.write("a", 0, &[9; 2048]);
            d.power_loss(&mut rng);
            let img = d.contents("a").expect("file").to_vec();
            assert_eq!(img.len(), 2048);
            for sector in img.chunks(SECTOR_BYTES) {
                assert!(
                    sector.iter().all(|&b| b == sector[0]),
                    "a sector is never half-written"
                );
            }
            seen_torn |= img.chunks(SECTOR_BYTES).any(|s| s[0] == 9)
                && img.chunks(SECTOR_BYTES).any(|s| s[0] == 0);
        }
        assert!(seen_torn, "some seed tears the write");
    }
}
