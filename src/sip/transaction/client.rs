//! Client transactions (RFC 3261 §17.1, figures 5 and 6, with the RFC 6026 "Accepted" state).
//!
//! A client transaction owns the bytes of a request the TU already sent once, retransmits them on
//! unreliable transports (Timers A and E), gives up after 64·T1 (Timers B and F), and tells the TU
//! which responses to act on. For a non-2xx final to an INVITE it re-sends the hop-by-hop ACK that
//! the TU built (`set_ack`) each time the final is retransmitted. It does not parse responses,
//! build ACKs or CANCELs, or run the proxy's Timer C.

use std::fmt;
use std::time::{Duration, Instant};

use super::{
    after, classify, earliest, earliest_due, Class, Due, Kind, Outbox, Received, Retransmit, TimedOut, Timers,
};

/// RFC 3261 §17.1 client states. `Calling` is the INVITE initial state, `Trying` the non-INVITE
/// one; `Accepted` exists only for INVITE (RFC 6026).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Calling,
    Trying,
    Proceeding,
    Accepted,
    Completed,
    Terminated,
}

/// One client transaction. Inputs: [`on_response`](Self::on_response), [`set_ack`](Self::set_ack),
/// [`on_transport_error`](Self::on_transport_error), [`handle_timeout`](Self::handle_timeout). Outputs: [`poll_transmit`](Self::poll_transmit),
/// [`poll_timeout`](Self::poll_timeout), [`needs_ack`](Self::needs_ack) and the `TimedOut` returned
/// by `handle_timeout`. Queries: [`state`](Self::state), [`got_provisional`](Self::got_provisional),
/// [`retransmissions`](Self::retransmissions), [`absorbed`](Self::absorbed).
pub struct ClientTransaction {
    kind: Kind,
    state: ClientState,
    request: Vec<u8>,
    reliable: bool,
    timers: Timers,
    /// Timer A (INVITE) or E (non-INVITE).
    retransmit: Option<Retransmit>,
    /// Timer B (INVITE) or F (non-INVITE).
    timeout: Option<Instant>,
    /// Timer D or M (INVITE), K (non-INVITE).
    linger: Option<Instant>,
    final_code: Option<u16>,
    got_provisional: bool,
    ack: Option<Vec<u8>>,
    out: Outbox,
    retransmissions: u32,
    absorbed: u32,
}

impl ClientTransaction {
    /// `request` is the exact bytes already sent once by the caller; kept for retransmission.
    pub fn new(kind: Kind, now: Instant, request: Vec<u8>, reliable: bool, timers: Timers) -> Self {
        let state = match kind {
            Kind::Invite => ClientState::Calling,
            Kind::NonInvite => ClientState::Trying,
        };
        // RFC 3261 §17.1.1.2 / §17.1.2.2: a reliable transport retransmits for us.
        let retransmit = if reliable { None } else { Retransmit::start(now, timers.t1) };
        ClientTransaction {
            kind,
            state,
            request,
            reliable,
            timers,
            retransmit,
            timeout: after(now, timers.t1x64()),
            linger: None,
            final_code: None,
            got_provisional: false,
            ack: None,
            out: Outbox::default(),
            retransmissions: 0,
            absorbed: 0,
        }
    }

    /// A response matched this transaction. Codes outside 100–699 are absorbed without effect.
    ///
    /// For INVITE a 2xx is delivered in every state but Terminated, even after a non-2xx final:
    /// 2xx responses are end-to-end (RFC 6026) and dropping one would leave the callee's dialog
    /// dangling. A Terminated transaction absorbs everything; the TU should have dropped it and
    /// treat later responses as unmatched (RFC 3261 §16.7 and RFC 6026 forward them statelessly).
    pub fn on_response(&mut self, now: Instant, code: u16) -> Received {
        let Some(class) = classify(code) else {
            return Received::Absorb;
        };
        let received = match self.kind {
            Kind::Invite => self.invite_response(now, code, class),
            Kind::NonInvite => self.non_invite_response(now, code, class),
        };
        if received == Received::Absorb {
            self.absorbed = self.absorbed.saturating_add(1);
        }
        received
    }

    fn invite_response(&mut self, now: Instant, code: u16, class: Class) -> Received {
        use ClientState::*;
        match (self.state, class) {
            (Calling | Proceeding, Class::Provisional) => {
                self.state = Proceeding;
                self.got_provisional = true;
                // The proxy runs its own Timer C from here (RFC 3261 §16.6 step 11).
                self.retransmit = None;
                self.timeout = None;
                Received::Deliver
            }
            (Calling | Proceeding, Class::Success) => {
                self.enter_final(code);
                self.state = Accepted;
                self.linger = after(now, self.timers.t1x64());
                Received::Deliver
            }
            (Calling | Proceeding, Class::Failure) => {
                self.enter_final(code);
                self.state = Completed;
                // At least 32 s (§17.1.1.2), and never shorter than the server's Timer H, for which
                // it keeps retransmitting the final we must ACK.
                let d = if self.reliable { Duration::ZERO } else { Duration::from_secs(32).max(self.timers.t1x64()) };
                self.linger = after(now, d);
                Received::Deliver
            }
            (Completed, Class::Failure) => {
                // The final is retransmitted because our ACK was lost (§17.1.1.2).
                if let Some(ack) = &self.ack {
                    if self.out.push_resend(ack) {
                        self.retransmissions = self.retransmissions.saturating_add(1);
                    }
                }
                Received::Absorb
            }
            (Accepted | Completed, Class::Success) => Received::Deliver,
            (Accepted | Completed, Class::Provisional) | (Accepted, Class::Failure) => Received::Absorb,
            (Terminated, _) => Received::Absorb,
            // Unreachable states for INVITE: absorbing keeps this total without a panic.
            (Trying, _) => Received::Absorb,
        }
    }

