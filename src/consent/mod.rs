//! The consent gate: a per-call, sans-IO state machine that decides whether and from when a call
//! may be recorded, plus the IVR prompts it plays ([`prompts`]).
//!
//! A [`Gate`] is driven like quinn's `Connection`: inputs (`on_answered`, `on_digit`,
//! `on_signal`, `on_ended`, `handle_timeout`) take the current [`Instant`]; the driver then drains
//! [`Gate::poll_action`] and sleeps until [`Gate::poll_timeout`]. The gate never reads a clock,
//! plays audio, touches the network or writes the ledger itself: it returns [`Action`]s (play the
//! prompt, release the held INVITE, start or stop recording, append a ledger record) that the
//! recording-path driver carries out. Digits are read only through [`Digit::as_char`] and are
//! never kept beyond the revoke-sequence position.
//!
//! States: `unknown -> granted | declined | no_answer`, `granted -> revoked`, all terminal but
//! `granted`. A configured non-consent lawful basis (`not_required`) starts as permitted and is
//! recorded as that basis, never as consent; revocation does not apply to it (consent that was
//! never asked for cannot be withdrawn: a revoke key or a `revoked` signal is ignored and
//! counted by the driver through [`Gate::ignored`]). A grant after a revocation is ignored too:
//! the ledger then proves one simple story per call (at most one grant, at most one revocation
//! after it), and a caller who changes their mind again can be asked on a new call.
//!
//! Every call ends with at least one ledger record: a call that ends before any decision is
//! recorded as `no_answer`, so "no record" never has to be interpreted.

pub mod prompts;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{self, ConsentMode};
use crate::dtmf::Digit;
use crate::sip::events::ConsentSignal;
use crate::sip::sdp::Leg;

/// Everything the gate needs from configuration, resolved for one call's route.
#[derive(Debug, Clone)]
pub struct GateConfig {
    pub mode: ConsentMode,
    pub lawful_basis: String,
    pub grant: Digit,
    pub decline: Digit,
    pub revoke: Vec<Digit>,
    pub window: Duration,
    pub purge_on_revoke: bool,
    pub ivr_timeout: Duration,
    pub ivr_reprompts: u32,
    /// Length of the IVR prompt to play; None = no prompt available (IVR cannot ask).
    pub prompt_len: Option<Duration>,
}

/// The key a validated config string names. [`config::ConsentConfig::validate`] has checked the
/// strings, so `fallback` is only reached with an unvalidated config; it keeps the gate total.
fn key_of(s: &str, fallback: Digit) -> Digit {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Digit::ALL.iter().copied().find(|d| d.as_char() == c).unwrap_or(fallback),
        _ => fallback,
    }
}

impl GateConfig {
    /// The gate settings for a call on `route` (route overrides already resolved in
    /// [`config::Route`]).
    pub fn new(consent: &config::ConsentConfig, route: &config::Route, prompt_len: Option<Duration>) -> GateConfig {
        GateConfig {
            mode: route.consent,
            lawful_basis: route.lawful_basis.clone(),
            grant: key_of(&consent.grant_digit, Digit::D1),
            decline: key_of(&consent.decline_digit, Digit::D2),
            revoke: consent
                .revoke_sequence
                .chars()
                .filter_map(|c| Digit::ALL.iter().copied().find(|d| d.as_char() == c))
                .collect(),
            window: Duration::from_secs(consent.window_s),
            purge_on_revoke: consent.purge_on_revoke,
            ivr_timeout: Duration::from_secs(consent.ivr_timeout_s),
            ivr_reprompts: consent.ivr_reprompts,
            prompt_len,
        }
    }
}

/// How a decision was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Ivr,
    Dtmf,
    Header,
    Api,
    NotRequired,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Ivr => "ivr",
            Method::Dtmf => "dtmf",
            Method::Header => "header",
            Method::Api => "api",
            Method::NotRequired => "not_required",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        [Method::Ivr, Method::Dtmf, Method::Header, Method::Api, Method::NotRequired]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// What was decided (a ledger record's outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Granted,
    Declined,
    Revoked,
    NoAnswer,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Granted => "granted",
            Decision::Declined => "declined",
            Decision::Revoked => "revoked",
            Decision::NoAnswer => "no_answer",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        [Decision::Granted, Decision::Declined, Decision::Revoked, Decision::NoAnswer]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// The lawful basis a decision rests on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Basis {
    Consent,
    /// A configured non-consent basis (e.g. `legal_obligation`).
    Other(String),
}

impl Basis {
    /// `consent`, or the configured basis name.
    pub fn as_str(&self) -> &str {
        match self {
            Basis::Consent => "consent",
            Basis::Other(name) => name,
        }
    }
}

/// A trusted signal's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The consent header on a message from a configured PBX upstream (never the carrier).
    Header,
    /// The HTTP API.
    Api,
}

impl Source {
    fn method(self) -> Method {
        match self {
            Source::Header => Method::Header,
            Source::Api => Method::Api,
        }
    }
}

