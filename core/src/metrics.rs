//! Prometheus metrics on `addr` (`GET /metrics`), including replication lag, which Litestream
//! lacks. A deliberately tiny HTTP responder: one request per connection, bounded read.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::replicate::SharedStatus;

/// The most request bytes read before answering.
const REQUEST_BYTES_MAX: usize = 8192;

pub fn render(statuses: &[SharedStatus], now_ms: i64) -> String {
    let mut out = String::new();
    let metrics: [(&str, &str, &str); 5] = [
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
                "sluice_syncs_total" => s.syncs as f64,
                "sluice_sync_errors_total" => s.sync_errors as f64,
                _ => s.resyncs as f64,
            };
            let db = s.database.display().to_string().replace('"', "\\\"");
            let replica = s.replica.replace('"', "\\\"");
            out.push_str(&format!(
                "{name}{{db=\"{db}\",replica=\"{replica}\"}} {value}\n"
            ));
        }
    }
    out
}

pub async fn serve(listener: tokio::net::TcpListener, statuses: Vec<SharedStatus>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let statuses = statuses.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; REQUEST_BYTES_MAX];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                (
                    "200 OK",
                    render(&statuses, chrono::Utc::now().timestamp_millis()),
                )
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
