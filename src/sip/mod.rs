//! Sans-IO SIP signaling: message parsing and printing, RFC 3261 transactions, the stateful proxy
//! core, dialogs, routing and the SDP hand-off to media anchoring.
//!
//! Nothing here touches a socket or reads a clock: inputs are bytes with the [`Peer`] they came
//! from plus an `Instant` supplied by the caller; outputs are [`Transmit`]s and deadlines, drained
//! by the driver in `net/`. That makes RFC 3261 timers (Timer B is 32 s) run in microseconds on
//! virtual time in tests.

pub mod dialog;
pub mod events;
pub mod message;
pub mod proxy;
pub mod route;
pub mod sdp;
pub mod transaction;

use std::net::SocketAddr;

pub use crate::config::Transport;

/// Identifies one TCP connection held by the network driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// The far end of a message: where it came from, or where it must go.
///
/// For TCP, `conn` names the connection a request arrived on, so responses go back on it
/// (RFC 3261 §18.2.2); when that connection is gone the driver opens a new one to `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub conn: Option<ConnId>,
}

impl Peer {
    pub fn udp(addr: SocketAddr) -> Peer {
        Peer { transport: Transport::Udp, addr, conn: None }
    }

    pub fn tcp(addr: SocketAddr, conn: Option<ConnId>) -> Peer {
        Peer { transport: Transport::Tcp, addr, conn }
    }
}

/// Bytes the driver must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: Peer,
    pub bytes: Vec<u8>,
}
