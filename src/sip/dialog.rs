//! Call state as the proxy sees it: one [`Dialog`] per INVITE-initiated call, keyed by Call-ID.
//!
//! The proxy does not need dialog state to route (Record-Route and loose routing carry that), but
//! the layers after it do: media anchoring needs to know which leg a description came from, the
//! consent gate and the vault need the caller's identity, and operators need calls counted by
//! outcome. Identity is held as [`Pii`] so a `Debug` of a dialog cannot leak it. This module does
//! not send anything; the proxy reports events to it and reads its answers.
//!
//! One dialog per Call-ID is a simplification: callveil forwards an INVITE to one upstream at a
//! time (sequential failover, no parallel forking), so at most one early dialog can confirm.

use std::collections::HashMap;
use std::time::Instant;

use crate::metrics::{CallOutcome, SipMetrics};
use crate::pii::Pii;
use crate::sip::sdp::Leg;
use crate::sip::Peer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// INVITE forwarded, no response with a To tag yet.
    Trying,
    /// A provisional response with a To tag arrived.
    Early,
    /// A 2xx arrived.
    Confirmed,
    Terminated,
}

#[derive(Debug, Clone)]
pub struct Dialog {
    pub state: DialogState,
    /// From tag of the initial INVITE: requests carrying it come from the caller leg.
    pub caller_tag: String,
    /// The caller's identity (From URI user part, or tel: number).
    pub caller: Pii<String>,
    /// The dialled identity (Request-URI user part).
    pub callee: Pii<String>,
    pub started: Instant,
    pub answered: Option<Instant>,
    /// Where each leg can be reached: its Contact URI and the address its messages came from
    /// (caller) or went to (callee). Used only to route in-dialog requests from user agents that
    /// ignore Record-Route and send them to callveil without a Route header.
    pub caller_contact: Option<Pii<String>>,
    pub caller_peer: Option<Peer>,
    pub callee_contact: Option<Pii<String>>,
    pub callee_peer: Option<Peer>,
}

/// Everything the proxy records about a new INVITE.
#[derive(Debug, Clone)]
pub struct NewCall<'a> {
    pub call_id: &'a str,
    pub caller_tag: &'a str,
    pub caller: Pii<String>,
    pub callee: Pii<String>,
    pub caller_contact: Option<Pii<String>>,
    pub caller_peer: Peer,
}

/// All dialogs of one proxy.
#[derive(Debug)]
pub struct Dialogs {
    by_call_id: HashMap<String, Dialog>,
    metrics: SipMetrics,
    /// Call-IDs removed since the last [`Dialogs::take_ended`]: every way a call ends passes
    /// through `remove`, so the proxy learns of each end exactly once from here.
    ended: Vec<String>,
}

impl Dialogs {
    pub fn new(metrics: SipMetrics) -> Dialogs {
        Dialogs { by_call_id: HashMap::new(), metrics, ended: Vec::new() }
    }

    pub fn get(&self, call_id: &str) -> Option<&Dialog> {
        self.by_call_id.get(call_id)
    }

    pub fn len(&self) -> usize {
        self.by_call_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_call_id.is_empty()
    }

    /// An initial INVITE was forwarded. A repeated call (same Call-ID) keeps the first record.
    /// Returns true when a new dialog was created.
    pub fn invite(&mut self, now: Instant, call: NewCall<'_>) -> bool {
        if self.by_call_id.contains_key(call.call_id) {
            return false;
        }
        self.metrics.dialogs_active.inc();
        self.by_call_id.insert(
            call.call_id.to_string(),
            Dialog {
                state: DialogState::Trying,
                caller_tag: call.caller_tag.to_string(),
                caller: call.caller,
                callee: call.callee,
                started: now,
                answered: None,
                caller_contact: call.caller_contact,
                caller_peer: Some(call.caller_peer),
                callee_contact: None,
                callee_peer: None,
            },
        );
        true
    }

