//! The media driver: relay shard threads that own the RTP/RTCP sockets and feed each shard's
//! sans-IO [`RelayCore`].
//!
//! [`MediaDriver`] is the [`MediaBackend`] the anchor holds inside the proxy's core task. It
//! binds a port pair synchronously when the anchor asks (a non-blocking system call), then hands
//! the sockets and the stream's setup to the shard that owns the call (`call key % shards`)
//! through an unbounded channel plus a `mio` waker: nothing on the signaling path waits on media.
//! Each shard is one OS thread running an edge-triggered `mio` poll loop: on readiness it drains
//! the socket, asks the core for a verdict per datagram, and sends the same buffer on from the
//! socket the core names (no copy, no allocation, no lock per packet; the clock is read once per
//! wake-up). Calls the core finds inactive are sent back to the anchor on a channel it polls.
//!
//! Prompt playout is paced by the same loop: the core's `poll_timeout` includes the next prompt
//! packet's deadline, and after every wake-up the shard sends what `poll_transmit` hands out, so
//! IVR audio needs no thread or timer of its own. Media commands (taps, prompts, secure entry)
//! arrive on the command channel and take effect at the shard's next wake-up, at once.
//!
//! Receive batching (`recvmmsg`) is not used: with one socket per 50-pps stream the kernel has
//! about one datagram ready per socket per wake-up (FACTS.md §5), so a batch would hold one
//! packet. The driver does not parse packets or log addresses (they are personal data).
//! Sockets that fail to send are counted as `send_failed` drops.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::media::anchor::{MediaBackend, StreamControl, StreamKey};
use crate::media::relay::{leg_index, RelayConfig, RelayCore, RelayEvent, Sock, StreamId, StreamSetup, Verdict};
use crate::media::tap::LegTap;
use crate::metrics::{MediaMetrics, ReasonLabels};
use crate::sip::sdp::Leg;

const WAKE: Token = Token(usize::MAX);
/// Larger than any RTP packet on an Ethernet path; longer datagrams are truncated by the kernel
/// and then fail RTP/RTCP length checks.
const BUF: usize = 4096;

/// The RTP and RTCP sockets of one port pair.
pub struct Pair {
    rtp: std::net::UdpSocket,
    rtcp: std::net::UdpSocket,
}

enum Command {
    Open { key: StreamKey, pairs: [Pair; 2], setup: StreamSetup },
    Update { key: StreamKey, setup: StreamSetup },
    Close { key: StreamKey },
    Control { key: StreamKey, ctl: StreamControl },
    Stop,
}

#[derive(Clone)]
struct ShardHandle {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
}

