//! The processes a benchmark runs and what the kernel says they cost.
//!
//! Two ways to measure a process, both from outside it, so the two tools are measured alike:
//! - [`run_measured`]: a short-lived command (a restore) runs under this binary's hidden
//!   `__exec` mode, which spawns it, waits, and reads `getrusage(RUSAGE_CHILDREN)`: wall, user
//!   and system time and peak RSS of exactly that one process, as `/usr/bin/time` would.
//! - [`Sampler`]: a long-lived process (a replicator) is sampled every [`SAMPLE_INTERVAL`]
//!   from `/proc/PID/{status,stat,io}`: RSS and its high-water mark, CPU seconds, bytes read.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest any single wait in the benchmark may take before it is called a failure.
pub const WAIT_MAX: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(5);

/// The two systems measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Sluice,
    Litestream,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Sluice => "sluice",
            Tool::Litestream => "litestream",
        }
    }

    /// The name as the report and the plots write it (plot colours go by it).
    pub fn label(self) -> &'static str {
        match self {
            Tool::Sluice => "sluice",
            Tool::Litestream => "Litestream",
        }
    }
}

/// Where the two binaries are, and the environment that reaches the S3 server.
#[derive(Clone, Debug)]
pub struct Tools {
    pub sluice: PathBuf,
    pub litestream: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Tools {
    pub fn bin(&self, tool: Tool) -> &Path {
        match tool {
            Tool::Sluice => &self.sluice,
            Tool::Litestream => &self.litestream,
        }
    }

    /// A command of `tool` that sees neither a user's configuration nor a CA bundle (Litestream
    /// refuses to start with `AWS_CA_BUNDLE` pointing at a file it cannot use).
    pub fn command(&self, tool: Tool) -> Command {
        let mut cmd = Command::new(self.bin(tool));
        cmd.env_remove("SLUICE_CONFIG")
            .env_remove("LITESTREAM_CONFIG")
            .env_remove("AWS_CA_BUNDLE")
            // `SLUICE_BENCH_LOG=info` puts sluice's decisions in the kept logs (OUT/logs/).
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// `replicate DB URL` with the tool's defaults.
    pub fn replicate(&self, tool: Tool, db: &Path, url: &str, log: &Path) -> Result<Running> {
        let mut cmd = self.command(tool);
        cmd.arg("replicate").arg(db).arg(url);
        Running::start(cmd, log)
    }

    /// `replicate -config FILE`.
    pub fn replicate_config(&self, tool: Tool, config: &Path, log: &Path) -> Result<Running> {
        let mut cmd = self.command(tool);
        cmd.arg("replicate").arg("-config").arg(config);
        Running::start(cmd, log)
    }

    /// `restore -o OUT URL`, measured, with the restore's samples.
    pub fn restore(
        &self,
        tool: Tool,
        url: &str,
        out: &Path,
        log: &Path,
    ) -> Result<(Measured, Vec<Sample>)> {
        let mut cmd = self.command(tool);
        cmd.arg("restore").arg("-o").arg(out).arg(url);
        let (m, samples) = run_measured(&cmd, log)?;
        if m.code != 0 {
            bail!(
                "{} restore of {url} exited {}; log {}:\n{}",
                tool.name(),
                m.code,
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        Ok((m, samples))
    }
}

/// What the kernel accounted for one finished process.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Measured {
    pub code: i32,
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_kib: u64,
}

/// The hidden `__exec OUT -- PROGRAM ARGS...` mode: runs the program with this process's
/// stdio and environment, then writes its [`Measured`] to OUT as JSON.
pub fn exec_main(args: &[String]) -> Result<()> {
    let [out, sep, program, rest @ ..] = args else {
        bail!("usage: sluice-bench __exec OUT -- PROGRAM [ARG...]");
    };
    if sep != "--" {
        bail!("usage: sluice-bench __exec OUT -- PROGRAM [ARG...]");
    }
    let started = Instant::now();
    let status = Command::new(program)
        .args(rest)
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    let wall_s = started.elapsed().as_secs_f64();
    // This process has had exactly one child, so the children's usage is that child's.
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let m = Measured {
        code: status.code().unwrap_or(-1),
        wall_s,
        user_s: secs(usage.user_time()),
        sys_s: secs(usage.system_time()),
        // Linux reports ru_maxrss in KiB.
        max_rss_kib: u64::try_from(usage.max_rss()).unwrap_or(0),
    };
    std::fs::write(out, serde_json::to_vec(&m)?).with_context(|| format!("cannot write {out}"))?;
    Ok(())
}

/// Runs `cmd` to completion under `__exec`, its output appended to `log`; samples the
/// program while it runs (for RSS over time).
pub fn run_measured(cmd: &Command, log: &Path) -> Result<(Measured, Vec<Sample>)> {
    let out = tempfile::NamedTempFile::new()?;
    let mut wrapper = Command::new(std::env::current_exe()?);
    wrapper
        .arg("__exec")
        .arg(out.path())
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapper.env(k, v),
            None => wrapper.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapper.current_dir(dir);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    let mut child = wrapper
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()?;
    let sampler = only_child(child.id()).map(Sampler::start);
    let status = child.wait()?;
    let samples = sampler.map(Sampler::finish).unwrap_or_default();
    if !status.success() {
        bail!("the measuring wrapper failed ({status}) for {cmd:?}");
    }
    Ok((
        serde_json::from_slice(&std::fs::read(out.path())?)?,
        samples,
    ))
}

/// One look at a running process.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// The part of `rss_kib` that is the process's own memory (`RssAnon`): the rest is files
    /// mapped (the program's code and libraries, shared and reclaimable).
    pub anon_kib: u64,
    pub cpu_s: f64,
    /// Bytes the process asked `read` and friends for (`rchar`: page-cache hits included,
    /// which is what rereading a database costs a host whose cache holds it).
    pub read_bytes: u64,
}

/// Samples a process until it exits or the sampler is stopped.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let ticks = clock_ticks();
                while !stop.load(Ordering::Relaxed) {
                    let Some(s) = look(pid, started, ticks) else {
                        break;
                    };
                    lock(&samples).push(s);
                    std::thread::sleep(SAMPLE_INTERVAL);
                }
            })
        };
        Sampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).clone()
    }

    /// The process's peak RSS (VmHWM) so far.
    pub fn peak_hwm_kib(&self) -> u64 {
        lock(&self.samples)
            .iter()
            .map(|s| s.hwm_kib)
            .max()
            .unwrap_or(0)
    }

    /// The newest sample, or an empty one.
    pub fn last(&self) -> Sample {
        lock(&self.samples).last().copied().unwrap_or_default()
    }

    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples()
    }
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

