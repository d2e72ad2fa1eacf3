//! Probes and metrics over HTTP: `/healthz` (the process serves), `/readyz` (the
//! PackageSource cache has synced), `/metrics` (Prometheus text). GET and HEAD only, served
//! under [`super::http`]'s bounds: enough for kubelet and Prometheus, and nothing a client
//! that reaches the port can use to hold the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpListener;

use super::http::{self, Limits};
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

/// kubelet probes with a 1 s timeout by default and Prometheus scrapes within 10 s: a request
/// that is not in within 5 s, or not answered within 10, is no probe or scrape.
const LIMITS: Limits = Limits {
    connections: 32,
    head: Duration::from_secs(5),
    deadline: Duration::from_secs(10),
};

/// Serves `listener` until the task is dropped or aborted.
pub(super) async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    probes: Arc<Probes>,
    metrics: Arc<Metrics>,
) {
    serve_within(listener, LIMITS, endpoints, probes, metrics).await;
}

async fn serve_within(
    listener: TcpListener,
    limits: Limits,
    endpoints: Endpoints,
    probes: Arc<Probes>,
    metrics: Arc<Metrics>,
) {
    http::serve(listener, limits, "probes/metrics", move |request| {
        let answer = respond(
            request.method(),
            request.uri().path(),
            endpoints,
            &probes,
            &metrics,
        );
        async move { answer }
    })
    .await;
}

/// The answer to `method path` (hyper leaves the body out for HEAD).
fn respond(
    method: &Method,
    path: &str,
    endpoints: Endpoints,
    probes: &Probes,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return http::text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
    }
    match path {
        "/healthz" | "/livez" if endpoints.probes => http::text(StatusCode::OK, "ok"),
        "/readyz" if endpoints.probes => {
            if probes.is_ready() {
                http::text(StatusCode::OK, "ok")
            } else {
                http::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the PackageSource cache has not synced yet",
                )
            }
        }
        "/metrics" if endpoints.metrics => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => http::text(StatusCode::NOT_FOUND, "not found"),
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

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
        let head = {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.contains("# EOF"), "a HEAD answer has no body: {head}");
        server.abort();
    }

    /// A client that sends its request a byte at a time, each well inside any per-read
    /// timeout, is cut off at the head deadline (it could hold a connection for hours when
    /// the timeout was per read).
    #[tokio::test]
    async fn slow_clients_are_cut_off() {
        let limits = Limits {
            connections: 2,
            head: Duration::from_millis(300),
            deadline: Duration::from_millis(600),
        };
        let (listener, addr) = bind("127.0.0.1:0").await.unwrap();
        let server = tokio::spawn(serve_within(
            listener,
            limits,
            Endpoints {
                probes: true,
                metrics: false,
            },
            Arc::new(Probes::default()),
            Arc::new(Metrics::new()),
        ));
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let closed = async {
            for byte in b"GET /healthz HTTP/1.1\r\nX-Padding: "
                .iter()
                .chain(&[b'a'; 4096])
            {
                if slow.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut probe = [0u8; 64];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_millis(1), slow.peek(&mut probe)).await
                {
                    return;
                }
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(5), closed)
                .await
                .is_ok(),
            "a trickled request was still open after {:?}",
            started.elapsed()
        );
        assert!(started.elapsed() >= limits.head);
        server.abort();
    }
}
