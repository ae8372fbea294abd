//! What replicating costs: the replicator's memory, CPU and reads, and its S3 requests by kind,
//! counted by the proxy, for the seed's workload (300 commits paced over half a minute) and
//! then idle; per hour and per month at public S3 prices.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::{TOOLS, mib, wait_first_file};
use crate::Ctx;
use crate::plot;
use crate::proc::{Sample, Sampler, Tool};
use crate::report::{Report, verdict};
use crate::workload;

/// S3 Standard, us-east-1, per 1,000 requests: PUT, COPY, POST, LIST; then GET, HEAD and the
/// rest. DELETE and aborts are free.
const PRICE_WRITE_PER_1000: f64 = 0.005;
const PRICE_READ_PER_1000: f64 = 0.0004;
const HOURS_PER_MONTH: f64 = 730.0;
const ROWS: u64 = 100_000;
const COMMITS: u64 = 300;
/// Both tools compact level 1 every 30 s of the wall clock's epoch (sluice aligns each level's
/// runs to its interval): the settling phase lasts until the boundary after the writes, plus
/// this for the compaction and what follows it (a check of the chain, retention).
const LEVEL1_INTERVAL_S: u64 = 30;
const SETTLE_AFTER_BOUNDARY: Duration = Duration::from_secs(8);
/// Level 2 compacts at every 5 min boundary (level 3 at every hour, one of them): settling
/// also runs past the next one when the idle window would otherwise hold it, so the idle
/// window measures an idle replicator, not the last of the writes' compactions.
const LEVEL2_INTERVAL_S: u64 = 300;

#[derive(Serialize)]
struct Phase {
    seconds: f64,
    requests: BTreeMap<String, u64>,
    requests_per_hour: BTreeMap<String, f64>,
    dollars_per_month: f64,
}

#[derive(Serialize)]
struct Row {
    tool: Tool,
    peak_rss_kib: u64,
    /// The largest sampled `RssAnon`: RSS without the program's mapped code.
    peak_anon_kib: u64,
    steady_rss_kib: u64,
    cpu_s: f64,
    read_bytes: u64,
    writes: Phase,
    /// From the writes' end until the level-1 compaction of them is done.
    settling: Phase,
    idle: Phase,
    #[serde(skip)]
    samples: Vec<Sample>,
}

fn price(kind: &str) -> f64 {
    match kind {
        "PUT" | "UPLOAD_PART" | "CREATE_MULTIPART" | "COMPLETE_MULTIPART" | "DELETE_OBJECTS"
        | "LIST" | "OTHER" => PRICE_WRITE_PER_1000 / 1000.0,
        "GET" | "HEAD" => PRICE_READ_PER_1000 / 1000.0,
        _ => 0.0,
    }
}

fn phase(requests: BTreeMap<String, u64>, seconds: f64) -> Phase {
    let per_hour: BTreeMap<String, f64> = requests
        .iter()
        .map(|(k, v)| (k.clone(), *v as f64 / seconds * 3600.0))
        .collect();
    let dollars_per_month =
        per_hour.iter().map(|(k, v)| v * price(k)).sum::<f64>() * HOURS_PER_MONTH;
    Phase {
        seconds,
        requests,
        requests_per_hour: per_hour,
        dollars_per_month,
    }
}

