//! Port-pair allocator with quarantine, sans-IO.
//!
//! Media ports come in pairs: an even RTP port and the odd RTCP port above it (RFC 3550 §11).
//! Pairs are handed out from `[media] ports` in FIFO order, and a released pair sits in
//! quarantine for a while before it can be handed out again, so late packets of a finished call
//! (or a peer that did not notice the BYE) cannot leak into the next call that gets the port.
//! Time is an input: the caller passes `now`. This module does not bind sockets; a pair the
//! driver could not bind is handed back with [`PortAllocator::bind_failed`], which quarantines it
//! for longer (something else on the host holds it).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::PortRange;

/// Hands out even/odd port pairs from a range.
#[derive(Debug)]
pub struct PortAllocator {
    free: VecDeque<u16>,
    quarantine: VecDeque<(Instant, u16)>,
    hold: Duration,
    total: usize,
}

impl PortAllocator {
    /// All pairs `(p, p + 1)` with `p` even and both inside `range`. `hold` is the quarantine.
    pub fn new(range: PortRange, hold: Duration) -> PortAllocator {
        let first = range.first + (range.first & 1);
        let free: VecDeque<u16> =
            (first..range.last).step_by(2).filter(|p| p.checked_add(1).is_some_and(|q| q <= range.last)).collect();
        let total = free.len();
        PortAllocator { free, quarantine: VecDeque::new(), hold, total }
    }

    /// The RTP port of a free pair, or `None` when every pair is in use or in quarantine.
    pub fn allocate(&mut self, now: Instant) -> Option<u16> {
        self.expire(now);
        self.free.pop_front()
    }

    /// The pair at `rtp` is no longer used; it becomes free again after the quarantine.
    pub fn release(&mut self, now: Instant, rtp: u16) {
        self.quarantine.push_back((now + self.hold, rtp));
    }

    /// The driver could not bind the pair: keep it out of use for ten quarantines, then try again
    /// (the process holding it may go away). The pair is appended after the normal quarantine so
    /// the queue stays ordered by release time.
    pub fn bind_failed(&mut self, now: Instant, rtp: u16) {
        let until = self.quarantine.back().map_or(now, |(t, _)| *t).max(now + self.hold * 10);
        self.quarantine.push_back((until, rtp));
    }

    /// Pairs currently handed out (neither free nor in quarantine).
    pub fn in_use(&self) -> usize {
        self.total - self.free.len() - self.quarantine.len()
    }

    pub fn in_quarantine(&self) -> usize {
        self.quarantine.len()
    }

    pub fn capacity(&self) -> usize {
        self.total
    }

    /// When the oldest quarantined pair becomes free.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.quarantine.front().map(|(t, _)| *t)
    }

    /// Moves pairs whose quarantine has ended back to the free list.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(until, port)) = self.quarantine.front() {
            if until > now {
                break;
            }
            self.quarantine.pop_front();
            self.free.push_back(port);
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // virtual time starts from one real instant
mod tests {
    use super::*;

    fn range(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn pairs_are_even_and_inside_the_range() {
        let t0 = Instant::now();
        let mut a = PortAllocator::new(range(30001, 30006), Duration::from_secs(5));
        assert_eq!(a.capacity(), 2);
        assert_eq!(a.allocate(t0), Some(30002));
        assert_eq!(a.allocate(t0), Some(30004));
        assert_eq!(a.allocate(t0), None);
        assert_eq!(a.in_use(), 2);
    }

    #[test]
    fn released_pairs_wait_out_the_quarantine() {
        let t0 = Instant::now();
        let q = Duration::from_secs(5);
        let mut a = PortAllocator::new(range(30000, 30001), q);
        let p = a.allocate(t0).unwrap();
        a.release(t0, p);
        assert_eq!(a.in_use(), 0);
        assert_eq!(a.in_quarantine(), 1);
        assert_eq!(a.allocate(t0 + q - Duration::from_millis(1)), None);
        assert_eq!(a.allocate(t0 + q), Some(p));
    }

    #[test]
    fn fifo_reuse_spreads_ports() {
        let t0 = Instant::now();
        let mut a = PortAllocator::new(range(30000, 30009), Duration::ZERO);
        let p = a.allocate(t0).unwrap();
        a.release(t0, p);
        // the released pair goes to the back: every other pair is used first
        let next: Vec<u16> = (0..5).map_while(|_| a.allocate(t0)).collect();
        assert_eq!(next, vec![30002, 30004, 30006, 30008, 30000]);
    }

    #[test]
    fn bind_failures_stay_out_longer() {
        let t0 = Instant::now();
        let q = Duration::from_secs(1);
        let mut a = PortAllocator::new(range(30000, 30001), q);
        let p = a.allocate(t0).unwrap();
        a.bind_failed(t0, p);
        assert_eq!(a.allocate(t0 + q * 9), None);
        assert_eq!(a.allocate(t0 + q * 10), Some(p));
    }
}