fn look(pid: u32, started: Instant, ticks: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    // A zombie has no memory lines: the process is gone.
    let rss_kib = kib("VmRSS:")?;
    let hwm_kib = kib("VmHWM:").unwrap_or(rss_kib);
    let anon_kib = kib("RssAnon:").unwrap_or(rss_kib);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) close with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of stat; here 0-based after the name: 11 and 12.
    let cpu_s = (tick(11)? + tick(12)?) / ticks;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let read_bytes = io
        .lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some(Sample {
        t_s: started.elapsed().as_secs_f64(),
        rss_kib,
        hwm_kib,
        anon_kib,
        cpu_s,
        read_bytes,
    })
}

/// The one child of `pid` (the program a `__exec` wrapper runs), once it has started.
pub fn only_child(pid: u32) -> Option<u32> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        if let Some(c) = text.split_whitespace().next().and_then(|c| c.parse().ok()) {
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A long-running process whose output goes to a log file. Dropping it kills the process.
pub struct Running {
    pub child: Child,
    log: PathBuf,
}

impl Running {
    pub fn start(mut cmd: Command, log: &Path) -> Result<Running> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create the log {}", log.display()))?;
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Running {
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `done` until it holds; fails with the log if the process exits first or
    /// [`WAIT_MAX`] passes.
    pub fn wait_until(&mut self, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
        let started = Instant::now();
        while !done()? {
            if let Some(status) = self.child.try_wait()? {
                bail!("exited ({status}) before {what}; log:\n{}", self.log());
            }
            if started.elapsed() > WAIT_MAX {
                bail!(
                    "gave up after {WAIT_MAX:?} waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit (SIGKILL after [`WAIT_MAX`]).
    pub fn stop(mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while self.child.try_wait()?.is_none() {
            if started.elapsed() > WAIT_MAX {
                bail!(
                    "did not exit within {WAIT_MAX:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Bytes one process reads from some files over a window, counted by `strace` attached to
/// every thread of it: the results of its `read` calls on descriptors that name those paths.
/// `rchar` counts sockets and the tool's own spool and cache files too; this is what the
/// process read from the database and its WAL, whatever the tool. Tracing slows the traced
/// calls; it is attached only for the window it measures.
pub struct FileReads {
    strace: Child,
    dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
    started: Instant,
}

/// The read calls counted (the `-y` descriptor paths say which file each one read).
const READ_CALLS: &str = "trace=read,pread64,readv,preadv,preadv2";

impl FileReads {
    /// Attaches to `pid` and returns once `strace` says it is attached to every thread.
    pub fn attach(pid: u32, paths: &[PathBuf]) -> Result<FileReads> {
        use std::io::BufRead;
        let dir = tempfile::tempdir()?;
        let mut strace = Command::new("strace")
            .args([
                "-f",
                "-ff",
                "-y",
                "-s",
                "0",
                "-e",
                READ_CALLS,
                "-e",
                "signal=none",
            ])
            .arg("-o")
            .arg(dir.path().join("t"))
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context(
                "cannot run strace (it counts the bytes a replicator reads from the database)",
            )?;
        let stderr = strace.stderr.take().context("strace has no stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        // "strace: Process N attached" (one line a thread, or "with N threads" at once).
        match lines.next() {
            Some(Ok(line)) if line.contains("attached") => {}
            other => {
                let _ = strace.kill();
                bail!("strace did not attach to {pid}: {other:?}");
            }
        }
        // The rest (attach and detach lines) is drained so strace never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        let paths = paths
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        Ok(FileReads {
            strace,
            dir,
            paths,
            started: Instant::now(),
        })
    }

    /// Detaches and returns the bytes read from the paths and the window's seconds.
    pub fn finish(mut self) -> Result<(u64, f64)> {
        let seconds = self.started.elapsed().as_secs_f64();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.strace.id())?),
            nix::sys::signal::Signal::SIGINT,
        )?;
        self.strace.wait()?;
        let mut total = 0;
        for entry in std::fs::read_dir(self.dir.path())? {
            let text = std::fs::read_to_string(entry?.path())?;
            total += text
                .lines()
                .filter_map(|l| read_of(l, &self.paths))
                .sum::<u64>();
        }
        Ok((total, seconds))
    }
}

/// The bytes one `strace -y` line says a read of one of `paths` returned, e.g.
/// `pread64(7</tmp/a.db-wal>, ""..., 4096, 8192) = 4096`.
fn read_of(line: &str, paths: &[PathBuf]) -> Option<u64> {
    let (_, rest) = line.split_once('<')?;
    let (path, _) = rest.split_once('>')?;
    if !paths.iter().any(|p| p.as_os_str() == path) {
        return None;
    }
    line.rsplit_once(") = ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_line_counts_only_reads_of_the_paths() {
        let paths = [PathBuf::from("/tmp/a.db"), PathBuf::from("/tmp/a.db-wal")];
        let line = |s: &str| read_of(s, &paths);
        assert_eq!(
            line(r#"pread64(7</tmp/a.db-wal>, ""..., 4096, 8192) = 4096"#),
            Some(4096)
        );
        assert_eq!(line(r#"read(3</tmp/a.db>, ""..., 100) = 32"#), Some(32));
        assert_eq!(line(r#"read(9<socket:[123]>, ""..., 100) = 50"#), None);
        assert_eq!(line(r#"read(4</tmp/a.db-shm>, ""..., 100) = 50"#), None);
        assert_eq!(
            line(r#"read(3</tmp/a.db>, 0x7f, 100) = -1 EAGAIN (Resource temporarily unavailable)"#),
            None
        );
    }
}
