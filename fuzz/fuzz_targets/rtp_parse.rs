//! Fuzz target: RTP/RTCP classification and the relay core's packet path. Any panic is a bug;
//! the payload range handed to the tap must always lie inside the datagram.
//!
//! The same bytes go through three streams: plain RTP both ways; an SRTP caller leg (the bytes
//! are authenticated and decrypted by `rtc-srtp`, whose header and SRTCP trailer parsing sees
//! them first) relayed to an SRTP callee; and a plain caller with secure entry and a recording
//! tap on, re-encrypted toward an SRTP callee (so whatever `classify` accepts reaches `rtc-srtp`'s
//! protect path). Each stream gets them as RTP and as RTCP, from the latched source and a
//! foreign one. The corpus (`fuzz/corpus/rtp_parse`) has real SRTP/SRTCP under `RX_KEY`, made by
//! `fuzz/seed_rtp.py`, so the decrypted path is reached too.
#![no_main]

use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use callveil::media::relay::{Remote, RelayConfig, RelayCore, Sock, StreamSetup};
use callveil::media::rtp::{classify, Packet};
use callveil::media::sdp::Crypto;
use callveil::media::srtp::SrtpKey;
use callveil::media::tap::LegTap;
use callveil::metrics::MediaMetrics;
use callveil::sip::sdp::Leg;
use libfuzzer_sys::fuzz_target;

/// The caller's SDES key in the SRTP stream (base64 of bytes 0..30); the seeds use it.
const RX_KEY: &str = "inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd";
/// Callveil's key toward the callee.
const TX_KEY: &str = "inline:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9";

fn key(inline: &str) -> SrtpKey {
    let c = Crypto { tag: 1, suite: "AES_CM_128_HMAC_SHA1_80".into(), key_params: inline.into() };
    SrtpKey::from_crypto(&c).expect("a valid fixed key")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Packet::Rtp(h)) = classify(data) {
        assert!(h.payload_start <= h.payload_end && h.payload_end <= data.len());
    }
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let mut core = RelayCore::new(RelayConfig::default(), MediaMetrics::default());
    let a = "192.0.2.1:4000".parse().unwrap();
    let b = "192.0.2.2:5000".parse().unwrap();
    let mux = data.first().is_some_and(|x| x & 1 == 1);
    let remote = |addr| Remote {
        rtp: Some(addr),
        mux,
        codec: Some(0),
        telephone_event: Some(101),
        ..Remote::default()
    };
    let (rx, tx) = (key(RX_KEY), key(TX_KEY));
    let setups = [
        [remote(a), remote(b)],
        [Remote { srtp_rx: Some(rx), ..remote(a) }, Remote { srtp_tx: Some(tx), ..remote(b) }],
        [remote(a), Remote { srtp_tx: Some(tx), ..remote(b) }],
    ];
    let (sink, frames) = sync_channel(64);
    for (n, remote) in setups.into_iter().enumerate() {
        let id = core.add_stream(t0, StreamSetup { call: n as u64, remote, clock_rate: 8000 });
        if n == 2 {
            core.set_secure(id, true);
            for leg in [Leg::Caller, Leg::Callee] {
                core.set_tap(id, leg, Some(LegTap::new(n as u64, 0, leg, Some(101), sink.clone())));
            }
        }
        for (i, rtcp) in [false, true].into_iter().enumerate() {
            let sock = Sock { stream: id, leg: Leg::Caller, rtcp };
            let _ = core.handle_packet(t0 + Duration::from_millis(i as u64), sock, a, data);
            let _ = core.handle_packet(t0, sock, "203.0.113.1:1".parse().unwrap(), data);
            let back = Sock { stream: id, leg: Leg::Callee, rtcp };
            let _ = core.handle_packet(t0 + Duration::from_millis(2), back, b, data);
        }
    }
    core.handle_timeout(t0 + Duration::from_secs(3600));
    drop(frames);
});
