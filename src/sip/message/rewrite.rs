//! Editing a received message for forwarding, as a list of header lines that are either original
//! (copied byte for byte) or new (written by callveil).
//!
//! Only the lines an operation touches are re-written; a comma-joined Via or Route line that
//! loses its first value is re-written from the remaining values' received text. Content-Length
//! is always written to match the body. Line ends of copied lines become CRLF when the message
//! used bare LF somewhere. New text has CR and LF replaced by spaces, so a value taken from a
//! hostile message cannot inject header lines. This module makes no routing decisions.

use std::borrow::Cow;

use super::headers::{same_name, Known};
use super::{Message, Start};

enum Line<'a> {
    /// Index into the message's header list.
    Orig(usize),
    New {
        name: Cow<'a, str>,
        values: Vec<Cow<'a, str>>,
        kind: Known,
    },
}

/// A pending edit of a [`Message`]; [`Rewrite::finish`] produces the bytes.
pub struct Rewrite<'a> {
    msg: &'a Message,
    request_uri: Option<String>,
    lines: Vec<Line<'a>>,
    body: Option<(Vec<u8>, Option<String>)>,
}

fn clean(s: &str) -> Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        Cow::Owned(s.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(s)
    }
}

fn owned(s: &str) -> Cow<'static, str> {
    Cow::Owned(clean(s).into_owned())
}

