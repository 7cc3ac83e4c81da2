//! End-to-end media anchoring with SIPp (package `sip-tester`): a SIPp caller plays the
//! `g711a.pcap` the package ships through callveil to a callee whose SDP points at a socket this
//! test reads, so every RTP payload can be compared byte for byte; both SIPp sides check that
//! the SDP they receive names callveil's address and a port of its range. Further calls check
//! that no port pair leaks after BYE, CANCEL, a failed INVITE, and the RTP inactivity timeout
//! (which must end the call with BYE on both legs), and that a re-INVITE answered 488 leaves the
//! media where it was (RFC 3261 §14.1).
#![allow(clippy::disallowed_methods)] // a real proxy runs on real time

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callveil::app;
use callveil::config::Settings;
use callveil::media::g711::ALAW;
use callveil::media::tap::{TapEvent, TapFrame};
use callveil::sip::sdp::Leg;

const PCAP: &str = "/usr/share/sip-tester/g711a.pcap";
const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp_media");

fn free_port() -> u16 {
    // even, with the next port free too, for SIPp's media port
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = s.local_addr().unwrap().port();
        if p.is_multiple_of(2) && p < 65000 && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

fn sipp(args: &[String]) -> Command {
    assert!(
        Command::new("sipp").arg("-v").output().is_ok(),
        "SIPp is required (apt-get install sip-tester; scripts/setup does it)"
    );
    let mut c = Command::new("sipp");
    c.args(["-bind_local", "-i", "127.0.0.1", "-mi", "127.0.0.1", "-ci", "127.0.0.1", "-nostdin", "-m", "1"])
        .args(["-timeout", "40s", "-timeout_error", "-cp", &free_port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn scenario(name: &str) -> String {
    format!("{SCENARIOS}/{name}")
}

struct Call {
    running: app::Running,
    uas: Child,
    uas_port: u16,
}

/// Starts callveil (media ports `ports`, inactivity `inactivity_s`) routing to a SIPp uas
/// running `uas_xml` with `extra` arguments.
async fn setup(ports: &str, inactivity_s: u64, uas_xml: &str, extra: &[String]) -> Call {
    let uas_port = free_port();
    let toml = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n[[sip.routes]]\nmatch_user = \".*\"\nupstream = [\"udp:127.0.0.1:{uas_port}\"]\n\
         [media]\nports = \"{ports}\"\ninactivity_timeout_s = {inactivity_s}\nquarantine_s = 1\nshards = 2\n\
         [recording]\nenabled = false\n[metrics]\nlisten = \"\"\n"
    );
    let running = app::start(Settings::from_toml(&toml).unwrap()).await.unwrap();
    let mut args = vec!["-sf".to_string(), scenario(uas_xml), "-p".into(), uas_port.to_string()];
    args.extend_from_slice(extra);
    let uas = sipp(&args).spawn().expect("sipp uas starts");
    // SIPp needs a moment to bind before the first INVITE reaches it
    tokio::time::sleep(Duration::from_millis(300)).await;
    Call { running, uas, uas_port }
}

/// Runs a SIPp uac to completion and returns whether it succeeded, with its stderr. Its first
/// call's Call-ID is `media-e2e-1`.
async fn uac(call: &Call, xml: &str) -> (bool, String) {
    uac_with(call, xml, Vec::new()).await
}

/// [`uac`] with `extra` arguments (e.g. `-key NAME VALUE`).
async fn uac_with(call: &Call, xml: &str, extra: Vec<String>) -> (bool, String) {
    let proxy = call.running.sip_endpoints()[0].addr;
    let mut args = vec![
        "-cid_str".to_string(),
        "media-e2e-%u".into(),
        proxy.to_string(),
        "-sf".into(),
        scenario(xml),
        "-s".into(),
        "4915112345".into(),
        "-p".into(),
        free_port().to_string(),
        "-mp".into(),
        free_port().to_string(),
    ];
    args.extend(extra);
    let out = tokio::task::spawn_blocking(move || sipp(&args).output().unwrap()).await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Waits until the relay shards have flushed their counts (about once a second).
async fn metric_at_least(running: &app::Running, needle: &str, min: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = running.metrics().encode();
        let v = text
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if v >= min || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn finish(mut call: Call) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = call.uas.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = call.uas.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return (status.success(), err, call.running);
            }
            if Instant::now() > deadline {
                let _ = call.uas.kill();
                let _ = call.uas.wait();
                return (false, "uas did not finish".to_string(), call.running);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let (ok, err, running) = out;
    let media = &running.metrics().media;
    // ports leave use at once (into quarantine); allow the core task a moment to process the end
    let deadline = Instant::now() + Duration::from_secs(5);
    while media.ports_in_use.get() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let in_use = media.ports_in_use.get();
    running.stop().await;
    assert_eq!(in_use, 0, "port pairs leaked");
    (ok, err)
}

/// UDP payloads of the RTP packets in a classic pcap with Ethernet/IPv4/UDP frames.
fn pcap_rtp_payloads(path: &Path) -> Vec<Vec<u8>> {
    let d = std::fs::read(path).unwrap();
    assert_eq!(&d[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian classic pcap");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= d.len() {
        let incl = u32::from_le_bytes(d[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &d[at + 16..at + 16 + incl];
        at += 16 + incl;
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        out.push(ip[ihl + 8..].to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcap_audio_arrives_byte_exact_through_callveil() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        let start = Instant::now();
        let mut last = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            match sink.recv_from(&mut buf) {
                Ok((n, from)) => {
                    got.push((buf[..n].to_vec(), from));
                    last = Instant::now();
                }
                Err(_) if !got.is_empty() && last.elapsed() > Duration::from_secs(2) => break,
                Err(_) => {}
            }
        }
        got
    });
    let call =
        setup("41000-41199", 60, "uas_sink.xml", &["-key".into(), "sink_port".into(), sink_port.to_string()]).await;
    let uas_port = call.uas_port;
    let (tap_tx, tap_rx) = std::sync::mpsc::sync_channel(4096);
    let opener = call.running.tap_opener();
    let (uac_result, ()) = tokio::join!(uac(&call, "uac_pcap.xml"), async {
        // the recording path opens the tap once the call is up (consent is not modelled here)
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(opener.open("media-e2e-1", tap_tx));
    });
    let (ok, err) = uac_result;
    assert!(ok, "uac failed: {err}");
    let relayed =
        metric_at_least(&call.running, "callveil_media_packets_total{direction=\"caller_to_callee\"}", 236.0).await;
    assert_eq!(relayed, 236.0, "every pcap packet counted once");
    let tapped = metric_at_least(&call.running, "callveil_media_tap_frames_total", 100.0).await;
    assert!(tapped >= 100.0, "tap frames counted: {tapped}");
    let (ok, err) = finish(call).await;
    assert!(ok, "uas failed: {err}");

    let got = reader.join().unwrap();
    let want = pcap_rtp_payloads(Path::new(PCAP));
    assert_eq!(got.len(), want.len(), "every packet relayed, none added");
    for (i, ((pkt, from), w)) in got.iter().zip(&want).enumerate() {
        assert!((41000..=41199).contains(&from.port()), "packet {i} came from callveil's port, not {from}");
        assert_eq!(pkt[12..], w[12..], "RTP payload {i} differs");
        assert_eq!(pkt, w, "RTP packet {i} differs (the relay does not touch headers)");
    }
    assert_ne!(uas_port, 0);

    // the tap decoded the A-law audio it saw after opening, in order, at the media time the RTP
    // timestamps give (the pcap has 30 ms packets)
    let frames: Vec<TapFrame> = tap_rx.try_iter().collect();
    let audio: Vec<(Duration, Vec<i16>)> = frames
        .iter()
        .filter_map(|f| match &f.event {
            TapEvent::Audio { at, samples } => Some((*at, samples.clone())),
            _ => None,
        })
        .collect();
    assert!(audio.len() > 100, "tap frames: {}", audio.len());
    assert!(frames.iter().all(|f| f.leg == Leg::Caller && f.call > 0), "only the caller sent audio");
    let first = want.len() - audio.len();
    let ts = |p: &[u8]| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    let ts0 = ts(&want[first]);
    for (i, (at, samples)) in audio.iter().enumerate() {
        let pkt = &want[first + i];
        let decoded: Vec<i16> = pkt[12..].iter().map(|b| ALAW[usize::from(*b)]).collect();
        assert_eq!(samples, &decoded, "tap frame {i}");
        let expect = Duration::from_micros(u64::from(ts(pkt).wrapping_sub(ts0)) * 125);
        assert_eq!(*at, expect, "media time of frame {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_releases_the_ports() {
    let call = setup("41200-41399", 60, "uas_ring.xml", &[]).await;
    let (ok, err) = uac(&call, "uac_cancel.xml").await;
    assert!(ok, "uac failed: {err}");
    let (ok, err) = finish(call).await;
    assert!(ok, "uas failed: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_invite_releases_the_ports() {
    let call = setup("41400-41599", 60, "uas_busy.xml", &[]).await;
    let (ok, err) = uac(&call, "uac_busy.xml").await;
    assert!(ok, "uac failed: {err}");
    let (ok, err) = finish(call).await;
    assert!(ok, "uas failed: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_inactivity_ends_the_call_with_bye_on_both_legs() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let call =
        setup("41600-41799", 2, "uas_sink.xml", &["-key".into(), "sink_port".into(), sink_port.to_string()]).await;
    let started = Instant::now();
    let (ok, err) = uac(&call, "uac_wait_bye.xml").await;
    assert!(ok, "uac did not get a BYE with a Reason header: {err}");
    assert!(started.elapsed() >= Duration::from_secs(2), "not before the timeout");
    assert_eq!(call.running.metrics().media.inactivity_timeouts.get(), 1);
    let (ok, err) = finish(call).await;
    assert!(ok, "uas did not get its BYE: {err}");
}

/// A socket reader collecting datagrams until `quiet` passes without one after the first (or
/// `limit` in all).
fn collect(sock: UdpSocket, quiet: Duration, limit: Duration) -> std::thread::JoinHandle<Vec<(Vec<u8>, SocketAddr)>> {
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        let start = Instant::now();
        let mut last = Instant::now();
        while start.elapsed() < limit {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    got.push((buf[..n].to_vec(), from));
                    last = Instant::now();
                }
                Err(_) if !got.is_empty() && last.elapsed() > quiet => break,
                Err(_) => {}
            }
        }
        got
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_answered_488_leaves_the_media_where_it_was() {
    // the caller's first offer names `caller`; its refused re-INVITE names `decoy` (and video)
    let bind = || UdpSocket::bind("127.0.0.1:0").unwrap();
    let (caller, decoy, decoy_video) = (bind(), bind(), bind());
    let port = |s: &UdpSocket| s.local_addr().unwrap().port().to_string();
    let keys = vec![
        "-key".to_string(),
        "caller_port".into(),
        port(&caller),
        "-key".into(),
        "decoy_port".into(),
        port(&decoy),
        "-key".into(),
        "decoy_video".into(),
        port(&decoy_video),
    ];
    let at_caller = collect(caller, Duration::from_secs(2), Duration::from_secs(30));
    let at_decoy = collect(decoy, Duration::from_secs(1), Duration::from_secs(14));
    let call = setup("41800-41999", 60, "uas_reinvite_488.xml", &["-mp".into(), free_port().to_string()]).await;
    let running = &call.running;
    let (uac_result, in_use_during) = tokio::join!(uac_with(&call, "uac_reinvite_488.xml", keys), async {
        // once the callee's audio flows the 488 is behind us: one stream, two pairs, held
        let needle = "callveil_media_packets_total{direction=\"callee_to_caller\"}";
        let mut relayed = 0.0;
        for _ in 0..3 {
            relayed = metric_at_least(running, needle, 1.0).await;
            if relayed >= 1.0 {
                break;
            }
        }
        (relayed, running.metrics().media.ports_in_use.get(), running.metrics().media.offers_rolled_back.get())
    });
    let (ok, err) = uac_result;
    assert!(ok, "uac failed: {err}");
    let (relayed, in_use, rolled_back) = in_use_during;
    assert!(relayed >= 1.0, "the callee's audio was relayed");
    assert_eq!(in_use, 2, "the video stream the refused offer added was released");
    assert_eq!(rolled_back, 1);
    let (ok, err) = finish(call).await;
    assert!(ok, "uas failed: {err}");

    let got = at_caller.join().unwrap();
    assert!(at_decoy.join().unwrap().is_empty(), "nothing went to the address of the refused offer");
    let want = pcap_rtp_payloads(Path::new(PCAP));
    assert_eq!(got.len(), want.len(), "every packet of the callee's audio reached the caller's first address");
    for (i, ((pkt, from), w)) in got.iter().zip(&want).enumerate() {
        assert!((41800..=41999).contains(&from.port()), "packet {i} came from callveil's port, not {from}");
        assert_eq!(pkt, w, "RTP packet {i} differs");
    }
}
