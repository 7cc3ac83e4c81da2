//! SRTP end to end through a running callveil (SIP driver, proxy, anchor, relay shards, real UDP
//! sockets on loopback): a carrier on SRTP (SDES `AES_CM_128_HMAC_SHA1_80`) and a PBX on plain
//! RTP, then the reverse. The peers are hand-written SIP user agents whose media is protected and
//! checked with `rtc-srtp` used directly, from the key material in the SDP they exchanged, so
//! nothing of callveil's own SRTP code stands on the peers' side. Every RTP and RTCP packet is
//! compared byte for byte after decryption (or before encryption); a replayed and a forged
//! packet are dropped. SIPp cannot take a peer's place: the Debian build (3.6.1) has no SRTP.
#![allow(clippy::disallowed_methods)] // a real proxy runs on real time

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use callveil::app;
use callveil::config::Settings;
use callveil::media::sdp::{self, MediaDesc};
use rtc_srtp::context::Context;
use rtc_srtp::crypto::providers::RingCrypto;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;

const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
const PACKETS: u16 = 50;

/// A media port pair of a peer: RTP on an even port, RTCP on the next.
struct Media {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl Media {
    fn bind() -> Media {
        loop {
            let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let p = rtp.local_addr().unwrap().port();
            if !p.is_multiple_of(2) || p >= 65000 {
                continue;
            }
            if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", p + 1)) {
                for s in [&rtp, &rtcp] {
                    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                }
                return Media { rtp, rtcp };
            }
        }
    }

    fn port(&self) -> u16 {
        self.rtp.local_addr().unwrap().port()
    }
}

/// A fresh SDES master key and salt (30 bytes) and its `inline:` form.
fn new_key() -> ([u8; 30], String) {
    let material: [u8; 30] = rand::random();
    (material, format!("inline:{}", STANDARD.encode(material)))
}

/// The key material of an `a=crypto` line callveil wrote.
fn key_of(m: &MediaDesc) -> [u8; 30] {
    assert_eq!(m.crypto.len(), 1, "one a=crypto line");
    let c = &m.crypto[0];
    assert_eq!(c.suite, SUITE);
    let b64 = c.key_params.strip_prefix("inline:").unwrap().split('|').next().unwrap();
    STANDARD.decode(b64).unwrap().try_into().unwrap()
}

fn context(material: &[u8; 30]) -> Context {
    Context::new(
        &material[..16],
        &material[16..],
        ProtectionProfile::Aes128CmHmacSha1_80,
        Some(srtp_replay_protection(64)),
        Some(srtcp_replay_protection(64)),
        &RingCrypto,
    )
    .unwrap()
}

fn offer_sdp(port: u16, srtp: Option<&str>) -> String {
    let (proto, crypto) = match srtp {
        Some(k) => ("RTP/SAVP", format!("a=crypto:1 {SUITE} {k}\r\n")),
        None => ("RTP/AVP", String::new()),
    };
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} {proto} 0 101\r\n\
         a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n{crypto}"
    )
}

/// One RTP packet: PCMU, 160 payload bytes that differ per packet.
fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..160u16).map(|i| (i.wrapping_mul(7) ^ seq) as u8));
    p
}

/// An RTCP sender report with no report blocks.
fn rtcp_sr(ssrc: u32, packets: u32) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0x12; 8]); // NTP timestamp
    p.extend_from_slice(&(packets * 160).to_be_bytes());
    p.extend_from_slice(&packets.to_be_bytes());
    p.extend_from_slice(&(packets * 172).to_be_bytes());
    p
}

fn recv(sock: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    Some((buf[..n].to_vec(), from))
}

fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The call's SIP: the carrier's INVITE through callveil to the PBX, the PBX's 200 back. Returns
/// (the offer the PBX got, the answer the carrier got) as parsed audio m-lines.
fn set_up_call(
    proxy: SocketAddr,
    carrier: &UdpSocket,
    pbx: &UdpSocket,
    offer: &str,
    answer: &str,
) -> (MediaDesc, MediaDesc) {
    let me = carrier.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:4915112345@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-srtp-{port};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carrier@{me}>;tag=c1\r\nTo: <sip:4915112345@{proxy}>\r\n\
         Call-ID: srtp-{port}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:carrier@{me}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{offer}",
        port = me.port(),
        len = offer.len()
    );
    carrier.send_to(invite.as_bytes(), proxy).unwrap();
    let (req, from) = loop {
        let (b, from) = recv(pbx).expect("the INVITE reached the PBX");
        let text = String::from_utf8(b).unwrap();
        if text.starts_with("INVITE ") {
            break (text, from);
        }
    };
    let mut ok = String::from("SIP/2.0 200 OK\r\n");
    for line in req.split("\r\n").take_while(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if ["via:", "from:", "call-id:", "cseq:", "record-route:"].iter().any(|h| lower.starts_with(h)) {
            ok.push_str(line);
            ok.push_str("\r\n");
        } else if lower.starts_with("to:") {
            ok.push_str(&format!("{line};tag=p1\r\n"));
        }
    }
    let pbx_addr = pbx.local_addr().unwrap();
    ok.push_str(&format!(
        "Contact: <sip:pbx@{pbx_addr}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
        answer.len()
    ));
    pbx.send_to(ok.as_bytes(), from).unwrap();
    let resp = loop {
        let (b, _) = recv(carrier).expect("the 200 reached the carrier");
        let text = String::from_utf8(b).unwrap();
        if text.starts_with("SIP/2.0 200") {
            break text;
        }
    };
    let audio = |msg: &str| sdp::parse(body(msg).as_bytes()).unwrap().media.remove(0);
    (audio(&req), audio(&resp))
}

