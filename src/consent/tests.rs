//! State-machine tests of the consent gate on virtual time: every mode, timeout and revocation.

use super::*;

const D1: Digit = Digit::D1;
const D2: Digit = Digit::D2;

fn cfg(mode: ConsentMode) -> GateConfig {
    GateConfig {
        mode,
        lawful_basis: "legal_obligation".into(),
        grant: D1,
        decline: D2,
        revoke: vec![Digit::Star, Digit::D9],
        window: Duration::from_secs(30),
        purge_on_revoke: true,
        ivr_timeout: Duration::from_secs(8),
        ivr_reprompts: 1,
        prompt_len: Some(Duration::from_secs(6)),
    }
}

fn drain(g: &mut Gate) -> Vec<Action> {
    std::iter::from_fn(|| g.poll_action()).collect()
}

fn ledger(decision: Decision, method: Method) -> Action {
    Action::Ledger { decision, method, basis: Basis::Consent }
}

fn start(method: Method) -> Action {
    Action::StartRecording { basis: Basis::Consent, method }
}

/// Virtual time starts at one arbitrary real instant; every later instant is computed from it.
#[allow(clippy::disallowed_methods)] // reason: a test needs one base Instant; nothing waits on it
fn origin() -> Instant {
    Instant::now()
}

fn secs(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

#[test]
fn config_resolves_route_and_keys() {
    let settings = crate::config::Settings::embedded();
    let route = &settings.routes[0];
    let c = GateConfig::new(&settings.raw.consent, route, None);
    assert_eq!(c.mode, route.consent);
    assert_eq!(c.grant.as_char(), settings.raw.consent.grant_digit.chars().next().unwrap());
    assert_eq!(c.decline.as_char(), settings.raw.consent.decline_digit.chars().next().unwrap());
    let revoke: String = c.revoke.iter().map(Digit::as_char).collect();
    assert_eq!(revoke, settings.raw.consent.revoke_sequence);
    assert_eq!(c.window, Duration::from_secs(settings.raw.consent.window_s));
    assert_eq!(c.prompt_len, None);
}

#[test]
fn not_required_records_as_other_basis_at_once_and_ignores_revocation() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::NotRequired), t0, false);
    let basis = Basis::Other("legal_obligation".into());
    assert_eq!(
        drain(&mut g),
        vec![
            Action::Ledger { decision: Decision::Granted, method: Method::NotRequired, basis: basis.clone() },
            Action::StartRecording { basis, method: Method::NotRequired },
        ]
    );
    assert!(g.recording_permitted());
    assert!(!g.wants_dtmf(), "no consent to revoke: no DTMF detection needed");
    for d in [Digit::Star, Digit::D9] {
        g.on_digit(secs(t0, 1), Leg::Caller, d);
    }
    g.on_signal(secs(t0, 2), Source::Header, ConsentSignal::Revoked);
    g.on_signal(secs(t0, 2), Source::Api, ConsentSignal::Declined);
    assert_eq!(drain(&mut g), vec![]);
    assert_eq!(g.ignored(), 2);
    assert!(g.recording_permitted());
    g.on_ended(secs(t0, 60));
    assert_eq!(drain(&mut g), vec![Action::StopRecording { purge: false }]);
    assert!(!g.recording_permitted());
}

#[test]
fn ivr_grant_releases_and_starts_recording_at_the_key() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Ivr), t0, true);
    assert_eq!(drain(&mut g), vec![Action::PlayPrompt]);
    assert!(g.wants_dtmf());
    assert!(!g.recording_permitted());
    assert_eq!(g.poll_timeout(), Some(secs(t0, 14)));
    // Barge-in during the prompt counts; the agent's keys and other keys do not.
    g.on_digit(secs(t0, 3), Leg::Callee, D1);
    g.on_digit(secs(t0, 3), Leg::Caller, Digit::D5);
    assert_eq!(drain(&mut g), vec![]);
    assert!(!g.recording_permitted());
    g.on_digit(secs(t0, 4), Leg::Caller, D1);
    assert_eq!(
        drain(&mut g),
        vec![Action::StopPrompt, Action::ReleaseInvite, ledger(Decision::Granted, Method::Ivr), start(Method::Ivr)]
    );
    assert!(g.recording_permitted());
    assert_eq!(g.poll_timeout(), None);
    assert!(g.wants_dtmf(), "the revoke sequence is watched");
    // The answer opens nothing new; a second grant key changes nothing.
    g.on_answered(secs(t0, 5));
    g.on_digit(secs(t0, 6), Leg::Caller, D1);
    assert_eq!(drain(&mut g), vec![]);
}

