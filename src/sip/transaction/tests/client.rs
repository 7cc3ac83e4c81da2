//! Client transactions: RFC 3261 figures 5 (INVITE) and 6 (non-INVITE), RFC 6026 Accepted.

use std::time::Instant;

use super::{drain, ms, run_until, secs, send_times, Event};
use crate::sip::transaction::{ClientState, ClientTransaction, Kind, Received, TimedOut, Timers};

const REQ: &[u8] = b"INVITE sip:+15551234567@pbx SIP/2.0\r\n\r\n";
const ACK: &[u8] = b"ACK sip:+15551234567@pbx SIP/2.0\r\n\r\n";

fn invite(t0: Instant, reliable: bool) -> ClientTransaction {
    ClientTransaction::new(Kind::Invite, t0, REQ.to_vec(), reliable, Timers::default())
}

fn non_invite(t0: Instant, reliable: bool) -> ClientTransaction {
    ClientTransaction::new(Kind::NonInvite, t0, REQ.to_vec(), reliable, Timers::default())
}

// ---- INVITE, figure 5 ----

#[test]
fn invite_unreliable_timer_a_doubles_then_timer_b_at_32s() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    assert_eq!(t.state(), ClientState::Calling);
    assert_eq!(t.poll_transmit(), None, "the caller sent the first copy itself");
    assert_eq!(t.request(), REQ);

    let events = run_until(&mut t, t0, secs(60));
    // Intervals 0.5, 1, 2, 4, 8, 16 s: no cap on Timer A.
    assert_eq!(send_times(&events), vec![ms(500), ms(1_500), ms(3_500), ms(7_500), ms(15_500), ms(31_500)]);
    assert!(events.iter().all(|e| !matches!(e, Event::Sent(_, b) if b != REQ)));
    assert_eq!(events.last(), Some(&Event::TimedOut(secs(32), TimedOut::TimerB)));
    assert_eq!(t.state(), ClientState::Terminated);
    assert!(t.is_terminated());
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.retransmissions(), 6);
    assert!(!t.got_provisional());
}

#[test]
fn invite_reliable_never_retransmits_but_still_times_out() {
    let t0 = Instant::now();
    let mut t = invite(t0, true);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(32)));
    let events = run_until(&mut t, t0, secs(60));
    assert_eq!(events, vec![Event::TimedOut(secs(32), TimedOut::TimerB)]);
    assert_eq!(t.retransmissions(), 0);
}

#[test]
fn invite_timer_b_follows_t1() {
    let t0 = Instant::now();
    let timers = Timers { t1: secs(1), ..Timers::default() };
    let mut t = ClientTransaction::new(Kind::Invite, t0, REQ.to_vec(), true, timers);
    assert_eq!(t.handle_timeout(t0 + ms(63_999)), None);
    assert_eq!(t.handle_timeout(t0 + secs(64)), Some(TimedOut::TimerB));
}

#[test]
fn invite_provisional_stops_timers_a_and_b() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    run_until(&mut t, t0, secs(2)); // A fired at 0.5 and 1.5
    assert_eq!(t.on_response(t0 + secs(2), 100), Received::Deliver);
    assert_eq!(t.state(), ClientState::Proceeding);
    assert!(t.got_provisional());
    assert_eq!(t.poll_timeout(), None, "Timer C is the proxy's, not ours");
    assert_eq!(t.handle_timeout(t0 + secs(3_600)), None);
    assert_eq!(t.poll_transmit(), None);
    assert_eq!(t.state(), ClientState::Proceeding);
    // Further provisionals are delivered too (180 after 100, 183 after 180).
    assert_eq!(t.on_response(t0 + secs(3), 180), Received::Deliver);
    assert_eq!(t.on_response(t0 + secs(4), 183), Received::Deliver);
    assert_eq!(t.state(), ClientState::Proceeding);
    assert_eq!(t.retransmissions(), 2);
    assert_eq!(t.absorbed(), 0);
}

