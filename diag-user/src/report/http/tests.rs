use std::io::{Read, Write};

use super::{conns::*, *};

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