#[test]
fn ivr_decline() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Ivr), t0, true);
    drain(&mut g);
    g.on_digit(secs(t0, 7), Leg::Caller, D2);
    assert_eq!(drain(&mut g), vec![Action::StopPrompt, Action::ReleaseInvite, ledger(Decision::Declined, Method::Ivr)]);
    assert!(!g.recording_permitted());
    assert!(!g.wants_dtmf());
    // Declined is final: a later grant key or trusted grant does nothing.
    g.on_digit(secs(t0, 8), Leg::Caller, D1);
    g.on_signal(secs(t0, 8), Source::Header, ConsentSignal::Granted);
    assert_eq!(drain(&mut g), vec![]);
    assert!(!g.recording_permitted());
}

#[test]
fn ivr_reprompts_then_gives_up_as_no_answer() {
    let t0 = origin();
    let mut c = cfg(ConsentMode::Ivr);
    c.ivr_reprompts = 2;
    let mut g = Gate::new(c, t0, true);
    assert_eq!(drain(&mut g), vec![Action::PlayPrompt]);
    // Just before the deadline: nothing.
    g.handle_timeout(secs(t0, 14) - Duration::from_millis(1));
    assert_eq!(drain(&mut g), vec![]);
    g.handle_timeout(secs(t0, 14));
    assert_eq!(drain(&mut g), vec![Action::PlayPrompt]);
    assert_eq!(g.poll_timeout(), Some(secs(t0, 28)));
    g.handle_timeout(secs(t0, 28));
    assert_eq!(drain(&mut g), vec![Action::PlayPrompt]);
    assert_eq!(g.poll_timeout(), Some(secs(t0, 42)));
    g.handle_timeout(secs(t0, 42));
    assert_eq!(drain(&mut g), vec![Action::StopPrompt, Action::ReleaseInvite, ledger(Decision::NoAnswer, Method::Ivr)]);
    assert_eq!(g.poll_timeout(), None);
    assert!(!g.wants_dtmf());
    g.on_digit(secs(t0, 43), Leg::Caller, D1);
    assert_eq!(drain(&mut g), vec![]);
    assert!(!g.recording_permitted());
}

#[test]
fn ivr_key_after_an_unreported_deadline_is_late() {
    let t0 = origin();
    let mut c = cfg(ConsentMode::Ivr);
    c.ivr_reprompts = 0;
    let mut g = Gate::new(c, t0, true);
    drain(&mut g);
    g.on_digit(secs(t0, 15), Leg::Caller, D1);
    assert_eq!(drain(&mut g), vec![Action::StopPrompt, Action::ReleaseInvite, ledger(Decision::NoAnswer, Method::Ivr)]);
    assert!(!g.recording_permitted());
}

#[test]
fn ivr_key_during_a_replay_counts() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Ivr), t0, true);
    drain(&mut g);
    g.handle_timeout(secs(t0, 14));
    assert_eq!(drain(&mut g), vec![Action::PlayPrompt]);
    g.on_digit(secs(t0, 20), Leg::Caller, D1);
    assert_eq!(
        drain(&mut g),
        vec![Action::StopPrompt, Action::ReleaseInvite, ledger(Decision::Granted, Method::Ivr), start(Method::Ivr)]
    );
}

#[test]
fn ivr_without_prompt_or_hold_records_nothing() {
    let t0 = origin();
    let mut c = cfg(ConsentMode::Ivr);
    c.prompt_len = None;
    let mut g = Gate::new(c, t0, true);
    assert_eq!(drain(&mut g), vec![Action::ReleaseInvite, ledger(Decision::NoAnswer, Method::Ivr)]);
    assert_eq!(g.poll_timeout(), None);

    let mut g = Gate::new(cfg(ConsentMode::Ivr), t0, false);
    assert_eq!(drain(&mut g), vec![ledger(Decision::NoAnswer, Method::Ivr)]);
    g.on_answered(secs(t0, 1));
    g.on_digit(secs(t0, 2), Leg::Caller, D1);
    assert_eq!(drain(&mut g), vec![]);
    assert!(!g.recording_permitted());
    assert!(!g.wants_dtmf());
}

#[test]
fn ivr_hang_up_during_prompt_stops_without_release() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Ivr), t0, true);
    drain(&mut g);
    g.on_ended(secs(t0, 2));
    assert_eq!(drain(&mut g), vec![Action::StopPrompt, ledger(Decision::NoAnswer, Method::Ivr)]);
    assert_eq!(g.poll_timeout(), None);
    g.handle_timeout(secs(t0, 100));
    g.on_digit(secs(t0, 100), Leg::Caller, D1);
    assert_eq!(drain(&mut g), vec![]);
}

