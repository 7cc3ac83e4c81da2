//! DTMF detectors against real inputs (issue 4). The RFC 4733 tracker reads the telephone-event
//! captures SIPp ships (`dtmf_2833_*.pcap`, parsed here by a minimal pcap reader); the in-band
//! detector reads key presses made by sox (levels, twists, durations, pauses, a 16-key sequence,
//! also through G.711 and in noise); and both the in-band detector and secure entry's per-packet
//! test (`media::secure::ToneSuppressor`) read speech made by espeak-ng (English, Spanish,
//! Portuguese, with spoken digits), sox noise and music-like chords, which must trigger neither;
//! a key press appended to each clip must trigger both (so the counts can fail). Key presses
//! mixed into loud speech (talk-down) are measured and printed, not asserted.
//! Audio is made at test time in a temporary directory. sox, espeak-ng and sip-tester are required
//! (scripts/setup installs them): a missing tool fails the test with a message, it is not skipped.
//! Each group prints its counts (`cargo test --test dtmf_real -- --nocapture`).

use std::path::{Path, PathBuf};
use std::process::Command;

use callveil::dtmf::goertzel::InBandDetector;
use callveil::dtmf::rfc4733::{self, EventTracker};
use callveil::dtmf::{Digit, DtmfEvent, DtmfSource};
use callveil::media::g711;
use callveil::media::playout::Law;
use callveil::media::secure::ToneSuppressor;

const RATE: usize = 8000;
const MS: usize = RATE / 1000;
const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: &str = "123A456B789C*0#D";

fn digit(c: char) -> Digit {
    *Digit::ALL.iter().find(|d| d.as_char() == c).expect("a DTMF key")
}

