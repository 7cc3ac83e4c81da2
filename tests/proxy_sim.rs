//! The proxy core between a carrier UA and PBX UAs on virtual time: call flows, retransmissions,
//! RFC 3261 timers, CANCEL races, failover, and seeded loss with reordering.

mod sim;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callveil::config::PortRange;
use callveil::media::anchor::{Anchor, AnchorConfig, MediaBackend, SrtpPolicy, StreamControl, StreamKey};
use callveil::media::relay::StreamSetup;
use callveil::metrics::MediaMetrics;
use callveil::sip::message::Method;
use sim::*;

fn count(v: &[Method], m: Method) -> usize {
    v.iter().filter(|x| **x == m).count()
}

fn finals(ua: &Ua, m: Method) -> Vec<u16> {
    ua.responses.iter().filter(|(mm, c)| *mm == m && *c >= 200).map(|r| r.1).collect()
}

/// Runs INVITE → 200 → ACK → BYE for one call; returns the sim for inspection.
fn basic_call(sim: &mut Sim, call_id: &str, n: u32) {
    sim.carrier_sends(invite(call_id, &format!("z9hG4bKinv{n}"), 1));
    sim.run_for(Duration::from_secs(2));
    let ok = sim.carrier.last_final_200.clone().expect("caller got 200 OK (and ACKed it)");
    sim.carrier_sends(in_dialog(&ok, "BYE", &format!("z9hG4bKbye{n}"), 2));
    sim.run_for(Duration::from_secs(2));
}

#[test]
fn basic_call_flows_through_with_via_and_record_route() {
    let mut sim = Sim::new(1, &[UasMode::Answer]);
    basic_call(&mut sim, "call-1@carrier", 1);

    let to_pbx = sim.net.sent_between(PROXY, PBX1);
    let inv = to_pbx.iter().find(|m| m.method() == Some(&Method::Invite)).expect("INVITE reached the PBX");
    assert_eq!(inv.vias().len(), 2, "our Via on top of the carrier's");
    assert!(inv.top_via().branch().unwrap().starts_with("z9hG4bK"));
    assert_eq!(inv.vias()[1].received(), Some("127.0.0.1"), "RFC 3581: received= is added whenever rport is asked for");
    assert_eq!(inv.vias()[1].rport(), Some(Some(5061)), "rport filled (RFC 3581)");
    assert_eq!(inv.max_forwards(), Some(69));
    assert_eq!(inv.record_routes().len(), 1);
    assert!(inv.record_routes()[0].uri.lr());
    assert_eq!(inv.body(), sdp(addr(CARRIER), 20000).as_bytes(), "SDP passed through unchanged");

    let to_carrier = sim.net.sent_between(PROXY, CARRIER);
    let codes: Vec<u16> = to_carrier.iter().filter_map(|m| m.status()).collect();
    assert_eq!(codes.first(), Some(&100), "100 Trying is sent at once, hop-by-hop");
    assert!(codes.contains(&180) && codes.contains(&200));
    assert!(to_carrier.iter().all(|m| m.vias().len() == 1), "our Via is popped from responses");
    let ok = to_carrier.iter().find(|m| m.status() == Some(200)).unwrap();
    assert_eq!(ok.record_routes().len(), 1, "Record-Route is echoed back to the caller");

    assert_eq!(count(&sim.pbx[0].requests, Method::Invite), 1);
    assert_eq!(sim.pbx[0].acks, 1, "ACK for 2xx travels end-to-end");
    assert_eq!(count(&sim.pbx[0].requests, Method::Bye), 1);
    assert_eq!(finals(&sim.carrier, Method::Bye), vec![200]);
    assert_eq!(sim.proxy.dialogs().len(), 0);
    assert_eq!(sim.metric("callveil_sip_calls_total{outcome=\"Answered\"}"), Some(1.0));

    // All transactions are gone after their wait timers (64·T1 at most).
    sim.run_for(Duration::from_secs(40));
    assert_eq!(sim.proxy.transactions(), 0);
    assert_eq!(sim.metric("callveil_sip_transactions_in_flight"), Some(0.0));
}

#[test]
fn retransmitted_invites_are_absorbed() {
    let mut sim = Sim::new(2, &[UasMode::Answer]);
    sim.pbx[0].answer_after = Duration::from_secs(3);
    // The carrier hears nothing for a while (100 Trying and 180 lost): it retransmits the INVITE.
    sim.net.drop_next.insert((addr(PROXY), addr(CARRIER)), 3);
    sim.carrier_sends(invite("call-2", "z9hG4bKr1", 1));
    sim.run_for(Duration::from_secs(5));
    assert!(
        count(
            &sim.net.sent_between(CARRIER, PROXY).iter().filter_map(|m| m.method().cloned()).collect::<Vec<_>>(),
            Method::Invite
        ) >= 2
    );
    assert_eq!(count(&sim.pbx[0].requests, Method::Invite), 1, "the PBX sees one INVITE");
    assert!(sim.metric("callveil_sip_retransmissions_absorbed_total").unwrap() >= 1.0);
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![200]);
}

#[test]
fn timer_b_fires_on_virtual_time_and_caller_gets_408() {
    let mut sim = Sim::new(3, &[UasMode::Silent]);
    let start = sim.now;
    sim.carrier_sends(invite("call-3", "z9hG4bKb1", 1));
    sim.run_for(Duration::from_secs(31));
    assert!(finals(&sim.carrier, Method::Invite).is_empty(), "nothing final before 64·T1");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![408]);
    // Timer A: INVITE sent at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s = 7 copies.
    assert_eq!(count(&sim.pbx[0].requests, Method::Invite), 7);
    assert_eq!(sim.metric("callveil_sip_retransmissions_sent_total"), Some(6.0), "6 Timer A retransmissions");
    assert!(sim.now - start >= Duration::from_secs(32));
    assert_eq!(sim.metric("callveil_sip_calls_total{outcome=\"TimedOut\"}"), Some(1.0));
}

