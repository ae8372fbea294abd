//! Real-process chaos: the system under test (`sluice replicate`, or the real Litestream) and
//! one or more writers run as real processes on a real disk; a seeded schedule SIGKILLs and restarts them
//! and ends each cycle with a host loss (both killed, the host's files deleted), then the SUT's
//! own `restore` rebuilds the database exactly as a replacement host would, and the checks run:
//!
//! - the restore passes `integrity_check` and equals the state after some commit `k`, row for
//!   row (every commit's content is a function of the seed, [`workload::expected_state`]);
//! - no phantom state: `k` is at most one past the last commit the writers logged, per writer
//!   (a commit can return just before the kill and the log line not be written);
//! - the application is not blocked: no writer process waits more than
//!   [`Scenario::stall_ms_max`] between two commits;
//! - the RPO: no commit that returned more than [`Scenario::rpo_ms`] plus
//!   [`Scenario::upload_allowance_ms`] before the host loss is lost, once the SUT has run
//!   [`Scenario::settle_ms`] since its last start and the last network fault. Both tools sync
//!   once a second by default, so a commit made just after a sync waits one interval and then
//!   its upload;
//! - fencing: a second replicator started on the replica from another host is refused.
//!
//! The replica is a directory or a prefix on a real S3 server behind `faultnet`'s proxy
//! (partitions, stalls, 503s, dropped answers, a slow store).
//!
//! The next cycle's writer carries on from the restored database (the sidecar flow). What a
//! replay reproduces: the schedule (which process is killed when, for how long, checkpoint
//! modes, the rows). What it cannot: thread and I/O timing, so where in a sync a kill lands.

pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The system under test.
#[derive(Clone, Debug)]
pub enum Sut {
    Sluice(PathBuf),
    Litestream(PathBuf),
}

