//! Load generator for `benches/rtp_compare.sh`: sets up N one-way G.711 streams through a relay
//! (callveil over SIP, or rtpengine over its ng control protocol), sends 50 packets/s of 172
//! bytes on each, and prints per step: offered and received packets, loss, the relay's CPU time
//! (from /proc), packets per CPU-second, and one-way latency percentiles.
//!
//! Latency is measured against a direct path *at the same moment*: every 8th packet is also sent
//! straight from the sending socket to the receiving socket (stamped afresh just before its own
//! send), and the one receiver thread tells the two apart by source address. Both kinds share
//! the sender, the receiver, its socket and its CPU, so what differs is the relay. `added_*` are
//! percentiles of the per-packet difference (relay copy minus its direct twin); `p*` and
//! `direct_p*` are the two paths' own distributions. Earlier versions ran the direct baseline as
//! a separate run afterwards, which on a shared machine compared two different moments' noise,
//! and subtracted percentiles of those two runs.
//!
//! The machine's noise is printed next to the numbers: how busy the relay's CPU was with other
//! processes (`/proc/stat` for `RELAY_CPU` minus the relay's own time), the relay's involuntary
//! context switches (`/proc/PID/task/*/status`: each one is the relay being preempted, i.e.
//! runnable but not running), and the 1-minute load average.
//!
//! Usage: rtp_loadgen MODE PID STEPS SECS [ADDR [UAS_ADDR]]
//!   MODE callveil: ADDR = callveil's SIP UDP address, UAS_ADDR = the upstream it routes to
//!   MODE rtpengine: ADDR = the ng control address
//!   MODE direct: PID 0 (only the direct path; a sanity check of the generator itself)
//!   MODE noise: PID 0, STEPS 0: spins for SECS on the CPU it runs on (pin it with taskset) and
//!     prints how often and for how long it was kept from running (`noise_gaps_over_50us=..
//!     noise_gaps_over_1ms=.. noise_max_gap_us=.. noise_lost_pct=..`). Nothing else running, a
//!     gap is the CPU taken away: interrupts, kernel threads, or on a VM the host descheduling
//!     the virtual CPU. Any packet in flight then waits as long, whatever relays it.
//!   STEPS: comma-separated stream counts, e.g. 500,1000,2000
//!   env RELAY_CPU: the CPU the relay is pinned to (for the noise figures), default 1
//! Output: one line per step, `streams=.. offered_pps=.. recv=.. sent=.. loss_pct=.. cpu_pct=..
//! pps_per_cpu_s=.. p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=.. direct_p50_us=..
//! direct_p90_us=.. direct_p99_us=.. direct_p999_us=.. direct_max_us=.. direct_n=.. added_p50_us=..
//! added_p90_us=.. added_p99_us=.. added_p999_us=.. added_n=.. relay_cpu_other_pct=..
//! relay_preempted=.. loadavg=..`.
#![allow(clippy::disallowed_methods)] // a load generator runs on real time

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PPS_PER_STREAM: u64 = 50;

fn usage() -> ! {
    eprintln!("usage: rtp_loadgen callveil|rtpengine|direct|noise PID STEPS SECS [ADDR [UAS_ADDR]]");
    std::process::exit(64)
}

fn sdp(port: u16) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
}

fn m_port(text: &str) -> Option<u16> {
    let line = text.lines().find(|l| l.starts_with("m=audio "))?;
    line.split(' ').nth(1)?.parse().ok()
}

