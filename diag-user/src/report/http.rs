//! `serve`'s HTTP endpoint: `/metrics` (Prometheus text format) and `/healthz`.
//!
//! hyper's HTTP/1 server runs on a thread and runtime of its own, so a scrape never takes
//! time from counting, and a scrape only encodes what the metrics hold (at most once per
//! [`BODY_REUSE`]: scrapes in between get the same bytes).
//!
//! Any local user can connect, so connections must not be what a scrape waits for. The
//! listener is always accepted from (a full server never leaves Prometheus in the kernel's
//! backlog behind an attacker's connections). At most [`MAX_CONNECTIONS`] are held; past
//! that, the newcomer takes the place of the connection that has waited longest without a
//! request in hand (idle keep-alive, a request cut short, nothing sent), once everything it
//! sent has been read; a fresh connection is never closed before its first request was
//! looked at. Connections are bounded in time too (headers within [`HEADER_TIMEOUT`], which
//! also ends an idle keep-alive; the whole connection within [`CONNECTION_TIMEOUT`] plus
//! [`CLOSE_GRACE`] to finish a response in flight) and in memory (buffers of
//! [`MAX_BUF`]).

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::{SocketAddr, TcpListener, ToSocketAddrs},
    os::fd::AsRawFd,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{watch, Notify},
};

use crate::report::metrics::{Health, Metrics, MetricsError};

/// Connections held at once; a newcomer past it replaces the longest-waiting idle one.
pub const MAX_CONNECTIONS: usize = 256;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection past its time has to finish the response in flight.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A client that has taken no byte of its response for this long may lose its connection
/// to a newcomer when every place is taken: it is not reading.
pub const WRITE_STALL: Duration = Duration::from_secs(5);
/// An encoded `/metrics` body is served again for this long: a flood of scrapes costs one
/// encoding a second, and answers in flight share one body.
pub const BODY_REUSE: Duration = Duration::from_secs(1);
/// Each connection's read and write buffers stay under this (a request's headers are a
/// few hundred bytes; a larger one is refused with 431).
pub const MAX_BUF: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("--listen {addr}: not an address and port ({source}); give e.g. 127.0.0.1:9464 or [::1]:9464")]
    Address {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot start the HTTP server: {0}")]
    Start(#[source] io::Error),
}

/// Binds every `--listen` address now, so a taken port is said before anything starts.
pub fn bind(addrs: &[String]) -> Result<Vec<TcpListener>, HttpError> {
    let mut out = Vec::new();
    for spec in addrs {
        let resolved = spec
            .to_socket_addrs()
            .map_err(|source| HttpError::Address {
                addr: spec.clone(),
                source,
            })?;
        for addr in resolved {
            let l = TcpListener::bind(addr).map_err(|source| HttpError::Bind {
                addr,
                hint: match source.kind() {
                    io::ErrorKind::AddrInUse => {
                        " (another process, maybe another tapwatch serve, has it: stop it or give \
                         another --listen)"
                    }
                    io::ErrorKind::AddrNotAvailable => " (no interface of this host has it)",
                    _ => "",
                },
                source,
            })?;
            // std listens with a backlog of 128; a local user who reconnects a few hundred
            // sockets as fast as they are closed would keep it full, and the kernel then
            // drops a scrape's SYN (resent only after a second). Listening again only
            // raises the backlog, which the kernel caps at net.core.somaxconn.
            // SAFETY: listen(2) on a socket this function owns.
            if unsafe { libc::listen(l.as_raw_fd(), libc::c_int::MAX) } != 0 {
                return Err(HttpError::Start(io::Error::last_os_error()));
            }
            l.set_nonblocking(true).map_err(HttpError::Start)?;
            out.push(l);
        }
    }
    Ok(out)
}

/// The running server; stops when told, or when dropped.
pub struct HttpServer {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
}

impl HttpServer {
    pub fn start(
        listeners: Vec<TcpListener>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, HttpError> {
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<io::Result<Vec<_>>>()
            .map_err(HttpError::Start)?;
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HttpError::Start)?;
        let thread = std::thread::Builder::new()
            .name("tapwatch-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let table = Arc::new(Table::new());
                    let pages = Arc::new(Pages::new(metrics, health));
                    let mut loops = Vec::new();
                    for l in listeners {
                        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                            continue;
                        };
                        loops.push(tokio::spawn(accept_loop(
                            l,
                            table.clone(),
                            pages.clone(),
                            stopped.clone(),
                        )));
                    }
                    for l in loops {
                        let _ = l.await;
                    }
                });
            })
            .map_err(HttpError::Start)?;
        Ok(Self {
            stop,
            thread: Some(thread),
            addrs,
        })
    }

    /// Where it listens (the port the kernel chose for port 0).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, drops open connections and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What one connection is doing, as far as choosing whom to close goes: kept up to date by