impl Sut {
    pub fn name(&self) -> &'static str {
        match self {
            Sut::Sluice(_) => "sluice",
            Sut::Litestream(_) => "litestream",
        }
    }

    fn bin(&self) -> &Path {
        match self {
            Sut::Sluice(p) | Sut::Litestream(p) => p,
        }
    }

    fn command(&self, target: &Target) -> Command {
        let mut cmd = Command::new(self.bin());
        // Both read these; the run must not pick up a user's configuration or CA bundle.
        cmd.env_remove("SLUICE_CONFIG")
            .env_remove("LITESTREAM_CONFIG")
            .env_remove("AWS_CA_BUNDLE")
            .envs(target.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// `replicate DB URL`: the same command line for both tools.
    fn replicate(&self, db: &Path, target: &Target, log: &Path) -> std::io::Result<Child> {
        let out = std::fs::File::create(log)?;
        self.command(target)
            .arg("replicate")
            .arg(db)
            .arg(&target.url)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
    }

    /// `restore -if-db-not-exists -o DB URL`: the replacement host's first step.
    fn restore(&self, db: &Path, target: &Target) -> Result<(), String> {
        let out = self
            .command(target)
            .args(["restore", "-if-db-not-exists", "-o"])
            .arg(db)
            .arg(&target.url)
            .output()
            .map_err(|e| format!("cannot run {} restore: {e}", self.name()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} restore exited {}: {}",
                self.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// A chaos scenario file (YAML); every key is optional, unknown keys are errors.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scenario {
    pub description: String,
    /// Cycles, each ending in a host loss and a restore.
    pub cycles: u32,
    /// Faults phase of a cycle.
    pub cycle_ms: u64,
    pub commits_per_second: u32,
    /// Chance per commit of an application checkpoint (mode drawn from all four).
    pub checkpoint_rate: f64,
    /// Chance per schedule step (every 100–600 ms) of a SIGKILL of the SUT...
    pub sut_kill_rate: f64,
    /// ...and of a writer.
    pub writer_kill_rate: f64,
    /// Writer processes committing at once (`commits-per-second` between them), 1 to 8.
    pub writers: u32,
    /// Each writer opens the database for each commit and closes it after: with the SUT down,
    /// the last connection to close checkpoints the WAL and deletes it.
    pub connection_per_commit: bool,
    /// How long a killed SUT stays down, at most.
    pub down_ms_max: u64,
    /// Where the replica lives: `dir` (a directory on this disk), `s3` (the S3 server
    /// `SLUICE_S3_ENDPOINT` names) or `moto` (moto at `SLUICE_MOTO_ENDPOINT`), each S3 server
    /// reached through a fault proxy.
    pub store: StoreKind,
    /// Chance per schedule step of a network fault between the SUT and an `s3` store: a
    /// partition, a stall, 503 answers, dropped answers (ambiguous writes) or a slow store
    /// (150 ms per chunk each way), drawn alike...
    pub network_fault_rate: f64,
    /// ...lasting up to this long.
    pub network_fault_ms_max: u64,
    /// Chance per schedule step that a second host, with a consistent copy of the database,
    /// starts replicating to the same replica for 0.5–2 s: fencing must refuse it.
    pub second_replicator_rate: f64,
    /// Chance per schedule step that a directory replica's filesystem (a tmpfs of
    /// `replica-fs-mib`, mounted by the runner) fills up for up to `disk-full-ms-max`.
    pub disk_full_rate: f64,
    pub disk_full_ms_max: u64,
    pub replica_fs_mib: u64,
    /// The SUT runs this long after its last start before a host loss.
    pub settle_ms: u64,
    /// The recovery point objective checked at each host loss (the sync interval)...
    pub rpo_ms: u64,
    /// ...plus this for the upload that ends it (the simulator's `POST_HEAL_SLACK_MS`).
    pub upload_allowance_ms: u64,
    /// The longest one writer process may wait between two commits: an application blocked
    /// on the replicator (a RESTART or TRUNCATE checkpoint waiting for its read lock) beyond
    /// this is a violation. Default: one sync interval plus the upload allowance.
    pub stall_ms_max: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            description: String::new(),
            cycles: 3,
            cycle_ms: 4000,
            commits_per_second: 100,
            checkpoint_rate: 0.01,
            sut_kill_rate: 0.2,
            writer_kill_rate: 0.1,
            writers: 1,
            connection_per_commit: false,
            down_ms_max: 1500,
            store: StoreKind::Dir,
            network_fault_rate: 0.0,
            network_fault_ms_max: 3000,
            second_replicator_rate: 0.0,
            disk_full_rate: 0.0,
            disk_full_ms_max: 2000,
            replica_fs_mib: 64,
            settle_ms: 2000,
            rpo_ms: 1000,
            upload_allowance_ms: 300,
            stall_ms_max: 1300,
        }
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read chaos scenario {}: {e}", path.display()))?;
        let s: Scenario = serde_norway::from_str(&text)
            .map_err(|e| format!("chaos scenario {}: {e}", path.display()))?;
        s.check()
            .map_err(|e| format!("chaos scenario {}: {e}", path.display()))?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        if self.network_fault_rate > 0.0 && self.store == StoreKind::Dir {
            return Err("network-fault-rate: network faults need store: s3 or moto".into());
        }
        if self.disk_full_rate > 0.0 && self.store != StoreKind::Dir {
            return Err("disk-full-rate: a full replica disk needs store: dir".into());
        }
        for (name, rate) in [
            ("network-fault-rate", self.network_fault_rate),
            ("second-replicator-rate", self.second_replicator_rate),
            ("disk-full-rate", self.disk_full_rate),
            ("checkpoint-rate", self.checkpoint_rate),
            ("sut-kill-rate", self.sut_kill_rate),
            ("writer-kill-rate", self.writer_kill_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name}: {rate} is not a probability (0 to 1)"));
            }
        }
        if self.cycles == 0 {
            return Err("cycles: must be at least 1".into());
        }
        if self.commits_per_second == 0 {
            return Err("commits-per-second: must be at least 1".into());
        }
        if !(1..=8).contains(&self.writers) {
            return Err(format!("writers: {} is not 1 to 8", self.writers));
        }
        if self.rpo_ms == 0 || self.settle_ms < self.rpo_ms {
            return Err(format!(
                "settle-ms ({}) must be at least rpo-ms ({}), which must be positive",
                self.settle_ms, self.rpo_ms
            ));
        }
        Ok(())
    }
}

/// Where a chaos run's replica lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    #[default]
    Dir,
    /// The S3 server `SLUICE_S3_ENDPOINT` names (s3s-fs in CI: SigV4 checked, data on disk).
    S3,
    /// moto's S3 server at `SLUICE_MOTO_ENDPOINT`: conditional writes (`If-None-Match`,
    /// `If-Match`) are atomic there, so two replicators racing for the lease meet the
    /// server's own arbitration, not a check-then-write.
    Moto,
}