#[test]
fn timer_f_ends_a_non_invite_request() {
    let mut sim = Sim::new(4, &[UasMode::Silent]);
    let opts = String::from_utf8(invite("call-4", "z9hG4bKf1", 1))
        .unwrap()
        .replacen("INVITE sip:", "OPTIONS sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS");
    sim.carrier_sends(opts.into_bytes());
    sim.run_for(Duration::from_secs(33));
    // RFC 4320 §4.2: a transaction-stateful element never sends 408 to a non-INVITE request (the
    // client has timed out at the same instant); the transactions just end.
    assert!(!sim.net.sent_between(PROXY, CARRIER).iter().any(|m| m.status() == Some(408)));
    assert_eq!(count(&sim.pbx[0].requests, Method::Options), 11, "Timer E schedule: 0.5, 1, 2, 4, 4, ... s");
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.proxy.transactions(), 0);
}

#[test]
fn failover_on_503_to_the_next_upstream() {
    let mut sim = Sim::new(5, &[UasMode::Reject(503), UasMode::Answer]);
    sim.carrier_sends(invite("call-5", "z9hG4bKfo1", 1));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![200]);
    assert_eq!(count(&sim.pbx[1].requests, Method::Invite), 1);
    assert_eq!(sim.pbx[0].acks, 1, "the 503 is acknowledged hop-by-hop by callveil");
    assert_eq!(sim.metric("callveil_sip_failovers_total"), Some(1.0));
    assert!(!sim.net.sent_between(PROXY, CARRIER).iter().any(|m| m.status() == Some(503)));
}

#[test]
fn failover_on_timeout_to_the_next_upstream() {
    let mut sim = Sim::new(6, &[UasMode::Silent, UasMode::Answer]);
    sim.carrier_sends(invite("call-6", "z9hG4bKfo2", 1));
    sim.run_for(Duration::from_secs(35));
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![200]);
    assert_eq!(count(&sim.pbx[1].requests, Method::Invite), 1);
}

#[test]
fn all_upstreams_unavailable_gives_500() {
    let mut sim = Sim::new(7, &[UasMode::Reject(503), UasMode::Reject(503)]);
    sim.carrier_sends(invite("call-7", "z9hG4bKfo3", 1));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![500]);
}

#[test]
fn busy_is_forwarded_and_acked_on_both_hops() {
    let mut sim = Sim::new(8, &[UasMode::Reject(486)]);
    sim.carrier_sends(invite("call-8", "z9hG4bKbusy", 1));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![486]);
    assert_eq!(sim.pbx[0].acks, 1, "callveil ACKs the 486 toward the PBX");
    let acks_from_carrier =
        sim.net.sent_between(CARRIER, PROXY).iter().filter(|m| m.method() == Some(&Method::Ack)).count();
    assert_eq!(acks_from_carrier, 1);
    assert_eq!(
        sim.net.sent_between(PROXY, PBX1).iter().filter(|m| m.method() == Some(&Method::Ack)).count(),
        1,
        "carrier's ACK is absorbed, not forwarded"
    );
    assert_eq!(sim.metric("callveil_sip_calls_total{outcome=\"Rejected\"}"), Some(1.0));
}

#[test]
fn cancel_after_ringing() {
    let mut sim = Sim::new(9, &[UasMode::Ring]);
    let inv = invite("call-9", "z9hG4bKc1", 1);
    sim.carrier_sends(inv.clone());
    sim.run_for(Duration::from_millis(300));
    assert!(sim.carrier.responses.iter().any(|r| r.1 == 180));
    sim.carrier_sends(cancel(&inv));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(finals(&sim.carrier, Method::Cancel), vec![200]);
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![487]);
    assert_eq!(count(&sim.pbx[0].requests, Method::Cancel), 1);
    assert_eq!(sim.pbx[0].acks, 1);
    assert_eq!(sim.metric("callveil_sip_calls_total{outcome=\"Cancelled\"}"), Some(1.0));
}

#[test]
fn cancel_before_any_provisional_waits_for_one() {
    let mut sim = Sim::new(10, &[UasMode::Silent]);
    let inv = invite("call-10", "z9hG4bKc2", 1);
    sim.carrier_sends(inv.clone());
    sim.run_for(Duration::from_millis(50));
    sim.carrier_sends(cancel(&inv));
    sim.run_for(Duration::from_secs(40));
    assert_eq!(finals(&sim.carrier, Method::Cancel), vec![200]);
    assert_eq!(count(&sim.pbx[0].requests, Method::Cancel), 0, "no CANCEL before a provisional (RFC 3261 §9.1)");
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![487]);
}

#[test]
fn cancel_racing_the_200() {
    for delay_ms in [95u64, 100, 101, 103, 105] {
        let mut sim = Sim::new(11 + delay_ms, &[UasMode::Answer]);
        let inv = invite("call-11", "z9hG4bKc3", 1);
        sim.carrier_sends(inv.clone());
        sim.run_for(Duration::from_millis(delay_ms));
        sim.carrier_sends(cancel(&inv));
        sim.run_for(Duration::from_secs(2));
        let f = finals(&sim.carrier, Method::Invite);
        assert_eq!(f.len(), 1, "exactly one final for the INVITE at {delay_ms} ms: {f:?}");
        assert!(f[0] == 200 || f[0] == 487, "{f:?}");
        assert_eq!(finals(&sim.carrier, Method::Cancel), vec![200]);
        if f[0] == 200 {
            let ok = sim.carrier.last_final_200.clone().unwrap();
            sim.carrier_sends(in_dialog(&ok, "BYE", "z9hG4bKc3b", 2));
            sim.run_for(Duration::from_secs(2));
            assert_eq!(finals(&sim.carrier, Method::Bye), vec![200]);
        }
        sim.run_for(Duration::from_secs(40));
        assert_eq!(sim.proxy.transactions(), 0, "nothing left behind at {delay_ms} ms");
        assert_eq!(sim.proxy.dialogs().len(), 0);
    }
}

