//! `sluice verify`: what a restore would get out of a replica, without restoring (unless asked).
//!
//! 1. One listing of every level.
//! 2. Every file read once, in parallel (bounded by `parallelism`; files over 1 MiB through
//!    scratch files, so memory stays bounded), decoded page by page: its CRC, its header and
//!    the database checksums it records.
//! 3. Per level, the TXID ranges it holds and its gaps; a gap no other level holds is where
//!    restores across it fail.
//! 4. Along the latest restore plan: every file intact, each file's database checksum before
//!    continuing the previous file's after (`restore::checksum_continues`, restore's own rule).
//! 5. The restorable range, by TXID and by time.
//!
//! The latest state is restorable when its plan exists, every file in it is intact and the
//! checksums chain. `verify` exits 0 only then.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde::Serialize;

use crate::replica::{FileInfo, Replica, SNAPSHOT_LEVEL};
use crate::restore::{self, Target};
use crate::scratch::Scratch;

/// What one file holds, as read.
#[derive(Clone, Debug, Serialize)]
pub struct FileCheck {
    pub file: String,
    pub level: u8,
    pub min_txid: u64,
    pub max_txid: u64,
    pub size: u64,
    /// Database checksums before and after applying (`None`: the file records none).
    #[serde(skip)]
    pub checksums: Option<(u64, u64)>,
    /// Why the file cannot be used, if it cannot.
    pub damage: Option<String>,
}

/// One level's files.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LevelSummary {
    pub level: u8,
    pub files: usize,
    pub bytes: u64,
    pub min_txid: u64,
    pub max_txid: u64,
    /// Missing TXID ranges between its files, and whether another level holds them.
    pub gaps: Vec<Gap>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Gap {
    pub from_txid: u64,
    pub to_txid: u64,
    /// Another level's file (or a snapshot past it) holds these TXIDs.
    pub held_elsewhere: bool,
}

/// Everything `verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub replica: String,
    pub levels: Vec<LevelSummary>,
    /// Files that failed their checks (damaged, or not continuing the file before them).
    pub problems: Vec<String>,
    /// The TXID the latest restore reaches, when it can.
    pub latest_txid: Option<u64>,
    /// Why the latest state cannot be restored, when it cannot.
    pub latest_error: Option<String>,
    /// The oldest TXID a restore can reach.
    pub oldest_txid: Option<u64>,
    /// The oldest and newest moments (Unix ms) a `-timestamp` restore can reach.
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
    pub files_checked: usize,
    pub bytes_checked: u64,
}

impl VerifyReport {
    pub fn latest_restorable(&self) -> bool {
        self.latest_txid.is_some() && self.latest_error.is_none()
    }
}

/// Reads one file whole and checks it (CRC, header, page order).
async fn check_file(replica: &Replica, info: FileInfo, scratch: &dyn Scratch) -> FileCheck {
    let mut check = FileCheck {
        file: info.to_string(),
        level: info.level,
        min_txid: info.min_txid,
        max_txid: info.max_txid,
        size: info.size,
        checksums: None,
        damage: None,
    };
    let fetched = match restore::fetch(
        replica,
        info.clone(),
        scratch,
        scratch.in_memory_bytes_max(),
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            check.damage = Some(format!("cannot be read: {e}"));
            return check;
        }
    };
    let decoded = tokio::task::spawn_blocking(move || -> Result<Option<(u64, u64)>, String> {
        let reader = fetched.reader(256 << 10).map_err(|e| e.to_string())?;
        let (h, trailer) = crate::ltx::check_whole(reader).map_err(|e| e.to_string())?;
        if (h.min_txid, h.max_txid) != (fetched.info.min_txid, fetched.info.max_txid) {
            return Err(format!(
                "its header says TXIDs {:016x}..={:016x}",
                h.min_txid, h.max_txid
            ));
        }
        Ok(h.db_checksums(&trailer))
    })
    .await;
    match decoded {
        Ok(Ok(sums)) => check.checksums = sums,
        Ok(Err(e)) => check.damage = Some(e),
        Err(e) => check.damage = Some(e.to_string()),
    }
    check
}

