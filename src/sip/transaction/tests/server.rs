//! Server transactions: RFC 3261 figures 7 (INVITE) and 8 (non-INVITE), RFC 6026 Accepted.

use std::time::Instant;

use super::{drain, ms, run_until, secs, send_times, Event};
use crate::sip::transaction::{Kind, Received, ServerState, ServerTransaction, TimedOut, Timers};

const R100: &[u8] = b"SIP/2.0 100 Trying\r\n\r\n";
const R180: &[u8] = b"SIP/2.0 180 Ringing\r\nTo: \"Alice\" <sip:+15551234567@pbx>\r\n\r\n";
const R200: &[u8] = b"SIP/2.0 200 OK\r\n\r\n";
const R200B: &[u8] = b"SIP/2.0 200 OK\r\nTo: <sip:b@pbx>;tag=fork2\r\n\r\n";
const R486: &[u8] = b"SIP/2.0 486 Busy Here\r\n\r\n";

fn invite(t0: Instant, reliable: bool) -> ServerTransaction {
    ServerTransaction::new(Kind::Invite, t0, reliable, Timers::default())
}

fn non_invite(t0: Instant, reliable: bool) -> ServerTransaction {
    ServerTransaction::new(Kind::NonInvite, t0, reliable, Timers::default())
}

// ---- INVITE, figure 7 ----

#[test]
fn invite_starts_proceeding_with_no_timer() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    assert_eq!(t.state(), ServerState::Proceeding);
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.final_sent(), None);
    t.on_retransmit(t0 + ms(500));
    assert_eq!(t.poll_transmit(), None, "nothing sent yet, nothing to repeat");
    assert_eq!(t.absorbed(), 1);
    assert_eq!(t.retransmissions(), 0);
}

#[test]
fn invite_retransmit_repeats_the_last_provisional() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    assert!(t.send_response(t0, 100, R100.to_vec()));
    assert_eq!(drain(&mut t), vec![R100.to_vec()]);
    t.on_retransmit(t0 + ms(500));
    assert_eq!(drain(&mut t), vec![R100.to_vec()]);
    assert!(t.send_response(t0 + secs(1), 180, R180.to_vec()));
    assert_eq!(drain(&mut t), vec![R180.to_vec()]);
    t.on_retransmit(t0 + ms(1_500));
    t.on_retransmit(t0 + ms(1_500));
    assert_eq!(drain(&mut t), vec![R180.to_vec()], "two retransmits before a drain need one copy");
    assert_eq!(t.state(), ServerState::Proceeding);
    assert_eq!(t.retransmissions(), 2);
    assert_eq!(t.absorbed(), 3);
    assert_eq!(t.poll_timeout(), None, "provisionals start no timer");
}

#[test]
fn invite_ack_in_proceeding_is_delivered() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    assert_eq!(t.on_ack(t0), Received::Deliver);
    assert_eq!(t.state(), ServerState::Proceeding);
}

