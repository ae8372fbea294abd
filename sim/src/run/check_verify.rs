//! `sluice verify` against the replica a run left: its verdict must agree with a restore.

use super::*;

/// At the end of a run: production's `verify` (every file read and checked, through scratch
/// files on the simulated disk) must call the latest state restorable exactly when a restore
/// of it succeeds, at the TXID the restore reaches.
///
/// Does not check: `verify -restore` (the restore itself is check (1)), or that verify names
/// the right file when the replica is damaged (the integration tests damage replicas on
/// purpose; the simulated store never damages an acknowledged file).
pub(super) fn check_verify(w: &mut World) {
    let replica = Replica::new(Arc::new(w.mem.clone()), Layout::File);
    let report = match w.rt.block_on(sluice_core::verify::verify(
        &replica,
        w.scratch.as_ref(),
        restore::PARALLELISM_DEFAULT,
    )) {
        Ok(r) => r,
        Err(e) => return w.fail(format!("verify failed to list the replica: {e}")),
    };
    let restored = w.restore(Target::Latest);
    match (&restored, report.latest_restorable()) {
        (Ok((_, txid)), true) if report.latest_txid == Some(*txid) => {
            w.log(format!(
                "check verify txid={txid:016x} files={}",
                report.files_checked
            ));
        }
        (Err(NoImage::ReplicaEmpty), false) => w.log("check verify empty"),
        (Ok((_, txid)), _) => w.fail(format!(
            "verify disagrees with a restore that reached TXID {txid:016x}: {}",
            sluice_core::verify::render(&report)
        )),
        (Err(e), _) => w.fail(format!(
            "verify disagrees with a restore that failed ({e}): {}",
            sluice_core::verify::render(&report)
        )),
    }
}