    /// The callee leg answered from `peer` with this Contact (on a 1xx with tag or a 2xx).
    pub fn callee_reached(&mut self, call_id: &str, contact: Option<Pii<String>>, peer: Peer) {
        if let Some(d) = self.by_call_id.get_mut(call_id) {
            if contact.is_some() {
                d.callee_contact = contact;
            }
            d.callee_peer = Some(peer);
        }
    }

    /// Which leg sent a request that carries `from_tag` in its From header.
    pub fn leg_of_request(&self, call_id: &str, from_tag: Option<&str>) -> Leg {
        match (self.by_call_id.get(call_id), from_tag) {
            (Some(d), Some(tag)) if d.caller_tag != tag => Leg::Callee,
            _ => Leg::Caller,
        }
    }

    /// A response to the initial INVITE arrived (and is being forwarded).
    pub fn invite_response(&mut self, now: Instant, call_id: &str, code: u16, has_to_tag: bool) {
        let Some(d) = self.by_call_id.get_mut(call_id) else { return };
        match code {
            101..=199 if has_to_tag && d.state == DialogState::Trying => d.state = DialogState::Early,
            200..=299 if d.state != DialogState::Confirmed && d.state != DialogState::Terminated => {
                d.state = DialogState::Confirmed;
                d.answered = Some(now);
                self.metrics.call(CallOutcome::Answered);
            }
            300..=699 if d.state != DialogState::Confirmed => {
                let outcome = if code == 487 {
                    CallOutcome::Cancelled
                } else if code == 408 {
                    CallOutcome::TimedOut
                } else {
                    CallOutcome::Rejected
                };
                self.metrics.call(outcome);
                self.remove(call_id);
            }
            _ => {}
        }
    }

    /// The dialog ended (BYE answered or timed out). Returns true when a dialog was removed.
    pub fn terminate(&mut self, call_id: &str) -> bool {
        self.remove(call_id)
    }

    /// The Call-IDs of dialogs removed since the last call, oldest first.
    pub fn take_ended(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ended)
    }

    /// Whether any dialog ended since the last [`Dialogs::take_ended`] (cheap, for the hot path).
    pub fn has_ended(&self) -> bool {
        !self.ended.is_empty()
    }

    fn remove(&mut self, call_id: &str) -> bool {
        if self.by_call_id.remove(call_id).is_some() {
            self.metrics.dialogs_active.dec();
            self.ended.push(call_id.to_string());
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn lifecycle_and_outcomes() {
        let m = Metrics::new();
        let mut d = Dialogs::new(m.sip.clone());
        let t0 = Instant::now();
        let peer = Peer::udp("127.0.0.1:5061".parse().unwrap());
        let call = |id, tag| NewCall {
            call_id: id,
            caller_tag: tag,
            caller: Pii::new("+34600".into()),
            callee: Pii::new("100".into()),
            caller_contact: None,
            caller_peer: peer,
        };
        d.invite(t0, call("c1", "ft"));
        assert_eq!(d.leg_of_request("c1", Some("ft")), Leg::Caller);
        assert_eq!(d.leg_of_request("c1", Some("tt")), Leg::Callee);
        d.invite_response(t0, "c1", 180, true);
        assert_eq!(d.get("c1").unwrap().state, DialogState::Early);
        d.invite_response(t0, "c1", 200, true);
        d.invite_response(t0, "c1", 200, true); // retransmission counts once
        assert_eq!(d.get("c1").unwrap().state, DialogState::Confirmed);
        assert!(d.terminate("c1"));
        assert!(!d.terminate("c1"));
        assert!(d.is_empty());
        assert_eq!(d.take_ended(), vec!["c1".to_string()]);
        assert!(!d.has_ended());
        d.invite(t0, call("c2", "a"));
        d.invite_response(t0, "c2", 487, true);
        assert!(d.is_empty());
        let text = m.encode();
        assert!(text.contains("callveil_sip_calls_total{outcome=\"Answered\"} 1"), "{text}");
        assert!(text.contains("callveil_sip_calls_total{outcome=\"Cancelled\"} 1"), "{text}");
        assert!(text.contains("callveil_sip_dialogs_active 0"), "{text}");
        assert!(!format!("{:?}", d.get("c1")).contains("+34600"));
    }
}