#[test]
fn invite_2xx_enters_accepted_for_timer_l() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    t.send_response(t0, 180, R180.to_vec());
    assert!(t.send_response(t0 + secs(2), 200, R200.to_vec()));
    assert_eq!(drain(&mut t), vec![R180.to_vec(), R200.to_vec()]);
    assert_eq!(t.state(), ServerState::Accepted);
    assert_eq!(t.final_sent(), Some(200));
    assert_eq!(t.poll_timeout(), Some(t0 + secs(34)), "Timer L = 64*T1");

    // INVITE retransmissions are absorbed without a re-send: the UAS retransmits its 2xx.
    t.on_retransmit(t0 + secs(3));
    assert_eq!(t.poll_transmit(), None);
    // The ACK for the 2xx is end-to-end.
    assert_eq!(t.on_ack(t0 + secs(3)), Received::Deliver);
    assert_eq!(t.on_ack(t0 + secs(4)), Received::Deliver);
    assert_eq!(t.state(), ServerState::Accepted);
    // The TU passes further 2xx through (retransmissions by the UAS, other forks).
    assert!(t.send_response(t0 + secs(4), 200, R200.to_vec()));
    assert!(t.send_response(t0 + secs(4), 200, R200B.to_vec()));
    assert_eq!(drain(&mut t), vec![R200.to_vec(), R200B.to_vec()]);
    // But nothing else.
    assert!(!t.send_response(t0 + secs(5), 180, R180.to_vec()));
    assert!(!t.send_response(t0 + secs(5), 486, R486.to_vec()));
    assert_eq!(t.poll_transmit(), None);
    assert_eq!(t.final_sent(), Some(200));
    assert_eq!(t.retransmissions(), 0);

    assert_eq!(t.handle_timeout(t0 + ms(33_999)), None);
    assert_eq!(t.state(), ServerState::Accepted);
    assert_eq!(t.handle_timeout(t0 + secs(34)), None, "Timer L is not a failure");
    assert!(t.is_terminated());
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn invite_reliable_accepted_keeps_timer_l() {
    let t0 = Instant::now();
    let mut t = invite(t0, true);
    t.send_response(t0, 200, R200.to_vec());
    assert_eq!(t.poll_timeout(), Some(t0 + secs(32)));
}

#[test]
fn invite_failure_timer_g_caps_at_t2_then_timer_h() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    assert!(t.send_response(t0, 486, R486.to_vec()));
    assert_eq!(t.state(), ServerState::Completed);
    assert_eq!(drain(&mut t), vec![R486.to_vec()]);
    let events = run_until(&mut t, t0, secs(60));
    let expected: Vec<_> =
        [500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500].into_iter().map(ms).collect();
    assert_eq!(send_times(&events), expected);
    assert!(events.iter().all(|e| !matches!(e, Event::Sent(_, b) if b != R486)));
    assert_eq!(events.last(), Some(&Event::TimedOut(secs(32), TimedOut::TimerH)));
    assert!(t.is_terminated());
    assert_eq!(t.retransmissions(), 10);
}

#[test]
fn invite_ack_confirms_stops_g_and_h_and_timer_i_terminates() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    t.send_response(t0, 486, R486.to_vec());
    drain(&mut t);
    run_until(&mut t, t0, secs(2)); // G at 0.5 and 1.5
    assert_eq!(t.on_ack(t0 + secs(2)), Received::Absorb, "the ACK for a non-2xx is hop-by-hop");
    assert_eq!(t.state(), ServerState::Confirmed);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(7)), "Timer I = T4; G and H are gone");
    // Confirmed absorbs stray ACKs and INVITE retransmissions without sending anything.
    assert_eq!(t.on_ack(t0 + secs(3)), Received::Absorb);
    t.on_retransmit(t0 + secs(3));
    assert_eq!(t.poll_transmit(), None);
    assert_eq!(t.absorbed(), 2);
    assert_eq!(t.retransmissions(), 2);
    assert_eq!(t.handle_timeout(t0 + ms(6_999)), None);
    assert_eq!(t.state(), ServerState::Confirmed);
    assert_eq!(t.handle_timeout(t0 + secs(7)), None, "Timer I is not a failure");
    assert!(t.is_terminated());
    assert_eq!(t.on_ack(t0 + secs(8)), Received::Absorb);
    assert_eq!(t.final_sent(), Some(486));
}

#[test]
fn invite_retransmit_in_completed_resends_the_final() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    t.send_response(t0, 180, R180.to_vec());
    t.send_response(t0, 603, R486.to_vec());
    drain(&mut t);
    t.on_retransmit(t0 + ms(100));
    assert_eq!(drain(&mut t), vec![R486.to_vec()]);
    assert_eq!(t.state(), ServerState::Completed);
    assert_eq!(t.poll_timeout(), Some(t0 + ms(500)), "a retransmit does not reset Timer G");
}

