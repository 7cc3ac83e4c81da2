//! In-band DTMF tone finder for offline redaction: finds *where* keypad tones sound in PCM, so
//! `callveil redact` can mask them as `dtmf` spans like the live path masks RFC 4733 events.
//!
//! Goertzel power at the eight DTMF frequencies over 25 ms blocks; a block is a tone when one
//! low and one high frequency hold most of the block's energy. It reports intervals only: which
//! digit was pressed is never computed, stored or logged (DESIGN.md invariant 4). The live
//! path's DTMF detection (RFC 4733, SIP INFO, in-band) belongs to the `dtmf` module.

const LOW: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const HIGH: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];

/// Streaming finder for one channel.
#[derive(Debug)]
pub struct ToneFinder {
    rate: u32,
    block: Vec<f64>,
    pos: u64,
    /// Start (sample) of the tone being heard, and the end of its last tone block.
    current: Option<(u64, u64)>,
}

impl ToneFinder {
    pub fn new(rate: u32) -> ToneFinder {
        ToneFinder { rate, block: Vec::with_capacity((rate / 40) as usize), pos: 0, current: None }
    }

    /// Feeds samples; returns finished tone intervals in ms `(start, end)`.
    pub fn push(&mut self, samples: &[i16]) -> Vec<(u64, u64)> {
        let n = (self.rate / 40) as usize;
        let mut out = Vec::new();
        for &s in samples {
            self.block.push(s as f64);
            self.pos += 1;
            if self.block.len() < n {
                continue;
            }
            let tone = is_tone(&self.block, self.rate);
            self.block.clear();
            let (start, end) = (self.pos - n as u64, self.pos);
            match (tone, self.current) {
                (true, Some((s0, _))) => self.current = Some((s0, end)),
                (true, None) => self.current = Some((start, end)),
                (false, Some((s0, e0))) => {
                    self.current = None;
                    out.push(self.ms(s0, e0));
                }
                (false, None) => {}
            }
        }
        out
    }

    /// End of input: a tone still sounding ends here.
    pub fn finish(&mut self) -> Option<(u64, u64)> {
        self.current.take().map(|(s, e)| self.ms(s, e))
    }

    fn ms(&self, s: u64, e: u64) -> (u64, u64) {
        (s * 1000 / self.rate as u64, e * 1000 / self.rate as u64)
    }
}

/// Fraction of the block's energy at `f` (1.0 for a pure sine there).
fn share(x: &[f64], rate: u32, f: f64, energy: f64) -> f64 {
    let w = std::f64::consts::TAU * f / rate as f64;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s0 = v + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - c * s1 * s2;
    2.0 * power / (x.len() as f64 * energy)
}

fn is_tone(x: &[f64], rate: u32) -> bool {
    let energy: f64 = x.iter().map(|v| v * v).sum();
    // Below about -45 dBFS there is nothing worth masking.
    if energy / (x.len() as f64) < (32_768.0f64 * 0.0056).powi(2) {
        return false;
    }
    let lo = LOW.map(|f| share(x, rate, f, energy));
    let hi = HIGH.map(|f| share(x, rate, f, energy));
    let best = |a: [f64; 4]| a.iter().copied().fold(0.0, f64::max);
    let (l, h) = (best(lo), best(hi));
    l > 0.12 && h > 0.12 && l + h > 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(lo: f64, hi: f64, ms: u64) -> Vec<i16> {
        (0..ms * 8)
            .map(|n| {
                let t = n as f64 / 8_000.0;
                ((std::f64::consts::TAU * lo * t).sin() * 6_000.0 + (std::f64::consts::TAU * hi * t).sin() * 6_000.0)
                    as i16
            })
            .collect()
    }

    #[test]
    fn finds_tones_and_not_noise_or_single_sines() {
        let mut a = vec![0i16; 800];
        a.extend(tone(770.0, 1209.0, 120));
        a.extend(vec![0i16; 640]);
        a.extend(tone(941.0, 1336.0, 120));
        a.extend(vec![0i16; 800]);
        let mut f = ToneFinder::new(8_000);
        let mut got = f.push(&a);
        got.extend(f.finish());
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].0 >= 75 && got[0].0 <= 125 && got[0].1 >= 200 && got[0].1 <= 230, "{got:?}");
        // A single sine (a dial tone, a whistle) and broadband noise are not DTMF.
        let mut f = ToneFinder::new(8_000);
        let sine: Vec<i16> = tone(440.0, 440.0, 500);
        assert!(f.push(&sine).is_empty() && f.finish().is_none());
        let mut seed = 1u32;
        let noise: Vec<i16> = (0..8_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((seed >> 16) as i16) / 4
            })
            .collect();
        let mut f = ToneFinder::new(8_000);
        assert!(f.push(&noise).is_empty() && f.finish().is_none());
    }
}