#[test]
fn max_forwards_zero_gets_483_and_options_to_us_gets_200() {
    let mut sim = Sim::new(12, &[UasMode::Answer]);
    let inv =
        String::from_utf8(invite("call-12", "z9hG4bKmf", 1)).unwrap().replace("Max-Forwards: 70", "Max-Forwards: 0");
    sim.carrier_sends(inv.into_bytes());
    sim.run_for(Duration::from_secs(1));
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![483]);
    assert!(sim.pbx[0].requests.is_empty());

    let opts = format!(
        "OPTIONS sip:{PROXY} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER};branch=z9hG4bKo1\r\nMax-Forwards: 70\r\n\
         From: <sip:mon@carrier.example>;tag=a\r\nTo: <sip:{PROXY}>\r\nCall-ID: ping-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    sim.carrier_sends(opts.into_bytes());
    sim.run_for(Duration::from_secs(1));
    assert_eq!(finals(&sim.carrier, Method::Options), vec![200]);
    assert!(sim.pbx[0].requests.is_empty());
}

#[test]
fn bad_requests_get_400_or_are_dropped_and_counted() {
    let mut sim = Sim::new(13, &[UasMode::Answer]);
    let bad_cseq =
        String::from_utf8(invite("x", "z9hG4bKbad", 1)).unwrap().replace("CSeq: 1 INVITE", "CSeq: one INVITE");
    sim.proxy.handle_message(sim.now, callveil::sip::Peer::udp(addr(CARRIER)), bad_cseq.as_bytes());
    let resp = sim.proxy.poll_transmit().expect("a 400 goes back");
    let text = String::from_utf8_lossy(&resp.bytes);
    assert!(text.starts_with("SIP/2.0 400"), "{text}");
    assert!(text.contains("CSeq"), "the reason names the fault: {text}");
    assert!(!text.contains(CALLER_NUMBER) || text.contains("From:"), "the number only appears in the echoed From");
    // Without a Call-ID no valid response can be built: dropped and counted.
    let no_call_id = String::from_utf8(invite("x", "z9hG4bKbad2", 1)).unwrap().replace("Call-ID: x\r\n", "");
    sim.proxy.handle_message(sim.now, callveil::sip::Peer::udp(addr(CARRIER)), no_call_id.as_bytes());
    assert!(sim.proxy.poll_transmit().is_none());
    sim.proxy.handle_message(sim.now, callveil::sip::Peer::udp(addr(CARRIER)), b"\x00\x01garbage\r\n\r\n");
    assert!(sim.proxy.poll_transmit().is_none());
    let errors: f64 = sim
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("callveil_sip_parse_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(errors, 3.0);
}

#[test]
fn calls_complete_under_loss_and_reordering() {
    for seed in 0..5u64 {
        let mut sim = Sim::new(100 + seed, &[UasMode::Answer]);
        sim.net.loss = 0.15;
        sim.net.jitter = Duration::from_millis(30);
        for n in 0..8u32 {
            let call_id = format!("lossy-{seed}-{n}");
            sim.carrier.last_final_200 = None;
            sim.carrier_sends(invite(&call_id, &format!("z9hG4bKl{seed}x{n}"), 1));
            sim.run_for(Duration::from_secs(20));
            let Some(ok) = sim.carrier.last_final_200.clone() else {
                panic!("seed {seed} call {n}: no 200 OK despite retransmissions; responses {:?}", sim.carrier.responses)
            };
            assert_eq!(ok.call_id(), call_id);
            sim.carrier_sends(in_dialog(&ok, "BYE", &format!("z9hG4bKlb{seed}x{n}"), 2));
            sim.run_for(Duration::from_secs(20));
        }
        let byes = finals(&sim.carrier, Method::Bye);
        assert_eq!(byes.len(), 8, "seed {seed}: every BYE answered: {byes:?}");
        assert!(byes.iter().all(|c| *c == 200), "seed {seed}: {byes:?}");
        // Each call reached the PBX as exactly one INVITE transaction (retransmissions absorbed
        // by callveil; the PBX may see callveil's own Timer A retransmissions when its 1xx are lost,
        // which its transaction absorbs).
        sim.run_for(Duration::from_secs(40));
        assert_eq!(sim.proxy.transactions(), 0, "seed {seed}");
        assert_eq!(sim.proxy.dialogs().len(), 0, "seed {seed}");
    }
}

#[test]
fn in_dialog_requests_without_route_follow_the_dialog() {
    // SIPp's built-in uac and some PBXs ignore Record-Route and send ACK/BYE to the proxy's
    // address with the original Request-URI: callveil routes them by its dialog state.
    let mut sim = Sim::new(14, &[UasMode::Answer]);
    sim.carrier_sends(invite("call-14", "z9hG4bKnr1", 1));
    sim.run_for(Duration::from_secs(2));
    let ok = sim.carrier.last_final_200.clone().unwrap();
    let bye = format!(
        "BYE sip:{CALLEE_USER}@{PROXY} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER};branch=z9hG4bKnr2\r\nMax-Forwards: 70\r\n\
         From: <sip:{CALLER_NUMBER}@carrier.example>;tag=from1\r\nTo: <sip:{CALLEE_USER}@callveil.example>;tag={}\r\n\
         Call-ID: call-14\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        ok.to().tag().unwrap()
    );
    sim.carrier_sends(bye.into_bytes());
    sim.run_for(Duration::from_secs(2));
    assert_eq!(finals(&sim.carrier, Method::Bye), vec![200]);
    let bye_at_pbx = sim.net.sent_between(PROXY, PBX1).into_iter().find(|m| m.method() == Some(&Method::Bye)).unwrap();
    assert_eq!(bye_at_pbx.request_uri().unwrap().raw, format!("sip:pbx@{PBX1}"), "retargeted to the PBX Contact");
    assert_eq!(sim.proxy.dialogs().len(), 0);

    // A BYE for a dialog callveil does not know is answered 481.
    let stray = format!(
        "BYE sip:{CALLEE_USER}@{PROXY} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER};branch=z9hG4bKnr3\r\nMax-Forwards: 70\r\n\
         From: <sip:a@carrier.example>;tag=x\r\nTo: <sip:b@callveil.example>;tag=y\r\n\
         Call-ID: nope\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    sim.carrier_sends(stray.into_bytes());
    sim.run_for(Duration::from_secs(1));
    assert_eq!(finals(&sim.carrier, Method::Bye), vec![200, 481]);
}

#[test]
fn bye_from_the_pbx_side_reaches_the_caller() {
    let mut sim = Sim::new(15, &[UasMode::Answer]);
    sim.carrier_sends(invite("call-15", "z9hG4bKpb1", 1));
    sim.run_for(Duration::from_secs(2));
    let inv = sim.net.sent_between(PROXY, PBX1).into_iter().find(|m| m.method() == Some(&Method::Invite)).unwrap();
    let ok = sim.carrier.last_final_200.clone().unwrap();
    let routes: String = inv.record_routes().iter().map(|r| format!("Route: <{}>\r\n", r.uri.raw)).collect();
    let bye = format!(
        "BYE sip:{CALLER_NUMBER}@{CARRIER} SIP/2.0\r\nVia: SIP/2.0/UDP {PBX1};branch=z9hG4bKpb2\r\nMax-Forwards: 70\r\n{routes}\
         From: <sip:{CALLEE_USER}@callveil.example>;tag={}\r\nTo: <sip:{CALLER_NUMBER}@carrier.example>;tag=from1\r\n\
         Call-ID: call-15\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        ok.to().tag().unwrap()
    );
    let now = sim.now;
    sim.pbx[0].send_request(now, &mut sim.net, PROXY, bye.into_bytes());
    sim.run_for(Duration::from_secs(2));
    assert_eq!(count(&sim.carrier.requests, Method::Bye), 1);
    let bye_at_carrier =
        sim.net.sent_between(PROXY, CARRIER).into_iter().find(|m| m.method() == Some(&Method::Bye)).unwrap();
    assert!(bye_at_carrier.routes().is_empty(), "our Route was popped");
    assert_eq!(finals(&sim.pbx[0], Method::Bye), vec![200]);
    assert_eq!(sim.proxy.dialogs().len(), 0);
}

#[test]
fn transport_error_fails_over_at_once() {
    let mut sim = Sim::new(16, &[UasMode::Silent, UasMode::Answer]);
    sim.carrier_sends(invite("call-16", "z9hG4bKte1", 1));
    sim.run_for(Duration::from_millis(10));
    // The driver reports that PBX1 cannot be reached (e.g. TCP connect refused).
    let now = sim.now;
    sim.proxy.transport_error(now, callveil::sip::Peer::udp(addr(PBX1)));
    sim.run_for(Duration::from_millis(500));
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![200], "answered by PBX2 well before Timer B");
    assert_eq!(sim.metric("callveil_sip_failovers_total"), Some(1.0));

    // With no upstream left, the caller gets 503 at once.
    let mut sim = Sim::new(17, &[UasMode::Silent]);
    sim.carrier_sends(invite("call-17", "z9hG4bKte2", 1));
    sim.run_for(Duration::from_millis(10));
    let now = sim.now;
    sim.proxy.transport_error(now, callveil::sip::Peer::udp(addr(PBX1)));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![503]);
}