/// its socket ([`Watched`]) and its answers ([`Answer`]). Times are milliseconds since the
/// table's start, plus one (0: none).
#[derive(Default)]
struct Activity {
    /// When it last began to wait for a request: accepted, or its last answer handed over.
    waiting_since: AtomicU64,
    /// Everything it sent so far has been read (its last read found nothing more).
    read_dry: AtomicBool,
    /// A request of it is being answered.
    answering: AtomicBool,
    /// Since when a write has been waiting for the client to read.
    write_blocked_since: AtomicU64,
    /// Set to make the connection end at once.
    close: Notify,
}

/// The connections held, shared by the accept loops.
struct Table {
    started: Instant,
    conns: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    /// Something may have become closable (a connection read dry, or ended).
    changed: Notify,
}

/// One connection's state at a glance, for [`victim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snapshot {
    waiting_since: u64,
    read_dry: bool,
    answering: bool,
    write_blocked_since: Option<u64>,
}

/// Which connection a newcomer replaces when every place is taken, if any may go: the one
/// that has waited longest with no request in hand and nothing unread (it has had its
/// chance to ask), else the one whose client has taken nothing of its answer for the
/// longest, at least [`WRITE_STALL`]. A connection with a request being answered to a
/// client that reads, or with bytes not yet looked at, is never chosen.
fn victim<K: Copy>(conns: impl IntoIterator<Item = (K, Snapshot)>, now_ms: u64) -> Option<K> {
    let stall = WRITE_STALL.as_millis() as u64;
    conns
        .into_iter()
        .filter_map(|(k, s)| match s.write_blocked_since {
            Some(t) if now_ms.saturating_sub(t) >= stall => Some(((1, t), k)),
            Some(_) => None,
            None if s.read_dry && !s.answering => Some(((0, s.waiting_since), k)),
            None => None,
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, k)| k)
}

impl Table {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // Nothing panics while holding it; a poisoned map is still a consistent one.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection: at once while there is room, else by closing the
    /// connection [`victim`] chooses, else once one may go. `None` when the server stops.
    async fn admit(
        self: &Arc<Self>,
        stopped: &mut watch::Receiver<bool>,
    ) -> Option<(u64, Arc<Activity>)> {
        loop {
            let mut evicted = false;
            let admitted = {
                let mut conns = self.conns();
                if conns.len() >= MAX_CONNECTIONS {
                    let now = self.now_ms();
                    let load = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|&t| t != 0);
                    let chosen = victim(
                        conns.iter().map(|(id, a)| {
                            (
                                *id,
                                Snapshot {
                                    waiting_since: a.waiting_since.load(Ordering::Relaxed),
                                    read_dry: a.read_dry.load(Ordering::Relaxed),
                                    answering: a.answering.load(Ordering::Relaxed),
                                    write_blocked_since: load(&a.write_blocked_since),
                                },
                            )
                        }),
                        now,
                    );
                    if let Some(gone) = chosen.and_then(|id| conns.remove(&id)) {
                        gone.close.notify_one();
                        evicted = true;
                    }
                }
                if conns.len() < MAX_CONNECTIONS {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let a = Arc::new(Activity::default());
                    a.waiting_since.store(self.now_ms(), Ordering::Relaxed);
                    conns.insert(id, a.clone());
                    Some((id, a))
                } else {
                    None
                }
            };
            if let Some(admitted) = admitted {
                if evicted {
                    // The closed connection's task runs (and its socket closes) before
                    // the next accept: descriptors stay within the limit under churn.
                    tokio::task::yield_now().await;
                }
                return Some(admitted);
            }
            // Every place holds a request being answered, or bytes not yet read: one of
            // them frees up or reads dry soon, and a stalled writer ages into a victim.
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stopped.changed() => return None,
            }
        }
    }

    fn leave(&self, id: u64) {
        self.conns().remove(&id);
        self.changed.notify_one();
    }
}

/// Takes a connection's place out of the table however its task ends.
struct Place {
    table: Arc<Table>,
    id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.table.leave(self.id);
    }
}

/// A connection's socket, telling its [`Activity`] whether the client has said all it had
/// to say and whether it reads what it is sent.
struct Watched {
    stream: tokio::net::TcpStream,
    activity: Arc<Activity>,
    table: Arc<Table>,
}

