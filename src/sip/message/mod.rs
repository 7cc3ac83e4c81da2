//! SIP messages (RFC 3261 §7, §20, §25): parse a datagram or framed message, read the header
//! fields a proxy needs, edit a message for forwarding, and build the few messages callveil
//! originates (responses, CANCEL, ACK).
//!
//! Why our own parser: a proxy must forward every header field it does not own byte for byte, and
//! must reject a bad request at parse time with the right status. The crates we measured either
//! miss too much of the grammar (rsip: compact forms, folding, `tel:`, comma-joined Via) or
//! re-print the whole message from a typed model (ezk-sip-types), which rewrites headers that
//! belong to the endpoints. So [`Message`] keeps the received bytes and the span of every header
//! line, parses eagerly only Via, From, To, Call-ID, CSeq, Max-Forwards, Route, Record-Route,
//! Contact, Content-Type and Content-Length, and [`Rewrite`] splices edits into the original
//! bytes, copying everything it does not touch.
//!
//! It does no I/O, keeps no state between messages, and never logs. Stream framing for TCP lives
//! in [`framing`]; transaction matching and proxy decisions live above this module.

mod build;
mod error;
pub mod framing;
mod headers;
mod parse;
mod rewrite;
mod uri;

use std::fmt;
use std::ops::Range;

pub use build::{ack_for, cancel_for, error_response, response};
pub use error::ParseError;
pub use rewrite::Rewrite;
pub use uri::{NameAddr, Params, Scheme, Uri, Via};

use headers::Known;

/// A Request-URI longer than this is answered with 414.
pub const MAX_REQUEST_URI: usize = 4096;

/// Size bounds applied while parsing; a hostile peer cannot make the parser do more work or keep
/// more memory than these allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole message, bytes.
    pub max_message: usize,
    /// Number of header fields (lines, continuation lines not counted).
    pub max_headers: usize,
    /// Start line plus header block, bytes.
    pub max_header_bytes: usize,
    /// Body, bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message: 65535, max_headers: 256, max_header_bytes: 16384, max_body: 65535 }
    }
}

/// Parses one message with [`Limits::default`].
pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    parse_with(bytes, &Limits::default())
}

/// Parses one message (a UDP datagram or one framed TCP message).
///
/// Leading line ends are skipped. Without Content-Length the body is the rest of the bytes (UDP);
/// a Content-Length larger than what is there is an error; bytes beyond it are ignored
/// (RFC 3261 §18.3) and are not part of [`Message::raw`].
pub fn parse_with(bytes: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    parse::parse(bytes, limits)
}

