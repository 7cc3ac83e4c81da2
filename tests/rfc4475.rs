//! RFC 4475 torture messages against the parser, one expectation per file, with the reason for
//! every decision the RFC leaves to the implementation.
//!
//! The messages are read from `../shared/testdata/rfc4475/` (or `$CALLVEIL_RFC4475_DIR`); they are
//! not copied into this repository. When the folder is absent the tests print a note and pass.

use std::path::PathBuf;

use callveil::cli::sip_check::check;
use callveil::sip::message::{error_response, parse, ParseError};

enum Expect {
    /// Parses; `sip-check` prints `ok <what>`.
    Ok(&'static str),
    /// Rejected with this error.
    Reject(ParseError),
}

use Expect::{Ok as Accept, Reject};

const fn bad(h: &'static str) -> ParseError {
    ParseError::BadHeader(h)
}

/// (file, section, expectation, why — for every case where the RFC leaves a choice).
const CASES: &[(&str, &str, Expect, &str)] = &[
    // §3.1.1: valid messages, all must parse.
    ("wsinv", "3.1.1.1", Accept("INVITE"), ""),
    ("intmeth", "3.1.1.2", Accept("!interesting-Method0123456789_*+`.%indeed'~"), ""),
    ("esc01", "3.1.1.3", Accept("INVITE"), ""),
    ("escnull", "3.1.1.4", Accept("REGISTER"), ""),
    ("esc02", "3.1.1.5", Accept("RE%47IST%45R"), ""),
    ("lwsdisp", "3.1.1.6", Accept("OPTIONS"), ""),
    ("longreq", "3.1.1.7", Accept("INVITE"), ""),
    ("dblreq", "3.1.1.8", Accept("REGISTER"), "UDP: bytes past Content-Length are ignored"),
    ("semiuri", "3.1.1.9", Accept("OPTIONS"), ""),
    ("transports", "3.1.1.10", Accept("OPTIONS"), ""),
    ("mpart01", "3.1.1.11", Accept("MESSAGE"), ""),
    ("unreason", "3.1.1.12", Accept("200"), ""),
    ("noreason", "3.1.1.13", Accept("100"), ""),
    // §3.1.2: invalid messages.
    ("badinv01", "3.1.2.1", Reject(bad("Via")), ""),
    ("clerr", "3.1.2.2", Reject(ParseError::BodyTruncated), ""),
    ("ncl", "3.1.2.3", Reject(ParseError::BadContentLength), ""),
    ("scalar02", "3.1.2.4", Reject(bad("CSeq")), ""),
    ("scalarlg", "3.1.2.5", Reject(bad("CSeq")), ""),
    ("quotbal", "3.1.2.6", Reject(bad("To")), ""),
    ("ltgtruri", "3.1.2.7", Reject(ParseError::BadRequestUri), ""),
    ("lwsruri", "3.1.2.8", Reject(ParseError::BadRequestUri), ""),
    (
        "lwsstart",
        "3.1.2.9",
        Reject(ParseError::BadRequestUri),
        "the RFC allows ignoring the extra SP but then forbids forwarding it; we forward the start \
         line as received unless the R-URI is rewritten, so we reject",
    ),
    (
        "trws",
        "3.1.2.10",
        Reject(ParseError::BadStartLine),
        "as lwsstart: accepting would mean re-printing the start line; rejecting is allowed",
    ),
    (
        "escruri",
        "3.1.2.11",
        Reject(ParseError::BadRequestUri),
        "a liberal proxy may drop the escaped headers, but must then strip them before forwarding; \
         rejecting with 400 is the RFC's first option",
    ),
    (
        "baddate",
        "3.1.2.12",
        Accept("INVITE"),
        "the RFC says an element should not reject this unless Date matters to its processing and \
         may ignore the value; a proxy does not read Date and forwards it untouched",
    ),
    ("regbadct", "3.1.2.13", Reject(bad("Contact")), "inferring the <> would mean re-printing Contact"),
    (
        "badaspec",
        "3.1.2.14",
        Reject(bad("To")),
        "ignoring the spaces is allowed, but the To would be forwarded with them; we reject",
    ),
    (
        "baddn",
        "3.1.2.15",
        Reject(ParseError::Unterminated),
        "the file has no empty line after the headers; the display-name fault is checked below with \
         one added. A proxy must not propagate inferred quotes, so it rejects",
    ),
    ("badvers", "3.1.2.16", Reject(ParseError::BadVersion), ""),
    ("mismatch01", "3.1.2.17", Reject(ParseError::CSeqMismatch), ""),
    ("mismatch02", "3.1.2.18", Reject(ParseError::CSeqMismatch), ""),
    ("bigcode", "3.1.2.19", Reject(ParseError::BadStatus), ""),
    // §3.2: transaction layer.
    (
        "badbranch",
        "3.2.1",
        Accept("OPTIONS"),
        "syntactically valid; a branch that is only the magic cookie is the transaction layer's \
         business (it falls back to RFC 2543 matching)",
    ),
    // §3.3: application layer. The parser rejects only what the proxy could not forward safely.
    ("insuf", "3.3.1", Reject(ParseError::MissingHeader("From")), "From, To and Call-ID are mandatory"),
    ("unkscm", "3.3.2", Reject(ParseError::UnsupportedScheme), "416: callveil routes sip, sips and tel only"),
    (
        "novelsc",
        "3.3.3",
        Reject(ParseError::UnsupportedScheme),
        "the RFC allows 416 from an element that never accepts the scheme in a Request-URI",
    ),
    (
        "unksm2",
        "3.3.4",
        Accept("REGISTER"),
        "valid syntax; a proxy treats it like any request, only a registrar would answer 400",
    ),
    ("bext01", "3.3.5", Accept("OPTIONS"), "Proxy-Require is answered with 420 by the proxy core, not the parser"),
    ("invut", "3.3.6", Accept("INVITE"), "an unknown Content-Type is the UAS's concern (415); a proxy forwards it"),
    ("regaut01", "3.3.7", Accept("REGISTER"), "authorization is opaque to the parser"),
    ("multi01", "3.3.8", Reject(ParseError::DuplicateHeader("CSeq")), "single-valued fields given twice: 400"),
    ("mcl01", "3.3.9", Reject(ParseError::BadContentLength), "two different Content-Lengths: no way to frame it"),
    (
        "bcast",
        "3.3.10",
        Accept("200"),
        "valid syntax; the broadcast address is in the second Via, which the proxy core must not \
         send to",
    ),
    ("zeromf", "3.3.11", Accept("OPTIONS"), "valid; the proxy core answers Max-Forwards: 0 with 483"),
    ("cparam01", "3.3.12", Accept("REGISTER"), "the parameter belongs to the header field (addr-spec form)"),
    ("cparam02", "3.3.13", Accept("REGISTER"), "the parameter belongs to the URI (name-addr form)"),
    ("regescrt", "3.3.14", Accept("REGISTER"), "escaped headers are legal inside <> in Contact"),
    ("sdp01", "3.3.15", Accept("INVITE"), "Accept is for the UAS (it answers 415); a proxy forwards it"),
    // §3.4: backward compatibility.
    (
        "inv2543",
        "3.4.1",
        Accept("INVITE"),
        "RFC 2543 syntax (no branch, no Max-Forwards, no Content-Length on UDP) is to be accepted",
    ),
    // Not from the RFC: an extra file in the folder (no SIP version, a line without colon).
    ("test", "-", Reject(ParseError::BadStartLine), ""),
];

fn dir() -> Option<PathBuf> {
    let d = std::env::var_os("CALLVEIL_RFC4475_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/rfc4475"));
    if d.is_dir() {
        Some(d)
    } else {
        println!("note: {} is absent; RFC 4475 conformance not checked", d.display());
        None
    }
}

fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(format!("{name}.dat"))).unwrap_or_else(|e| panic!("{name}.dat: {e}"))
}

#[test]
fn every_message_as_expected() {
    let Some(dir) = dir() else { return };
    let mut failures = Vec::new();
    for (name, section, expect, _why) in CASES {
        let bytes = read(&dir, name);
        let verdict = check(&bytes);
        let ok = match (expect, parse(&bytes)) {
            (Accept(what), Ok(_)) => verdict == format!("ok {what}"),
            (Reject(want), Err(got)) => &got == want && verdict.starts_with("reject "),
            _ => false,
        };
        if !ok {
            failures.push(format!("{name} (§{section}): got `{verdict}`"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_file_has_an_expectation() {
    let Some(dir) = dir() else { return };
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "dat") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(CASES.iter().any(|(n, ..)| *n == stem), "no expectation for {stem}.dat");
        }
    }
}

#[test]
fn baddn_display_names_are_rejected_on_their_own() {
    let Some(dir) = dir() else { return };
    let mut bytes = read(&dir, "baddn");
    bytes.extend_from_slice(b"\r\n");
    assert_eq!(parse(&bytes).unwrap_err(), ParseError::BadHeader("From"));
}

#[test]
fn wsinv_values() {
    let Some(dir) = dir() else { return };
    let m = parse(&read(&dir, "wsinv")).unwrap();
    assert_eq!(m.max_forwards(), Some(68));
    assert_eq!(m.cseq().seq, 9);
    assert_eq!(m.vias().len(), 3);
    assert_eq!(m.vias()[0].branch(), Some("390skdjuw"));
    assert_eq!(m.vias()[1].transport, "TCP");
    assert_eq!(m.vias()[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(m.to().tag(), Some("1918181833n"));
    assert_eq!(m.from().tag(), Some("98asjd8"));
    assert_eq!(m.from().display.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(m.contacts()[0].param("q"), Some(Some("0.33")));
    assert_eq!(m.contacts()[0].param("newparam"), Some(Some("newvalue")));
    assert!(m.routes()[0].uri.lr());
    assert_eq!(m.header("NewFangledHeader"), Some("newfangled value continued newfangled value"));
    assert_eq!(m.header("subject"), Some(""));
    assert_eq!(m.body().len(), 150);
    assert!(m.has_sdp());
    // Nothing touched: forwarded byte for byte.
    assert_eq!(m.rewrite().finish(), m.raw());
}

#[test]
fn escaped_values() {
    let Some(dir) = dir() else { return };
    let m = parse(&read(&dir, "esc01")).unwrap();
    assert_eq!(m.request_uri().unwrap().user.as_deref(), Some("sips:user@example.com"));
    assert_eq!(m.to().uri.user.as_deref(), Some("user"));
    assert!(m.contacts()[0].uri.lr(), "%6C%72 is lr");
    assert_eq!(m.contacts()[0].uri.param("name"), Some(Some("value%41")));
    let m = parse(&read(&dir, "esc02")).unwrap();
    assert_eq!(m.contacts().len(), 2, "C%6Fntact is not Contact");
    let m = parse(&read(&dir, "escnull")).unwrap();
    assert_eq!(m.contacts()[1].uri.user.as_deref(), Some("\0\0"));
    let m = parse(&read(&dir, "semiuri")).unwrap();
    assert_eq!(m.request_uri().unwrap().user.as_deref(), Some("user;par=u@example.net"));
    let m = parse(&read(&dir, "transports")).unwrap();
    let t: Vec<_> = m.vias().iter().map(|v| v.transport.as_str()).collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
}

#[test]
fn rejected_requests_get_the_right_answer() {
    let Some(dir) = dir() else { return };
    for (name, _, expect, _) in CASES {
        let Reject(err) = expect else { continue };
        let bytes = read(&dir, name);
        let reply = error_response(&bytes, err);
        let is_request = !bytes.starts_with(b"SIP/");
        // insuf lacks From/To/Call-ID and test.dat lacks Via: there is nothing to address a reply to.
        let unanswerable = matches!(err, ParseError::MissingHeader(_)) || *name == "test";
        if !is_request || unanswerable {
            assert_eq!(reply, None, "{name}");
            continue;
        }
        let reply = reply.unwrap_or_else(|| panic!("{name}: no response"));
        let head = format!("SIP/2.0 {} ", err.status());
        assert!(reply.starts_with(head.as_bytes()), "{name}: {}", String::from_utf8_lossy(&reply));
    }
}

#[test]
fn accepted_messages_survive_a_proxy_rewrite() {
    let Some(dir) = dir() else { return };
    for (name, _, expect, _) in CASES {
        let Accept(_) = expect else { continue };
        let m = parse(&read(&dir, name)).unwrap();
        let out = m
            .rewrite()
            .push_via("SIP/2.0/UDP 192.0.2.254:5060;branch=z9hG4bKcv1")
            .push_record_route("<sip:192.0.2.254:5060;lr>")
            .max_forwards(m.max_forwards().unwrap_or(70).saturating_sub(1))
            .finish();
        let again = parse(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again.vias().len(), m.vias().len() + 1, "{name}");
        assert_eq!(again.body(), m.body(), "{name}");
        assert_eq!(again.call_id(), m.call_id(), "{name}");
    }
}