/// Row and column frequency of a key.
fn freqs(d: Digit) -> (f64, f64) {
    let i = KEYS.find(d.as_char()).expect("every key is on the keypad");
    (ROWS[i / 4], COLS[i % 4])
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// Fails (does not skip) when a tool the test needs is missing.
fn require(tool: &str) {
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`{tool} --version` failed ({}): is {tool} installed correctly?", out.status),
        Err(e) => panic!(
            "{tool} is required by this test but cannot be run ({e}). Install it with scripts/setup \
             (Debian packages sox libsox-fmt-all espeak-ng)."
        ),
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// Reads a WAV the tools wrote: it must be 8 kHz mono PCM16.
fn read_wav(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = r.spec();
    assert_eq!((spec.sample_rate, spec.channels, spec.bits_per_sample), (8000, 1, 16), "{}", path.display());
    r.samples::<i16>().map(|s| s.expect("readable sample")).collect()
}

/// One key press for sox: `lead` samples of silence, `len` samples of the two tones, `trail`
/// samples of silence. Levels are each tone's peak in dBFS; phases are in % of a period.
#[derive(Clone, Copy)]
struct Press {
    digit: Digit,
    row_dbfs: f64,
    col_dbfs: f64,
    row_phase: u32,
    col_phase: u32,
    lead: usize,
    len: usize,
    trail: usize,
    /// Both frequencies times this (a sender's frequency error).
    shift: f64,
}

impl Press {
    /// Both tones at `dbfs` each, 50 ms of silence on each side, phase 0.
    fn new(digit: Digit, dbfs: f64, len_ms: usize) -> Press {
        Press {
            digit,
            row_dbfs: dbfs,
            col_dbfs: dbfs,
            row_phase: 0,
            col_phase: 0,
            lead: 50 * MS,
            len: len_ms * MS,
            trail: 50 * MS,
            shift: 1.0,
        }
    }

    /// Alignment number `k`: the onset moves by 7 samples (against the detector's 51-sample hop
    /// and the 160-sample packets) and the two tones start at unrelated phases.
    fn aligned(mut self, k: usize) -> Press {
        self.lead += (k * 7) % 160;
        self.row_phase = (k * 37 % 100) as u32;
        self.col_phase = ((k * 61 + 13) % 100) as u32;
        self
    }

    /// Twist in dB: positive puts the row tone that much above the column tone (normal twist),
    /// negative the column above the row (reverse twist). The weaker tone keeps its level.
    fn twist(mut self, db: f64) -> Press {
        if db >= 0.0 {
            self.row_dbfs = self.col_dbfs + db;
        } else {
            self.col_dbfs = self.row_dbfs - db;
        }
        self
    }

    fn sox_chain(&self) -> Vec<String> {
        let (fr, fc) = freqs(self.digit);
        let (fr, fc) = (fr * self.shift, fc * self.shift);
        let gain = |dbfs: f64| format!("{:.6}", 10f64.powf(dbfs / 20.0));
        let parts = [
            "synth".to_string(),
            format!("{}s", self.len),
            "sin".into(),
            format!("{fr:.2}"),
            "0".into(),
            self.row_phase.to_string(),
            "sin".into(),
            format!("{fc:.2}"),
            "0".into(),
            self.col_phase.to_string(),
            "remix".into(),
            format!("1v{},2v{}", gain(self.row_dbfs), gain(self.col_dbfs)),
            "pad".into(),
            format!("{}s", self.lead),
            format!("{}s", self.trail),
        ];
        parts.to_vec()
    }
}

/// Where a tone is in the generated audio, in samples.
#[derive(Clone, Copy, Debug)]
struct Edge {
    digit: Digit,
    start: usize,
    end: usize,
}

/// Makes audio with sox and espeak-ng in a temporary directory.
struct Studio {
    dir: tempfile::TempDir,
    files: usize,
}

impl Studio {
    fn new() -> Studio {
        require("sox");
        Studio { dir: tempfile::tempdir().expect("temp dir"), files: 0 }
    }

    fn file(&mut self) -> PathBuf {
        self.files += 1;
        self.dir.path().join(format!("{}.wav", self.files))
    }

    /// `sox -n` at 8 kHz PCM16 mono with these effect arguments (repeatable dither: `-R`).
    fn sox_n(&mut self, effects: &[String]) -> Vec<i16> {
        self.sox_n_at(8000, effects)
    }

    /// As [`Studio::sox_n`], synthesised at `rate` and resampled to 8 kHz by sox.
    fn sox_n_at(&mut self, rate: u32, effects: &[String]) -> Vec<i16> {
        let out = self.file();
        let mut cmd = Command::new("sox");
        cmd.args(["-R", "-r", &rate.to_string(), "-n", "-r", "8000", "-b", "16", "-c", "1", "-e", "signed-integer"])
            .arg(&out)
            .args(effects);
        run(&mut cmd);
        read_wav(&out)
    }

    /// All presses, one after the other, made by one sox run (one effects chain per press), and
    /// where each tone is.
    fn presses(&mut self, presses: &[Press]) -> (Vec<i16>, Vec<Edge>) {
        let mut effects = Vec::new();
        let mut edges = Vec::new();
        let mut at = 0;
        for (i, p) in presses.iter().enumerate() {
            if i > 0 {
                effects.push(":".to_string());
            }
            effects.extend(p.sox_chain());
            edges.push(Edge { digit: p.digit, start: at + p.lead, end: at + p.lead + p.len });
            at += p.lead + p.len + p.trail;
        }
        let pcm = self.sox_n(&effects);
        assert_eq!(pcm.len(), at, "sox made {} samples, expected {at}", pcm.len());
        (pcm, edges)
    }

    /// `seconds` of sox noise (`whitenoise`, `pinknoise`, `brownnoise`) at `gain` (linear).
    fn noise(&mut self, kind: &str, seconds: f64, gain: f64) -> Vec<i16> {
        self.sox_n(&["synth".into(), format!("{seconds}"), kind.into(), "vol".into(), format!("{gain}")])
    }

    /// espeak-ng speech resampled to 8 kHz by sox; `normalise` peaks it at -1 dBFS.
    fn speech(&mut self, voice: &str, speed: u32, pitch: u32, text: &str, normalise: bool) -> Vec<i16> {
        let raw = self.file();
        let out = self.file();
        run(Command::new("espeak-ng")
            .args(["-v", voice, "-s", &speed.to_string(), "-p", &pitch.to_string(), "-w"])
            .arg(&raw)
            .arg(text));
        let mut cmd = Command::new("sox");
        cmd.arg("-R").arg(&raw).args(["-r", "8000", "-b", "16", "-c", "1", "-e", "signed-integer"]).arg(&out);
        if normalise {
            cmd.args(["gain", "-n", "-1"]);
        }
        run(&mut cmd);
        read_wav(&out)
    }
}

// ---------------------------------------------------------------------------------------------
// Running the detectors
// ---------------------------------------------------------------------------------------------

/// The in-band detector over `pcm` in 20 ms frames.
fn detect(pcm: &[i16]) -> Vec<DtmfEvent> {
    let mut det = InBandDetector::default();
    for frame in pcm.chunks(160) {
        det.push(frame);
    }
    det.flush();
    let events: Vec<DtmfEvent> = std::iter::from_fn(|| det.poll_event()).collect();
    assert!(events.iter().all(|e| e.source == DtmfSource::InBand && e.start_ms <= e.end_ms));
    events
}

/// `pcm` encoded to G.711 and decoded again, as a call carries it.
fn through(law: Law, pcm: &[i16]) -> Vec<i16> {
    let table = match law {
        Law::Ulaw => &g711::ULAW,
        Law::Alaw => &g711::ALAW,
    };
    pcm.iter().map(|&x| table[usize::from(law.encode(x))]).collect()
}

/// Secure entry's per-packet test over `pcm` sent as 20 ms G.711 packets: how many packets it
/// would replace by silence, of how many.
fn muted_packets(law: Law, pcm: &[i16]) -> (usize, usize) {
    let mut sup = ToneSuppressor::new();
    let mut muted = 0;
    let mut total = 0;
    for frame in pcm.chunks(160) {
        let payload: Vec<u8> = frame.iter().map(|&x| law.encode(x)).collect();
        total += 1;
        if sup.check(law, &payload) {
            muted += 1;
        }
    }
    (muted, total)
}

/// How detected events line up with the true tones.
#[derive(Default, Debug, Clone, Copy, PartialEq)]
struct Score {
    /// Tones with exactly one event, of the right digit.
    hits: usize,
    /// Tones with no event.
    missed: usize,
    /// Tones with a wrong digit or more than one event.
    wrong: usize,
    /// Events that overlap no tone (false triggers).
    extra: usize,
}

fn score(edges: &[Edge], events: &[DtmfEvent]) -> Score {
    let overlaps = |e: &DtmfEvent, t: &Edge| {
        let (s, end) = (e.start_ms as usize * MS, (e.end_ms as usize + 1) * MS);
        s < t.end && end > t.start
    };
    let mut sc = Score::default();
    for t in edges {
        let on: Vec<&DtmfEvent> = events.iter().filter(|e| overlaps(e, t)).collect();
        match on.as_slice() {
            [] => sc.missed += 1,
            [e] if e.digit == t.digit => sc.hits += 1,
            _ => sc.wrong += 1,
        }
    }
    sc.extra = events.iter().filter(|e| !edges.iter().any(|t| overlaps(e, t))).count();
    sc
}

// ---------------------------------------------------------------------------------------------
// RFC 4733: SIPp's telephone-event captures
// ---------------------------------------------------------------------------------------------

const SIPP_PCAPS: &str = "/usr/share/sip-tester";

/// One RTP packet out of a capture.
#[derive(Clone, Debug)]
struct Rtp {
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    payload: Vec<u8>,
}

/// The UDP payloads of a classic libpcap file (either byte order, µs or ns timestamps) with
/// Ethernet (optionally 802.1Q), Linux cooked (SLL, SLL2) or raw IPv4 framing. Non-IPv4,
/// non-UDP and fragmented packets are skipped; truncated or malformed ones are an error.
fn pcap_udp_payloads(file: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let magic = file.get(..4).ok_or("shorter than a pcap header")?;
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(format!("not a classic pcap file (magic {magic:02x?})")),
    };
    let u32_at = |b: &[u8], at: usize| -> Result<u32, String> {
        let x: [u8; 4] = b.get(at..at + 4).and_then(|s| s.try_into().ok()).ok_or("truncated")?;
        Ok(if le { u32::from_le_bytes(x) } else { u32::from_be_bytes(x) })
    };
    let linktype = u32_at(file, 20)? & 0x0fff_ffff;
    let mut out = Vec::new();
    let mut at = 24;
    while at < file.len() {
        let incl = u32_at(file, at + 8)? as usize;
        let frame = file.get(at + 16..at + 16 + incl).ok_or(format!("record at byte {at} is truncated"))?;
        at += 16 + incl;
        let be16 = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_be_bytes([s[0], s[1]]));
        // (offset of the IP header, ethertype)
        let (ip_at, ethertype) = match linktype {
            1 => {
                let mut t = be16(frame, 12).ok_or("short Ethernet header")?;
                let mut off = 14;
                while t == 0x8100 || t == 0x88a8 {
                    t = be16(frame, off + 2).ok_or("short VLAN tag")?;
                    off += 4;
                }
                (off, t)
            }
            113 => (16, be16(frame, 14).ok_or("short SLL header")?),
            276 => (20, be16(frame, 0).ok_or("short SLL2 header")?),
            101 | 228 => (0, 0x0800),
            other => return Err(format!("unsupported link type {other}")),
        };
        if ethertype != 0x0800 {
            continue;
        }
        let ip = &frame[ip_at.min(frame.len())..];
        let (&vihl, _) = ip.split_first().ok_or("empty IP packet")?;
        if vihl >> 4 != 4 {
            continue;
        }
        let ihl = usize::from(vihl & 0x0f) * 4;
        let total = usize::from(be16(ip, 2).ok_or("short IPv4 header")?);
        let frag = be16(ip, 6).ok_or("short IPv4 header")?;
        if ihl < 20 || total < ihl || total > ip.len() {
            return Err(format!("bad IPv4 lengths (ihl {ihl}, total {total}, captured {})", ip.len()));
        }
        if ip[9] != 17 || frag & 0x3fff != 0 {
            continue; // not UDP, or a fragment
        }
        let udp = &ip[ihl..total];
        let ulen = usize::from(be16(udp, 4).ok_or("short UDP header")?);
        if ulen < 8 || ulen > udp.len() {
            return Err(format!("bad UDP length {ulen}"));
        }
        out.push(udp[8..ulen].to_vec());
    }
    Ok(out)
}

