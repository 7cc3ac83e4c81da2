//! Server transactions (RFC 3261 §17.2, figures 7 and 8, with the RFC 6026 "Accepted" state).
//!
//! A server transaction sends the responses its TU built, re-sends the last one when the request
//! is retransmitted, retransmits a non-2xx final to an INVITE until the ACK arrives (Timer G) or
//! gives up (Timer H), and lingers long enough to absorb late retransmissions. It does not parse
//! requests, build responses (not even the 100 Trying: the TU sends that), or retransmit 2xx
//! responses, which are end-to-end and belong to the UAS (RFC 3261 §13.3.1.4).

use std::fmt;
use std::time::{Duration, Instant};

use super::{
    after, classify, earliest, earliest_due, Class, Due, Kind, Outbox, Received, Retransmit, TimedOut, Timers,
};

/// RFC 3261 §17.2 server states. INVITE starts in `Proceeding` and may reach `Accepted` (RFC 6026)
/// or `Completed` then `Confirmed`; non-INVITE starts in `Trying` and never uses those two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Trying,
    Proceeding,
    Accepted,
    Completed,
    Confirmed,
    Terminated,
}

/// One server transaction. Inputs: [`on_retransmit`](Self::on_retransmit),
/// [`on_ack`](Self::on_ack), [`send_response`](Self::send_response),
/// [`on_transport_error`](Self::on_transport_error), [`handle_timeout`](Self::handle_timeout). Outputs: [`poll_transmit`](Self::poll_transmit),
/// [`poll_timeout`](Self::poll_timeout) and the `TimedOut` returned by `handle_timeout`. Queries:
/// [`state`](Self::state), [`final_sent`](Self::final_sent),
/// [`retransmissions`](Self::retransmissions), [`absorbed`](Self::absorbed).
pub struct ServerTransaction {
    kind: Kind,
    state: ServerState,
    reliable: bool,
    timers: Timers,
    /// Timer G (INVITE, non-2xx final, unreliable only).
    retransmit: Option<Retransmit>,
    /// Timer H (INVITE, non-2xx final).
    timeout: Option<Instant>,
    /// Timer I or L (INVITE), J (non-INVITE).
    linger: Option<Instant>,
    /// What a retransmitted request is answered with: the last provisional, or the final.
    last_response: Option<Vec<u8>>,
    final_code: Option<u16>,
    out: Outbox,
    retransmissions: u32,
    absorbed: u32,
}

impl ServerTransaction {
    /// The TU has just received the request. No timer runs until the first final response, so the
    /// time is not needed; it is taken to keep both constructors alike.
    pub fn new(kind: Kind, _now: Instant, reliable: bool, timers: Timers) -> Self {
        let state = match kind {
            Kind::Invite => ServerState::Proceeding,
            Kind::NonInvite => ServerState::Trying,
        };
        ServerTransaction {
            kind,
            state,
            reliable,
            timers,
            retransmit: None,
            timeout: None,
            linger: None,
            last_response: None,
            final_code: None,
            out: Outbox::default(),
            retransmissions: 0,
            absorbed: 0,
        }
    }

    /// A retransmission of the request arrived: the last response (if any) is queued again and the
    /// request is absorbed. In Accepted nothing is re-sent, since 2xx retransmission is the UAS's
    /// job (RFC 6026); in Trying there is nothing to re-send yet.
    pub fn on_retransmit(&mut self, _now: Instant) {
        self.absorbed = self.absorbed.saturating_add(1);
        let resend = match self.state {
            ServerState::Proceeding | ServerState::Completed => true,
            ServerState::Trying | ServerState::Accepted | ServerState::Confirmed | ServerState::Terminated => false,
        };
        if resend {
            self.resend_last();
        }
    }

    /// An ACK matched this INVITE transaction. Returns Absorb when it acknowledges our non-2xx
    /// final (hop-by-hop); Deliver when the transaction is in Accepted/Proceeding (the ACK is for a
    /// 2xx and is end-to-end: the proxy forwards it). An ACK never belongs to a non-INVITE
    /// transaction, so there it is absorbed without effect.
    pub fn on_ack(&mut self, now: Instant) -> Received {
        if self.kind == Kind::NonInvite {
            return Received::Absorb;
        }
        match self.state {
            ServerState::Proceeding | ServerState::Accepted => Received::Deliver,
            ServerState::Completed => {
                self.state = ServerState::Confirmed;
                self.retransmit = None;
                self.timeout = None;
                let i = if self.reliable { Duration::ZERO } else { self.timers.t4 };
                self.linger = after(now, i);
                Received::Absorb
            }
            ServerState::Confirmed | ServerState::Terminated | ServerState::Trying => {
                self.absorbed = self.absorbed.saturating_add(1);
                Received::Absorb
            }
        }
    }