#[test]
fn dtmf_keys_count_only_inside_the_window() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Dtmf), t0, false);
    assert_eq!(drain(&mut g), vec![]);
    assert!(!g.wants_dtmf(), "nothing asked while ringing");
    // Keys during ringing do not count.
    g.on_digit(secs(t0, 1), Leg::Caller, D1);
    assert_eq!(drain(&mut g), vec![]);
    assert_eq!(g.poll_timeout(), None);
    g.on_answered(secs(t0, 5));
    assert!(g.wants_dtmf());
    assert_eq!(g.poll_timeout(), Some(secs(t0, 35)));
    g.on_digit(secs(t0, 10), Leg::Callee, D1);
    assert_eq!(drain(&mut g), vec![]);
    g.on_digit(secs(t0, 34), Leg::Caller, D1);
    assert_eq!(drain(&mut g), vec![ledger(Decision::Granted, Method::Dtmf), start(Method::Dtmf)]);
    assert!(g.recording_permitted());
    assert_eq!(g.poll_timeout(), None);
}

#[test]
fn dtmf_decline_and_window_expiry() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Dtmf), t0, false);
    g.on_answered(t0);
    g.on_digit(secs(t0, 3), Leg::Caller, D2);
    assert_eq!(drain(&mut g), vec![ledger(Decision::Declined, Method::Dtmf)]);
    g.on_digit(secs(t0, 4), Leg::Caller, D1);
    assert_eq!(drain(&mut g), vec![]);
    assert!(!g.recording_permitted());

    let mut g = Gate::new(cfg(ConsentMode::Dtmf), t0, false);
    g.on_answered(t0);
    g.handle_timeout(secs(t0, 29));
    assert_eq!(drain(&mut g), vec![]);
    g.handle_timeout(secs(t0, 30));
    assert_eq!(drain(&mut g), vec![ledger(Decision::NoAnswer, Method::Dtmf)]);
    g.on_digit(secs(t0, 31), Leg::Caller, D1);
    assert_eq!(drain(&mut g), vec![]);
    assert!(!g.wants_dtmf());
}

#[test]
fn dtmf_call_ending_before_any_decision_is_no_answer() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Dtmf), t0, false);
    g.on_ended(secs(t0, 4));
    assert_eq!(drain(&mut g), vec![ledger(Decision::NoAnswer, Method::Dtmf)]);
    let mut g = Gate::new(cfg(ConsentMode::Dtmf), t0, false);
    g.on_answered(t0);
    g.on_ended(secs(t0, 4));
    assert_eq!(drain(&mut g), vec![ledger(Decision::NoAnswer, Method::Dtmf)]);
}

#[test]
fn header_mode_decides_on_header_only() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Header), t0, false);
    g.on_answered(t0);
    g.on_digit(secs(t0, 1), Leg::Caller, D1);
    g.on_signal(secs(t0, 2), Source::Api, ConsentSignal::Granted);
    assert_eq!(drain(&mut g), vec![]);
    assert_eq!(g.ignored(), 1);
    assert!(!g.wants_dtmf());
    g.on_signal(secs(t0, 3), Source::Header, ConsentSignal::Granted);
    assert_eq!(drain(&mut g), vec![ledger(Decision::Granted, Method::Header), start(Method::Header)]);
    assert!(g.recording_permitted());
    // Revoked from the other trusted source applies.
    g.on_signal(secs(t0, 9), Source::Api, ConsentSignal::Revoked);
    assert_eq!(drain(&mut g), vec![Action::StopRecording { purge: true }, ledger(Decision::Revoked, Method::Api)]);
    assert!(!g.recording_permitted());
}

#[test]
fn api_mode_decides_on_api_only() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Api), t0, false);
    g.on_signal(secs(t0, 1), Source::Header, ConsentSignal::Declined);
    assert_eq!(drain(&mut g), vec![]);
    g.on_signal(secs(t0, 2), Source::Api, ConsentSignal::Declined);
    assert_eq!(drain(&mut g), vec![ledger(Decision::Declined, Method::Api)]);
    g.on_signal(secs(t0, 3), Source::Api, ConsentSignal::Granted);
    assert_eq!(drain(&mut g), vec![]);
    assert!(!g.recording_permitted());
    // Nothing to revoke after a decline.
    g.on_signal(secs(t0, 4), Source::Api, ConsentSignal::Revoked);
    assert_eq!(drain(&mut g), vec![]);

    let mut g = Gate::new(cfg(ConsentMode::Api), t0, false);
    assert_eq!(g.poll_timeout(), None, "api and header modes wait without a deadline");
    g.on_ended(secs(t0, 100));
    assert_eq!(drain(&mut g), vec![ledger(Decision::NoAnswer, Method::Api)]);
}