#[test]
fn invite_2xx_from_calling_enters_accepted_for_timer_m() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    assert_eq!(t.on_response(t0 + secs(1), 200), Received::Deliver);
    assert_eq!(t.state(), ClientState::Accepted);
    assert_eq!(t.final_code(), Some(200));
    assert!(!t.needs_ack(), "the ACK for a 2xx is end-to-end, not ours");
    assert_eq!(t.poll_timeout(), Some(t0 + secs(33)), "Timer M = 64*T1, Timer A/B gone");
    // More 2xx (retransmissions or other forks) go to the TU; anything else is absorbed.
    assert_eq!(t.on_response(t0 + secs(2), 200), Received::Deliver);
    assert_eq!(t.on_response(t0 + secs(2), 299), Received::Deliver);
    assert_eq!(t.on_response(t0 + secs(3), 180), Received::Absorb);
    assert_eq!(t.on_response(t0 + secs(3), 486), Received::Absorb);
    assert_eq!(t.state(), ClientState::Accepted);
    assert_eq!(t.absorbed(), 2);
    assert!(!t.got_provisional());
    assert_eq!(t.handle_timeout(t0 + ms(32_999)), None);
    assert_eq!(t.state(), ClientState::Accepted);
    assert_eq!(t.handle_timeout(t0 + secs(33)), None, "Timer M is not a failure");
    assert!(t.is_terminated());
    assert_eq!(t.poll_transmit(), None);
    // Terminated: the TU should have dropped it; nothing is delivered any more.
    assert_eq!(t.on_response(t0 + secs(34), 200), Received::Absorb);
}

#[test]
fn invite_2xx_from_proceeding_enters_accepted() {
    let t0 = Instant::now();
    let mut t = invite(t0, true);
    assert_eq!(t.on_response(t0, 180), Received::Deliver);
    assert_eq!(t.on_response(t0 + secs(5), 200), Received::Deliver);
    assert_eq!(t.state(), ClientState::Accepted);
    // Timer M does not shrink on reliable transports (RFC 6026).
    assert_eq!(t.poll_timeout(), Some(t0 + secs(37)));
}

#[test]
fn invite_failure_completes_and_acks_each_retransmitted_final() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    run_until(&mut t, t0, secs(1)); // one retransmission at 0.5 s
    assert_eq!(t.on_response(t0 + secs(1), 486), Received::Deliver);
    assert_eq!(t.state(), ClientState::Completed);
    assert!(t.needs_ack());
    assert_eq!(t.poll_transmit(), None);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(33)), "Timer D = 32 s from the final");

    t.set_ack(ACK.to_vec());
    assert!(!t.needs_ack());
    assert_eq!(drain(&mut t), vec![ACK.to_vec()]);
    assert_eq!(t.retransmissions(), 1, "the first ACK is not a retransmission");

    // Our ACK was lost: the final comes again; we ACK again and absorb it.
    assert_eq!(t.on_response(t0 + secs(2), 486), Received::Absorb);
    assert_eq!(drain(&mut t), vec![ACK.to_vec()]);
    // A different non-2xx code in Completed is still a final for this transaction.
    assert_eq!(t.on_response(t0 + secs(3), 600), Received::Absorb);
    assert_eq!(drain(&mut t), vec![ACK.to_vec()]);
    assert_eq!(t.retransmissions(), 3);
    assert_eq!(t.absorbed(), 2);

    // A second set_ack cannot replace the first.
    t.set_ack(b"other".to_vec());
    assert_eq!(t.poll_transmit(), None);
    assert_eq!(t.on_response(t0 + secs(4), 486), Received::Absorb);
    assert_eq!(drain(&mut t), vec![ACK.to_vec()]);

    assert_eq!(t.handle_timeout(t0 + ms(32_999)), None);
    assert_eq!(t.state(), ClientState::Completed);
    assert_eq!(t.handle_timeout(t0 + secs(33)), None);
    assert!(t.is_terminated());
    assert_eq!(t.on_response(t0 + secs(34), 486), Received::Absorb);
    assert_eq!(t.poll_transmit(), None, "Terminated re-sends nothing");
    assert_eq!(t.final_code(), Some(486));
}

