//! The VMA listener's hot path: a keep-alive connection's plain `GET /api/v1/progress/{id}`,
//! answered without hyper while no fault is set (one read and one write per poll; hyper's own
//! work per request was a third of sim-vma's CPU under load, see docs/PERFORMANCE.md).
//!
//! It takes only requests it fully understands: HTTP/1.1 `GET` of a progress path, no body and
//! none of the headers that change how a connection or a body is handled. Anything else — another
//! route or method, `Content-Length`, `Transfer-Encoding`, `Connection`, `Expect`, `Upgrade`,
//! HTTP/1.0, a head that does not parse or does not fit [`READ_BUFFER`], any fault configured —
//! hands the connection to hyper for the rest of its life, the bytes read so far first. The
//! answers come from the same functions as hyper's path and are written byte for byte as hyper
//! writes them (`tests/wire.rs` compares the two paths over every kind of reply).

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::replies::FixedResponse;
use crate::state::SimState;
use crate::vma_routes::Route;

/// hyper's initial read buffer: a request head larger than this goes to hyper.
const READ_BUFFER: usize = 8 * 1024;
/// More headers than this go to hyper (which allows 100).
const MAX_HEADERS: usize = 32;

/// Serve `sock` on the hot path until it closes (`None`) or meets a request that hyper must
/// answer: then the socket with the bytes it has read and not answered, from that request on.
pub(crate) async fn serve(state: &SimState, mut sock: TcpStream) -> Option<Rewind> {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut filled = 0;
    let mut out = Vec::with_capacity(2048);
    let mut date = HttpDate::default();
    // The connection's client (its User-Agent), kept while it sends the same one.
    let mut client: Option<std::sync::Arc<str>> = None;
    loop {
        let mut start = 0;
        while let Some((len, target, agent)) = hot_request(&buf[start..filled]) {
            let started = Instant::now();
            let now = Utc::now();
            if client.as_deref() != agent {
                client = agent.map(std::sync::Arc::from);
            }
            let Some(plain) = answer(state, target, client.clone(), now, started).await else { break };
            start += len;
            state.hot_answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            out.clear();
            write_http1(&plain, date.at(now), &mut out);
            sock.write_all(&out).await.ok()?;
        }
        let rest = &buf[start..filled];
        // Unanswered bytes that are more than a partial head, or a head too large to read here:
        // a request for hyper.
        if !rest.is_empty() && (head_complete_or_bad(rest) || rest.len() == buf.len()) {
            return Some(Rewind { prefix: Bytes::copy_from_slice(rest), sock });
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        match sock.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => filled += n,
        }
    }
}

/// The answer to one hot request, or `None` for one hyper must answer: a route other than
/// progress, or any fault set (the fault plan draws per request, and only hyper's path draws).
async fn answer(
    state: &SimState,
    target: &str,
    client: Option<std::sync::Arc<str>>,
    now: DateTime<Utc>,
    started: Instant,
) -> Option<FixedResponse> {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let Some(Route::Progress(id)) = Route::of(path) else {
        return None;
    };
    let begun = {
        let mut inner = state.lock();
        if !inner.faults.is_none() {
            return None;
        }
        inner.begin_poll(&id, now)
    };
    Some(state.complete_poll(begun, path, client, started).await)
}

/// The length, request target and `User-Agent` of a complete hot request at the start of `bytes`;
/// `None` for a partial head or anything the hot path leaves to hyper.
fn hot_request(bytes: &[u8]) -> Option<(usize, &str, Option<&str>)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = request.parse(bytes).ok()? else { return None };
    if request.method != Some("GET") || request.version != Some(1) {
        return None;
    }
    let target = request.path?;
    if !target.starts_with('/') || !target.bytes().all(plain_target_byte) {
        return None;
    }
    let leaves_to_hyper = |name: &str| {
        ["content-length", "transfer-encoding", "connection", "expect", "upgrade", "te"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
    };
    if request.headers.iter().any(|h| leaves_to_hyper(h.name)) {
        return None;
    }
    let agent = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("user-agent"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    Some((len, target, agent))
}

/// Bytes of an origin-form target that every URI parser reads alike (RFC 3986 unreserved,
/// sub-delims, `:`, `@`, `/`, `?` and `%`); a target with any other byte goes to hyper.
fn plain_target_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\''
        | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@' | b'/' | b'?' | b'%')
}

/// Whether `bytes` hold more than a partial head: a complete one, or one that can never parse.
fn head_complete_or_bad(bytes: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    !matches!(httparse::Request::new(&mut headers).parse(bytes), Ok(httparse::Status::Partial))
}