/// Receives `n` datagrams on `sock` (or what comes within 5 s); each must come from callveil's
/// `from_port`.
fn receive(sock: &UdpSocket, n: usize, from_port: u16) -> Vec<Vec<u8>> {
    receive_within(sock, n, from_port, Duration::from_secs(5))
}

fn receive_within(sock: &UdpSocket, n: usize, from_port: u16, within: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    while got.len() < n && Instant::now() < deadline {
        if let Some((b, from)) = recv(sock) {
            assert_eq!(from.port(), from_port, "sent from callveil's port facing this peer");
            got.push(b);
        }
    }
    got
}

/// callveil routing to `pbx`; `slot` picks a media port range of its own per test.
async fn start(srtp_to_callee: &str, pbx: &UdpSocket, slot: u16) -> app::Running {
    let first = 42000 + (std::process::id() % 25) as u16 * 80 + slot * 40;
    let toml = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n[[sip.routes]]\nmatch_user = \".*\"\nupstream = [\"udp:{}\"]\n\
         [media]\nports = \"{first}-{}\"\nshards = 2\nsrtp_to_callee = \"{srtp_to_callee}\"\n\
         [recording]\nenabled = false\n[metrics]\nlisten = \"\"\n",
        pbx.local_addr().unwrap(),
        first + 39
    );
    app::start(Settings::from_toml(&toml).unwrap()).await.unwrap()
}