#[test]
fn invite_reliable_failure_no_g_and_zero_timer_i() {
    let t0 = Instant::now();
    let mut t = invite(t0, true);
    t.send_response(t0, 486, R486.to_vec());
    drain(&mut t);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(32)), "Timer H only");
    assert_eq!(t.on_ack(t0 + secs(1)), Received::Absorb);
    assert_eq!(t.state(), ServerState::Confirmed);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(1)));
    assert_eq!(t.handle_timeout(t0 + secs(1)), None);
    assert!(t.is_terminated());
    assert_eq!(t.retransmissions(), 0);
}

#[test]
fn invite_reliable_failure_times_out_with_timer_h() {
    let t0 = Instant::now();
    let mut t = invite(t0, true);
    t.send_response(t0, 486, R486.to_vec());
    drain(&mut t);
    assert_eq!(run_until(&mut t, t0, secs(60)), vec![Event::TimedOut(secs(32), TimedOut::TimerH)]);
}

#[test]
fn invite_illegal_responses_are_ignored() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    for code in [0, 99, 700, u16::MAX] {
        assert!(!t.send_response(t0, code, R486.to_vec()), "{code}");
    }
    assert_eq!(t.state(), ServerState::Proceeding);
    assert_eq!(t.poll_transmit(), None);
    assert!(t.send_response(t0, 486, R486.to_vec()));
    drain(&mut t);
    assert!(!t.send_response(t0, 500, R486.to_vec()), "a second final");
    assert!(!t.send_response(t0, 200, R200.to_vec()), "a 2xx after a non-2xx");
    assert!(!t.send_response(t0, 180, R180.to_vec()), "a 1xx after a final");
    assert_eq!(t.poll_transmit(), None);
    assert_eq!(t.final_sent(), Some(486));
    t.on_ack(t0);
    assert!(!t.send_response(t0, 486, R486.to_vec()), "Confirmed");
    t.handle_timeout(t0 + secs(10));
    assert!(t.is_terminated());
    assert!(!t.send_response(t0 + secs(10), 200, R200.to_vec()), "Terminated");
    assert_eq!(t.poll_transmit(), None);
}

#[test]
fn invite_late_handle_timeout_fires_g_and_h_at_once() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    t.send_response(t0, 486, R486.to_vec());
    drain(&mut t);
    assert_eq!(t.handle_timeout(t0 + secs(4)), None);
    assert_eq!(drain(&mut t), vec![R486.to_vec()], "G at 0.5, 1.5 and 3.5 coalesce");
    assert_eq!(t.poll_timeout(), Some(t0 + ms(7_500)), "the schedule kept its place");
    assert_eq!(t.handle_timeout(t0 + secs(90)), Some(TimedOut::TimerH));
    assert!(t.is_terminated());
    assert_eq!(t.handle_timeout(t0 + secs(91)), None);
}

#[test]
fn debug_output_carries_no_message_bytes() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    t.send_response(t0, 180, R180.to_vec());
    let shown = format!("{t:?}");
    assert!(!shown.contains("Alice") && !shown.contains("5551234567"), "{shown}");
}

// ---- non-INVITE, figure 8 ----

#[test]
fn non_invite_trying_absorbs_retransmits_silently() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, false);
    assert_eq!(t.state(), ServerState::Trying);
    t.on_retransmit(t0 + ms(500));
    assert_eq!(t.poll_transmit(), None);
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.absorbed(), 1);
}