/// Verifies `replica` (see the module's steps).
pub async fn verify(
    replica: &Replica,
    scratch: &dyn Scratch,
    parallelism: usize,
) -> Result<VerifyReport, restore::RestoreError> {
    let files = replica.list_all().await?;
    let mut report = VerifyReport {
        replica: replica.describe(),
        ..VerifyReport::default()
    };
    let checks: Vec<FileCheck> = futures::stream::iter(files.clone())
        .map(|f| check_file(replica, f, scratch))
        .buffered(parallelism.clamp(1, restore::PARALLELISM_MAX))
        .collect()
        .await;
    report.files_checked = checks.len();
    report.bytes_checked = checks.iter().map(|c| c.size).sum();
    let by_name: BTreeMap<&str, &FileCheck> = checks.iter().map(|c| (c.file.as_str(), c)).collect();
    for c in &checks {
        if let Some(d) = &c.damage {
            report.problems.push(format!("{} is damaged: {d}", c.file));
        }
    }
    report.levels = summarize_levels(&files);
    // The latest plan: every file intact, checksums chained.
    match restore::plan(&report.replica, &files, Target::Latest) {
        Ok(plan) => {
            let mut error = None;
            let mut prev: Option<(&FileInfo, u64)> = None;
            for f in &plan {
                let name = f.to_string();
                let Some(c) = by_name.get(name.as_str()) else {
                    continue;
                };
                if let Some(d) = &c.damage {
                    error.get_or_insert(format!("{name} is damaged: {d}"));
                    break;
                }
                if let (Some((pf, post)), Some((pre, _))) = (prev, c.checksums)
                    && !restore::checksum_continues(pf.max_txid, post, f.min_txid, pre)
                {
                    let msg = format!(
                        "{name} does not continue {pf}: its database checksum before is {pre:016x}, the state after {pf} is {post:016x}"
                    );
                    report.problems.push(msg.clone());
                    error.get_or_insert(msg);
                }
                prev = c.checksums.map(|(_, post)| (f, post));
            }
            report.latest_txid = plan.last().map(|f| f.max_txid);
            report.newest_ms = plan.iter().map(|f| f.created_ms + 1).max();
            report.latest_error = error;
        }
        Err(e) => report.latest_error = Some(e.to_string()),
    }
    let starts: Vec<&FileInfo> = files
        .iter()
        .filter(|f| f.level == SNAPSHOT_LEVEL || f.min_txid == 1)
        .collect();
    report.oldest_txid = starts.iter().map(|f| f.max_txid).min();
    report.oldest_ms = starts.iter().map(|f| f.created_ms + 1).min();
    Ok(report)
}

/// Per level: file count, bytes, TXID range and the gaps between its files.
fn summarize_levels(files: &[FileInfo]) -> Vec<LevelSummary> {
    let mut out: Vec<LevelSummary> = Vec::new();
    for level in 0..=SNAPSHOT_LEVEL {
        let mut mine: Vec<&FileInfo> = files.iter().filter(|f| f.level == level).collect();
        if mine.is_empty() {
            continue;
        }
        mine.sort_by_key(|f| (f.min_txid, f.max_txid));
        let mut s = LevelSummary {
            level,
            files: mine.len(),
            bytes: mine.iter().map(|f| f.size).sum(),
            min_txid: mine.iter().map(|f| f.min_txid).min().unwrap_or(0),
            max_txid: mine.iter().map(|f| f.max_txid).max().unwrap_or(0),
            gaps: Vec::new(),
        };
        if level != SNAPSHOT_LEVEL {
            let mut reach = mine[0].max_txid;
            for f in &mine[1..] {
                if f.min_txid > reach + 1 {
                    let (from, to) = (reach + 1, f.min_txid - 1);
                    // Held elsewhere: another level's file covers the first missing TXID, or
                    // a snapshot holds the state right before this file.
                    let held_elsewhere = files.iter().any(|g| {
                        (g.level != level && g.min_txid <= from && g.max_txid >= from)
                            || (g.level == SNAPSHOT_LEVEL && g.max_txid == to)
                    });
                    s.gaps.push(Gap {
                        from_txid: from,
                        to_txid: to,
                        held_elsewhere,
                    });
                }
                reach = reach.max(f.max_txid);
            }
        }
        out.push(s);
    }
    out
}

