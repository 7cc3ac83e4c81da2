//! Key presses carried in SIP INFO bodies: `application/dtmf-relay` (`Signal=5\r\nDuration=160`,
//! the de-facto Cisco format) and `application/dtmf` (the key alone, `5`).
//!
//! [`parse`] takes the Content-Type and the body and returns one [`InfoDtmf`] or a typed
//! [`InfoError`]; it never panics on hostile bytes. Keys are case-insensitive, lines may end in
//! CRLF or LF, unknown keys are ignored, and the event codes `10`/`11` mean `*`/`#` as in RFC 4733.
//! It does not look at SIP headers beyond the Content-Type, decide whether the press is forwarded
//! (secure entry, in the proxy), or keep digits: a [`Digit`] prints as `{REDACTED}`.

use crate::dtmf::Digit;

/// Duration assumed when a `dtmf-relay` body has none, or for `application/dtmf` (which carries
/// none): a typical key press.
pub const DEFAULT_DURATION_MS: u32 = 160;
/// Longest body accepted: real ones are a few dozen bytes.
pub const MAX_BODY: usize = 512;

/// One key press from an INFO body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoDtmf {
    pub digit: Digit,
    pub duration_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    /// The Content-Type is neither `application/dtmf-relay` nor `application/dtmf`: not a key press.
    #[error("not a DTMF content type")]
    NotDtmf,
    #[error("DTMF body longer than {MAX_BODY} bytes")]
    TooLong,
    #[error("DTMF body is not UTF-8")]
    NotUtf8,
    #[error("DTMF body has no Signal")]
    MissingSignal,
    /// The signal is not one key (`0`-`9`, `*`, `#`, `A`-`D`, `10`, `11`). The value is not kept:
    /// it may be a digit string.
    #[error("DTMF signal is not a key")]
    BadSignal,
    #[error("DTMF duration is not a number of milliseconds")]
    BadDuration,
}

/// Whether `content_type` (parameters ignored, any case) is one of the two DTMF formats.
pub fn is_dtmf_type(content_type: &str) -> bool {
    matches!(media_type(content_type).as_deref(), Some("application/dtmf-relay" | "application/dtmf"))
}

fn media_type(content_type: &str) -> Option<String> {
    content_type.split(';').next().map(|t| t.trim().to_ascii_lowercase())
}

/// Parses an INFO body of type `content_type`.
pub fn parse(content_type: &str, body: &[u8]) -> Result<InfoDtmf, InfoError> {
    let kind = media_type(content_type).ok_or(InfoError::NotDtmf)?;
    if body.len() > MAX_BODY {
        return Err(InfoError::TooLong);
    }
    let text = std::str::from_utf8(body).map_err(|_| InfoError::NotUtf8)?;
    match kind.as_str() {
        "application/dtmf-relay" => relay(text),
        "application/dtmf" => {
            let digit = key(text.trim()).ok_or(if text.trim().is_empty() {
                InfoError::MissingSignal
            } else {
                InfoError::BadSignal
            })?;
            Ok(InfoDtmf { digit, duration_ms: DEFAULT_DURATION_MS })
        }
        _ => Err(InfoError::NotDtmf),
    }
}

fn relay(text: &str) -> Result<InfoDtmf, InfoError> {
    let mut digit = None;
    let mut duration = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        // Blank lines and lines without `=` are not part of the format: skipped like unknown keys.
        let Some((k, v)) = line.split_once('=') else { continue };
        let k = k.trim();
        let v = v.trim();
        if k.eq_ignore_ascii_case("signal") {
            if digit.is_some() {
                // Two Signal lines: which one is meant is ambiguous, so refuse rather than guess.
                return Err(InfoError::BadSignal);
            }
            digit = Some(key(v).ok_or(InfoError::BadSignal)?);
        } else if k.eq_ignore_ascii_case("duration") {
            let ms: u32 = v.parse().map_err(|_| InfoError::BadDuration)?;
            duration = Some(ms);
        }
    }
    let digit = digit.ok_or(InfoError::MissingSignal)?;
    Ok(InfoDtmf { digit, duration_ms: duration.unwrap_or(DEFAULT_DURATION_MS) })
}