/// RFC 3550 fixed header, CSRCs, extension and padding.
fn parse_rtp(b: &[u8]) -> Result<Rtp, String> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return Err("not RTP version 2".into());
    }
    let mut at = 12 + 4 * usize::from(b[0] & 0x0f);
    if b[0] & 0x10 != 0 {
        let words = b.get(at + 2..at + 4).ok_or("short extension")?;
        at += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let mut end = b.len();
    if b[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*b.last().unwrap_or(&0))).ok_or("bad padding")?;
    }
    let payload = b.get(at..end).ok_or("header longer than the packet")?.to_vec();
    Ok(Rtp {
        marker: b[1] & 0x80 != 0,
        pt: b[1] & 0x7f,
        seq: u16::from_be_bytes([b[2], b[3]]),
        ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        payload,
    })
}

/// The telephone-event packets (PT 101) of one SIPp capture.
fn sipp_capture(name: &str) -> Vec<Rtp> {
    let path = Path::new(SIPP_PCAPS).join(format!("dtmf_2833_{name}.pcap"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}. The sip-tester package ships these captures; install it with scripts/setup.", path.display())
    });
    let udp = pcap_udp_payloads(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rtp: Vec<Rtp> =
        udp.iter().map(|p| parse_rtp(p).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).collect();
    assert!(rtp.iter().all(|p| p.pt == 101), "{name}: only telephone-events expected");
    rtp
}

