//! Prometheus metrics on `addr` (`GET /metrics`), including replication lag, which Litestream
//! lacks. A deliberately tiny HTTP responder: one request per connection, bounded read.
//!
//! Rendered by hand at each scrape from the jobs' status snapshots. Weighed against the client
//! crates: `prometheus-client` 0.24 writes label values as given (no escaping of `\`, `"` or
//! newlines, the bug this module had), and `metrics-exporter-prometheus` records pushed values,
//! where these are read at scrape time; neither would remove the one rule that matters here,
//! [`escape_label`].

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::replicate::SharedStatus;

/// The most request bytes read before answering.
const REQUEST_BYTES_MAX: usize = 8192;

pub fn render(statuses: &[SharedStatus], now_ms: i64) -> String {
    let mut out = String::new();
    let metrics: [(&str, &str, &str); 8] = [
        (
            "sluice_job_up",
            "gauge",
            "1 while the job replicates; 0 once a permanent error stopped it (see the log).",
        ),
        (
            "sluice_replica_restorable",
            "gauge",
            "0 when the job found, at its start, that the replica cannot be restored to its newest state (a gap; see the log and `sluice verify`).",
        ),
        (
            "sluice_replication_lag_seconds",
            "gauge",
            "Age of the oldest change not yet in the replica.",
        ),
        (
            "sluice_replicated_txid",
            "gauge",
            "Newest TXID in the replica.",
        ),
        ("sluice_syncs_total", "counter", "Successful syncs."),
        ("sluice_sync_errors_total", "counter", "Failed syncs."),
        (
            "sluice_page_checksums_bytes",
            "gauge",
            "Memory of the per-page checksum table (8 bytes a page), the part that grows with the database.",
        ),
        (
            "sluice_resyncs_total",
            "counter",
            "Syncs that compared the whole database because WAL continuity was lost.",
        ),
    ];
    for (name, kind, help) in metrics {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for s in statuses {
            let s = s
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let value = match name {
                "sluice_replication_lag_seconds" => s.lag_ms(now_ms) as f64 / 1000.0,
                "sluice_replicated_txid" => s.replicated_txid as f64,
                "sluice_job_up" => f64::from(u8::from(s.stopped.is_none())),
                "sluice_replica_restorable" => f64::from(u8::from(s.replica_break.is_none())),
                "sluice_syncs_total" => s.syncs as f64,
                "sluice_sync_errors_total" => s.sync_errors as f64,
                "sluice_page_checksums_bytes" => s.page_checksums_bytes as f64,
                _ => s.resyncs as f64,
            };
            let (db, replica) = labels(&s);
            out.push_str(&format!(
                "{name}{{db=\"{db}\",replica=\"{replica}\"}} {value}\n"
            ));
        }
    }
    out.push_str("# HELP sluice_store_requests_total Object-store requests by operation.\n# TYPE sluice_store_requests_total counter\n");
    out.push_str("# HELP sluice_store_errors_total Failed object-store requests by operation.\n# TYPE sluice_store_errors_total counter\n");
    for s in statuses {
        let s = s
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let (db, replica) = labels(&s);
        for (op, (requests, errors)) in crate::counting::OPS.iter().zip(s.requests.snapshot()) {
            out.push_str(&format!("sluice_store_requests_total{{db=\"{db}\",replica=\"{replica}\",op=\"{op}\"}} {requests}\n"));
            out.push_str(&format!("sluice_store_errors_total{{db=\"{db}\",replica=\"{replica}\",op=\"{op}\"}} {errors}\n"));
        }
    }
    out
}

/// The `db` and `replica` label values of a job, escaped.
fn labels(s: &crate::replicate::JobStatus) -> (String, String) {
    (
        escape_label(&s.database.display().to_string()),
        escape_label(&s.replica),
    )
}

/// A label value in the text exposition format: `\`, `"` and line feeds escaped (a path may
/// hold any of them; one unescaped makes the whole scrape unparsable).
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The jobs' statuses, shared with the daemon, which adds jobs as watched directories grow.
pub type Statuses = std::sync::Arc<std::sync::Mutex<Vec<SharedStatus>>>;

/// The replication jobs' metrics, as [`serve`] renders them at each scrape.
pub fn jobs(statuses: Statuses) -> Render {
    std::sync::Arc::new(move |now_ms| {
        let now = statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        render(&now, now_ms)
    })
}

/// Renders the metrics text at a scrape, given the wall-clock time in milliseconds.
pub type Render = std::sync::Arc<dyn Fn(i64) -> String + Send + Sync>;

/// A follower's metrics (`restore -f -addr`).
pub fn follower(status: crate::follow::SharedFollowStatus) -> Render {
    std::sync::Arc::new(move |now_ms| {
        let s = status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        render_follow(&s, now_ms)
    })
}

