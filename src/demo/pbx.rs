//! The demo's PBX/agent user agent (a driver with its own sockets and clock; not part of the
//! proxy): it answers the one INVITE callveil forwards with 180 and, a moment later, 200 with a
//! PCMU SDP answer (retransmitted until the ACK, RFC 3261 §13.3.1.4), plays the agent's greeting
//! and then silence as 20 ms RTP toward callveil, records every PCMU payload it receives, and
//! answers BYE with 200.
//!
//! It serves exactly one call and keeps no state beyond it. It does not check what callveil
//! should have done (that is for the caller of [`PbxUa::run`], from the [`PbxReport`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{interval, sleep_until, Instant, MissedTickBehavior};

use super::{io, parse_rtp, sdp, sdp_media_addr, token, DemoError, RtpStream, FRAME_SAMPLES, PTIME, PT_EVENT, PT_PCMU};
use crate::sip::message::{self, Message, Method};

/// How long the agent's phone rings before it is answered.
const RING: Duration = Duration::from_millis(300);
/// RFC 3261 T1 and T2 for the 200 OK retransmissions.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// What the agent side does.
#[derive(Debug, Clone)]
pub struct PbxConfig {
    /// µ-law greeting, played once from the answer on (whole 20 ms frames).
    pub agent_audio: Vec<u8>,
    /// Give up if the call is not over by then.
    pub timeout: Duration,
}

/// What the agent side saw. Payload bytes are audio, not logged.
#[derive(Debug, Default, Clone)]
pub struct PbxReport {
    /// INVITEs received, retransmissions included.
    pub invites: u32,
    /// When the 200 OK was first sent.
    pub answered_at: Option<Instant>,
    /// PCMU payloads received, in arrival order, concatenated.
    pub received_pcmu: Vec<u8>,
    /// telephone-event packets received (callveil may suppress them toward the agent).
    pub event_packets: u64,
    pub rtp_sent: u64,
    pub bye_received: bool,
}

/// A bound, idle PBX user agent.
pub struct PbxUa {
    sip: UdpSocket,
    rtp: UdpSocket,
}

struct Answered {
    /// callveil's address on the PBX leg (where the INVITE came from).
    peer: SocketAddr,
    ok: Vec<u8>,
    /// Next 200 retransmission and the interval after it; `None` once the ACK came.
    retransmit: Option<(Instant, Duration)>,
    media_to: SocketAddr,
}

impl PbxUa {
    /// Binds the SIP and RTP sockets on `ip` (ephemeral ports).
    pub async fn bind(ip: IpAddr) -> Result<PbxUa, DemoError> {
        let sip = UdpSocket::bind((ip, 0)).await.map_err(io("binding the PBX's SIP socket"))?;
        let rtp = UdpSocket::bind((ip, 0)).await.map_err(io("binding the PBX's RTP socket"))?;
        Ok(PbxUa { sip, rtp })
    }

