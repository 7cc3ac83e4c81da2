//! URIs (`sip:`, `sips:`, `tel:`, others kept opaque), name-addr values (From, To, Contact,
//! Route, Record-Route) and Via values, parsed from header text that has already been unfolded.
//!
//! These types own their strings so they can outlive the message; the `raw` field keeps the text
//! exactly as received so a value can be copied into a new message without being re-printed.
//! URI user parts and display names are personal data: the `Debug` impls here redact them, and
//! nothing in this module logs. It does not compare URIs (RFC 3261 §19.1.4) or resolve hosts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::headers::is_token_byte;
use super::ParseError;

/// Parameters in order of appearance: lower-case name, value as written (quoted strings keep their
/// quotes; URI parameters are percent-decoded).
pub type Params = Vec<(String, Option<String>)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    /// Any other scheme, lower-cased.
    Other(String),
}

impl Scheme {
    pub fn as_str(&self) -> &str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Tel => "tel",
            Scheme::Other(s) => s,
        }
    }
}

/// A URI. For `sip:`/`sips:` every part is split out; for `tel:` the number is `user` and `host`
/// is empty; for other schemes only `scheme` and `raw` are meaningful.
#[derive(Clone)]
pub struct Uri {
    pub scheme: Scheme,
    /// Percent-decoded user part for sip/sips (personal data); the number for tel.
    pub user: Option<String>,
    /// As written; IPv6 references keep their brackets (`[2001:db8::1]`). Empty for tel.
    pub host: String,
    pub port: Option<u16>,
    /// uri-parameters after `;`, names lower-cased, names and values percent-decoded.
    pub params: Params,
    /// The URI exactly as received.
    pub raw: String,
}

impl Uri {
    /// Parses one URI with no surrounding whitespace or angle brackets.
    pub fn parse(s: &str) -> Result<Uri, ParseError> {
        parse_uri(s).ok_or(ParseError::BadUri)
    }

    /// `Some(None)` for a parameter without value, `Some(Some(v))` with one, `None` when absent.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// Loose routing (RFC 3261 §16.4): the `lr` parameter is present.
    pub fn lr(&self) -> bool {
        self.param("lr").is_some()
    }

    /// The host when it is an IP literal.
    pub fn host_ip(&self) -> Option<IpAddr> {
        host_ip(&self.host)
    }

    /// Whether the URI carries `?headers` (not allowed in a Request-URI, RFC 3261 §19.1.1).
    pub(crate) fn has_headers(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips) && split_userinfo(sip_rest(&self.raw)).1.contains('?')
    }
}

impl fmt::Debug for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uri")
            .field("scheme", &self.scheme)
            .field("user", &self.user.as_ref().map(|_| "{REDACTED}"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("params", &self.params.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// `[display-name] <uri> *(;param)` or `uri *(;param)` (addr-spec form, where every `;` starts a
/// header parameter).
#[derive(Clone)]
pub struct NameAddr {
    /// Unquoted and unescaped display name (personal data).
    pub display: Option<String>,
    pub uri: Uri,
    /// Header parameters after the URI (`tag`, `expires`, `q`, ...), names lower-cased.
    pub params: Params,
    /// The whole value as received (unfolded, trimmed).
    pub raw: String,
}

impl NameAddr {
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }
}

impl fmt::Debug for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameAddr")
            .field("display", &self.display.as_ref().map(|_| "{REDACTED}"))
            .field("uri", &self.uri)
            .field("params", &self.params.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One Via value: `SIP/2.0/UDP host:port;params`.
#[derive(Clone, Debug)]
pub struct Via {
    /// Upper-cased transport token (UDP, TCP, TLS, SCTP, WS, WSS, or another token).
    pub transport: String,
    /// As written; IPv6 references keep their brackets.
    pub host: String,
    pub port: Option<u16>,
    /// Via parameters, names lower-cased, values as written.
    pub params: Params,
    /// This value as received (unfolded, trimmed), without the commas around it.
    pub raw: String,
}

impl Via {
    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    pub fn received(&self) -> Option<&str> {
        self.param("received").flatten()
    }

    /// RFC 3581: `Some(None)` for a bare `rport`, `Some(Some(port))` when filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        // The parser rejects an rport value that is not a port, so this parse cannot fail here.
        self.param("rport").map(|v| v.and_then(|p| p.parse().ok()))
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// `host[:port]`.
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// The host when it is an IP literal.
    pub fn host_ip(&self) -> Option<IpAddr> {
        host_ip(&self.host)
    }
}

fn find_param<'p>(params: &'p Params, name: &str) -> Option<Option<&'p str>> {
    params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref())
}