/// The twelve captures and the key each holds.
fn sipp_keys() -> Vec<(&'static str, Digit)> {
    let mut keys: Vec<(&str, Digit)> =
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"].into_iter().zip(Digit::ALL).collect();
    keys.push(("star", Digit::Star));
    keys.push(("pound", Digit::Hash));
    keys
}

fn feed(t: &mut EventTracker, packets: &[Rtp]) -> Vec<DtmfEvent> {
    for p in packets {
        t.feed(p.ts, p.seq, &p.payload).expect("a telephone-event payload");
    }
    t.flush();
    std::iter::from_fn(|| t.poll_event()).collect()
}

#[test]
fn pcap_reader_refuses_malformed_files() {
    let good = std::fs::read(Path::new(SIPP_PCAPS).join("dtmf_2833_5.pcap")).expect("sip-tester's captures");
    assert_eq!(pcap_udp_payloads(&good).map(|p| p.len()), Ok(10));
    assert!(pcap_udp_payloads(b"GIF89a......").is_err());
    assert!(pcap_udp_payloads(&good[..good.len() - 3]).is_err(), "a truncated record");
    let mut bad_len = good.clone();
    bad_len[24 + 16 + 14 + 2] = 0xff; // IPv4 total length beyond the frame
    assert!(pcap_udp_payloads(&bad_len).is_err());
    assert!(parse_rtp(&[0x80, 101, 0, 1]).is_err());
    assert!(parse_rtp(&[0x40; 16]).is_err());
}

#[test]
fn rfc4733_every_sipp_capture_is_one_press() {
    let mut decoded = String::new();
    let mut full_ms = 0;
    for (name, key) in sipp_keys() {
        let packets = sipp_capture(name);
        // What the capture holds: one press, updates every 20 ms, the end packet sent 3 times.
        let events: Vec<rfc4733::TelephoneEvent> =
            packets.iter().map(|p| rfc4733::parse(&p.payload).expect("4-byte payload")).collect();
        assert_eq!(packets.len(), 10, "{name}");
        assert!(packets[0].marker && packets[1..].iter().all(|p| !p.marker), "{name}: marker on the first packet");
        assert!(packets.iter().all(|p| p.ts == packets[0].ts && p.ssrc == packets[0].ssrc), "{name}");
        assert_eq!(events.iter().filter(|e| e.end).count(), 3, "{name}: three end packets");
        assert!(events.iter().all(|e| e.digit() == Some(key)), "{name}");
        // The duration field grows by 320 units per 20 ms packet, twice the 8 kHz clock (the RTP
        // timestamps between captures do follow 8 kHz), so the events read 280 ms for 140 ms of
        // packets: taken as sent.
        let full = events.iter().map(|e| e.duration).max().unwrap_or(0);
        full_ms = u64::from(full) / 8;
        let base = packets[0].ts;

        let check = |variant: &str, packets: &[Rtp], end_ms: u64, duplicates: u64| {
            let mut t = EventTracker::new(8000, base);
            let evs = feed(&mut t, packets);
            assert_eq!(evs.len(), 1, "{name} {variant}: {} events", evs.len());
            assert_eq!(evs[0].digit, key, "{name} {variant}");
            assert_eq!((evs[0].start_ms, evs[0].end_ms), (0, end_ms), "{name} {variant}");
            assert_eq!(evs[0].source, DtmfSource::Rfc4733);
            assert_eq!(t.duplicates(), duplicates, "{name} {variant}: packets dropped as duplicates");
        };
        // As captured: SIPp repeats the end packet with the same sequence number.
        check("as captured", &packets, full_ms, 2);
        // As RFC 4733 senders do it: each repeat of the end packet with its own sequence number.
        let mut renumbered = packets.clone();
        for (i, p) in renumbered.iter_mut().enumerate() {
            p.seq = packets[0].seq.wrapping_add(i as u16);
        }
        check("renumbered end repeats", &renumbered, full_ms, 2);
        // The network duplicates every packet.
        let doubled: Vec<Rtp> = packets.iter().flat_map(|p| [p.clone(), p.clone()]).collect();
        check("every packet twice", &doubled, full_ms, 12);
        // Reordered: the end packets overtake the last two updates, which are then dropped.
        let mut reordered = renumbered.clone();
        reordered[5..].rotate_left(2);
        check("end packets first", &reordered, full_ms, 4);
        // All three end packets lost: closed by flush with the longest duration seen.
        let updates = &renumbered[..7];
        let seen = updates.iter().map(|p| rfc4733::parse(&p.payload).map_or(0, |e| e.duration)).max().unwrap_or(0);
        check("end packets lost", updates, u64::from(seen) / 8, 0);
        decoded.push(key.as_char());
    }
    eprintln!(
        "rfc4733: {}/12 SIPp captures decoded as one press of the right key ({full_ms} ms), in 5 variants each",
        decoded.len()
    );
    assert_eq!(decoded, "0123456789*#");
}

