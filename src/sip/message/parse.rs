//! The parser: start line, header lines (folding, bare LF, whitespace before the colon), typed
//! values of the fields a proxy owns, and the body by Content-Length.
//!
//! Every header line is recorded as a span so [`super::Rewrite`] can copy it untouched. Only the
//! owned fields must be valid; other fields may hold any bytes, including invalid UTF-8. The
//! order of checks decides which fault is reported when a message has several: the message size,
//! the start line, the header block's framing and limits, the owned fields in order of
//! appearance, missing fields, the CSeq method, and last the body.

use std::ops::Range;

use super::headers::{is_token, Known};
use super::uri::{parse_name_addr, parse_via, split_list, NameAddr, Scheme};
use super::{CSeq, Header, Limits, Message, Method, ParseError, Start, Uri, Value, MAX_REQUEST_URI};

/// One physical line: `content` excludes the line end, `next` is where the following line starts.
struct Line {
    content: Range<usize>,
    next: usize,
    bare_lf: bool,
}

fn next_line(b: &[u8], at: usize) -> Option<Line> {
    let rest = b.get(at..)?;
    let nl = rest.iter().position(|&c| c == b'\n')?;
    let end = at + nl;
    let cr = end > at && b.get(end - 1) == Some(&b'\r');
    Some(Line { content: at..if cr { end - 1 } else { end }, next: end + 1, bare_lf: !cr })
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_range(b: &[u8], r: Range<usize>) -> Range<usize> {
    let s = b.get(r.clone()).unwrap_or_default();
    let start = s.iter().position(|&c| !is_ws(c)).unwrap_or(s.len());
    let end = s.iter().rposition(|&c| !is_ws(c)).map_or(start, |e| e + 1);
    r.start + start..r.start + end
}

pub(super) fn parse(bytes: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    if bytes.len() > limits.max_message {
        return Err(ParseError::TooLarge { limit: limits.max_message });
    }
    let lead = bytes.iter().take_while(|&&c| c == b'\r' || c == b'\n').count();
    let b = bytes.get(lead..).unwrap_or_default();
    if b.is_empty() {
        return Err(ParseError::Empty);
    }
    let head_limit = limits.max_header_bytes;
    let first = next_line(b, 0).ok_or(if b.len() > head_limit {
        ParseError::HeadersTooLarge { limit: head_limit }
    } else {
        ParseError::Unterminated
    })?;
    let mut bare_lf = first.bare_lf;
    let start = parse_start(b.get(first.content.clone()).unwrap_or_default())?;

    // Header lines, folding continuation lines into the field they continue.
    let mut headers: Vec<Header> = Vec::with_capacity(16);
    let mut pos = first.next;
    let body_start = loop {
        let Some(line) = next_line(b, pos) else {
            return Err(if b.len() > head_limit {
                ParseError::HeadersTooLarge { limit: head_limit }
            } else {
                ParseError::Unterminated
            });
        };
        if line.next > head_limit {
            return Err(ParseError::HeadersTooLarge { limit: head_limit });
        }
        bare_lf |= line.bare_lf;
        let content = b.get(line.content.clone()).unwrap_or_default();
        if content.is_empty() {
            break line.next;
        }
        if content.first().copied().is_some_and(is_ws) {
            let h = headers.last_mut().ok_or(ParseError::BadHeaderLine)?;
            h.line.end = line.next;
            h.folded = true;
            if let Value::Span(v) = &mut h.value {
                v.end = line.content.end;
            }
            pos = line.next;
            continue;
        }
        if headers.len() >= limits.max_headers {
            return Err(ParseError::TooManyHeaders { limit: limits.max_headers });
        }
        let colon = content.iter().position(|&c| c == b':').ok_or(ParseError::BadHeaderLine)?;
        let name = trim_range(b, line.content.start..line.content.start + colon);
        if name.start != line.content.start {
            return Err(ParseError::BadHeaderLine);
        }
        let name_str = b.get(name.clone()).and_then(|n| std::str::from_utf8(n).ok()).unwrap_or_default();
        if !is_token(name_str) {
            return Err(ParseError::BadHeaderLine);
        }
        let kind = Known::of(name_str);
        headers.push(Header {
            line: line.content.start..line.next,
            name,
            // Provisionally the raw value range; finished below once continuation lines are known.
            value: Value::Span(line.content.start + colon + 1..line.content.end),
            kind,
            elems: 0..0,
            folded: false,
        });
        pos = line.next;
    };
    let mut f = Fields::default();
    for h in &mut headers {
        let text = finish_value(b, h);
        if h.kind == Known::Other {
            continue;
        }
        // Owned fields must be text; other fields may carry any bytes and are passed through.
        if !text {
            return Err(ParseError::BadHeader(h.kind.name()));
        }
        let value = match &h.value {
            Value::Span(r) => b.get(r.clone()).and_then(|v| std::str::from_utf8(v).ok()).unwrap_or_default(),
            Value::Owned(s) => s,
        };
        h.elems = f.add(h.kind, value)?;
    }

    let (from, to, call_id, cseq) = match (f.from, f.to, f.call_id, f.cseq) {
        _ if f.vias.is_empty() => return Err(ParseError::MissingHeader("Via")),
        (None, ..) => return Err(ParseError::MissingHeader("From")),
        (_, None, ..) => return Err(ParseError::MissingHeader("To")),
        (_, _, None, _) => return Err(ParseError::MissingHeader("Call-ID")),
        (_, _, _, None) => return Err(ParseError::MissingHeader("CSeq")),
        (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
    };
    if let Start::Request { method, .. } = &start {
        if *method != cseq.method {
            return Err(ParseError::CSeqMismatch);
        }
    }

    let available = b.len() - body_start;
    let body_len = match f.content_length {
        Some(n) if n > limits.max_body => return Err(ParseError::BodyTooLarge { limit: limits.max_body }),
        Some(n) if n > available => return Err(ParseError::BodyTruncated),
        Some(n) => n,
        None if available > limits.max_body => return Err(ParseError::BodyTooLarge { limit: limits.max_body }),
        None => available,
    };
    let end = body_start + body_len;
    Ok(Message {
        raw: b.get(..end).unwrap_or_default().to_vec(),
        start,
        start_line: first.content,
        headers,
        body: body_start..end,
        bare_lf,
        vias: f.vias,
        from,
        to,
        call_id,
        cseq,
        max_forwards: f.max_forwards,
        routes: f.routes,
        record_routes: f.record_routes,
        contacts: f.contacts,
        contact_star: f.contact_star,
        content_type: f.content_type,
    })
}

/// Turns the provisional value range into a trimmed span, or an owned unfolded/repaired copy.
/// Returns whether the value was valid UTF-8.
fn finish_value(b: &[u8], h: &mut Header) -> bool {
    let Value::Span(r) = h.value.clone() else { return true };
    let r = trim_range(b, r);
    let raw = b.get(r.clone()).unwrap_or_default();
    match std::str::from_utf8(raw) {
        Ok(_) if !h.folded => h.value = Value::Span(r),
        Ok(s) => h.value = Value::Owned(unfold(s).into_boxed_str()),
        Err(_) => {
            let lossy = String::from_utf8_lossy(raw);
            h.value = Value::Owned(if h.folded { unfold(&lossy) } else { lossy.into_owned() }.into_boxed_str());
            return false;
        }
    }
    true
}

/// Replaces each line end and the whitespace after it by one space (RFC 3261 §7.3.1).
fn unfold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut lines = s.split('\n');
    if let Some(first) = lines.next() {
        out.push_str(first.strip_suffix('\r').unwrap_or(first));
    }
    for l in lines {
        out.push(' ');
        let l = l.trim_start_matches([' ', '\t']);
        out.push_str(l.strip_suffix('\r').unwrap_or(l));
    }
    out
}

fn parse_start(line: &[u8]) -> Result<Start, ParseError> {
    if line.len() >= 4 && line.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/")) {
        return parse_status_line(line);
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::BadStartLine)?;
    let (method, rest) = line.split_once(' ').ok_or(ParseError::BadStartLine)?;
    let (uri, version) = rest.rsplit_once(' ').ok_or(ParseError::BadStartLine)?;
    let method = Method::from_token(method).ok_or(ParseError::BadStartLine)?;
    if version.is_empty() || version.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(ParseError::BadStartLine);
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(if version.len() > 4 && version.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/")) {
            ParseError::BadVersion
        } else {
            ParseError::BadStartLine
        });
    }
    if uri.len() > MAX_REQUEST_URI {
        return Err(ParseError::UriTooLong);
    }
    if uri.is_empty() || uri.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control() || c == '<' || c == '>')
    {
        return Err(ParseError::BadRequestUri);
    }
    let uri = Uri::parse(uri).map_err(|_| ParseError::BadRequestUri)?;
    match uri.scheme {
        Scheme::Sip | Scheme::Sips if uri.has_headers() => Err(ParseError::BadRequestUri),
        Scheme::Sip | Scheme::Sips | Scheme::Tel => Ok(Start::Request { method, uri }),
        Scheme::Other(_) => Err(ParseError::UnsupportedScheme),
    }
}