    fn non_invite_response(&mut self, now: Instant, code: u16, class: Class) -> Received {
        use ClientState::*;
        match (self.state, class) {
            (Trying | Proceeding, Class::Provisional) => {
                // Timer E keeps running; from here on it re-arms with T2 (§17.1.2.2).
                self.state = Proceeding;
                self.got_provisional = true;
                Received::Deliver
            }
            (Trying | Proceeding, Class::Success | Class::Failure) => {
                self.enter_final(code);
                self.state = Completed;
                let k = if self.reliable { Duration::ZERO } else { self.timers.t4 };
                self.linger = after(now, k);
                Received::Deliver
            }
            (Completed | Terminated, _) => Received::Absorb,
            (Calling | Accepted, _) => Received::Absorb,
        }
    }

    fn enter_final(&mut self, code: u16) {
        self.final_code = Some(code);
        self.retransmit = None;
        self.timeout = None;
    }

    /// True right after an INVITE got its first non-2xx final, until the TU calls `set_ack`.
    pub fn needs_ack(&self) -> bool {
        self.kind == Kind::Invite && self.ack.is_none() && self.final_code.is_some_and(|c| c >= 300)
    }

    /// ACK bytes for a non-2xx final (built by the TU); queued now and re-sent for each
    /// retransmitted final. Ignored unless [`needs_ack`](Self::needs_ack) is true, so a second call
    /// cannot replace the ACK. Accepted even after a zero Timer D terminated the transaction, so a
    /// TU that drives timers before building the ACK still gets it sent.
    pub fn set_ack(&mut self, ack: Vec<u8>) {
        if !self.needs_ack() {
            return;
        }
        self.out.push(ack.clone());
        self.ack = Some(ack);
    }

    /// Bytes to (re)send to the transaction's destination: retransmissions and ACKs. Drain until
    /// `None` after every input.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop()
    }

    /// The earliest armed timer; `None` once Terminated.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.timeout, self.linger, self.retransmit)
    }

    /// Fires every timer due at or before `now`, in deadline order, so a late call catches up.
    /// Returns the timeout the TU must act on, if Timer B or F was among them.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<TimedOut> {
        let mut timed_out = None;
        while let Some(due) = earliest_due(now, self.timeout, self.linger, self.retransmit) {
            match due {
                Due::Timeout => {
                    self.terminate();
                    timed_out = Some(match self.kind {
                        Kind::Invite => TimedOut::TimerB,
                        Kind::NonInvite => TimedOut::TimerF,
                    });
                }
                Due::Linger => self.terminate(),
                Due::Retransmit => self.fire_retransmit(),
            }
        }
        timed_out
    }

    fn fire_retransmit(&mut self) {
        let Some(timer) = self.retransmit else {
            return;
        };
        if self.out.push_resend(&self.request) {
            self.retransmissions = self.retransmissions.saturating_add(1);
        }
        let interval = match (self.kind, self.state) {
            // Timer A doubles without a cap (§17.1.1.2).
            (Kind::Invite, _) => timer.interval.saturating_mul(2),
            // Timer E: doubling capped at T2 while Trying, T2 flat once a 1xx arrived (§17.1.2.2).
            (Kind::NonInvite, ClientState::Proceeding) => self.timers.t2,
            (Kind::NonInvite, _) => timer.interval.saturating_mul(2).min(self.timers.t2),
        };
        self.retransmit = timer.next(interval);
    }

    /// The transport reported that the request could not be sent (TCP connect or write failed,
    /// ICMP unreachable): Terminated at once (RFC 3261 §17.1.4). The TU treats it like a 503 and
    /// may try the next upstream; no `TimedOut` follows and nothing more is sent.
    pub fn on_transport_error(&mut self) {
        self.terminate();
        self.out = Outbox::default();
    }

    fn terminate(&mut self) {
        self.state = ClientState::Terminated;
        self.retransmit = None;
        self.timeout = None;
        self.linger = None;
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// A 1xx has been received (CANCEL may be sent only after this, RFC 3261 §9.1).
    pub fn got_provisional(&self) -> bool {
        self.got_provisional
    }

    pub fn request(&self) -> &[u8] {
        &self.request
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The first final status code received, if any.
    pub fn final_code(&self) -> Option<u16> {
        self.final_code
    }

    /// Requests and ACKs this transaction re-sent on its own (for `sip_retransmissions_sent`). The
    /// first ACK, queued by `set_ack`, is not a retransmission.
    pub fn retransmissions(&self) -> u32 {
        self.retransmissions
    }

    /// Responses this transaction absorbed (for `sip_retransmissions_absorbed`).
    pub fn absorbed(&self) -> u32 {
        self.absorbed
    }
}

/// Shows state and sizes only: the request and ACK bytes carry personal data (URIs, display
/// names) that must not reach logs.
impl fmt::Debug for ClientTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTransaction")
            .field("kind", &self.kind)
            .field("state", &self.state)
            .field("reliable", &self.reliable)
            .field("final_code", &self.final_code)
            .field("request_len", &self.request.len())
            .field("queued", &self.out.len())
            .field("retransmissions", &self.retransmissions)
            .finish_non_exhaustive()
    }
}
