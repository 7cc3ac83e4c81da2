//! The redaction pipeline core against a scripted fake transcriber that can answer, be slow,
//! fail or be missing: no sample that was not cleared may ever reach the sink.
#![allow(clippy::disallowed_methods)] // tests need one real starting Instant; time then advances virtually

use std::time::{Duration, Instant};

use callveil::pii::Pii;
use callveil::redact::pipeline::{Frame, Job, Output, Pipeline, PipelineConfig};
use callveil::transcribe::{TranscribeError, Word};
use callveil::vault::sink::SpanKind;

const RATE: u32 = 8_000;

/// A scripted call: words at absolute times; the audio is loud noise during words, quiet hiss
/// (still non-zero) between them, so any unmasked sample is visible.
struct Call {
    words: Vec<(u64, u64, String, bool)>, // start, end, text, is PII
    len_ms: u64,
}

impl Call {
    fn new(script: &str) -> Call {
        // `*` marks PII words; `|` is a 1.2 s pause (long enough for the VAD to cut there).
        let mut t = 500;
        let mut words = Vec::new();
        for w in script.split_whitespace() {
            if w == "|" {
                t += 1_200;
                continue;
            }
            let (text, pii) = match w.strip_prefix('*') {
                Some(x) => (x.to_string(), true),
                None => (w.to_string(), false),
            };
            words.push((t, t + 250, text, pii));
            t += 300;
        }
        Call { words, len_ms: t + 1_500 }
    }