fn host_ip(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

// ---------------------------------------------------------------------------------------------
// URI grammar (RFC 3261 §25.1, RFC 3966)

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
}

fn user_ok(b: u8) -> bool {
    is_unreserved(b) || b"%&=+$,;?/".contains(&b)
}

fn password_ok(b: u8) -> bool {
    is_unreserved(b) || b"%&=+$,".contains(&b)
}

fn paramchar_ok(b: u8) -> bool {
    is_unreserved(b) || b"%[]/:&+$".contains(&b)
}

fn hchar_ok(b: u8) -> bool {
    is_unreserved(b) || b"%[]/?:+$=&".contains(&b)
}

fn host_byte(b: u8) -> bool {
    // `_` is outside RFC 1123 but common in internal names; accepting it costs nothing.
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
}

fn tel_ok(b: u8) -> bool {
    b.is_ascii_hexdigit() || b"*#-.()+".contains(&b)
}

fn pct_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn sip_rest(raw: &str) -> &str {
    raw.split_once(':').map_or("", |(_, r)| r)
}

/// Splits `[userinfo@]hostport...` at the first `@`: neither params nor headers may hold a bare `@`.
fn split_userinfo(rest: &str) -> (Option<&str>, &str) {
    match rest.split_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    }
}

fn parse_uri(s: &str) -> Option<Uri> {
    let (scheme, rest) = s.split_once(':')?;
    let sb = scheme.as_bytes();
    if !sb.first()?.is_ascii_alphabetic()
        || !sb.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
    {
        return None;
    }
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "sip" => Scheme::Sip,
        "sips" => Scheme::Sips,
        "tel" => Scheme::Tel,
        other => Scheme::Other(other.to_owned()),
    };
    let mut uri = Uri { scheme, user: None, host: String::new(), port: None, params: Vec::new(), raw: s.to_owned() };
    match uri.scheme {
        Scheme::Sip | Scheme::Sips => {
            let (userinfo, hostpart) = split_userinfo(rest);
            if let Some(ui) = userinfo {
                let (user, password) = match ui.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (ui, None),
                };
                if user.is_empty() || !user.bytes().all(user_ok) || !password.unwrap_or("").bytes().all(password_ok) {
                    return None;
                }
                uri.user = Some(pct_decode(user)?);
            }
            let hp_end = hostpart.find([';', '?']).unwrap_or(hostpart.len());
            let (host, port) = parse_hostport(hostpart.get(..hp_end)?)?;
            uri.host = host.to_owned();
            uri.port = port;
            let tail = hostpart.get(hp_end..)?;
            let (params, headers) = match tail.split_once('?') {
                Some((p, h)) => (p, Some(h)),
                None => (tail, None),
            };
            uri.params = uri_params(params)?;
            if let Some(h) = headers {
                if h.is_empty() || !h.bytes().all(hchar_ok) {
                    return None;
                }
            }
        }
        Scheme::Tel => {
            let (number, params) = match rest.find(';') {
                Some(i) => (rest.get(..i)?, rest.get(i..)?),
                None => (rest, ""),
            };
            if number.is_empty() || !number.bytes().all(tel_ok) {
                return None;
            }
            uri.user = Some(number.to_owned());
            uri.params = uri_params(params)?;
        }
        Scheme::Other(_) => {
            let opaque_ok = |b: u8| b.is_ascii_graphic() && !b"<>\"".contains(&b);
            if rest.is_empty() || !rest.bytes().all(opaque_ok) {
                return None;
            }
        }
    }
    Some(uri)
}