/// The report as text, one line per level, then the verdict.
pub fn render(r: &VerifyReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "replica {}: {} files, {} bytes read and checked",
        r.replica, r.files_checked, r.bytes_checked
    );
    for l in &r.levels {
        let _ = write!(
            s,
            "  level {}: {} files, {} bytes, TXIDs {:016x}..={:016x}",
            l.level, l.files, l.bytes, l.min_txid, l.max_txid
        );
        for g in &l.gaps {
            let _ = write!(
                s,
                "; gap {:016x}..={:016x} ({})",
                g.from_txid,
                g.to_txid,
                if g.held_elsewhere {
                    "held by another level"
                } else {
                    "held nowhere: restores across it fail"
                }
            );
        }
        s.push('\n');
    }
    for p in &r.problems {
        let _ = writeln!(s, "  problem: {p}");
    }
    if let (Some(a), Some(b), true) = (r.oldest_txid, r.latest_txid, r.latest_restorable()) {
        let _ = writeln!(s, "  restorable TXIDs: {a:016x}..={b:016x}");
    }
    if let (Some(a), Some(b), true) = (r.oldest_ms, r.newest_ms, r.latest_restorable()) {
        let _ = writeln!(
            s,
            "  restorable moments: {} .. {}",
            crate::replica::rfc3339(a),
            crate::replica::rfc3339(b)
        );
    }
    match (&r.latest_error, r.latest_txid) {
        (None, Some(t)) => {
            let _ = writeln!(s, "latest state (TXID {t:016x}) is restorable");
        }
        (Some(e), _) => {
            let _ = writeln!(s, "latest state is NOT restorable: {e}");
        }
        (None, None) => {
            let _ = writeln!(s, "latest state is NOT restorable: the replica is empty");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::Layout;
    use crate::store::{MemStore, ObjectStore};
    use std::sync::Arc;

    use crate::replica::test_file as f;

    #[test]
    fn a_gap_is_harmless_only_where_another_level_holds_it() {
        let files = vec![f(0, 1, 1), f(0, 2, 2), f(0, 5, 5), f(1, 1, 4), f(0, 8, 8)];
        let l0 = &summarize_levels(&files)[0];
        assert_eq!(l0.gaps.len(), 2);
        assert!(l0.gaps[0].held_elsewhere, "3..=4 is in level 1");
        assert!(!l0.gaps[1].held_elsewhere, "6..=7 is nowhere");
    }

    #[tokio::test]
    async fn an_empty_replica_is_not_restorable() {
        let replica = Replica::new(Arc::new(MemStore::new()), Layout::File);
        let dir = tempfile::tempdir().expect("dir");
        let r = verify(&replica, &crate::scratch::OsScratch::new(dir.path()), 4)
            .await
            .expect("verify");
        assert!(!r.latest_restorable());
        assert!(render(&r).contains("NOT restorable"));
    }

    #[tokio::test]
    async fn a_file_that_is_not_ltx_is_damage() {
        let store = Arc::new(MemStore::new());
        let replica = Replica::new(store.clone(), Layout::File);
        replica
            .write(
                0,
                1,
                1,
                crate::scratch::SpoolBody::Memory(b"not an ltx file".to_vec()),
                0,
                crate::store::PutMode::Create,
            )
            .await
            .expect("write");
        let dir = tempfile::tempdir().expect("dir");
        let r = verify(&replica, &crate::scratch::OsScratch::new(dir.path()), 4)
            .await
            .expect("verify");
        assert!(!r.latest_restorable(), "{r:?}");
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert!(store.list("").await.expect("list").len() == 1);
    }
}