#[test]
fn revoke_before_grant_is_ignored() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Header), t0, false);
    g.on_signal(t0, Source::Header, ConsentSignal::Revoked);
    assert_eq!(drain(&mut g), vec![]);
    assert_eq!(g.ignored(), 1);
    g.on_signal(secs(t0, 1), Source::Header, ConsentSignal::Granted);
    assert_eq!(drain(&mut g).len(), 2);
}

#[test]
fn revoke_sequence_from_the_caller_stops_and_purges() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Dtmf), t0, false);
    g.on_answered(t0);
    g.on_digit(secs(t0, 1), Leg::Caller, D1);
    drain(&mut g);
    // Agent keys never revoke; a wrong key resets; a repeated first key restarts the sequence.
    g.on_digit(secs(t0, 2), Leg::Callee, Digit::Star);
    g.on_digit(secs(t0, 2), Leg::Caller, Digit::D9);
    g.on_digit(secs(t0, 3), Leg::Caller, Digit::Star);
    g.on_digit(secs(t0, 4), Leg::Caller, Digit::D5);
    g.on_digit(secs(t0, 5), Leg::Caller, Digit::D9);
    assert_eq!(drain(&mut g), vec![]);
    assert!(g.recording_permitted());
    // Still fine long after the window: revocation applies any time during the call.
    g.on_digit(secs(t0, 600), Leg::Caller, Digit::Star);
    g.on_digit(secs(t0, 601), Leg::Caller, Digit::Star);
    g.on_digit(secs(t0, 602), Leg::Caller, Digit::D9);
    assert_eq!(drain(&mut g), vec![Action::StopRecording { purge: true }, ledger(Decision::Revoked, Method::Dtmf)]);
    assert!(!g.recording_permitted());
    assert!(!g.wants_dtmf());
    // A grant after revocation is ignored, by key and by signal.
    g.on_digit(secs(t0, 603), Leg::Caller, D1);
    g.on_signal(secs(t0, 603), Source::Header, ConsentSignal::Granted);
    g.on_signal(secs(t0, 604), Source::Header, ConsentSignal::Revoked);
    g.on_ended(secs(t0, 700));
    assert_eq!(drain(&mut g), vec![]);
    assert!(!g.recording_permitted());
}

#[test]
fn revoke_in_ivr_mode_without_purge() {
    let t0 = origin();
    let mut c = cfg(ConsentMode::Ivr);
    c.purge_on_revoke = false;
    let mut g = Gate::new(c, t0, true);
    g.on_digit(secs(t0, 1), Leg::Caller, D1);
    drain(&mut g);
    g.on_signal(secs(t0, 50), Source::Header, ConsentSignal::Revoked);
    assert_eq!(drain(&mut g), vec![Action::StopRecording { purge: false }, ledger(Decision::Revoked, Method::Header)]);
}

#[test]
fn hold_outside_ivr_mode_is_released_at_once() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Dtmf), t0, true);
    assert_eq!(drain(&mut g), vec![Action::ReleaseInvite]);
}

#[test]
fn granted_call_ending_stops_recording_without_purge() {
    let t0 = origin();
    let mut g = Gate::new(cfg(ConsentMode::Api), t0, false);
    g.on_signal(t0, Source::Api, ConsentSignal::Granted);
    drain(&mut g);
    g.on_ended(secs(t0, 30));
    assert_eq!(drain(&mut g), vec![Action::StopRecording { purge: false }]);
    assert!(!g.wants_dtmf());
    g.on_signal(secs(t0, 31), Source::Api, ConsentSignal::Revoked);
    assert_eq!(drain(&mut g), vec![]);
}

#[test]
fn names_round_trip() {
    for m in [Method::Ivr, Method::Dtmf, Method::Header, Method::Api, Method::NotRequired] {
        assert_eq!(Method::parse(m.as_str()), Some(m));
    }
    for d in [Decision::Granted, Decision::Declined, Decision::Revoked, Decision::NoAnswer] {
        assert_eq!(Decision::parse(d.as_str()), Some(d));
    }
    assert_eq!(Basis::Consent.as_str(), "consent");
    assert_eq!(Basis::Other("contract".into()).as_str(), "contract");
}