#[test]
fn invite_failure_from_proceeding_completes() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    assert_eq!(t.on_response(t0, 180), Received::Deliver);
    assert_eq!(t.on_response(t0 + secs(10), 302), Received::Deliver);
    assert_eq!(t.state(), ClientState::Completed);
    assert!(t.needs_ack());
    assert_eq!(t.poll_timeout(), Some(t0 + secs(42)));
}

#[test]
fn invite_in_completed_delivers_2xx_and_absorbs_1xx() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    t.on_response(t0, 487);
    t.set_ack(ACK.to_vec());
    drain(&mut t);
    assert_eq!(t.on_response(t0 + secs(1), 183), Received::Absorb);
    assert_eq!(t.on_response(t0 + secs(1), 200), Received::Deliver, "2xx are end-to-end, never swallowed");
    assert_eq!(t.state(), ClientState::Completed);
    assert_eq!(t.poll_transmit(), None, "a 2xx is not ACKed by the transaction");
}

#[test]
fn invite_retransmitted_final_before_set_ack_sends_nothing() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    t.on_response(t0, 503);
    assert_eq!(t.on_response(t0, 503), Received::Absorb);
    assert_eq!(t.poll_transmit(), None);
    assert!(t.needs_ack());
    t.set_ack(ACK.to_vec());
    assert_eq!(drain(&mut t), vec![ACK.to_vec()]);
}

#[test]
fn invite_reliable_timer_d_is_zero() {
    let t0 = Instant::now();
    let mut t = invite(t0, true);
    t.on_response(t0 + secs(1), 404);
    assert_eq!(t.state(), ClientState::Completed);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(1)), "due at once, fires on the next handle_timeout");
    t.set_ack(ACK.to_vec());
    assert_eq!(t.handle_timeout(t0 + secs(1)), None);
    assert!(t.is_terminated());
    assert_eq!(drain(&mut t), vec![ACK.to_vec()], "queued bytes survive termination");
}

#[test]
fn invite_ack_accepted_after_zero_timer_d_already_fired() {
    let t0 = Instant::now();
    let mut t = invite(t0, true);
    t.on_response(t0, 404);
    t.handle_timeout(t0);
    assert!(t.is_terminated());
    assert!(t.needs_ack());
    t.set_ack(ACK.to_vec());
    assert_eq!(drain(&mut t), vec![ACK.to_vec()]);
}

#[test]
fn invite_timer_d_is_at_least_64_t1() {
    let t0 = Instant::now();
    let timers = Timers { t1: secs(1), ..Timers::default() };
    let mut t = ClientTransaction::new(Kind::Invite, t0, REQ.to_vec(), false, timers);
    t.on_response(t0, 486);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(64)), "the server's Timer H keeps resending for 64*T1");
}

#[test]
fn invite_set_ack_ignored_unless_needed() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    t.set_ack(ACK.to_vec());
    assert_eq!(t.poll_transmit(), None, "no final yet");
    t.on_response(t0, 200);
    t.set_ack(ACK.to_vec());
    assert_eq!(t.poll_transmit(), None, "2xx ACK is the UAC's");
    assert!(!t.needs_ack());
}

#[test]
fn invite_late_handle_timeout_fires_every_due_timer_once() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    // A was due at 0.5, 1.5, 3.5 and 7.5 s: one copy goes out, the schedule catches up.
    assert_eq!(t.handle_timeout(t0 + secs(10)), None);
    assert_eq!(drain(&mut t), vec![REQ.to_vec()]);
    assert_eq!(t.poll_timeout(), Some(t0 + ms(15_500)));
    assert_eq!(t.state(), ClientState::Calling);
    // Now A at 15.5 and 31.5 and B at 32 are all due: B wins and reports once.
    assert_eq!(t.handle_timeout(t0 + secs(100)), Some(TimedOut::TimerB));
    assert!(t.is_terminated());
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.handle_timeout(t0 + secs(200)), None, "a timeout is reported once");
}

#[test]
fn invite_handle_timeout_before_deadline_does_nothing() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    assert_eq!(t.handle_timeout(t0 + ms(499)), None);
    assert_eq!(t.poll_transmit(), None);
    assert_eq!(t.poll_timeout(), Some(t0 + ms(500)));
}