fn parse_status_line(line: &[u8]) -> Result<Start, ParseError> {
    // SIP-Version SP Status-Code SP Reason-Phrase; the reason may be empty and is free text.
    let version = line.get(..7).ok_or(ParseError::BadStartLine)?;
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(ParseError::BadVersion);
    }
    let rest = line.get(7..).unwrap_or_default();
    let rest = rest.strip_prefix(b" ").ok_or(ParseError::BadStartLine)?;
    let code_len = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let after = rest.get(code_len..).unwrap_or_default();
    if code_len != 3 || !(after.is_empty() || after.first() == Some(&b' ')) {
        return Err(ParseError::BadStatus);
    }
    let status = rest
        .get(..3)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..700).contains(c))
        .ok_or(ParseError::BadStatus)?;
    let reason = String::from_utf8_lossy(after.get(1..).unwrap_or_default()).into_owned();
    Ok(Start::Response { status, reason })
}

/// Typed values collected while walking the header fields.
#[derive(Default)]
struct Fields {
    vias: Vec<super::Via>,
    from: Option<NameAddr>,
    to: Option<NameAddr>,
    call_id: Option<String>,
    cseq: Option<CSeq>,
    max_forwards: Option<u32>,
    routes: Vec<NameAddr>,
    record_routes: Vec<NameAddr>,
    contacts: Vec<NameAddr>,
    contact_star: bool,
    content_type: Option<String>,
    content_length: Option<usize>,
}

