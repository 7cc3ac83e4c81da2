//! The demo's carrier user agent (a driver with its own sockets and clock; not part of the
//! proxy): it places one call through callveil over UDP and plays the caller's side.
//!
//! The call: INVITE with a PCMU + telephone-event offer (retransmitted on Timer A until a
//! response, RFC 3261 §17.1.1.2); if callveil answers 183 with SDP (its consent IVR), listen to
//! the prompt for a moment, then press the consent key as RFC 4733 events, sending 20 ms RTP
//! throughout so callveil can latch onto the caller's stream; on 200, ACK (again for every
//! retransmitted 200), press the key now if there was no early media, then play the caller's
//! audio paced at 20 ms and hang up with BYE (retransmitted on Timer E until its 200). A call
//! without 183 (callveil forwarding at once) works the same way. Every step has a bounded wait
//! and fails with a message naming it. It checks nothing about callveil; [`CarrierReport`] says
//! what it saw.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{interval, sleep_until, Instant, MissedTickBehavior};

use super::{io, parse_rtp, sdp, sdp_media_addr, token, DemoError, RtpStream, FRAME_SAMPLES, PTIME, PT_PCMU};
use crate::sip::message::{self, Method};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// Timer B / F: a transaction with no answer at all for this long has failed.
const TIMER_B: Duration = Duration::from_secs(32);

/// What the caller does.
#[derive(Debug, Clone)]
pub struct CarrierConfig {
    /// callveil's UDP SIP address.
    pub proxy: SocketAddr,
    /// Caller number (From user part) and dialled number (Request-URI user part).
    pub caller: String,
    pub callee: String,
    /// µ-law speech, whole 20 ms frames.
    pub caller_audio: Vec<u8>,
    /// How long to listen to the IVR prompt before pressing the key.
    pub prompt_listen: Duration,
    /// RFC 4733 event code of the consent key (1 for `1`).
    pub consent_key: u8,
    /// Pause between the answer (or the key press after it) and the first word.
    pub pause_before_speech: Duration,
    /// Silence sent after the speech, before BYE.
    pub tail: Duration,
    /// The whole call must be over by then.
    pub timeout: Duration,
}

/// What the caller saw. Payload bytes are audio, not logged.
#[derive(Debug, Default, Clone)]
pub struct CarrierReport {
    /// A 183 with SDP came before the answer (callveil's IVR).
    pub early_media: bool,
    /// PCMU packets received before the answer (the prompt), and how long after the 183 the
    /// first of them came.
    pub prompt_packets: u64,
    pub prompt_first_after: Option<Duration>,
    /// The consent key was pressed during early media (else after the answer).
    pub key_pressed_early: bool,
    pub key_pressed: bool,
    /// From the first INVITE to the 200.
    pub answered_after: Option<Duration>,
    pub invite_retransmissions: u32,
    pub bye_retransmissions: u32,
    /// PCMU payloads received after the answer (the agent), concatenated in arrival order.
    pub received_pcmu: Vec<u8>,
    pub rtp_sent: u64,
    /// From the first INVITE to the BYE's 200.
    pub call_time: Duration,
}

/// The dialog, once answered: where in-dialog requests go and what they carry.
struct Dialog {
    target: String,
    routes: Vec<String>,
    to: String,
}

/// A request being retransmitted on Timer A / E: bytes, next send, interval, give-up time.
struct Retransmit {
    bytes: Vec<u8>,
    next: Instant,
    every: Duration,
    give_up: Instant,
    /// INVITE: back off without cap (Timer A); others cap at T2 (Timer E).
    cap: bool,
}

impl Retransmit {
    fn new(bytes: Vec<u8>, now: Instant, cap: bool) -> Retransmit {
        Retransmit { bytes, next: now + T1, every: T1, give_up: now + TIMER_B, cap }
    }

    fn advance(&mut self, now: Instant) {
        self.every = if self.cap { (self.every * 2).min(T2) } else { self.every * 2 };
        self.next = now + self.every;
    }
}

struct Local {
    sip: SocketAddr,
    from: String,
    call_id: String,
}

impl Local {
    fn request(&self, method: &str, uri: &str, routes: &[String], to: &str, cseq: u32, branch: &str) -> Vec<u8> {
        let mut m = format!("{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch};rport\r\n", self.sip);
        for r in routes {
            m.push_str(&format!("Route: {r}\r\n"));
        }
        m.push_str(&format!(
            "Max-Forwards: 70\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            self.from, self.call_id
        ));
        m.into_bytes()
    }
}