/// The response as hyper's HTTP/1.1 encoder writes it: status line (hyper's `<none>` for a code
/// without a reason phrase), the answer's headers in order, `content-length`, `date`, body.
fn write_http1(plain: &FixedResponse, date: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(plain.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(plain.status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in plain.headers.pairs() {
        for part in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    // Formatted into `out` itself: no allocation per poll.
    write!(out, "content-length: {}\r\ndate: ", plain.body.len()).expect("writing to a Vec");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&plain.body);
}

/// The `date` header's text, formatted once a second (as hyper caches it).
#[derive(Default)]
struct HttpDate {
    second: i64,
    text: String,
}

impl HttpDate {
    fn at(&mut self, now: DateTime<Utc>) -> &str {
        if self.text.is_empty() || now.timestamp() != self.second {
            self.second = now.timestamp();
            self.text = httpdate::fmt_http_date(SystemTime::from(now));
        }
        &self.text
    }
}

/// A connection handed to hyper: the bytes the hot path read but did not answer are read first.
pub(crate) struct Rewind {
    prefix: Bytes,
    sock: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.sock).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().sock).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().sock).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.sock.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().sock).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().sock).poll_shutdown(cx)
    }
}

impl Rewind {
    /// A connection hyper serves from its first byte.
    pub(crate) fn whole(sock: TcpStream) -> Rewind {
        Rewind { prefix: Bytes::new(), sock }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_progress_gets_go_the_hot_way() {
        let hot = |head: &str| hot_request(head.as_bytes()).map(|(len, target, _)| (len, target.to_string()));
        let get = "GET /api/v1/progress/job-1 HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n";
        assert_eq!(hot(get), Some((get.len(), "/api/v1/progress/job-1".into())));
        // A pipelined second request is not part of the first.
        assert_eq!(hot(&format!("{get}GET /x")).map(|(len, _)| len), Some(get.len()));
        let with_agent = "GET /api/v1/progress/j HTTP/1.1\r\nUser-Agent: oma/0.1.0 (host:8082)\r\n\r\n";
        assert_eq!(hot_request(with_agent.as_bytes()).and_then(|(_, _, agent)| agent), Some("oma/0.1.0 (host:8082)"));
        assert_eq!(
            hot("GET /api/v1/progress/a%20b?x=1 HTTP/1.1\r\n\r\n").map(|(_, t)| t),
            Some("/api/v1/progress/a%20b?x=1".into())
        );
        for left in [
            "GET /api/v1/progress/job-1 HTTP/1.1\r\nHost: x\r\n",
            "GET /api/v1/progress/job-1 HTTP/1.0\r\n\r\n",
            "HEAD /api/v1/progress/job-1 HTTP/1.1\r\n\r\n",
            "POST /api/v1/progress/job-1/update HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            "GET /api/v1/progress/job-1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            "GET /api/v1/progress/job-1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /api/v1/progress/job-1 HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /api/v1/progress/job-1 HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /api/v1/progress/job-1 HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "GET http://x/api/v1/progress/job-1 HTTP/1.1\r\n\r\n",
            "GET /api/v1/progress/{job} HTTP/1.1\r\n\r\n",
            "GET /api/v1/progress/job-1 HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert_eq!(hot(left), None, "{left:?}");
        }
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(hot(&format!("GET /api/v1/progress/j HTTP/1.1\r\n{many}\r\n")), None);
    }

    #[test]
    fn a_partial_head_waits_and_a_bad_one_goes_to_hyper() {
        assert!(!head_complete_or_bad(b"GET /api/v1/progress/j HTTP/1.1\r\nHo"));
        assert!(head_complete_or_bad(b"GET /api/v1/progress/j HTTP/1.1\r\n\r\n"));
        assert!(head_complete_or_bad(b"\x01\x02 garbage\r\n"));
    }

    #[test]
    fn the_date_is_formatted_once_a_second() {
        let mut date = HttpDate::default();
        let t = DateTime::parse_from_rfc3339("2026-12-01T18:45:34.100Z").unwrap().with_timezone(&Utc);
        assert_eq!(date.at(t), "Tue, 01 Dec 2026 18:45:34 GMT");
        assert_eq!(date.at(t + chrono::Duration::milliseconds(800)), "Tue, 01 Dec 2026 18:45:34 GMT");
        assert_eq!(date.at(t + chrono::Duration::milliseconds(900)), "Tue, 01 Dec 2026 18:45:35 GMT");
    }
}