/// The replica as both tools are given it: a URL, the environment that reaches it, and the
/// fault proxy in front of an S3 server.
pub struct Target {
    url: String,
    env: Vec<(String, String)>,
    proxy: Option<faultnet::Proxy>,
}

fn env_var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("store: s3 needs {name} (with SLUICE_S3_ENDPOINT, SLUICE_S3_BUCKET, SLUICE_S3_ACCESS_KEY and SLUICE_S3_SECRET_KEY: ci/test.sh sets them)")
    })
}

/// The bucket chaos runs use on moto, which keeps buckets in memory.
const MOTO_BUCKET: &str = "sluice-chaos";

/// `PUT /bucket` on moto, which checks no signature (an existing bucket answers 200 or 409).
fn create_moto_bucket(addr: std::net::SocketAddr, bucket: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let fail =
        |e: std::io::Error| format!("store: moto: cannot create bucket {bucket} at {addr}: {e}");
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(fail)?;
    match reply.split_whitespace().nth(1) {
        Some("200" | "409") => Ok(()),
        _ => Err(format!(
            "store: moto: creating bucket {bucket} at {addr} was answered {:?}",
            reply.lines().next().unwrap_or("")
        )),
    }
}

/// `http://IP:PORT` as a socket address, or an error naming the variable.
fn endpoint_addr(name: &str, endpoint: &str) -> Result<std::net::SocketAddr, String> {
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("{name} {endpoint:?} is not http://IP:PORT: {e}"))
}

impl Target {
    /// The replica for the run in `root`: a directory beside it, or a fresh prefix on the S3
    /// server behind a new proxy.
    fn new(kind: StoreKind, root: &Path) -> Result<Self, String> {
        match kind {
            StoreKind::Dir => Ok(Self {
                url: format!("file://{}", root.join("replica").display()),
                env: Vec::new(),
                proxy: None,
            }),
            StoreKind::S3 | StoreKind::Moto => {
                let (upstream, bucket, key, secret) = if kind == StoreKind::S3 {
                    (
                        endpoint_addr("SLUICE_S3_ENDPOINT", &env_var("SLUICE_S3_ENDPOINT")?)?,
                        env_var("SLUICE_S3_BUCKET")?,
                        env_var("SLUICE_S3_ACCESS_KEY")?,
                        env_var("SLUICE_S3_SECRET_KEY")?,
                    )
                } else {
                    let endpoint = std::env::var("SLUICE_MOTO_ENDPOINT").map_err(|_| {
                        "store: moto needs SLUICE_MOTO_ENDPOINT (ci/test.sh sets it)".to_string()
                    })?;
                    let addr = endpoint_addr("SLUICE_MOTO_ENDPOINT", &endpoint)?;
                    create_moto_bucket(addr, MOTO_BUCKET)?;
                    // moto checks no signature; any key pair will do.
                    (
                        addr,
                        MOTO_BUCKET.into(),
                        "moto-key".into(),
                        "moto-secret".into(),
                    )
                };
                let proxy = faultnet::Proxy::start(upstream)
                    .map_err(|e| format!("cannot start the fault proxy: {e}"))?;
                let run = root
                    .file_name()
                    .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
                Ok(Self {
                    // The endpoint in the host, as both tools take it.
                    url: format!("s3://{bucket}.localhost:{}/chaos/{run}", proxy.port),
                    env: [
                        ("AWS_ACCESS_KEY_ID", &key),
                        ("AWS_SECRET_ACCESS_KEY", &secret),
                        ("LITESTREAM_ACCESS_KEY_ID", &key),
                        ("LITESTREAM_SECRET_ACCESS_KEY", &secret),
                    ]
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .into(),
                    proxy: Some(proxy),
                })
            }
        }
    }
}

/// One cycle's figures and verdicts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cycle {
    pub commits_logged: u64,
    pub restored_commit: u64,
    pub lost_commits: u64,
    /// Age at the host loss of the oldest lost commit.
    pub oldest_lost_ms: Option<u64>,
    pub sut_kills: u32,
    pub writer_kills: u32,
    pub network_faults: u32,
    /// Second replicators started on the replica, and how many of them were refused.
    pub second_replicators: u32,
    pub second_replicators_refused: u32,
    /// Times the replica's filesystem was filled up.
    pub disk_fulls: u32,
    pub restore_ms: u64,
    /// The longest wait between two commits of one writer process.
    pub longest_stall_ms: u64,
    pub violations: Vec<String>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub sut: String,
    pub seed: u64,
    pub scenario: Option<String>,
    pub cycles: Vec<Cycle>,
    /// Where the run's files are (kept when it failed).
    pub dir: PathBuf,
    /// Faults the run could not inject here, with the reason.
    pub skipped: Vec<String>,
}