fn recv_text(sock: &UdpSocket, buf: &mut [u8]) -> Option<String> {
    let (n, _) = sock.recv_from(buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One call through callveil: INVITE from `uac`, answered by `uas`; returns the caller-facing port.
fn callveil_call(
    i: usize,
    sip: SocketAddr,
    uac: &UdpSocket,
    uas: &UdpSocket,
    tx_port: u16,
    rx_port: u16,
) -> Option<u16> {
    let mut buf = vec![0u8; 65536];
    let uac_addr = uac.local_addr().ok()?;
    let body = sdp(tx_port);
    let invite = format!(
        "INVITE sip:bench@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {uac_addr};branch=z9hG4bK-lg{i};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:load@{uac_addr}>;tag=lg{i}\r\nTo: <sip:bench@{sip}>\r\nCall-ID: lg-{i}@bench\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:load@{uac_addr}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    uac.send_to(invite.as_bytes(), sip).ok()?;
    // the forwarded INVITE at the "PBX"
    let (n, from) = loop {
        let (n, from) = uas.recv_from(&mut buf).ok()?;
        if buf[..n].starts_with(b"INVITE") {
            break (n, from);
        }
    };
    let req = String::from_utf8_lossy(&buf[..n]).into_owned();
    let mut resp = String::from("SIP/2.0 200 OK\r\n");
    for l in req.lines() {
        let lower = l.to_ascii_lowercase();
        if ["via:", "from:", "call-id:", "cseq:", "record-route:"].iter().any(|h| lower.starts_with(h)) {
            resp.push_str(l);
            resp.push_str("\r\n");
        } else if lower.starts_with("to:") {
            resp.push_str(&format!("{l};tag=pbx{i}\r\n"));
        }
    }
    let body = sdp(rx_port);
    let uas_addr = uas.local_addr().ok()?;
    resp.push_str(&format!(
        "Contact: <sip:pbx@{uas_addr}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    uas.send_to(resp.as_bytes(), from).ok()?;
    loop {
        let text = recv_text(uac, &mut buf)?;
        if text.starts_with("SIP/2.0 200") {
            return m_port(&text);
        }
    }
}

fn bencode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(format!("{}:", s.len()).as_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The `sdp` value of an ng reply (`<cookie> d...3:sdp<len>:<sdp>...e`).
fn ng_sdp(reply: &[u8]) -> Option<String> {
    let at = reply.windows(5).position(|w| w == b"3:sdp")? + 5;
    let rest = &reply[at..];
    let colon = rest.iter().position(|b| *b == b':')?;
    let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    Some(String::from_utf8_lossy(rest.get(colon + 1..colon + 1 + len)?).into_owned())
}

fn ng(sock: &UdpSocket, to: SocketAddr, cookie: &str, fields: &[(&str, &str)]) -> Option<String> {
    let mut msg = format!("{cookie} d").into_bytes();
    for (k, v) in fields {
        bencode_str(&mut msg, k);
        bencode_str(&mut msg, v);
    }
    msg.push(b'e');
    sock.send_to(&msg, to).ok()?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if buf[..n].starts_with(cookie.as_bytes()) {
            return ng_sdp(&buf[..n]);
        }
    }
}

fn rtpengine_call(i: usize, ng_addr: SocketAddr, ctl: &UdpSocket, tx_port: u16, rx_port: u16) -> Option<u16> {
    let call_id = format!("lg-{i}@bench");
    let offer = sdp(tx_port);
    ng(
        ctl,
        ng_addr,
        &format!("o{i}"),
        &[("command", "offer"), ("call-id", &call_id), ("from-tag", "a"), ("sdp", &offer)],
    )?;
    let answer = sdp(rx_port);
    let out = ng(
        ctl,
        ng_addr,
        &format!("a{i}"),
        &[("command", "answer"), ("call-id", &call_id), ("from-tag", "a"), ("to-tag", "b"), ("sdp", &answer)],
    )?;
    m_port(&out)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// (busy, total) jiffies of one CPU from /proc/stat.
fn cpu_jiffies(cpu: usize) -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&name)) else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait are not busy
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Involuntary context switches of all threads of a process: times it was preempted.
fn preemptions(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:").and_then(|v| v.trim().parse::<u64>().ok()))
        })
        .sum()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split(' ').next().map(str::to_string))
        .unwrap_or_default()
}

/// Every `DIRECT_EVERY`th packet also goes straight to the receiver: the simultaneous baseline.
const DIRECT_EVERY: u64 = 8;

/// Spins for `secs` reading the clock; every jump between two reads over 50 µs is time this
/// thread was kept from its CPU.
fn noise(secs: u64) {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut last = start;
    let mut gaps: Vec<u64> = Vec::new();
    loop {
        let now = Instant::now();
        let gap = now.duration_since(last).as_nanos() as u64;
        if gap > 50_000 {
            gaps.push(gap);
        }
        last = now;
        if now >= end {
            break;
        }
    }
    let lost: u64 = gaps.iter().sum();
    println!(
        "noise_secs={secs} noise_gaps_over_50us={} noise_gaps_over_1ms={} noise_max_gap_us={:.0} noise_lost_pct={:.2}",
        gaps.len(),
        gaps.iter().filter(|g| **g > 1_000_000).count(),
        gaps.iter().max().copied().unwrap_or(0) as f64 / 1000.0,
        100.0 * lost as f64 / start.elapsed().as_nanos() as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        usage();
    }
    let mode = args[1].as_str();
    if mode == "noise" {
        noise(args[4].parse().unwrap_or_else(|_| usage()));
        return;
    }
    let pid: u32 = args[2].parse().unwrap_or_else(|_| usage());
    let steps: Vec<usize> = args[3].split(',').map(|s| s.parse().unwrap_or_else(|_| usage())).collect();
    let secs: u64 = args[4].parse().unwrap_or_else(|_| usage());
    let relay_cpu: usize = std::env::var("RELAY_CPU").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let max = steps.iter().copied().max().unwrap_or(0);

    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = rx.set_recv_buffer_size(16 << 20);
    let _ = tx.set_nonblocking(false);
    rx.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    let rx: UdpSocket = rx.into();
    rx.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let tx_addr = tx.local_addr().unwrap();
    let tx_port = tx_addr.port();
    let rx_addr = rx.local_addr().unwrap();

    let setup_started = Instant::now();
    let direct_only = mode == "direct";
    let targets: Vec<SocketAddr> = match mode {
        "direct" => vec![rx_addr; max],
        "callveil" => {
            let sip: SocketAddr = args.get(5).unwrap_or_else(|| usage()).parse().unwrap();
            let uas = UdpSocket::bind(args.get(6).unwrap_or_else(|| usage()).as_str()).unwrap();
            let uac = UdpSocket::bind("127.0.0.1:0").unwrap();
            for s in [&uas, &uac] {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            }
            (0..max)
                .map(|i| {
                    let port = callveil_call(i, sip, &uac, &uas, tx_port, rx_addr.port()).expect("call set up");
                    SocketAddr::new(sip.ip(), port)
                })
                .collect()
        }
        "rtpengine" => {
            let ng_addr: SocketAddr = args.get(5).unwrap_or_else(|| usage()).parse().unwrap();
            let ctl = UdpSocket::bind("127.0.0.1:0").unwrap();
            ctl.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            (0..max)
                .map(|i| {
                    let port = rtpengine_call(i, ng_addr, &ctl, tx_port, rx_addr.port()).expect("ng offer/answer");
                    SocketAddr::new(ng_addr.ip(), port)
                })
                .collect()
        }
        _ => usage(),
    };
    eprintln!("{mode}: {max} streams set up in {:?}", setup_started.elapsed());

    let epoch = Instant::now();
    let rx = Arc::new(rx);
    for &n in &steps {
        let done = Arc::new(AtomicBool::new(false));
        let receiver = {
            let rx = rx.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                // latencies in ns: through the relay, and the direct copies
                let mut relayed: Vec<u32> = Vec::with_capacity(1 << 20);
                let mut direct: Vec<u32> = Vec::with_capacity(1 << 18);
                // per packet sent both ways: relay latency minus its direct twin's, in ns
                let mut added: Vec<i64> = Vec::with_capacity(1 << 18);
                let mut twins: HashMap<(u32, u16), u32> = HashMap::new();
                let mut buf = [0u8; 2048];
                let mut got = 0u64;
                loop {
                    match rx.recv_from(&mut buf) {
                        Ok((len, from)) if len >= 21 => {
                            let now = epoch.elapsed().as_nanos() as u64;
                            let sent = u64::from_be_bytes(buf[12..20].try_into().unwrap());
                            let lat = now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
                            let via_direct = from == tx_addr && !direct_only;
                            if via_direct {
                                direct.push(lat);
                            } else {
                                got += 1;
                                relayed.push(lat);
                            }
                            if buf[20] == 1 {
                                let key = (
                                    u32::from_be_bytes(buf[8..12].try_into().unwrap()),
                                    u16::from_be_bytes([buf[2], buf[3]]),
                                );
                                if let Some(other) = twins.remove(&key) {
                                    let (r, d) = if via_direct { (other, lat) } else { (lat, other) };
                                    added.push(i64::from(r) - i64::from(d));
                                } else {
                                    twins.insert(key, lat);
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) if done.load(Ordering::Relaxed) => break,
                        Err(_) => {}
                    }
                }
                (got, relayed, direct, added)
            })
        };
        let pps = n as u64 * PPS_PER_STREAM;
        let total = pps * secs;
        let gap = Duration::from_nanos(1_000_000_000 / pps);
        let mut seq = vec![0u16; n];
        let mut pkt = [0u8; 172];
        pkt[0] = 0x80;
        let cpu0 = cpu_seconds(pid);
        let (busy0, total0) = cpu_jiffies(relay_cpu);
        let pre0 = preemptions(pid);
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let due = start + gap * (sent as u32);
            let now = Instant::now();
            if due > now + Duration::from_micros(200) {
                std::thread::sleep(due - now);
            }
            let i = (sent % n as u64) as usize;
            seq[i] = seq[i].wrapping_add(1);
            pkt[2..4].copy_from_slice(&seq[i].to_be_bytes());
            pkt[4..8].copy_from_slice(&(u32::from(seq[i]) * 160).to_be_bytes());
            pkt[8..12].copy_from_slice(&(i as u32).to_be_bytes());
            let twin = !direct_only && sent.is_multiple_of(DIRECT_EVERY);
            pkt[20] = u8::from(twin);
            pkt[12..20].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
            let _ = tx.send_to(&pkt, targets[i]);
            if twin {
                // the same packet straight to the receiver, stamped afresh so that both paths
                // are timed from just before their own send
                pkt[12..20].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                let _ = tx.send_to(&pkt, rx_addr);
            }
            sent += 1;
        }
        let wall = start.elapsed().as_secs_f64();
        // what the relay still has queued is its work too
        std::thread::sleep(Duration::from_millis(500));
        let window = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid) - cpu0;
        let (busy1, total1) = cpu_jiffies(relay_cpu);
        let preempted = preemptions(pid) - pre0;
        done.store(true, Ordering::Relaxed);
        let (got, mut lat, mut direct, mut added) = receiver.join().unwrap();
        lat.sort_unstable();
        direct.sort_unstable();
        added.sort_unstable();
        let added_at = |p: f64| {
            if added.is_empty() {
                return f64::NAN;
            }
            added[((added.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
        };
        let loss = 100.0 * (sent.saturating_sub(got)) as f64 / sent as f64;
        let cpu_pct = 100.0 * cpu / wall;
        let per_cpu = if cpu > 0.0 { got as f64 / cpu } else { f64::NAN };
        // the relay CPU's busy share over the step, less the relay's own over the same window
        let cpu_busy_pct = 100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
        let other_pct = (cpu_busy_pct - 100.0 * cpu / window).max(0.0);
        println!(
            "streams={n} offered_pps={:.0} recv={got} sent={sent} loss_pct={loss:.3} cpu_pct={cpu_pct:.1} pps_per_cpu_s={per_cpu:.0} \
             p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} \
             direct_p50_us={:.1} direct_p90_us={:.1} direct_p99_us={:.1} direct_p999_us={:.1} direct_max_us={:.1} direct_n={} \
             added_p50_us={:.1} added_p90_us={:.1} added_p99_us={:.1} added_p999_us={:.1} added_n={} \
             relay_cpu_other_pct={other_pct:.1} relay_preempted={preempted} loadavg={}",
            sent as f64 / wall,
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999),
            percentile(&lat, 1.0),
            percentile(&direct, 0.5),
            percentile(&direct, 0.9),
            percentile(&direct, 0.99),
            percentile(&direct, 0.999),
            percentile(&direct, 1.0),
            direct.len(),
            added_at(0.5),
            added_at(0.9),
            added_at(0.99),
            added_at(0.999),
            added.len(),
            loadavg(),
        );
        // drain stragglers between steps
        std::thread::sleep(Duration::from_millis(300));
    }
}