/// What the driver must do, in the order returned. A grant's `Ledger` comes before its
/// `StartRecording`, so the ledger id exists for `LawfulBasis::Consent { ledger_ref }` when the
/// recording opens; a revocation's `StopRecording` comes before its `Ledger`, so the record can
/// name the recording it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// IVR: (re)play the prompt toward the caller.
    PlayPrompt,
    StopPrompt,
    /// IVR over: the proxy forwards the held INVITE.
    ReleaseInvite,
    /// Recording may start NOW (not earlier).
    StartRecording {
        basis: Basis,
        method: Method,
    },
    /// Stop recording at once; `purge` deletes what was recorded for the call.
    StopRecording {
        purge: bool,
    },
    /// Append a ledger record.
    Ledger {
        decision: Decision,
        method: Method,
        basis: Basis,
    },
}

/// Where the question stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not asked yet (dtmf before the answer) or waiting for a trusted signal (header, api).
    Waiting,
    /// IVR: prompt played at most `plays_left` more times; no key by `deadline` = replay or give up.
    Ivr { deadline: Instant, plays_left: u32 },
    /// dtmf: the caller's keys count until `deadline`.
    Window { deadline: Instant },
    /// Recording permitted (consent granted, or a non-consent basis).
    Granted,
    /// Terminal: declined, no answer, revoked or ended.
    Closed,
}

/// The consent gate of one call (see the module docs).
#[derive(Debug)]
pub struct Gate {
    cfg: GateConfig,
    phase: Phase,
    /// The basis the current grant rests on (meaningful in [`Phase::Granted`]).
    basis: Basis,
    recording: bool,
    /// Position in the revoke sequence (how many keys matched so far).
    revoke_pos: usize,
    /// Inputs that arrived but did not apply (wrong source, revoke of a non-consent basis, ...).
    ignored: u64,
    actions: VecDeque<Action>,
}

impl Gate {
    /// `held`: the proxy holds the INVITE for callveil's IVR (mode ivr, INVITE with SDP).
    pub fn new(cfg: GateConfig, now: Instant, held: bool) -> Gate {
        let mut g = Gate {
            phase: Phase::Waiting,
            basis: Basis::Consent,
            recording: false,
            revoke_pos: 0,
            ignored: 0,
            actions: VecDeque::new(),
            cfg,
        };
        match g.cfg.mode {
            ConsentMode::NotRequired => {
                let basis = Basis::Other(g.cfg.lawful_basis.clone());
                g.basis = basis.clone();
                g.phase = Phase::Granted;
                g.recording = true;
                g.push(Action::Ledger {
                    decision: Decision::Granted,
                    method: Method::NotRequired,
                    basis: basis.clone(),
                });
                g.push(Action::StartRecording { basis, method: Method::NotRequired });
            }
            ConsentMode::Ivr if held && g.cfg.prompt_len.is_some() => {
                let len = g.cfg.prompt_len.unwrap_or_default();
                g.phase = Phase::Ivr { deadline: now + len + g.cfg.ivr_timeout, plays_left: g.cfg.ivr_reprompts };
                g.push(Action::PlayPrompt);
            }
            ConsentMode::Ivr => {
                // Held without a prompt: the IVR cannot ask, so the call goes on unrecorded.
                // Not held (e.g. an INVITE without SDP): there is no early media to ask over.
                if held {
                    g.push(Action::ReleaseInvite);
                }
                g.close_with(Decision::NoAnswer, Method::Ivr);
            }
            ConsentMode::Dtmf | ConsentMode::Header | ConsentMode::Api => {}
        }
        // The proxy holds INVITEs only for the IVR; a hold in any other mode would never be
        // released, so release it at once rather than strand the call.
        if held && g.cfg.mode != ConsentMode::Ivr {
            g.push(Action::ReleaseInvite);
        }
        g
    }

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn close_with(&mut self, decision: Decision, method: Method) {
        self.phase = Phase::Closed;
        self.push(Action::Ledger { decision, method, basis: Basis::Consent });
    }

    fn grant(&mut self, method: Method) {
        self.phase = Phase::Granted;
        self.basis = Basis::Consent;
        self.recording = true;
        self.revoke_pos = 0;
        self.push(Action::Ledger { decision: Decision::Granted, method, basis: Basis::Consent });
        self.push(Action::StartRecording { basis: Basis::Consent, method });
    }

    fn revoke(&mut self, method: Method) {
        self.phase = Phase::Closed;
        self.recording = false;
        self.push(Action::StopRecording { purge: self.cfg.purge_on_revoke });
        self.push(Action::Ledger { decision: Decision::Revoked, method, basis: Basis::Consent });
    }

    /// The call was answered (2xx to the initial INVITE): opens the dtmf-mode window.
    pub fn on_answered(&mut self, now: Instant) {
        if self.cfg.mode == ConsentMode::Dtmf && self.phase == Phase::Waiting {
            self.phase = Phase::Window { deadline: now + self.cfg.window };
        }
    }