#[test]
fn rfc4733_all_captures_as_one_stream() {
    // The twelve captures share one SSRC; in sequence-number order they make one stream of
    // twelve presses (capture "0" was taken later than the others: its sequence numbers follow
    // "#" while its RTP timestamp falls between "1" and "2").
    let mut stream: Vec<(Digit, Rtp)> =
        sipp_keys().into_iter().flat_map(|(name, key)| sipp_capture(name).into_iter().map(move |p| (key, p))).collect();
    stream.sort_by_key(|(_, p)| p.seq);
    let base = stream[0].1.ts;
    let mut expected = Vec::new();
    for (key, p) in &stream {
        if expected.last().map(|&(_, ts)| ts) != Some(p.ts) {
            expected.push((*key, p.ts));
        }
    }
    let mut t = EventTracker::new(8000, base);
    let packets: Vec<Rtp> = stream.iter().map(|(_, p)| p.clone()).collect();
    let evs = feed(&mut t, &packets);
    let got: Vec<(char, u64)> = evs.iter().map(|e| (e.digit.as_char(), e.start_ms)).collect();
    let want: Vec<(char, u64)> =
        expected.iter().map(|&(d, ts)| (d.as_char(), u64::from(ts.wrapping_sub(base)) / 8)).collect();
    eprintln!(
        "rfc4733 one stream: {} events for {} presses, {} duplicates dropped",
        got.len(),
        want.len(),
        t.duplicates()
    );
    assert_eq!(got, want);
    assert_eq!(t.duplicates(), 24, "two repeated end packets per press");
}

// ---------------------------------------------------------------------------------------------
// In-band: tones made by sox
// ---------------------------------------------------------------------------------------------

/// Every key once per alignment in `0..aligns`, built by `press`.
fn every_key(aligns: usize, press: impl Fn(Digit, usize) -> Press) -> Vec<Press> {
    (0..aligns).flat_map(|k| Digit::ALL.into_iter().map(move |d| (d, k))).map(|(d, k)| press(d, k)).collect()
}

#[test]
fn inband_levels() {
    let mut studio = Studio::new();
    // Level = peak of the two equal tones together, so each tone is 6 dB lower.
    let accepted = [-3.0, -10.0, -20.0, -30.0, -36.0];
    for level in accepted {
        let presses = every_key(4, |d, k| Press::new(d, level - 6.02, 60).aligned(k));
        let (pcm, edges) = studio.presses(&presses);
        for law in [None, Some(Law::Ulaw), Some(Law::Alaw)] {
            let heard = law.map_or(pcm.clone(), |l| through(l, &pcm));
            let sc = score(&edges, &detect(&heard));
            eprintln!("level {level} dBFS {law:?}: {}/{} detected, {sc:?}", sc.hits, edges.len());
            assert_eq!(sc, Score { hits: edges.len(), ..Score::default() }, "{level} dBFS {law:?}");
        }
    }
    // The floor: 200 per tone (about -44.3 dBFS per tone, -38.3 dBFS together).
    let mut sweep = String::new();
    for level in [-37.0, -38.0, -39.0, -40.0, -45.0, -50.0] {
        let presses = every_key(4, |d, k| Press::new(d, level - 6.02, 60).aligned(k));
        let (pcm, edges) = studio.presses(&presses);
        let sc = score(&edges, &detect(&pcm));
        sweep += &format!(" {level}:{}/{}", sc.hits, edges.len());
        assert_eq!(sc.wrong + sc.extra, 0, "{level} dBFS: {sc:?}");
        if level >= -37.0 {
            assert_eq!(sc.hits, edges.len(), "{level} dBFS is above the floor: {sc:?}");
        }
        if level <= -40.0 {
            assert_eq!(sc.hits, 0, "{level} dBFS is below the floor: {sc:?}");
        }
    }
    eprintln!("level sweep (dBFS: detected/presses):{sweep}");
}

#[test]
fn inband_twist() {
    let mut studio = Studio::new();
    let weak = -22.0;
    let mut table = String::new();
    // (twist dB: + row louder, - column louder; alignments; expected: Some(accepted) or None)
    let mut cases: Vec<(f64, usize, Option<bool>)> = Vec::new();
    for db in 0..=8 {
        cases.push((f64::from(db), if db == 8 { 24 } else { 6 }, Some(true)));
    }
    for db in 1..=4 {
        cases.push((-f64::from(db), if db == 4 { 24 } else { 6 }, Some(true)));
    }
    cases.extend([(10.0, 12, Some(false)), (12.0, 6, Some(false)), (-6.0, 12, Some(false)), (-7.0, 24, Some(false))]);
    // between the nominal limits and the rejected ones: measured, not asserted
    cases.extend([(8.5, 6, None), (9.0, 6, None), (9.5, 6, None), (-4.5, 6, None), (-5.0, 6, None), (-5.5, 6, None)]);
    for (db, aligns, accept) in cases {
        let presses = every_key(aligns, |d, k| Press::new(d, weak, 50).aligned(k).twist(db));
        let (pcm, edges) = studio.presses(&presses);
        for law in [None, Some(Law::Ulaw)] {
            let heard = law.map_or(pcm.clone(), |l| through(l, &pcm));
            let sc = score(&edges, &detect(&heard));
            table += &format!(
                "\n  twist {db:+5.1} dB {:>5}: {:3}/{} detected",
                law.map_or("pcm", |_| "ulaw"),
                sc.hits,
                edges.len()
            );
            assert_eq!(sc.wrong + sc.extra, 0, "twist {db} {law:?}: {sc:?}");
            match accept {
                Some(true) => assert_eq!(sc.hits, edges.len(), "twist {db} dB {law:?} must be accepted: {sc:?}"),
                Some(false) => assert_eq!(sc.hits, 0, "twist {db} dB {law:?} must be rejected: {sc:?}"),
                None => {}
            }
        }
    }
    eprintln!("twist (weaker tone at {weak} dBFS, 50 ms tones, 16 keys x alignments):{table}");
}