// ----- consent: events, IVR hold, trusted signals, INFO DTMF -----------------------------------

use callveil::sip::events::{CallCommand, CallEvent};

const IVR: &str = "name = \"ivr-line\"\nconsent = \"ivr\"";

/// Events as short strings, for exact comparisons.
fn names(events: &[CallEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            CallEvent::Started { route, held, .. } => format!("started {route} held={held}"),
            CallEvent::Answered { .. } => "answered".into(),
            CallEvent::Ended { .. } => "ended".into(),
            CallEvent::Consent { signal, .. } => format!("consent {}", signal.as_str()),
            CallEvent::RetentionClass { class, .. } => format!("retention {class}"),
            CallEvent::InfoDtmf { leg, digit, duration_ms, .. } => {
                format!("info {leg} {} {duration_ms}", digit.as_char())
            }
        })
        .collect()
}

fn statuses(sim: &Sim, from: &str, to: &str) -> Vec<u16> {
    sim.net.sent_between(from, to).iter().filter_map(|m| m.status()).collect()
}

#[test]
fn ivr_hold_answers_183_and_forwards_only_on_release() {
    let mut sim = Sim::consent(20, &[UasMode::Answer], IVR, FakeAnchor::default());
    sim.carrier_sends(invite("ivr-1", "z9hG4bKivr1", 1));
    sim.run_for(Duration::from_secs(30));

    let to_carrier = sim.net.sent_between(PROXY, CARRIER);
    let p183 = to_carrier.iter().find(|m| m.status() == Some(183)).expect("183 to the caller");
    assert_eq!(statuses(&sim, PROXY, CARRIER), vec![100, 183], "100 then our 183, nothing else");
    assert!(p183.has_sdp(), "the 183 carries the anchor's early answer");
    assert!(String::from_utf8_lossy(p183.body()).contains(&format!("m=audio {EARLY_PORT} ")));
    let our_tag = p183.to().tag().expect("our To tag").to_string();
    assert!(our_tag.starts_with("cv"));
    assert_eq!(p183.contacts()[0].uri.raw, format!("sip:{PROXY}"), "Contact is callveil");
    assert!(p183.record_routes().is_empty(), "callveil is the UAS of this early dialog: no Record-Route of its own");
    assert!(sim.net.sent_between(PROXY, PBX1).is_empty(), "nothing reaches the PBX while held");
    assert_eq!(sim.proxy.held(), 1);
    let ev = sim.take_events();
    assert_eq!(names(&ev), vec!["started ivr-line held=true"]);
    match &ev[0] {
        CallEvent::Started { caller, callee, call_id, .. } => {
            assert_eq!(caller.expose(), CALLER_NUMBER);
            assert_eq!(callee.expose(), CALLEE_USER);
            assert_eq!(call_id, "ivr-1");
        }
        other => panic!("{other:?}"),
    }

    sim.command(CallCommand::Release { call_id: "ivr-1".into() });
    sim.run_for(Duration::from_secs(2));
    let to_pbx = sim.net.sent_between(PROXY, PBX1);
    let inv = to_pbx.iter().find(|m| m.method() == Some(&Method::Invite)).expect("INVITE forwarded on release");
    assert_eq!(inv.vias().len(), 2);
    assert_eq!(inv.record_routes().len(), 1);
    assert_eq!(inv.max_forwards(), Some(69));
    assert_eq!(inv.body(), sdp(addr(CARRIER), 20000).as_bytes());
    let ok = sim.carrier.last_final_200.clone().expect("the PBX's 200 reaches the caller");
    assert_ne!(ok.to().tag(), Some(our_tag.as_str()), "the PBX's own dialog, not ours");
    assert_eq!(ok.record_routes().len(), 1);
    sim.carrier_sends(in_dialog(&ok, "BYE", "z9hG4bKivr1b", 2));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.pbx[0].acks, 1);
    assert_eq!(count(&sim.pbx[0].requests, Method::Bye), 1);
    assert_eq!(finals(&sim.carrier, Method::Bye), vec![200]);
    assert_eq!(names(&sim.take_events()), vec!["answered", "ended"]);
    assert_eq!(sim.proxy.held(), 0);
    assert_eq!(sim.proxy.dialogs().len(), 0);
    // a second Release is counted and ignored
    sim.command(CallCommand::Release { call_id: "ivr-1".into() });
    assert_eq!(sim.metric("callveil_sip_dropped_total{kind=\"release_not_held\"}"), Some(1.0));
}