fn measure(ctx: &Ctx, tool: Tool) -> Result<Row> {
    let dir = ctx.work.join(format!("cost-{}", tool.name()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("app.db");
    let mut conn = workload::open(&db)?;
    conn.execute_batch("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT);")?;
    let link = ctx.s3.link()?;
    let path = format!("{}/cost/{}", ctx.run_id, tool.name());
    let mut replicator =
        ctx.tools
            .replicate(tool, &db, &link.url(&path), &dir.join("replicate.log"))?;
    let sampler = Sampler::start(replicator.pid());
    wait_first_file(ctx, &link, &path, &mut replicator)?;
    let (write_s, idle_s) = if ctx.quick {
        (10.0, 15.0)
    } else {
        (30.0, 120.0)
    };
    // The waits for the first file above made requests of their own: count from here.
    let start_sample = sampler.last();
    link.proxy.reset_requests();
    let started = Instant::now();
    let period = Duration::from_secs_f64(write_s / COMMITS as f64);
    let mut n = 0u32;
    workload::seed_rows(&mut conn, ROWS, COMMITS, || {
        n += 1;
        if let Some(wait) = (started + period * n).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        Ok(())
    })?;
    // One sync interval more, so the last commits' uploads land in the writing phase.
    std::thread::sleep(Duration::from_millis(1500));
    let writes = phase(link.proxy.requests(), started.elapsed().as_secs_f64());
    link.proxy.reset_requests();
    let settle_started = Instant::now();
    std::thread::sleep(settle_for(
        until_next_boundary(LEVEL1_INTERVAL_S),
        until_next_boundary(LEVEL2_INTERVAL_S),
        Duration::from_secs_f64(idle_s),
    ));
    let settling = phase(
        link.proxy.requests(),
        settle_started.elapsed().as_secs_f64(),
    );
    link.proxy.reset_requests();
    let idle_from = sampler.samples().len();
    std::thread::sleep(Duration::from_secs_f64(idle_s));
    let idle = phase(link.proxy.requests(), idle_s);
    let end = sampler.last();
    replicator.stop()?;
    let samples = sampler.finish();
    let mut idle_rss: Vec<u64> = samples[idle_from.min(samples.len())..]
        .iter()
        .map(|s| s.rss_kib)
        .collect();
    idle_rss.sort_unstable();
    Ok(Row {
        tool,
        peak_rss_kib: samples.iter().map(|s| s.hwm_kib).max().unwrap_or(0),
        peak_anon_kib: samples.iter().map(|s| s.anon_kib).max().unwrap_or(0),
        steady_rss_kib: idle_rss.get(idle_rss.len() / 2).copied().unwrap_or(0),
        cpu_s: end.cpu_s - start_sample.cpu_s,
        read_bytes: end.read_bytes.saturating_sub(start_sample.read_bytes),
        writes,
        settling,
        idle,
        samples,
    })
}

/// How long until the wall clock's next multiple of `interval_s` since the epoch.
fn until_next_boundary(interval_s: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let interval = Duration::from_secs(interval_s.max(1));
    let into = Duration::from_nanos((now.as_nanos() % interval.as_nanos()) as u64);
    interval - into
}

/// How long settling lasts, given the time to the next level-1 and level-2 boundaries: past
/// the level-1 boundary, and past the level-2 one too if it would fall in the idle window.
fn settle_for(level1: Duration, level2: Duration, idle: Duration) -> Duration {
    let settled = level1 + SETTLE_AFTER_BOUNDARY;
    if level2 < settled + idle + SETTLE_AFTER_BOUNDARY {
        settled.max(level2 + SETTLE_AFTER_BOUNDARY)
    } else {
        settled
    }
}

/// A phase's requests by kind: per hour, or in all.
fn kinds(p: &Phase, per_hour: bool) -> String {
    if p.requests.is_empty() {
        return "none".into();
    }
    if per_hour {
        p.requests_per_hour
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        p.requests
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let rows: Vec<Row> = TOOLS
        .into_iter()
        .map(|t| measure(ctx, t))
        .collect::<Result<_>>()?;
    report.section("What replicating costs: memory, CPU, reads, S3 requests");
    report.line(format!(
        "The seed's workload ({ROWS} rows in {COMMITS} commits) paced over {:.0} s, each tool \
         at its defaults replicating to S3; then settling, until the compactions of what was \
         written and what follows them are done (requests in all): level 1 at the next \
         {LEVEL1_INTERVAL_S} s boundary of the clock (both tools align it so), and level 2 at \
         the next {LEVEL2_INTERVAL_S} s boundary where the idle window would otherwise hold it \
         ({:.0} s for sluice, {:.0} s for Litestream here); then {:.0} s idle. An idle hour \
         after writes also holds those compactions once, and at the hour the level-3 one. \
         Requests counted by the proxy by kind, per hour, and the month at S3 Standard prices \
         (${PRICE_WRITE_PER_1000} per 1,000 PUT/POST/LIST, ${PRICE_READ_PER_1000} per 1,000 \
         GET/HEAD). One run per tool. Bytes read: what the process asked the kernel for \
         (`rchar`), page-cache hits included.",
        rows[0].writes.seconds,
        rows[0].settling.seconds,
        rows[1].settling.seconds,
        rows[0].idle.seconds
    ));
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.tool.name().to_string(),
                format!("{:.1}", r.peak_rss_kib as f64 / 1024.0),
                format!("{:.1}", r.peak_anon_kib as f64 / 1024.0),
                format!("{:.1}", r.steady_rss_kib as f64 / 1024.0),
                format!("{:.2}", r.cpu_s),
                format!("{:.1}", mib(r.read_bytes)),
                kinds(&r.writes, true),
                format!("{:.2}", r.writes.dollars_per_month),
                kinds(&r.settling, false),
                kinds(&r.idle, true),
                format!("{:.2}", r.idle.dollars_per_month),
            ]
        })
        .collect();
    report.table(
        &[
            "tool",
            "peak RSS MiB",
            "of it anonymous MiB (sampled)",
            "idle RSS MiB",
            "CPU s",
            "read MiB",
            "requests/hour writing",
            "$/month writing",
            "requests settling",
            "requests/hour idle",
            "$/month idle",
        ],
        &table,
    );
    if let [s, l] = &rows[..] {
        let rss = s.peak_rss_kib as f64 / l.peak_rss_kib.max(1) as f64;
        let anon = s.peak_anon_kib as f64 / l.peak_anon_kib.max(1) as f64;
        let cpu = s.cpu_s / l.cpu_s.max(1e-9);
        let idle_reads: u64 = ["LIST", "GET"]
            .iter()
            .filter_map(|k| s.idle.requests.get(*k))
            .sum();
        report.line(format!(
            "Targets: sluice / Litestream peak RSS {rss:.2}: {} (anonymous memory alone \
             {anon:.2}: the rest is the programs' code mapped from their files); CPU {cpu:.2}: \
             {}; LIST and GET requests while idle: {idle_reads}: {}.",
            verdict(rss, 0.25, true),
            verdict(cpu, 0.5, true),
            verdict(idle_reads as f64, 0.0, true)
        ));
    }
    let series: Vec<plot::Series> = rows
        .iter()
        .map(|r| super::rss_series(r.tool, &r.samples))
        .collect();
    report.figure(
        &ctx.out,
        "rss_replicate_seed.svg",
        "Replicator RSS: the seed's workload, then idle",
        "seconds since start",
        "RSS (MiB)",
        &series,
    )?;
    report.put("cost", &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settling_runs_past_a_level_2_boundary_the_idle_window_would_hold() {
        let s = Duration::from_secs;
        let idle = s(120);
        // Level 2 far off: settle past level 1 only.
        assert_eq!(settle_for(s(10), s(250), idle), s(18));
        // Level 2 inside the idle window: settle past it.
        assert_eq!(settle_for(s(10), s(100), idle), s(108));
        // Level 2 on the level-1 boundary itself.
        assert_eq!(settle_for(s(10), s(10), idle), s(18));
    }
}