impl<'a> Rewrite<'a> {
    pub(super) fn new(msg: &'a Message) -> Rewrite<'a> {
        Rewrite { msg, request_uri: None, lines: (0..msg.headers.len()).map(Line::Orig).collect(), body: None }
    }

    /// Replaces the Request-URI (requests only; ignored for responses).
    pub fn request_uri(mut self, uri: &str) -> Self {
        self.request_uri = Some(clean(uri).into_owned());
        self
    }

    /// Adds a `Via: value` line above all other Via lines.
    pub fn push_via(mut self, value: &str) -> Self {
        let at = self.first(Known::Via).unwrap_or(0);
        self.lines.insert(at, Line::New { name: "Via".into(), values: vec![owned(value)], kind: Known::Via });
        self
    }

    /// Removes the first Via value; the rest of a comma-joined line stays.
    pub fn pop_via(self) -> Self {
        self.pop_value(Known::Via)
    }

    /// Sets `received=` on the first Via value, replacing any present, and fills in a bare
    /// `rport` with `rport` when given (RFC 3581 §4). An absent `rport` is not added: the client
    /// did not ask for symmetric response routing.
    pub fn top_via_received(mut self, received: &str, rport: Option<u16>) -> Self {
        let Some(at) = self.first(Known::Via) else { return self };
        let mut values = self.values(at);
        let Some(first) = values.first_mut() else { return self };
        *first = Cow::Owned(set_received(first, &clean(received), rport));
        let name = self.name(at);
        if let Some(line) = self.lines.get_mut(at) {
            *line = Line::New { name, values, kind: Known::Via };
        }
        self
    }

    /// Removes the first Route value; the rest of a comma-joined line stays.
    pub fn pop_route(self) -> Self {
        self.pop_value(Known::Route)
    }

    /// Adds a `Record-Route: value` line above existing Record-Route lines (after the Via lines
    /// when there are none).
    pub fn push_record_route(mut self, value: &str) -> Self {
        let at = self
            .first(Known::RecordRoute)
            .or_else(|| self.lines.iter().rposition(|l| self.kind(l) == Known::Via).map(|i| i + 1))
            .unwrap_or(0);
        self.lines.insert(
            at,
            Line::New { name: "Record-Route".into(), values: vec![owned(value)], kind: Known::RecordRoute },
        );
        self
    }

    /// Sets Max-Forwards to `n`, in place when present, otherwise as a new line.
    pub fn max_forwards(mut self, n: u32) -> Self {
        let new =
            Line::New { name: "Max-Forwards".into(), values: vec![n.to_string().into()], kind: Known::MaxForwards };
        match self.first(Known::MaxForwards) {
            Some(at) => {
                if let Some(line) = self.lines.get_mut(at) {
                    *line = new;
                }
            }
            None => self.lines.push(new),
        }
        self
    }

    /// Removes every line of the field `name` (case-insensitive, compact forms equal long forms).
    pub fn remove_header(mut self, name: &str) -> Self {
        let msg = self.msg;
        self.lines.retain(|l| !same_name(line_name(msg, l), name));
        self
    }

    /// Appends a `name: value` line. A Content-Length added here is ignored: `finish` writes it.
    pub fn add_header(mut self, name: &str, value: &str) -> Self {
        let kind = Known::of(name);
        self.lines.push(Line::New { name: owned(name), values: vec![owned(value)], kind });
        self
    }

    /// Replaces the body; Content-Type too when `content_type` is given.
    pub fn body(mut self, content_type: Option<&str>, body: &[u8]) -> Self {
        self.body = Some((body.to_vec(), content_type.map(|c| clean(c).into_owned())));
        self
    }

    /// The edited message. Content-Length is always present and correct.
    pub fn finish(self) -> Vec<u8> {
        let msg = self.msg;
        let (body, new_type) = match &self.body {
            Some((b, t)) => (b.as_slice(), t.as_deref()),
            None => (msg.body(), None),
        };
        let mut out = Vec::with_capacity(msg.raw.len() + 256 + body.len());
        match (&msg.start, &self.request_uri) {
            (Start::Request { method, .. }, Some(uri)) => {
                for part in [method.as_str(), " ", uri, " SIP/2.0"] {
                    out.extend_from_slice(part.as_bytes());
                }
            }
            _ => out.extend_from_slice(msg.raw.get(msg.start_line.clone()).unwrap_or_default()),
        }
        out.extend_from_slice(b"\r\n");

        let mut wrote_length = false;
        let mut wrote_type = false;
        for line in &self.lines {
            match self.kind(line) {
                Known::ContentLength => {
                    if !wrote_length {
                        self.write_length(&mut out, line, body.len());
                        wrote_length = true;
                    }
                    continue;
                }
                Known::ContentType if new_type.is_some() => {
                    if !wrote_type {
                        write_line(&mut out, "Content-Type", [new_type.unwrap_or_default()]);
                        wrote_type = true;
                    }
                    continue;
                }
                _ => {}
            }
            match line {
                Line::Orig(i) => self.copy(&mut out, *i),
                Line::New { name, values, .. } => write_line(&mut out, name, values.iter().map(|v| &**v)),
            }
        }
        if let (Some(t), false) = (new_type, wrote_type) {
            write_line(&mut out, "Content-Type", [t]);
        }
        if !wrote_length {
            write_line(&mut out, "Content-Length", [body.len().to_string().as_str()]);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }

    fn kind(&self, line: &Line<'_>) -> Known {
        match line {
            Line::Orig(i) => self.msg.headers.get(*i).map_or(Known::Other, |h| h.kind),
            Line::New { kind, .. } => *kind,
        }
    }

    fn first(&self, kind: Known) -> Option<usize> {
        self.lines.iter().position(|l| self.kind(l) == kind)
    }

    fn name(&self, at: usize) -> Cow<'a, str> {
        match self.lines.get(at) {
            Some(Line::Orig(i)) => {
                self.msg.headers.get(*i).map_or(Cow::Borrowed(""), |h| Cow::Borrowed(self.msg.header_name(h)))
            }
            Some(Line::New { name, .. }) => name.clone(),
            None => Cow::Borrowed(""),
        }
    }

    /// The values of a Via or Route line, as received or as set by earlier edits.
    fn values(&self, at: usize) -> Vec<Cow<'a, str>> {
        let msg = self.msg;
        match self.lines.get(at) {
            Some(Line::Orig(i)) => {
                let Some(h) = msg.headers.get(*i) else { return Vec::new() };
                let raws: Vec<&'a str> = match h.kind {
                    Known::Via => {
                        msg.vias.get(h.elems.clone()).unwrap_or_default().iter().map(|v| v.raw.as_str()).collect()
                    }
                    Known::Route => {
                        msg.routes.get(h.elems.clone()).unwrap_or_default().iter().map(|r| r.raw.as_str()).collect()
                    }
                    _ => vec![msg.header_value(h)],
                };
                raws.into_iter().map(Cow::Borrowed).collect()
            }
            Some(Line::New { values, .. }) => values.clone(),
            None => Vec::new(),
        }
    }

    /// Removes the last Route value (comma-joined aware). A proxy receiving a request from a
    /// strict router moves that value into the Request-URI (RFC 3261 §16.4).
    pub fn remove_last_route(mut self) -> Self {
        let Some(at) = self.lines.iter().rposition(|l| self.kind(l) == Known::Route) else { return self };
        let mut values = self.values(at);
        if values.len() <= 1 {
            self.lines.remove(at);
        } else {
            values.pop();
            let name = self.name(at);
            if let Some(line) = self.lines.get_mut(at) {
                *line = Line::New { name, values, kind: Known::Route };
            }
        }
        self
    }

    fn pop_value(mut self, kind: Known) -> Self {
        let Some(at) = self.first(kind) else { return self };
        let mut values = self.values(at);
        if values.len() <= 1 {
            self.lines.remove(at);
        } else {
            values.remove(0);
            let name = self.name(at);
            if let Some(line) = self.lines.get_mut(at) {
                *line = Line::New { name, values, kind };
            }
        }
        self
    }

    fn copy(&self, out: &mut Vec<u8>, i: usize) {
        let msg = self.msg;
        let Some(bytes) = msg.headers.get(i).and_then(|h| msg.raw.get(h.line.clone())) else { return };
        if !msg.bare_lf {
            out.extend_from_slice(bytes);
            return;
        }
        let mut prev = 0u8;
        for &c in bytes {
            if c == b'\n' && prev != b'\r' {
                out.push(b'\r');
            }
            out.push(c);
            prev = c;
        }
    }

    fn write_length(&self, out: &mut Vec<u8>, line: &Line<'_>, len: usize) {
        if let Line::Orig(i) = line {
            let same = self.msg.headers.get(*i).is_some_and(|h| self.msg.header_value(h).parse::<usize>() == Ok(len));
            if same {
                self.copy(out, *i);
                return;
            }
        }
        write_line(out, "Content-Length", [len.to_string().as_str()]);
    }
}