#[test]
fn non_invite_provisional_then_final_then_timer_j() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, false);
    assert!(t.send_response(t0, 100, R100.to_vec()));
    assert_eq!(t.state(), ServerState::Proceeding);
    t.on_retransmit(t0 + ms(100));
    assert_eq!(drain(&mut t), vec![R100.to_vec()], "the 100 still waiting to go out answers it too");
    t.on_retransmit(t0 + ms(500));
    assert_eq!(drain(&mut t), vec![R100.to_vec()]);
    assert!(t.send_response(t0 + secs(1), 180, R180.to_vec()));
    assert_eq!(t.state(), ServerState::Proceeding);
    assert!(t.send_response(t0 + secs(1), 200, R200.to_vec()));
    assert_eq!(t.state(), ServerState::Completed);
    assert_eq!(drain(&mut t), vec![R180.to_vec(), R200.to_vec()]);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(33)), "Timer J = 64*T1");
    t.on_retransmit(t0 + secs(2));
    assert_eq!(drain(&mut t), vec![R200.to_vec()]);
    assert!(!t.send_response(t0 + secs(2), 200, R200.to_vec()), "a second final");
    assert!(!t.send_response(t0 + secs(2), 100, R100.to_vec()), "a 1xx after the final");
    assert_eq!(t.poll_transmit(), None);
    assert_eq!(t.handle_timeout(t0 + ms(32_999)), None);
    assert_eq!(t.state(), ServerState::Completed);
    assert_eq!(t.handle_timeout(t0 + secs(33)), None, "Timer J is not a failure");
    assert!(t.is_terminated());
    t.on_retransmit(t0 + secs(34));
    assert_eq!(t.poll_transmit(), None, "Terminated re-sends nothing");
    assert_eq!(t.retransmissions(), 2);
    assert_eq!(t.absorbed(), 4);
    assert_eq!(t.final_sent(), Some(200));
}

#[test]
fn non_invite_final_from_trying_and_never_retransmits_on_its_own() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, false);
    assert!(t.send_response(t0, 404, R486.to_vec()));
    assert_eq!(t.state(), ServerState::Completed);
    assert_eq!(drain(&mut t), vec![R486.to_vec()]);
    let events = run_until(&mut t, t0, secs(60));
    assert_eq!(events, vec![], "no Timer G for non-INVITE; Timer J ends it quietly");
    assert!(t.is_terminated());
}

#[test]
fn non_invite_reliable_timer_j_is_zero() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, true);
    t.send_response(t0 + secs(1), 200, R200.to_vec());
    assert_eq!(t.poll_timeout(), Some(t0 + secs(1)));
    assert_eq!(t.state(), ServerState::Completed);
    t.handle_timeout(t0 + secs(1));
    assert!(t.is_terminated());
    assert_eq!(drain(&mut t), vec![R200.to_vec()]);
}

#[test]
fn non_invite_ack_is_absorbed_without_effect() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, false);
    t.send_response(t0, 200, R200.to_vec());
    assert_eq!(t.on_ack(t0), Received::Absorb);
    assert_eq!(t.state(), ServerState::Completed);
    assert_eq!(t.poll_timeout(), Some(t0 + secs(32)));
}

#[test]
fn non_invite_invalid_codes_rejected() {
    let t0 = Instant::now();
    let mut t = non_invite(t0, false);
    assert!(!t.send_response(t0, 42, R200.to_vec()));
    assert!(!t.send_response(t0, 7_000, R200.to_vec()));
    assert_eq!(t.state(), ServerState::Trying);
    assert_eq!(t.poll_transmit(), None);
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
        let mut t = ServerTransaction::new(kind, t0, false, Timers::default());
        for code in codes {
            t.send_response(t0, *code, R486.to_vec());
        }
        t.on_transport_error();
        assert!(t.is_terminated(), "{kind:?} {codes:?}");
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.poll_transmit(), None);
        assert_eq!(t.handle_timeout(t0 + secs(100)), None, "no TimedOut after a transport error");
    }
}

#[test]
fn transport_error_in_confirmed_terminates() {
    let t0 = Instant::now();
    let mut t = invite(t0, false);
    t.send_response(t0, 486, R486.to_vec());
    t.on_ack(t0);
    t.on_transport_error();
    assert!(t.is_terminated());
}

#[test]
fn timer_h_wins_a_tie_with_timer_g() {
    let t0 = Instant::now();
    let timers = Timers { t1: secs(1), t2: secs(1), t4: secs(5) };
    let mut t = ServerTransaction::new(Kind::Invite, t0, false, timers);
    t.send_response(t0, 486, R486.to_vec());
    drain(&mut t);
    let events = run_until(&mut t, t0, secs(100));
    assert_eq!(send_times(&events), (1..64).map(secs).collect::<Vec<_>>());
    assert_eq!(events.last(), Some(&Event::TimedOut(secs(64), TimedOut::TimerH)));
}
