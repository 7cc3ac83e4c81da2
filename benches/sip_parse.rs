//! Parse cost of a typical carrier INVITE with SDP, and parse + the edits a proxy makes when it
//! forwards one (and the 180 coming back). Criterion; run with `cargo bench --bench sip_parse`.

use std::hint::black_box;

use callveil::sip::message::parse;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const INVITE: &[u8] = include_bytes!("../testdata/sip/invite_sdp.sip");
const RINGING: &[u8] = include_bytes!("../testdata/sip/response_180.sip");

fn forward_invite(bytes: &[u8]) -> Vec<u8> {
    let m = parse(bytes).expect("bench INVITE parses");
    let hops = m.max_forwards().unwrap_or(70).saturating_sub(1);
    m.rewrite()
        .top_via_received("198.51.100.7", Some(5070))
        .push_via("SIP/2.0/UDP 192.0.2.30:5060;branch=z9hG4bKcv4c1f0a2b")
        .push_record_route("<sip:192.0.2.30:5060;lr>")
        .max_forwards(hops)
        .request_uri("sip:+34910000001@192.0.2.20:5060")
        .finish()
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Bytes(INVITE.len() as u64));
    g.bench_function("parse_invite_sdp", |b| b.iter(|| parse(black_box(INVITE)).expect("parses")));
    g.bench_function("parse_rewrite_invite_sdp", |b| b.iter(|| forward_invite(black_box(INVITE))));
    g.bench_function("parse_rewrite_invite_new_sdp", |b| {
        b.iter(|| {
            let m = parse(black_box(INVITE)).expect("parses");
            let sdp = m.body().to_vec();
            m.rewrite().push_via("SIP/2.0/UDP 192.0.2.30:5060;branch=z9hG4bKcv4c1f0a2b").body(None, &sdp).finish()
        })
    });
    g.throughput(Throughput::Bytes(RINGING.len() as u64));
    g.bench_function("parse_pop_via_180", |b| {
        b.iter(|| parse(black_box(RINGING)).expect("parses").rewrite().pop_via().finish())
    });
    g.finish();
}

criterion_group!(sip, benches);
criterion_main!(sip);