#[test]
fn invalid_status_codes_are_absorbed_without_effect() {
    let t0 = Instant::now();
    for kind in [Kind::Invite, Kind::NonInvite] {
        let mut t = ClientTransaction::new(kind, t0, REQ.to_vec(), false, Timers::default());
        let before = t.state();
        for code in [0, 1, 99, 700, 999, u16::MAX] {
            assert_eq!(t.on_response(t0, code), Received::Absorb, "{code}");
        }
        assert_eq!(t.state(), before);
        assert_eq!(t.poll_timeout(), Some(t0 + ms(500)));
        assert!(!t.got_provisional());
    }
}

#[test]
fn debug_output_carries_no_message_bytes() {
    let t0 = Instant::now();
    let t = invite(t0, false);
    let shown = format!("{t:?}");
    assert!(!shown.contains("5551234567"), "{shown}");
    assert!(shown.contains("Calling"), "{shown}");
}

// ---- non-INVITE, figure 6 ----

#[test]
fn non_invite_unreliable_timer_e_caps_at_t2_then_timer_f() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, false);
    assert_eq!(t.state(), ClientState::Trying);
    let events = run_until(&mut t, t0, secs(60));
    // Intervals 0.5, 1, 2, 4 (= T2), 4, 4, ... s.
    let expected: Vec<_> =
        [500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500].into_iter().map(ms).collect();
    assert_eq!(send_times(&events), expected);
    assert_eq!(events.last(), Some(&Event::TimedOut(secs(32), TimedOut::TimerF)));
    assert!(t.is_terminated());
    assert_eq!(t.retransmissions(), 10);
}

#[test]
fn non_invite_timer_e_uses_t2_once_proceeding() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, false);
    run_until(&mut t, t0, ms(600)); // E at 0.5, next due at 1.5
    assert_eq!(t.on_response(t0 + secs(1), 100), Received::Deliver);
    assert_eq!(t.state(), ClientState::Proceeding);
    assert!(t.got_provisional());
    assert_eq!(t.poll_timeout(), Some(t0 + ms(1_500)), "the pending E is kept");
    let events = run_until(&mut t, t0, secs(60));
    let expected: Vec<_> = [1_500, 5_500, 9_500, 13_500, 17_500, 21_500, 25_500, 29_500].into_iter().map(ms).collect();
    assert_eq!(send_times(&events), expected);
    assert_eq!(events.last(), Some(&Event::TimedOut(secs(32), TimedOut::TimerF)), "F keeps running in Proceeding");
    assert_eq!(t.state(), ClientState::Terminated);
}

#[test]
fn non_invite_provisional_before_first_e_keeps_it_then_uses_t2() {
    // A 1xx before Timer E ever fired: the first E (at T1) stands, later ones are T2 apart.
    let t0 = Instant::now();
    let mut t = non_invite(t0, false);
    t.on_response(t0 + ms(100), 180);
    let events = run_until(&mut t, t0, secs(10));
    assert_eq!(send_times(&events), vec![ms(500), ms(4_500), ms(8_500)]);
}

#[test]
fn non_invite_final_completes_and_absorbs_everything_until_timer_k() {
    for (code, from_proceeding) in [(200, false), (404, false), (202, true), (503, true)] {
        let t0 = Instant::now();
        let mut t = non_invite(t0, false);
        if from_proceeding {
            assert_eq!(t.on_response(t0, 100), Received::Deliver);
        }
        assert_eq!(t.on_response(t0 + secs(1), code), Received::Deliver);
        assert_eq!(t.state(), ClientState::Completed);
        assert_eq!(t.final_code(), Some(code));
        assert!(!t.needs_ack());
        assert_eq!(t.poll_timeout(), Some(t0 + secs(6)), "Timer K = T4; E and F are gone");
        for later in [100, 200, 404, code] {
            assert_eq!(t.on_response(t0 + secs(2), later), Received::Absorb);
        }
        assert_eq!(t.absorbed(), 4);
        assert_eq!(t.poll_transmit(), None);
        assert_eq!(t.handle_timeout(t0 + ms(5_999)), None);
        assert_eq!(t.state(), ClientState::Completed);
        assert_eq!(t.handle_timeout(t0 + secs(6)), None);
        assert!(t.is_terminated());
        assert_eq!(t.on_response(t0 + secs(7), code), Received::Absorb);
    }
}