#[test]
fn cancel_while_held_answers_487_and_ends_the_call() {
    let anchor = FakeAnchor::default();
    let mut sim = Sim::consent(21, &[UasMode::Answer], IVR, anchor.clone());
    let inv = invite("ivr-2", "z9hG4bKivr2", 1);
    sim.carrier_sends(inv.clone());
    sim.run_for(Duration::from_millis(500));
    sim.carrier_sends(cancel(&inv));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(finals(&sim.carrier, Method::Cancel), vec![200]);
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![487]);
    let r487 = sim.net.sent_between(PROXY, CARRIER).into_iter().find(|m| m.status() == Some(487)).unwrap();
    let r183 = sim.net.sent_between(PROXY, CARRIER).into_iter().find(|m| m.status() == Some(183)).unwrap();
    assert_eq!(r487.to().tag(), r183.to().tag(), "the 487 ends our early dialog");
    assert!(sim.pbx[0].requests.is_empty(), "the PBX never hears of the call");
    assert!(anchor.lines().contains(&"release ivr-2".to_string()), "media released: {:?}", anchor.lines());
    assert_eq!(names(&sim.take_events()), vec!["started ivr-line held=true", "ended"]);
    assert_eq!(sim.proxy.held(), 0);
    assert_eq!(sim.proxy.dialogs().len(), 0);
    assert_eq!(sim.metric("callveil_sip_calls_total{outcome=\"Cancelled\"}"), Some(1.0));
    sim.run_for(Duration::from_secs(40));
    assert_eq!(sim.proxy.transactions(), 0);
}

#[test]
fn end_command_while_held_answers_480() {
    let mut sim = Sim::consent(22, &[UasMode::Answer], IVR, FakeAnchor::default());
    sim.carrier_sends(invite("ivr-3", "z9hG4bKivr3", 1));
    sim.run_for(Duration::from_secs(1));
    sim.command(CallCommand::End { call_id: "ivr-3".into(), reason: "declined".into() });
    sim.run_for(Duration::from_secs(2));
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![480]);
    assert!(sim.pbx[0].requests.is_empty());
    assert_eq!(names(&sim.take_events()), vec!["started ivr-line held=true", "ended"]);
}

#[test]
fn hold_safety_timer_releases_the_invite() {
    let mut sim = Sim::consent(23, &[UasMode::Answer], IVR, FakeAnchor::default());
    sim.carrier_sends(invite("ivr-4", "z9hG4bKivr4", 1));
    sim.run_for(Duration::from_secs(119));
    assert!(sim.pbx[0].requests.is_empty(), "still held before the safety limit (120 s)");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(count(&sim.pbx[0].requests, Method::Invite), 1);
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![200]);
    assert_eq!(sim.metric("callveil_sip_dropped_total{kind=\"ivr_hold_expired\"}"), Some(1.0));
    assert_eq!(names(&sim.take_events()), vec!["started ivr-line held=true", "answered"]);
}

