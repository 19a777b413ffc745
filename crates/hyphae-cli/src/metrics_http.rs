//! `--metrics ADDR`: serves `host.metrics_text()` (OpenMetrics text, which Prometheus scrapes) at
//! `GET /metrics` over HTTP/1.1, with hyper (the HTTP implementation under most of Rust's HTTP stack:
//! request parsing and its limits are not ours to write). Bounded: at most `MAX_CONNS` scrapers at once (beyond: the connection is closed at once),
//! 10 s to send the request head, 64 KiB of head.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const MAX_CONNS: usize = 16;

/// Binds `addr` and serves the host's metrics until the host closes; returns the bound address.
pub async fn serve(host: hyphae::Host, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    tokio::spawn(async move {
        loop {
            let Ok((sock, from)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%from, "metrics: too many scrapers; closing");
                continue;
            };
            let host = host.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let host = host.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&host, &req)) }
                });
                let r = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
                if let Err(e) = r {
                    tracing::debug!(%from, error = %e, "metrics connection ended");
                }
                drop(permit);
            });
        }
    });
    Ok(local)
}

fn respond(host: &hyphae::Host, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", host.metrics_text()),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found: metrics are at /metrics\n".to_string()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".to_string()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
    r
}
