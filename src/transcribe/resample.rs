//! Sample-rate conversion to Whisper's 16 kHz: PCM16 at 8 kHz is upsampled by two with a
//! windowed-sinc half-band interpolator (32 taps, Blackman window); 16 kHz passes through.
//! A few lines of arithmetic instead of a resampling crate, because the ratio is fixed at 2.
//! It does not handle other rates: the pipeline rejects them before they get here.

/// Converts PCM16 at `rate` (8000 or 16000) into f32 samples at 16 kHz in [-1, 1].
pub fn to_16k(samples: &[i16], rate: u32) -> Vec<f32> {
    let x: Vec<f32> = samples.iter().map(|&s| s as f32 / 32_768.0).collect();
    if rate != 8_000 {
        return x;
    }
    const HALF: usize = 16;
    // Taps for the odd (in-between) output samples: sinc at ±0.5, ±1.5, ... under a window.
    let taps: Vec<f32> = (0..2 * HALF)
        .map(|k| {
            let t = k as f64 - HALF as f64 + 0.5;
            let sinc = (std::f64::consts::PI * t).sin() / (std::f64::consts::PI * t);
            let w = 0.42
                + 0.5 * (std::f64::consts::PI * t / HALF as f64).cos()
                + 0.08 * (2.0 * std::f64::consts::PI * t / HALF as f64).cos();
            (sinc * w) as f32
        })
        .collect();
    let mut out = Vec::with_capacity(x.len() * 2);
    for n in 0..x.len() {
        out.push(x[n]);
        let mut acc = 0.0f32;
        for (k, h) in taps.iter().enumerate() {
            // Input index n + 1 + (k - HALF) ... n - HALF + 1 + k.
            let idx = n as isize + 1 + k as isize - HALF as isize;
            if idx >= 0 && (idx as usize) < x.len() {
                acc += h * x[idx as usize];
            }
        }
        out.push(acc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_length_and_keeps_a_tone() {
        // 1 kHz at 8 kHz becomes 1 kHz at 16 kHz: compare against the ideal 16 kHz sine.
        let input: Vec<i16> = (0..800)
            .map(|n| ((n as f64 * std::f64::consts::TAU * 1_000.0 / 8_000.0).sin() * 16_000.0) as i16)
            .collect();
        let out = to_16k(&input, 8_000);
        assert_eq!(out.len(), 1_600);
        let err: f32 = (100..1_500)
            .map(|n| {
                let ideal = (n as f64 * std::f64::consts::TAU * 1_000.0 / 16_000.0).sin() as f32 * 16_000.0 / 32_768.0;
                (out[n] - ideal).abs()
            })
            .fold(0.0, f32::max);
        assert!(err < 0.01, "max error {err}");
        assert_eq!(to_16k(&[0, 16_384], 16_000), vec![0.0, 0.5]);
    }
}