    fn audio(&self) -> Vec<i16> {
        let n = (self.len_ms * RATE as u64 / 1000) as usize;
        let mut seed = 7u32;
        (0..n)
            .map(|i| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = ((seed >> 16) as i16 % 200).abs() + 1;
                let ms = i as u64 * 1000 / RATE as u64;
                if self.words.iter().any(|w| w.0 <= ms && ms < w.1) {
                    8_000 + noise
                } else {
                    noise.min(3)
                }
            })
            .collect()
    }

    /// What a perfect transcriber says for a window.
    fn transcribe(&self, job: &Job) -> Vec<Word> {
        let end = job.start_ms + job.audio.len() as u64 * 1000 / 16_000;
        self.words
            .iter()
            .filter(|w| w.0 >= job.start_ms && w.0 < end)
            .map(|w| Word { text: Pii::new(w.2.clone()), start_ms: w.0 - job.start_ms, end_ms: w.1 - job.start_ms })
            .collect()
    }

    fn pii_ms(&self, ms: u64) -> bool {
        self.words.iter().any(|w| w.3 && w.0 <= ms && ms < w.1)
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Behaviour {
    Answer,
    /// Answers, but without the PII words (Whisper dropping a digit string it cannot read).
    Deaf,
    /// Answers, but loses the window's last two words (Whisper dropping words at the cut).
    Clipped,
    Fail,
    Never,
}

struct Run {
    out: Vec<i16>,
    filled: Vec<bool>,
    transcript: Vec<String>,
    spans: Vec<(u64, u64, SpanKind)>,
    answered: Vec<(u64, u64)>,
    max_held_ms: u64,
    released_to: u64,
}

fn run(call: &Call, cfg: PipelineConfig, behave: impl Fn(u64) -> Behaviour, frame_ms: u64) -> Run {
    let audio = call.audio();
    let t0 = Instant::now();
    let mut p = Pipeline::new(cfg, 1);
    let mut r = Run {
        out: vec![i16::MIN; audio.len()],
        filled: vec![false; audio.len()],
        transcript: vec![],
        spans: vec![],
        answered: vec![],
        max_held_ms: 0,
        released_to: 0,
    };
    let mut pending: Vec<(Instant, Job)> = Vec::new();
    let answer = |job: &Job| {
        let mut words = call.transcribe(job);
        if behave(job.id.0) == Behaviour::Clipped {
            words.truncate(words.len().saturating_sub(2));
        }
        words
    };
    let step = (frame_ms * RATE as u64 / 1000) as usize;
    let drain = |p: &mut Pipeline, now: Instant, r: &mut Run, pending: &mut Vec<(Instant, Job)>| {
        while let Some(o) = p.poll_output() {
            match o {
                Output::Transcribe(job) => match behave(job.id.0) {
                    // Answered one window-length later (a realistic worker).
                    Behaviour::Answer | Behaviour::Clipped => pending.push((now + Duration::from_millis(800), job)),
                    Behaviour::Deaf => {
                        let mut words = call.transcribe(&job);
                        words.retain(|w| !w.text.expose().chars().all(|c| c.is_ascii_digit()));
                        r.answered.push((job.start_ms, job.start_ms + job.audio.len() as u64 / 16));
                        p.transcript(now, job.id, Ok(words))
                    }
                    Behaviour::Fail => p.transcript(now, job.id, Err(TranscribeError::ModelUnavailable("test".into()))),
                    Behaviour::Never => {}
                },
                Output::Audio(a) => {
                    let first = (a.start_ms() * RATE as u64 / 1000) as usize;
                    for (k, &s) in a.samples().iter().enumerate() {
                        assert!(!r.filled[first + k], "sample {} released twice", first + k);
                        r.filled[first + k] = true;
                        r.out[first + k] = s;
                    }
                    r.released_to = r.released_to.max(((first + a.samples().len()) as u64) * 1000 / RATE as u64);
                }
                Output::Transcript(t) => r.transcript.push(t.text.expose().clone()),
                Output::Span(s) => r.spans.push((s.start_ms, s.end_ms, s.kind)),
            }
        }
    };
    let mut now = t0;
    for (k, chunk) in audio.chunks(step).enumerate() {
        now = t0 + Duration::from_millis(k as u64 * frame_ms);
        let media_ms = k as u64 * frame_ms;
        p.frame(now, Frame { channel: 0, media_ms, sample_rate: RATE, samples: chunk }).unwrap();
        drain(&mut p, now, &mut r, &mut pending);
        // Deliver answers whose time has come.
        let (due, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(t, _)| *t <= now);
        pending = later;
        for (_, job) in due {
            r.answered.push((job.start_ms, job.start_ms + job.audio.len() as u64 / 16));
            p.transcript(now, job.id, Ok(answer(&job)));
        }
        if p.poll_timeout().is_some_and(|t| t <= now) {
            p.handle_timeout(now);
        }
        drain(&mut p, now, &mut r, &mut pending);
        r.max_held_ms = r.max_held_ms.max((media_ms + frame_ms).saturating_sub(r.released_to));
    }
    p.finish(now);
    for _ in 0..10_000 {
        drain(&mut p, now, &mut r, &mut pending);
        if p.is_finished() {
            break;
        }
        now += Duration::from_millis(100);
        for (_, job) in std::mem::take(&mut pending) {
            r.answered.push((job.start_ms, job.start_ms + job.audio.len() as u64 / 16));
            p.transcript(now, job.id, Ok(answer(&job)));
        }
        p.handle_timeout(now);
    }
    assert!(p.is_finished(), "pipeline did not finish");
    assert!(r.filled.iter().all(|&f| f), "every sample is released exactly once");
    r
}

/// The invariant: a non-zero output sample lies in a window that was transcribed, is not PII,
/// and equals the input.
fn assert_cleared(call: &Call, r: &Run) {
    let audio = call.audio();
    for (i, (&o, &a)) in r.out.iter().zip(&audio).enumerate() {
        if o == 0 {
            continue;
        }
        let ms = i as u64 * 1000 / RATE as u64;
        assert_eq!(o, a, "sample {i} altered but not muted");
        assert!(!call.pii_ms(ms), "PII sample at {ms} ms reached the sink");
        assert!(
            r.answered.iter().any(|&(s, e)| s <= ms && ms < e) || a <= 3,
            "unverified speech at {ms} ms reached the sink"
        );
    }
}

const CARD: &str = "hello my name is ann | my card number is *4111 *1111 *1111 *1111 thank you | bye now";

#[test]
fn card_number_is_masked_and_marked() {
    let call = Call::new(CARD);
    let r = run(&call, PipelineConfig::default(), |_| Behaviour::Answer, 20);
    assert_cleared(&call, &r);
    let text = r.transcript.join(" ");
    assert!(text.contains("[PAN]"), "{text}");
    assert!(!text.contains("4111") && !text.contains("1111"), "{text}");
    assert!(text.contains("hello") && text.contains("bye"), "{text}");
    assert!(r.spans.iter().any(|s| s.2 == SpanKind::Pan));
    // Speech that is not PII survives.
    let hello = call.words[0].0 as usize * 8;
    assert_ne!(r.out[hello + 100], 0);
}

#[test]
fn a_number_split_by_a_pause_across_windows_is_masked() {
    let call = Call::new("ok my number is *4111 *1111 | *1111 *1111 | thanks a lot | bye");
    let r = run(&call, PipelineConfig::default(), |_| Behaviour::Answer, 20);
    assert_cleared(&call, &r);
    assert!(!r.transcript.join(" ").contains("1111"));
}

#[test]
fn digits_the_asr_lost_at_a_cut_after_the_keyword_are_masked() {
    // Two digit groups end the first window and the ASR loses them there; the rest of the
    // number, in the next window, is stretched back to the keyword: the audio after the keyword
    // must still be held when that is decided.
    let call = Call::new(
        "hello my name is ann and i am calling to pay the bill for my phone today please so my card \
         number is *4111 *1111 | *1111 *1111 thank you | bye now",
    );
    let r = run(&call, PipelineConfig::default(), |_| Behaviour::Clipped, 20);
    assert_cleared(&call, &r);
    assert!(r.spans.iter().any(|s| s.2 == SpanKind::Pan), "{:?}", r.spans);
}

#[test]
fn failing_transcriber_mutes_everything_as_unverified() {
    let call = Call::new(CARD);
    let r = run(&call, PipelineConfig::default(), |_| Behaviour::Fail, 20);
    assert_cleared(&call, &r);
    assert!(r.out.iter().zip(call.audio()).all(|(&o, a)| o == 0 || a <= 3));
    assert!(r.spans.iter().any(|s| s.2 == SpanKind::Unverified));
    assert!(r.transcript.iter().all(|t| t == "[UNVERIFIED]"), "{:?}", r.transcript);
}

#[test]
fn missed_deadline_mutes_and_hold_stays_bounded() {
    let call = Call::new(&format!("{CARD} | {CARD} | {CARD}"));
    let cfg = PipelineConfig { deadline: Some(Duration::from_secs(3)), hold_ms: 20_000, ..PipelineConfig::default() };
    let r = run(&call, cfg, |_| Behaviour::Never, 20);
    assert_cleared(&call, &r);
    assert!(r.spans.iter().any(|s| s.2 == SpanKind::Unverified));
    assert!(r.max_held_ms <= 20_000, "held {} ms", r.max_held_ms);
}

#[test]
fn full_hold_buffer_mutes_oldest() {
    let call = Call::new(&format!("{CARD} | {CARD}"));
    // The deadline is longer than the call, so only the hold bound can release audio during it.
    let cfg = PipelineConfig { deadline: Some(Duration::from_secs(120)), hold_ms: 15_000, ..PipelineConfig::default() };
    let r = run(&call, cfg, |_| Behaviour::Never, 20);
    assert_cleared(&call, &r);
    assert!(r.max_held_ms <= 15_000 + 100, "held {} ms", r.max_held_ms);
}

#[test]
fn speech_the_asr_skipped_is_muted() {
    let call = Call::new("hello there my account is *4 *1 *1 *1 *1 *1 *1 *1 *1 *1 *1 *1 *1 *1 *1 *1 thanks | bye");
    let r = run(&call, PipelineConfig::default(), |_| Behaviour::Deaf, 20);
    // The transcriber "answered" every window, so only the unheard-speech rule can mute the digits.
    for w in call.words.iter().filter(|w| w.3) {
        let s = w.0 as usize * 8;
        assert!(r.out[s..s + 1_000].iter().all(|&x| x == 0), "unheard digits at {} ms reached the sink", w.0);
    }
    assert!(r.spans.iter().any(|s| s.2 == SpanKind::Unverified));
    assert_ne!(r.out[call.words[0].0 as usize * 8 + 100], 0, "heard speech is kept");
}

#[test]
fn mixed_behaviours_never_leak() {
    let call = Call::new(&format!("{CARD} | {CARD} | {CARD} | {CARD}"));
    for seed in 0..12u64 {
        let behave = move |job: u64| match (job * 7 + seed) % 5 {
            0 => Behaviour::Fail,
            1 => Behaviour::Never,
            _ => Behaviour::Answer,
        };
        let cfg = PipelineConfig { deadline: Some(Duration::from_secs(4)), ..PipelineConfig::default() };
        let r = run(&call, cfg, behave, 10 + seed * 7);
        assert_cleared(&call, &r);
    }
}

#[test]
fn gaps_and_dtmf_are_masked_and_bad_frames_refused() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(PipelineConfig::default(), 2);
    let tone = vec![5_000i16; 160];
    assert!(p.frame(t0, Frame { channel: 3, media_ms: 0, sample_rate: RATE, samples: &tone }).is_err());
    assert!(p.frame(t0, Frame { channel: 0, media_ms: 0, sample_rate: 44_100, samples: &tone }).is_err());
    for k in 0..50 {
        p.frame(t0, Frame { channel: 0, media_ms: k * 20, sample_rate: RATE, samples: &tone }).unwrap();
    }
    assert!(p.frame(t0, Frame { channel: 0, media_ms: 100, sample_rate: RATE, samples: &tone }).is_err());
    assert!(p.frame(t0, Frame { channel: 0, media_ms: 1_000, sample_rate: 16_000, samples: &tone }).is_err());
    // One second lost in the tap, then more audio.
    for k in 100..150 {
        p.frame(t0, Frame { channel: 0, media_ms: k * 20, sample_rate: RATE, samples: &tone }).unwrap();
    }
    p.dtmf(0, 2_200, 2_300);
    assert_eq!(p.stats().frame_errors, 4);
    p.finish(t0);
    let mut spans = vec![];
    let mut out = vec![];
    let mut guard = 0;
    while !p.is_finished() && guard < 100 {
        guard += 1;
        while let Some(o) = p.poll_output() {
            match o {
                Output::Transcribe(j) => p.transcript(t0, j.id, Ok(vec![])),
                Output::Span(s) => spans.push(s.kind),
                Output::Audio(a) => out.extend_from_slice(a.samples()),
                Output::Transcript(_) => {}
            }
        }
    }
    assert!(p.is_finished());
    assert_eq!(out.len(), 3 * 8_000);
    assert!(spans.contains(&SpanKind::Unverified) && spans.contains(&SpanKind::Dtmf), "{spans:?}");
    assert!(out[8_000..16_000].iter().all(|&s| s == 0), "gap muted");
    assert!(out[2_200 * 8..2_300 * 8].iter().all(|&s| s == 0), "DTMF muted");
    assert_eq!(out[100], 5_000);
}
