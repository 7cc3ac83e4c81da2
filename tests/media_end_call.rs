//! `Proxy::end_call`, which media inactivity uses to end a call: BYE on both legs with the
//! dialog's identifiers and a Reason header, or CANCEL for an unanswered call. Virtual time.

mod sim;

use std::time::Duration;

use callveil::sip::message::Method;
use sim::*;

#[test]
fn answered_call_gets_bye_on_both_legs() {
    let mut sim = Sim::new(3, &[UasMode::Answer]);
    sim.carrier_sends(invite("end-1@carrier", "z9hG4bKe1", 7));
    sim.run_for(Duration::from_secs(2));
    let ok = sim.carrier.last_final_200.clone().expect("answered");
    // a re-INVITE from the caller moves its CSeq on: the BYE must go above it
    sim.carrier_sends(in_dialog(&ok, "INFO", "z9hG4bKe1info", 9));
    sim.run_for(Duration::from_secs(1));
    let now = sim.now;
    assert!(sim.proxy.end_call(now, "end-1@carrier", "media timeout"));
    sim.run_for(Duration::from_secs(2));

    let to_pbx: Vec<_> =
        sim.net.sent_between(PROXY, PBX1).into_iter().filter(|m| m.method() == Some(&Method::Bye)).collect();
    let to_carrier: Vec<_> =
        sim.net.sent_between(PROXY, CARRIER).into_iter().filter(|m| m.method() == Some(&Method::Bye)).collect();
    assert_eq!((to_pbx.len(), to_carrier.len()), (1, 1), "one BYE each (no retransmissions needed)");
    let (b, c) = (&to_pbx[0], &to_carrier[0]);
    assert_eq!(b.from().tag(), Some("from1"));
    assert_eq!(b.to().tag(), ok.to().tag());
    assert_eq!(b.cseq().seq, 10, "above the caller's highest CSeq");
    assert_eq!(b.request_uri().unwrap().raw, format!("sip:pbx@{PBX1}"));
    assert_eq!(c.from().tag(), ok.to().tag(), "to the caller, callveil speaks as the callee");
    assert_eq!(c.to().tag(), Some("from1"));
    assert_eq!(c.request_uri().unwrap().raw, format!("sip:{CALLER_NUMBER}@{CARRIER}"));
    for m in [b, c] {
        assert_eq!(m.call_id(), "end-1@carrier");
        assert_eq!(m.header("Reason"), Some("SIP;cause=408;text=\"media timeout\""));
    }
    assert_eq!(sim.carrier.requests.iter().filter(|m| **m == Method::Bye).count(), 1);
    assert_eq!(sim.proxy.dialogs().len(), 0);
    assert!(!sim.proxy.end_call(sim.now, "end-1@carrier", "again"), "already ended");
    sim.run_for(Duration::from_secs(40));
    assert_eq!(sim.proxy.transactions(), 0, "the BYE transactions ended on their 200s");
}

#[test]
fn unanswered_call_is_cancelled() {
    let mut sim = Sim::new(4, &[UasMode::Ring]);
    sim.carrier_sends(invite("end-2@carrier", "z9hG4bKe2", 1));
    sim.run_for(Duration::from_secs(1));
    let now = sim.now;
    assert!(sim.proxy.end_call(now, "end-2@carrier", "media timeout"));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.pbx[0].requests.iter().filter(|m| **m == Method::Cancel).count(), 1);
    let finals: Vec<u16> =
        sim.carrier.responses.iter().filter(|(m, c)| *m == Method::Invite && *c >= 200).map(|r| r.1).collect();
    assert_eq!(finals, vec![487]);
    assert!(!sim.proxy.end_call(sim.now, "unknown@x", "media timeout"));
}
