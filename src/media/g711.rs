//! G.711 µ-law and A-law (ITU-T G.711): decoding to linear PCM16 through 256-entry tables built
//! at compile time from the standard's segment/mantissa rules, and encoding from PCM16 for the
//! audio callveil itself sends (IVR prompts, secure-entry silence). Relayed audio is never
//! re-encoded: the relay forwards the caller's bytes as they are.

const fn ulaw(b: u8) -> i16 {
    let u = !b;
    let t = (((u & 0x0f) as i16) << 3) + 0x84;
    let t = t << ((u & 0x70) >> 4);
    if u & 0x80 != 0 {
        0x84 - t
    } else {
        t - 0x84
    }
}

const fn alaw(b: u8) -> i16 {
    let a = b ^ 0x55;
    let seg = (a & 0x70) >> 4;
    let mut t = ((a & 0x0f) as i16) << 4;
    t = match seg {
        0 => t + 8,
        1 => t + 0x108,
        _ => (t + 0x108) << (seg - 1),
    };
    if a & 0x80 != 0 {
        t
    } else {
        -t
    }
}

const fn table(a_law: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if a_law { alaw(i as u8) } else { ulaw(i as u8) };
        i += 1;
    }
    t
}

pub static ULAW: [i16; 256] = table(false);
pub static ALAW: [i16; 256] = table(true);

/// Segment end points of the 14-bit (µ-law) and 13-bit (A-law) magnitudes.
const ULAW_SEG_END: [i32; 8] = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];
const ALAW_SEG_END: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];

fn segment(x: i32, ends: &[i32; 8]) -> usize {
    ends.iter().position(|&e| x <= e).unwrap_or(8)
}

/// PCM16 to µ-law (the classic reference algorithm: bias 0x84, clip at 32635).
pub fn encode_ulaw(pcm: i16) -> u8 {
    let mut x = i32::from(pcm) >> 2;
    let mask = if x < 0 {
        x = -x;
        0x7f
    } else {
        0xff
    };
    let x = x.min(8159) + (0x84 >> 2);
    let seg = segment(x, &ULAW_SEG_END);
    if seg >= 8 {
        return 0x7f ^ mask;
    }
    (((seg as i32) << 4) | ((x >> (seg + 1)) & 0x0f)) as u8 ^ mask
}

/// PCM16 to A-law (even bits inverted, as on the wire).
pub fn encode_alaw(pcm: i16) -> u8 {
    let mut x = i32::from(pcm) >> 3;
    let mask = if x >= 0 {
        0xd5
    } else {
        x = -x - 1;
        0x55
    };
    let seg = segment(x, &ALAW_SEG_END);
    if seg >= 8 {
        return 0x7f ^ mask;
    }
    let mantissa = if seg < 2 { (x >> 1) & 0x0f } else { (x >> seg) & 0x0f };
    (((seg as i32) << 4) | mantissa) as u8 ^ mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // silence codes and extremes from the G.711 tables
        assert_eq!(ULAW[0xff], 0);
        assert_eq!(ULAW[0x7f], 0);
        assert_eq!(ULAW[0x00], -32124);
        assert_eq!(ULAW[0x80], 32124);
        assert_eq!(ALAW[0xd5], 8);
        assert_eq!(ALAW[0x55], -8);
        assert_eq!(ALAW[0xaa], 32256);
        assert_eq!(ALAW[0x2a], -32256);
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            // µ-law has two zeros (0xff and 0x7f); the encoder writes the positive one
            let want = if c == 0x7f { 0xff } else { c };
            assert_eq!(encode_ulaw(ULAW[usize::from(c)]), want, "µ-law {c:#x}");
            assert_eq!(encode_alaw(ALAW[usize::from(c)]), c, "A-law {c:#x}");
        }
    }

    #[test]
    fn encoding_error_stays_within_the_step() {
        for x in (i16::MIN..=i16::MAX).step_by(7) {
            let u = ULAW[usize::from(encode_ulaw(x))];
            let a = ALAW[usize::from(encode_alaw(x))];
            // the quantisation step is 1/16 of the magnitude at most, plus the smallest step
            let tol = i32::from(x.unsigned_abs()) / 15 + 16;
            assert!((i32::from(u) - i32::from(x)).abs() <= tol, "µ-law {x} -> {u}");
            assert!((i32::from(a) - i32::from(x)).abs() <= tol, "A-law {x} -> {a}");
        }
        assert_eq!(encode_ulaw(0), 0xff);
        assert_eq!(encode_alaw(0), 0xd5);
        assert_eq!(encode_ulaw(i16::MAX), 0x80);
        assert_eq!(encode_ulaw(i16::MIN), 0x00);
        assert_eq!(encode_alaw(i16::MAX), 0xaa);
        assert_eq!(encode_alaw(i16::MIN), 0x2a);
    }

    #[test]
    fn monotonic_within_each_sign() {
        // µ-law: codes 0x80..=0xff decrease in magnitude as the code rises
        for c in 0x80..0xffusize {
            assert!(ULAW[c] > ULAW[c + 1], "{c:#x}");
        }
        for c in 0..0x7fusize {
            assert!(ULAW[c] < ULAW[c + 1], "{c:#x}");
        }
        // every A-law code decodes to a distinct value
        let mut v: Vec<i16> = ALAW.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 256);
    }
}
