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
