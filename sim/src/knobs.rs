//! The knobs of a run: which fault sites are on and how the replicator is configured, drawn
//! per seed (swarm testing) or set by a scenario file.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::faulty::StoreFaults;

/// Knobs drawn per seed (swarm testing: each fault site is on for a whole run or not at all).
/// A scenario file can override any of them by name.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    pub page_size: u32,
    pub sync_interval_ms: i64,
    pub transactions: u32,
    pub app_autocheckpoint: u32,
    pub app_checkpoint_rate: f64,
    pub app_reconnect_rate: f64,
    /// Share of transactions during which the engine syncs (uncommitted frames in the WAL).
    pub interleave_rate: f64,
    /// Share of transactions committed while the engine is in the middle of its reads.
    pub write_during_sync_rate: f64,
    /// The application writes through two connections, alternating at random.
    pub two_connections: bool,
    /// The application's page cache in pages (small: transactions spill to the WAL early).
    pub app_cache_pages: i64,
    /// The application's `PRAGMA journal_size_limit` in bytes (-1: none, SQLite's default): the
    /// first commit after a WAL restart truncates the file to it. Never drawn; scenarios set it.
    #[serde(default = "no_journal_size_limit")]
    pub app_journal_size_limit: i64,
    /// The first host starts this many ms into the run (0: at once), on a database the
    /// application has written meanwhile. Never drawn; scenarios set it.
    #[serde(default)]
    pub first_start_ms: i64,
    pub engine_crash_rate: f64,
    pub power_loss_rate: f64,
    /// Replacement of the host by a new empty one that restores and carries on.
    pub host_replace_rate: f64,
    /// Share of host replacements after which the old engine's stalled upload still lands
    /// (a zombie writer), and how long after the takeover.
    pub zombie_rate: f64,
    pub zombie_wake_ms: i64,
    pub engine_checkpoint_pages: u64,
    /// Level-1 compaction every this many ms (0: never); level 2 every fourth time.
    pub compact_interval_ms: i64,
    /// A level-9 snapshot every this many ms (0: never).
    pub snapshot_interval_ms: i64,
    /// Retention after each level-1 compaction and snapshot, as the driver runs it (0: off):
    /// snapshots kept this long, level-0 files covered by level 1 kept `l0_retention_ms`.
    pub snapshot_retention_ms: i64,
    pub l0_retention_ms: i64,
    /// The replica's lease time (0: no lease, the store is not fenced). Production's default is
    /// 30 s; runs are short, so a few seconds here let renewals and expiries happen.
    pub lease_ttl_ms: i64,
    /// Share of host replacements whose restore loses power in the middle (the host boots again
    /// and reruns the sidecar's restore).
    pub restore_crash_rate: f64,
    /// Compaction and snapshot inputs up to this size are fetched into memory, larger ones into
    /// scratch files on the simulated disk (production: 1 MiB; 0 sends every input through a
    /// scratch file).
    pub fetch_in_memory_bytes_max: u64,
    /// Share of transactions after which the replicator is stopped cleanly (SIGTERM: a final
    /// sync, then the lease is released) and started again later.
    pub graceful_stop_rate: f64,
    pub store: StoreFaults,
    pub partitions: Vec<(i64, i64)>,
}