/// `host [":" port]` with nothing around it.
pub(crate) fn parse_hostport(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let close = s.find(']')?;
        let host = s.get(..=close)?;
        host.get(1..close)?.parse::<Ipv6Addr>().ok()?;
        let after = s.get(close + 1..)?;
        if after.is_empty() {
            (host, None)
        } else {
            (host, Some(after.strip_prefix(':')?))
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || (!host.starts_with('[') && !host.bytes().all(host_byte)) {
        return None;
    }
    let port = match port {
        Some(p) => Some(parse_port(p)?),
        None => None,
    };
    Some((host, port))
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// `*( ";" pname ["=" pvalue] )` inside a URI: no whitespace, percent-escapes decoded.
fn uri_params(s: &str) -> Option<Params> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    let s = s.strip_prefix(';')?;
    let mut out = Vec::new();
    for p in s.split(';') {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        };
        if name.is_empty() || !name.bytes().all(paramchar_ok) {
            return None;
        }
        let value = match value {
            Some(v) if v.is_empty() || !v.bytes().all(paramchar_ok) => return None,
            Some(v) => Some(pct_decode(v)?),
            None => None,
        };
        out.push((pct_decode(name)?.to_ascii_lowercase(), value));
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Header-value grammar: lists, name-addr, Via, generic parameters.

/// A byte cursor over a `&str`. It only ever stops on ASCII bytes, so every slice it hands out
/// falls on a character boundary; `get` keeps that a checked property rather than an assumption.
struct Cur<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cur<'a> {
    fn new(s: &'a str) -> Self {
        Cur { s, i: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Skips spaces and tabs; returns how many.
    fn ws(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
        self.i - start
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        self.s.get(start..self.i).unwrap_or_default()
    }

    fn rest(&self) -> &'a str {
        self.s.get(self.i..).unwrap_or_default()
    }

    /// A quoted-string starting at the cursor, returned with its quotes.
    fn quoted(&mut self) -> Option<&'a str> {
        let start = self.i;
        if !self.eat(b'"') {
            return None;
        }
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return self.s.get(start..self.i);
                }
                _ => self.i += 1,
            }
        }
    }
}