pub fn render_follow(s: &crate::follow::FollowStatus, now_ms: i64) -> String {
    let labels = format!(
        "db=\"{}\",replica=\"{}\"",
        escape_label(&s.output.display().to_string()),
        escape_label(&s.replica)
    );
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, values: &[(String, f64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (extra, v) in values {
            out.push_str(&format!("{name}{{{labels}{extra}}} {v}\n"));
        }
    };
    let one = |v: f64| [(String::new(), v)];
    metric(
        "sluice_follow_txid",
        "gauge",
        "TXID the follower's output is at.",
        &one(s.txid as f64),
    );
    metric(
        "sluice_follow_staleness_seconds",
        "gauge",
        "Time since a poll last found the output as current as the replica (-1 before the first).",
        &one(s
            .current_at_ms
            .map_or(-1.0, |t| (now_ms - t).max(0) as f64 / 1000.0)),
    );
    metric(
        "sluice_follow_files_applied_total",
        "counter",
        "LTX files applied to the output.",
        &one(s.files_applied as f64),
    );
    let reseeds: Vec<(String, f64)> = crate::follow::Reseed::LABELS
        .iter()
        .zip(s.reseeds)
        .map(|(reason, n)| (format!(",reason=\"{reason}\""), n as f64))
        .collect();
    metric(
        "sluice_follow_reseeds_total",
        "counter",
        "Times the output was seeded again from the newest snapshot: gap (retention removed files it needed), lineage (the replica is behind it), checks (a file did not match it).",
        &reseeds,
    );
    metric(
        "sluice_follow_poll_errors_total",
        "counter",
        "Polls that failed (see the log).",
        &one(s.poll_errors as f64),
    );
    let requests: Vec<(String, f64)> = crate::counting::OPS
        .iter()
        .zip(s.requests.snapshot())
        .map(|(op, (n, _))| (format!(",op=\"{op}\""), n as f64))
        .collect();
    metric(
        "sluice_store_requests_total",
        "counter",
        "Object-store requests by operation.",
        &requests,
    );
    out
}

/// Listens on `addr` (`host:port`; `:port` is loopback's, as Litestream takes it).
pub async fn listen(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    let full = match addr.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => addr.to_string(),
    };
    tokio::net::TcpListener::bind(&full)
        .await
        .with_context(|| format!("cannot listen on addr {addr}"))
}

/// Answers `GET /metrics` on `listener` with `render`'s text, until dropped.
pub async fn serve(listener: tokio::net::TcpListener, render: Render) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; REQUEST_BYTES_MAX];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                ("200 OK", render(chrono::Utc::now().timestamp_millis()))
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::counting::{CountingStore, RequestCounts};
    use crate::replicate::JobStatus;
    use crate::store::{MemStore, ObjectStore, PutOptions};

    #[test]
    fn label_values_escape_backslashes_quotes_and_newlines() {
        assert_eq!(escape_label("/a/b.db"), "/a/b.db");
        assert_eq!(
            escape_label("C:\\data\\\"x\"\nnext"),
            "C:\\\\data\\\\\\\"x\\\"\\nnext"
        );
        let status = JobStatus {
            database: "/data/we\"ird\\name\n.db".into(),
            replica: "file:///b".into(),
            ..JobStatus::default()
        };
        let text = render(&[Arc::new(std::sync::Mutex::new(status))], 0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("sluice_")
                    && line.contains("db=\"/data/we\\\"ird\\\\name\\n.db\""),
                "{line:?}"
            );
        }
    }

    #[test]
    fn a_followers_metrics_name_each_reseed_reason_and_its_staleness() {
        let status = crate::follow::FollowStatus {
            output: "/r/copy\".db".into(),
            replica: "s3://b/p".into(),
            txid: 42,
            files_applied: 7,
            reseeds: [2, 1, 0],
            poll_errors: 3,
            current_at_ms: Some(10_000),
            ..Default::default()
        };
        let text = render_follow(&status, 12_500);
        let labels = "db=\"/r/copy\\\".db\",replica=\"s3://b/p\"";
        for sample in [
            format!("sluice_follow_txid{{{labels}}} 42"),
            format!("sluice_follow_staleness_seconds{{{labels}}} 2.5"),
            format!("sluice_follow_files_applied_total{{{labels}}} 7"),
            format!("sluice_follow_reseeds_total{{{labels},reason=\"gap\"}} 2"),
            format!("sluice_follow_reseeds_total{{{labels},reason=\"lineage\"}} 1"),
            format!("sluice_follow_reseeds_total{{{labels},reason=\"checks\"}} 0"),
            format!("sluice_follow_poll_errors_total{{{labels}}} 3"),
            format!("sluice_store_requests_total{{{labels},op=\"list\"}} 0"),
        ] {
            assert!(
                text.lines().any(|l| l == sample),
                "no {sample:?} in\n{text}"
            );
        }
        let before_first = crate::follow::FollowStatus::default();
        assert!(
            render_follow(&before_first, 1)
                .contains("sluice_follow_staleness_seconds{db=\"\",replica=\"\"} -1\n")
        );
    }

    #[tokio::test]
    async fn metrics_show_lag_and_requests_per_operation() {
        let requests = Arc::new(RequestCounts::default());
        let store = CountingStore::new(Arc::new(MemStore::new()), requests.clone());
        store
            .put("a", vec![1], PutOptions::default())
            .await
            .expect("put");
        store
            .put("b", vec![2], PutOptions::default())
            .await
            .expect("put");
        let _ = store.get_range("missing", 0, 1).await;
        let status = JobStatus {
            database: "/d.db".into(),
            replica: "mem://".into(),
            pending_since_ms: Some(1_000),
            requests,
            ..JobStatus::default()
        };
        let stopped = JobStatus {
            database: "/e.db".into(),
            replica: "mem://".into(),
            stopped: Some("renew-lease: taken over".into()),
            ..JobStatus::default()
        };
        let text = render(
            &[
                Arc::new(std::sync::Mutex::new(status)),
                Arc::new(std::sync::Mutex::new(stopped)),
            ],
            3_500,
        );
        assert!(
            text.contains("sluice_replication_lag_seconds{db=\"/d.db\",replica=\"mem://\"} 2.5"),
            "{text}"
        );
        assert!(
            text.contains("sluice_job_up{db=\"/d.db\",replica=\"mem://\"} 1")
                && text.contains("sluice_job_up{db=\"/e.db\",replica=\"mem://\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_store_requests_total{db=\"/d.db\",replica=\"mem://\",op=\"put\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_store_errors_total{db=\"/d.db\",replica=\"mem://\",op=\"get\"} 1"
            ),
            "{text}"
        );
    }
}