impl Knobs {
    pub fn draw(rng: &mut ChaCha8Rng, transactions: u32) -> Self {
        let on =
            |rng: &mut ChaCha8Rng, p: f64, rate: f64| if rng.random_bool(p) { rate } else { 0.0 };
        let page_size = [512u32, 1024, 4096][rng.random_range(0..3)];
        let sync_interval_ms = rng.random_range(20..=900);
        let app_autocheckpoint = [0u32, 20, 100, 1000][rng.random_range(0..4)];
        let app_checkpoint_rate = on(rng, 0.6, 0.05);
        let app_reconnect_rate = on(rng, 0.4, 0.03);
        let interleave_rate = on(rng, 0.5, 0.1);
        let write_during_sync_rate = on(rng, 0.4, 0.05);
        let app_cache_pages = [10i64, 2000][rng.random_range(0..2)];
        let engine_crash_rate = on(rng, 0.5, 0.01);
        let power_loss_rate = on(rng, 0.4, 0.004);
        let host_replace_rate = on(rng, 0.3, 0.002);
        let engine_checkpoint_pages = [0u64, 50, 1000][rng.random_range(0..3)];
        let compact_interval_ms = if rng.random_bool(0.7) {
            rng.random_range(500..5_000)
        } else {
            0
        };
        let snapshot_interval_ms = if rng.random_bool(0.6) {
            rng.random_range(3_000..20_000)
        } else {
            0
        };
        let store = StoreFaults {
            transient: on(rng, 0.4, 0.1),
            ambiguous: on(rng, 0.4, 0.05),
            truncated_get: on(rng, 0.3, 0.1),
            latency_max_ms: if rng.random_bool(0.4) { 10 } else { 0 },
            latency_min_ms: 0,
            latency_spike: on(rng, 0.2, 0.005),
            list_lag_ms: if rng.random_bool(0.2) {
                rng.random_range(100..3_000)
            } else {
                0
            },
        };
        let mut partitions = Vec::new();
        if rng.random_bool(0.3) {
            let start = rng.random_range(1_000..20_000);
            partitions.push((start, start + rng.random_range(500..5_000)));
        }
        Self {
            page_size,
            sync_interval_ms,
            transactions,
            app_autocheckpoint,
            app_checkpoint_rate,
            app_reconnect_rate,
            interleave_rate,
            write_during_sync_rate,
            two_connections: false,
            app_cache_pages,
            app_journal_size_limit: -1,
            first_start_ms: 0,
            engine_crash_rate,
            power_loss_rate,
            host_replace_rate,
            // Drawn by `draw_later`.
            zombie_rate: 0.0,
            zombie_wake_ms: 0,
            engine_checkpoint_pages,
            compact_interval_ms,
            snapshot_interval_ms,
            snapshot_retention_ms: 0,
            l0_retention_ms: 0,
            lease_ttl_ms: 0,
            restore_crash_rate: 0.0,
            fetch_in_memory_bytes_max: sluice_core::scratch::FETCH_IN_MEMORY_BYTES_MAX,
            graceful_stop_rate: 0.0,
            store,
            partitions,
        }
    }
}

impl Knobs {
    /// The knobs added after the first generator, drawn from a stream of their own (`rng`, which
    /// the run then keeps using for their events). The main stream, and so the workload and
    /// every older knob of a seed, stays as it was; a seed's run still changes wherever a new
    /// knob is on, which is why regressions are pinned as scenario files and planted bugs.
    pub fn draw_later(&mut self, rng: &mut ChaCha8Rng) {
        if rng.random_bool(0.5) {
            self.zombie_rate = 0.5;
        }
        self.zombie_wake_ms = rng.random_range(0..3_000);
        self.two_connections = rng.random_bool(0.3);
        if rng.random_bool(0.5) {
            self.snapshot_retention_ms = rng.random_range(1_000..15_000);
            self.l0_retention_ms = rng.random_range(200..5_000);
        }
        self.lease_ttl_ms = if rng.random_bool(0.6) {
            rng.random_range(500..4_000)
        } else {
            0
        };
        if rng.random_bool(0.3) {
            self.graceful_stop_rate = 0.004;
        }
    }

    /// The knobs of the restore's file seam, from a stream of their own (`rng`, which the run
    /// then keeps for the restore's crash points), so adding them changed no other seed's run.
    pub fn draw_restore(&mut self, rng: &mut ChaCha8Rng) {
        if rng.random_bool(0.5) {
            self.restore_crash_rate = 0.5;
        }
    }

    /// The scratch files' knob, from a stream of its own (`rng`), so adding it changed no
    /// other draw of a seed.
    pub fn draw_scratch(&mut self, rng: &mut ChaCha8Rng) {
        if rng.random_bool(0.5) {
            self.fetch_in_memory_bytes_max = 0;
        }
    }

    /// These knobs with every randomly firing fault site off (a plan says what happens).
    pub fn calm(&self) -> Self {
        Self {
            app_checkpoint_rate: 0.0,
            app_reconnect_rate: 0.0,
            interleave_rate: 0.0,
            write_during_sync_rate: 0.0,
            engine_crash_rate: 0.0,
            power_loss_rate: 0.0,
            host_replace_rate: 0.0,
            zombie_rate: 0.0,
            restore_crash_rate: 0.0,
            graceful_stop_rate: 0.0,
            store: StoreFaults::default(),
            partitions: Vec::new(),
            ..self.clone()
        }
    }
}

fn no_journal_size_limit() -> i64 {
    -1
}
