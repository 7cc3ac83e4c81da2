//! Stream framing for SIP over TCP (RFC 3261 §18.3): find where one message ends in a byte stream.
//!
//! Over a stream, Content-Length is mandatory and is the only thing that says where a body ends,
//! so this module reads just enough of the header block to find it. It distinguishes "need more
//! bytes" ([`Framed::Incomplete`]) from "this stream is broken" ([`FramingError`]): after an error
//! the connection cannot be resynchronised and must be closed. CRLF keep-alives (RFC 5626 §3.5.1)
//! are reported separately so the driver can answer them. It does not parse the message itself.

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// A complete message occupies the first `n` bytes (header block + body).
    Message(usize),
    /// The first `n` bytes are a keep-alive: a double CRLF ping (answer with one CRLF) when
    /// `ping` is set, otherwise stray line ends to be skipped.
    KeepAlive { len: usize, ping: bool },
    /// More bytes are needed.
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("header block exceeds {0} bytes")]
    HeadersTooLarge(usize),
    #[error("message body of {0} bytes exceeds the limit")]
    BodyTooLarge(usize),
    #[error("Content-Length is missing on a stream transport")]
    MissingContentLength,
    #[error("Content-Length is not a valid number")]
    BadContentLength,
    #[error("conflicting Content-Length headers")]
    ConflictingContentLength,
}

impl FramingError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FramingError::HeadersTooLarge(_) => "headers_too_large",
            FramingError::BodyTooLarge(_) => "body_too_large",
            FramingError::MissingContentLength => "missing_content_length",
            FramingError::BadContentLength => "bad_content_length",
            FramingError::ConflictingContentLength => "conflicting_content_length",
        }
    }
}

/// Finds the first message in `buf`.
///
/// `max_headers` bounds the header block, `max_body` the body: a peer cannot make us buffer more
/// than their sum per connection.
pub fn frame(buf: &[u8], max_headers: usize, max_body: usize) -> Result<Framed, FramingError> {
    // Leading line ends between messages are keep-alives (CRLFCRLF) or noise (RFC 3261 §7.5).
    let lead = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    if lead > 0 {
        if buf[..lead].starts_with(b"\r\n\r\n") {
            return Ok(Framed::KeepAlive { len: 4, ping: true });
        }
        if lead == buf.len() && lead < 4 && b"\r\n\r\n".starts_with(&buf[..lead]) {
            return Ok(Framed::Incomplete);
        }
        return Ok(Framed::KeepAlive { len: lead, ping: false });
    }
    let Some(head_end) = find_header_end(buf) else {
        if buf.len() > max_headers {
            return Err(FramingError::HeadersTooLarge(max_headers));
        }
        return Ok(Framed::Incomplete);
    };
    if head_end > max_headers {
        return Err(FramingError::HeadersTooLarge(max_headers));
    }
    let len = content_length(&buf[..head_end])?.ok_or(FramingError::MissingContentLength)?;
    if len > max_body {
        return Err(FramingError::BodyTooLarge(len));
    }
    let total = head_end + len;
    if buf.len() < total {
        Ok(Framed::Incomplete)
    } else {
        Ok(Framed::Message(total))
    }
}

/// Index just past the blank line ending the header block (CRLF CRLF, or bare LF LF).
fn find_header_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        i = nl + 1;
    }
    None
}

/// Reads Content-Length (or its compact form `l`) from a header block. Several headers must agree.
pub fn content_length(head: &[u8]) -> Result<Option<usize>, FramingError> {
    let mut found: Option<usize> = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            continue; // folded continuation of an earlier header
        }
        let name = trim(&line[..colon]);
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = trim(&line[colon + 1..]);
        if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
            return Err(FramingError::BadContentLength);
        }
        let n: usize =
            std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).ok_or(FramingError::BadContentLength)?;
        match found {
            Some(prev) if prev != n => return Err(FramingError::ConflictingContentLength),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 5\r\n\r\nhello";

    #[test]
    fn frames_by_content_length() {
        assert_eq!(frame(MSG, 8192, 8192), Ok(Framed::Message(MSG.len())));
        for cut in 0..MSG.len() {
            assert_eq!(frame(&MSG[..cut], 8192, 8192), Ok(Framed::Incomplete), "cut at {cut}");
        }
        let mut two = MSG.to_vec();
        two.extend_from_slice(MSG);
        assert_eq!(frame(&two, 8192, 8192), Ok(Framed::Message(MSG.len())));
    }

    #[test]
    fn keepalives_and_lf_only() {
        assert_eq!(frame(b"\r\n\r\nINVITE", 100, 100), Ok(Framed::KeepAlive { len: 4, ping: true }));
        assert_eq!(frame(b"\r\n", 100, 100), Ok(Framed::Incomplete));
        assert_eq!(frame(b"\r\nINV", 100, 100), Ok(Framed::KeepAlive { len: 2, ping: false }));
        let lf = b"BYE sip:a@b SIP/2.0\nContent-Length: 0\n\nNEXT";
        assert_eq!(frame(lf, 100, 100), Ok(Framed::Message(lf.len() - 4)));
    }

    #[test]
    fn errors() {
        assert_eq!(frame(b"BYE x SIP/2.0\r\n\r\n", 100, 100), Err(FramingError::MissingContentLength));
        assert_eq!(frame(b"BYE x SIP/2.0\r\nl: -1\r\n\r\n", 100, 100), Err(FramingError::BadContentLength));
        assert_eq!(
            frame(b"BYE x SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\n", 100, 100),
            Err(FramingError::ConflictingContentLength)
        );
        assert_eq!(frame(b"BYE x SIP/2.0\r\nl: 1000\r\n\r\n", 100, 100), Err(FramingError::BodyTooLarge(1000)));
        assert_eq!(frame(&[b'a'; 200], 100, 100), Err(FramingError::HeadersTooLarge(100)));
    }
}