impl Fields {
    /// Records one header field; returns the range of list values it added (Via and Route).
    fn add(&mut self, kind: Known, value: &str) -> Result<Range<usize>, ParseError> {
        let name = kind.name();
        let bad = || ParseError::BadHeader(name);
        match kind {
            Known::Via => {
                let start = self.vias.len();
                for v in split_list(value).ok_or_else(bad)? {
                    self.vias.push(parse_via(v).ok_or_else(bad)?);
                }
                return Ok(start..self.vias.len());
            }
            Known::Route => {
                let start = self.routes.len();
                name_addrs(value, &mut self.routes).ok_or_else(bad)?;
                return Ok(start..self.routes.len());
            }
            Known::RecordRoute => name_addrs(value, &mut self.record_routes).ok_or_else(bad)?,
            Known::Contact if value == "*" => {
                if !self.contacts.is_empty() {
                    return Err(bad());
                }
                self.contact_star = true;
            }
            Known::Contact => {
                if self.contact_star {
                    return Err(bad());
                }
                name_addrs(value, &mut self.contacts).ok_or_else(bad)?;
            }
            Known::From | Known::To => {
                let slot = if kind == Known::From { &mut self.from } else { &mut self.to };
                if slot.is_some() {
                    return Err(ParseError::DuplicateHeader(name));
                }
                let list = split_list(value).ok_or_else(bad)?;
                let [one] = list.as_slice() else { return Err(bad()) };
                *slot = Some(parse_name_addr(one).ok_or_else(bad)?);
            }
            Known::CallId => {
                if self.call_id.is_some() {
                    return Err(ParseError::DuplicateHeader(name));
                }
                // RFC 3261 allows `word ["@" word]`; any visible ASCII is accepted because
                // rejecting a call over an odd Call-ID character helps nobody.
                if value.is_empty() || !value.bytes().all(|c| c.is_ascii_graphic()) {
                    return Err(bad());
                }
                self.call_id = Some(value.to_owned());
            }
            Known::CSeq => {
                if self.cseq.is_some() {
                    return Err(ParseError::DuplicateHeader(name));
                }
                let (seq, method) = value.split_once([' ', '\t']).ok_or_else(bad)?;
                let seq = parse_number(seq).ok_or_else(bad)?;
                let method = Method::from_token(method.trim_start_matches([' ', '\t'])).ok_or_else(bad)?;
                self.cseq = Some(CSeq { seq, method });
            }
            Known::MaxForwards => {
                if self.max_forwards.is_some() {
                    return Err(ParseError::DuplicateHeader(name));
                }
                self.max_forwards = Some(parse_number(value).filter(|n| *n <= 255).ok_or_else(bad)?);
            }
            Known::ContentType => {
                if self.content_type.is_some() {
                    return Err(ParseError::DuplicateHeader(name));
                }
                if value.is_empty() {
                    return Err(bad());
                }
                self.content_type = Some(value.to_owned());
            }
            Known::ContentLength => {
                let n = parse_number(value).ok_or(ParseError::BadContentLength)? as usize;
                if self.content_length.is_some_and(|prev| prev != n) {
                    return Err(ParseError::BadContentLength);
                }
                self.content_length = Some(n);
            }
            Known::Other => {}
        }
        Ok(0..0)
    }
}

