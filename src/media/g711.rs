//! G.711 µ-law and A-law to linear PCM16 (ITU-T G.711), as 256-entry tables built at compile
//! time from the standard's segment/mantissa rules. Decoding only: callveil never re-encodes the
//! audio it relays.

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
