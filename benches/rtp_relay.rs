//! The relay core's per-packet cost: the forwarding decision for plain RTP (latched, steady
//! 50-pps streams spread over many sessions), with the recording tap open, with secure entry on
//! (DTMF suppression), and SRTP → plain. No
//! sockets: this is the CPU the core adds on top of the kernel's send/receive.
#![allow(clippy::disallowed_methods)] // benches start virtual time from one real instant

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callveil::media::relay::{RelayConfig, RelayCore, Remote, Sock, StreamSetup, Verdict};
use callveil::media::rtp::classify;
use callveil::media::srtp::{Session, SrtpKey};
use callveil::media::tap::LegTap;
use callveil::metrics::MediaMetrics;
use callveil::sip::sdp::Leg;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const STREAMS: usize = 2000;

fn packet(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xd5; 160]); // 172 bytes in all
    p
}

fn core_with_streams(srtp: Option<SrtpKey>) -> (RelayCore, Vec<SocketAddr>, Instant) {
    let t0 = Instant::now();
    let cfg = RelayConfig { flood_pps: 1_000_000, flood_burst: 1_000_000, ..RelayConfig::default() };
    let mut core = RelayCore::new(cfg, MediaMetrics::default());
    let mut srcs = Vec::new();
    for i in 0..STREAMS {
        let a: SocketAddr = format!("10.0.{}.{}:{}", i / 250, i % 250 + 1, 4000 + 2 * (i % 1000)).parse().unwrap();
        let b: SocketAddr = format!("10.1.{}.{}:5000", i / 250, i % 250 + 1).parse().unwrap();
        let remote =
            [Remote { rtp: Some(a), srtp_rx: srtp, ..Remote::default() }, Remote { rtp: Some(b), ..Remote::default() }];
        core.add_stream(t0, StreamSetup { call: i as u64, remote, clock_rate: 8000 });
        srcs.push(a);
    }
    (core, srcs, t0)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("rtp_relay");
    g.throughput(Throughput::Elements(1));

    let p = packet(1, 7);
    g.bench_function("classify_172B", |b| b.iter(|| black_box(classify(black_box(&p)))));

    let (mut core, srcs, t0) = core_with_streams(None);
    let pkts: Vec<Vec<u8>> = (0..64u16).map(|s| packet(s, 7)).collect();
    let mut i = 0usize;
    let mut now = t0;
    g.bench_function("forward_plain_2000_streams", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let stream = i % STREAMS;
            if stream == 0 {
                now += Duration::from_millis(20);
            }
            let sock = Sock { stream, leg: Leg::Caller, rtcp: false };
            black_box(core.handle_packet(now, sock, srcs[stream], &pkts[(i / STREAMS) % 64]))
        })
    });

    let (tx, rx) = std::sync::mpsc::sync_channel(1 << 16);
    for s in 0..STREAMS {
        core.set_tap(s, Leg::Caller, Some(LegTap::new(s as u64, 0, Leg::Caller, None, tx.clone())));
    }
    let drain = std::thread::spawn(move || while rx.recv().is_ok() {});
    let mut seq = 0u16;
    g.bench_function("forward_plain_tap_open", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let stream = i % STREAMS;
            if stream == 0 {
                now += Duration::from_millis(20);
                seq = seq.wrapping_add(1);
            }
            let p = packet(seq, stream as u32);
            let sock = Sock { stream, leg: Leg::Caller, rtcp: false };
            black_box(core.handle_packet(now, sock, srcs[stream], &p))
        })
    });
    drop(core);
    drop(tx);
    let _ = drain.join();

    // secure entry on every stream: decode + in-band tone test per packet (speech-like payload,
    // so packets pass unchanged, the common case)
    let (mut core, srcs, _) = core_with_streams(None);
    for s in 0..STREAMS {
        core.set_secure(s, true);
    }
    let voice: Vec<Vec<u8>> = (0..64u16)
        .map(|k| {
            let mut p = packet(k, 7);
            for (j, b) in p[12..].iter_mut().enumerate() {
                *b = (j as u32 * 37 + u32::from(k) * 11) as u8 | 0x40;
            }
            p
        })
        .collect();
    g.bench_function("forward_plain_secure_entry", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let stream = i % STREAMS;
            if stream == 0 {
                now += Duration::from_millis(20);
            }
            let sock = Sock { stream, leg: Leg::Caller, rtcp: false };
            black_box(core.handle_packet(now, sock, srcs[stream], &voice[(i / STREAMS) % 64]))
        })
    });
    drop(core);

    let key = SrtpKey::generate(false);
    let (mut core, srcs, t0) = core_with_streams(Some(key));
    let mut sealer = Session::new(key).unwrap();
    // one sealed packet per (stream, seq) is needed because of replay protection: pre-seal a
    // window for stream 0 and replay it as fresh sequence numbers by rebuilding the stream
    let sealed: Vec<Vec<u8>> = (1..=4096u16)
        .map(|s| {
            let mut out = Vec::new();
            sealer.protect(false, &packet(s, 9), &mut out).unwrap();
            out
        })
        .collect();
    let mut now = t0;
    let first = core.handle_packet(now, Sock { stream: 0, leg: Leg::Caller, rtcp: false }, srcs[0], &sealed[0]);
    assert!(matches!(first, Verdict::ForwardRewritten { .. }), "{first:?}");
    let mut k = 1usize;
    let mut forwarded = 0u64;
    let mut total = 0u64;
    g.bench_function("srtp_to_plain", |b| {
        b.iter(|| {
            if k == sealed.len() {
                k = 0;
                core.update_stream(
                    t0,
                    0,
                    StreamSetup {
                        call: 0,
                        remote: [Remote { rtp: Some(srcs[0]), ..Remote::default() }, Remote::default()],
                        clock_rate: 8000,
                    },
                );
                core.update_stream(
                    t0,
                    0,
                    StreamSetup {
                        call: 0,
                        remote: [
                            Remote { rtp: Some(srcs[0]), srtp_rx: Some(key), ..Remote::default() },
                            Remote { rtp: Some("10.9.9.9:5000".parse().unwrap()), ..Remote::default() },
                        ],
                        clock_rate: 8000,
                    },
                );
            }
            now += Duration::from_micros(20);
            let sock = Sock { stream: 0, leg: Leg::Caller, rtcp: false };
            let v = core.handle_packet(now, sock, srcs[0], &sealed[k]);
            k += 1;
            total += 1;
            forwarded += u64::from(matches!(v, Verdict::ForwardRewritten { .. }));
            black_box(v)
        })
    });
    assert_eq!(forwarded, total, "every sealed packet was opened, none dropped");
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
