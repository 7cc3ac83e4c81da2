//! The Prometheus scrape endpoint: `GET /metrics` returns [`Metrics::encode`] as OpenMetrics
//! text. When started with a [`ConsentApi`] it also serves two call endpoints:
//! `POST /calls/{call_id}/consent` with body `granted`, `declined` or `revoked` (the `api` consent
//! mode, and revocation), and `POST /calls/{call_id}/secure-entry` with body `on` or `off`. Both
//! answer 202 when the recording path took the request, 404 for an unknown call, 400 (with the
//! reason) for a bad body or call id, 405 for another method, 503 when the recording path is not
//! running. Every other request gets 404.
//!
//! HTTP/1.1 only, a small cap on concurrent connections and a header read timeout, because the
//! endpoint may be reachable from more places than the scraper. It serves nothing else (no
//! health or admin routes) and does not build or own the metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::NetError;
use crate::metrics::Metrics;
use crate::recording::api::{ApiError, ConsentApi};
use crate::sip::events::ConsentSignal;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const MAX_CONNECTIONS: usize = 32;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A consent body is one word; anything longer is refused unread.
const MAX_BODY: usize = 64;
/// Call-IDs longer than this are not ones callveil handed out.
const MAX_CALL_ID: usize = 256;

/// A running `/metrics` server.
pub struct MetricsServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 allowed) and starts serving. Must run inside a Tokio runtime.
    pub async fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<MetricsServer, NetError> {
        MetricsServer::start_with_api(addr, metrics, None).await
    }

    /// As [`MetricsServer::start`], also serving the call endpoints (`POST
    /// /calls/{call_id}/consent` and `/secure-entry`) through `api`.
    pub async fn start_with_api(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        api: Option<ConsentApi>,
    ) -> Result<MetricsServer, NetError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NetError::Bind { endpoint: format!("metrics {addr}"), source })?;
        let addr =
            listener.local_addr().map_err(|source| NetError::Bind { endpoint: format!("metrics {addr}"), source })?;
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, metrics, api, rx));
        Ok(MetricsServer { addr, shutdown, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and drops open scrape connections.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    api: Option<ConsentApi>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let metrics = metrics.clone();
        let api = api.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                let api = api.clone();
                async move { Ok::<_, Infallible>(respond(req, &metrics, api.as_ref()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "metrics connection error");
                    }
                }
                _ = shutdown.changed() => {}
            }
            drop(permit);
        });
    }
}

/// The two things a call endpoint can ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallRoute {
    Consent,
    SecureEntry,
}

/// `call_id` and route of a `/calls/{call_id}/consent` or `/calls/{call_id}/secure-entry` path
/// (percent-decoding is not needed: Call-IDs callveil sees are plain tokens; anything else
/// simply matches no call).
fn call_path(path: &str) -> Option<(&str, CallRoute)> {
    let rest = path.strip_prefix("/calls/")?;
    let (id, route) = rest.rsplit_once('/')?;
    let route = match route {
        "consent" => CallRoute::Consent,
        "secure-entry" => CallRoute::SecureEntry,
        _ => return None,
    };
    (!id.is_empty() && !id.contains('/')).then_some((id, route))
}

const TEXT: &str = "text/plain; charset=utf-8";

fn text(status: StatusCode, msg: &str) -> (StatusCode, &'static str, Bytes) {
    (status, TEXT, Bytes::from(format!("{msg}\n")))
}

async fn call_request(req: Request<Incoming>, api: &ConsentApi) -> (StatusCode, &'static str, Bytes) {
    use http_body_util::BodyExt;
    let Some((call_id, route)) = call_path(req.uri().path()).map(|(id, r)| (id.to_string(), r)) else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    if call_id.len() > MAX_CALL_ID {
        return text(StatusCode::BAD_REQUEST, "call id too long");
    }
    let expected = match route {
        CallRoute::Consent => "body must be one of: granted, declined, revoked",
        CallRoute::SecureEntry => "body must be one of: on, off",
    };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::BAD_REQUEST, expected),
    };
    let Ok(word) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, expected);
    };
    let (answer, result) = match route {
        CallRoute::Consent => {
            let Ok(signal) = word.parse::<ConsentSignal>() else {
                return text(StatusCode::BAD_REQUEST, expected);
            };
            (signal.as_str(), api.signal(&call_id, signal).await)
        }
        CallRoute::SecureEntry => {
            let on = match word.trim().to_ascii_lowercase().as_str() {
                "on" => true,
                "off" => false,
                _ => return text(StatusCode::BAD_REQUEST, expected),
            };
            (if on { "on" } else { "off" }, api.secure_entry(&call_id, on).await)
        }
    };
    match result {
        Ok(()) => text(StatusCode::ACCEPTED, answer),
        Err(ApiError::UnknownCall) => text(StatusCode::NOT_FOUND, "no such call"),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn respond(req: Request<Incoming>, metrics: &Metrics, api: Option<&ConsentApi>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if req.method() == Method::GET && req.uri().path() == "/metrics" {
        (StatusCode::OK, CONTENT_TYPE, Bytes::from(metrics.encode()))
    } else if let (Some(api), true) = (api, call_path(req.uri().path()).is_some()) {
        if req.method() == Method::POST {
            call_request(req, api).await
        } else {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST")
        }
    } else {
        (StatusCode::NOT_FOUND, TEXT, Bytes::from_static(b"not found\n"))
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_paths() {
        assert_eq!(call_path("/calls/a84b@h/consent"), Some(("a84b@h", CallRoute::Consent)));
        assert_eq!(call_path("/calls/x-1/secure-entry"), Some(("x-1", CallRoute::SecureEntry)));
        for bad in
            ["/calls//consent", "/calls/a/b/consent", "/calls/a/other", "/calls/a", "/metrics", "/calls/a/consent/"]
        {
            assert_eq!(call_path(bad), None, "{bad}");
        }
    }
}