/// Places the call described by `cfg` and returns what happened once the BYE is answered.
pub async fn run(cfg: CarrierConfig) -> Result<CarrierReport, DemoError> {
    let ip: IpAddr = cfg.proxy.ip();
    let sip = UdpSocket::bind((ip, 0)).await.map_err(io("binding the carrier's SIP socket"))?;
    let rtp = UdpSocket::bind((ip, 0)).await.map_err(io("binding the carrier's RTP socket"))?;
    let sip_addr = sip.local_addr().map_err(io("reading the carrier's SIP address"))?;
    let rtp_addr = rtp.local_addr().map_err(io("reading the carrier's RTP address"))?;

    let started = Instant::now();
    let deadline = started + cfg.timeout;
    let local = Local {
        sip: sip_addr,
        from: format!("<sip:{}@{}>;tag={}", cfg.caller, sip_addr.ip(), token()),
        call_id: format!("{}@callveil-demo", token()),
    };
    let request_uri = format!("sip:{}@{}", cfg.callee, cfg.proxy);
    let to = format!("<sip:{}@{}>", cfg.callee, cfg.proxy);
    let invite_branch = format!("z9hG4bK{}", token());
    let offer = sdp(rtp_addr, u64::from(rand::random::<u32>()), true);
    let invite = format!(
        "INVITE {request_uri} SIP/2.0\r\nVia: SIP/2.0/UDP {sip_addr};branch={invite_branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:{}@{sip_addr}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        local.from,
        local.call_id,
        cfg.caller,
        offer.len()
    )
    .into_bytes();
    sip.send_to(&invite, cfg.proxy).await.map_err(io("sending the INVITE"))?;

    let mut report = CarrierReport::default();
    let mut invite_retx = Some(Retransmit::new(invite, started, false));
    let mut stream = RtpStream::new(rand::random(), rand::random(), rand::random());
    let mut ticker = interval(PTIME);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut sip_buf = vec![0u8; 65_536];
    let mut rtp_buf = vec![0u8; 2048];

    let mut media_to: Option<SocketAddr> = None;
    let mut early_at: Option<Instant> = None;
    let mut key_due: Option<Instant> = None;
    let mut key_packets: VecDeque<Vec<u8>> = VecDeque::new();
    let mut dialog: Option<Dialog> = None;
    let mut ack: Option<Vec<u8>> = None;
    let mut speech_at: Option<Instant> = None;
    let mut played = 0usize;
    let mut bye_due: Option<Instant> = None;
    let mut bye_retx: Option<Retransmit> = None;

    loop {
        let timers = [invite_retx.as_ref().map(|r| r.next), bye_retx.as_ref().map(|r| r.next), bye_due];
        let wake = timers.into_iter().flatten().min().unwrap_or(deadline).min(deadline);
        tokio::select! {
            r = sip.recv_from(&mut sip_buf) => {
                let (n, from) = r.map_err(io("receiving SIP at the carrier"))?;
                let Ok(msg) = message::parse(&sip_buf[..n]) else { continue };
                let now = Instant::now();
                if let Some(method) = msg.method() {
                    // a request from callveil: only BYE (it ended the call) is expected
                    let ok = crate::sip::message::response(&msg, 200, "OK", None, &[]);
                    sip.send_to(&ok, from).await.map_err(io("answering callveil's request"))?;
                    if *method == Method::Bye {
                        return Err(DemoError::RemoteBye("BYE from callveil"));
                    }
                    continue;
                }
                let code = msg.status().unwrap_or(0);
                match msg.cseq().method {
                    Method::Invite => {
                        invite_retx = None;
                        if (101..200).contains(&code) && msg.has_sdp() && dialog.is_none() {
                            media_to = Some(sdp_media_addr(msg.body()).ok_or(DemoError::BadSdp("callveil's 183"))?);
                            if early_at.is_none() {
                                early_at = Some(now);
                                report.early_media = true;
                                key_due = Some(now + cfg.prompt_listen);
                            }
                        } else if (200..300).contains(&code) {
                            if let Some(a) = &ack {
                                // the 200 again: our ACK was lost
                                sip.send_to(a, cfg.proxy).await.map_err(io("sending the ACK"))?;
                                continue;
                            }
                            if msg.has_sdp() {
                                media_to = Some(sdp_media_addr(msg.body()).ok_or(DemoError::BadSdp("the 200 OK"))?);
                            }
                            if media_to.is_none() {
                                return Err(DemoError::BadSdp("the 200 OK"));
                            }
                            let d = Dialog {
                                target: msg.contacts().first().map_or_else(|| request_uri.clone(), |c| c.uri.raw.clone()),
                                routes: msg.record_routes().iter().rev().map(|r| r.raw.clone()).collect(),
                                to: msg.to().raw.clone(),
                            };
                            let a = local.request("ACK", &d.target, &d.routes, &d.to, 1, &format!("z9hG4bK{}", token()));
                            sip.send_to(&a, cfg.proxy).await.map_err(io("sending the ACK"))?;
                            ack = Some(a);
                            dialog = Some(d);
                            report.answered_after = Some(now - started);
                            if !report.key_pressed && key_packets.is_empty() {
                                // no IVR before the answer: press the key now (dtmf consent mode)
                                key_due = Some(now + Duration::from_millis(300));
                            }
                        } else if code >= 300 {
                            let m = local.request("ACK", &request_uri, &[], &msg.to().raw, 1, &invite_branch);
                            sip.send_to(&m, cfg.proxy).await.map_err(io("acknowledging the rejection"))?;
                            let reason = msg.reason().unwrap_or("").to_string();
                            return Err(DemoError::Rejected { code, reason });
                        }
                    }
                    Method::Bye if code >= 200 => {
                        report.call_time = now - started;
                        return Ok(report);
                    }
                    _ => {}
                }
            }
            r = rtp.recv_from(&mut rtp_buf) => {
                let (n, _) = r.map_err(io("receiving RTP at the carrier"))?;
                if let Some((PT_PCMU, _, payload)) = parse_rtp(&rtp_buf[..n]) {
                    if dialog.is_some() {
                        report.received_pcmu.extend_from_slice(payload);
                    } else {
                        report.prompt_packets += 1;
                        if report.prompt_first_after.is_none() {
                            let now = Instant::now();
                            report.prompt_first_after = early_at.map(|e| now - e);
                            // listen to this much of the prompt itself, not of the silence before it
                            key_due = key_due.map(|_| now + cfg.prompt_listen);
                        }
                    }
                }
            }
            _ = ticker.tick() => {
                let Some(to) = media_to else { continue };
                let now = Instant::now();
                if key_due.is_some_and(|k| now >= k) && !report.key_pressed {
                    key_due = None;
                    report.key_pressed = true;
                    report.key_pressed_early = dialog.is_none();
                    key_packets.extend(stream.key_press(cfg.consent_key, 5));
                }
                let pkt = if let Some(p) = key_packets.pop_front() {
                    p
                } else {
                    if dialog.is_some() && report.key_pressed && speech_at.is_none() {
                        speech_at = Some(now + cfg.pause_before_speech);
                    }
                    match speech_at {
                        Some(at) if now >= at && played < cfg.caller_audio.len() => {
                            let end = (played + FRAME_SAMPLES).min(cfg.caller_audio.len());
                            let f = stream.audio(&cfg.caller_audio[played..end]);
                            played = end;
                            if played >= cfg.caller_audio.len() {
                                bye_due = Some(now + cfg.tail);
                            }
                            f
                        }
                        _ => stream.audio(&[0xff; FRAME_SAMPLES]),
                    }
                };
                rtp.send_to(&pkt, to).await.map_err(io("sending RTP from the carrier"))?;
                report.rtp_sent += 1;
            }
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(DemoError::Timeout { who: "callveil", what: "the call", secs: cfg.timeout.as_secs() });
                }
                if let Some(r) = &mut invite_retx {
                    if now >= r.give_up {
                        return Err(DemoError::Timeout { who: "callveil", what: "the INVITE", secs: TIMER_B.as_secs() });
                    }
                    if now >= r.next {
                        sip.send_to(&r.bytes, cfg.proxy).await.map_err(io("resending the INVITE"))?;
                        report.invite_retransmissions += 1;
                        r.advance(now);
                    }
                }
                if bye_due.is_some_and(|b| now >= b) {
                    bye_due = None;
                    if let Some(d) = &dialog {
                        let bye = local.request("BYE", &d.target, &d.routes, &d.to, 2, &format!("z9hG4bK{}", token()));
                        sip.send_to(&bye, cfg.proxy).await.map_err(io("sending the BYE"))?;
                        bye_retx = Some(Retransmit::new(bye, now, true));
                    }
                }
                if let Some(r) = &mut bye_retx {
                    if now >= r.give_up {
                        return Err(DemoError::Timeout { who: "callveil", what: "the BYE", secs: TIMER_B.as_secs() });
                    }
                    if now >= r.next {
                        sip.send_to(&r.bytes, cfg.proxy).await.map_err(io("resending the BYE"))?;
                        report.bye_retransmissions += 1;
                        r.advance(now);
                    }
                }
            }
        }
    }
}