fn is_ws(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Splits a list-valued header at commas outside quoted strings and `<...>`. Empty elements and
/// unbalanced quotes or brackets are errors.
pub(crate) fn split_list(s: &str) -> Option<Vec<&str>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i, mut angle) = (0, 0, false);
    while let Some(&c) = b.get(i) {
        match c {
            b'"' if !angle => {
                let mut cur = Cur { s, i };
                cur.quoted()?;
                i = cur.i;
                continue;
            }
            b'<' if !angle => angle = true,
            b'>' if angle => angle = false,
            b',' if !angle => {
                out.push(s.get(start..i)?.trim_matches(is_ws));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if angle {
        return None;
    }
    out.push(s.get(start..)?.trim_matches(is_ws));
    if out.iter().any(|e| e.is_empty()) {
        return None;
    }
    Some(out)
}

/// `*( SEMI generic-param )` where `generic-param = token [ EQUAL ( token / host / quoted-string ) ]`.
fn header_params(c: &mut Cur<'_>) -> Option<Params> {
    let mut out = Vec::new();
    loop {
        c.ws();
        if c.done() {
            return Some(out);
        }
        if !c.eat(b';') {
            return None;
        }
        c.ws();
        let name = c.take_while(is_token_byte);
        if name.is_empty() {
            return None;
        }
        c.ws();
        let value = if c.eat(b'=') {
            c.ws();
            let v = match c.peek()? {
                b'"' => c.quoted()?,
                b'[' => {
                    let v = c.take_while(|b| b.is_ascii_hexdigit() || b"[:.".contains(&b));
                    if !c.eat(b']') {
                        return None;
                    }
                    c.s.get(c.i - v.len() - 1..c.i)?
                }
                // `:` lets a bare IPv6 `received` through (RFC 3261 §20.42 allows it unbracketed).
                _ => c.take_while(|b| is_token_byte(b) || b == b':'),
            };
            if v.is_empty() {
                return None;
            }
            Some(v.to_owned())
        } else {
            None
        };
        out.push((name.to_ascii_lowercase(), value));
    }
}

/// Unescapes the quoted-pairs of a quoted-string given with its quotes.
fn unquote(q: &str) -> String {
    let inner = q.get(1..q.len().saturating_sub(1)).unwrap_or_default();
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for ch in inner.chars() {
        if !escaped && ch == '\\' {
            escaped = true;
        } else {
            out.push(ch);
            escaped = false;
        }
    }
    out
}

/// One name-addr or addr-spec element (already split out of its list and trimmed).
pub(crate) fn parse_name_addr(s: &str) -> Option<NameAddr> {
    let mut c = Cur::new(s);
    let mut display = None;
    let angle = if c.peek() == Some(b'"') {
        display = Some(unquote(c.quoted()?));
        c.ws();
        if !c.eat(b'<') {
            return None;
        }
        true
    } else if let Some(lt) = s.find('<') {
        let d = s.get(..lt)?.trim_matches(is_ws);
        if !d.is_empty() {
            if !d.split([' ', '\t']).filter(|w| !w.is_empty()).all(super::headers::is_token) {
                return None;
            }
            display = Some(d.to_owned());
        }
        c.i = lt + 1;
        true
    } else {
        false
    };
    let uri = if angle {
        let rest = c.rest();
        let gt = rest.find('>')?;
        c.i += gt + 1;
        Uri::parse(rest.get(..gt)?).ok()?
    } else {
        // addr-spec: the URI cannot contain `;`, `,` or `?` here (RFC 3261 §20), so it ends at
        // the first `;` or whitespace.
        let end = s.find([';', ' ', '\t']).unwrap_or(s.len());
        let u = s.get(..end)?;
        if u.contains('?') {
            return None;
        }
        c.i = end;
        Uri::parse(u).ok()?
    };
    let params = header_params(&mut c)?;
    Some(NameAddr { display, uri, params, raw: s.to_owned() })
}

/// One Via value (already split out of its list and trimmed).
pub(crate) fn parse_via(s: &str) -> Option<Via> {
    let mut c = Cur::new(s);
    let slash = |c: &mut Cur<'_>| {
        c.ws();
        let ok = c.eat(b'/');
        c.ws();
        ok
    };
    if c.take_while(is_token_byte).is_empty()
        || !slash(&mut c)
        || c.take_while(is_token_byte).is_empty()
        || !slash(&mut c)
    {
        return None;
    }
    let transport = c.take_while(is_token_byte).to_ascii_uppercase();
    if transport.is_empty() || c.ws() == 0 {
        return None;
    }
    let host = if c.peek() == Some(b'[') {
        let start = c.i;
        c.take_while(|b| b != b']');
        if !c.eat(b']') {
            return None;
        }
        let h = s.get(start..c.i)?;
        h.get(1..h.len() - 1)?.parse::<Ipv6Addr>().ok()?;
        h
    } else {
        c.take_while(host_byte)
    };
    if host.is_empty() {
        return None;
    }
    let save = c.i;
    c.ws();
    let port = if c.eat(b':') {
        c.ws();
        Some(parse_port(c.take_while(|b| b.is_ascii_digit()))?)
    } else {
        c.i = save;
        None
    };
    let params = header_params(&mut c)?;
    let via = Via { transport, host: host.to_owned(), port, params, raw: s.to_owned() };
    if let Some(Some(rport)) = via.param("rport") {
        parse_port(rport)?;
    }
    Some(via)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let u = Uri::parse("sip:+34%20600@[2001:db8::1]:5080;transport=tcp;LR;%6C%72x=v%61l").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user.as_deref(), Some("+34 600"));
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, Some(5080));
        assert_eq!(u.param("transport"), Some(Some("tcp")));
        assert!(u.lr());
        assert_eq!(u.param("lrx"), Some(Some("val")));
        assert_eq!(u.host_ip(), Some("2001:db8::1".parse().unwrap()));
        assert!(!u.has_headers());
        let semi = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(semi.user.as_deref(), Some("user;par=u@example.net"));
        assert_eq!(semi.host, "example.com");
        assert!(Uri::parse("sip:a@b?Route=%3Csip:x%3E").unwrap().has_headers());
        assert_eq!(Uri::parse("sips:10.0.0.1").unwrap().host_ip(), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn other_schemes() {
        let t = Uri::parse("tel:+1-201-555-0123;phone-context=example.com").unwrap();
        assert_eq!(t.scheme, Scheme::Tel);
        assert_eq!(t.user.as_deref(), Some("+1-201-555-0123"));
        assert_eq!(t.host, "");
        assert_eq!(t.param("phone-context"), Some(Some("example.com")));
        let o = Uri::parse("soap.beep://192.0.2.103:3002").unwrap();
        assert_eq!(o.scheme, Scheme::Other("soap.beep".into()));
    }

    #[test]
    fn bad_uris() {
        for bad in [
            "",
            "sip",
            ":x",
            "sip:",
            "sip:@host",
            "sip:a@",
            "sip:a b@host",
            "sip:host:99999",
            "sip:host:",
            "sip:[::1",
            "sip:[zz]",
            "sip:host;;lr",
            "sip:host;=x",
            "sip:host?",
            " sip:host",
            "sip:host ",
            "tel:",
            "tel:12 34",
            "1sip:x",
            "x:<y>",
            "sip:%zz@host",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lists() {
        assert_eq!(split_list("a, \"b,c\" <x:y,z>;p=1 ,d").unwrap(), ["a", "\"b,c\" <x:y,z>;p=1", "d"]);
        assert!(split_list("a,,b").is_none());
        assert!(split_list("\"open").is_none());
        assert!(split_list("<sip:a").is_none());
        assert!(split_list("").is_none());
    }

    #[test]
    fn name_addrs() {
        let n = parse_name_addr("\"J Rosenberg \\\\\\\"\" <sip:jdrosen@example.com> ; tag = 98asjd8").unwrap();
        assert_eq!(n.display.as_deref(), Some("J Rosenberg \\\""));
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = parse_name_addr("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(n.uri.host, "chair-dnrc.example.com");
        assert_eq!(n.tag(), Some("1918181833n"));
        let n = parse_name_addr("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display.as_deref(), Some("caller"));
        let n = parse_name_addr("<sip:p.example.com;lr>;foo=\"a;b\"").unwrap();
        assert!(n.uri.lr());
        assert_eq!(n.param("foo"), Some(Some("\"a;b\"")));
        let n = parse_name_addr("sip:p.example.com;lr").unwrap();
        assert!(!n.uri.lr(), "addr-spec params are header params");
        assert_eq!(n.param("lr"), Some(None));
        for bad in [
            "\"Mr. J. User <sip:j.user@example.com>",
            "\"Watson, Thomas\" < sip:t.watson@example.org >",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "\"Joe\" <sip:joe@example.org>;;;;",
            "Bell",
            "<sip:a@b",
            "sip:a@b junk",
            "a\"b <sip:a@b>",
            "<sip:a@b>;tag=",
        ] {
            assert!(parse_name_addr(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn vias() {
        let v = parse_via("SIP  /   2.0 /udp 192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.branch(), Some("390skdjuw"));
        let v = parse_via("SIP/2.0/TCP [2001:db8::1]:5060 ;rport;received=2001:db8::9;branch= z9hG4bK1").unwrap();
        assert_eq!(v.sent_by(), "[2001:db8::1]:5060");
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some("2001:db8::9"));
        assert_eq!(v.branch(), Some("z9hG4bK1"));
        assert_eq!(parse_via("SIP/2.0/UDP h:5062;rport=5999").unwrap().rport(), Some(Some(5999)));
        for bad in [
            "SIP/2.0/UDP",
            "SIP/2.0 UDP h",
            "SIP/2.0/UDP 192.0.2.15;;",
            "SIP/2.0/UDP h:70000",
            "SIP/2.0/UDP h;rport=x",
            "SIP/2.0/UDP [::1",
            "SIP/2.0/UDP h junk",
            "SIP/2.0/UDPh",
        ] {
            assert!(parse_via(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn debug_redacts_personal_data() {
        let n = parse_name_addr("\"Alice Example\" <sip:+34600111222@example.com>;tag=1").unwrap();
        let d = format!("{n:?}");
        assert!(!d.contains("600111222") && !d.contains("Alice"), "{d}");
    }
}