/// One key: a single character, or the RFC 4733 codes `10` (`*`) and `11` (`#`).
fn key(v: &str) -> Option<Digit> {
    match v {
        "10" => return Some(Digit::Star),
        "11" => return Some(Digit::Hash),
        _ => {}
    }
    let mut chars = v.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    let c = c.to_ascii_uppercase();
    Digit::ALL.iter().copied().find(|d| d.as_char() == c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "application/dtmf-relay";

    fn ch(r: Result<InfoDtmf, InfoError>) -> Result<(char, u32), InfoError> {
        r.map(|d| (d.digit.as_char(), d.duration_ms))
    }

    #[test]
    fn dtmf_relay_bodies() {
        assert_eq!(ch(parse(RELAY, b"Signal=5\r\nDuration=160\r\n")), Ok(('5', 160)));
        assert_eq!(ch(parse(RELAY, b"Signal=5\nDuration=250")), Ok(('5', 250)));
        assert_eq!(ch(parse(RELAY, b"signal = * \r\nDURATION= 100\r\n")), Ok(('*', 100)));
        assert_eq!(ch(parse(RELAY, b"Signal=#")), Ok(('#', DEFAULT_DURATION_MS)));
        assert_eq!(ch(parse(RELAY, b"Signal=10\r\nDuration=80")), Ok(('*', 80)));
        assert_eq!(ch(parse(RELAY, b"Signal=11")), Ok(('#', DEFAULT_DURATION_MS)));
        assert_eq!(ch(parse(RELAY, b"Signal=a")), Ok(('A', DEFAULT_DURATION_MS)));
        assert_eq!(ch(parse(RELAY, b"Signal=D\r\nFoo=bar\r\n")), Ok(('D', DEFAULT_DURATION_MS)));
        assert_eq!(ch(parse("Application/DTMF-Relay; charset=x", b"Signal=0")), Ok(('0', DEFAULT_DURATION_MS)));
    }

    #[test]
    fn dtmf_bodies() {
        assert_eq!(ch(parse("application/dtmf", b"5")), Ok(('5', DEFAULT_DURATION_MS)));
        assert_eq!(ch(parse("application/dtmf", b"#\r\n")), Ok(('#', DEFAULT_DURATION_MS)));
        assert_eq!(ch(parse("application/dtmf", b"11")), Ok(('#', DEFAULT_DURATION_MS)));
        assert_eq!(parse("application/dtmf", b""), Err(InfoError::MissingSignal));
        assert_eq!(parse("application/dtmf", b"55"), Err(InfoError::BadSignal));
    }

    #[test]
    fn hostile_bodies_are_typed_errors() {
        assert_eq!(parse("text/plain", b"Signal=5"), Err(InfoError::NotDtmf));
        assert_eq!(parse(RELAY, b""), Err(InfoError::MissingSignal));
        assert_eq!(parse(RELAY, b"Duration=100"), Err(InfoError::MissingSignal));
        assert_eq!(parse(RELAY, b"Signal=12"), Err(InfoError::BadSignal));
        assert_eq!(parse(RELAY, b"Signal=E"), Err(InfoError::BadSignal));
        assert_eq!(parse(RELAY, b"Signal=4111111111111111"), Err(InfoError::BadSignal));
        assert_eq!(parse(RELAY, b"Signal=5\r\nSignal=6"), Err(InfoError::BadSignal));
        assert_eq!(parse(RELAY, b"Signal=5\r\nDuration=-1"), Err(InfoError::BadDuration));
        assert_eq!(parse(RELAY, b"Signal=5\r\nDuration=99999999999"), Err(InfoError::BadDuration));
        assert_eq!(parse(RELAY, &[0xff, 0xfe, b'=']), Err(InfoError::NotUtf8));
        assert_eq!(parse(RELAY, &[b'x'; MAX_BODY + 1]), Err(InfoError::TooLong));
        assert_eq!(parse(RELAY, "Signal=é".as_bytes()), Err(InfoError::BadSignal));
        // errors never carry the value
        assert!(!format!("{:?}", parse(RELAY, b"Signal=4111")).contains("4111"));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let alphabet = b"Signal=Duration\r\n0123456789*#ABCDxyz \xff";
        let mut seed = 0x1234_5678_u32;
        for len in 0..300usize {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    alphabet[(seed >> 16) as usize % alphabet.len()]
                })
                .collect();
            let _ = parse(RELAY, &body);
            let _ = parse("application/dtmf", &body);
        }
    }
}
