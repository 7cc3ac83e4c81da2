//! Media control over real UDP sockets on loopback: the anchor with the real media driver
//! (`net::rtp`). callveil answers the caller itself (early media), plays a prompt to it at 50
//! packets per second from the caller-facing port, taps the caller's audio and key presses while
//! the callee does not exist yet, and keeps the caller on the same port once the callee answers;
//! secure entry then keeps the caller's telephone-events from the callee.
#![allow(clippy::disallowed_methods)] // a real driver runs on real time

use std::net::UdpSocket;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callveil::config::PortRange;
use callveil::media::anchor::{Anchor, AnchorConfig, SrtpPolicy};
use callveil::media::relay::RelayConfig;
use callveil::media::rtp::{classify, Packet};
use callveil::media::sdp;
use callveil::media::tap::TapEvent;
use callveil::metrics::MediaMetrics;
use callveil::net::rtp::{MediaDriver, ShardOptions};
use callveil::sip::events::MediaCommand;
use callveil::sip::sdp::{Leg, MediaAnchor, SdpContext, SdpRole};

fn offer(port: u16, fmts: &str) -> Vec<u8> {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {fmts}\r\n\
a=rtpmap:101 telephone-event/8000\r\n"
    )
    .into_bytes()
}

fn rtp(pt: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0xcafeu32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A port range unlikely to collide with other tests running at the same time; pairs that fail
/// to bind are skipped by the anchor anyway.
fn ports(slot: u16) -> PortRange {
    let first = 20000 + (std::process::id() % 1000) as u16 * 40 + slot * 20;
    PortRange { first, last: first + 19 }
}

#[test]
fn ivr_early_media_prompt_tap_and_secure_entry_on_loopback() {
    ivr_early_media_prompt_tap_and_secure_entry(ShardOptions::default(), 0);
}

/// The same with busy-polling shards (`[media] busy_poll_us`): spinning must not starve the
/// commands, the prompt pacing or the relay.
#[test]
fn the_same_with_busy_polling_shards() {
    ivr_early_media_prompt_tap_and_secure_entry(ShardOptions { busy_poll: Duration::from_micros(200) }, 1);
}

fn ivr_early_media_prompt_tap_and_secure_entry(options: ShardOptions, slot: u16) {
    let metrics = MediaMetrics::default();
    let (driver, shutdown) =
        MediaDriver::start_with("127.0.0.1".parse().unwrap(), 1, RelayConfig::default(), metrics.clone(), options)
            .unwrap();
    let config = AnchorConfig {
        advertise: "127.0.0.1".parse().unwrap(),
        ports: ports(slot),
        quarantine: Duration::from_secs(1),
        srtp: [SrtpPolicy::Same; 2],
    };
    let mut anchor = Anchor::new(Instant::now(), config, driver, metrics.clone());

    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    caller.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let caller_port = caller.local_addr().unwrap().port();
    let ctx = |from, role| SdpContext { call_id: "ivr-1", from, role };
    anchor.rewrite(ctx(Leg::Caller, SdpRole::Offer), &offer(caller_port, "8 0 101")).unwrap();
    let early = anchor.early_answer("ivr-1").unwrap();
    let d = sdp::parse(&early).unwrap();
    let ours = d.media[0].port;
    assert_eq!(d.media[0].codecs[0].pt, 8, "PCMA, the caller's first choice");

    // the consent gate taps the call before anyone else is on it
    let (tx, taps) = sync_channel(256);
    anchor.control(MediaCommand::OpenTap { call_id: "ivr-1".into(), sink: tx });
    // one second of prompt toward the caller
    let pcm: Arc<[i16]> = (0..8000).map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16).collect();
    anchor.control(MediaCommand::Play { call_id: "ivr-1".into(), leg: Leg::Caller, pcm });

    let start = Instant::now();
    let mut prompt = Vec::new();
    let mut buf = [0u8; 2048];
    let mut sent = 0u16;
    while start.elapsed() < Duration::from_millis(1500) {
        // the caller talks (and keys a digit) while the prompt plays
        if sent < 20 {
            let p = if sent == 10 { rtp(101, sent, &[1, 0x8a, 0, 160]) } else { rtp(8, sent, &[0xd5; 160]) };
            caller.send_to(&p, ("127.0.0.1", ours)).unwrap();
            sent += 1;
        }
        match caller.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from.port(), ours, "prompts leave from the caller-facing port");
                prompt.push((Instant::now(), buf[..n].to_vec()));
            }
            Err(_) => continue,
        }
    }
    assert_eq!(prompt.len(), 50, "one second of audio in 20 ms packets");
    let span = prompt[49].0 - prompt[0].0;
    eprintln!("50 prompt packets arrived over {span:?}");
    assert!(span > Duration::from_millis(850) && span < Duration::from_millis(1400), "paced over {span:?}");
    let headers: Vec<_> = prompt
        .iter()
        .map(|(_, p)| match classify(p) {
            Ok(Packet::Rtp(h)) => h,
            other => panic!("not RTP: {other:?}"),
        })
        .collect();
    for (i, h) in headers.iter().enumerate() {
        assert_eq!(h.payload_type, 8);
        assert_eq!(h.marker, i == 0);
        assert_eq!(h.ssrc, headers[0].ssrc);
        assert_eq!(h.sequence, headers[0].sequence.wrapping_add(i as u16));
        assert_eq!(h.timestamp, headers[0].timestamp.wrapping_add(160 * i as u32));
    }

    // the tap got the caller's audio and key press though nothing could be forwarded
    let frames: Vec<_> = taps.try_iter().filter(|f| f.leg == Leg::Caller).map(|f| f.event).collect();
    let audio = frames.iter().filter(|e| matches!(e, TapEvent::Audio { .. })).count();
    let events = frames.iter().filter(|e| matches!(e, TapEvent::TelephoneEvent { .. })).count();
    assert_eq!((audio, events), (19, 1), "{frames:?}");

    // the callee answers: the caller keeps its port, media flows, secure entry holds the digit
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    callee.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let answer = anchor
        .rewrite(ctx(Leg::Callee, SdpRole::Answer), &offer(callee.local_addr().unwrap().port(), "8 101"))
        .unwrap();
    assert_eq!(sdp::parse(&answer).unwrap().media[0].port, ours, "no re-INVITE needed");
    anchor.control(MediaCommand::SecureEntry { call_id: "ivr-1".into(), on: true });
    anchor.control(MediaCommand::CloseTap { call_id: "ivr-1".into() });
    std::thread::sleep(Duration::from_millis(50)); // the shard applies commands on its next wake-up
    caller.send_to(&rtp(101, 30, &[1, 0x0a, 0, 160]), ("127.0.0.1", ours)).unwrap();
    caller.send_to(&rtp(8, 31, &[0xd5; 160]), ("127.0.0.1", ours)).unwrap();
    let (n, _) = callee.recv_from(&mut buf).unwrap();
    let Ok(Packet::Rtp(h)) = classify(&buf[..n]) else { panic!("not RTP") };
    assert_eq!((h.payload_type, h.sequence), (8, 31), "the telephone-event never arrives");
    assert!(callee.recv_from(&mut buf).is_err());
    assert!(taps.try_recv().is_err(), "tap closed");

    anchor.release("ivr-1");
    shutdown.stop();
    assert!(metrics.played_packets.get() >= 49, "flushed at the shard's ticks");
}
