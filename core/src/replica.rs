//! Replica layout: where LTX files live in a store, exactly as Litestream 0.5 lays them out.
//!
//! ```text
//! file replica   <root>/ltx/<level decimal>/<min %016x>-<max %016x>.ltx
//! S3 replica     <root>/<level %04x>/<min %016x>-<max %016x>.ltx
//! ```
//!
//! Levels 0..=8 hold incremental and compacted files; level 9 holds snapshots (TXID 1..N).

use std::fmt;

use crate::store::{DynStore, ObjectMeta, PutMode, PutOptions, StoreError};

/// The snapshot level.
pub const SNAPSHOT_LEVEL: u8 = 9;
pub const LEVEL_MAX: u8 = 9;

/// How a backend names LTX files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `ltx/<level>/...`: Litestream's file replica (and its SFTP, WebDAV, ... replicas).
    File,
    /// `<level %04x>/...`: Litestream's S3 replica.
    S3,
}

impl Layout {
    pub fn level_prefix(self, level: u8) -> String {
        match self {
            Layout::File => format!("ltx/{level}/"),
            Layout::S3 => format!("{level:04x}/"),
        }
    }

    pub fn key(self, level: u8, min_txid: u64, max_txid: u64) -> String {
        format!(
            "{}{}",
            self.level_prefix(level),
            file_name(min_txid, max_txid)
        )
    }

    /// Parses a key of this layout, or `None` for anything else (temporaries, other files).
    pub fn parse_key(self, key: &str) -> Option<(u8, u64, u64)> {
        let (dir, name) = key.rsplit_once('/')?;
        let level = match self {
            Layout::File => dir.strip_prefix("ltx/")?.parse::<u8>().ok()?,
            Layout::S3 => {
                if dir.len() != 4 {
                    return None;
                }
                u8::try_from(u16::from_str_radix(dir, 16).ok()?).ok()?
            }
        };
        if level > LEVEL_MAX || self.level_prefix(level) != format!("{dir}/") {
            return None;
        }
        let (min, max) = parse_file_name(name)?;
        Some((level, min, max))
    }
}

pub fn file_name(min_txid: u64, max_txid: u64) -> String {
    format!("{min_txid:016x}-{max_txid:016x}.ltx")
}

/// Parses `<16 hex>-<16 hex>.ltx` (lower-case, as Litestream's regex demands).
pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".ltx")?;
    let (a, b) = stem.split_once('-')?;
    let hex = |s: &str| {
        (s.len() == 16
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
    };
    let (min, max) = (hex(a)?, hex(b)?);
    (min <= max && min > 0).then_some((min, max))
}

/// One LTX file in a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub level: u8,
    pub min_txid: u64,
    pub max_txid: u64,
    pub size: u64,
    /// Creation time in Unix ms (the LTX header timestamp, as stored in object metadata).
    pub created_ms: i64,
}

impl fmt::Display for FileInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "level {} {}",
            self.level,
            file_name(self.min_txid, self.max_txid)
        )
    }
}

/// A store plus its layout: LTX-level operations on a replica.
#[derive(Clone, Debug)]
pub struct Replica {
    pub store: DynStore,
    pub layout: Layout,
}

