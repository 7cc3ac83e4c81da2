//! Messages callveil originates: responses to a request (RFC 3261 §8.2.6), CANCEL (§9.1), the ACK
//! for a non-2xx final response (§17.1.1.3), and error responses to requests that failed to parse.
//!
//! Header values are copied from the messages they answer as received; text from callers has CR
//! and LF replaced by spaces so it cannot inject header lines. Nothing here picks tags or
//! branches at random: the caller supplies them, and the one tag made here (for error responses)
//! is derived from the request so a retransmission gets the same answer.

use super::headers::{expand, is_token};
use super::uri::parse_name_addr;
use super::{Message, ParseError};

fn push_clean(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
}

fn push_line(out: &mut Vec<u8>, name: &str, value: &str) {
    push_clean(out, name);
    out.extend_from_slice(b": ");
    push_clean(out, value);
    out.extend_from_slice(b"\r\n");
}

fn start(out: &mut Vec<u8>, parts: &[&str]) {
    for p in parts {
        push_clean(out, p);
    }
    out.extend_from_slice(b"\r\n");
}

fn with_tag(to: &str, has_tag: bool, tag: Option<&str>) -> String {
    match tag {
        Some(t) if !has_tag => format!("{to};tag={t}"),
        _ => to.to_owned(),
    }
}

