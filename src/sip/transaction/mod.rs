//! RFC 3261 §17 client and server transactions, with the RFC 6026 "Accepted" states, sans-IO.
//!
//! A transaction absorbs retransmissions, retransmits on unreliable transports and tells its
//! transaction user (the proxy core) when it gave up. It deals only in status codes, opaque byte
//! buffers built by the TU, and `Instant`s supplied by the caller: it does not parse SIP, match
//! messages to transactions (the TU does that by branch), build ACKs or responses, read a clock or
//! touch a socket. The contract, as in quinn-proto: feed inputs (`on_*`, `send_response`,
//! `handle_timeout`), then drain `poll_transmit` until `None` and call `handle_timeout` again at
//! `poll_timeout`.
//!
//! Wait timers that RFC 3261 sets to zero on reliable transports (D, I, J, K) are not special
//! cased: they are scheduled at the instant of the event that started them, so `poll_timeout`
//! returns that instant and the next `handle_timeout` moves the transaction to Terminated. Until
//! then the state stays observable (Completed / Confirmed) and late inputs are still absorbed.

mod client;
mod server;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use client::{ClientState, ClientTransaction};
pub use server::{ServerState, ServerTransaction};

/// Timer values of RFC 3261 §17 (T1, T2, T4).
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub t1: std::time::Duration,
    pub t2: std::time::Duration,
    pub t4: std::time::Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: std::time::Duration::from_millis(500),
            t2: std::time::Duration::from_secs(4),
            t4: std::time::Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64·T1: Timers B, F, H, J, L and M.
    fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Which of the two RFC 3261 state machines a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invite,
    NonInvite,
}

/// What the transaction user should do with a message the transaction received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Hand it to the TU (forward it, act on it).
    Deliver,
    /// The transaction consumed it (a retransmission, or a hop-by-hop ACK); the TU must drop it.
    Absorb,
}

/// A timeout the TU must act on (client: synthesize a 408 / try the next upstream; server: Timer H
/// expired, no ACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedOut {
    TimerB,
    TimerF,
    TimerH,
}

/// Floor for retransmission intervals. With a zero T1 or T2 the schedule would never advance and
/// `handle_timeout` would loop forever; config validation rejects such values, this keeps the
/// state machine total even when handed a hand-built `Timers`.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// `now + d`, or `None` (the timer never fires) when that is past what `Instant` can hold.
fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// A retransmission timer (A, E, G): when it fires next, and the interval that led there.
#[derive(Debug, Clone, Copy)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

impl Retransmit {
    fn start(now: Instant, interval: Duration) -> Option<Retransmit> {
        let interval = interval.max(MIN_INTERVAL);
        after(now, interval).map(|at| Retransmit { at, interval })
    }

    /// The next deadline counts from the previous deadline, not from when the driver noticed it,
    /// so the schedule stays exact even when `handle_timeout` is called late.
    fn next(self, interval: Duration) -> Option<Retransmit> {
        Retransmit::start(self.at, interval)
    }
}

/// Which timer of a transaction is due; the order of variants is the order ties are broken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// B, F or H: give up. Checked first so that nothing is retransmitted at the instant the
    /// transaction gives up.
    Timeout,
    /// D, I, J, K, L or M: the transaction has lingered long enough to absorb retransmissions.
    Linger,
    /// A, E or G.
    Retransmit,
}

/// The earliest of the armed timers that is due at or before `now`.
fn earliest_due(
    now: Instant,
    timeout: Option<Instant>,
    linger: Option<Instant>,
    retransmit: Option<Retransmit>,
) -> Option<Due> {
    [(timeout, Due::Timeout), (linger, Due::Linger), (retransmit.map(|r| r.at), Due::Retransmit)]
        .into_iter()
        .filter_map(|(at, due)| at.filter(|at| *at <= now).map(|at| (at, due)))
        .min_by_key(|(at, _)| *at)
        .map(|(_, due)| due)
}

fn earliest(timeout: Option<Instant>, linger: Option<Instant>, retransmit: Option<Retransmit>) -> Option<Instant> {
    [timeout, linger, retransmit.map(|r| r.at)].into_iter().flatten().min()
}

/// Bytes waiting for `poll_transmit`.
#[derive(Default)]
struct Outbox {
    queue: VecDeque<Vec<u8>>,
}

impl Outbox {
    /// A new message from the TU: always sent.
    fn push(&mut self, bytes: Vec<u8>) {
        self.queue.push_back(bytes);
    }

    /// A re-send. If the same bytes are already the last thing waiting, one copy is enough: this
    /// keeps the queue bounded when a peer floods retransmissions and nobody drains in between.
    /// Returns whether a copy was queued.
    fn push_resend(&mut self, bytes: &[u8]) -> bool {
        if self.queue.back().is_some_and(|last| last.as_slice() == bytes) {
            return false;
        }
        self.queue.push_back(bytes.to_vec());
        true
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        self.queue.pop_front()
    }

    fn len(&self) -> usize {
        self.queue.len()
    }
}

/// Status code classes the state machines distinguish. Codes outside 100–699 are not SIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Provisional,
    Success,
    Failure,
}

fn classify(code: u16) -> Option<Class> {
    match code {
        100..=199 => Some(Class::Provisional),
        200..=299 => Some(Class::Success),
        300..=699 => Some(Class::Failure),
        _ => None,
    }
}