fn line_name<'m>(msg: &'m Message, line: &'m Line<'_>) -> &'m str {
    match line {
        Line::Orig(i) => msg.headers.get(*i).map_or("", |h| msg.header_name(h)),
        Line::New { name, .. } => name,
    }
}

fn write_line<'v>(out: &mut Vec<u8>, name: &str, values: impl IntoIterator<Item = &'v str>) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    for (n, v) in values.into_iter().enumerate() {
        if n > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Re-writes one Via value with `received` set and a bare `rport` filled in, keeping the text of
/// every other parameter.
fn set_received(via: &str, received: &str, rport: Option<u16>) -> String {
    let mut parts = split_params(via).into_iter();
    let mut out = parts.next().unwrap_or_default().trim_end().to_owned();
    for p in parts {
        let p = p.trim();
        let name = p.split('=').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("received") {
            continue;
        }
        out.push(';');
        match rport {
            Some(port) if name.eq_ignore_ascii_case("rport") => out.push_str(&format!("rport={port}")),
            _ => out.push_str(p),
        }
    }
    out.push_str(";received=");
    out.push_str(received);
    out
}

/// Splits at `;` outside quoted strings.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(s.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s.get(start..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    const REQ: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1;rport, SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\n\
Via: SIP/2.0/UDP c.example.com;branch=z9hG4bK3\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
From: <sip:alice@example.com>;tag=1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
X-Odd:   keep   this \xff exactly  \r\n\
Content-Length: 3\r\n\
\r\n\
abc";

    #[test]
    fn untouched_is_byte_exact() {
        let m = parse(REQ).unwrap();
        assert_eq!(m.rewrite().finish(), REQ);
    }

    #[test]
    fn via_and_route_edits() {
        let m = parse(REQ).unwrap();
        let out = m
            .rewrite()
            .push_via("SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp")
            .pop_route()
            .push_record_route("<sip:proxy.example.com;lr>")
            .max_forwards(69)
            .request_uri("sip:bob@10.0.0.2:5060")
            .finish();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("INVITE sip:bob@10.0.0.2:5060 SIP/2.0\r\nVia: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1;rport, SIP/2.0/UDP b"), "{text}");
        assert!(
            text.contains("\r\nRecord-Route: <sip:proxy.example.com;lr>\r\nRoute: <sip:p2.example.com;lr>\r\n"),
            "{text}"
        );
        let odd = b"\r\nX-Odd:   keep   this \xff exactly  \r\n";
        assert!(out.windows(odd.len()).any(|w| w == odd));
        let again = parse(&out).unwrap();
        assert_eq!(again.vias().len(), 4);
        assert_eq!(again.routes().len(), 1);
        assert_eq!(again.max_forwards(), Some(69));
        assert_eq!(again.body(), b"abc");

        let popped = parse(&again.rewrite().pop_via().pop_via().finish()).unwrap();
        assert_eq!(popped.vias().len(), 2);
        assert_eq!(popped.top_via().host, "b.example.com");
        assert!(
            String::from_utf8_lossy(popped.raw()).contains("\r\nVia: SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\n")
        );
    }

    #[test]
    fn received_and_rport() {
        let m = parse(REQ).unwrap();
        let out = m.rewrite().top_via_received("192.0.2.9", Some(5099)).finish();
        let m2 = parse(&out).unwrap();
        assert_eq!(m2.top_via().received(), Some("192.0.2.9"));
        assert_eq!(m2.top_via().rport(), Some(Some(5099)));
        assert_eq!(m2.vias().len(), 3);
        let again = parse(&m2.rewrite().top_via_received("192.0.2.10", None).finish()).unwrap();
        assert_eq!(again.top_via().received(), Some("192.0.2.10"));
        assert_eq!(again.top_via().params.iter().filter(|(n, _)| n == "received").count(), 1);
        assert_eq!(
            set_received("SIP/2.0/UDP h ; branch=\"a;b\"", "1.2.3.4", Some(7)),
            "SIP/2.0/UDP h;branch=\"a;b\";received=1.2.3.4"
        );
    }

    #[test]
    fn body_headers_and_injection() {
        let m = parse(REQ).unwrap();
        let out = m
            .rewrite()
            .remove_header("x-odd")
            .add_header("X-New", "a\r\nInjected: yes")
            .add_header("Content-Length", "999")
            .body(Some("application/sdp"), b"v=0\r\n")
            .finish();
        let m2 = parse(&out).unwrap();
        assert_eq!(m2.header("X-Odd"), None);
        assert_eq!(m2.header("Injected"), None);
        assert_eq!(m2.content_type(), Some("application/sdp"));
        assert_eq!(m2.body(), b"v=0\r\n");
        assert_eq!(m2.header("l"), Some("5"));
    }

    #[test]
    fn bare_lf_is_normalised() {
        let lf = b"BYE sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>;tag=2\nCall-ID: x\nCSeq: 3 BYE\nX-Fold: a\n b\n\n";
        let out = parse(lf).unwrap().rewrite().finish();
        assert!(!out.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'), "{}", String::from_utf8_lossy(&out));
        assert_eq!(parse(&out).unwrap().header("x-fold"), Some("a b"));
    }
}