/// A response to `req`: all Via values, From, To (with `;tag=to_tag` added when To has no tag),
/// Call-ID, CSeq, then `extra` header fields, and `Content-Length: 0`.
pub fn response(req: &Message, code: u16, reason: &str, to_tag: Option<&str>, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    start(&mut out, &["SIP/2.0 ", &code.to_string(), " ", reason]);
    for v in req.vias() {
        push_line(&mut out, "Via", &v.raw);
    }
    push_line(&mut out, "From", &req.from().raw);
    push_line(&mut out, "To", &with_tag(&req.to().raw, req.to().tag().is_some(), to_tag));
    push_line(&mut out, "Call-ID", req.call_id());
    push_line(&mut out, "CSeq", &format!("{} {}", req.cseq().seq, req.cseq().method));
    for (name, value) in extra {
        push_line(&mut out, name, value);
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

/// A request within the INVITE transaction (CANCEL or ACK): same Request-URI, the top Via only,
/// the Route set, From, Call-ID and CSeq number of the INVITE.
fn in_transaction(invite: &Message, method: &str, to: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let uri = invite.request_uri().map_or("", |u| u.raw.as_str());
    start(&mut out, &[method, " ", uri, " SIP/2.0"]);
    push_line(&mut out, "Via", &invite.top_via().raw);
    for r in invite.routes() {
        push_line(&mut out, "Route", &r.raw);
    }
    push_line(&mut out, "Max-Forwards", "70");
    push_line(&mut out, "From", &invite.from().raw);
    push_line(&mut out, "To", to);
    push_line(&mut out, "Call-ID", invite.call_id());
    push_line(&mut out, "CSeq", &format!("{} {method}", invite.cseq().seq));
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

/// CANCEL for an INVITE callveil forwarded (RFC 3261 §9.1). `forwarded_invite` must be the
/// request as it was sent, so the top Via (and its branch) is callveil's own.
pub fn cancel_for(forwarded_invite: &Message) -> Vec<u8> {
    in_transaction(forwarded_invite, "CANCEL", &forwarded_invite.to().raw)
}

/// ACK for a non-2xx final response to an INVITE callveil forwarded (RFC 3261 §17.1.1.3): as
/// the CANCEL, but with the To of the response (which carries the UAS tag).
pub fn ack_for(forwarded_invite: &Message, response: &Message) -> Vec<u8> {
    in_transaction(forwarded_invite, "ACK", &response.to().raw)
}

/// A response to a request that failed to parse, when its Via, From, To, Call-ID and CSeq lines
/// can still be read (leniently: first occurrence, text only). `None` for responses, ACK (which
/// is never answered) and input too broken to answer.
///
/// The reason phrase names the fault (`Bad Request (Missing Call-ID)`) and never echoes a value.
pub fn error_response(bytes: &[u8], err: &ParseError) -> Option<Vec<u8>> {
    let lead = bytes.iter().take_while(|&&c| c == b'\r' || c == b'\n').count();
    // A lenient look at the first 64 KiB is enough to find the fields; it bounds the work done
    // for a message that was rejected for its size.
    let b = bytes.get(lead..)?;
    let b = b.get(..b.len().min(65536))?;
    let mut lines = b.split(|&c| c == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = std::str::from_utf8(lines.next()?).ok()?;
    let method = first.split(' ').next()?;
    if !is_token(method) || method == "ACK" || first.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/")) {
        return None;
    }
    let mut fields: Vec<(&str, String)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let line = std::str::from_utf8(line).ok();
        match line {
            Some(l) if l.starts_with([' ', '\t']) => {
                if let Some((_, v)) = fields.last_mut() {
                    v.push(' ');
                    v.push_str(l.trim());
                }
            }
            Some(l) => {
                let (name, value) = l.split_once(':')?;
                fields.push((name.trim(), value.trim().to_owned()));
            }
            // A field we do not need may hold any bytes; keep a placeholder so a continuation
            // line is not glued onto the field before it.
            None => fields.push(("", String::new())),
        }
    }
    let usable = |v: &str| !v.is_empty() && !v.chars().any(|c| c.is_control() && c != '\t');
    let get = |name: &str| fields.iter().find(|(n, _)| expand(n).eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let vias: Vec<&str> =
        fields.iter().filter(|(n, _)| expand(n).eq_ignore_ascii_case("Via")).map(|(_, v)| v.as_str()).collect();
    let (from, to, call_id, cseq) = (get("From")?, get("To")?, get("Call-ID")?, get("CSeq")?);
    if vias.is_empty() || !vias.iter().chain([&from, &to, &call_id, &cseq]).all(|v| usable(v)) {
        return None;
    }

    let status = err.status();
    let reason = match status {
        400 | 513 => format!("{} ({err})", err.status_phrase()),
        _ => err.status_phrase().to_owned(),
    };
    let to_has_tag = match parse_name_addr(to) {
        Some(n) => n.tag().is_some(),
        // Appending a tag to a To that does not parse could land inside an open quote.
        None => true,
    };
    let tag = format!("{:016x}", fnv1a(&[call_id, from, cseq, vias.first().copied().unwrap_or_default()]));
    let mut out = Vec::with_capacity(512);
    start(&mut out, &["SIP/2.0 ", &status.to_string(), " ", &reason]);
    for v in vias {
        push_line(&mut out, "Via", v);
    }
    push_line(&mut out, "From", from);
    push_line(&mut out, "To", &with_tag(to, to_has_tag, Some(&tag)));
    push_line(&mut out, "Call-ID", call_id);
    push_line(&mut out, "CSeq", cseq);
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Some(out)
}

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp, SIP/2.0/UDP carrier.example.net;branch=z9hG4bKc\r\n\
Route: <sip:edge.example.com;lr>\r\n\
From: \"A\" <sip:alice@example.net>;tag=a1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: call-1\r\n\
CSeq: 7 INVITE\r\n\
Max-Forwards: 69\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn builds_response() {
        let req = parse(INVITE).unwrap();
        let out = response(&req, 486, "Busy Here", Some("t9"), &[("Retry-After", "30")]);
        let r = parse(&out).unwrap();
        assert_eq!(r.status(), Some(486));
        assert_eq!(r.reason(), Some("Busy Here"));
        assert_eq!(r.vias().len(), 2);
        assert_eq!(r.to().tag(), Some("t9"));
        assert_eq!(r.from().tag(), Some("a1"));
        assert_eq!(r.cseq().seq, 7);
        assert_eq!(r.header("retry-after"), Some("30"));
        let again = response(&r, 200, "OK", Some("other"), &[]);
        assert_eq!(parse(&again).unwrap().to().tag(), Some("t9"), "an existing tag is kept");
    }

    #[test]
    fn builds_cancel_and_ack() {
        let inv = parse(INVITE).unwrap();
        let c = parse(&cancel_for(&inv)).unwrap();
        assert_eq!(c.method(), Some(&super::super::Method::Cancel));
        assert_eq!(c.request_uri().unwrap().raw, "sip:bob@pbx.example.com");
        assert_eq!(c.vias().len(), 1);
        assert_eq!(c.top_via().branch(), Some("z9hG4bKp"));
        assert_eq!(c.routes().len(), 1);
        assert_eq!(c.max_forwards(), Some(70));
        assert_eq!(c.cseq().seq, 7);
        let resp = parse(&response(&inv, 503, "Service Unavailable", Some("u1"), &[])).unwrap();
        let a = parse(&ack_for(&inv, &resp)).unwrap();
        assert_eq!(a.method(), Some(&super::super::Method::Ack));
        assert_eq!(a.to().tag(), Some("u1"));
        assert_eq!(a.cseq().method, super::super::Method::Ack);
    }

    #[test]
    fn error_responses() {
        let bad = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nv: SIP/2.0/UDP g\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\n";
        let err = parse(bad).unwrap_err();
        assert_eq!(err, ParseError::MissingHeader("Call-ID"));
        assert_eq!(error_response(bad, &err), None, "no Call-ID to answer with");
        let bad = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nv: SIP/2.0/UDP g\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\ni: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 300\r\n\r\n";
        let err = parse(bad).unwrap_err();
        let out = error_response(bad, &err).unwrap();
        let r = parse(&out).unwrap();
        assert_eq!(r.status(), Some(400));
        assert_eq!(r.reason(), Some("Bad Request (Bad Max-Forwards)"));
        assert_eq!(r.vias().len(), 2);
        assert!(r.to().tag().is_some());
        assert_eq!(error_response(bad, &err), Some(out), "same request, same tag");

        let ack = b"ACK sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\ni: c\r\nCSeq: 1 INVITE\r\n\r\n";
        assert_eq!(error_response(ack, &ParseError::CSeqMismatch), None);
        let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\ni: c\r\nCSeq: 1 INVITE\r\n\r\n";
        assert_eq!(error_response(resp, &ParseError::BadStatus), None);
        assert_eq!(error_response(b"\xff\xfe garbage", &ParseError::BadStartLine), None);
        assert_eq!(error_response(b"", &ParseError::Empty), None);
        let v7 = b"OPTIONS sip:a@b SIP/7.0\r\nVia: SIP/7.0/UDP h\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\ni: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let err = parse(v7).unwrap_err();
        assert_eq!(err, ParseError::BadVersion);
        let out = error_response(v7, &err).unwrap();
        assert!(out.starts_with(b"SIP/2.0 505 Version Not Supported\r\n"));
        assert_eq!(parse(&out).unwrap().status(), Some(505));
    }
}