    /// Where callveil's route must send INVITEs.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves one call to its end (BYE), or fails on timeout, CANCEL or a socket error.
    pub async fn run(self, cfg: PbxConfig) -> Result<PbxReport, DemoError> {
        let deadline = Instant::now() + cfg.timeout;
        let rtp_addr = self.rtp.local_addr().map_err(io("reading the PBX's RTP address"))?;
        let mut report = PbxReport::default();
        let mut stream = RtpStream::new(rand::random(), rand::random(), rand::random());
        let mut ticker = interval(PTIME);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut sip_buf = vec![0u8; 65_536];
        let mut rtp_buf = vec![0u8; 2048];
        let mut ringing: Option<(Message, String, Instant, SocketAddr)> = None;
        let mut call: Option<Answered> = None;
        let mut played = 0usize;
        // After the BYE: answer its retransmissions for a moment, then stop.
        let mut linger: Option<Instant> = None;
        loop {
            let retransmit_at = call.as_ref().and_then(|c| c.retransmit.map(|r| r.0));
            let answer_at = ringing.as_ref().map(|r| r.2);
            let wake = [retransmit_at, answer_at, linger].into_iter().flatten().min().unwrap_or(deadline);
            tokio::select! {
                r = self.sip.recv_from(&mut sip_buf) => {
                    let (n, from) = r.map_err(io("receiving SIP at the PBX"))?;
                    let Ok(msg) = message::parse(&sip_buf[..n]) else { continue };
                    let Some(method) = msg.method().cloned() else { continue };
                    match method {
                        Method::Invite => {
                            report.invites += 1;
                            if let Some(c) = &call {
                                // a retransmitted INVITE: the 200 again (its ACK may be lost)
                                send(&self.sip, &c.ok, from).await?;
                            } else if let Some((_, tag, _, _)) = &ringing {
                                let ring = message::response(&msg, 180, "Ringing", Some(tag), &[]);
                                send(&self.sip, &ring, from).await?;
                            } else {
                                let tag = token();
                                send(&self.sip, &message::response(&msg, 100, "Trying", None, &[]), from).await?;
                                let ring = message::response(&msg, 180, "Ringing", Some(&tag), &[]);
                                send(&self.sip, &ring, from).await?;
                                ringing = Some((msg, tag, Instant::now() + RING, from));
                            }
                        }
                        Method::Ack => {
                            if let Some(c) = &mut call {
                                c.retransmit = None;
                            }
                        }
                        Method::Bye => {
                            report.bye_received = true;
                            send(&self.sip, &message::response(&msg, 200, "OK", None, &[]), from).await?;
                            linger.get_or_insert(Instant::now() + Duration::from_millis(300));
                        }
                        Method::Cancel => {
                            send(&self.sip, &message::response(&msg, 200, "OK", None, &[]), from).await?;
                            if let Some((inv, tag, _, _)) = ringing.take() {
                                let t = message::response(&inv, 487, "Request Terminated", Some(&tag), &[]);
                                send(&self.sip, &t, from).await?;
                            }
                            return Err(DemoError::RemoteBye("CANCEL toward the agent"));
                        }
                        _ => send(&self.sip, &message::response(&msg, 200, "OK", None, &[]), from).await?,
                    }
                }
                r = self.rtp.recv_from(&mut rtp_buf) => {
                    let (n, _) = r.map_err(io("receiving RTP at the PBX"))?;
                    match parse_rtp(&rtp_buf[..n]) {
                        Some((PT_PCMU, _, payload)) => report.received_pcmu.extend_from_slice(payload),
                        Some((PT_EVENT, _, _)) => report.event_packets += 1,
                        _ => {}
                    }
                }
                _ = ticker.tick() => {
                    if let Some(c) = &call {
                        let frame = cfg.agent_audio.get(played..played + FRAME_SAMPLES);
                        let silence = [0xffu8; FRAME_SAMPLES];
                        let pkt = stream.audio(frame.unwrap_or(&silence));
                        played += FRAME_SAMPLES;
                        self.rtp.send_to(&pkt, c.media_to).await.map_err(io("sending RTP from the PBX"))?;
                        report.rtp_sent += 1;
                    }
                }
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    if linger.is_some_and(|l| now >= l) {
                        return Ok(report);
                    }
                    if now >= deadline {
                        let what = if call.is_some() { "the end of the call (BYE)" } else { "an INVITE" };
                        return Err(DemoError::Timeout { who: "callveil (PBX side)", what, secs: cfg.timeout.as_secs() });
                    }
                    if ringing.as_ref().is_some_and(|r| now >= r.2) {
                        let Some((invite, to_tag, _, peer)) = ringing.take() else { continue };
                        let media_to = sdp_media_addr(invite.body()).ok_or(DemoError::BadSdp("the INVITE callveil forwarded"))?;
                        let contact = format!("<sip:agent@{}>", self.sip_addr());
                        let rr: Vec<String> = invite.record_routes().iter().map(|r| r.raw.clone()).collect();
                        let mut extra: Vec<(&str, &str)> = rr.iter().map(|r| ("Record-Route", r.as_str())).collect();
                        extra.push(("Contact", &contact));
                        let body = sdp(rtp_addr, u64::from(rand::random::<u32>()), false);
                        let ok = super::response_with_sdp(&invite, 200, "OK", &to_tag, &extra, &body);
                        send(&self.sip, &ok, peer).await?;
                        report.answered_at = Some(now);
                        call = Some(Answered { peer, ok, retransmit: Some((now + T1, T1)), media_to });
                    }
                    if let Some(c) = &mut call {
                        if let Some((at, every)) = c.retransmit {
                            if now >= at {
                                let every = (every * 2).min(T2);
                                c.retransmit = Some((now + every, every));
                                send(&self.sip, &c.ok, c.peer).await?;
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn send(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) -> Result<(), DemoError> {
    sock.send_to(bytes, to).await.map_err(io("sending SIP from the PBX"))?;
    Ok(())
}