/// A request method. Methods are case-sensitive tokens: `invite` is an extension method.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }

    /// `None` when `s` is not a token.
    pub fn from_token(s: &str) -> Option<Method> {
        Some(match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other if headers::is_token(other) => Method::Other(other.to_owned()),
            _ => return None,
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

#[derive(Clone, Debug)]
enum Start {
    Request { method: Method, uri: Uri },
    Response { status: u16, reason: String },
}

/// A header value: a span of `raw` when it is one valid UTF-8 line, otherwise an owned copy
/// (unfolded, or made valid UTF-8 with replacement characters).
#[derive(Clone, Debug)]
enum Value {
    Span(Range<usize>),
    Owned(Box<str>),
}

#[derive(Clone, Debug)]
struct Header {
    /// The whole field, from the name to past the line end of its last continuation line.
    line: Range<usize>,
    name: Range<usize>,
    value: Value,
    kind: Known,
    /// For Via and Route: the values of this line in `Message::vias` / `Message::routes`.
    elems: Range<usize>,
    /// Continuation lines follow the first line.
    folded: bool,
}

/// A parsed message. It owns a copy of its bytes; every accessor borrows from it.
#[derive(Clone)]
pub struct Message {
    raw: Vec<u8>,
    start: Start,
    /// Start line without its line end.
    start_line: Range<usize>,
    headers: Vec<Header>,
    body: Range<usize>,
    /// Some header line ends with a bare LF; [`Rewrite`] then normalises line ends to CRLF.
    bare_lf: bool,
    vias: Vec<Via>,
    from: NameAddr,
    to: NameAddr,
    call_id: String,
    cseq: CSeq,
    max_forwards: Option<u32>,
    routes: Vec<NameAddr>,
    record_routes: Vec<NameAddr>,
    contacts: Vec<NameAddr>,
    contact_star: bool,
    content_type: Option<String>,
}

impl Message {
    /// The message bytes: start line to end of body (leading line ends and bytes past
    /// Content-Length excluded).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, Start::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            Start::Request { method, .. } => Some(method),
            Start::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&Uri> {
        match &self.start {
            Start::Request { uri, .. } => Some(uri),
            Start::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            Start::Response { status, .. } => Some(*status),
            Start::Request { .. } => None,
        }
    }

    /// The reason phrase of a response (invalid UTF-8 replaced).
    pub fn reason(&self) -> Option<&str> {
        match &self.start {
            Start::Response { reason, .. } => Some(reason),
            Start::Request { .. } => None,
        }
    }

    /// Every Via value in order, comma-joined values split. Never empty.
    pub fn vias(&self) -> &[Via] {
        &self.vias
    }

    pub fn top_via(&self) -> &Via {
        // The parser rejects a message without Via, so the list is never empty; the fallback
        // keeps this accessor panic-free all the same.
        self.vias.first().unwrap_or_else(|| unreachable_via())
    }

    pub fn from(&self) -> &NameAddr {
        &self.from
    }

    pub fn to(&self) -> &NameAddr {
        &self.to
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn cseq(&self) -> &CSeq {
        &self.cseq
    }

    pub fn max_forwards(&self) -> Option<u32> {
        self.max_forwards
    }

    pub fn routes(&self) -> &[NameAddr] {
        &self.routes
    }

    pub fn record_routes(&self) -> &[NameAddr] {
        &self.record_routes
    }

    /// Contact values; empty for `Contact: *` (see [`Message::contact_star`]).
    pub fn contacts(&self) -> &[NameAddr] {
        &self.contacts
    }

    pub fn contact_star(&self) -> bool {
        self.contact_star
    }

    /// Trimmed Content-Type value, parameters included (`application/sdp`).
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    pub fn body(&self) -> &[u8] {
        self.raw.get(self.body.clone()).unwrap_or_default()
    }

    /// The first header field called `name` (case-insensitive; compact forms equal long forms),
    /// trimmed and unfolded. Bytes that are not UTF-8 come back as U+FFFD.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers().find(|(n, _)| headers::same_name(n, name)).map(|(_, v)| v)
    }

    /// `(name as written, value)` for every header field, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|h| (self.header_name(h), self.header_value(h)))
    }

    /// A non-empty body whose Content-Type is `application/sdp` (parameters ignored).
    pub fn has_sdp(&self) -> bool {
        !self.body.is_empty()
            && self.content_type().is_some_and(|ct| {
                ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
            })
    }

    /// Starts an edit of this message for forwarding.
    pub fn rewrite(&self) -> Rewrite<'_> {
        Rewrite::new(self)
    }

    fn header_name(&self, h: &Header) -> &str {
        // Names were checked to be tokens (ASCII) during parsing.
        self.raw.get(h.name.clone()).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }

    fn header_value<'s>(&'s self, h: &'s Header) -> &'s str {
        match &h.value {
            Value::Span(r) => self.raw.get(r.clone()).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default(),
            Value::Owned(s) => s,
        }
    }
}

impl fmt::Debug for Message {
    /// Shows the shape of the message only: its bytes and most values carry personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Message");
        match &self.start {
            Start::Request { method, .. } => d.field("method", method),
            Start::Response { status, .. } => d.field("status", status),
        };
        d.field("headers", &self.headers.len()).field("body_len", &self.body.len()).finish_non_exhaustive()
    }
}

#[cold]
fn unreachable_via() -> &'static Via {
    static EMPTY: std::sync::OnceLock<Via> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Via {
        transport: String::new(),
        host: String::new(),
        port: None,
        params: Vec::new(),
        raw: String::new(),
    })
}