impl Replica {
    pub fn new(store: DynStore, layout: Layout) -> Self {
        Self { store, layout }
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    pub fn key(&self, info: &FileInfo) -> String {
        self.layout.key(info.level, info.min_txid, info.max_txid)
    }

    fn info_of(&self, meta: &ObjectMeta) -> Option<FileInfo> {
        let (level, min_txid, max_txid) = self.layout.parse_key(&meta.key)?;
        Some(FileInfo {
            level,
            min_txid,
            max_txid,
            size: meta.size,
            created_ms: meta.timestamp_ms,
        })
    }

    /// Files of one level sorted by (min, max) TXID.
    pub async fn list_level(&self, level: u8) -> Result<Vec<FileInfo>, StoreError> {
        let metas = self.store.list(&self.layout.level_prefix(level)).await?;
        Ok(self.infos(&metas))
    }

    fn infos(&self, metas: &[ObjectMeta]) -> Vec<FileInfo> {
        let mut files: Vec<FileInfo> = metas.iter().filter_map(|m| self.info_of(m)).collect();
        files.sort_by_key(|f| (f.min_txid, f.max_txid));
        files
    }

    /// Every LTX file sorted by (level, min, max).
    pub async fn list_all(&self) -> Result<Vec<FileInfo>, StoreError> {
        let mut all = Vec::new();
        for level in 0..=LEVEL_MAX {
            all.extend(self.list_level(level).await?);
        }
        Ok(all)
    }

    /// Every LTX file, for a restore to the latest state or a TXID: `created_ms` may be the
    /// store's modification time (see [`crate::store::ObjectStore::list_untimed`]), and the levels are
    /// listed all at once. On S3 that is one round trip for a replica of up to 1,000 files a
    /// level, where [`Replica::list_all`] takes one LIST per level in turn plus a HEAD per file
    /// it did not write itself.
    pub async fn list_all_untimed(&self) -> Result<Vec<FileInfo>, StoreError> {
        self.list_all_timed_on(&[]).await
    }

    /// Every LTX file, the levels listed all at once, `created_ms` exact only on the levels
    /// `timed` names: a listing for a rule that reads timestamps on some levels alone
    /// (retention: level 0 and the snapshots) makes no HEAD for the others.
    pub async fn list_all_timed_on(&self, timed: &[u8]) -> Result<Vec<FileInfo>, StoreError> {
        let levels = futures::future::try_join_all((0..=LEVEL_MAX).map(|l| async move {
            if timed.contains(&l) {
                self.list_level(l).await
            } else {
                self.list_level_untimed(l).await
            }
        }))
        .await?;
        Ok(levels.into_iter().flatten().collect())
    }

    /// One level's files as [`Replica::list_all_untimed`] lists them: one LIST on S3.
    pub async fn list_level_untimed(&self, level: u8) -> Result<Vec<FileInfo>, StoreError> {
        let metas = self
            .store
            .list_untimed(&self.layout.level_prefix(level))
            .await?;
        Ok(self.infos(&metas))
    }

    /// `len` bytes of `info` from `offset` (fewer only at its end), in ranged reads of at most
    /// `chunk` bytes: a body cut short by the network is resumed where it stopped.
    pub async fn read_range(
        &self,
        info: &FileInfo,
        offset: u64,
        len: u64,
        chunk: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let key = self.key(info);
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        while (bytes.len() as u64) < len {
            let done = bytes.len() as u64;
            let got = self
                .store
                .get_range(&key, offset + done, (len - done).min(chunk))
                .await?;
            if got.is_empty() {
                break;
            }
            bytes.extend_from_slice(&got);
        }
        Ok(bytes)
    }

    /// `info` copied to `level` under the same name, by the store itself (see
    /// [`crate::store::ObjectStore::copy`]): `StoreErrorKind::Unsupported` where it cannot.
    pub async fn copy_to_level(
        &self,
        info: &FileInfo,
        level: u8,
        mode: PutMode,
    ) -> Result<FileInfo, StoreError> {
        let to = self.layout.key(level, info.min_txid, info.max_txid);
        self.store.copy(&self.key(info), &to, mode).await?;
        Ok(FileInfo {
            level,
            ..info.clone()
        })
    }

    /// Uploads one LTX file. `PutMode::Create` fails with `StoreErrorKind::AlreadyExists`
    /// instead of replacing a file of the same name.
    pub async fn write(
        &self,
        level: u8,
        min_txid: u64,
        max_txid: u64,
        body: crate::scratch::SpoolBody,
        timestamp_ms: i64,
        mode: PutMode,
    ) -> Result<FileInfo, StoreError> {
        let key = self.layout.key(level, min_txid, max_txid);
        let size = body
            .len()
            .map_err(|e| StoreError::from_io("put", format!("{}/{key}", self.describe()), &e))?;
        crate::store::put_body(
            self.store.as_ref(),
            &key,
            body,
            PutOptions { mode, timestamp_ms },
        )
        .await?;
        Ok(FileInfo {
            level,
            min_txid,
            max_txid,
            size,
            created_ms: timestamp_ms,
        })
    }
}

/// A Unix time in ms as RFC 3339 in UTC, to the millisecond (`2026-11-25T14:00:39.010Z`).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// A file of `level` covering `min..=max`, 100 bytes, written at `max` seconds (Unix ms
/// `max * 1000`): the unit tests' replica listings.
#[cfg(test)]
pub(crate) fn test_file(level: u8, min: u64, max: u64) -> FileInfo {
    FileInfo {
        level,
        min_txid: min,
        max_txid: max,
        size: 100,
        created_ms: (max as i64) * 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_in_both_layouts() {
        for layout in [Layout::File, Layout::S3] {
            for level in 0..=9 {
                let key = layout.key(level, 1, 0xabc);
                assert_eq!(layout.parse_key(&key), Some((level, 1, 0xabc)), "{key}");
            }
        }
        assert_eq!(
            Layout::File.key(9, 1, 2),
            "ltx/9/0000000000000001-0000000000000002.ltx"
        );
        assert_eq!(
            Layout::S3.key(9, 1, 2),
            "0009/0000000000000001-0000000000000002.ltx"
        );
    }

    #[test]
    fn foreign_names_are_ignored() {
        assert_eq!(
            Layout::File.parse_key("ltx/0/0000000000000001-0000000000000002.ltx.tmp"),
            None
        );
        assert_eq!(
            Layout::File.parse_key("ltx/0/00000000000000A1-0000000000000002.ltx"),
            None
        );
        assert_eq!(
            Layout::File.parse_key("ltx/10/0000000000000001-0000000000000002.ltx"),
            None
        );
        assert_eq!(
            Layout::File.parse_key("ltx/00/0000000000000001-0000000000000002.ltx"),
            None
        );
        assert_eq!(
            Layout::File.parse_key("ltx/0/0000000000000003-0000000000000002.ltx"),
            None
        );
        assert_eq!(
            Layout::S3.parse_key("ltx/0/0000000000000001-0000000000000002.ltx"),
            None
        );
        assert_eq!(Layout::File.parse_key("generations/x/wal/0.wal.lz4"), None);
    }
}