/// Decimal digits that fit a u32 (leading zeros allowed, as in `0068`).
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 10 {
        return None;
    }
    if digits.is_empty() {
        return Some(0);
    }
    digits.parse().ok()
}

fn name_addrs(value: &str, out: &mut Vec<NameAddr>) -> Option<()> {
    for v in split_list(value)? {
        out.push(parse_name_addr(v)?);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:+34600111222@pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport\r\n\
v: SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bKb , SIP/2.0/UDP h3;branch=z9hG4bKc\r\n\
f: \"Alice\" <sip:alice@example.com>;tag=1\r\n\
t: <sip:+34600111222@example.com>\r\n\
i: abc@192.0.2.1\r\n\
CSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Route: <sip:p3.example.com;lr>\r\n\
X-Binary: \xff\xfe\r\n\
m: <sip:alice@192.0.2.1>\r\n\
c: application/sdp; charset=x\r\n\
l: 4\r\n\
\r\n\
v=0\r\nEXTRA";

    #[test]
    fn typed_fields() {
        let m = parse(INVITE, &Limits::default()).unwrap();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.request_uri().unwrap().user.as_deref(), Some("+34600111222"));
        assert_eq!(m.vias().len(), 3);
        assert_eq!(m.vias()[1].host, "[2001:db8::1]");
        assert_eq!(m.vias()[2].branch(), Some("z9hG4bKc"));
        assert_eq!(m.top_via().rport(), Some(None));
        assert_eq!(m.from().tag(), Some("1"));
        assert_eq!(m.to().tag(), None);
        assert_eq!(m.call_id(), "abc@192.0.2.1");
        assert_eq!(m.cseq(), &CSeq { seq: 1, method: Method::Invite });
        assert_eq!(m.max_forwards(), Some(70));
        assert_eq!(m.routes().len(), 3);
        assert_eq!(m.contacts().len(), 1);
        assert_eq!(m.content_type(), Some("application/sdp; charset=x"));
        assert!(m.has_sdp());
        assert_eq!(m.body(), b"v=0\r");
        assert!(m.raw().ends_with(b"\r\n\r\nv=0\r"));
        assert_eq!(m.header("X-BINARY"), Some("\u{fffd}\u{fffd}"));
        assert_eq!(m.header("content-type"), Some("application/sdp; charset=x"));
        assert_eq!(m.headers().count(), 13);
        assert_eq!(m.headers().next(), Some(("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport")));
    }

    #[test]
    fn folding_and_bare_lf() {
        let msg = b"\r\n\nOPTIONS sip:a@b SIP/2.0\nVia : SIP/2.0/UDP h\n ;branch=z9hG4bKx\nFrom:\n\t<sip:a@b>;tag=9\nTo: <sip:a@b>\nCall-ID: x\nCSeq: 2\n  OPTIONS\nX-Long: one\n   two\n\n";
        let m = parse(msg, &Limits::default()).unwrap();
        assert_eq!(m.top_via().branch(), Some("z9hG4bKx"));
        assert_eq!(m.header("x-long"), Some("one two"));
        assert_eq!(m.header("cseq"), Some("2 OPTIONS"));
        assert_eq!(m.cseq().seq, 2);
        assert!(m.raw().starts_with(b"OPTIONS"));
        assert!(m.body().is_empty());
    }

    #[test]
    fn limits() {
        let small = |m, h, hb, b| Limits { max_message: m, max_headers: h, max_header_bytes: hb, max_body: b };
        let d = Limits::default();
        assert_eq!(parse(INVITE, &small(100, 256, 16384, 100)).unwrap_err(), ParseError::TooLarge { limit: 100 });
        assert_eq!(
            parse(INVITE, &Limits { max_headers: 5, ..d }).unwrap_err(),
            ParseError::TooManyHeaders { limit: 5 }
        );
        assert_eq!(
            parse(INVITE, &Limits { max_header_bytes: 200, ..d }).unwrap_err(),
            ParseError::HeadersTooLarge { limit: 200 }
        );
        assert_eq!(parse(INVITE, &Limits { max_body: 3, ..d }).unwrap_err(), ParseError::BodyTooLarge { limit: 3 });
        let no_cl = b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\n\r\n0123456789";
        assert_eq!(parse(no_cl, &Limits { max_body: 9, ..d }).unwrap_err(), ParseError::BodyTooLarge { limit: 9 });
        assert_eq!(parse(no_cl, &d).unwrap().body(), b"0123456789");
        let long_uri = format!("OPTIONS sip:{}@b SIP/2.0\r\n\r\n", "a".repeat(MAX_REQUEST_URI));
        assert_eq!(parse(long_uri.as_bytes(), &d).unwrap_err(), ParseError::UriTooLong);
        assert_eq!(parse(b"\r\n\r\n", &d).unwrap_err(), ParseError::Empty);
        assert_eq!(parse(b"OPTIONS sip:a@b SIP/2.0", &d).unwrap_err(), ParseError::Unterminated);
    }

    #[test]
    fn methods() {
        assert_eq!(Method::from_token("INVITE"), Some(Method::Invite));
        assert_eq!(Method::from_token("invite"), Some(Method::Other("invite".into())));
        assert_eq!(Method::from_token("IN VITE"), None);
        assert_eq!(Method::from_token(""), None);
        assert_eq!(Method::Prack.to_string(), "PRACK");
        assert_eq!(Method::Other("FOO".into()).as_str(), "FOO");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0068"), Some(68));
        assert_eq!(parse_number("4294967295"), Some(u32::MAX));
        assert_eq!(parse_number("4294967296"), None);
        assert_eq!(parse_number("000000000000000001"), Some(1));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("1 2"), None);
    }
}
