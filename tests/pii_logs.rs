//! Personal data never reaches the logs: a call (with failover, a malformed request and a
//! CANCEL) runs with every tracing level enabled, and the captured output must not contain the
//! caller's number, the dialled user part or the display name.

mod sim;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_personal_data_in_logs_during_a_call() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut sim = Sim::new(42, &[UasMode::Reject(503), UasMode::Answer]);
        sim.carrier_sends(invite("pii-call", "z9hG4bKpii1", 1));
        sim.run_for(Duration::from_secs(2));
        let ok = sim.carrier.last_final_200.clone().expect("call answered");
        sim.carrier_sends(in_dialog(&ok, "BYE", "z9hG4bKpii2", 2));
        sim.run_for(Duration::from_secs(2));
        // a malformed request carrying the number
        let bad =
            String::from_utf8(invite("pii-bad", "z9hG4bKpii3", 1)).unwrap().replace("CSeq: 1 INVITE", "CSeq: x INVITE");
        sim.proxy.handle_message(sim.now, callveil::sip::Peer::udp(addr(CARRIER)), bad.as_bytes());
        while sim.proxy.poll_transmit().is_some() {}
        // a cancelled call
        let mut sim = Sim::new(43, &[UasMode::Ring]);
        let inv = invite("pii-cancel", "z9hG4bKpii4", 1);
        sim.carrier_sends(inv.clone());
        sim.run_for(Duration::from_millis(300));
        sim.carrier_sends(cancel(&inv));
        sim.run_for(Duration::from_secs(2));
    });
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(!logs.is_empty(), "the scenario must produce some log lines for this test to mean anything");
    for needle in [CALLER_NUMBER, "600111222", CALLEE_USER, "Alice", "carrier.example"] {
        assert!(!logs.contains(needle), "personal data `{needle}` reached the logs:\n{logs}");
    }
}

/// The consent paths (IVR hold and release, consent and retention headers, INFO key presses,
/// secure entry, a malformed INFO body) log no number, digit or header value either.
#[test]
fn no_personal_data_in_logs_on_the_consent_paths() {
    use callveil::sip::events::CallCommand;
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let routes = "name = \"pay\"\nconsent = \"ivr\"\nsecure_entry = true";
        let mut sim = Sim::consent(44, &[UasMode::Answer], routes, FakeAnchor::default());
        sim.pbx[0].extra_headers = vec![("X-Retention-Class".into(), "goldsecretclass".into())];
        let inv = add_header(
            invite("pii-ivr", "z9hG4bKpiv1", 1),
            "P-Asserted-Identity",
            "<sip:+34699887766@carrier.example>",
        );
        let inv = add_header(inv, "X-Recording-Consent", "granted");
        sim.carrier_sends(inv);
        sim.run_for(Duration::from_secs(1));
        sim.command(CallCommand::Release { call_id: "pii-ivr".into() });
        sim.run_for(Duration::from_secs(2));
        let ok = sim.carrier.last_final_200.clone().expect("call answered");
        for (i, body) in ["Signal=7\r\nDuration=1234\r\n", "Signal=4111111111111111\r\n"].iter().enumerate() {
            let info = in_dialog(&ok, "INFO", &format!("z9hG4bKpiv{}", i + 2), 2 + i as u32);
            sim.carrier_sends(set_body(info, "application/dtmf-relay", body.as_bytes()));
            sim.run_for(Duration::from_secs(1));
        }
        sim.command(CallCommand::End { call_id: "pii-ivr".into(), reason: "done".into() });
        sim.run_for(Duration::from_secs(2));
        // a held call cancelled
        let mut sim = Sim::consent(45, &[UasMode::Answer], routes, FakeAnchor::default());
        let inv = invite("pii-ivr2", "z9hG4bKpiv9", 1);
        sim.carrier_sends(inv.clone());
        sim.run_for(Duration::from_millis(300));
        sim.carrier_sends(cancel(&inv));
        sim.run_for(Duration::from_secs(2));
        assert!(sim.metric("callveil_sip_dropped_total{kind=\"untrusted_consent_header\"}").is_none());
    });
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(logs.contains("IVR"), "the hold path must log something for this test to mean anything:\n{logs}");
    for needle in [
        CALLER_NUMBER,
        "699887766",
        CALLEE_USER,
        "Alice",
        "carrier.example",
        "Signal",
        "1234",
        "4111",
        "goldsecretclass",
        "granted",
    ] {
        assert!(!logs.contains(needle), "`{needle}` reached the logs:\n{logs}");
    }
}
