//! Fuzz target: RTP/RTCP classification and the relay core's packet path. Any panic is a bug;
//! the payload range handed to the tap must always lie inside the datagram.
#![no_main]

use std::time::{Duration, Instant};

use callveil::media::relay::{Remote, RelayConfig, RelayCore, Sock, StreamSetup};
use callveil::media::rtp::{classify, Packet};
use callveil::metrics::MediaMetrics;
use callveil::sip::sdp::Leg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Packet::Rtp(h)) = classify(data) {
        assert!(h.payload_start <= h.payload_end && h.payload_end <= data.len());
    }
    // the same bytes through a relay stream, from a latched and a foreign source
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let mut core = RelayCore::new(RelayConfig::default(), MediaMetrics::default());
    let a = "192.0.2.1:4000".parse().unwrap();
    let b = "192.0.2.2:5000".parse().unwrap();
    let remote = |addr| Remote { rtp: Some(addr), mux: data.first().is_some_and(|x| x & 1 == 1), ..Remote::default() };
    let id = core.add_stream(t0, StreamSetup { call: 1, remote: [remote(a), remote(b)], clock_rate: 8000 });
    for (i, rtcp) in [false, true].into_iter().enumerate() {
        let sock = Sock { stream: id, leg: Leg::Caller, rtcp };
        let _ = core.handle_packet(t0 + Duration::from_millis(i as u64), sock, a, data);
        let _ = core.handle_packet(t0, sock, "203.0.113.1:1".parse().unwrap(), data);
    }
    core.handle_timeout(t0 + Duration::from_secs(3600));
});
