//! Serving the API to clients that may be slow, idle or hostile: at most `OMA_HTTP_MAX_CONNECTIONS`
//! connections at once (the next one is answered 503 and closed), a request head must arrive
//! within `OMA_HTTP_HEADER_TIMEOUT` (which also ends an idle keep-alive connection), a body within
//! `OMA_HTTP_BODY_TIMEOUT`, and a body announced larger than the limit is refused before it is
//! read. The errors hyper answers by itself (a head that does not parse, a URI or header block
//! too large) get the API's JSON error body too ([`JsonErrorIo`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::errors::ApiError;

/// The largest request body (the create request is a few KiB).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// Accept and serve until `cancel`, then let open requests finish (bounded by the caller).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, cancel: CancellationToken) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refused = 0u64;
    let open = Arc::new(OpenConnections::default());
    loop {
        let (sock, _peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors or the like: wait a little instead of spinning.
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refused == 1 || refused.is_power_of_two() {
                warn!(
                    "⚠️ {refused} connections refused so far: {} are open (OMA_HTTP_MAX_CONNECTIONS)",
                    limits.max_connections
                );
            }
            tokio::spawn(refuse(sock));
            continue;
        };
        let _ = sock.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(JsonErrorIo::new(sock)), service);
        let conn = graceful.watch(conn);
        let open = open.clone();
        open.opened();
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
            open.closed();
        });
    }
    drop(listener);
    graceful.shutdown().await;
    info!("HTTP server stopped");
    Ok(())
}

/// Connections open now and their peak since memory was last given back. After a burst (say
/// thousands of slow clients cut off at once) the allocator keeps the freed buffers in its arenas;
/// when the open connections fall to a quarter of a peak of at least 256, they are given back to
/// the system (`malloc_trim`), so the OMA's RSS returns to near where it was.
#[derive(Default)]
struct OpenConnections {
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl OpenConnections {
    fn opened(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.now.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(now, Relaxed);
    }

    fn closed(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.now.fetch_sub(1, Relaxed) - 1;
        let peak = self.peak.load(Relaxed);
        if peak >= 256 && now <= peak / 4 && self.peak.compare_exchange(peak, now, Relaxed, Relaxed).is_ok() {
            tokio::task::spawn_blocking(give_back_freed_memory);
        }
    }
}

#[allow(unsafe_code)]
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of glibc's own heap; it touches no live block.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The answer to a connection over the limit: 503, JSON, closed.
async fn refuse(mut sock: TcpStream) {
    let body = ApiError::body_text("Too many connections", "the OMA serves a bounded number of connections; retry");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = sock.write_all(head.as_bytes()).await;
        let _ = sock.write_all(body.as_bytes()).await;
        let _ = sock.shutdown().await;
    })
    .await;
}

/// A body announced larger than the limit is refused before a byte of it is read; a body must
/// arrive within the body timeout. The body is read here, whole, so handlers get it at once.
pub async fn bounded_body(
    axum::extract::State(limits): axum::extract::State<Limits>,
    req: Request,
    next: Next,
) -> Response {
    let announced =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        // Answer before reading a byte, then read and drop what the client is still sending (up
        // to a bound, within the body timeout): a client that writes its whole body before it
        // reads would otherwise meet a reset connection instead of the 413.
        let body = req.into_body();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(limits.body_timeout, discard(body, LINGER_BYTES)).await;
        });
        return too_large();
    }
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if announced.unwrap_or(0) == 0 && !chunked {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limits.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "Request body too slow",
            format!(
                "the body did not arrive within {} (OMA_HTTP_BODY_TIMEOUT)",
                humantime::format_duration(limits.body_timeout)
            ),
        )
        .into_response(),
        Ok(Err(e)) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            too_large()
        }
        Ok(Err(e)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "Invalid request body", format!("reading the body failed: {e}"))
                .into_response()
        }
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
    }
}

/// How much of a refused body is read and dropped after the 413 before the connection closes.
const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// Read `body` and drop it, until it ends or `cap` bytes have gone by.
async fn discard(body: axum::body::Body, cap: u64) {
    let mut body = body.into_data_stream();
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
        seen += chunk.len() as u64;
        if seen >= cap {
            break;
        }
    }
}

fn too_large() -> Response {
    let mut r = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request body too large",
        format!("a request body may hold at most {MAX_BODY} bytes"),
    )
    .into_response();
    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

/// A connection whose error answers written by hyper itself (400, 414, 431, with an empty body)
/// are rewritten into the API's JSON error shape. hyper closes the connection after such an
/// answer, so replacing its bytes cannot confuse what follows.
pub struct JsonErrorIo<T> {
    inner: T,
    /// A rewritten answer still to be written.
    pending: Vec<u8>,
    written: usize,
}

impl<T> JsonErrorIo<T> {
    pub fn new(inner: T) -> JsonErrorIo<T> {
        JsonErrorIo { inner, pending: Vec::new(), written: 0 }
    }
}

/// hyper's own error answer (status line, headers, no body), rewritten with a JSON body.
fn rewrite_hyper_error(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let status: u16 = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let (error, details) = match status {
        400 => ("Invalid request", "the request head does not parse as HTTP/1.1"),
        414 => ("URI too long", "the request target is longer than the server accepts"),
        431 => ("Request headers too large", "the request head is larger than the server accepts"),
        _ => return None,
    };
    if !text.to_ascii_lowercase().contains("content-length: 0\r\n") || !text.ends_with("\r\n\r\n") {
        return None;
    }
    let body = ApiError::body_text(error, details);
    let reason = StatusCode::from_u16(status).ok()?.canonical_reason().unwrap_or("");
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncWrite + Unpin> JsonErrorIo<T> {
    /// Write what is pending; Ready once all of it is out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrorIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrorIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.drain(cx))?;
        if let Some(rewritten) = rewrite_hyper_error(data) {
            this.pending = rewritten;
            this.written = 0;
            // Whatever is not out yet goes at the next write, flush or shutdown.
            let _ = this.drain(cx)?;
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_error_answers_get_a_json_body() {
        let head = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 12:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_hyper_error(head).expect("rewritten")).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "URI too long");
        assert!(json["timestamp"].is_string());
        // Answers of the API itself are left alone, bodies and all.
        assert_eq!(rewrite_hyper_error(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"), None);
        assert_eq!(rewrite_hyper_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n{\"error\":1}"), None);
        assert_eq!(rewrite_hyper_error(b"{\"partial\": true}"), None);
    }
}
