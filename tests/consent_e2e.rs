//! Consent end to end (issue 4): a SIPp carrier (`tests/sipp/uac_consent.xml`) calls through a
//! real `callveil run` to a SIPp PBX (`tests/sipp/uas_consent.xml`) with recording on, a fresh
//! vault in a temporary directory, the real tiny.en model and a generated IVR prompt. Each test
//! then asserts on what is left: the recordings (row, basis, state, decrypted audio), the consent
//! ledger, tombstones and blobs on disk, callveil's metrics, and the RTP the PBX received.
//!
//! The caller's audio is known sample by sample: a 1 kHz tone while the IVR prompt plays (before
//! any decision), sip-tester's `g711a.pcap` (speech) after the answer, 5 s of silence ("hold")
//! and the `*` `9` keys when a revocation follows, then a 600 Hz tail. So "nothing from before
//! the decision (or after a revocation) is stored" is checked exactly ([`Fit`]): every non-zero
//! sample of the stored caller channel must be one the caller sent inside the permitted span, at
//! its place on the recording's timeline. Zeros (redaction masks, muted audio) may be anywhere;
//! A-law has no zero code, so any sample the caller sent is non-zero.
//!
//! Robust on a loaded two-core machine: outcomes are polled with generous limits (no fixed sleep
//! decides anything), ports are random and checked free, and the SIPp tests run one at a time.
//! A missing `sipp` fails with instructions (or, with `CALLVEIL_SKIP_SIPP=1`, the test passes
//! without running, as in `tests/sipp.rs`); a missing model fails with the command that makes it.
#![allow(clippy::disallowed_methods)] // real processes run on real time

#[path = "sipp/harness.rs"]
mod harness;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use callveil::config::Settings;
use callveil::media::g711::{encode_alaw, ALAW};
use callveil::media::secure::LEAK_BOUND_SAMPLES;
use callveil::pii::Pii;
use callveil::vault::meta::{ConsentRow, ListFilter, RecordingRow, RecordingState};
use callveil::vault::sink::{LawfulBasis, Party};
use callveil::vault::{ConsentQuery, Vault, VaultError, VaultOptions};
use harness::{Bench, Proxy, Transport};
use sha2::{Digest, Sha256};

const SIPP_SHARE: &str = "/usr/share/sip-tester";
/// The caller number in uac_consent.xml.
const CALLER: &str = "+15550100199";
/// Call-ID of the (only) call of each test: SIPp's `-cid_str` with call number 1.
const CALL_ID: &str = "consent-e2e-1";
const ROUTE: &str = "e2e";
/// SSRCs of the generated streams (sip-tester's files use others).
const SSRC_PRE: u32 = 0x5052_4531;
const SSRC_HOLD: u32 = 0x484f_4c44;
const SSRC_TAIL: u32 = 0x5441_494c;
/// The `*` and `9` keys of consent_revoke.pcap, from the start of that file's audio.
const STAR_AT_MS: u64 = 100;
const NINE_AT_MS: u64 = 400;
const KEY_MS: u64 = 160;
const REVOKE_PCAP_MS: u64 = 800;

// ---------------------------------------------------------------------------------------------
// The caller's audio: pcap files SIPp plays, and the samples they carry.

/// One RTP packet to write into a pcap, sent `at_us` after the file starts.
#[derive(Clone)]
struct Rtp {
    at_us: u64,
    pt: u8,
    marker: bool,
    ts: u32,
    ssrc: u32,
    payload: Vec<u8>,
}