#[test]
fn inband_durations_and_pauses() {
    let mut studio = Studio::new();
    let mut table = String::new();
    // (duration, Some(accepted)); None: between Q.24's limits, measured only
    let cases = [
        (40, Some(true)),
        (45, Some(true)),
        (50, Some(true)),
        (60, Some(true)),
        (100, Some(true)),
        (10, Some(false)),
        (15, Some(false)),
        (20, Some(false)),
        (23, Some(false)),
        (24, None),
        (28, None),
        (32, None),
        (36, None),
    ];
    for (ms, accept) in cases {
        let presses = every_key(12, |d, k| Press::new(d, -16.0, ms).aligned(k));
        let (pcm, edges) = studio.presses(&presses);
        for law in [None, Some(Law::Ulaw)] {
            let heard = law.map_or(pcm.clone(), |l| through(l, &pcm));
            let sc = score(&edges, &detect(&heard));
            table +=
                &format!("\n  {ms:3} ms {:>4}: {:3}/{} detected", law.map_or("pcm", |_| "ulaw"), sc.hits, edges.len());
            assert_eq!(sc.wrong + sc.extra, 0, "{ms} ms {law:?}: {sc:?}");
            if let Some(accept) = accept {
                assert_eq!(sc.hits, if accept { edges.len() } else { 0 }, "{ms} ms {law:?}: {sc:?}");
            }
        }
    }
    // The same key twice with a pause of 40 ms or more is two presses (Q.24).
    for pause in [40, 50, 70] {
        let presses = every_key(6, |d, k| {
            let mut p = Press::new(d, -16.0, 50).aligned(k);
            p.trail = pause * MS;
            p
        });
        // every key twice in a row: lead 50 ms (+alignment) only before the first of the pair
        let twice: Vec<Press> = presses
            .iter()
            .flat_map(|p| {
                let mut second = *p;
                second.lead = 0;
                second.trail = 50 * MS;
                [*p, second]
            })
            .collect();
        let (pcm, edges) = studio.presses(&twice);
        let sc = score(&edges, &detect(&pcm));
        table += &format!("\n  same key twice, {pause} ms pause: {}/{} presses", sc.hits, edges.len());
        assert_eq!(sc, Score { hits: edges.len(), ..Score::default() }, "{pause} ms pause");
    }
    eprintln!("durations (-16 dBFS per tone, 16 keys x 12 alignments):{table}");
}

#[test]
fn inband_frequency_tolerance() {
    let mut studio = Studio::new();
    let mut table = String::new();
    // (frequency factor, Some(accepted)); Q.24: accept ±1.5%, reject ±3.5% (here ±5%, as the
    // module documents); between, measured only
    let cases = [
        (0.985, Some(true)),
        (1.015, Some(true)),
        (0.95, Some(false)),
        (1.05, Some(false)),
        (0.975, None),
        (1.025, None),
        (0.965, None),
        (1.035, None),
    ];
    for (shift, accept) in cases {
        for ms in [40, 100] {
            let presses = every_key(12, |d, k| {
                let mut p = Press::new(d, -16.0, ms).aligned(k);
                p.shift = shift;
                p
            });
            let (pcm, edges) = studio.presses(&presses);
            let sc = score(&edges, &detect(&through(Law::Ulaw, &pcm)));
            table += &format!("\n  x{shift} {ms:3} ms: {:3}/{} detected", sc.hits, edges.len());
            if sc.wrong + sc.extra > 0 {
                table += &format!(" ({} split or wrong key, {} extra)", sc.wrong, sc.extra);
            }
            if let Some(accept) = accept {
                assert_eq!(sc.wrong + sc.extra, 0, "x{shift} {ms} ms: {sc:?}");
                assert_eq!(sc.hits, if accept { edges.len() } else { 0 }, "x{shift} {ms} ms: {sc:?}");
            }
        }
    }
    eprintln!("frequency error (-16 dBFS per tone, through µ-law, 16 keys x 12 alignments):{table}");
}

