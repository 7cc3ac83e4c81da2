//! Redaction hot paths without the model: normalising and detecting a window's words, 8 -> 16 kHz
//! resampling, and the pipeline core over a minute of audio with an instant fake transcriber.
//! Whisper itself is measured by scripts/eval-redaction (real-time factor per language).
#![allow(clippy::disallowed_methods)] // benches seed virtual time with one real Instant

use std::time::Instant;

use callveil::pii::Pii;
use callveil::redact::detect::{DetectConfig, StreamDetector};
use callveil::redact::pipeline::{Frame, Output, Pipeline, PipelineConfig};
use callveil::transcribe::{resample, Word};
use criterion::{criterion_group, criterion_main, Criterion};

fn words(text: &str) -> Vec<Word> {
    text.split_whitespace()
        .enumerate()
        .map(|(i, w)| Word { text: Pii::new(w.to_string()), start_ms: i as u64 * 300, end_ms: i as u64 * 300 + 250 })
        .collect()
}

fn bench(c: &mut Criterion) {
    let w = words(
        "hello my card number is four one one one one one one one one one one one one one one one \
         and the expiry is oh five twenty seven security code one two three thank you very much",
    );
    c.bench_function("detect_window_30_words", |b| {
        b.iter(|| {
            let mut d = StreamDetector::new(DetectConfig::default());
            let s = d.push(w.clone(), 20_000);
            let f = d.finish();
            s.detections.len() + f.detections.len()
        })
    });
    let pcm: Vec<i16> = (0..8_000 * 10).map(|n| ((n as f64 * 0.3).sin() * 8_000.0) as i16).collect();
    c.bench_function("resample_10s_8k_to_16k", |b| b.iter(|| resample::to_16k(&pcm, 8_000).len()));
    let minute: Vec<i16> = (0..8_000 * 60)
        .map(|n| if (n / 8_000) % 3 == 2 { 0 } else { ((n as f64 * 0.3).sin() * 8_000.0) as i16 })
        .collect();
    c.bench_function("pipeline_60s_fake_asr", |b| {
        b.iter(|| {
            let now = Instant::now();
            let mut p = Pipeline::new(PipelineConfig { deadline: None, ..PipelineConfig::default() }, 1);
            let mut n = 0usize;
            for (k, ch) in minute.chunks(160).enumerate() {
                let _ = p.frame(now, Frame { channel: 0, media_ms: k as u64 * 20, sample_rate: 8_000, samples: ch });
                while let Some(o) = p.poll_output() {
                    match o {
                        Output::Transcribe(j) => p.transcript(now, j.id, Ok(w.clone())),
                        Output::Audio(a) => n += a.samples().len(),
                        _ => {}
                    }
                }
            }
            p.finish(now);
            while let Some(o) = p.poll_output() {
                match o {
                    Output::Transcribe(j) => p.transcript(now, j.id, Ok(Vec::new())),
                    Output::Audio(a) => n += a.samples().len(),
                    _ => {}
                }
            }
            n
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
