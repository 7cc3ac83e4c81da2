//! The project's own SIP torture corpus (`testdata/sip/`): one expectation per file, checks of
//! what the parser extracts from the tricky ones, and a property test that mutates the corpus
//! (bit flips, truncation, insertion, deletion) and asserts that nothing panics and that every
//! accepted message still parses after the edits a proxy makes when forwarding.

use std::path::PathBuf;

use callveil::cli::sip_check::check;
use callveil::sip::message::framing::frame;
use callveil::sip::message::{error_response, parse, parse_with, Limits, Method, ParseError, Scheme};
use proptest::prelude::*;

enum Expect {
    Ok(&'static str),
    Reject(ParseError),
}
use Expect::{Ok as Accept, Reject};

const CASES: &[(&str, Expect)] = &[
    ("invite_sdp.sip", Accept("INVITE")),
    ("compact_forms.sip", Accept("INVITE")),
    ("folded_headers.sip", Accept("OPTIONS")),
    ("lf_only.sip", Accept("BYE")),
    ("ipv6_hosts.sip", Accept("INVITE")),
    ("tel_uri.sip", Accept("INVITE")),
    ("comma_via.sip", Accept("200")),
    ("unknown_method.sip", Accept("FOOBAR")),
    ("quoted_display.sip", Accept("MESSAGE")),
    ("header_vs_uri_params.sip", Accept("REGISTER")),
    ("nonutf8_unknown_header.sip", Accept("OPTIONS")),
    ("ws_before_colon.sip", Accept("OPTIONS")),
    ("response_180.sip", Accept("180")),
    ("contact_star.sip", Accept("REGISTER")),
    ("leading_crlf.sip", Accept("OPTIONS")),
    ("no_content_length_udp.sip", Accept("INVITE")),
    ("extra_bytes_after_body.sip", Accept("MESSAGE")),
    ("sips_uri.sip", Accept("OPTIONS")),
    ("missing_call_id.sip", Reject(ParseError::MissingHeader("Call-ID"))),
    ("missing_via.sip", Reject(ParseError::MissingHeader("Via"))),
    ("bad_cseq_method.sip", Reject(ParseError::CSeqMismatch)),
    ("bad_cseq_number.sip", Reject(ParseError::BadHeader("CSeq"))),
    ("big_content_length.sip", Reject(ParseError::BodyTooLarge { limit: 65535 })),
    ("cl_exceeds_body.sip", Reject(ParseError::BodyTruncated)),
    ("negative_cl.sip", Reject(ParseError::BadContentLength)),
    ("conflicting_cl.sip", Reject(ParseError::BadContentLength)),
    ("binary_garbage.sip", Reject(ParseError::BadStartLine)),
    ("sip_version_3.sip", Reject(ParseError::BadVersion)),
    ("ruri_spaces.sip", Reject(ParseError::BadRequestUri)),
    ("ruri_angle.sip", Reject(ParseError::BadRequestUri)),
    ("ruri_headers.sip", Reject(ParseError::BadRequestUri)),
    ("unsupported_scheme.sip", Reject(ParseError::UnsupportedScheme)),
    ("huge_max_forwards.sip", Reject(ParseError::BadHeader("Max-Forwards"))),
    ("duplicate_from.sip", Reject(ParseError::DuplicateHeader("From"))),
    ("to_two_values.sip", Reject(ParseError::BadHeader("To"))),
    ("bad_via_port.sip", Reject(ParseError::BadHeader("Via"))),
    ("unterminated.sip", Reject(ParseError::Unterminated)),
    ("nonutf8_from.sip", Reject(ParseError::BadHeader("From"))),
    ("status_code_99.sip", Reject(ParseError::BadStatus)),
    ("header_no_colon.sip", Reject(ParseError::BadHeaderLine)),
    ("folded_after_start_line.sip", Reject(ParseError::BadHeaderLine)),
    ("contact_star_mixed.sip", Reject(ParseError::BadHeader("Contact"))),
    ("too_many_headers.sip", Reject(ParseError::TooManyHeaders { limit: 256 })),
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/sip")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn corpus() -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(dir()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn every_file_as_expected() {
    let mut failures = Vec::new();
    for (name, expect) in CASES {
        let bytes = read(name);
        let verdict = check(&bytes);
        let ok = match (expect, parse(&bytes)) {
            (Accept(what), Ok(_)) => verdict == format!("ok {what}"),
            (Reject(want), Err(got)) => &got == want,
            _ => false,
        };
        if !ok {
            failures.push(format!("{name}: {verdict}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(CASES.len() >= 25);
}

#[test]
fn every_file_has_an_expectation() {
    for entry in std::fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(CASES.iter().any(|(n, _)| *n == name), "no expectation for {name}");
    }
}

#[test]
fn compact_folded_lf_ws() {
    let m = parse(&read("compact_forms.sip")).unwrap();
    assert_eq!(m.call_id(), "compact-forms-1@192.0.2.10");
    assert_eq!(m.header("Supported"), Some("timer"));
    assert_eq!(m.header("subject"), Some("compact subject"));
    assert_eq!(m.header("Event"), Some("presence"));
    assert!(m.has_sdp());
    assert_eq!(m.body().len(), m.header("content-length").unwrap().parse::<usize>().unwrap());

    let m = parse(&read("folded_headers.sip")).unwrap();
    assert_eq!(m.top_via().port, Some(5060));
    assert_eq!(m.top_via().branch(), Some("z9hG4bKfold1"));
    assert_eq!(m.from().display.as_deref(), Some("Folded Name"));
    assert_eq!(m.from().tag(), Some("f1"));
    assert_eq!(m.cseq().method, Method::Options);
    assert_eq!(m.header("x-folded"), Some("first part second part"));

    let m = parse(&read("lf_only.sip")).unwrap();
    assert_eq!(m.to().tag(), Some("lf2"));
    let out = m.rewrite().finish();
    assert!(out.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'), "forwarded with CRLF");

    let m = parse(&read("ws_before_colon.sip")).unwrap();
    assert_eq!(m.max_forwards(), Some(70));
    assert_eq!(m.cseq().seq, 9);
    assert_eq!(m.call_id(), "ws-1@192.0.2.10");
}

#[test]
fn addresses_and_uris() {
    let m = parse(&read("ipv6_hosts.sip")).unwrap();
    let ruri = m.request_uri().unwrap();
    assert_eq!(ruri.host, "[2001:db8::20]");
    assert_eq!(ruri.port, Some(5080));
    assert_eq!(ruri.host_ip(), Some("2001:db8::20".parse().unwrap()));
    assert_eq!(m.top_via().sent_by(), "[2001:db8::10]:5060");
    assert_eq!(m.top_via().received(), Some("2001:db8::99"));
    assert_eq!(m.top_via().rport(), Some(Some(5062)));
    assert_eq!(m.vias()[1].transport, "TCP");
    assert_eq!(m.contacts()[0].uri.port, Some(5060));

    let m = parse(&read("tel_uri.sip")).unwrap();
    let ruri = m.request_uri().unwrap();
    assert_eq!(ruri.scheme, Scheme::Tel);
    assert_eq!(ruri.user.as_deref(), Some("+34-91-000-0001"));
    assert_eq!(ruri.param("phone-context"), Some(Some("+34")));
    assert_eq!(m.from().uri.scheme, Scheme::Tel);

    let m = parse(&read("comma_via.sip")).unwrap();
    assert_eq!(m.status(), Some(200));
    let hosts: Vec<_> = m.vias().iter().map(|v| v.host.as_str()).collect();
    assert_eq!(hosts, ["192.0.2.30", "192.0.2.31", "192.0.2.10", "192.0.2.9"]);
    assert_eq!(m.record_routes().len(), 2);
    assert_eq!(m.record_routes()[1].uri.param("transport"), Some(Some("tcp")));
    // A proxy forwarding this response pops its own Via and keeps the rest of the line.
    let fwd = parse(&m.rewrite().pop_via().finish()).unwrap();
    let hosts: Vec<_> = fwd.vias().iter().map(|v| v.host.as_str()).collect();
    assert_eq!(hosts, ["192.0.2.31", "192.0.2.10", "192.0.2.9"]);
    assert_eq!(fwd.vias()[1].received(), Some("198.51.100.7"));

    let m = parse(&read("quoted_display.sip")).unwrap();
    assert_eq!(m.from().display.as_deref(), Some("Doe, Jane \"JD\" \\ Ops"));
    assert_eq!(m.to().display.as_deref(), Some("Agent Zoë 🎧"));

    let m = parse(&read("header_vs_uri_params.sip")).unwrap();
    let c = m.contacts();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].uri.param("transport"), Some(Some("tcp")));
    assert_eq!(c[0].uri.param("expires"), None);
    assert_eq!(c[0].param("expires"), Some(Some("600")));
    assert_eq!(c[1].param("expires"), Some(Some("60")), "addr-spec: params belong to the header");
    assert!(m.routes()[0].uri.lr());

    let m = parse(&read("contact_star.sip")).unwrap();
    assert!(m.contact_star());
    assert!(m.contacts().is_empty());
}

#[test]
fn bodies_and_passthrough() {
    let m = parse(&read("no_content_length_udp.sip")).unwrap();
    assert!(m.has_sdp());
    assert!(m.body().starts_with(b"v=0\r\n"));
    let out = m.rewrite().finish();
    assert_eq!(parse(&out).unwrap().header("Content-Length"), Some(m.body().len().to_string().as_str()));

    let raw = read("extra_bytes_after_body.sip");
    let m = parse(&raw).unwrap();
    assert_eq!(m.body(), b"hello");
    assert!(raw.starts_with(m.raw()) && raw.len() > m.raw().len());

    let raw = read("nonutf8_unknown_header.sip");
    let m = parse(&raw).unwrap();
    assert_eq!(m.header("x-legacy-charset"), Some("caf\u{fffd} \u{fffd}\u{fffd}"));
    assert_eq!(m.rewrite().finish(), raw, "bytes we do not own are forwarded untouched");

    let raw = read("leading_crlf.sip");
    let m = parse(&raw).unwrap();
    assert_eq!(m.raw(), &raw[4..]);
}

#[test]
fn error_responses_for_the_corpus() {
    const COPIED: [&str; 5] = ["Via", "From", "To", "Call-ID", "CSeq"];
    for (name, expect) in CASES {
        let Reject(err) = expect else { continue };
        let bytes = read(name);
        let reply = error_response(&bytes, err);
        // No reply without the fields to address it, for responses, for input that is not a
        // request, or when a field to copy is not text.
        let answerable = !matches!(err, ParseError::MissingHeader(_))
            && !matches!(
                *name,
                "binary_garbage.sip" | "status_code_99.sip" | "header_no_colon.sip" | "nonutf8_from.sip"
            );
        assert_eq!(reply.is_some(), answerable, "{name}");
        let Some(reply) = reply else { continue };
        let status_line = format!("SIP/2.0 {} ", err.status());
        assert!(reply.starts_with(status_line.as_bytes()), "{name}");
        match parse(&reply) {
            Ok(r) => assert!(r.to().tag().is_some(), "{name}"),
            // The faulty field is echoed as received: the client matches its transaction by it.
            Err(_) => assert!(
                matches!(err, ParseError::BadHeader(h) | ParseError::DuplicateHeader(h) if COPIED.contains(h)),
                "{name}: reply does not parse"
            ),
        }
    }
}

fn proxy_limits() -> Limits {
    // The forwarded copy grows (a Via, CRs for bare LFs); parse it with room for that.
    let d = Limits::default();
    Limits {
        max_message: d.max_message * 2,
        max_headers: d.max_headers + 4,
        max_header_bytes: d.max_header_bytes * 2,
        ..d
    }
}

/// Everything must hold for any input: no panic anywhere, and an accepted message re-parses
/// after the edits a proxy makes.
fn exercise(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = frame(bytes, 16384, 65535);
    let _ = check(bytes);
    match parse(bytes) {
        Ok(m) => {
            let _ = (m.header("x"), m.headers().count(), m.has_sdp(), m.top_via().sent_by());
            let out = m.rewrite().pop_via().push_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfuzz").finish();
            let again = parse_with(&out, &proxy_limits());
            prop_assert!(
                again.is_ok(),
                "forwarded copy rejected: {:?}\n{}",
                again.err(),
                String::from_utf8_lossy(&out)
            );
            let out = m
                .rewrite()
                .top_via_received("192.0.2.77", Some(5999))
                .pop_route()
                .push_record_route("<sip:192.0.2.1;lr>")
                .max_forwards(10)
                .request_uri("sip:x@192.0.2.2")
                .finish();
            let again = parse_with(&out, &proxy_limits());
            prop_assert!(again.is_ok(), "edited copy rejected: {:?}\n{}", again.err(), String::from_utf8_lossy(&out));
            if m.is_request() {
                let _ = callveil::sip::message::response(&m, 500, "Server Error", Some("t"), &[]);
            }
        }
        Err(e) => {
            let _ = error_response(bytes, &e);
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(vec![
        b"\r\n".to_vec(),
        b"\n".to_vec(),
        b"\r\n ".to_vec(),
        b",".to_vec(),
        b";".to_vec(),
        b"\"".to_vec(),
        b"<".to_vec(),
        b">".to_vec(),
        b":".to_vec(),
        b"%".to_vec(),
        b"[".to_vec(),
        b"]".to_vec(),
        b"\\".to_vec(),
        b"\xff".to_vec(),
        b"\xc3".to_vec(),
        b"\0".to_vec(),
        b" ".to_vec(),
        b"Via: SIP/2.0/UDP h;branch=z9hG4bKx\r\n".to_vec(),
        b"l: 99\r\n".to_vec(),
        b"99999999999".to_vec(),
        b";rport".to_vec(),
        b", SIP/2.0/TCP [::1]:5060".to_vec(),
    ]);
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, 1 << bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), interesting).prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
    match m {
        Mutation::Flip(i, bit) if len > 0 => bytes[i % len] ^= bit,
        Mutation::Set(i, b) if len > 0 => bytes[i % len] = *b,
        Mutation::Insert(i, s) => {
            let p = at(*i);
            bytes.splice(p..p, s.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let p = at(*i);
            bytes.drain(p..(p + n).min(len));
        }
        Mutation::Truncate(i) => bytes.truncate(at(*i)),
        Mutation::Duplicate(i, n) => {
            let p = at(*i);
            let piece = bytes[p..(p + n).min(len)].to_vec();
            bytes.splice(p..p, piece);
        }
        _ => {}
    }
}

#[test]
fn corpus_itself_is_safe() {
    for bytes in corpus() {
        exercise(&bytes).unwrap();
    }
    for (name, expect) in CASES {
        if let Accept(_) = expect {
            // An unedited rewrite is byte-exact, except that bare LFs become CRLF and a missing
            // Content-Length is added.
            let m = parse(&read(name)).unwrap();
            let out = m.rewrite().finish();
            let has_length = m.header("content-length").is_some();
            let bare_lf = m.raw().windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r');
            if has_length && !bare_lf {
                assert_eq!(out, m.raw(), "{name}");
            }
            let again = parse(&out).unwrap();
            assert_eq!(again.headers().count(), m.headers().count() + usize::from(!has_length), "{name}");
            assert_eq!(again.body(), m.body(), "{name}");
        }
    }
}

fn cases() -> u32 {
    std::env::var("CALLVEIL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_corpus_never_panics(pick in any::<prop::sample::Index>(), muts in prop::collection::vec(mutation(), 1..6)) {
        let corpus = corpus_cached();
        let mut bytes = pick.get(corpus).clone();
        for m in &muts {
            apply(&mut bytes, m);
        }
        exercise(&bytes)?;
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes)?;
    }
}

fn corpus_cached() -> &'static Vec<Vec<u8>> {
    static CORPUS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(corpus)
}
