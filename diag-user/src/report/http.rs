//! `serve`'s HTTP endpoint: `/metrics` (Prometheus text format) and `/healthz`.
//!
//! hyper's HTTP/1 server runs on a thread and runtime of its own, so a scrape never takes
//! time from counting, and a scrape only encodes what the metrics hold. Connections are
//! bounded in number ([`MAX_CONNECTIONS`]; more wait in the kernel's backlog) and in time
//! (headers within [`HEADER_TIMEOUT`], the whole connection within
//! [`CONNECTION_TIMEOUT`] plus [`CLOSE_GRACE`] to finish a response in flight), so a slow
//! or hostile client cannot pile them up.

use std::{
    convert::Infallible,
    io,
    net::{SocketAddr, TcpListener, ToSocketAddrs},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};

use crate::report::metrics::{Health, Metrics};

pub const MAX_CONNECTIONS: usize = 64;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection past its time has to finish the response in flight.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

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
                    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
                    let mut loops = Vec::new();
                    for l in listeners {
                        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                            continue;
                        };
                        loops.push(tokio::spawn(accept_loop(
                            l,
                            permits.clone(),
                            metrics.clone(),
                            health.clone(),
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

async fn accept_loop(
    listener: tokio::net::TcpListener,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        // A permit first: past the limit, clients wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped.changed() => return,
        };
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
        let (m, h) = (metrics.clone(), health.clone());
        let mut stop = stopped.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(move |req| {
                        let (m, h) = (m.clone(), h.clone());
                        async move { Ok::<_, Infallible>(respond(&req, &m, &h)) }
                    }),
                );
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(CONNECTION_TIMEOUT) => {}
                _ = stop.changed() => return,
            }
            // Past its time: the response in flight is finished (a scrape cut halfway
            // would fail), then the connection closes; an idle one closes at once, a
            // client that does not read is dropped after the grace.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
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
pub fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    health: &Health,
) -> Response<Full<Bytes>> {
    route(req.method(), req.uri().path(), metrics, health)
}

fn route(method: &Method, path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => match health.check() {
            Err(why) if why.stale_metrics() => {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
            }
            _ => match metrics.encode() {
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
        "/healthz" => match health.check() {
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

    /// Clients that connect and say nothing take one permit each, only for the header
    /// timeout: a scrape after them still gets through, and none is served past the limit
    /// meanwhile.
    #[test]
    fn silent_clients_cannot_hold_the_server() {
        let (s, _health) = server();
        let addr = s.addrs()[0];
        let idle: Vec<std::net::TcpStream> = (0..MAX_CONNECTIONS + 8)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        // They hold every permit until the header timeout closes them.
        let started = std::time::Instant::now();
        let m = get(addr, "/metrics");
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        let waited = started.elapsed();
        assert!(
            waited < HEADER_TIMEOUT * 3,
            "served after {waited:?}, the silent ones timed out"
        );
        drop(idle);
        s.stop();
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
