//! Fuzz target for the SIP message layer: any bytes may be rejected but must never panic, and a
//! message that is accepted must still parse after the edits a proxy makes when forwarding it.
#![no_main]

use callveil::sip::message::{error_response, framing, parse, parse_with, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = framing::frame(data, 16384, 65535);
    match parse(data) {
        Ok(m) => {
            let out = m.rewrite().pop_via().push_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfuzz").finish();
            // The forwarded copy is a little larger (one Via, CRs for bare LFs): give it room.
            let d = Limits::default();
            let roomy = Limits {
                max_message: d.max_message * 2,
                max_headers: d.max_headers + 4,
                max_header_bytes: d.max_header_bytes * 2,
                ..d
            };
            if let Err(e) = parse_with(&out, &roomy) {
                panic!("forwarded copy no longer parses: {e}");
            }
        }
        Err(e) => {
            let _ = error_response(data, &e);
        }
    }
});