    /// A key press (RFC 4733, in-band or SIP INFO). Only `Leg::Caller` keys decide or revoke.
    pub fn on_digit(&mut self, now: Instant, leg: Leg, digit: Digit) {
        if leg != Leg::Caller {
            return;
        }
        // A key that arrives after a deadline the driver has not yet reported is judged late:
        // the timeout wins, so a decision never lands outside the window it was asked in.
        self.handle_timeout(now);
        match self.phase {
            Phase::Ivr { .. } => {
                let decision = if digit == self.cfg.grant {
                    Decision::Granted
                } else if digit == self.cfg.decline {
                    Decision::Declined
                } else {
                    return;
                };
                self.push(Action::StopPrompt);
                self.push(Action::ReleaseInvite);
                match decision {
                    Decision::Granted => self.grant(Method::Ivr),
                    _ => self.close_with(Decision::Declined, Method::Ivr),
                }
            }
            Phase::Window { .. } => {
                if digit == self.cfg.grant {
                    self.grant(Method::Dtmf);
                } else if digit == self.cfg.decline {
                    self.close_with(Decision::Declined, Method::Dtmf);
                }
            }
            Phase::Granted => self.revoke_key(digit),
            Phase::Waiting | Phase::Closed => {}
        }
    }

    fn revoke_key(&mut self, digit: Digit) {
        if self.basis != Basis::Consent || self.cfg.revoke.is_empty() {
            return;
        }
        if self.cfg.revoke.get(self.revoke_pos) == Some(&digit) {
            self.revoke_pos += 1;
        } else {
            // A wrong key resets; it may itself start the sequence again (`**9` revokes `*9`).
            self.revoke_pos = usize::from(self.cfg.revoke.first() == Some(&digit));
        }
        if self.revoke_pos == self.cfg.revoke.len() {
            self.revoke_pos = 0;
            self.revoke(Method::Dtmf);
        }
    }

    /// A trusted signal (PBX header via the proxy, or the HTTP API).
    pub fn on_signal(&mut self, now: Instant, source: Source, signal: ConsentSignal) {
        self.handle_timeout(now);
        let method = source.method();
        match signal {
            ConsentSignal::Revoked => {
                if self.phase == Phase::Granted && self.basis == Basis::Consent {
                    self.revoke(method);
                } else {
                    // Nothing to revoke: undecided, declined, already revoked, or a non-consent basis.
                    self.ignored += 1;
                }
            }
            ConsentSignal::Granted | ConsentSignal::Declined => {
                let decides = matches!(
                    (self.cfg.mode, source),
                    (ConsentMode::Header, Source::Header) | (ConsentMode::Api, Source::Api)
                );
                if !decides || self.phase != Phase::Waiting {
                    self.ignored += 1;
                    return;
                }
                if signal == ConsentSignal::Granted {
                    self.grant(method);
                } else {
                    self.close_with(Decision::Declined, method);
                }
            }
        }
    }

    /// The call is over: everything stops. A pending IVR does not release the INVITE (there is
    /// no call left to forward); an undecided call is recorded as `no_answer`.
    pub fn on_ended(&mut self, _now: Instant) {
        match self.phase {
            Phase::Ivr { .. } => {
                self.push(Action::StopPrompt);
                self.close_with(Decision::NoAnswer, Method::Ivr);
            }
            Phase::Window { .. } => self.close_with(Decision::NoAnswer, Method::Dtmf),
            Phase::Waiting => {
                let method = match self.cfg.mode {
                    ConsentMode::Header => Method::Header,
                    ConsentMode::Api => Method::Api,
                    _ => Method::Dtmf,
                };
                self.close_with(Decision::NoAnswer, method);
            }
            Phase::Granted => {
                self.phase = Phase::Closed;
                if self.recording {
                    self.recording = false;
                    self.push(Action::StopRecording { purge: false });
                }
            }
            Phase::Closed => {}
        }
    }

    /// Acts on every deadline at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Ivr { deadline, plays_left } if now >= deadline => {
                if plays_left > 0 {
                    let len = self.cfg.prompt_len.unwrap_or_default();
                    self.phase = Phase::Ivr { deadline: now + len + self.cfg.ivr_timeout, plays_left: plays_left - 1 };
                    self.push(Action::PlayPrompt);
                } else {
                    self.push(Action::StopPrompt);
                    self.push(Action::ReleaseInvite);
                    self.close_with(Decision::NoAnswer, Method::Ivr);
                }
            }
            Phase::Window { deadline } if now >= deadline => self.close_with(Decision::NoAnswer, Method::Dtmf),
            _ => {}
        }
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Ivr { deadline, .. } | Phase::Window { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// Next action; drain after every input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether recording is permitted at this instant.
    pub fn recording_permitted(&self) -> bool {
        self.recording
    }

    /// Whether the caller's DTMF matters now (IVR waiting, dtmf window open, or granted and the
    /// revoke sequence must be watched): the driver runs DTMF detection only then.
    pub fn wants_dtmf(&self) -> bool {
        match self.phase {
            Phase::Ivr { .. } | Phase::Window { .. } => true,
            Phase::Granted => self.basis == Basis::Consent && !self.cfg.revoke.is_empty(),
            Phase::Waiting | Phase::Closed => false,
        }
    }

    /// How many signals were ignored (wrong source for the mode, nothing to revoke, a grant
    /// after a decision); the driver exports it as a metric.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }
}

#[cfg(test)]
mod tests;
