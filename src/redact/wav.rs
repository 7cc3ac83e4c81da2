//! WAV files for offline redaction: reads RIFF/WAVE with PCM16, G.711 µ-law or A-law samples
//! (mono or stereo, 8 or 16 kHz) into PCM16 per channel, and writes PCM16.
//!
//! Hostile files get a typed error, never a panic or an unbounded allocation beyond the file's
//! own size. Other encodings and rates are refused rather than guessed.

use std::io::Write;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWav,
    #[error("no `{0}` chunk")]
    MissingChunk(&'static str),
    #[error("truncated `{0}` chunk")]
    Truncated(&'static str),
    #[error("unsupported encoding (format tag {tag}, {bits} bits): PCM16, µ-law or A-law only")]
    UnsupportedEncoding { tag: u16, bits: u16 },
    #[error("unsupported channel count {0} (1 or 2)")]
    UnsupportedChannels(u16),
    #[error("unsupported sample rate {0} Hz (8000 or 16000)")]
    UnsupportedRate(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Pcm16,
    Mulaw,
    Alaw,
}

/// Decoded audio: one PCM16 vector per channel.
#[derive(Debug)]
pub struct Audio {
    pub rate: u32,
    pub encoding: Encoding,
    pub channels: Vec<Vec<i16>>,
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32le(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub fn read(bytes: &[u8]) -> Result<Audio, WavError> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let mut fmt: Option<&[u8]> = None;
    let mut data: Option<&[u8]> = None;
    let mut at = 12usize;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32le(bytes, at + 4).ok_or(WavError::NotWav)? as usize;
        let body_start = at + 8;
        // A data chunk whose size field overruns the file (streamed writers) is read to the end.
        let body_end = body_start.saturating_add(len).min(bytes.len());
        let body = &bytes[body_start..body_end];
        match id {
            b"fmt " => fmt = Some(body),
            b"data" => data = Some(body),
            _ => {}
        }
        at = body_start.saturating_add(len).saturating_add(len & 1);
    }
    let fmt = fmt.ok_or(WavError::MissingChunk("fmt "))?;
    let data = data.ok_or(WavError::MissingChunk("data"))?;
    let mut tag = u16le(fmt, 0).ok_or(WavError::Truncated("fmt "))?;
    let channels = u16le(fmt, 2).ok_or(WavError::Truncated("fmt "))?;
    let rate = u32le(fmt, 4).ok_or(WavError::Truncated("fmt "))?;
    let bits = u16le(fmt, 14).ok_or(WavError::Truncated("fmt "))?;
    if tag == 0xFFFE {
        // WAVE_FORMAT_EXTENSIBLE: the real tag is the first two bytes of the sub-format GUID.
        tag = u16le(fmt, 24).ok_or(WavError::Truncated("fmt "))?;
    }
    let encoding = match (tag, bits) {
        (1, 16) => Encoding::Pcm16,
        (7, 8) => Encoding::Mulaw,
        (6, 8) => Encoding::Alaw,
        _ => return Err(WavError::UnsupportedEncoding { tag, bits }),
    };
    if !(1..=2).contains(&channels) {
        return Err(WavError::UnsupportedChannels(channels));
    }
    if rate != 8_000 && rate != 16_000 {
        return Err(WavError::UnsupportedRate(rate));
    }
    let n = channels as usize;
    let samples: Vec<i16> = match encoding {
        Encoding::Pcm16 => data.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect(),
        Encoding::Mulaw => data.iter().map(|&b| ulaw_to_linear(b)).collect(),
        Encoding::Alaw => data.iter().map(|&b| alaw_to_linear(b)).collect(),
    };
    let frames = samples.len() / n;
    let mut chans = vec![Vec::with_capacity(frames); n];
    for f in samples.chunks_exact(n) {
        for (c, &s) in f.iter().enumerate() {
            chans[c].push(s);
        }
    }
    Ok(Audio { rate, encoding, channels: chans })
}

/// Writes PCM16 WAV; all channels must have the same length.
pub fn write(mut w: impl Write, rate: u32, channels: &[Vec<i16>]) -> std::io::Result<()> {
    let n = channels.len().max(1) as u16;
    let frames = channels.first().map_or(0, Vec::len);
    let data_len = (frames * n as usize * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * n as u32 * 2).to_le_bytes());
    out.extend_from_slice(&(n * 2).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        for c in channels {
            out.extend_from_slice(&c.get(i).copied().unwrap_or(0).to_le_bytes());
        }
    }
    w.write_all(&out)
}

/// G.711 µ-law to linear PCM16 (ITU-T G.711).
pub fn ulaw_to_linear(b: u8) -> i16 {
    let u = !b;
    let t = ((((u & 0x0F) as i32) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// G.711 A-law to linear PCM16 (ITU-T G.711).
pub fn alaw_to_linear(b: u8) -> i16 {
    let a = b ^ 0x55;
    let seg = (a & 0x70) >> 4;
    let mut t = ((a & 0x0F) as i32) << 4;
    t = match seg {
        0 => t + 8,
        1 => t + 0x108,
        _ => (t + 0x108) << (seg - 1),
    };
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_stereo_pcm() {
        let chans = vec![vec![1i16, -2, 3], vec![-4, 5, i16::MIN]];
        let mut buf = Vec::new();
        write(&mut buf, 16_000, &chans).unwrap();
        let a = read(&buf).unwrap();
        assert_eq!((a.rate, a.encoding), (16_000, Encoding::Pcm16));
        assert_eq!(a.channels, chans);
    }

    #[test]
    fn g711_known_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32_256);
    }

    #[test]
    fn hostile_input_is_an_error() {
        assert_eq!(read(b"").unwrap_err(), WavError::NotWav);
        assert_eq!(read(b"RIFF\0\0\0\0WAVE").unwrap_err(), WavError::MissingChunk("fmt "));
        let mut buf = Vec::new();
        write(&mut buf, 44_100, &[vec![0i16; 4]]).unwrap();
        assert_eq!(read(&buf).unwrap_err(), WavError::UnsupportedRate(44_100));
        buf.truncate(30);
        assert!(read(&buf).is_err());
        // Chunk length pointing far past the end.
        let mut b = b"RIFF\0\0\0\0WAVEdata\xff\xff\xff\xff".to_vec();
        b.extend_from_slice(&[1, 2, 3]);
        assert!(read(&b).is_err());
        for n in 0..64 {
            let _ = read(&buf[..n.min(buf.len())]);
        }
    }
}