/// Writes `packets` as a classic little-endian pcap of Ethernet/IPv4/UDP frames, the form SIPp's
/// `play_pcap_audio` reads (it rewrites addresses and ports and paces by the capture times).
/// Packets are sent in `at_us` order; sequence numbers count up per SSRC in that order.
fn write_pcap(path: &Path, packets: &[Rtp], first_seq: u16) {
    let mut packets = packets.to_vec();
    packets.sort_by_key(|p| p.at_us); // stable: simultaneous packets keep their order
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // time zone, accuracy
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    let mut seqs = std::collections::HashMap::new();
    for p in &packets {
        let seq = seqs.entry(p.ssrc).or_insert(first_seq);
        let rtp_len = 12 + p.payload.len();
        let udp_len = 8 + rtp_len;
        let ip_len = 20 + udp_len;
        let frame_len = (14 + ip_len) as u32;
        out.extend_from_slice(&((p.at_us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((p.at_us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&frame_len.to_le_bytes());
        out.extend_from_slice(&frame_len.to_le_bytes());
        out.extend_from_slice(&[0; 12]);
        out.extend_from_slice(&[0x08, 0x00]);
        out.extend_from_slice(&[0x45, 0]);
        out.extend_from_slice(&(ip_len as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        out.extend_from_slice(&40_000u16.to_be_bytes());
        out.extend_from_slice(&40_002u16.to_be_bytes());
        out.extend_from_slice(&(udp_len as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&[0x80, p.pt | if p.marker { 0x80 } else { 0 }]);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&p.ts.to_be_bytes());
        out.extend_from_slice(&p.ssrc.to_be_bytes());
        out.extend_from_slice(&p.payload);
        *seq = seq.wrapping_add(1);
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn tone(hz: f64, ms: usize) -> Vec<i16> {
    (0..ms * 8).map(|i| (8_000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 8_000.0).sin()) as i16).collect()
}

/// `pcm` as 20 ms PCMA packets from `at_us`, RTP timestamps from `ts`.
fn audio_packets(pcm: &[i16], ssrc: u32, ts: u32, at_us: u64) -> Vec<Rtp> {
    pcm.chunks(160)
        .enumerate()
        .map(|(k, frame)| Rtp {
            at_us: at_us + k as u64 * 20_000,
            pt: 8,
            marker: k == 0,
            ts: ts.wrapping_add(k as u32 * 160),
            ssrc,
            payload: frame.iter().map(|&s| encode_alaw(s)).collect(),
        })
        .collect()
}

/// One key press as RFC 4733 events (PT 101), like sip-tester's dtmf_2833_*.pcap: eight packets
/// 20 ms apart with the duration growing by 20 ms, the last (E bit) sent three times.
fn key_packets(event: u8, ssrc: u32, ts: u32, at_us: u64) -> Vec<Rtp> {
    (0..10u64)
        .map(|k| {
            let i = k.min(7);
            let duration = ((i + 1) * 160) as u16;
            let end = if i == 7 { 0x80 } else { 0 };
            Rtp {
                at_us: at_us + i * 20_000,
                pt: 101,
                marker: k == 0,
                ts,
                ssrc,
                payload: vec![event, end | 10, (duration >> 8) as u8, duration as u8],
            }
        })
        .collect()
}

/// What consent_after.pcap (played right after the answer, before the speech) carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum After {
    Nothing,
    /// `dtmf` mode: a 1 kHz tone until `at_ms`, then the grant key `1` as RFC 4733 events.
    GrantKey {
        at_ms: u64,
    },
    /// Secure entry: speech carrying two RFC 4733 key presses, then in-band key presses (tones
    /// in place of the speech) starting at several offsets inside their packet, each followed by
    /// silence and speech again.
    Keys,
}

/// SSRC of consent_after.pcap.
const SSRC_AFTER: u32 = 0x4146_5452;
/// The RFC 4733 presses of `After::Keys` (event, ms from the file's start), inside its speech.
const AFTER_EVENTS: [(u8, u64); 2] = [(5, 300), (11, 450)];
/// Speech before the first in-band press of `After::Keys`, ms.
const AFTER_LEAD_MS: usize = 650;
/// Where each in-band press of `After::Keys` starts inside its 20 ms packet (samples): before
/// and after the last WINDOW (102) samples of the packet, where the documented leak bound
/// comes from.
const TONE_ONSETS: [usize; 6] = [0, 37, 58, 59, 101, 159];
/// Row and column of each in-band press (keys 1 5 6 3 0 8: no `*` or `9`, the revoke keys).
const TONE_KEYS: [(f64, f64); 6] =
    [(697.0, 1209.0), (770.0, 1336.0), (770.0, 1477.0), (697.0, 1477.0), (941.0, 1336.0), (852.0, 1336.0)];
/// Per-tone amplitude of the in-band presses (about -16 dBFS each).
const TONE_AMP: f64 = 5_000.0;
const TONE_MS: usize = 70;

/// One in-band key press of consent_after.pcap: samples `start..start + len` of its audio.
#[derive(Debug)]
struct Press {
    start: usize,
    len: usize,
    fr: f64,
    fc: f64,
}

/// What consent_after.pcap carries.
struct AfterAudio {
    packets: Vec<Rtp>,
    /// Its audio as sent (A-law decoded): sample k has RTP timestamp k.
    pcm: Vec<i16>,
    /// Per sample: true where the caller sent speech.
    speech: Vec<bool>,
    presses: Vec<Press>,
}

impl AfterAudio {
    fn build(after: After, speech: &[i16]) -> Option<AfterAudio> {
        let (pcm, is_speech, presses, events) = match after {
            After::Nothing => return None,
            After::GrantKey { at_ms } => {
                let pcm = tone(1_000.0, at_ms as usize);
                let events = key_packets(1, SSRC_AFTER, pcm.len() as u32, at_ms * 1_000);
                let n = pcm.len();
                (pcm, vec![false; n], Vec::new(), events)
            }
            After::Keys => {
                // g711a.pcap's speech from 1 s on (it starts with silence)
                let mut src = speech[8_000..].iter().copied();
                let (mut pcm, mut is_speech, mut presses) = (Vec::new(), Vec::new(), Vec::new());
                let mut talk = |pcm: &mut Vec<i16>, is_speech: &mut Vec<bool>, n: usize| {
                    pcm.extend(src.by_ref().take(n));
                    is_speech.resize(pcm.len(), true);
                };
                talk(&mut pcm, &mut is_speech, AFTER_LEAD_MS * 8);
                for (&onset, &(fr, fc)) in TONE_ONSETS.iter().zip(&TONE_KEYS) {
                    // speech up to `onset` samples into a packet, the tone, then silence to the
                    // end of its packet and 100 ms more (the hangover ends well before), speech
                    talk(&mut pcm, &mut is_speech, 960 + onset);
                    let start = pcm.len();
                    let len = TONE_MS * 8;
                    pcm.extend((0..len).map(|i| {
                        let t = i as f64 / 8_000.0;
                        let (wr, wc) = (2.0 * std::f64::consts::PI * fr * t, 2.0 * std::f64::consts::PI * fc * t);
                        (TONE_AMP * wr.sin() + TONE_AMP * (wc + 0.7).sin()).round() as i16
                    }));
                    presses.push(Press { start, len, fr, fc });
                    pcm.resize(pcm.len().next_multiple_of(160) + 800, 0);
                    is_speech.resize(pcm.len(), false);
                }
                talk(&mut pcm, &mut is_speech, 960);
                let events = AFTER_EVENTS
                    .iter()
                    .flat_map(|&(event, at_ms)| key_packets(event, SSRC_AFTER, at_ms as u32 * 8, at_ms * 1_000))
                    .collect();
                (pcm, is_speech, presses, events)
            }
        };
        let mut packets = audio_packets(&pcm, SSRC_AFTER, 0, 0);
        let pcm = alaw(&packets.iter().map(|p| p.payload.clone()).collect::<Vec<_>>());
        packets.extend(events);
        assert!(packets.iter().all(|p| p.at_us < 2_800_000), "consent_after.pcap must fit the caller's 3 s pause");
        Some(AfterAudio { packets, pcm, speech: is_speech, presses })
    }
}

/// RTP payloads of a classic pcap with Ethernet/IPv4/UDP frames (sip-tester's files).
fn pcap_payloads(path: &Path) -> Vec<Vec<u8>> {
    let d = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= d.len() {
        let incl = u32::from_le_bytes(d[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &d[at + 16..at + 16 + incl];
        at += 16 + incl;
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        out.push(ip[ihl + 8 + 12..].to_vec());
    }
    out
}

fn alaw(payloads: &[Vec<u8>]) -> Vec<i16> {
    payloads.iter().flatten().map(|&b| ALAW[usize::from(b)]).collect()
}

/// What the caller sends, decoded, in the order it reaches the recording path's timeline.
struct Material {
    /// sip-tester's g711a.pcap payloads (speech after the answer) and their samples.
    speech_payloads: Vec<Vec<u8>>,
    speech: Vec<i16>,
    /// consent_hold.pcap and the audio of consent_revoke.pcap (silence), then consent_tail.pcap.
    hold: Vec<i16>,
    revoke_audio: Vec<i16>,
    tail: Vec<i16>,
    tail_payloads: Vec<Vec<u8>>,
    pre_payloads: Vec<Vec<u8>>,
    /// consent_after.pcap (played right after the answer, before the speech), when the call has one.
    after: Option<AfterAudio>,
}

impl Material {
    /// Writes the generated pcap files and returns what every file carries.
    fn write(dir: &Path, after: After) -> Material {
        let pre = tone(1_000.0, 1_500);
        write_pcap(&dir.join("consent_pre.pcap"), &audio_packets(&pre, SSRC_PRE, 1_000, 0), 100);
        let hold = vec![0i16; 5_000 * 8];
        write_pcap(&dir.join("consent_hold.pcap"), &audio_packets(&hold, SSRC_HOLD, 0, 0), 300);
        // The keys come in the hold stream (same SSRC, timestamps going on) while its audio
        // continues, as many phones send them.
        let ts0 = hold.len() as u32;
        let revoke_audio = vec![0i16; REVOKE_PCAP_MS as usize * 8];
        let mut packets = audio_packets(&revoke_audio, SSRC_HOLD, ts0, 0);
        for (event, at_ms) in [(10u8, STAR_AT_MS), (9, NINE_AT_MS)] {
            packets.extend(key_packets(event, SSRC_HOLD, ts0 + at_ms as u32 * 8, at_ms * 1_000));
        }
        write_pcap(&dir.join("consent_revoke.pcap"), &packets, 300 + 250);
        let tail = tone(600.0, 1_500);
        let tail_packets = audio_packets(&tail, SSRC_TAIL, 7_000, 0);
        write_pcap(&dir.join("consent_tail.pcap"), &tail_packets, 900);
        let speech_payloads = pcap_payloads(&Path::new(SIPP_SHARE).join("g711a.pcap"));
        let after = AfterAudio::build(after, &alaw(&speech_payloads));
        // SIPp opens every pcap of the scenario when it loads it: one packet of silence when the
        // call does not play it
        let silence = audio_packets(&[0; 160], SSRC_AFTER, 0, 0);
        write_pcap(&dir.join("consent_after.pcap"), after.as_ref().map_or(&silence, |a| &a.packets), 1_200);
        Material {
            speech: alaw(&speech_payloads),
            speech_payloads,
            hold: alaw(&audio_packets(&hold, 0, 0, 0).into_iter().map(|p| p.payload).collect::<Vec<_>>()),
            revoke_audio: alaw(
                &audio_packets(&revoke_audio, 0, 0, 0).into_iter().map(|p| p.payload).collect::<Vec<_>>(),
            ),
            tail: alaw(&tail_packets.iter().map(|p| p.payload.clone()).collect::<Vec<_>>()),
            tail_payloads: tail_packets.into_iter().map(|p| p.payload).collect(),
            pre_payloads: audio_packets(&pre, 0, 0, 0).into_iter().map(|p| p.payload).collect(),
            after,
        }
    }
}

/// How a stored channel relates to the audio the caller sent in the permitted span.
#[derive(Debug)]
struct Fit {
    /// Stored length, ms.
    stored_ms: u64,
    /// Recording time of the first non-zero stored sample, ms.
    first_ms: u64,
    /// Where in the sent audio that first stored sample is, ms (0: the recording took the
    /// permitted span from its first sample).
    sent_from_ms: u64,
    /// Non-zero stored samples equal to the sent sample at their place.
    matching: usize,
    /// Non-zero stored samples that are not (audio from outside the span, or misplaced).
    foreign: usize,
    /// Share of the sent samples from `sent_from_ms` on that are stored unmasked.
    coverage: f64,
}

/// Compares `stored` with `sent`: the first non-zero stored sample is the first audio the
/// recording took; it is located in `sent` (the first place whose next 500 ms agree and that
/// explains every stored sample, else the best), and every later stored sample must then be
/// the sent sample at the same distance.
fn fit(stored: &[i16], sent: &[i16]) -> Fit {
    let first = stored.iter().position(|&s| s != 0).unwrap_or(stored.len());
    let score = |k: usize| {
        let (mut matching, mut foreign) = (0, 0);
        for (i, &s) in stored.iter().enumerate().skip(first) {
            if s == 0 {
                continue;
            }
            if sent.get(i - first + k) == Some(&s) {
                matching += 1;
            } else {
                foreign += 1;
            }
        }
        (matching, foreign)
    };
    // Half a second: longer than the constant silence at the start of g711a.pcap, so the probe
    // agrees with one place only.
    let probe: Vec<(usize, i16)> =
        stored[first..].iter().copied().enumerate().filter(|&(_, s)| s != 0).take(4_000).collect();
    let mut best = (0, score(0));
    for k in 0..sent.len() {
        if best.1 .1 == 0 {
            break;
        }
        if probe.iter().all(|&(i, s)| sent.get(k + i) == Some(&s)) {
            let sc = score(k);
            if sc.1 < best.1 .1 {
                best = (k, sc);
            }
        }
    }
    let (k, (matching, foreign)) = best;
    Fit {
        stored_ms: stored.len() as u64 / 8,
        first_ms: first as u64 / 8,
        sent_from_ms: k as u64 / 8,
        matching,
        foreign,
        coverage: matching as f64 / (sent.len() - k.min(sent.len())).max(1) as f64,
    }
}

fn concat(parts: &[&[i16]]) -> Vec<i16> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

// ---------------------------------------------------------------------------------------------
// One call through callveil.

/// What one test's call looks like.
#[derive(Clone, Copy)]
struct Call {
    /// The route's consent mode (`consent` in `[[sip.routes]]`).
    mode: &'static str,
    /// Caller: the key pressed during the IVR prompt ("1", "2", "none"); ignored without IVR.
    key: &'static str,
    /// Caller: X-Recording-Consent: granted in the INVITE.
    claim: bool,
    /// "none", "dtmf" (caller presses * 9) or "pbx" (PBX INFO with X-Recording-Consent: revoked).
    revoke: &'static str,
    /// PBX: X-Recording-Consent: granted on the 200.
    pbx_grant: bool,
    purge_on_revoke: bool,
    ivr_timeout_s: u64,
    ivr_reprompts: u32,
    /// Signal POSTed to /calls/CALL_ID/consent once callveil knows the call.
    api: Option<&'static str>,
    /// Consent-ledger records the call must leave (the test waits for them).
    ledger_records: usize,
    /// Caller: what consent_after.pcap carries (played right after the answer).
    after: After,
    /// `consent.window_s` (dtmf mode).
    window_s: u64,
    /// The route's `secure_entry`.
    secure_entry: bool,
    /// POST /calls/CALL_ID/secure-entry `on` once callveil knows the call.
    secure_api: bool,
}

impl Call {
    fn ivr(key: &'static str) -> Call {
        Call {
            mode: "ivr",
            key,
            claim: false,
            revoke: "none",
            pbx_grant: false,
            purge_on_revoke: true,
            // far longer than the 1.7 s the caller waits before its key: a slow machine must
            // not turn a grant into a timeout
            ivr_timeout_s: 30,
            ivr_reprompts: 0,
            api: None,
            ledger_records: 1,
            after: After::Nothing,
            window_s: 30,
            secure_entry: false,
            secure_api: false,
        }
    }

    fn mode(mode: &'static str) -> Call {
        Call { mode, ..Call::ivr("none") }
    }
}

/// What a finished call left behind; the vault is read after callveil has stopped.
struct Done {
    bench: Bench,
    settings: Settings,
    config: PathBuf,
    material: Material,
    metrics: String,
    /// The caller's call, INVITE to the 200 for its BYE.
    call_time: Duration,
    /// RTP the PBX received.
    pbx_rtp: Vec<Got>,
    /// When callveil accepted `POST /calls/CALL_ID/secure-entry` `on` (202).
    secure_on_at: Option<Instant>,
    prompt_sha256: String,
}

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ggml-tiny.en.bin")
}

/// 1 s of 440 Hz as the English consent prompt; returns the file's sha256 (what the ledger keeps).
fn write_prompt(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let pcm: Vec<i16> = tone(440.0, 1_000).into_iter().map(|s| s / 2).collect();
    let mut bytes = Vec::new();
    callveil::redact::wav::write(&mut bytes, 8_000, &[pcm]).unwrap();
    std::fs::write(dir.join("en.wav"), &bytes).unwrap();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn config(dir: &Path, c: &Call, sip: u16, metrics: u16, pbx: u16) -> String {
    let media = harness::free_ports(40);
    let storage = dir.join("storage");
    format!(
        "# Written by tests/consent_e2e.rs\n\
         [sip]\nlisten = [\"udp:127.0.0.1:{sip}\", \"tcp:127.0.0.1:{sip}\"]\n\n\
         [[sip.routes]]\nname = \"{ROUTE}\"\nmatch_user = \".*\"\nupstream = [\"udp:127.0.0.1:{pbx}\"]\n\
         consent = \"{mode}\"\nlawful_basis = \"legal_obligation\"\nsecure_entry = {secure}\n\n\
         [media]\nports = \"{}-{}\"\nshards = 1\nquarantine_s = 1\n\n\
         [consent]\nprompt_dir = {:?}\nivr_timeout_s = {}\nivr_reprompts = {}\npurge_on_revoke = {}\nwindow_s = {}\n\n\
         [recording]\nenabled = true\n\n\
         [storage]\ndir = {:?}\n\n\
         [vault]\nkey_file = {:?}\ncreate_keys = true\n\n\
         [redaction]\nmodel = {:?}\nworkers = 1\ndeadline_ms = 120000\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n\
         [log]\nlevel = \"info,callveil=debug\"\n",
        media,
        media + 39,
        dir.join("prompts").display().to_string(),
        c.ivr_timeout_s,
        c.ivr_reprompts,
        c.purge_on_revoke,
        c.window_s,
        storage.display().to_string(),
        dir.join("vault.keys").display().to_string(),
        model().display().to_string(),
        mode = c.mode,
        secure = c.secure_entry,
    )
}

/// One RTP packet the PBX received.
struct Got {
    at: Instant,
    pt: u8,
    ssrc: u32,
    ts: u32,
    payload: Vec<u8>,
}

/// Reads RTP arriving at the PBX's media port until told to stop.
struct Sink {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Got>>,
}

impl Sink {
    fn start() -> Sink {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    if n >= 12 && buf[0] >> 6 == 2 {
                        got.push(Got {
                            at: Instant::now(),
                            pt: buf[1] & 0x7f,
                            ssrc: u32::from_be_bytes(buf[8..12].try_into().unwrap()),
                            ts: u32::from_be_bytes(buf[4..8].try_into().unwrap()),
                            payload: buf[12..n].to_vec(),
                        });
                    }
                }
            }
            got
        });
        Sink { port, stop, thread }
    }

    fn finish(self) -> Vec<Got> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Sum of the samples of metric `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs one call (see [`Call`]) and waits until callveil has nothing of it left open, then
/// stops callveil. `None` when SIPp is missing and the skip variable allows it.
fn run_call(c: Call) -> Option<Done> {
    let _serial = harness::serial();
    if !harness::sipp_available() {
        return None;
    }
    assert!(
        model().is_file(),
        "{} is missing: run scripts/provision-model tiny.en (make test does)",
        model().display()
    );
    let mut bench = Bench::new();
    let dir = bench.path().to_path_buf();
    let material = Material::write(&dir, c.after);
    let prompt_sha256 = write_prompt(&dir.join("prompts"));
    let sink = Sink::start();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let uas = bench.uas(
        "uas_consent.xml",
        Transport::Udp,
        &[("sink_port", &sink.port.to_string()), ("grant", yes_no(c.pbx_grant)), ("revoke", yes_no(c.revoke == "pbx"))],
    );
    let (sip, metrics_port) = (harness::free_port(), harness::free_port());
    let text = config(&dir, &c, sip, metrics_port, uas.addr().port());
    let settings = Settings::from_toml(&text).expect("the test's config is valid");
    let mut proxy = Proxy::callveil_with_config(&dir, sip, metrics_port, &text);
    let uac = bench
        .uac("uac_consent.xml", Transport::Udp)
        .set("ivr", yes_no(c.mode == "ivr"))
        .set("key", c.key)
        .set("claim", yes_no(c.claim))
        .set("revoke", c.revoke)
        .set("after", yes_no(c.after != After::Nothing))
        .call_id_format("consent-e2e-%u")
        .current_dir(&dir)
        .timeout(Duration::from_secs(90));
    let target = proxy.addr();
    let started = Instant::now();
    let caller = std::thread::spawn(move || uac.run(target));
    if let Some(signal) = c.api {
        let path = format!("/calls/{CALL_ID}/consent");
        let accepted = wait_until(Duration::from_secs(30), || {
            harness::http(metrics_port, "POST", &path, signal).is_some_and(|(status, _)| status == 202)
        });
        assert!(accepted, "POST {path} {signal} was never accepted (202); callveil:\n{}", proxy.log_tail());
    }
    let mut secure_on_at = None;
    if c.secure_api {
        let path = format!("/calls/{CALL_ID}/secure-entry");
        let accepted = wait_until(Duration::from_secs(30), || {
            harness::http(metrics_port, "POST", &path, "on").is_some_and(|(status, _)| status == 202)
        });
        assert!(accepted, "POST {path} on was never accepted (202); callveil:\n{}", proxy.log_tail());
        secure_on_at = Some(Instant::now());
    }
    let outcome = caller.join().unwrap();
    let call_time = started.elapsed();
    let ok = outcome.status.is_some_and(|s| s.success()) && outcome.stats.successful == 1;
    assert!(
        ok,
        "the caller's call failed: {:?} exit {:?}\n{}\n--- callveil:\n{}",
        outcome.stats,
        outcome.status,
        outcome.diagnostics,
        proxy.log_tail()
    );
    uas.finish().assert_calls(1);

    // The recording path has let go of the call once its ledger records are written and no
    // call is followed any more (an open recording keeps its call until it is closed).
    let mut text = String::new();
    let settled = wait_until(Duration::from_secs(120), || {
        text = harness::http(metrics_port, "GET", "/metrics", "").map(|(_, b)| b).unwrap_or_default();
        let decided = metric(&text, "callveil_recording_consent_decisions_total", &[]);
        metric(&text, "callveil_recording_calls_active", &[]) == 0.0 && decided >= c.ledger_records as f64
    });
    assert!(
        settled,
        "callveil did not settle the call within 120 s; metrics:\n{text}\n--- callveil:\n{}",
        proxy.log_tail()
    );
    let status = proxy.stop(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "callveil did not stop cleanly: {status:?}\n{}", proxy.log_tail());
    let pbx_rtp = sink.finish();
    let log = std::fs::read_to_string(dir.join("callveil.log")).unwrap_or_default();
    assert!(!log.contains("5550100199"), "the caller's number reached callveil's log (debug level)");
    let config = dir.join("callveil.toml");
    Some(Done { bench, settings, config, material, metrics: text, call_time, pbx_rtp, secure_on_at, prompt_sha256 })
}

impl Done {
    fn vault(&self) -> Vault {
        Vault::open(VaultOptions::from_settings(&self.settings).unwrap()).expect("open the test's vault")
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics, name, labels)
    }

    fn ledger(&self, vault: &Vault) -> Vec<ConsentRow> {
        let rows = vault.consent_records(&ConsentQuery::All).unwrap();
        assert!(rows.iter().all(|r| r.call_id == CALL_ID && r.route == ROUTE), "{rows:#?}");
        // kept under the caller's keyed hash, never the number itself
        let by_subject = vault.consent_records(&ConsentQuery::Subject(Pii::new(CALLER.to_string()))).unwrap();
        assert_eq!(by_subject.len(), rows.len(), "every record is found by the caller's number");
        assert!(rows.iter().all(|r| r.subject_hash.as_deref().is_some_and(|h| !h.contains("5550100199"))));
        rows
    }

    fn recordings(&self, vault: &Vault) -> Vec<RecordingRow> {
        vault.list(&ListFilter::default()).unwrap()
    }

    fn storage(&self) -> PathBuf {
        self.settings.raw.storage.dir.clone()
    }

    /// Blob objects of a recording left on disk.
    fn blobs_of(&self, id: &str) -> usize {
        fn count(p: &Path) -> usize {
            match std::fs::read_dir(p) {
                Ok(entries) => entries.flatten().map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 }).sum(),
                Err(_) => 0,
            }
        }
        count(&self.storage().join("blobs/rec").join(id))
    }

    fn caller_audio(&self, vault: &Vault, id: &str) -> Vec<i16> {
        let (rate, channels) = vault.read_audio(id).unwrap();
        assert_eq!(rate, 8_000);
        channels.into_iter().find(|c| c.party == Party::Caller).expect("a caller channel").samples
    }

    /// Payloads the PBX got from stream `ssrc`, in order.
    fn pbx_got(&self, ssrc: u32) -> Vec<Vec<u8>> {
        self.pbx_rtp.iter().filter(|g| g.pt == 8 && g.ssrc == ssrc).map(|g| g.payload.clone()).collect()
    }

    fn speech_ssrc(&self) -> u32 {
        let d = std::fs::read(Path::new(SIPP_SHARE).join("g711a.pcap")).unwrap();
        // first frame: pcap header 24 + record header 16 + Ethernet 14 + IPv4 20 + UDP 8 + RTP 8
        u32::from_be_bytes(d[24 + 16 + 14 + 20 + 8 + 8..24 + 16 + 14 + 20 + 8 + 12].try_into().unwrap())
    }

    /// The caller's speech reached the PBX whole and byte-exact (the live path carried it).
    fn assert_speech_relayed(&self) {
        assert_eq!(
            self.pbx_got(self.speech_ssrc()),
            self.material.speech_payloads,
            "the caller's speech reached the PBX byte-exact"
        );
    }

    fn report(&self, case: &str, extra: &str) {
        eprintln!("[consent_e2e] {case}: call {:.1} s; {extra}", self.call_time.as_secs_f64());
    }
}

fn one<T: std::fmt::Debug>(mut v: Vec<T>, what: &str) -> T {
    assert_eq!(v.len(), 1, "exactly one {what}: {v:#?}");
    v.remove(0)
}

// ---------------------------------------------------------------------------------------------
// The cases.

/// Case 1: the caller presses 1 during the prompt. The call goes on to the PBX with the caller's
/// audio; the recording rests on the consent ledger record and starts at the decision: its first
/// sample is the first the caller sent after the key, and none of the 1.5 s tone the caller sent
/// during the prompt is in it.
#[test]
fn ivr_grant_records_from_the_decision_on() {
    let Some(done) = run_call(Call::ivr("1")) else { return };
    let vault = done.vault();
    let grant = one(done.ledger(&vault), "ledger record");
    assert_eq!((grant.decision.as_str(), grant.method.as_str(), grant.basis.as_str()), ("granted", "ivr", "consent"));
    assert_eq!(grant.prompt_id.as_deref(), Some("consent-en"));
    assert_eq!(grant.prompt_language.as_deref(), Some("en"));
    assert_eq!(grant.prompt_sha256.as_deref(), Some(done.prompt_sha256.as_str()), "the prompt the caller heard");
    let rec = one(done.recordings(&vault), "recording");
    assert_eq!(rec.basis, LawfulBasis::Consent { ledger_ref: grant.id.clone() });
    assert_eq!(rec.state, RecordingState::Complete);
    assert_eq!(rec.route, ROUTE);
    assert_eq!(rec.started_at_ms, grant.decided_at_ms, "the recording opened at the decision instant");

    let stored = done.caller_audio(&vault, &rec.id);
    let f = fit(&stored, &done.material.speech);
    assert_eq!(f.foreign, 0, "only audio sent after the decision is stored: {f:?}");
    assert_eq!(
        (f.first_ms, f.sent_from_ms),
        (0, 0),
        "the first audio after the key, and nothing before it, is at recording time zero: {f:?}"
    );
    assert!(f.coverage > 0.9, "the caller's speech was cleared and stored: {f:?}");
    let speech_ms = done.material.speech.len() as u64 / 8;
    assert!(f.stored_ms.abs_diff(speech_ms) <= 40, "stored {} ms for {speech_ms} ms sent after the key", f.stored_ms);
    let detail = vault.show(&rec.id).unwrap();
    assert!(
        detail.transcript.iter().any(|l| l.channel == 0 && !l.text.expose().trim().is_empty()),
        "the caller's speech was transcribed"
    );

    done.assert_speech_relayed();
    assert!(done.pbx_got(SSRC_PRE).is_empty(), "audio of the IVR phase stays between caller and callveil");
    assert_eq!(
        done.metric("callveil_recording_consent_decisions_total", &[("method", "ivr"), ("decision", "granted")]),
        1.0
    );
    assert_eq!(done.metric("callveil_recording_recordings_closed_total", &[("kind", "completed")]), 1.0);
    let dropped = done.metric("callveil_recording_frames_dropped_pre_consent_total", &[]);
    assert!(
        dropped >= 50.0,
        "the prompt-time tone reached the recording path (for the keys) and was dropped: {dropped}"
    );

    // The operator's view: the consent list and the export say the same.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_callveil")).args(args).output().unwrap();
        assert!(out.status.success(), "callveil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let config = done.config.display().to_string();
    let listed = cli(&["consent", "list", "--config", &config, "--call-id", CALL_ID]);
    assert!(listed.contains(&grant.id) && listed.contains("granted") && !listed.contains("5550100199"), "{listed}");
    let wav = done.bench.path().join("export.wav");
    cli(&["recordings", "--config", &config, "export", &rec.id, "--out", &wav.display().to_string()]);
    let exported = callveil::redact::wav::read(&std::fs::read(&wav).unwrap()).unwrap();
    assert_eq!(exported.channels[0], stored, "the export holds what the vault holds");

    done.report(
        "ivr grant",
        &format!(
            "recording opened at the decision (+{} ms); caller audio stored {} ms of {speech_ms} ms sent after the key, \
             first sample at {} ms, {} of {} samples identical, 0 foreign; pre-decision frames dropped: {dropped}",
            rec.started_at_ms - grant.decided_at_ms,
            f.stored_ms,
            f.first_ms,
            f.matching,
            done.material.speech.len()
        ),
    );
}

/// Case 2: the caller presses 2. The product forwards the call whatever the answer; nothing is
/// recorded and the ledger says declined. The PBX answering with `X-Recording-Consent: granted`
/// does not overturn the caller's answer on an IVR route: the signal is ignored and counted.
#[test]
fn ivr_decline_forwards_the_call_unrecorded() {
    let Some(done) = run_call(Call { pbx_grant: true, ..Call::ivr("2") }) else { return };
    let vault = done.vault();
    let row = one(done.ledger(&vault), "ledger record");
    assert_eq!((row.decision.as_str(), row.method.as_str(), row.basis.as_str()), ("declined", "ivr", "consent"));
    assert_eq!(row.prompt_sha256.as_deref(), Some(done.prompt_sha256.as_str()));
    assert_eq!(row.recording_id, None);
    assert!(done.recordings(&vault).is_empty(), "nothing recorded");
    assert!(!done.storage().join("blobs/rec").exists(), "no blob was ever written");
    assert_eq!(done.metric("callveil_recording_recordings_opened_total", &[]), 0.0);
    assert_eq!(done.metric("callveil_recording_consent_decisions_total", &[("decision", "declined")]), 1.0);
    assert_eq!(done.metric("callveil_recording_consent_signals_ignored_total", &[]), 1.0, "the PBX's late grant");
    done.assert_speech_relayed();
    done.report(
        "ivr decline",
        "call forwarded and completed; PBX grant after it ignored (counted); no recording; ledger: declined",
    );
}

/// Case 3: no key. The IVR plays the prompt, waits, replays it once, waits again, then gives up
/// and forwards the call: no recording, and the ledger and metrics say no_answer.
#[test]
fn ivr_timeout_forwards_the_call_unrecorded() {
    let call = Call { ivr_timeout_s: 1, ivr_reprompts: 1, ..Call::ivr("none") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let row = one(done.ledger(&vault), "ledger record");
    assert_eq!((row.decision.as_str(), row.method.as_str(), row.basis.as_str()), ("no_answer", "ivr", "consent"));
    assert!(done.recordings(&vault).is_empty(), "nothing recorded");
    assert!(!done.storage().join("blobs/rec").exists(), "no blob was ever written");
    assert_eq!(
        done.metric("callveil_recording_consent_decisions_total", &[("method", "ivr"), ("decision", "no_answer")]),
        1.0
    );
    assert_eq!(done.metric("callveil_recording_recordings_opened_total", &[]), 0.0);
    done.assert_speech_relayed();
    // the caller's own time after the answer is 7.4 s; two rounds of prompt (1 s) + wait (1 s)
    // come before it
    assert!(done.call_time >= Duration::from_millis(7_400 + 4_000), "the IVR waited: call {:?}", done.call_time);
    done.report("ivr timeout", "2 prompts x (1 s + 1 s wait), then forwarded; no recording; ledger: no_answer");
}

/// The ledger of a revoked call: the grant, then the revocation naming the recording.
fn granted_then_revoked(done: &Done, vault: &Vault, method: &str) -> (ConsentRow, ConsentRow) {
    let mut rows = done.ledger(vault);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let revoked = rows.pop().unwrap();
    let grant = rows.pop().unwrap();
    assert_eq!((grant.decision.as_str(), grant.method.as_str()), ("granted", "ivr"));
    assert_eq!(
        (revoked.decision.as_str(), revoked.method.as_str(), revoked.basis.as_str()),
        ("revoked", method, "consent")
    );
    assert!(revoked.recording_id.is_some(), "the revocation names the recording it stopped");
    assert!(revoked.decided_at_ms >= grant.decided_at_ms);
    (grant, revoked)
}

/// Case 4a: consent granted, the caller's speech recorded and sealed, then the caller presses
/// `*` `9`: with `purge_on_revoke` the recording is erased (tombstone, no blobs left); the call
/// itself goes on.
#[test]
fn dtmf_revoke_purges_the_recording() {
    let call = Call { revoke: "dtmf", ledger_records: 2, ..Call::ivr("1") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let (_, revoked) = granted_then_revoked(&done, &vault, "dtmf");
    let id = revoked.recording_id.clone().unwrap();
    assert!(done.recordings(&vault).is_empty(), "the revoked recording is gone");
    match vault.get(&id) {
        Err(VaultError::Erased { reason, .. }) => assert_eq!(reason, "revoked"),
        other => panic!("expected the recording erased, got {other:?}"),
    }
    let tomb = vault.tombstone(&id).unwrap().expect("a tombstone");
    assert_eq!(tomb.reason, "revoked");
    let sealed = done.metric("callveil_vault_chunks_sealed_total", &[]);
    assert!(sealed >= 1.0, "something of the recording was sealed before the revocation: {sealed} chunks");
    assert_eq!(done.blobs_of(&id), 0, "no blob of the recording is left");
    assert_eq!(done.metric("callveil_vault_erasures_total", &[("kind", "revoked")]), 1.0);
    assert_eq!(done.metric("callveil_recording_recordings_closed_total", &[("kind", "purged")]), 1.0);
    assert_eq!(done.pbx_got(SSRC_TAIL), done.material.tail_payloads, "the call went on after the revocation");
    done.report("dtmf revoke, purge", &format!("{sealed} chunks sealed, then erased: tombstone, 0 blobs left"));
}

/// Case 4b: the same call without `purge_on_revoke`: the recording is kept, closed as revoked,
/// and ends at the `9`: it holds the speech and the hold silence up to the keys (masked around
/// them), and nothing of the tail the caller sent after.
#[test]
fn dtmf_revoke_without_purge_ends_the_recording_at_the_keys() {
    let call = Call { revoke: "dtmf", purge_on_revoke: false, ledger_records: 2, ..Call::ivr("1") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let (grant, revoked) = granted_then_revoked(&done, &vault, "dtmf");
    let rec = one(done.recordings(&vault), "recording");
    assert_eq!(Some(&rec.id), revoked.recording_id.as_ref());
    assert_eq!(rec.state, RecordingState::Revoked);
    assert_eq!(rec.basis, LawfulBasis::Consent { ledger_ref: grant.id.clone() });
    let m = &done.material;
    let permitted = concat(&[&m.speech, &m.hold, &m.revoke_audio]);
    let stored = done.caller_audio(&vault, &rec.id);
    let f = fit(&stored, &permitted);
    assert_eq!(f.foreign, 0, "nothing from before the grant or after the revocation: {f:?}");
    assert_eq!((f.first_ms, f.sent_from_ms), (0, 0), "{f:?}");
    let revoke_ms = (m.speech.len() + m.hold.len()) as u64 / 8 + NINE_AT_MS + KEY_MS;
    assert!(
        f.stored_ms.abs_diff(revoke_ms) <= 60,
        "the recording ends at the revoking key ({revoke_ms} ms of caller media), not {} ms",
        f.stored_ms
    );
    let spans = vault.show(&rec.id).unwrap().spans;
    assert!(spans.iter().any(|(ch, _, _, kind)| *ch == 0 && kind == "dtmf"), "the keys are masked: {spans:?}");
    assert!(stored.len() < permitted.len(), "not a sample of the tail");
    done.report(
        "dtmf revoke, keep",
        &format!(
            "recording state revoked; caller audio stored {} ms, revoke key ends at {revoke_ms} ms; {} samples identical, 0 foreign",
            f.stored_ms, f.matching
        ),
    );
}

/// Case 5: the PBX (a configured upstream, on the callee leg) withdraws consent with an INFO
/// carrying `X-Recording-Consent: revoked`: the recording stops and is purged.
#[test]
fn pbx_info_revokes_and_purges() {
    let call = Call { revoke: "pbx", ledger_records: 2, ..Call::ivr("1") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let (_, revoked) = granted_then_revoked(&done, &vault, "header");
    let id = revoked.recording_id.clone().unwrap();
    assert!(done.recordings(&vault).is_empty());
    assert_eq!(vault.tombstone(&id).unwrap().map(|t| t.reason), Some("revoked".to_string()));
    let sealed = done.metric("callveil_vault_chunks_sealed_total", &[]);
    assert!(sealed >= 1.0, "something of the recording was sealed before the revocation: {sealed} chunks");
    assert_eq!(done.blobs_of(&id), 0, "no blob of the recording is left");
    assert_eq!(
        done.metric("callveil_recording_consent_decisions_total", &[("method", "header"), ("decision", "revoked")]),
        1.0
    );
    assert_eq!(done.metric("callveil_sip_dropped_total", &[("kind", "untrusted_consent_header")]), 0.0);
    assert_eq!(done.pbx_got(SSRC_TAIL), done.material.tail_payloads, "the call went on after the revocation");
    done.report(
        "pbx INFO revoke",
        &format!(
            "ledger: granted (ivr), revoked (header); {sealed} chunks sealed, then purged: tombstone, 0 blobs left"
        ),
    );
}

/// Case 6: on a `header` route the carrier claims `X-Recording-Consent: granted` in its INVITE.
/// callveil strips the claim (the PBX scenario fails the call if it arrives), counts it, and
/// records nothing: the call ends undecided.
#[test]
fn carrier_consent_claim_is_ignored() {
    let call = Call { claim: true, ..Call::mode("header") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let row = one(done.ledger(&vault), "ledger record");
    assert_eq!((row.decision.as_str(), row.method.as_str()), ("no_answer", "header"));
    assert!(done.recordings(&vault).is_empty(), "a carrier's claim records nothing");
    assert!(!done.storage().join("blobs/rec").exists());
    let untrusted = done.metric("callveil_sip_dropped_total", &[("kind", "untrusted_consent_header")]);
    assert!(untrusted >= 1.0, "the claim was counted: {untrusted}");
    assert_eq!(done.metric("callveil_recording_recordings_opened_total", &[]), 0.0);
    done.assert_speech_relayed();
    done.report(
        "carrier claim",
        &format!("claim stripped and counted ({untrusted}); no recording; ledger: no_answer (header)"),
    );
}

/// Case 7: a `not_required` route recorded under `legal_obligation`, never as consent. The
/// caller's `*` `9` does not stop it (consent that was never asked cannot be withdrawn): the
/// recording holds the tail too.
#[test]
fn not_required_records_under_the_lawful_basis() {
    let call = Call { revoke: "dtmf", ..Call::mode("not_required") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let row = one(done.ledger(&vault), "ledger record");
    assert_eq!(
        (row.decision.as_str(), row.method.as_str(), row.basis.as_str()),
        ("granted", "not_required", "legal_obligation")
    );
    assert_eq!(row.prompt_id, None, "nobody was asked");
    let rec = one(done.recordings(&vault), "recording");
    assert_eq!(rec.basis, LawfulBasis::Other { name: "legal_obligation".into() });
    assert_eq!(rec.state, RecordingState::Complete, "the revoke keys do not apply");
    let m = &done.material;
    let sent = concat(&[&m.speech, &m.hold, &m.revoke_audio, &m.tail]);
    let stored = done.caller_audio(&vault, &rec.id);
    let f = fit(&stored, &sent);
    assert_eq!(f.foreign, 0, "{f:?}");
    // The recording runs on to the end of the call: the tail's time is stored. Its samples are
    // either the tail itself or muted as unverified (a 600 Hz tone is loud but no word, which the
    // redactor may not clear), never cut short.
    let tail_from = sent.len() - m.tail.len() + f.first_ms as usize * 8;
    assert!(
        stored.len() + 800 >= tail_from + m.tail.len(),
        "the recording stops {} ms early",
        (tail_from + m.tail.len()).saturating_sub(stored.len()) / 8
    );
    let detail = vault.show(&rec.id).unwrap();
    let unverified =
        |ms: u64| detail.spans.iter().any(|(c, a, b, k)| *c == 0 && k == "unverified" && *a <= ms && ms < *b);
    let tail_stored = stored.get(tail_from..).unwrap_or_default();
    let kept = tail_stored.iter().filter(|&&s| s != 0).count();
    let muted_unverified =
        tail_stored.iter().enumerate().filter(|(k, &s)| s == 0 && unverified(((tail_from + k) / 8) as u64)).count();
    assert!(
        kept + muted_unverified > m.tail.len() / 2,
        "the tail after * 9 is recorded: {kept} samples kept, {muted_unverified} muted unverified"
    );
    assert_eq!(done.metric("callveil_recording_consent_decisions_total", &[("decision", "revoked")]), 0.0);
    done.report(
        "not_required",
        &format!(
            "basis legal_obligation; {} ms stored, first audio at {} ms; * 9 ignored, tail kept",
            f.stored_ms, f.first_ms
        ),
    );
}

/// `header` mode: the PBX grants on its 200 OK; the recording rests on the ledger record.
#[test]
fn header_grant_on_the_answer_records() {
    let call = Call { pbx_grant: true, ..Call::mode("header") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let row = one(done.ledger(&vault), "ledger record");
    assert_eq!((row.decision.as_str(), row.method.as_str(), row.basis.as_str()), ("granted", "header", "consent"));
    let rec = one(done.recordings(&vault), "recording");
    assert_eq!(rec.basis, LawfulBasis::Consent { ledger_ref: row.id.clone() });
    assert_eq!(rec.state, RecordingState::Complete);
    assert_eq!(rec.started_at_ms, row.decided_at_ms, "the recording opened at the decision instant");
    let f = fit(&done.caller_audio(&vault, &rec.id), &done.material.speech);
    assert_eq!(f.foreign, 0, "only the caller's speech, in place: {f:?}");
    assert!(f.coverage > 0.9, "{f:?}");
    done.assert_speech_relayed();
    done.report("header grant", &format!("{f:?}"));
}

/// `api` mode: unknown calls and bad bodies are refused; `granted` for the live call records it.
#[test]
fn api_grant_records_the_call() {
    let call = Call { api: Some("granted"), ..Call::mode("api") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let row = one(done.ledger(&vault), "ledger record");
    assert_eq!((row.decision.as_str(), row.method.as_str(), row.basis.as_str()), ("granted", "api", "consent"));
    let rec = one(done.recordings(&vault), "recording");
    assert_eq!(rec.basis, LawfulBasis::Consent { ledger_ref: row.id.clone() });
    assert_eq!(rec.state, RecordingState::Complete);
    assert_eq!(rec.started_at_ms, row.decided_at_ms, "the recording opened at the decision instant");
    // The POST lands whenever the test's poll finds the call, possibly during the speech: the
    // recording holds the speech from there on.
    let f = fit(&done.caller_audio(&vault, &rec.id), &done.material.speech);
    assert_eq!(f.foreign, 0, "only the caller's speech, in place: {f:?}");
    assert!(f.coverage > 0.9, "{f:?}");
    done.report("api grant", &format!("{f:?}"));
}

/// The API's refusals, on a running callveil without a call.
#[test]
fn api_refuses_unknown_calls_and_bad_bodies() {
    let _serial = harness::serial();
    let bench = Bench::new();
    let dir = bench.path().to_path_buf();
    write_prompt(&dir.join("prompts"));
    let (sip, metrics_port) = (harness::free_port(), harness::free_port());
    let text = config(&dir, &Call::mode("api"), sip, metrics_port, harness::free_port());
    let mut proxy = Proxy::callveil_with_config(&dir, sip, metrics_port, &text);
    let post = |path: &str, body: &str| harness::http(metrics_port, "POST", path, body).map(|(s, _)| s);
    assert_eq!(post("/calls/no-such-call/consent", "granted"), Some(404));
    assert_eq!(post("/calls/no-such-call/consent", "maybe"), Some(400));
    let status = proxy.stop(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", proxy.log_tail());
}

/// The exact-audio check must be able to fail: a recording that took the prompt-time tone, or
/// started late, or kept the tail, is caught.
#[test]
fn fit_catches_foreign_and_misplaced_audio() {
    let dir = tempfile::tempdir().unwrap();
    if !Path::new(SIPP_SHARE).join("g711a.pcap").is_file() {
        assert!(harness::sipp_available(), "sip-tester's pcaps are missing");
        return;
    }
    let m = Material::write(dir.path(), After::Nothing);
    let pre = alaw(&m.pre_payloads);
    assert_eq!(fit(&m.speech, &m.speech).foreign, 0);
    assert!(fit(&concat(&[&pre, &m.speech]), &m.speech).foreign > 0, "pre-decision audio is foreign");
    assert!(fit(&concat(&[&m.speech, &m.tail]), &m.speech).foreign > 0, "post-revocation audio is foreign");
    let late = concat(&[&m.speech[160..], &m.speech[..160]]);
    assert!(fit(&late, &m.speech).foreign > 0, "misplaced audio is foreign");
    let late = fit(&m.speech[2_400..], &m.speech);
    assert_eq!((late.foreign, late.sent_from_ms), (0, 300), "a recording that began 300 ms into the speech");
    let mut masked = m.speech.clone();
    masked[8_000..16_000].fill(0);
    let f = fit(&masked, &m.speech);
    assert_eq!((f.foreign, f.first_ms), (0, 0), "masked audio is allowed");
    assert!(f.coverage < 0.9);
}

// ---------------------------------------------------------------------------------------------
// `dtmf` consent mode and secure entry.

/// `dtmf` mode (the PBX runs the IVR): the caller sends a 1 kHz tone for 1 s after the answer,
/// then presses the grant key `1` (RFC 4733) inside the window. The recording rests on the
/// ledger record and holds only what came after the key: none of the tone, all of the speech.
#[test]
fn dtmf_grant_in_the_window_records_from_the_key_on() {
    let call = Call { after: After::GrantKey { at_ms: 1_000 }, ..Call::mode("dtmf") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let grant = one(done.ledger(&vault), "ledger record");
    assert_eq!((grant.decision.as_str(), grant.method.as_str(), grant.basis.as_str()), ("granted", "dtmf", "consent"));
    assert_eq!(grant.prompt_id, None, "the PBX asked, not callveil");
    let rec = one(done.recordings(&vault), "recording");
    assert_eq!(rec.basis, LawfulBasis::Consent { ledger_ref: grant.id.clone() });
    assert_eq!(rec.state, RecordingState::Complete);
    assert_eq!(rec.started_at_ms, grant.decided_at_ms, "the recording opened at the decision instant");
    let stored = done.caller_audio(&vault, &rec.id);
    let f = fit(&stored, &done.material.speech);
    assert_eq!(f.foreign, 0, "nothing the caller sent before the key is stored: {f:?}");
    assert_eq!(f.sent_from_ms, 0, "the speech after the key is stored from its first sample: {f:?}");
    assert!(f.coverage > 0.9, "the caller's speech was cleared and stored: {f:?}");
    // the PBX runs the IVR: it hears the caller from the answer on
    let after = done.material.after.as_ref().unwrap();
    let audio_sent = after.packets.iter().filter(|p| p.pt == 8).count();
    assert_eq!(done.pbx_got(SSRC_AFTER).len(), audio_sent, "the pre-key audio reached the PBX");
    done.assert_speech_relayed();
    assert_eq!(
        done.metric("callveil_recording_consent_decisions_total", &[("method", "dtmf"), ("decision", "granted")]),
        1.0
    );
    assert_eq!(done.metric("callveil_recording_recordings_closed_total", &[("kind", "completed")]), 1.0);
    done.report("dtmf grant", &format!("key 1 at 1.0 s after the answer (window 30 s); {f:?}"));
}

/// `dtmf` mode with a 1 s window: the caller presses `1` 2.5 s after the answer. The window has
/// closed: no recording, the ledger says no_answer (dtmf), no blob was ever written.
#[test]
fn dtmf_key_after_the_window_records_nothing() {
    let call = Call { after: After::GrantKey { at_ms: 2_500 }, window_s: 1, ..Call::mode("dtmf") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let row = one(done.ledger(&vault), "ledger record");
    assert_eq!((row.decision.as_str(), row.method.as_str(), row.basis.as_str()), ("no_answer", "dtmf", "consent"));
    assert_eq!(row.recording_id, None);
    assert!(done.recordings(&vault).is_empty(), "nothing recorded");
    assert!(!done.storage().join("blobs/rec").exists(), "no blob was ever written");
    assert_eq!(done.metric("callveil_recording_recordings_opened_total", &[]), 0.0);
    assert_eq!(
        done.metric("callveil_recording_consent_decisions_total", &[("method", "dtmf"), ("decision", "no_answer")]),
        1.0
    );
    assert_eq!(done.metric("callveil_recording_consent_decisions_total", &[("decision", "granted")]), 0.0);
    done.assert_speech_relayed();
    done.report("dtmf late key", "window 1 s, key 1 at 2.5 s: no recording; ledger: no_answer (dtmf); no blobs");
}

use callveil::dtmf::goertzel::tone_amplitude as amplitude;

/// The weaker of a press's two tones in `x`.
fn dtmf_level(x: &[i16], p: &Press) -> f64 {
    amplitude(x, p.fr).min(amplitude(x, p.fc))
}

impl Done {
    /// Secure entry on consent_after.pcap (`After::Keys`): what reached the PBX and what was
    /// stored. Returns the measurements for the report.
    fn assert_secure_entry(&self, vault: &Vault) -> String {
        let after = self.material.after.as_ref().expect("the call played consent_after.pcap");
        let events_at_pbx = self.pbx_rtp.iter().filter(|g| g.pt == 101).count();
        let events_sent = after.packets.iter().filter(|p| p.pt == 101).count();
        assert_eq!(events_at_pbx, 0, "telephone-event packets reached the PBX ({events_sent} sent)");
        // the PBX's copy of the audio, sample k at RTP timestamp k
        let got: Vec<&Got> = self.pbx_rtp.iter().filter(|g| g.pt == 8 && g.ssrc == SSRC_AFTER).collect();
        let sent: Vec<&Rtp> = after.packets.iter().filter(|p| p.pt == 8).collect();
        assert_eq!(got.len(), sent.len(), "every audio packet reached the PBX (muted or not)");
        let mut heard = vec![0i16; after.pcm.len()];
        for g in &got {
            let at = g.ts as usize;
            heard[at..at + g.payload.len()].copy_from_slice(&alaw(std::slice::from_ref(&g.payload)));
        }
        if let Some(on) = self.secure_on_at {
            // keys count only once secure entry is on: the packet carrying the first one's time
            let first_key = (AFTER_EVENTS[0].1 as u32 * 8) / 160 * 160;
            let g = got.iter().find(|g| g.ts == first_key).unwrap();
            assert!(g.at > on, "the caller's keys were sent before the POST was accepted (202): rerun");
        }
        // speech packets (no tone sample in them) arrive byte-exact
        let mut exact = 0;
        for p in &sent {
            let at = p.ts as usize;
            if after.speech[at..at + p.payload.len()].iter().all(|&s| s) {
                let g = got.iter().find(|g| g.ts == p.ts).unwrap();
                assert_eq!(g.payload, p.payload, "a speech packet (ts {}) reached the PBX changed", p.ts);
                exact += 1;
            }
        }
        assert!(exact >= 60, "{exact} speech packets checked");
        // in-band presses: tone samples that reached the PBX, per press
        let mut per_press = Vec::new();
        for p in &after.presses {
            let span = &heard[p.start..p.start + p.len];
            // the caller sent only tone here: any sample louder than the relay's silence (A-law
            // 0xd5 decodes to 8) is tone
            let leaked = span.iter().filter(|&&x| x.unsigned_abs() > 16).count();
            // and by DTMF-band energy: 5 ms blocks where both of the digit's tones are audible
            let loud = span.chunks(40).filter(|b| dtmf_level(b, p) > TONE_AMP * 0.1).count();
            let sent_level = dtmf_level(&after.pcm[p.start..p.start + p.len], p);
            let db = 20.0 * (sent_level / dtmf_level(span, p).max(1e-3)).log10();
            per_press.push((leaked, loud * 40, db));
        }
        let report = per_press
            .iter()
            .zip(&TONE_ONSETS)
            .map(|((leaked, band, db), onset)| {
                format!("onset {onset}: {leaked} samples ({band} in 5 ms tone blocks), -{db:.0} dB")
            })
            .collect::<Vec<_>>()
            .join("; ");
        eprintln!("[consent_e2e] secure entry per press (bound {LEAK_BOUND_SAMPLES} samples): {report}");
        for (p, &(leaked, band, _)) in after.presses.iter().zip(&per_press) {
            assert!(leaked <= LEAK_BOUND_SAMPLES, "{p:?}: {leaked} tone samples reached the PBX: {report}");
            assert!(band <= LEAK_BOUND_SAMPLES + 80, "{p:?}: {band} samples in blocks with tone energy: {report}");
        }
        self.assert_speech_relayed();
        let suppressed = self.metric("callveil_media_dtmf_events_suppressed_total", &[]);
        let tone_ms = self.metric("callveil_media_tone_suppressed_ms_total", &[]);
        assert!(suppressed >= 1.0, "events suppressed: {suppressed}");

        // the recording (granted on the answer) holds the keys masked: dtmf spans over them,
        // every sample inside a span zero, and no key left for a DTMF receiver to hear
        let rec = one(self.recordings(vault), "recording");
        let stored = self.caller_audio(vault, &rec.id);
        let spans = vault.show(&rec.id).unwrap().spans;
        let dtmf: Vec<(u64, u64)> =
            spans.iter().filter(|(ch, _, _, kind)| *ch == 0 && kind == "dtmf").map(|&(_, a, b, _)| (a, b)).collect();
        let masked_ms: u64 = dtmf.iter().map(|(a, b)| b - a).sum();
        assert!(
            masked_ms >= (after.presses.len() * TONE_MS) as u64,
            "the in-band presses are masked as dtmf spans: {spans:?}"
        );
        let in_spans = dtmf
            .iter()
            .flat_map(|&(a, b)| stored[(a as usize * 8).min(stored.len())..(b as usize * 8).min(stored.len())].iter());
        assert_eq!(in_spans.filter(|&&s| s != 0).count(), 0, "samples inside the dtmf spans are zero: {spans:?}");
        let keys_in = |pcm: &[i16]| {
            let mut d = callveil::dtmf::goertzel::InBandDetector::new(Default::default());
            d.push(pcm);
            d.flush();
            std::iter::from_fn(|| d.poll_event()).count()
        };
        assert_eq!(keys_in(&after.pcm), after.presses.len(), "the detector hears the keys as sent");
        let stored_keys = keys_in(&stored);
        assert_eq!(stored_keys, 0, "key presses audible in the stored recording");
        format!(
            "{events_sent} telephone-event packets sent, {events_at_pbx} at the PBX ({suppressed} events suppressed); \
             {exact} speech packets byte-exact; {tone_ms} ms of tone muted; per press: {report}; \
             recording: dtmf spans {dtmf:?} ms ({masked_ms} ms masked, all zero), {stored_keys} keys audible"
        )
    }
}

/// Secure entry by route (`secure_entry = true`): the caller's telephone-events never reach the
/// PBX, in-band tones reach it only up to the documented bound per press, speech passes
/// byte-exact; the recording (granted by the PBX on the answer) masks the tones.
#[test]
fn secure_entry_route_keeps_the_keys_from_the_pbx() {
    let call = Call { after: After::Keys, secure_entry: true, pbx_grant: true, ..Call::mode("header") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let report = done.assert_secure_entry(&vault);
    done.report("secure entry (route)", &report);
}

/// Secure entry switched on mid-call with `POST /calls/CALL_ID/secure-entry` `on`: the keys the
/// caller sends after the 202 are kept from the PBX as with the route setting.
#[test]
fn secure_entry_api_on_keeps_later_keys_from_the_pbx() {
    let call = Call { after: After::Keys, secure_api: true, pbx_grant: true, ..Call::mode("header") };
    let Some(done) = run_call(call) else { return };
    let vault = done.vault();
    let report = done.assert_secure_entry(&vault);
    done.report("secure entry (api)", &report);
}
