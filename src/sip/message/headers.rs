//! Header field names: compact forms (RFC 3261 §7.3.3 and later registrations), case-insensitive
//! comparison, and the small set of fields the proxy parses eagerly.
//!
//! It knows names only; values are parsed in `parse.rs` and `uri.rs`.

/// Header fields the parser types eagerly; everything else is [`Known::Other`] and passed through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Route,
    RecordRoute,
    Contact,
    ContentType,
    ContentLength,
    Other,
}

impl Known {
    pub(crate) fn of(name: &str) -> Known {
        let long = expand(name);
        const TABLE: [(&str, Known); 11] = [
            ("Via", Known::Via),
            ("From", Known::From),
            ("To", Known::To),
            ("Call-ID", Known::CallId),
            ("CSeq", Known::CSeq),
            ("Max-Forwards", Known::MaxForwards),
            ("Route", Known::Route),
            ("Record-Route", Known::RecordRoute),
            ("Contact", Known::Contact),
            ("Content-Type", Known::ContentType),
            ("Content-Length", Known::ContentLength),
        ];
        TABLE.iter().find(|(n, _)| n.eq_ignore_ascii_case(long)).map_or(Known::Other, |(_, k)| *k)
    }

    /// The long name, as used in error messages and in lines callveil writes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Known::Via => "Via",
            Known::From => "From",
            Known::To => "To",
            Known::CallId => "Call-ID",
            Known::CSeq => "CSeq",
            Known::MaxForwards => "Max-Forwards",
            Known::Route => "Route",
            Known::RecordRoute => "Record-Route",
            Known::Contact => "Contact",
            Known::ContentType => "Content-Type",
            Known::ContentLength => "Content-Length",
            Known::Other => "",
        }
    }
}

/// The long form of a compact header name; any other name is returned unchanged.
pub(crate) fn expand(name: &str) -> &str {
    let [c] = name.as_bytes() else { return name };
    match c.to_ascii_lowercase() {
        b'a' => "Accept-Contact",
        b'b' => "Referred-By",
        b'c' => "Content-Type",
        b'd' => "Request-Disposition",
        b'e' => "Content-Encoding",
        b'f' => "From",
        b'i' => "Call-ID",
        b'j' => "Reject-Contact",
        b'k' => "Supported",
        b'l' => "Content-Length",
        b'm' => "Contact",
        b'n' => "Identity-Info",
        b'o' => "Event",
        b'r' => "Refer-To",
        b's' => "Subject",
        b't' => "To",
        b'u' => "Allow-Events",
        b'v' => "Via",
        b'x' => "Session-Expires",
        b'y' => "Identity",
        _ => name,
    }
}

/// Whether two header names denote the same field (case-insensitive, compact = long).
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    expand(a).eq_ignore_ascii_case(expand(b))
}

/// RFC 3261 `token` characters.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case() {
        assert_eq!(Known::of("v"), Known::Via);
        assert_eq!(Known::of("I"), Known::CallId);
        assert_eq!(Known::of("cSeQ"), Known::CSeq);
        assert_eq!(Known::of("l"), Known::ContentLength);
        assert_eq!(Known::of("C%6Fntact"), Known::Other);
        assert!(same_name("k", "supported"));
        assert!(same_name("Subject", "S"));
        assert!(!same_name("q", "Q-Value"));
        assert!(is_token("!interesting-Method0123456789_*+`.%indeed'~"));
        assert!(!is_token("IN VITE"));
        assert!(!is_token(""));
    }
}