    /// The TU sends a response (bytes already built). Queued for transmission. Ignored (returns
    /// false) if illegal in the current state (a second final, a 1xx after a final, anything once
    /// Terminated, a code outside 100–699), true otherwise. Further 2xx are legal in Accepted: the
    /// UAS retransmits its 2xx and other forks may answer too (RFC 6026).
    pub fn send_response(&mut self, now: Instant, code: u16, bytes: Vec<u8>) -> bool {
        let Some(class) = classify(code) else {
            return false;
        };
        let legal = match self.kind {
            Kind::Invite => self.invite_response(now, code, class),
            Kind::NonInvite => self.non_invite_response(now, code, class),
        };
        if !legal {
            return false;
        }
        self.out.push(bytes.clone());
        // Re-sent only from Proceeding (the last provisional) and Completed (the final).
        self.last_response = Some(bytes);
        true
    }

    /// Applies the state change for a response the TU sends; false if it is illegal.
    fn invite_response(&mut self, now: Instant, code: u16, class: Class) -> bool {
        match (self.state, class) {
            (ServerState::Proceeding, Class::Provisional) => true,
            (ServerState::Proceeding, Class::Success) => {
                self.final_code = Some(code);
                self.state = ServerState::Accepted;
                self.linger = after(now, self.timers.t1x64());
                true
            }
            (ServerState::Proceeding, Class::Failure) => {
                self.final_code = Some(code);
                self.state = ServerState::Completed;
                self.retransmit = if self.reliable { None } else { Retransmit::start(now, self.timers.t1) };
                self.timeout = after(now, self.timers.t1x64());
                true
            }
            (ServerState::Accepted, Class::Success) => true,
            _ => false,
        }
    }

    fn non_invite_response(&mut self, now: Instant, code: u16, class: Class) -> bool {
        match (self.state, class) {
            (ServerState::Trying | ServerState::Proceeding, Class::Provisional) => {
                self.state = ServerState::Proceeding;
                true
            }
            (ServerState::Trying | ServerState::Proceeding, Class::Success | Class::Failure) => {
                self.final_code = Some(code);
                self.state = ServerState::Completed;
                let j = if self.reliable { Duration::ZERO } else { self.timers.t1x64() };
                self.linger = after(now, j);
                true
            }
            _ => false,
        }
    }

    fn resend_last(&mut self) {
        if let Some(last) = &self.last_response {
            if self.out.push_resend(last) {
                self.retransmissions = self.retransmissions.saturating_add(1);
            }
        }
    }

    /// Bytes to (re)send towards the request's sender. Drain until `None` after every input.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop()
    }

    /// The earliest armed timer; `None` once Terminated.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.timeout, self.linger, self.retransmit)
    }

    /// Fires every timer due at or before `now`, in deadline order, so a late call catches up.
    /// Returns `TimedOut::TimerH` if the ACK for a non-2xx final never came.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<TimedOut> {
        let mut timed_out = None;
        while let Some(due) = earliest_due(now, self.timeout, self.linger, self.retransmit) {
            match due {
                Due::Timeout => {
                    self.terminate();
                    timed_out = Some(TimedOut::TimerH);
                }
                Due::Linger => self.terminate(),
                Due::Retransmit => {
                    let Some(timer) = self.retransmit else {
                        break;
                    };
                    self.resend_last();
                    // Timer G doubles, capped at T2 (§17.2.1).
                    self.retransmit = timer.next(timer.interval.saturating_mul(2).min(self.timers.t2));
                }
            }
        }
        timed_out
    }

    /// The transport could not deliver a response (RFC 3261 §17.2.4, after the §18.2.2 fallbacks
    /// failed): Terminated at once, nothing more is sent. No `TimedOut` follows.
    pub fn on_transport_error(&mut self) {
        self.terminate();
        self.out = Outbox::default();
    }

    fn terminate(&mut self) {
        self.state = ServerState::Terminated;
        self.retransmit = None;
        self.timeout = None;
        self.linger = None;
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// The status code of the first final response sent, if any.
    pub fn final_sent(&self) -> Option<u16> {
        self.final_code
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Responses this transaction re-sent on its own: answers to retransmitted requests and
    /// Timer G firings (for `sip_retransmissions_sent`).
    pub fn retransmissions(&self) -> u32 {
        self.retransmissions
    }

    /// Retransmitted requests and duplicate ACKs this transaction absorbed (for
    /// `sip_retransmissions_absorbed`). The ACK that confirms a non-2xx final is not counted.
    pub fn absorbed(&self) -> u32 {
        self.absorbed
    }
}

/// Shows state and sizes only: response bytes carry personal data that must not reach logs.
impl fmt::Debug for ServerTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTransaction")
            .field("kind", &self.kind)
            .field("state", &self.state)
            .field("reliable", &self.reliable)
            .field("final_sent", &self.final_code)
            .field("queued", &self.out.len())
            .field("retransmissions", &self.retransmissions)
            .finish_non_exhaustive()
    }
}
