//! Transaction tests on virtual time: `t0` is read once per test and every other instant is
//! `t0 + d`, so the 32 s of Timer B pass in microseconds.
#![allow(clippy::disallowed_methods)] // tests start virtual time from one real instant

mod client;
mod properties;
mod server;

use std::time::{Duration, Instant};

use super::{ClientTransaction, ServerTransaction, TimedOut};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The three sans-IO outputs both transaction kinds share, so one driver serves both.
trait Machine {
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant) -> Option<TimedOut>;
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
}

impl Machine for ClientTransaction {
    fn poll_timeout(&self) -> Option<Instant> {
        ClientTransaction::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) -> Option<TimedOut> {
        ClientTransaction::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        ClientTransaction::poll_transmit(self)
    }
}

impl Machine for ServerTransaction {
    fn poll_timeout(&self) -> Option<Instant> {
        ServerTransaction::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) -> Option<TimedOut> {
        ServerTransaction::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        ServerTransaction::poll_transmit(self)
    }
}

/// What a punctual driver observes: each transmission and timeout, as an offset from `t0`.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Sent(Duration, Vec<u8>),
    TimedOut(Duration, TimedOut),
}

/// Calls `handle_timeout` exactly at each deadline up to and including `t0 + until`, draining
/// `poll_transmit` after each call, the way the `net/` driver does.
fn run_until(m: &mut impl Machine, t0: Instant, until: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(at) = m.poll_timeout() {
        if at > t0 + until {
            break;
        }
        let timed_out = m.handle_timeout(at);
        while let Some(bytes) = m.poll_transmit() {
            events.push(Event::Sent(at - t0, bytes));
        }
        if let Some(t) = timed_out {
            events.push(Event::TimedOut(at - t0, t));
        }
    }
    events
}

/// Offsets of the `Sent` events.
fn send_times(events: &[Event]) -> Vec<Duration> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Sent(at, _) => Some(*at),
            Event::TimedOut(..) => None,
        })
        .collect()
}

fn drain(m: &mut impl Machine) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| m.poll_transmit()).collect()
}