/// The 16 keys in keypad order, with varied durations and pauses, as heard through `law` and
/// over `noise`: all detected in order, with edges at most 20 ms wide of the true ones, never
/// narrower.
fn sequence_case(studio: &mut Studio, label: &str, law: Option<Law>, noise: Option<&[i16]>) {
    let presses: Vec<Press> = KEYS
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let mut p = Press::new(digit(c), -16.0 - (i % 4) as f64 * 3.0, 40 + (i * 23) % 80).aligned(i);
            p.lead = if i == 0 { 300 * MS } else { 0 };
            p.trail = (40 + (i * 17) % 60) * MS + (i * 11) % 8;
            p
        })
        .collect();
    let (mut pcm, edges) = studio.presses(&presses);
    if let Some(noise) = noise {
        for (x, n) in pcm.iter_mut().zip(noise.iter().cycle()) {
            *x = x.saturating_add(*n);
        }
    }
    let pcm = law.map_or(pcm.clone(), |l| through(l, &pcm));
    let events = detect(&pcm);
    let got: String = events.iter().map(|e| e.digit.as_char()).collect();
    assert_eq!(got, KEYS, "{label}");
    let mut worst = (0f64, 0f64);
    for (e, t) in events.iter().zip(&edges) {
        let (start, end) = (t.start as f64 / MS as f64, t.end as f64 / MS as f64);
        // event times are whole milliseconds, rounded down
        let early = start - e.start_ms as f64;
        let late = e.end_ms as f64 + 1.0 - end;
        assert!((-1.0..=20.0).contains(&early), "{label} {}: starts {early:.1} ms before the tone", t.digit.as_char());
        assert!((-1.0..=21.0).contains(&late), "{label} {}: ends {late:.1} ms after the tone", t.digit.as_char());
        worst = (worst.0.max(early), worst.1.max(late));
    }
    eprintln!(
        "16-key sequence {label}: {}/16 in order, event edges up to {:.1} ms early / {:.1} ms late",
        got.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn inband_sixteen_key_sequence() {
    let mut studio = Studio::new();
    sequence_case(&mut studio, "pcm", None, None);
    sequence_case(&mut studio, "ulaw", Some(Law::Ulaw), None);
    sequence_case(&mut studio, "alaw", Some(Law::Alaw), None);
    // pink noise about 20 dB below the tones
    let noise = studio.noise("pinknoise", 3.0, 0.03);
    sequence_case(&mut studio, "pink noise, ulaw", Some(Law::Ulaw), Some(&noise));
    let noise = studio.noise("whitenoise", 3.0, 0.02);
    sequence_case(&mut studio, "white noise", None, Some(&noise));
}

// ---------------------------------------------------------------------------------------------
// Talk-off: speech, noise and music must trigger neither the detector nor secure entry
// ---------------------------------------------------------------------------------------------

const SENTENCES: [(&str, &str); 6] = [
    (
        "en-us",
        "My card number is four one one one, two two two two, three three three three, four four four four. \
         The expiry date is oh nine twenty seven and the security code is seven three two. \
         Could you read the order number back to me please? Nine five one oh eight six.",
    ),
    (
        "en-gb",
        "Good morning, I'm calling about my account. My phone number is oh seven seven double oh, \
         nine hundred and eighty one, two four six. Press one for sales, two for support, or hold.",
    ),
    (
        "es",
        "Buenos días. El número de mi tarjeta es cuatro cinco cero cero, uno dos tres cuatro, \
         cinco seis siete ocho, nueve cero uno dos. El código de seguridad es trescientos cuarenta y siete.",
    ),
    (
        "es-419",
        "Hola, quisiera pagar la factura. Mi documento es veintitrés millones cuatrocientos mil \
         ciento doce, y la fecha de vencimiento es once del veintiocho. Muchas gracias, señorita.",
    ),
    (
        "pt",
        "Bom dia, o número do meu cartão é cinco três dois um, nove nove oito sete, \
         seis seis cinco quatro, zero zero um dois, e o código é oitocentos e dezanove.",
    ),
    (
        "pt-br",
        "Oi, tudo bem? Meu CPF é um dois três, quatro cinco seis, sete oito nove, zero zero. \
         O telefone é onze, nove oito sete seis cinco, quatro três dois um. Obrigado!",
    ),
];

/// A key press after `pcm` must show in every check: the talk-off counts can fail.
fn control(studio: &mut Studio, label: &str, pcm: &[i16]) {
    let (tone, _) = studio.presses(&[Press::new(Digit::D5, -16.0, 60)]);
    let (events, muted, _) = talk_off(&[pcm, &tone].concat());
    assert!(events == 2 && muted >= 4, "{label} then a key press: {events} events, {muted} packets muted");
}

/// Key presses over speech (talk-down, measured, not asserted): 60 ms presses at `dbfs` per tone
/// every 400 ms mixed into `speech`; how many the detector finds, and how many secure entry mutes
/// (at least one packet per press).
fn talk_down(studio: &mut Studio, speech: &[i16], dbfs: f64) -> (usize, usize, usize) {
    let presses: Vec<Press> = (0..speech.len() / (400 * MS))
        .map(|i| {
            let mut p = Press::new(Digit::ALL[i % 16], dbfs, 60);
            p.lead = 170 * MS;
            p.trail = 170 * MS;
            p
        })
        .collect();
    let (tones, edges) = studio.presses(&presses);
    let mixed: Vec<i16> = speech.iter().zip(&tones).map(|(a, b)| a.saturating_add(*b)).collect();
    let sc = score(&edges, &detect(&through(Law::Ulaw, &mixed)));
    let mut sup = ToneSuppressor::new();
    let muted: Vec<bool> = mixed
        .chunks(160)
        .map(|f| sup.check(Law::Ulaw, &f.iter().map(|&x| Law::Ulaw.encode(x)).collect::<Vec<u8>>()))
        .collect();
    let caught = edges.iter().filter(|t| (t.start / 160..t.end.div_ceil(160)).any(|i| muted[i])).count();
    (sc.hits, caught, edges.len())
}

/// The three checks on one clip: events from the in-band detector (linear and through µ-law)
/// and packets secure entry would mute (µ-law and A-law).
fn talk_off(pcm: &[i16]) -> (usize, usize, usize) {
    let events = detect(pcm).len() + detect(&through(Law::Ulaw, pcm)).len();
    let (mu, total) = muted_packets(Law::Ulaw, pcm);
    let (a, _) = muted_packets(Law::Alaw, pcm);
    (events, mu + a, 2 * total)
}

#[test]
fn speech_triggers_nothing() {
    require("espeak-ng");
    let mut studio = Studio::new();
    let (mut events, mut muted, mut packets, mut seconds) = (0, 0, 0, 0.0);
    let mut failures = Vec::new();
    let mut talkdown = String::new();
    // each sentence with the voice's default sound, faster and higher, slower and lower, and with
    // female and other variants; loud (peak -1 dBFS) and as espeak-ng makes it
    for (voice, text) in SENTENCES {
        for (variant, speed, pitch, normalise) in [
            ("", 160, 50, true),
            ("", 220, 85, true),
            ("", 120, 20, false),
            ("+f3", 170, 60, true),
            ("+klatt2", 160, 50, true),
            ("+m7", 150, 40, false),
        ] {
            let v = format!("{voice}{variant}");
            let pcm = studio.speech(&v, speed, pitch, text, normalise);
            let (e, m, p) = talk_off(&pcm);
            events += e;
            muted += m;
            packets += p;
            seconds += pcm.len() as f64 / RATE as f64;
            if e + m > 0 {
                failures.push(format!("{v} -s {speed} -p {pitch}: {e} events, {m} packets muted"));
            }
            control(&mut studio, &v, &pcm);
            if variant.is_empty() && normalise && speed == 160 {
                for dbfs in [-10.0, -16.0, -22.0] {
                    let (found, caught, n) = talk_down(&mut studio, &pcm, dbfs);
                    talkdown += &format!("\n  {voice} presses at {dbfs} dBFS/tone over speech peaking at -1 dBFS: detector {found}/{n}, secure entry {caught}/{n}");
                }
            }
        }
    }
    eprintln!(
        "speech: {seconds:.0} s in 36 clips (en-us, en-gb, es, es-419, pt, pt-br): {events} in-band events, \
         {muted}/{packets} packets muted by secure entry"
    );
    eprintln!("talk-down (measured only):{talkdown}");
    assert!(failures.is_empty(), "speech triggered DTMF detection: {failures:#?}");
}

#[test]
fn noise_and_music_trigger_nothing() {
    let mut studio = Studio::new();
    let mut clips: Vec<(String, Vec<i16>)> = Vec::new();
    for kind in ["whitenoise", "pinknoise", "brownnoise"] {
        for gain in [0.9, 0.3, 0.05, 0.01] {
            clips.push((format!("{kind} x{gain}"), studio.noise(kind, 10.0, gain)));
        }
    }
    // Chords of musical notes (equal temperament, A4 = 440 Hz), plucked and as triangle waves:
    // their fundamentals are not DTMF frequencies, their harmonics wander near some.
    let chords: [(&str, &[&str]); 5] = [
        ("C major", &["C4", "E4", "G4", "C5"]),
        ("F major", &["F3", "A4", "C5", "F5"]),
        ("G7", &["G3", "B4", "D5", "F5"]),
        ("A minor", &["A3", "C5", "E5", "A5"]),
        ("E minor high", &["E5", "G5", "B5", "E6"]),
    ];
    for wave in ["pluck", "triangle", "sine"] {
        let mut effects = Vec::new();
        for (i, (_, notes)) in chords.iter().enumerate() {
            if i > 0 {
                effects.push(":".to_string());
            }
            effects.extend(["synth".to_string(), "0.6".into()]);
            for n in *notes {
                effects.extend([wave.to_string(), format!("%{}", semitones_from_a4(n))]);
            }
            let share = format!("{:.3}", 0.9 / notes.len() as f64);
            effects.extend([
                "remix".into(),
                (1..=notes.len()).map(|c| format!("{c}v{share}")).collect::<Vec<_>>().join(","),
            ]);
        }
        let mut pcm = Vec::new();
        // the progression three times
        for _ in 0..3 {
            // sox plucks only at 44.1-48 kHz
            pcm.extend(studio.sox_n_at(48_000, &effects));
        }
        clips.push((format!("chords ({wave})"), pcm));
    }
    let mut failures = Vec::new();
    let (mut seconds, mut events, mut muted, mut packets) = (0.0, 0, 0, 0);
    for (label, pcm) in &clips {
        let (e, m, p) = talk_off(pcm);
        seconds += pcm.len() as f64 / RATE as f64;
        events += e;
        muted += m;
        packets += p;
        if e + m > 0 {
            failures.push(format!("{label}: {e} events, {m} packets muted"));
        }
        control(&mut studio, label, pcm);
    }
    eprintln!(
        "noise and music: {seconds:.0} s in {} clips: {events} in-band events, {muted}/{packets} packets muted",
        clips.len()
    );
    assert!(failures.is_empty(), "noise or music triggered DTMF detection: {failures:#?}");
}

/// Semitones from A4 of a note name like `C4`, `F#5` (for sox's `%n` frequencies).
fn semitones_from_a4(note: &str) -> i32 {
    let (name, octave) = note.split_at(note.len() - 1);
    let octave: i32 = octave.parse().expect("octave digit");
    let pos = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
        .iter()
        .position(|&n| n == name)
        .expect("note name") as i32;
    (octave - 4) * 12 + pos - 9
}