#[test]
fn non_invite_reliable_no_e_and_zero_timer_k() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, true);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(32)), "only Timer F");
    assert_eq!(t.on_response(t0 + secs(2), 200), Received::Deliver);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(2)));
    assert_eq!(t.state(), ClientState::Completed);
    assert_eq!(t.handle_timeout(t0 + secs(2)), None);
    assert!(t.is_terminated());
    assert_eq!(t.retransmissions(), 0);
}

#[test]
fn non_invite_reliable_times_out_with_timer_f() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, true);
    assert_eq!(run_until(&mut t, t0, secs(40)), vec![Event::TimedOut(secs(32), TimedOut::TimerF)]);
}

#[test]
fn non_invite_late_call_fires_e_and_f_together() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, false);
    assert_eq!(t.handle_timeout(t0 + secs(40)), Some(TimedOut::TimerF));
    assert_eq!(drain(&mut t), vec![REQ.to_vec()], "the E firings before F coalesce into one copy");
    assert!(t.is_terminated());
}

#[test]
fn zero_t2_does_not_hang() {
    // Config validation forbids this; a hand-built Timers must still not loop forever.
    let t0 = Instant::now();
    let timers = Timers { t1: ms(10), t2: ms(0), t4: ms(0) };
    let mut t = ClientTransaction::new(Kind::NonInvite, t0, REQ.to_vec(), false, timers);
    assert_eq!(t.handle_timeout(t0 + ms(100)), None);
    assert_eq!(t.poll_timeout(), Some(t0 + ms(101)), "E clamped to 1 ms steps");
    assert_eq!(t.handle_timeout(t0 + secs(1)), Some(TimedOut::TimerF));
    let zero = Timers { t1: ms(0), t2: ms(0), t4: ms(0) };
    let mut t = ClientTransaction::new(Kind::Invite, t0, REQ.to_vec(), false, zero);
    assert_eq!(t.handle_timeout(t0), Some(TimedOut::TimerB), "64 * 0 = 0: B is due at once");
}

#[test]
fn transport_error_terminates_from_every_live_state() {
    let t0 = Instant::now();
    let setups: [(Kind, &[u16]); 6] = [
        (Kind::Invite, &[]),
        (Kind::Invite, &[180]),
        (Kind::Invite, &[200]),
        (Kind::Invite, &[486]),
        (Kind::NonInvite, &[]),
        (Kind::NonInvite, &[100]),
    ];
    for (kind, codes) in setups {
        let mut t = ClientTransaction::new(kind, t0, REQ.to_vec(), false, Timers::default());
        for code in codes {
            t.on_response(t0, *code);
        }
        t.set_ack(ACK.to_vec());
        t.handle_timeout(t0 + secs(1));
        t.on_transport_error();
        assert!(t.is_terminated(), "{kind:?} {codes:?}");
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.poll_transmit(), None, "nothing more goes to an unreachable peer");
        assert_eq!(t.handle_timeout(t0 + secs(100)), None, "no TimedOut after a transport error");
    }
}

#[test]
fn timer_f_wins_a_tie_with_timer_e() {
    // With T2 = T1 = 1 s, E is due every second and its 64th firing coincides with F: nothing is
    // sent at the instant the transaction gives up.
    let t0 = Instant::now();
    let timers = Timers { t1: secs(1), t2: secs(1), t4: secs(5) };
    let mut t = ClientTransaction::new(Kind::NonInvite, t0, REQ.to_vec(), false, timers);
    let events = run_until(&mut t, t0, secs(100));
    assert_eq!(send_times(&events), (1..64).map(secs).collect::<Vec<_>>());
    assert_eq!(events.last(), Some(&Event::TimedOut(secs(64), TimedOut::TimerF)));
}