fn sip_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn metric(running: &app::Running, needle: &str) -> f64 {
    let text = running.metrics().encode();
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_carrier_plain_pbx_byte_exact_both_ways() {
    let (carrier_sip, pbx_sip) = (sip_socket(), sip_socket());
    let running = start("plain", &pbx_sip, 0).await;
    let proxy = running.sip_endpoints()[0].addr;
    let forged = tokio::task::spawn_blocking(move || {
        let (carrier, pbx) = (Media::bind(), Media::bind());
        let (carrier_key, carrier_inline) = new_key();
        let (to_pbx, to_carrier) = set_up_call(
            proxy,
            &carrier_sip,
            &pbx_sip,
            &offer_sdp(carrier.port(), Some(&carrier_inline)),
            &offer_sdp(pbx.port(), None),
        );
        // the PBX was offered plain RTP without any key; the carrier got SRTP with callveil's key
        assert_eq!(to_pbx.proto, "RTP/AVP");
        assert!(to_pbx.crypto.is_empty(), "no key reaches the PBX");
        assert_eq!(to_carrier.proto, "RTP/SAVP");
        let callveil_key = key_of(&to_carrier);
        assert_ne!(callveil_key, carrier_key);
        let (toward_carrier, toward_pbx) = (to_carrier.port, to_pbx.port);

        // carrier -> PBX: SRTP in, plain RTP out, byte-exact after decryption
        let mut carrier_tx = context(&carrier_key);
        let sent: Vec<Vec<u8>> = (1..=PACKETS).map(|seq| rtp(seq, 0xca11)).collect();
        for p in &sent {
            let sealed = carrier_tx.encrypt_rtp(p).unwrap();
            carrier.rtp.send_to(&sealed, ("127.0.0.1", toward_carrier)).unwrap();
        }
        assert_eq!(receive(&pbx.rtp, sent.len(), toward_pbx), sent);
        let sr = rtcp_sr(0xca11, u32::from(PACKETS));
        carrier.rtcp.send_to(&carrier_tx.encrypt_rtcp(&sr).unwrap(), ("127.0.0.1", toward_carrier + 1)).unwrap();
        assert_eq!(receive(&pbx.rtcp, 1, toward_pbx + 1), vec![sr]);

        // PBX -> carrier: plain in, SRTP out with the key callveil announced to the carrier
        let mut carrier_rx = context(&callveil_key);
        let sent: Vec<Vec<u8>> = (1..=PACKETS).map(|seq| rtp(seq.wrapping_add(60000), 0xbeef)).collect();
        for p in &sent {
            pbx.rtp.send_to(p, ("127.0.0.1", toward_pbx)).unwrap();
        }
        let got = receive(&carrier.rtp, sent.len(), toward_carrier);
        assert_eq!(got.len(), sent.len());
        for (g, s) in got.iter().zip(&sent) {
            assert_eq!(g.len(), s.len() + 10, "80-bit tag");
            assert_ne!(g[12..s.len()], s[12..], "the payload is encrypted on the wire");
            assert_eq!(&carrier_rx.decrypt_rtp(g).unwrap()[..], &s[..]);
        }
        let sr = rtcp_sr(0xbeef, u32::from(PACKETS));
        pbx.rtcp.send_to(&sr, ("127.0.0.1", toward_pbx + 1)).unwrap();
        let got = receive(&carrier.rtcp, 1, toward_carrier + 1);
        assert_eq!(&carrier_rx.decrypt_rtcp(&got[0]).unwrap()[..], &sr[..]);

        // a replayed packet and one sealed with a key nobody announced never reach the PBX
        let replay = carrier_tx.encrypt_rtp(&rtp(PACKETS + 1, 0xca11)).unwrap();
        let mut stranger = context(&new_key().0);
        let forged = stranger.encrypt_rtp(&rtp(PACKETS + 2, 0xca11)).unwrap();
        for p in [&replay[..], &replay[..], &forged[..]] {
            carrier.rtp.send_to(p, ("127.0.0.1", toward_carrier)).unwrap();
        }
        let got = receive_within(&pbx.rtp, 3, toward_pbx, Duration::from_secs(1));
        assert_eq!(got, vec![rtp(PACKETS + 1, 0xca11)], "only the first copy");
        2.0
    })
    .await
    .unwrap();
    // the shards flush their counts once a second
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&running, "callveil_media_dropped_total{reason=\"srtp_auth\"}") < forged && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&running, "callveil_media_dropped_total{reason=\"srtp_auth\"}"), forged);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_carrier_srtp_pbx_byte_exact_both_ways() {
    let (carrier_sip, pbx_sip) = (sip_socket(), sip_socket());
    let running = start("sdes", &pbx_sip, 1).await;
    let proxy = running.sip_endpoints()[0].addr;
    tokio::task::spawn_blocking(move || {
        let (carrier, pbx) = (Media::bind(), Media::bind());
        let (pbx_key, pbx_inline) = new_key();
        let (to_pbx, to_carrier) = set_up_call(
            proxy,
            &carrier_sip,
            &pbx_sip,
            &offer_sdp(carrier.port(), None),
            &offer_sdp(pbx.port(), Some(&pbx_inline)),
        );
        // the PBX was offered SRTP with callveil's key; the carrier's answer is plain
        assert_eq!(to_pbx.proto, "RTP/SAVP");
        let callveil_key = key_of(&to_pbx);
        assert_eq!(to_pbx.crypto[0].tag, 1);
        assert_eq!(to_carrier.proto, "RTP/AVP");
        assert!(to_carrier.crypto.is_empty());
        let (toward_carrier, toward_pbx) = (to_carrier.port, to_pbx.port);

        // carrier -> PBX: plain in, SRTP out with callveil's key
        let mut pbx_rx = context(&callveil_key);
        let sent: Vec<Vec<u8>> = (1..=PACKETS).map(|seq| rtp(seq, 0xca11)).collect();
        for p in &sent {
            carrier.rtp.send_to(p, ("127.0.0.1", toward_carrier)).unwrap();
        }
        let got = receive(&pbx.rtp, sent.len(), toward_pbx);
        assert_eq!(got.len(), sent.len());
        for (g, s) in got.iter().zip(&sent) {
            assert_eq!(&pbx_rx.decrypt_rtp(g).unwrap()[..], &s[..]);
        }
        let sr = rtcp_sr(0xca11, u32::from(PACKETS));
        carrier.rtcp.send_to(&sr, ("127.0.0.1", toward_carrier + 1)).unwrap();
        let got = receive(&pbx.rtcp, 1, toward_pbx + 1);
        assert_eq!(&pbx_rx.decrypt_rtcp(&got[0]).unwrap()[..], &sr[..]);

        // PBX -> carrier: SRTP in with the PBX's own key, plain out
        let mut pbx_tx = context(&pbx_key);
        let sent: Vec<Vec<u8>> = (1..=PACKETS).map(|seq| rtp(seq, 0xbeef)).collect();
        for p in &sent {
            pbx.rtp.send_to(&pbx_tx.encrypt_rtp(p).unwrap(), ("127.0.0.1", toward_pbx)).unwrap();
        }
        assert_eq!(receive(&carrier.rtp, sent.len(), toward_carrier), sent);
        let sr = rtcp_sr(0xbeef, u32::from(PACKETS));
        pbx.rtcp.send_to(&pbx_tx.encrypt_rtcp(&sr).unwrap(), ("127.0.0.1", toward_pbx + 1)).unwrap();
        assert_eq!(receive(&carrier.rtcp, 1, toward_carrier + 1), vec![sr]);
    })
    .await
    .unwrap();
    running.stop().await;
}
