//! The connections `serve` holds: what each is doing, and which one a newcomer replaces
//! when every place is taken.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{watch, Notify},
};

use super::{MAX_CONNECTIONS, WRITE_STALL};

/// What one connection is doing, as far as choosing whom to close goes: kept up to date by
/// its socket ([`Watched`]) and its answers ([`Answer`]). Times are milliseconds since the
/// table's start, plus one (0: none).
#[derive(Default)]
pub(super) struct Activity {
    /// When it last began to wait for a request: accepted, or its last answer handed over.
    pub(super) waiting_since: AtomicU64,
    /// Everything it sent so far has been read (its last read found nothing more).
    pub(super) read_dry: AtomicBool,
    /// A request of it is being answered.
    pub(super) answering: AtomicBool,
    /// Since when a write has been waiting for the client to read.
    pub(super) write_blocked_since: AtomicU64,
    /// Set to make the connection end at once.
    pub(super) close: Notify,
}

/// The connections held, shared by the accept loops.
pub(super) struct Table {
    pub(super) started: Instant,
    pub(super) conns: Mutex<HashMap<u64, Arc<Activity>>>,
    pub(super) next_id: AtomicU64,
    /// Something may have become closable (a connection read dry, or ended).
    pub(super) changed: Notify,
}

/// One connection's state at a glance, for [`victim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub(super) waiting_since: u64,
    pub(super) read_dry: bool,
    pub(super) answering: bool,
    pub(super) write_blocked_since: Option<u64>,
}

/// Which connection a newcomer replaces when every place is taken, if any may go: the one
/// that has waited longest with no request in hand and nothing unread (it has had its
/// chance to ask), else the one whose client has taken nothing of its answer for the
/// longest, at least [`WRITE_STALL`]. A connection with a request being answered to a
/// client that reads, or with bytes not yet looked at, is never chosen.
pub(super) fn victim<K: Copy>(
    conns: impl IntoIterator<Item = (K, Snapshot)>,
    now_ms: u64,
) -> Option<K> {
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
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    pub(super) fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // Nothing panics while holding it; a poisoned map is still a consistent one.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection: at once while there is room, else by closing the
    /// connection [`victim`] chooses, else once one may go. `None` when the server stops.
    pub(super) async fn admit(
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

    pub(super) fn leave(&self, id: u64) {
        self.conns().remove(&id);
        self.changed.notify_one();
    }
}

/// Takes a connection's place out of the table however its task ends.
pub(super) struct Place {
    pub(super) table: Arc<Table>,
    pub(super) id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.table.leave(self.id);
    }
}

/// A connection's socket, telling its [`Activity`] whether the client has said all it had
/// to say and whether it reads what it is sent.
pub(super) struct Watched {
    pub(super) stream: tokio::net::TcpStream,
    pub(super) activity: Arc<Activity>,
    pub(super) table: Arc<Table>,
}

impl Watched {
    pub(super) fn wrote<T>(&self, r: &Poll<io::Result<T>>) {
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
pub(super) struct Answer {
    pub(super) body: Full<Bytes>,
    pub(super) activity: Arc<Activity>,
    pub(super) table: Arc<Table>,
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
