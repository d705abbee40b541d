//! The running simulator ([`SimVma`]): binds the VMA and control listeners, and serves VMA
//! connections the way a real outage looks — the listener really closes for "refused", really
//! holds connections for "blackhole" and really resets them for "reset"; per request it applies
//! the drawn faults ([`crate::faults`]) and hands the rest to the hot path or the routes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::faults::{decide_connection_fault, decide_faults, is_connection_fault};
use crate::replies::{respond, text};
use crate::spec::UnreachableMode;
use crate::state::SimState;
use crate::vma_routes::dispatch;

/// The running simulator: both listeners and their tasks.
pub struct SimVma {
    pub state: Arc<SimState>,
    vma_addr: SocketAddr,
    control_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub control: SocketAddr,
    pub seed: Option<u64>,
    pub journal_capacity: usize,
    /// Answer plain progress polls without hyper while no fault is set (the default; the answers
    /// are the same bytes, at about half the CPU). Off: hyper serves every request.
    pub hot_path: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: "127.0.0.1:0".parse().expect("static"),
            control: "127.0.0.1:0".parse().expect("static"),
            seed: None,
            journal_capacity: crate::journal::DEFAULT_CAPACITY,
            hot_path: true,
        }
    }
}

impl SimVma {
    /// Bind both listeners (port 0 allowed) and start serving.
    pub async fn start(config: SimConfig) -> std::io::Result<SimVma> {
        let seed = config.seed.unwrap_or_else(rand::random);
        let vma_listener = TcpListener::bind(config.listen).await?;
        let vma_addr = vma_listener.local_addr()?;
        let control_listener = TcpListener::bind(config.control).await?;
        let control_addr = control_listener.local_addr()?;
        let (state, up_rx) = SimState::new(seed, vma_addr, config.journal_capacity, config.hot_path);
        let cancel = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(accept_loop(state.clone(), vma_listener, up_rx, cancel.clone()));
        let control = crate::control::router(state.clone());
        let control_cancel = cancel.clone();
        tasks.spawn(async move {
            let _ = axum::serve(control_listener, control)
                .with_graceful_shutdown(async move { control_cancel.cancelled().await })
                .await;
        });
        info!(seed, vma = %vma_addr, control = %control_addr, "sim-vma started (seed {seed})");
        Ok(SimVma { state, vma_addr, control_addr, cancel, tasks })
    }

    pub fn vma_addr(&self) -> SocketAddr {
        self.vma_addr
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    pub fn vma_url(&self) -> String {
        format!("http://{}", self.vma_addr)
    }

    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    pub fn seed(&self) -> u64 {
        self.state.seed
    }

    /// Stop both listeners and drop every connection.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.state.drop_connections();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn bind_again(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.expect("at least one attempt"))
}

async fn accept_loop(
    state: Arc<SimState>,
    first: TcpListener,
    mut up: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut listener = Some(first);
    loop {
        if !*up.borrow_and_update() {
            listener = None;
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = up.changed() => if r.is_err() { return },
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match bind_again(state.vma_addr).await {
                Ok(l) => l,
                Err(e) => {
                    warn!("sim-vma could not re-open its VMA listener on {}: {e}", state.vma_addr);
                    return;
                }
            },
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = up.changed() => {
                    if r.is_err() { return }
                    if !*up.borrow() { break }
                }
                accepted = l.accept() => {
                    if let Ok((sock, _)) = accepted {
                        tokio::spawn(serve_connection(state.clone(), sock));
                    }
                }
            }
        }
        drop(l);
        listener = None;
    }
}

async fn serve_connection(state: Arc<SimState>, sock: TcpStream) {
    let kill = state.connection_token();
    let fault = {
        let mut inner = state.lock();
        let faults = inner.faults.clone();
        decide_connection_fault(&faults, &mut inner.rng)
    };
    match fault {
        Some(UnreachableMode::Blackhole) => {
            state.record("-", "(connection)", None, "fault_blackhole", 0, Instant::now());
            let mut sock = sock;
            let mut sink = [0u8; 4096];
            // Read and discard, never answer, until the fault is cleared or the client gives up.
            loop {
                tokio::select! {
                    _ = kill.cancelled() => return,
                    n = tokio::io::AsyncReadExt::read(&mut sock, &mut sink) => if matches!(n, Ok(0) | Err(_)) { return },
                }
            }
        }
        Some(UnreachableMode::Reset) => {
            state.record("-", "(connection)", None, "fault_reset", 0, Instant::now());
            // Linger 0: close sends RST instead of FIN.
            #[allow(deprecated)]
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(sock);
            return;
        }
        _ => {}
    }
    let _ = sock.set_nodelay(true);
    let io = if state.hot_path {
        let hot = crate::hot::serve(&state, sock);
        tokio::select! {
            handed_over = hot => match handed_over {
                Some(rest) => rest,
                None => return,
            },
            _ = kill.cancelled() => return,
        }
    } else {
        crate::hot::Rewind::whole(sock)
    };
    let io = hyper_util::rt::TokioIo::new(io);
    // Shared by reference count: cloning a CancellationToken per request would take its lock.
    let conn_kill = Arc::new(kill.clone());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let kill = conn_kill.clone();
        async move { Ok::<_, Infallible>(handle(&state, &kill, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::select! {
        _ = conn => {}
        _ = kill.cancelled() => {}
    }
}

/// One VMA request: the global faults first, then the route.
async fn handle(state: &SimState, kill: &CancellationToken, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    // While a connection-level fault is probabilistic, close every connection after one answer so
    // each request is a new connection with its own draw.
    let (decision, close_after) = {
        let mut inner = state.lock();
        let inner = &mut *inner;
        let close_after = matches!(inner.faults.unreachable, Some((mode, _)) if is_connection_fault(mode));
        (decide_faults(&inner.faults, &mut inner.rng), close_after)
    };
    if decision.unreachable == Some(UnreachableMode::HangAfterHeaders) {
        state.record(req.method().to_string(), req.uri().path(), None, "fault_hang_after_headers", 200, started);
        let stream = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{\"job_id\":")) })
            .chain(futures::stream::once(
                kill.clone().cancelled_owned().map(|()| Err(std::io::Error::other("connection dropped"))),
            ));
        return respond(StatusCode::OK, "application/json", Body::from_stream(stream));
    }
    if let Some(latency) = decision.latency {
        tokio::time::sleep(latency).await;
    }
    if decision.garbage {
        state.record(req.method().to_string(), req.uri().path(), None, "fault_garbage", 200, started);
        return respond(StatusCode::OK, "text/html", "<html><body><h1>502 Bad Gateway</h1></body></html>\n");
    }
    if let Some(status) = decision.error_status {
        state.record(req.method().to_string(), req.uri().path(), None, "fault_error_status", status, started);
        return text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "internal server error\n",
        );
    }
    let mut response = dispatch(state, req, started).await;
    if close_after {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
