//! The controller's two small HTTP servers — probes and metrics ([`super::health`]), and
//! Receivers' webhooks ([`super::receiver::server`]) — on hyper, under the same bounds. Both
//! face whatever can reach their port: at most [`Limits::connections`] are served at once
//! (more wait in the accept queue rather than cost a task each), one request per connection,
//! its head within [`Limits::head`], and the whole exchange — a body trickled a byte at a time,
//! a reader that never reads the answer — within [`Limits::deadline`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub connections: usize,
    pub head: Duration,
    pub deadline: Duration,
}

/// Serves `listener` with `handler` until the task is dropped; `what` names the server in logs.
pub(super) async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    what: &'static str,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, server = what, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.head)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(limits.deadline, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, server = what, "connection"),
                Err(_) => {
                    tracing::debug!(server = what, deadline = ?limits.deadline, "connection dropped at its deadline");
                }
            }
        });
    }
}

/// A plain-text answer.
pub(super) fn text(status: StatusCode, text: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", text.into()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