#[test]
fn invite_without_offer_or_early_media_is_forwarded_at_once() {
    let mut sim = Sim::consent(24, &[UasMode::Answer], IVR, FakeAnchor::default());
    sim.carrier_sends(invite_without_sdp("ivr-5", "z9hG4bKivr5"));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(count(&sim.pbx[0].requests, Method::Invite), 1);
    assert!(!statuses(&sim, PROXY, CARRIER).contains(&183));
    assert_eq!(names(&sim.take_events()), vec!["started ivr-line held=false"]);

    let refusing = FakeAnchor { refuse_early: true, ..FakeAnchor::default() };
    let mut sim = Sim::consent(25, &[UasMode::Answer], IVR, refusing);
    sim.carrier_sends(invite("ivr-6", "z9hG4bKivr6", 1));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(count(&sim.pbx[0].requests, Method::Invite), 1);
    assert_eq!(names(&sim.take_events()), vec!["started ivr-line held=false"]);
    assert_eq!(sim.metric("callveil_sip_dropped_total{kind=\"ivr_no_early_media\"}"), Some(1.0));

    // recording disabled: nothing to consent to, no hold
    let mut sim =
        Sim::consent(26, &[UasMode::Answer], "consent = \"ivr\"\n[recording]\nenabled = false", FakeAnchor::default());
    sim.carrier_sends(invite("ivr-7", "z9hG4bKivr7", 1));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(count(&sim.pbx[0].requests, Method::Invite), 1);
}

#[test]
fn consent_and_retention_headers_count_only_from_the_pbx() {
    let mut sim = Sim::consent(27, &[UasMode::Answer], "name = \"hdr\"\nconsent = \"header\"", FakeAnchor::default());
    sim.pbx[0].extra_headers =
        vec![("x-recording-consent".into(), "Granted".into()), ("X-Retention-Class".into(), "Gold".into())];
    let inv = add_header(invite("hdr-1", "z9hG4bKhdr1", 1), "X-Recording-Consent", "granted");
    let inv = add_header(inv, "X-Retention-Class", "forever");
    sim.carrier_sends(inv);
    sim.run_for(Duration::from_secs(2));
    let fwd = sim.net.sent_between(PROXY, PBX1).into_iter().find(|m| m.method() == Some(&Method::Invite)).unwrap();
    assert!(fwd.header("X-Recording-Consent").is_none(), "the carrier's claim is stripped");
    assert!(fwd.header("X-Retention-Class").is_none());
    assert!(sim.metric("callveil_sip_dropped_total{kind=\"untrusted_consent_header\"}").unwrap() >= 1.0);
    let ev = names(&sim.take_events());
    // the PBX's 180 and 200 both carry the headers: each is reported (the gate de-duplicates)
    assert_eq!(
        ev,
        vec![
            "started hdr held=false",
            "consent granted",
            "retention gold",
            "consent granted",
            "retention gold",
            "answered"
        ]
    );
    let ok = sim.carrier.last_final_200.clone().unwrap();
    assert_eq!(ok.header("X-Recording-Consent"), Some("Granted"), "trusted headers travel on");

    // a carrier in-dialog request with the header: ignored
    let info = add_header(in_dialog(&ok, "INFO", "z9hG4bKhdr2", 2), "X-Recording-Consent", "revoked");
    sim.carrier_sends(info);
    sim.run_for(Duration::from_secs(1));
    assert!(names(&sim.take_events()).is_empty());
    // the PBX revokes in-dialog: trusted
    let now = sim.now;
    let req = add_header(pbx_request(&ok, PBX1, "INFO", "z9hG4bKhdr3", 5), "X-Recording-Consent", "revoked");
    sim.pbx[0].send_request(now, &mut sim.net, PROXY, req);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(names(&sim.take_events()), vec!["consent revoked"]);
}

fn relay_info(ok: &callveil::sip::message::Message, branch: &str, cseq: u32, body: &str) -> Vec<u8> {
    set_body(in_dialog(ok, "INFO", branch, cseq), "application/dtmf-relay", body.as_bytes())
}

