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
    convert::Infallible,
    io,
    net::{SocketAddr, TcpListener, ToSocketAddrs},
    os::fd::AsRawFd,
    sync::{atomic::Ordering, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

mod conns;

use self::conns::{Answer, Place, Table, Watched};
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
mod tests;
