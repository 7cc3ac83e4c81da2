//! Masker: applies planned spans to held PCM and is the only place that turns samples into
//! [`ClearedAudio`] (DESIGN.md invariant 2: storage accepts nothing else).
//!
//! A masked sample is silence or a 1 kHz tone at -20 dBFS (config `redaction.mask`), so a QA
//! listener hears where something was removed. It does not decide spans or hold audio.

use crate::redact::plan::SpanPlan;
use crate::vault::sink::ClearedAudio;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskStyle {
    Silence,
    Tone,
}

/// Sample index (at `rate`) of a media time.
pub fn ms_to_sample(ms: u64, rate: u32) -> u64 {
    ms.saturating_mul(rate as u64) / 1000
}

/// Media time of a sample index, rounded down.
pub fn sample_to_ms(sample: u64, rate: u32) -> u64 {
    sample.saturating_mul(1000) / rate.max(1) as u64
}

/// Masks `samples` (which start at absolute sample `first` of a channel at `rate`) where `plan`
/// has spans, and wraps them as cleared audio.
pub fn clear(
    channel: u8,
    rate: u32,
    first: u64,
    mut samples: Vec<i16>,
    plan: &SpanPlan,
    style: MaskStyle,
) -> ClearedAudio {
    let end = first + samples.len() as u64;
    let (start_ms, end_ms) = (sample_to_ms(first, rate), sample_to_ms(end, rate) + 1);
    for s in plan.overlapping(start_ms, end_ms) {
        let a = ms_to_sample(s.start_ms, rate).max(first);
        // Round the end up so a span never leaves a partial sample unmasked.
        let b = (s.end_ms.saturating_mul(rate as u64).div_ceil(1000)).min(end);
        for n in a..b {
            samples[(n - first) as usize] = mask_sample(style, n, rate);
        }
    }
    ClearedAudio::cleared(channel, sample_to_ms(first, rate), rate, samples)
}

/// Wraps audio that is muted whole (unverified): no sample of the input survives.
pub fn muted(channel: u8, rate: u32, first: u64, len: usize, style: MaskStyle) -> ClearedAudio {
    let samples = (first..first + len as u64).map(|n| mask_sample(style, n, rate)).collect();
    ClearedAudio::cleared(channel, sample_to_ms(first, rate), rate, samples)
}

fn mask_sample(style: MaskStyle, n: u64, rate: u32) -> i16 {
    match style {
        MaskStyle::Silence => 0,
        MaskStyle::Tone => {
            // Phase from the absolute sample index, so the tone is continuous across chunks.
            let phase = (n % rate as u64) as f64 * 1000.0 / rate as f64;
            ((phase * std::f64::consts::TAU).sin() * 3_277.0) as i16
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::sink::SpanKind;

    #[test]
    fn masks_only_inside_spans() {
        let mut plan = SpanPlan::default();
        plan.add(100, 200, SpanKind::Pan, 0);
        // 8 kHz, chunk starting at 50 ms.
        let first = 400;
        let a = clear(1, 8_000, first, vec![1000; 2_000], &plan, MaskStyle::Silence);
        assert_eq!(a.start_ms(), 50);
        let s = a.samples();
        assert_eq!(s[399], 1000);
        assert!(s[400..1200].iter().all(|&x| x == 0));
        assert_eq!(s[1200], 1000);
    }

    #[test]
    fn tone_and_muted() {
        let m = muted(0, 16_000, 0, 160, MaskStyle::Tone);
        assert!(m.samples().iter().any(|&x| x > 3_000));
        assert!(m.samples().iter().all(|&x| x.abs() <= 3_277));
        let z = muted(0, 8_000, 0, 80, MaskStyle::Silence);
        assert!(z.samples().iter().all(|&x| x == 0));
    }
}