impl Watched {
    fn wrote<T>(&self, r: &Poll<io::Result<T>>) {
        let blocked = &self.activity.write_blocked_since;
        match r {
            Poll::Pending => {
                let _ = blocked.compare_exchange(
                    0,
                    self.table.now_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => blocked.store(0, Ordering::Relaxed),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        let dry = &self.activity.read_dry;
        match &r {
            Poll::Pending => {
                if !dry.swap(true, Ordering::Relaxed) {
                    self.table.changed.notify_one();
                }
            }
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                dry.store(false, Ordering::Relaxed)
            }
            Poll::Ready(_) => {}
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    // hyper queues a response's body beside its head instead of copying it when the
    // socket takes vectors, as a TCP socket does.
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response's body that marks its connection as answering until hyper is done with it.
struct Answer {
    body: Full<Bytes>,
    activity: Arc<Activity>,
    table: Arc<Table>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.activity
            .waiting_since
            .store(self.table.now_ms(), Ordering::Relaxed);
        self.activity.answering.store(false, Ordering::Relaxed);
    }
}

/// What the server answers with: the metrics (their encoded body kept for
/// [`BODY_REUSE`]) and the run's health.
struct Pages {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    encoded: Mutex<Option<(Instant, Bytes)>>,
}

impl Pages {
    fn new(metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Self {
            metrics,
            health,
            encoded: Mutex::new(None),
        }
    }

    /// The metrics' text, encoded anew at most once per [`BODY_REUSE`].
    fn metrics_body(&self) -> Result<Bytes, MetricsError> {
        let mut cached = self.encoded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, body)) = cached.as_ref() {
            if at.elapsed() < BODY_REUSE {
                return Ok(body.clone());
            }
        }
        let body = Bytes::from(self.metrics.encode()?);
        *cached = Some((Instant::now(), body.clone()));
        Ok(body)
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    table: Arc<Table>,
    pages: Arc<Pages>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        // Accept first, whatever the load: a client left in the backlog is a client that
        // cannot be told from the attacker queued ahead of it.
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: the next connection may do.
                    log::warn!("accepting an HTTP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let Some((id, activity)) = table.admit(&mut stopped).await else {
            return;
        };
        let place = Place {
            table: table.clone(),
            id,
        };
        let pages = pages.clone();
        let mut stop = stopped.clone();
        tokio::spawn(async move {
            let place = place;
            let table = place.table.clone();
            let io = Watched {
                stream,
                activity: activity.clone(),
                table: table.clone(),
            };
            let a = activity.clone();
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BUF)
                .serve_connection(
                    TokioIo::new(io),
                    hyper::service::service_fn(move |req| {
                        let r = respond(&req, &pages);
                        a.answering.store(true, Ordering::Relaxed);
                        let r = r.map(|body| Answer {
                            body,
                            activity: a.clone(),
                            table: table.clone(),
                        });
                        async move { Ok::<_, Infallible>(r) }
                    }),
                );
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                // Chosen to make room: it had nothing in flight.
                _ = activity.close.notified() => return,
                _ = tokio::time::sleep(CONNECTION_TIMEOUT) => {}
                _ = stop.changed() => return,
            }
            // Past its time: the response in flight is finished (a scrape cut halfway
            // would fail), then the connection closes; an idle one closes at once, a
            // client that does not read is dropped after the grace.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = tokio::time::timeout(CLOSE_GRACE, conn) => {}
                _ = activity.close.notified() => {}
            }
            drop(place);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// One request's answer. HEAD gets GET's headers; hyper leaves out the body.
fn respond(req: &Request<Incoming>, pages: &Pages) -> Response<Full<Bytes>> {
    route(req.method(), req.uri().path(), pages)
}

fn route(method: &Method, path: &str, pages: &Pages) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => match pages.health.check() {
            Err(why) if why.stale_metrics() => {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
            }
            _ => match pages.metrics_body() {
                Ok(body) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(Metrics::CONTENT_TYPE),
                    );
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
        },
        "/healthz" => match pages.health.check() {
            Ok(what) => text(StatusCode::OK, format!("{what}\n")),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/" => text(
            StatusCode::OK,
            "tapwatch serve: /metrics (Prometheus), /healthz\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn server() -> (HttpServer, Arc<Health>) {
        let listeners = bind(&["127.0.0.1:0".to_string()]).unwrap();
        let health = Health::new(Duration::from_secs(1));
        let s = HttpServer::start(listeners, Metrics::new().unwrap(), health.clone()).unwrap();
        (s, health)
    }

    #[test]
    fn metrics_health_and_the_rest() {
        let (s, _health) = server();
        let addr = s.addrs()[0];
        let m = get(addr, "/metrics");
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("text/plain; version=0.0.4"), "{m}");
        assert!(m.contains("# TYPE tapwatch_taps gauge"), "{m}");
        let h = get(addr, "/healthz");
        assert!(
            h.starts_with("HTTP/1.1 503"),
            "not ready before a tick: {h}"
        );
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
        s.stop();
    }

    /// Frozen values while frames go uncounted would read as "all quiet": once the run has
    /// failed, a scrape fails too, so Prometheus's `up` turns 0 and TapwatchDown fires.
    #[test]
    fn a_failed_run_fails_the_scrape() {
        let (s, health) = server();
        let addr = s.addrs()[0];
        health.fail("the ring buffer cannot be read".into());
        let m = get(addr, "/metrics");
        assert!(m.starts_with("HTTP/1.1 503"), "{m}");
        assert!(
            m.contains("not counting: the ring buffer cannot be read"),
            "{m}"
        );
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 503"));
        s.stop();
    }

    /// More connections than places, in every shape that costs a client nothing (a
    /// request answered and the connection kept, half a request, not a byte): each scrape
    /// after them is answered at once, by taking the place of one of them.
    #[test]
    fn idle_and_stalled_clients_cannot_hold_the_server() {
        let (s, _health) = server();
        let addr = s.addrs()[0];
        let shapes: [&[u8]; 3] = [
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: st",
            b"",
        ];
        let held: Vec<std::net::TcpStream> = (0..MAX_CONNECTIONS + 60)
            .map(|i| {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(shapes[i % 3]).unwrap();
                c
            })
            .collect();
        for _ in 0..5 {
            let started = Instant::now();
            let m = get(addr, "/metrics");
            assert!(m.starts_with("HTTP/1.1 200"), "{m}");
            let waited = started.elapsed();
            assert!(waited < Duration::from_secs(1), "served after {waited:?}");
        }
        drop(held);
        s.stop();
    }

    fn idle(waiting_since: u64) -> Snapshot {
        Snapshot {
            waiting_since,
            read_dry: true,
            answering: false,
            write_blocked_since: None,
        }
    }

    /// The longest-waiting idle connection goes first; one with bytes not yet read, or an
    /// answer in flight to a client that reads, never; a client that stopped reading only
    /// after WRITE_STALL, and after every idle one.
    #[test]
    fn whom_a_newcomer_replaces() {
        let now = 60_000;
        let stall = WRITE_STALL.as_millis() as u64;
        assert_eq!(
            victim([(1, idle(500)), (2, idle(100)), (3, idle(900))], now),
            Some(2)
        );
        let unread = Snapshot {
            read_dry: false,
            ..idle(1)
        };
        let answering = Snapshot {
            answering: true,
            ..idle(1)
        };
        let slow = Snapshot {
            write_blocked_since: Some(now - stall + 1),
            ..answering
        };
        assert_eq!(victim([(1, unread), (2, answering), (3, slow)], now), None);
        assert_eq!(victim([(1, unread), (2, idle(59_000))], now), Some(2));
        let stalled = Snapshot {
            write_blocked_since: Some(now - stall),
            ..answering
        };
        assert_eq!(victim([(1, stalled), (2, unread)], now), Some(1));
        assert_eq!(victim([(1, stalled), (2, idle(59_999))], now), Some(2));
        assert_eq!(victim(std::iter::empty::<(u8, Snapshot)>(), now), None);
    }

    /// Scrapes close together share one encoding, whatever their number.
    #[test]
    fn one_encoding_serves_scrapes_close_together() {
        let pages = Pages::new(Metrics::new().unwrap(), Health::new(Duration::from_secs(1)));
        let first = pages.metrics_body().unwrap();
        let second = pages.metrics_body().unwrap();
        assert!(first.starts_with(b"# HELP"), "{first:?}");
        assert_eq!(first.as_ptr(), second.as_ptr());
    }

    #[test]
    fn a_taken_port_says_what_to_do() {
        let first = bind(&["127.0.0.1:0".to_string()]).unwrap();
        let addr = first[0].local_addr().unwrap().to_string();
        let err = bind(&[addr]).unwrap_err().to_string();
        assert!(err.contains("another tapwatch serve"), "{err}");
        let err = bind(&["nonsense".to_string()]).unwrap_err().to_string();
        assert!(err.contains("127.0.0.1:9464"), "{err}");
    }
}