impl Report {
    pub fn violations(&self) -> impl Iterator<Item = String> + '_ {
        self.cycles
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.violations.iter().map(move |v| format!("cycle {i}: {v}")))
    }

    pub fn passed(&self) -> bool {
        self.violations().next().is_none()
    }

    pub fn replay_line(&self) -> String {
        let scenario = self
            .scenario
            .as_ref()
            .map(|s| format!(" --scenario {s}"))
            .unwrap_or_default();
        format!(
            "cargo run --release -p sluice-sim -- chaos --sut {} --seed {}{scenario}",
            self.sut, self.seed
        )
    }

    pub fn summary(&self) -> String {
        let commits: u64 = self.cycles.iter().map(|c| c.commits_logged).sum();
        let lost: u64 = self.cycles.iter().map(|c| c.lost_commits).sum();
        let worst = self.cycles.iter().filter_map(|c| c.oldest_lost_ms).max();
        let kills: u32 = self
            .cycles
            .iter()
            .map(|c| c.sut_kills + c.writer_kills)
            .sum();
        format!(
            "chaos {} seed {}: {} cycles, {commits} commits, {kills} kills, {} host losses restored, {lost} commits lost (oldest {}), {}",
            self.sut,
            self.seed,
            self.cycles.len(),
            self.cycles.len(),
            worst.map_or("none".into(), |ms| format!("{ms} ms old")),
            if self.passed() {
                "all claims held"
            } else {
                "VIOLATED"
            }
        )
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How to start writer `index`: this executable's hidden `chaos-writer` command, at its share
/// of the scenario's rate.
fn spawn_writer(
    seed: u64,
    s: &Scenario,
    index: u32,
    db: &Path,
    log: &Path,
) -> std::io::Result<Child> {
    let rate = (s.commits_per_second / s.writers).max(1);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("chaos-writer")
        .arg("--db")
        .arg(db)
        .arg("--log")
        .arg(log)
        .args(["--seed", &seed.to_string()])
        .args(["--commits-per-second", &rate.to_string()])
        .args(["--checkpoint-rate", &s.checkpoint_rate.to_string()])
        .args(["--writer", &index.to_string()]);
    if s.connection_per_commit {
        cmd.arg("--connection-per-commit");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).spawn()
}

/// A small tmpfs the runner mounts (as root) for a replica directory, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, mib: u64) -> Result<Self, String> {
        std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs on {} (needs root): {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Writes a file until the filesystem is full; returns it (deleting it frees the space).
    fn fill(&self) -> std::io::Result<PathBuf> {
        use std::io::Write;
        let filler = self.path.join(".chaos-filler");
        let mut f = std::fs::File::create(&filler)?;
        let chunk = vec![0u8; 1 << 20];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return Ok(filler),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Starts a second host's replicator on the replica: a consistent copy of the database
/// (`VACUUM INTO`) at another path, replicated to the same target for `ran_ms`. Whether it
/// was refused (it exited with a failure by then).
fn second_replicator(
    sut: &Sut,
    db: &Path,
    target: &Target,
    root: &Path,
    cycle: u32,
    n: u32,
    ran_ms: u64,
) -> Result<bool, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let host = root.join(format!("second-{cycle}-{n}"));
    std::fs::create_dir_all(&host).map_err(|e| io("create the second host", e))?;
    let copy = host.join("app.db");
    let conn = rusqlite::Connection::open(db).map_err(|e| format!("open {}: {e}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| format!("{}: {e}", db.display()))?;
    conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])
        .map_err(|e| format!("copy {} to {}: {e}", db.display(), copy.display()))?;
    drop(conn);
    let mut second = sut
        .replicate(&copy, target, &root.join(format!("second-{cycle}-{n}.log")))
        .map_err(|e| io("start the second replicator", e))?;
    std::thread::sleep(Duration::from_millis(ran_ms));
    let refused = matches!(second.try_wait(), Ok(Some(status)) if !status.success());
    kill(&mut second);
    std::fs::remove_dir_all(&host).map_err(|e| io("delete the second host", e))?;
    Ok(refused)
}

/// SIGKILL, then reap.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The longest the runner waits for the writer's first commit.
const FIRST_COMMIT_WAIT_MAX: Duration = Duration::from_secs(30);

/// Runs `s` against `sut` from `seed` in a new directory under `parent`.
/// The run's directory is kept when it failed, or always with `keep`.
pub fn run(
    sut: &Sut,
    seed: u64,
    s: &Scenario,
    scenario_path: Option<&str>,
    parent: &Path,
    keep: bool,
) -> Result<Report, String> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("chaos-{}-{seed}-", sut.name()))
        .tempdir_in(parent)
        .map_err(|e| format!("cannot create a run directory in {}: {e}", parent.display()))?;
    let root = dir.path().to_path_buf();
    let host = root.join("host");
    let db = host.join("app.db");
    let target = Target::new(s.store, &root)?;
    // Dropped before `dir`: unmounted before the run's directory is removed.
    let mut skipped = Vec::new();
    let replica_fs = if s.disk_full_rate > 0.0 {
        match Tmpfs::mount(&root.join("replica"), s.replica_fs_mib) {
            Ok(fs) => Some(fs),
            Err(e) => {
                skipped.push(format!("disk full: {e}"));
                None
            }
        }
    } else {
        None
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cycles = Vec::new();
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    for n in 0..s.cycles {
        std::fs::create_dir_all(&host).map_err(|e| io("create the host directory", e))?;
        let log = root.join(format!("commits-{n}.log"));
        let mut c = Cycle::default();
        // The first writer creates the table; the others start once it has committed.
        let mut writers =
            vec![spawn_writer(seed, s, 0, &db, &log).map_err(|e| io("start the writer", e))?];
        // The SUT starts on a database that exists (Litestream does not wait for one).
        let waited = Instant::now();
        while workload::read_log(&log)
            .map_err(|e| io("read the commit log", e))?
            .is_empty()
        {
            if waited.elapsed() > FIRST_COMMIT_WAIT_MAX {
                writers.iter_mut().for_each(kill);
                return Err(format!(
                    "the writer made no commit in {FIRST_COMMIT_WAIT_MAX:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for i in 1..s.writers {
            writers.push(spawn_writer(seed, s, i, &db, &log).map_err(|e| io("start a writer", e))?);
        }
        let mut starts = 0u32;
        let start_sut = |starts: &mut u32| {
            *starts += 1;
            sut.replicate(&db, &target, &root.join(format!("sut-{n}-{starts}.log")))
                .map_err(|e| io("start the SUT", e))
        };
        let mut replicator = start_sut(&mut starts)?;
        // Since when the SUT has run with the store reachable.
        let mut quiet_since = Instant::now();
        let end = Instant::now() + Duration::from_millis(s.cycle_ms);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(rng.random_range(100..600)));
            if rng.random_bool(s.sut_kill_rate) {
                kill(&mut replicator);
                c.sut_kills += 1;
                std::thread::sleep(Duration::from_millis(rng.random_range(0..=s.down_ms_max)));
                replicator = start_sut(&mut starts)?;
                quiet_since = Instant::now();
            }
            if let Some(fs) = &replica_fs
                && rng.random_bool(s.disk_full_rate)
            {
                let filler = fs
                    .fill()
                    .map_err(|e| io("fill the replica's filesystem", e))?;
                c.disk_fulls += 1;
                std::thread::sleep(Duration::from_millis(
                    rng.random_range(100..=s.disk_full_ms_max.max(100)),
                ));
                std::fs::remove_file(&filler)
                    .map_err(|e| io("free the replica's filesystem", e))?;
                quiet_since = Instant::now();
            }
            if rng.random_bool(s.second_replicator_rate) {
                let ran_ms = rng.random_range(500..2000);
                let refused =
                    second_replicator(sut, &db, &target, &root, n, c.second_replicators, ran_ms)?;
                c.second_replicators += 1;
                if refused {
                    c.second_replicators_refused += 1;
                } else {
                    c.violations.push(format!(
                        "fencing: a second replicator on another host ran against the replica for {ran_ms} ms without being refused"
                    ));
                }
            }
            if let Some(proxy) = &target.proxy
                && rng.random_bool(s.network_fault_rate)
            {
                use faultnet::Mode;
                let mode = [
                    Mode::Reset,
                    Mode::Stall,
                    Mode::Http503,
                    Mode::DropResponses,
                    Mode::Slow,
                ][rng.random_range(0..5)];
                proxy.set(mode);
                c.network_faults += 1;
                std::thread::sleep(Duration::from_millis(
                    rng.random_range(100..=s.network_fault_ms_max.max(100)),
                ));
                proxy.set(Mode::Pass);
                quiet_since = Instant::now();
            }
            if rng.random_bool(s.writer_kill_rate) {
                let i = rng.random_range(0..writers.len());
                kill(&mut writers[i]);
                c.writer_kills += 1;
                std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
                writers[i] = spawn_writer(seed, s, i as u32, &db, &log)
                    .map_err(|e| io("restart a writer", e))?;
            }
        }
        // The claim covers a SUT that has run `settle_ms` since its last start and the last
        // network fault.
        if let Some(left) = Duration::from_millis(s.settle_ms).checked_sub(quiet_since.elapsed()) {
            std::thread::sleep(left);
        }
        // The host is lost: both processes at once, then every file on it.
        let loss_ms = now_ms();
        let alive: Vec<u32> = writers.iter().map(Child::id).collect();
        writers.iter_mut().for_each(kill);
        kill(&mut replicator);
        let logged = workload::read_log(&log).map_err(|e| io("read the commit log", e))?;
        std::fs::remove_dir_all(&host).map_err(|e| io("delete the host's files", e))?;
        std::fs::create_dir_all(&host).map_err(|e| io("create the host directory", e))?;
        let restore_started = Instant::now();
        let restored = sut
            .restore(&db, &target)
            .and_then(|()| workload::read_restored(&db));
        c.restore_ms = u64::try_from(restore_started.elapsed().as_millis()).unwrap_or(u64::MAX);
        c.commits_logged = logged.len() as u64;
        let last_logged = logged.iter().map(|l| l.seq).max().unwrap_or(0);
        c.longest_stall_ms = workload::longest_stall_ms(&logged, loss_ms, &alive);
        if c.longest_stall_ms > s.stall_ms_max {
            c.violations.push(format!(
                "the writer waited {} ms between two commits (limit {} ms): the application was blocked",
                c.longest_stall_ms, s.stall_ms_max
            ));
        }
        // The next cycle carries on from a restored state that is a committed one; without
        // one there is nothing to carry on from (a new database would be a second history on
        // the replica).
        let mut carry_on = false;
        match restored {
            Err(e) => c
                .violations
                .push(format!("no restorable state after the host loss: {e}")),
            Ok(rows) => {
                let k = rows.keys().next_back().copied().unwrap_or(0);
                c.restored_commit = k;
                carry_on = true;
                if rows != workload::expected_state(seed, k) {
                    c.violations.push(format!(
                        "the restored database holds rows up to {k} but is not the state after commit {k}"
                    ));
                    carry_on = false;
                }
                // Each writer may have committed once more without logging it.
                if k > last_logged + u64::from(s.writers) {
                    c.violations.push(format!(
                        "restored commit {k}, but the writers' last logged commit was {last_logged} ({} writers)",
                        s.writers
                    ));
                    carry_on = false;
                }
                let lost: Vec<_> = logged.iter().filter(|l| l.seq > k).collect();
                c.lost_commits = lost.len() as u64;
                c.oldest_lost_ms = lost.iter().map(|l| loss_ms.saturating_sub(l.ms)).max();
                if let Some(&&workload::Logged { seq, ms: t, .. }) =
                    lost.iter().min_by_key(|l| l.ms)
                    && loss_ms.saturating_sub(t) > s.rpo_ms + s.upload_allowance_ms
                {
                    c.violations.push(format!(
                        "RPO: commit {seq}, returned {} ms before the host loss, was lost (restored to commit {k}; objective {} ms plus {} ms for the upload)",
                        loss_ms.saturating_sub(t),
                        s.rpo_ms,
                        s.upload_allowance_ms
                    ));
                }
            }
        }
        cycles.push(c);
        if !carry_on {
            break;
        }
    }
    let report = Report {
        sut: sut.name().into(),
        seed,
        scenario: scenario_path.map(str::to_string),
        cycles,
        dir: root,
        skipped,
    };
    drop(replica_fs);
    if keep || !report.passed() {
        // Kept for the post-mortem: the SUT's logs, the commit logs (and the replica, unless
        // it lived on the runner's tmpfs).
        let _ = dir.keep();
    }
    Ok(report)
}
