//! A small HTTP/1.1 server for probes and metrics: `/healthz` (the process serves),
//! `/readyz` (the PackageSource cache has synced), `/metrics` (Prometheus text). One request
//! per connection, GET/HEAD only, bounded reads: enough for kubelet and Prometheus, and no
//! HTTP framework to carry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::Metrics;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Endpoints {
    pub probes: bool,
    pub metrics: bool,
}

/// Shared state the endpoints report.
#[derive(Debug, Default)]
pub(super) struct Probes {
    ready: AtomicBool,
}

impl Probes {
    pub(super) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

const MAX_REQUEST_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `listener` until the task is dropped or aborted.
pub(super) async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    probes: Arc<Probes>,
    metrics: Arc<Metrics>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a probe/metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let probes = probes.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, endpoints, &probes, &metrics).await {
                tracing::debug!(error = %e, "probe/metrics connection");
            }
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    endpoints: Endpoints,
    probes: &Probes,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST_HEAD {
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(read) => read?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let (status, content_type, body) = respond(&head, endpoints, probes, metrics);
    let is_head = head.starts_with("HEAD ");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    if !is_head {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// (status line, content type, body) for a request head.
fn respond(
    head: &str,
    endpoints: Endpoints,
    probes: &Probes,
    metrics: &Metrics,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let Some(target) = target else {
        return ("400 Bad Request", TEXT, "bad request\n".to_owned());
    };
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            TEXT,
            "only GET and HEAD\n".to_owned(),
        );
    }
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/healthz" | "/livez" if endpoints.probes => ("200 OK", TEXT, "ok\n".to_owned()),
        "/readyz" if endpoints.probes => {
            if probes.is_ready() {
                ("200 OK", TEXT, "ok\n".to_owned())
            } else {
                (
                    "503 Service Unavailable",
                    TEXT,
                    "the PackageSource cache has not synced yet\n".to_owned(),
                )
            }
        }
        "/metrics" if endpoints.metrics => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        _ => ("404 Not Found", TEXT, "not found\n".to_owned()),
    }
}

/// Binds `addr` (`host:port`; port 0 picks a free one).
pub(super) async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_probes_and_metrics() {
        let probes = Arc::new(Probes::default());
        let metrics = Arc::new(Metrics::new());
        let (listener, addr) = bind("127.0.0.1:0").await.unwrap();
        let server = tokio::spawn(serve(
            listener,
            Endpoints {
                probes: true,
                metrics: true,
            },
            probes.clone(),
            metrics,
        ));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        probes.set_ready(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").await.contains("# EOF"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }
}
