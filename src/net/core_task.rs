//! The core task: the one task that owns a [`SipCore`], feeds it inputs stamped with the clock, and
//! carries out the transmits it returns.
//!
//! It waits on UDP datagrams, events from TCP connection tasks, commands from the recording path
//! (an unbounded channel: senders never wait on the live path) and the core's next deadline, and
//! after every input drains `poll_transmit`. Owning the core in one task means the core needs no
//! locks and sees inputs in one order. TCP sends never block this task: they go onto a
//! connection's bounded queue (and are dropped, counted, when it is full); only a UDP send may
//! wait, for kernel buffer space. It does not frame TCP streams (see `tcp`) or look inside
//! messages.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};

use super::tcp::{self, Event, Shared};
use super::udp;
use super::SipCore;
use crate::config::Transport;
use crate::sip::events::CallCommand;
use crate::sip::{ConnId, Peer, Transmit};

/// Events from connection tasks waiting for the core. When it is full, connection tasks stop
/// reading, which pushes back on TCP peers instead of growing memory.
pub(crate) const EVENT_QUEUE: usize = 1024;

struct Conn {
    peer: SocketAddr,
    tx: mpsc::Sender<Bytes>,
}

enum Input {
    Udp(usize, io::Result<(usize, SocketAddr)>),
    Event(Option<Event>),
    Timeout,
    Command(Option<CallCommand>),
    Shutdown,
}

pub(crate) struct CoreTask<C> {
    core: C,
    udp: Vec<udp::Bound>,
    shared: Arc<Shared>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    conns: HashMap<ConnId, Conn>,
    /// The most recent open connection to each address, for transmits that name no connection.
    by_addr: HashMap<SocketAddr, ConnId>,
    /// `None` when there is no command channel or its senders are all gone.
    commands: Option<mpsc::UnboundedReceiver<CallCommand>>,
}

impl<C: SipCore> CoreTask<C> {
    pub(crate) fn new(
        core: C,
        udp: Vec<udp::Bound>,
        shared: Arc<Shared>,
        events_tx: mpsc::Sender<Event>,
        events_rx: mpsc::Receiver<Event>,
        commands: Option<mpsc::UnboundedReceiver<CallCommand>>,
    ) -> Self {
        CoreTask { core, udp, shared, events_tx, events_rx, conns: HashMap::new(), by_addr: HashMap::new(), commands }
    }

    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // One byte over the limit, so an oversized datagram is seen as oversized (and answered
        // 513 by the core) rather than silently truncated to a plausible message.
        let mut buf = vec![0u8; self.shared.config.max_message_bytes.saturating_add(1)];
        let mut next_udp = 0;
        loop {
            let deadline = self.core.poll_timeout();
            let input = tokio::select! {
                _ = shutdown.changed() => Input::Shutdown,
                ev = self.events_rx.recv() => Input::Event(ev),
                (i, r) = udp::recv_any(&self.udp, &mut buf, &mut next_udp) => Input::Udp(i, r),
                _ = sleep_until(deadline) => Input::Timeout,
                cmd = recv_command(&mut self.commands) => Input::Command(cmd),
            };
            match input {
                Input::Shutdown | Input::Event(None) => return,
                Input::Udp(_, Ok((n, from))) => {
                    if let Some(bytes) = buf.get(..n) {
                        self.core.handle_message(Instant::now(), Peer::udp(from), bytes);
                    }
                }
                Input::Udp(i, Err(e)) => {
                    // Linux reports ICMP errors for earlier sends on some sockets; they concern
                    // one peer, not the socket, so keep receiving.
                    tracing::debug!(socket = i, error = %e.kind(), "UDP receive error");
                }
                Input::Event(Some(ev)) => self.event(ev),
                Input::Timeout => self.core.handle_timeout(Instant::now()),
                Input::Command(Some(cmd)) => self.core.handle_command(Instant::now(), cmd),
                // every sender dropped: stop polling the channel (it would return None at once)
                Input::Command(None) => self.commands = None,
            }
            self.drain().await;
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Opened { id, peer, tx } => {
                self.conns.insert(id, Conn { peer, tx });
                self.by_addr.insert(peer, id);
            }
            Event::Message { id, peer, bytes } => {
                self.core.handle_message(Instant::now(), Peer::tcp(peer, Some(id)), &bytes);
            }
            Event::Closed { id, established } => {
                let peer = self.conns.remove(&id).map(|conn| {
                    if self.by_addr.get(&conn.peer) == Some(&id) {
                        self.by_addr.remove(&conn.peer);
                    }
                    conn.peer
                });
                if established {
                    self.core.connection_closed(id);
                } else if let Some(peer) = peer {
                    self.core.transport_error(Instant::now(), Peer::tcp(peer, None));
                }
            }
        }
    }

    async fn drain(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            match t.to.transport {
                Transport::Udp => self.send_udp(t).await,
                Transport::Tcp => self.send_tcp(t),
            }
        }
    }

    async fn send_udp(&mut self, t: Transmit) {
        let Some(bound) = udp::pick(&self.udp, t.to.addr) else {
            self.shared.metrics.drop("no_udp_socket");
            return;
        };
        if let Err(e) = bound.socket.send_to(&t.bytes, t.to.addr).await {
            self.shared.metrics.drop("udp_send_failed");
            tracing::debug!(error = %e.kind(), "UDP send failed");
            self.core.transport_error(Instant::now(), t.to);
        }
    }

    fn send_tcp(&mut self, t: Transmit) {
        let mut bytes = Bytes::from(t.bytes);
        // The named connection first (responses go back where the request came from, RFC 3261
        // §18.2.2), then any open connection to the address, then a new one.
        let candidates = [t.to.conn, self.by_addr.get(&t.to.addr).copied()];
        for id in candidates.into_iter().flatten() {
            let Some(conn) = self.conns.get(&id) else { continue };
            match conn.tx.try_send(bytes) {
                Ok(()) => return,
                Err(TrySendError::Full(_)) => {
                    self.shared.metrics.drop("tcp_write_queue_full");
                    return;
                }
                // The connection is closing and its Closed event is on its way.
                Err(TrySendError::Closed(b)) => bytes = b,
            }
        }
        self.connect(t.to.addr, bytes);
    }

    fn connect(&mut self, peer: SocketAddr, bytes: Bytes) {
        let Ok(permit) = self.shared.permits.clone().try_acquire_owned() else {
            self.shared.metrics.drop("tcp_connection_limit");
            return;
        };
        let id = self.shared.next_id();
        let (tx, rx) = mpsc::channel(tcp::WRITE_QUEUE);
        if tx.try_send(bytes).is_err() {
            // Cannot happen on a fresh channel with capacity; count it rather than assume.
            self.shared.metrics.drop("tcp_write_queue_full");
        }
        self.conns.insert(id, Conn { peer, tx });
        self.by_addr.insert(peer, id);
        tcp::spawn_outbound(self.shared.clone(), id, peer, rx, permit, self.events_tx.clone());
    }
}

async fn recv_command(rx: &mut Option<mpsc::UnboundedReceiver<CallCommand>>) -> Option<CallCommand> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
