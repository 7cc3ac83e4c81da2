//! Why a message was rejected, as a typed error that maps onto a SIP status code.
//!
//! Every variant names the fault without echoing any header value: values carry phone numbers and
//! user names, and these errors end up in logs, metrics labels ([`ParseError::kind`]) and reason
//! phrases on the wire. This module does not decide whether a reply is sent; see
//! [`super::error_response`] for that.

/// A message that cannot be accepted, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The whole datagram or framed message is larger than `Limits::max_message`.
    #[error("Message too large")]
    TooLarge { limit: usize },
    /// The start line plus header fields exceed `Limits::max_header_bytes`.
    #[error("Header block too large")]
    HeadersTooLarge { limit: usize },
    /// More header fields than `Limits::max_headers`.
    #[error("Too many header fields")]
    TooManyHeaders { limit: usize },
    /// The body (by Content-Length, or what is there) exceeds `Limits::max_body`.
    #[error("Body too large")]
    BodyTooLarge { limit: usize },
    /// Nothing but line ends.
    #[error("Empty message")]
    Empty,
    /// The header block is not closed by an empty line.
    #[error("Unterminated header block")]
    Unterminated,
    /// Neither a Request-Line nor a Status-Line (also: extra or missing spaces in it).
    #[error("Malformed start line")]
    BadStartLine,
    /// A SIP version other than 2.0.
    #[error("Unsupported SIP version")]
    BadVersion,
    /// The Request-URI is malformed: whitespace, angle brackets, escaped headers, bad syntax.
    #[error("Malformed Request-URI")]
    BadRequestUri,
    /// The Request-URI is longer than [`super::MAX_REQUEST_URI`].
    #[error("Request-URI too long")]
    UriTooLong,
    /// The Request-URI scheme is neither sip, sips nor tel.
    #[error("Unsupported URI scheme")]
    UnsupportedScheme,
    /// A URI given to [`super::Uri::parse`] is malformed.
    #[error("Malformed URI")]
    BadUri,
    /// The status code of a response is not three digits in 100..=699.
    #[error("Malformed status code")]
    BadStatus,
    /// A header line without a colon, with a name that is not a token, or a continuation line
    /// where no header field precedes it.
    #[error("Malformed header line")]
    BadHeaderLine,
    /// A mandatory header field is absent.
    #[error("Missing {0}")]
    MissingHeader(&'static str),
    /// A header field the proxy needs has a value it cannot use.
    #[error("Bad {0}")]
    BadHeader(&'static str),
    /// A single-valued header field appears more than once.
    #[error("Duplicate {0}")]
    DuplicateHeader(&'static str),
    /// The CSeq method differs from the request method.
    #[error("CSeq method mismatch")]
    CSeqMismatch,
    /// Content-Length is not a number, negative, too long, or given twice with different values.
    #[error("Bad Content-Length")]
    BadContentLength,
    /// Content-Length promises more bytes than the message holds.
    #[error("Content-Length exceeds the body")]
    BodyTruncated,
}

impl ParseError {
    /// The status code to answer a request with (RFC 3261 §21).
    pub fn status(&self) -> u16 {
        match self {
            ParseError::TooLarge { .. } | ParseError::HeadersTooLarge { .. } | ParseError::TooManyHeaders { .. } => 513,
            ParseError::BodyTooLarge { .. } => 413,
            ParseError::UriTooLong => 414,
            ParseError::UnsupportedScheme => 416,
            ParseError::BadVersion => 505,
            ParseError::Empty
            | ParseError::Unterminated
            | ParseError::BadStartLine
            | ParseError::BadRequestUri
            | ParseError::BadUri
            | ParseError::BadStatus
            | ParseError::BadHeaderLine
            | ParseError::MissingHeader(_)
            | ParseError::BadHeader(_)
            | ParseError::DuplicateHeader(_)
            | ParseError::CSeqMismatch
            | ParseError::BadContentLength
            | ParseError::BodyTruncated => 400,
        }
    }

    /// A short snake_case label for metrics. The set is closed, so a hostile peer cannot grow it.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::TooLarge { .. } => "too_large",
            ParseError::HeadersTooLarge { .. } => "headers_too_large",
            ParseError::TooManyHeaders { .. } => "too_many_headers",
            ParseError::BodyTooLarge { .. } => "body_too_large",
            ParseError::Empty => "empty",
            ParseError::Unterminated => "unterminated",
            ParseError::BadStartLine => "bad_start_line",
            ParseError::BadVersion => "bad_version",
            ParseError::BadRequestUri => "bad_request_uri",
            ParseError::UriTooLong => "uri_too_long",
            ParseError::UnsupportedScheme => "unsupported_scheme",
            ParseError::BadUri => "bad_uri",
            ParseError::BadStatus => "bad_status",
            ParseError::BadHeaderLine => "bad_header_line",
            ParseError::MissingHeader(_) => "missing_header",
            ParseError::BadHeader(_) => "bad_header",
            ParseError::DuplicateHeader(_) => "duplicate_header",
            ParseError::CSeqMismatch => "cseq_mismatch",
            ParseError::BadContentLength => "bad_content_length",
            ParseError::BodyTruncated => "body_truncated",
        }
    }

    /// The standard reason phrase of [`ParseError::status`].
    pub(crate) fn status_phrase(&self) -> &'static str {
        match self.status() {
            413 => "Request Entity Too Large",
            414 => "Request-URI Too Long",
            416 => "Unsupported URI Scheme",
            505 => "Version Not Supported",
            513 => "Message Too Large",
            _ => "Bad Request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_labels() {
        assert_eq!(ParseError::MissingHeader("Call-ID").to_string(), "Missing Call-ID");
        assert_eq!(ParseError::BadHeader("Max-Forwards").to_string(), "Bad Max-Forwards");
        assert_eq!(ParseError::BadVersion.status(), 505);
        assert_eq!(ParseError::UnsupportedScheme.status(), 416);
        assert_eq!(ParseError::TooLarge { limit: 1 }.status(), 513);
        assert_eq!(ParseError::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(ParseError::CSeqMismatch.status(), 400);
        assert_eq!(ParseError::CSeqMismatch.kind(), "cseq_mismatch");
        assert_eq!(ParseError::UriTooLong.status_phrase(), "Request-URI Too Long");
    }
}