impl ShardHandle {
    fn send(&self, cmd: Command) {
        // A send fails only when the shard thread is gone (shutdown); nothing to do then.
        if self.tx.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// The anchor's handle on the relay shards.
pub struct MediaDriver {
    bind: IpAddr,
    shards: Vec<ShardHandle>,
    inactive: mpsc::Receiver<u64>,
}

/// Stops the shard threads; kept by the application, apart from the [`MediaDriver`] that moves
/// into the proxy.
pub struct MediaShutdown {
    shards: Vec<ShardHandle>,
    threads: Vec<JoinHandle<()>>,
}

impl MediaShutdown {
    /// Stops every shard and waits for its thread (they close their sockets on the way out).
    pub fn stop(self) {
        for s in &self.shards {
            s.send(Command::Stop);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// How the shard threads wait for packets.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardOptions {
    /// After a wake-up that relayed packets, poll without sleeping for this long before blocking
    /// again: the next packet then skips the thread's wake-up (tens of µs on a VM), at the cost
    /// of CPU spent spinning. Zero (the default) never spins.
    pub busy_poll: Duration,
}

impl MediaDriver {
    /// Starts `shards` relay threads (at least one).
    pub fn start(
        bind: IpAddr,
        shards: usize,
        config: RelayConfig,
        metrics: MediaMetrics,
    ) -> io::Result<(MediaDriver, MediaShutdown)> {
        MediaDriver::start_with(bind, shards, config, metrics, ShardOptions::default())
    }

    /// [`MediaDriver::start`] with shard options.
    pub fn start_with(
        bind: IpAddr,
        shards: usize,
        config: RelayConfig,
        metrics: MediaMetrics,
        options: ShardOptions,
    ) -> io::Result<(MediaDriver, MediaShutdown)> {
        let (inactive_tx, inactive) = mpsc::channel();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for i in 0..shards.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let (tx, rx) = mpsc::channel();
            let shard = Shard {
                poll,
                rx,
                core: RelayCore::new(config, metrics.clone()),
                sockets: Vec::new(),
                streams: HashMap::new(),
                inactive: inactive_tx.clone(),
                metrics: metrics.clone(),
                busy_poll: options.busy_poll,
                relayed: false,
            };
            let thread = std::thread::Builder::new().name(format!("rtp-shard-{i}")).spawn(move || shard.run())?;
            handles.push(ShardHandle { tx, waker });
            threads.push(thread);
        }
        Ok((MediaDriver { bind, shards: handles.clone(), inactive }, MediaShutdown { shards: handles, threads }))
    }

    fn shard(&self, key: StreamKey) -> &ShardHandle {
        &self.shards[(key.call % self.shards.len() as u64) as usize]
    }
}

impl MediaBackend for MediaDriver {
    type Pair = Pair;

    fn bind(&mut self, rtp_port: u16) -> io::Result<Pair> {
        let rtcp_port = rtp_port.checked_add(1).ok_or(io::ErrorKind::InvalidInput)?;
        let rtp = std::net::UdpSocket::bind(SocketAddr::new(self.bind, rtp_port))?;
        let rtcp = std::net::UdpSocket::bind(SocketAddr::new(self.bind, rtcp_port))?;
        rtp.set_nonblocking(true)?;
        rtcp.set_nonblocking(true)?;
        Ok(Pair { rtp, rtcp })
    }

    fn open(&mut self, key: StreamKey, pairs: [Pair; 2], setup: StreamSetup) {
        self.shard(key).send(Command::Open { key, pairs, setup });
    }

    fn update(&mut self, key: StreamKey, setup: StreamSetup) {
        self.shard(key).send(Command::Update { key, setup });
    }

    fn close(&mut self, key: StreamKey) {
        self.shard(key).send(Command::Close { key });
    }

    fn poll_inactive(&mut self) -> Option<u64> {
        self.inactive.try_recv().ok()
    }

    fn control(&mut self, key: StreamKey, ctl: StreamControl) {
        self.shard(key).send(Command::Control { key, ctl });
    }
}

struct Shard {
    poll: Poll,
    rx: mpsc::Receiver<Command>,
    core: RelayCore,
    /// Indexed by token: `stream * 4 + leg * 2 + rtcp`.
    sockets: Vec<Option<UdpSocket>>,
    streams: HashMap<StreamKey, StreamId>,
    inactive: mpsc::Sender<u64>,
    metrics: MediaMetrics,
    busy_poll: Duration,
    /// The last wake-up relayed a packet (busy polling continues while packets keep coming).
    relayed: bool,
}

fn token_of(s: Sock) -> usize {
    s.stream * 4 + leg_index(s.leg) * 2 + usize::from(s.rtcp)
}

fn sock(token: usize) -> Sock {
    let leg = if (token / 2).is_multiple_of(2) { Leg::Caller } else { Leg::Callee };
    Sock { stream: token / 4, leg, rtcp: token % 2 == 1 }
}

impl Shard {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; BUF];
        let mut spin_until: Option<Instant> = None;
        loop {
            let mut timeout = self.core.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()));
            if !self.busy_poll.is_zero() {
                let at = Instant::now();
                if std::mem::take(&mut self.relayed) {
                    spin_until = Some(at + self.busy_poll);
                }
                if spin_until.is_some_and(|t| at < t) {
                    timeout = Some(Duration::ZERO);
                }
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "media shard poll failed; shard stops");
                return;
            }
            let now = Instant::now();
            // Commands before packets: an update queued (an answer's addresses, keys) before a
            // packet arrived must apply to it, whatever order epoll reports the two in.
            if events.iter().any(|ev| ev.token() == WAKE) && !self.commands(now) {
                // counts since the last tick would be lost otherwise
                self.core.flush();
                return;
            }
            for ev in events.iter() {
                if ev.token() != WAKE {
                    self.readable(now, ev.token().0, &mut buf);
                }
            }
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
                while let Some(RelayEvent::Inactive { call, .. }) = self.core.poll_event() {
                    let _ = self.inactive.send(call);
                }
            }
            self.transmit(now);
        }
    }

    /// Drains the socket (edge-triggered readiness) and forwards what the core allows.
    fn readable(&mut self, now: Instant, token: usize, buf: &mut [u8]) {
        loop {
            let Some(Some(socket)) = self.sockets.get(token) else { return };
            let (n, src) = match socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors from earlier sends surface here; they concern one peer.
                Err(_) => continue,
            };
            let data = &buf[..n];
            // A panic on one packet (in our code or a dependency's: the fuzzer found one in
            // rtc-srtp) must cost that packet, not the shard thread and every call on it.
            let core = &mut self.core;
            let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                core.handle_packet(now, sock(token), src, data)
            }));
            let verdict = match verdict {
                Ok(v) => v,
                Err(_) => {
                    self.metrics.dropped.get_or_create(&ReasonLabels { reason: "panic" }).inc();
                    tracing::error!("media packet handling panicked; packet dropped, shard continues");
                    continue;
                }
            };
            let (via, to, bytes) = match verdict {
                Verdict::Forward { via, to } => (via, to, data),
                Verdict::ForwardRewritten { via, to } => (via, to, self.core.rewritten()),
                Verdict::Drop(_) => continue,
            };
            self.relayed = true;
            {
                let sent = match self.sockets.get(token_of(via)) {
                    Some(Some(out)) => out.send_to(bytes, to).map(|_| ()),
                    _ => Err(io::ErrorKind::NotFound.into()),
                };
                if sent.is_err() {
                    self.metrics.dropped.get_or_create(&ReasonLabels { reason: "send_failed" }).inc();
                }
            }
        }
    }

    /// Sends the prompt packets that are due.
    fn transmit(&mut self, now: Instant) {
        while let Some((via, to)) = self.core.poll_transmit(now) {
            let sent = match self.sockets.get(token_of(via)) {
                Some(Some(out)) => out.send_to(self.core.rewritten(), to).map(|_| ()),
                _ => Err(io::ErrorKind::NotFound.into()),
            };
            if sent.is_err() {
                self.metrics.dropped.get_or_create(&ReasonLabels { reason: "send_failed" }).inc();
            }
        }
    }

    /// Applies queued commands. Returns false on Stop.
    fn commands(&mut self, now: Instant) -> bool {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Stop => return false,
                Command::Open { key, pairs, setup } => self.open(now, key, pairs, setup),
                Command::Update { key, setup } => {
                    if let Some(&id) = self.streams.get(&key) {
                        self.core.update_stream(now, id, setup);
                    }
                }
                Command::Control { key, ctl } => {
                    let Some(&id) = self.streams.get(&key) else { continue };
                    match ctl {
                        StreamControl::Tap(tap) => {
                            for leg in [Leg::Caller, Leg::Callee] {
                                let tap = tap
                                    .as_ref()
                                    .map(|(sink, te)| LegTap::new(key.call, key.index, leg, *te, sink.clone()));
                                self.core.set_tap(id, leg, tap);
                            }
                        }
                        StreamControl::Play { leg, pcm } => {
                            if !self.core.play(now, id, leg, pcm) {
                                tracing::debug!(%leg, "prompt not played: no G.711 codec negotiated with the leg");
                            }
                        }
                        StreamControl::StopPlay { leg } => self.core.stop_play(id, leg),
                        StreamControl::Secure(on) => self.core.set_secure(id, on),
                    }
                }
                Command::Close { key } => {
                    if let Some(id) = self.streams.remove(&key) {
                        self.core.remove_stream(id);
                        for t in id * 4..id * 4 + 4 {
                            if let Some(mut s) = self.sockets.get_mut(t).and_then(Option::take) {
                                let _ = self.poll.registry().deregister(&mut s);
                            }
                        }
                    }
                }
            }
        }
        true
    }

    fn open(&mut self, now: Instant, key: StreamKey, pairs: [Pair; 2], setup: StreamSetup) {
        let id = self.core.add_stream(now, setup);
        self.streams.insert(key, id);
        if self.sockets.len() < id * 4 + 4 {
            self.sockets.resize_with(id * 4 + 4, || None);
        }
        for (leg, pair) in [Leg::Caller, Leg::Callee].into_iter().zip(pairs) {
            for (rtcp, std_socket) in [(false, pair.rtp), (true, pair.rtcp)] {
                let t = token_of(Sock { stream: id, leg, rtcp });
                let mut s = UdpSocket::from_std(std_socket);
                if self.poll.registry().register(&mut s, Token(t), Interest::READABLE).is_err() {
                    self.metrics.dropped.get_or_create(&ReasonLabels { reason: "register_failed" }).inc();
                    continue;
                }
                self.sockets[t] = Some(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for stream in [0, 1, 77] {
            for leg in [Leg::Caller, Leg::Callee] {
                for rtcp in [false, true] {
                    let s = Sock { stream, leg, rtcp };
                    assert_eq!(sock(token_of(s)), s);
                }
            }
        }
    }
}