#[test]
fn info_dtmf_is_reported_and_suppressed_under_secure_entry() {
    let anchor = FakeAnchor::default();
    let mut sim = Sim::consent(
        28,
        &[UasMode::Answer],
        "name = \"pay\"\nconsent = \"header\"\nsecure_entry = true",
        anchor.clone(),
    );
    sim.carrier_sends(invite("dtmf-1", "z9hG4bKd1", 1));
    sim.run_for(Duration::from_secs(2));
    assert!(anchor.lines().contains(&"secure dtmf-1 true".to_string()), "{:?}", anchor.lines());
    let ok = sim.carrier.last_final_200.clone().unwrap();
    sim.take_events();

    sim.carrier_sends(relay_info(&ok, "z9hG4bKd2", 2, "Signal=5\r\nDuration=160\r\n"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(count(&sim.pbx[0].requests, Method::Info), 0, "secure entry: the key press stays with callveil");
    assert_eq!(finals(&sim.carrier, Method::Info), vec![200]);
    assert_eq!(names(&sim.take_events()), vec!["info caller 5 160"]);

    // the PBX switches secure entry off
    let now = sim.now;
    let off = add_header(pbx_request(&ok, PBX1, "INFO", "z9hG4bKd3", 5), "X-Secure-Entry", "off");
    sim.pbx[0].send_request(now, &mut sim.net, PROXY, off);
    sim.run_for(Duration::from_secs(1));
    assert!(anchor.lines().contains(&"secure dtmf-1 false".to_string()));
    sim.carrier_sends(set_body(in_dialog(&ok, "INFO", "z9hG4bKd4", 3), "application/dtmf", b"#"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(count(&sim.pbx[0].requests, Method::Info), 1, "with secure entry off the caller's INFO goes on");
    assert_eq!(names(&sim.take_events()), vec!["info caller # 160"]);

    // malformed: forwarded as is, counted, no event
    sim.carrier_sends(relay_info(&ok, "z9hG4bKd5", 4, "Signal=4111111111111111"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.metric("callveil_sip_dropped_total{kind=\"info_dtmf_malformed\"}"), Some(1.0));
    assert!(names(&sim.take_events()).is_empty());
    assert_eq!(finals(&sim.carrier, Method::Info), vec![200, 200, 200], "every INFO answered once");
}

#[test]
fn secure_entry_by_api_command_holds_back_info_digits_and_tells_the_relay() {
    let anchor = FakeAnchor::default();
    let mut sim = Sim::consent(29, &[UasMode::Answer], "name = \"r\"\nconsent = \"header\"", anchor.clone());
    sim.carrier_sends(invite("api-se", "z9hG4bKa1", 1));
    sim.run_for(Duration::from_secs(2));
    let ok = sim.carrier.last_final_200.clone().unwrap();
    assert!(!anchor.lines().iter().any(|l| l.starts_with("secure")), "{:?}", anchor.lines());

    sim.command(CallCommand::SecureEntry { call_id: "api-se".into(), on: true });
    sim.run_for(Duration::from_millis(100));
    assert!(anchor.lines().contains(&"secure api-se true".to_string()), "{:?}", anchor.lines());
    sim.carrier_sends(relay_info(&ok, "z9hG4bKa2", 2, "Signal=7\r\nDuration=160\r\n"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(count(&sim.pbx[0].requests, Method::Info), 0, "held back under secure entry");

    sim.command(CallCommand::SecureEntry { call_id: "api-se".into(), on: false });
    sim.run_for(Duration::from_millis(100));
    assert!(anchor.lines().contains(&"secure api-se false".to_string()));
    sim.carrier_sends(relay_info(&ok, "z9hG4bKa3", 3, "Signal=7\r\nDuration=160\r\n"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(count(&sim.pbx[0].requests, Method::Info), 1);

    sim.command(CallCommand::SecureEntry { call_id: "no-such-call".into(), on: true });
    assert_eq!(sim.metric("callveil_sip_dropped_total{kind=\"secure_entry_unknown_call\"}"), Some(1.0));
}

#[test]
fn every_call_reports_started_and_ended_exactly_once() {
    // rejected
    let mut sim =
        Sim::consent(30, &[UasMode::Reject(486)], "name = \"r\"\nconsent = \"header\"", FakeAnchor::default());
    sim.carrier_sends(invite("once-1", "z9hG4bKo1", 1));
    sim.run_for(Duration::from_secs(40));
    assert_eq!(names(&sim.take_events()), vec!["started r held=false", "ended"]);
    // cancelled while ringing
    let mut sim = Sim::consent(31, &[UasMode::Ring], "name = \"r\"\nconsent = \"header\"", FakeAnchor::default());
    let inv = invite("once-2", "z9hG4bKo2", 1);
    sim.carrier_sends(inv.clone());
    sim.run_for(Duration::from_millis(300));
    sim.carrier_sends(cancel(&inv));
    sim.run_for(Duration::from_secs(40));
    assert_eq!(names(&sim.take_events()), vec!["started r held=false", "ended"]);
    // timeout (Timer B, then failover exhausted)
    let mut sim = Sim::consent(32, &[UasMode::Silent], "name = \"r\"\nconsent = \"header\"", FakeAnchor::default());
    sim.carrier_sends(invite("once-3", "z9hG4bKo3", 1));
    sim.run_for(Duration::from_secs(60));
    assert_eq!(names(&sim.take_events()), vec!["started r held=false", "ended"]);
    // answered, with loss and retransmissions, ended by BYE from the callee side
    let mut sim = Sim::consent(33, &[UasMode::Answer], "name = \"r\"\nconsent = \"header\"", FakeAnchor::default());
    sim.net.loss = 0.2;
    sim.carrier_sends(invite("once-4", "z9hG4bKo4", 1));
    sim.run_for(Duration::from_secs(20));
    let ok = sim.carrier.last_final_200.clone().expect("answered despite loss");
    sim.carrier_sends(in_dialog(&ok, "BYE", "z9hG4bKo4b", 2));
    sim.run_for(Duration::from_secs(40));
    assert_eq!(names(&sim.take_events()), vec!["started r held=false", "answered", "ended"]);
    // ended by the recording path
    let mut sim = Sim::consent(34, &[UasMode::Answer], "name = \"r\"\nconsent = \"header\"", FakeAnchor::default());
    sim.carrier_sends(invite("once-5", "z9hG4bKo5", 1));
    sim.run_for(Duration::from_secs(2));
    sim.command(CallCommand::End { call_id: "once-5".into(), reason: "revoked".into() });
    sim.run_for(Duration::from_secs(40));
    assert_eq!(names(&sim.take_events()), vec!["started r held=false", "answered", "ended"]);
    assert_eq!(count(&sim.pbx[0].requests, Method::Bye), 1);
}

// ----- a failed re-INVITE leaves the media as it was (RFC 3261 §14.1) -------------------------

/// The media streams the anchor asked for, as a test can read them.
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<HashMap<StreamKey, StreamSetup>>>);

impl Streams {
    fn now(&self) -> HashMap<StreamKey, StreamSetup> {
        self.0.lock().unwrap().clone()
    }
}

/// A media backend without sockets: every bind succeeds; it keeps each stream's latest setup.
struct Recorder(Streams);

impl MediaBackend for Recorder {
    type Pair = u16;
    fn bind(&mut self, rtp_port: u16) -> std::io::Result<u16> {
        Ok(rtp_port)
    }
    fn open(&mut self, key: StreamKey, _pairs: [u16; 2], setup: StreamSetup) {
        assert!(self.0 .0.lock().unwrap().insert(key, setup).is_none(), "opened twice");
    }
    fn update(&mut self, key: StreamKey, setup: StreamSetup) {
        *self.0 .0.lock().unwrap().get_mut(&key).expect("update of an unknown stream") = setup;
    }
    fn close(&mut self, key: StreamKey) {
        assert!(self.0 .0.lock().unwrap().remove(&key).is_some(), "closed twice");
    }
    fn poll_inactive(&mut self) -> Option<u64> {
        None
    }
    fn control(&mut self, _key: StreamKey, _ctl: StreamControl) {}
}

/// A sim whose proxy holds the real anchor over a [`Recorder`].
fn anchored_sim(seed: u64) -> (Sim, Streams, MediaMetrics) {
    let streams = Streams::default();
    let metrics = MediaMetrics::default();
    let config = AnchorConfig {
        advertise: "127.0.0.1".parse().unwrap(),
        ports: PortRange { first: 30000, last: 30099 },
        quarantine: Duration::from_secs(5),
        srtp: [SrtpPolicy::Same; 2],
    };
    #[allow(clippy::disallowed_methods)] // the anchor's clock starts with the sim's
    let anchor = Anchor::new(Instant::now(), config, Recorder(streams.clone()), metrics.clone());
    (Sim::with_anchor(seed, &[UasMode::Answer], Box::new(anchor)), streams, metrics)
}

/// The caller moves its audio, puts it on hold and adds video.
fn moving_offer() -> String {
    format!(
        "v=0\r\no=- 1 2 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 20100 RTP/AVP 0 101\r\n\
         a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\nm=video 20102 RTP/AVP 96\r\n",
        ip = addr(CARRIER).ip()
    )
}

#[test]
fn failed_reinvite_leaves_the_media_as_it_was() {
    for (n, refusal, code) in
        [(0u64, UasMode::Reject(488), 488), (1, UasMode::Reject(491), 491), (2, UasMode::Silent, 408)]
    {
        let (mut sim, streams, metrics) = anchored_sim(40 + n);
        sim.pbx[0].reinvite = Some(refusal);
        let call_id = format!("reinvite-{n}");
        sim.carrier_sends(invite(&call_id, &format!("z9hG4bKri{n}a"), 1));
        sim.run_for(Duration::from_secs(2));
        let ok = sim.carrier.last_final_200.clone().expect("answered");
        let before = streams.now();
        assert_eq!(before.len(), 1);
        assert_eq!(metrics.ports_in_use.get(), 2);

        sim.carrier_sends(with_body(in_dialog(&ok, "INVITE", &format!("z9hG4bKri{n}b"), 2), &moving_offer()));
        // the re-INVITE is at the PBX (1 ms a hop), its refusal not yet back
        sim.run_for(Duration::from_micros(1500));
        assert_eq!(streams.now().len(), 2, "the offer took effect when it was forwarded");
        assert_eq!(metrics.ports_in_use.get(), 4);
        sim.run_for(Duration::from_secs(40)); // the silent PBX: Timer B, 408
        assert_eq!(finals(&sim.carrier, Method::Invite), vec![200, code], "case {n}");
        assert_eq!(streams.now(), before, "case {n}: address, direction and streams as before the offer");
        assert_eq!(metrics.ports_in_use.get(), 2, "case {n}: the added stream's ports are released");
        assert_eq!(metrics.offers_rolled_back.get(), 1);

        // the call goes on, and ends normally
        sim.carrier_sends(in_dialog(&ok, "BYE", &format!("z9hG4bKri{n}c"), 3));
        sim.run_for(Duration::from_secs(2));
        assert_eq!(finals(&sim.carrier, Method::Bye), vec![200]);
        assert!(streams.now().is_empty());
        assert_eq!(metrics.ports_in_use.get(), 0);
    }
}

#[test]
fn reinvite_the_anchor_refuses_keeps_the_call_and_its_media() {
    let (mut sim, streams, metrics) = anchored_sim(50);
    sim.carrier_sends(invite("reinvite-bad", "z9hG4bKrb1", 1));
    sim.run_for(Duration::from_secs(2));
    let ok = sim.carrier.last_final_200.clone().expect("answered");
    let before = streams.now();
    // the second m-line asks for an SRTP suite callveil does not have: 488 from callveil itself
    let bad = format!(
        "{}m=audio 20200 RTP/SAVP 0\r\na=crypto:1 F8_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
        moving_offer()
    );
    sim.carrier_sends(with_body(in_dialog(&ok, "INVITE", "z9hG4bKrb2", 2), &bad));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(finals(&sim.carrier, Method::Invite), vec![200, 488]);
    assert_eq!(count(&sim.pbx[0].requests, Method::Invite), 1, "the refused re-INVITE never reached the PBX");
    assert_eq!(streams.now(), before, "the call's media is untouched");
    assert_eq!(metrics.ports_in_use.get(), 2);
    assert_eq!(sim.proxy.dialogs().len(), 1, "the dialog goes on");
    sim.carrier_sends(in_dialog(&ok, "BYE", "z9hG4bKrb3", 3));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(finals(&sim.carrier, Method::Bye), vec![200]);
    assert!(streams.now().is_empty());
}
