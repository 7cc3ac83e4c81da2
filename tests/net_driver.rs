//! The network driver against a scripted core on loopback: UDP replies leave from the listening
//! port, TCP framing (coalesced, split, keep-alive, oversized), outbound TCP with replies routed
//! back on the same connection, the connection limit, idle timeout and core timers.
#![allow(clippy::disallowed_methods)] // a real driver runs on real time

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callveil::config::{Settings, Transport};
use callveil::metrics::Metrics;
use callveil::net::{Driver, Listeners, NetConfig, SipCore};
use callveil::sip::message::framing::{frame, Framed};
use callveil::sip::{ConnId, Peer, Transmit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Log {
    messages: Vec<(Peer, Vec<u8>)>,
    timeouts: Vec<(Instant, Option<Instant>)>,
    closed: Vec<ConnId>,
    transport_errors: Vec<Peer>,
}

/// Echoes every message as `SIP/2.0 200 OK` with its first line in `X-Echo`, except:
/// `FORWARD ...` goes to `upstream` over TCP (on the connection the upstream last spoke on),
/// anything from `upstream` goes back to whoever asked for the forward, and `TIMER <ms> ...` asks
/// for a timeout that answers `X-Echo: TIMER FIRED`.
struct TestCore {
    log: Arc<Mutex<Log>>,
    out: VecDeque<Transmit>,
    upstream: Option<SocketAddr>,
    upstream_conn: Option<ConnId>,
    client: Option<Peer>,
    deadline: Option<Instant>,
}

fn echo(line: &str) -> Vec<u8> {
    format!("SIP/2.0 200 OK\r\nX-Echo: {line}\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

impl SipCore for TestCore {
    fn handle_message(&mut self, now: Instant, from: Peer, bytes: &[u8]) {
        self.log.lock().unwrap().messages.push((from, bytes.to_vec()));
        let text = String::from_utf8_lossy(bytes);
        let line = text.split("\r\n").next().unwrap_or("").to_string();
        if from.transport == Transport::Tcp && Some(from.addr) == self.upstream {
            self.upstream_conn = from.conn;
            if let Some(client) = self.client {
                self.out.push_back(Transmit { to: client, bytes: bytes.to_vec() });
            }
        } else if let (true, Some(up)) = (line.starts_with("FORWARD"), self.upstream) {
            self.client = Some(from);
            self.out.push_back(Transmit { to: Peer::tcp(up, self.upstream_conn), bytes: bytes.to_vec() });
        } else if let Some(rest) = line.strip_prefix("TIMER ") {
            let ms: u64 = rest.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            self.client = Some(from);
            self.deadline = Some(now + Duration::from_millis(ms));
        } else {
            self.out.push_back(Transmit { to: from, bytes: echo(&line) });
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.log.lock().unwrap().timeouts.push((now, self.deadline));
        if self.deadline.is_some_and(|d| d <= now) {
            self.deadline = None;
            if let Some(client) = self.client {
                self.out.push_back(Transmit { to: client, bytes: echo("TIMER FIRED") });
            }
        }
    }

    fn connection_closed(&mut self, conn: ConnId) {
        self.log.lock().unwrap().closed.push(conn);
    }

    fn transport_error(&mut self, _now: Instant, to: Peer) {
        self.log.lock().unwrap().transport_errors.push(to);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

struct Harness {
    driver: Driver,
    log: Arc<Mutex<Log>>,
    metrics: Metrics,
}

impl Harness {
    async fn start(sip_extra: &str, upstream: Option<SocketAddr>) -> Harness {
        let toml = format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\n{sip_extra}\n[metrics]\nlisten = \"\"\n"
        );
        let settings = Settings::from_toml(&toml).unwrap();
        let listeners = Listeners::bind(&settings.sip_listen, NetConfig::from_settings(&settings)).await.unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let core = TestCore {
            log: log.clone(),
            out: VecDeque::new(),
            upstream,
            upstream_conn: None,
            client: None,
            deadline: None,
        };
        let metrics = Metrics::new();
        let driver = listeners.spawn(core, metrics.sip.clone(), None);
        Harness { driver, log, metrics }
    }

    fn udp(&self) -> SocketAddr {
        self.driver.local_addr(Transport::Udp).unwrap()
    }

    fn tcp(&self) -> SocketAddr {
        self.driver.local_addr(Transport::Tcp).unwrap()
    }

    fn metric(&self, needle: &str) -> bool {
        self.metrics.encode().lines().any(|l| l == needle)
    }
}

fn request(line: &str) -> Vec<u8> {
    format!("{line}\r\nVia: SIP/2.0/TCP test;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads `n` framed messages from `stream` and returns their `X-Echo` values.
async fn read_echoes(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<String> {
    read_messages(stream, buf, n).await.iter().map(|m| x_echo(m)).collect()
}

/// Reads `n` framed messages from `stream`; `buf` keeps what was read beyond them.
async fn read_messages(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < n {
        match frame(buf, 65_535, 65_535).unwrap() {
            Framed::Message(len) => {
                out.push(buf.drain(..len).collect());
                continue;
            }
            Framed::KeepAlive { len, .. } => {
                buf.drain(..len);
                continue;
            }
            Framed::Incomplete => {}
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("response in time").unwrap();
        assert!(read > 0, "connection closed after {} of {n} responses", out.len());
        buf.extend_from_slice(&chunk[..read]);
    }
    out
}

fn x_echo(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    text.split("\r\n").find_map(|l| l.strip_prefix("X-Echo: ")).unwrap_or("").to_string()
}

/// True once the server has closed `stream` (EOF or reset), reading and discarding anything else.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn udp_recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.expect("datagram in time").unwrap();
    buf.truncate(n);
    (buf, from)
}

#[tokio::test]
async fn udp_reply_leaves_from_the_listening_port_and_oversized_datagrams_reach_the_core() {
    let h = Harness::start("max_message_bytes = 512", None).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(&request("OPTIONS sip:udp@x SIP/2.0"), h.udp()).await.unwrap();
    let (reply, from) = udp_recv(&client).await;
    assert_eq!(from, h.udp(), "reply must come from the port the request was sent to");
    assert_eq!(x_echo(&reply), "OPTIONS sip:udp@x SIP/2.0");
    {
        let log = h.log.lock().unwrap();
        let (peer, _) = &log.messages[0];
        assert_eq!(*peer, Peer::udp(client.local_addr().unwrap()));
    }

    let mut big = b"OPTIONS sip:big@x SIP/2.0\r\n".to_vec();
    big.resize(1000, b'a');
    client.send_to(&big, h.udp()).await.unwrap();
    let (reply, _) = udp_recv(&client).await;
    assert_eq!(x_echo(&reply), "OPTIONS sip:big@x SIP/2.0");
    let seen = h.log.lock().unwrap().messages[1].1.len();
    assert_eq!(seen, 513, "the core sees one byte over the limit, so it can answer 513");
    h.driver.stop().await;
}

#[tokio::test]
async fn tcp_two_messages_in_one_write_and_close_is_reported() {
    let h = Harness::start("", None).await;
    let mut s = TcpStream::connect(h.tcp()).await.unwrap();
    let mut both = request("OPTIONS sip:1@x SIP/2.0");
    both.extend_from_slice(&request("OPTIONS sip:2@x SIP/2.0"));
    s.write_all(&both).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_echoes(&mut s, &mut buf, 2).await, ["OPTIONS sip:1@x SIP/2.0", "OPTIONS sip:2@x SIP/2.0"]);
    let conn = {
        let log = h.log.lock().unwrap();
        assert_eq!(log.messages.len(), 2);
        let (a, b) = (log.messages[0].0, log.messages[1].0);
        assert_eq!(a, b);
        assert_eq!(a.addr, s.local_addr().unwrap());
        a.conn.expect("TCP messages carry their connection")
    };
    eventually("open connection gauge", || h.metric("callveil_sip_tcp_connections 1")).await;
    drop(s);
    eventually("connection_closed reported", || h.log.lock().unwrap().closed.contains(&conn)).await;
    eventually("gauge back to zero", || h.metric("callveil_sip_tcp_connections 0")).await;
    h.driver.stop().await;
}

#[tokio::test]
async fn tcp_message_split_over_writes_is_framed_once() {
    let h = Harness::start("", None).await;
    let mut s = TcpStream::connect(h.tcp()).await.unwrap();
    let msg = request("OPTIONS sip:split@x SIP/2.0");
    for part in [&msg[..10], &msg[10..40], &msg[40..]] {
        s.write_all(part).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut buf = Vec::new();
    assert_eq!(read_echoes(&mut s, &mut buf, 1).await, ["OPTIONS sip:split@x SIP/2.0"]);
    {
        let log = h.log.lock().unwrap();
        assert_eq!(log.messages.len(), 1);
        assert_eq!(log.messages[0].1, msg);
    }
    h.driver.stop().await;
}

#[tokio::test]
async fn tcp_keepalive_ping_gets_crlf_and_connection_stays_usable() {
    let h = Harness::start("", None).await;
    let mut s = TcpStream::connect(h.tcp()).await.unwrap();
    s.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut pong)).await.expect("pong in time").unwrap();
    assert_eq!(&pong, b"\r\n");
    s.write_all(&request("OPTIONS sip:after@x SIP/2.0")).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_echoes(&mut s, &mut buf, 1).await, ["OPTIONS sip:after@x SIP/2.0"]);
    assert_eq!(h.log.lock().unwrap().messages.len(), 1, "the ping is not a message for the core");
    h.driver.stop().await;
}

#[tokio::test]
async fn tcp_oversized_header_block_closes_the_connection() {
    let h = Harness::start("max_message_bytes = 512", None).await;
    let mut s = TcpStream::connect(h.tcp()).await.unwrap();
    let mut junk = b"OPTIONS sip:x@x SIP/2.0\r\nX-Pad: ".to_vec();
    junk.resize(2000, b'a');
    // The server may close while we are still writing; only the close matters.
    let _ = s.write_all(&junk).await;
    assert!(closed_by_server(&mut s).await, "connection must be closed");
    assert!(h.log.lock().unwrap().messages.is_empty());
    eventually("framing error counted", || h.metric("callveil_sip_parse_errors_total{kind=\"headers_too_large\"} 1"))
        .await;
    eventually("connection_closed reported", || h.log.lock().unwrap().closed.len() == 1).await;
    h.driver.stop().await;
}

#[tokio::test]
async fn outbound_tcp_opens_once_and_replies_route_back() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let h = Harness::start("", Some(up_addr)).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    client.send_to(&request("FORWARD sip:1@x SIP/2.0"), h.udp()).await.unwrap();
    let (mut conn, _) = tokio::time::timeout(WAIT, upstream.accept()).await.expect("callveil connects").unwrap();
    let mut buf = Vec::new();
    let got = read_messages(&mut conn, &mut buf, 1).await;
    assert_eq!(got[0], request("FORWARD sip:1@x SIP/2.0"), "the forwarded request arrives unchanged");
    conn.write_all(&echo("upstream reply")).await.unwrap();
    let (reply, from) = udp_recv(&client).await;
    assert_eq!(from, h.udp());
    assert_eq!(x_echo(&reply), "upstream reply");
    let up_conn = {
        let log = h.log.lock().unwrap();
        let (peer, _) = log.messages.last().unwrap();
        assert_eq!(peer.transport, Transport::Tcp);
        assert_eq!(peer.addr, up_addr);
        peer.conn.expect("messages on outbound connections carry their ConnId")
    };

    // The core now names that connection; the driver must reuse it, not connect again.
    client.send_to(&request("FORWARD sip:2@x SIP/2.0"), h.udp()).await.unwrap();
    let got = read_messages(&mut conn, &mut buf, 1).await;
    assert_eq!(got[0], request("FORWARD sip:2@x SIP/2.0"), "sent on the connection the core named");
    assert!(tokio::time::timeout(Duration::from_millis(200), upstream.accept()).await.is_err(), "no second connection");

    drop(conn);
    eventually("outbound close reported", || h.log.lock().unwrap().closed.contains(&up_conn)).await;
    h.driver.stop().await;
}

#[tokio::test]
async fn outbound_connect_failure_is_counted() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let h = Harness::start("", Some(gone_addr)).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(&request("FORWARD sip:1@x SIP/2.0"), h.udp()).await.unwrap();
    eventually("connect failure counted", || h.metric("callveil_sip_dropped_total{kind=\"tcp_connect_failed\"} 1"))
        .await;
    assert!(h.log.lock().unwrap().closed.is_empty(), "the core never had that connection");
    eventually("transport error reported to the core", || {
        h.log.lock().unwrap().transport_errors.iter().any(|p| p.addr == gone_addr && p.transport == Transport::Tcp)
    })
    .await;
    h.driver.stop().await;
}

#[tokio::test]
async fn tcp_connection_limit_is_enforced() {
    let h = Harness::start("max_tcp_connections = 1", None).await;
    let mut a = TcpStream::connect(h.tcp()).await.unwrap();
    a.write_all(&request("OPTIONS sip:a@x SIP/2.0")).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_echoes(&mut a, &mut buf, 1).await, ["OPTIONS sip:a@x SIP/2.0"]);

    let mut b = TcpStream::connect(h.tcp()).await.unwrap();
    assert!(closed_by_server(&mut b).await, "a connection over the limit is closed at once");
    assert!(h.metric("callveil_sip_dropped_total{kind=\"tcp_connection_limit\"} 1"));

    drop(a);
    let end = Instant::now() + WAIT;
    loop {
        let mut c = TcpStream::connect(h.tcp()).await.unwrap();
        if c.write_all(&request("OPTIONS sip:c@x SIP/2.0")).await.is_ok() {
            let mut chunk = [0u8; 4096];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), c.read(&mut chunk)).await {
                if n > 0 {
                    assert_eq!(x_echo(&chunk[..n]), "OPTIONS sip:c@x SIP/2.0");
                    break;
                }
            }
        }
        assert!(Instant::now() < end, "the freed slot is never reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.driver.stop().await;
}

#[tokio::test]
async fn idle_tcp_connection_is_closed() {
    let h = Harness::start("tcp_idle_timeout_s = 1", None).await;
    let mut s = TcpStream::connect(h.tcp()).await.unwrap();
    let started = Instant::now();
    assert!(closed_by_server(&mut s).await);
    assert!(started.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", started.elapsed());
    h.driver.stop().await;
}

#[tokio::test]
async fn core_deadline_drives_handle_timeout() {
    let h = Harness::start("", None).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sent = Instant::now();
    client.send_to(&request("TIMER 50 sip:t@x SIP/2.0"), h.udp()).await.unwrap();
    let (reply, _) = udp_recv(&client).await;
    assert_eq!(x_echo(&reply), "TIMER FIRED");
    assert!(sent.elapsed() >= Duration::from_millis(50));
    {
        let log = h.log.lock().unwrap();
        assert!(!log.timeouts.is_empty());
        for (now, deadline) in &log.timeouts {
            assert!(deadline.is_none_or(|d| d <= *now), "handle_timeout called before the deadline");
        }
    }
    h.driver.stop().await;
}

#[tokio::test]
async fn stop_closes_the_listeners() {
    let h = Harness::start("", None).await;
    let tcp = h.tcp();
    TcpStream::connect(tcp).await.unwrap();
    h.driver.stop().await;
    assert!(TcpStream::connect(tcp).await.is_err());
}
