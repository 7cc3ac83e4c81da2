//! SIPp integration tests: real SIPp callers and callees (scenario XML in `tests/sipp/`) around
//! callveil, with Kamailio as the reference proxy and with no proxy at all.
//!
//! Each scenario runs up to three ways, as a module with up to three tests:
//! - `direct`: caller straight to callee. Validates the scenario pair on its own.
//! - `kamailio`: through Kamailio (record_route/loose_route/t_relay). Validates that the scenarios
//!   route in-dialog requests (ACK, BYE, re-INVITE) via the recorded route through a real proxy.
//! - `callveil`: through the `callveil run` binary.
//!
//! A missing `sipp` fails the tests with instructions unless `CALLVEIL_SKIP_SIPP=1`; likewise a
//! missing `kamailio` fails the `kamailio` runs unless `CALLVEIL_SKIP_KAMAILIO=1`. What SIP
//! behaviour is checked lives in the scenarios: a call fails on any unexpected message, on a
//! missing Record-Route at the callee, or on a final status other than the one required. These
//! tests do not look at RTP, metrics values or logs.
#![allow(clippy::disallowed_methods)] // real processes run on real time

#[path = "sipp/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Bench, Endpoint, Hop, Outcome, Proxy, Transport, Uas};

/// Timer T1 given to the proxies: Timer B (64*T1) then fires after 3.2 s in the timeout tests.
const T1_MS: u64 = 50;

/// Runs `body` with the SIPp lock held, once the tools `hop` needs are known to be there.
fn run(hop: Hop, body: impl FnOnce(&mut Bench, Hop)) {
    let _serial = harness::serial();
    if !harness::sipp_available() {
        return;
    }
    if hop == Hop::Kamailio && !harness::kamailio_available() {
        return;
    }
    let mut bench = Bench::new();
    body(&mut bench, hop);
}

/// Where the caller sends its requests: the proxy if there is one, else the callee.
fn target(proxy: &Option<Proxy>, uas: &Uas) -> std::net::SocketAddr {
    proxy.as_ref().map_or_else(|| uas.addr(), Proxy::addr)
}

/// Asserts `calls` successful calls, adding the proxy's output to the failure message.
fn expect_calls(outcome: &Outcome, calls: u64, proxy: &Option<Proxy>) {
    let ok =
        outcome.status.is_some_and(|s| s.success()) && outcome.stats.successful == calls && outcome.stats.failed == 0;
    if !ok {
        if let Some(proxy) = proxy {
            eprintln!("--- proxy output (pid {}):\n{}", proxy.pid(), proxy.log_tail());
        }
    }
    outcome.assert_calls(calls);
}

/// Asserts a callee never saw a call: the proxy answered by itself.
fn expect_untouched(outcome: &Outcome) {
    assert!(
        outcome.stats.incoming == 0 && outcome.stats.failed == 0,
        "{}: the proxy should have answered by itself, but the callee counted {:?}\n{}",
        outcome.name,
        outcome.stats,
        outcome.diagnostics
    );
}

/// One module per scenario with a test per hop. `proxied` leaves out the direct run, for
/// behaviour only a proxy has (failover).
macro_rules! scenario {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn direct() {
                run(Hop::Direct, $body);
            }

            scenario!(@proxied $body);
        }
    };
    (proxied $name:ident, $body:expr) => {
        mod $name {
            use super::*;

            scenario!(@proxied $body);
        }
    };
    (@proxied $body:expr) => {
        #[test]
        fn kamailio() {
            run(Hop::Kamailio, $body);
        }

        #[test]
        fn callveil() {
            run(Hop::Callveil, $body);
        }
    };
}

fn basic_call(bench: &mut Bench, hop: Hop, transport: Transport) {
    let uas = bench.uas("uas_call.xml", transport, &[("expect_rr", hop.expect_rr()), ("ring", "yes")]);
    let proxy = bench.proxy(hop, &[uas.endpoint()], T1_MS);
    let uac = bench.uac("uac_call.xml", transport).calls(5).rate(10).pause_ms(200).run(target(&proxy, &uas));
    expect_calls(&uac, 5, &proxy);
    uas.finish().assert_calls(5);
}

scenario!(basic_call_udp, |b: &mut Bench, hop| basic_call(b, hop, Transport::Udp));
scenario!(basic_call_tcp, |b: &mut Bench, hop| basic_call(b, hop, Transport::Tcp));

scenario!(cancel, |bench: &mut Bench, hop| {
    let uas = bench.uas("uas_cancel.xml", Transport::Udp, &[("expect_rr", hop.expect_rr())]);
    let proxy = bench.proxy(hop, &[uas.endpoint()], T1_MS);
    let uac = bench.uac("uac_cancel.xml", Transport::Udp).calls(3).rate(10).run(target(&proxy, &uas));
    expect_calls(&uac, 3, &proxy);
    uas.finish().assert_calls(3);
});

scenario!(busy_here, |bench: &mut Bench, hop| {
    let uas = bench.uas("uas_reject.xml", Transport::Udp, &[("expect_rr", hop.expect_rr()), ("reject_code", "486")]);
    let proxy = bench.proxy(hop, &[uas.endpoint()], T1_MS);
    let uac = bench
        .uac("uac_reject.xml", Transport::Udp)
        .set("expect_code", "486")
        .key("max_forwards", "70")
        .calls(3)
        .rate(10)
        .run(target(&proxy, &uas));
    expect_calls(&uac, 3, &proxy);
    uas.finish().assert_calls(3);
});

scenario!(reinvite_then_callee_hangs_up, |bench: &mut Bench, hop| {
    let uas = bench.uas("uas_reinvite.xml", Transport::Udp, &[("expect_rr", hop.expect_rr())]);
    let proxy = bench.proxy(hop, &[uas.endpoint()], T1_MS);
    let uac = bench.uac("uac_reinvite.xml", Transport::Udp).calls(3).rate(10).pause_ms(200).run(target(&proxy, &uas));
    expect_calls(&uac, 3, &proxy);
    uas.finish().assert_calls(3);
});

scenario!(proxied failover_on_503, |bench: &mut Bench, hop| {
    let refusing = bench.uas("uas_reject.xml", Transport::Udp, &[("expect_rr", "yes"), ("reject_code", "503")]);
    let answering = bench.uas("uas_call.xml", Transport::Udp, &[("expect_rr", "yes"), ("ring", "yes")]);
    let proxy = bench.proxy(hop, &[refusing.endpoint(), answering.endpoint()], T1_MS);
    let uac = bench.uac("uac_call.xml", Transport::Udp).calls(5).rate(10).pause_ms(100).run(target(&proxy, &refusing));
    expect_calls(&uac, 5, &proxy);
    answering.finish().assert_calls(5);
    // Each refused INVITE is one completed scenario (INVITE, 503, ACK) at the first upstream.
    refusing.finish().assert_calls(5);
});

scenario!(proxied failover_on_timeout, |bench: &mut Bench, hop| {
    let silent = Endpoint { transport: Transport::Udp, port: harness::free_port() };
    let answering = bench.uas("uas_call.xml", Transport::Udp, &[("expect_rr", "yes"), ("ring", "yes")]);
    let proxy = bench.proxy(hop, &[silent, answering.endpoint()], T1_MS);
    let started = Instant::now();
    let uac = bench
        .uac("uac_call.xml", Transport::Udp)
        .calls(3)
        .rate(10)
        .pause_ms(100)
        .timeout(Duration::from_secs(30))
        .run(target(&proxy, &answering));
    let elapsed = started.elapsed();
    expect_calls(&uac, 3, &proxy);
    answering.finish().assert_calls(3);
    // The calls can only have completed after the first upstream's Timer B (64*T1) expired.
    let timer_b = Duration::from_millis(64 * T1_MS);
    assert!(elapsed >= timer_b, "calls completed in {elapsed:?}, before Timer B ({timer_b:?}) could fire");
});

scenario!(options_to_proxy_itself, |bench: &mut Bench, hop| {
    // Direct, the callee stands in for the proxy and answers; through a proxy it must see nothing.
    let uas = bench.uas("uas_options.xml", Transport::Udp, &[]);
    let proxy = bench.proxy(hop, &[uas.endpoint()], T1_MS);
    let uac = bench.uac("uac_options.xml", Transport::Udp).calls(3).rate(10).run(target(&proxy, &uas));
    expect_calls(&uac, 3, &proxy);
    let uas = uas.finish();
    if hop == Hop::Direct {
        uas.assert_calls(3);
    } else {
        expect_untouched(&uas);
    }
});

scenario!(max_forwards_zero, |bench: &mut Bench, hop| {
    // Direct, a callee answering 483 stands in for the proxy; through a proxy the callee (which
    // would answer 200) must never see the INVITE.
    let uas = if hop == Hop::Direct {
        bench.uas("uas_reject.xml", Transport::Udp, &[("expect_rr", "no"), ("reject_code", "483")])
    } else {
        bench.uas("uas_call.xml", Transport::Udp, &[("expect_rr", "yes"), ("ring", "yes")])
    };
    let proxy = bench.proxy(hop, &[uas.endpoint()], T1_MS);
    let uac = bench
        .uac("uac_reject.xml", Transport::Udp)
        .set("expect_code", "483")
        .key("max_forwards", "0")
        .calls(3)
        .rate(10)
        .run(target(&proxy, &uas));
    expect_calls(&uac, 3, &proxy);
    let uas = uas.finish();
    if hop == Hop::Direct {
        uas.assert_calls(3);
    } else {
        expect_untouched(&uas);
    }
});

scenario!(load_200_cps_for_10_s, |bench: &mut Bench, hop| {
    const CALLS: u64 = 2000;
    bench.without_message_trace();
    // No 180: a proxy with several workers may pass 180 and 200 out of order, which SIPp's
    // caller would count as a failed call although nothing is wrong.
    let uas = bench.uas("uas_call.xml", Transport::Udp, &[("expect_rr", hop.expect_rr()), ("ring", "no")]);
    // Realistic T1 here: the shortened one only serves the timeout tests.
    let proxy = bench.proxy(hop, &[uas.endpoint()], 500);
    let uac = bench
        .uac("uac_call.xml", Transport::Udp)
        .calls(CALLS)
        .rate(200)
        .pause_ms(500)
        .limit(1000)
        .timeout(Duration::from_secs(40))
        .run(target(&proxy, &uas));
    expect_calls(&uac, CALLS, &proxy);
    eprintln!("{hop:?}: {CALLS} calls at 200 cps, {} retransmissions seen by the caller", uac.stats.retransmissions);
    uas.finish().assert_calls(CALLS);
});

/// The scenarios' own checks must be able to fail, or the tests above prove nothing.
mod scenario_checks {
    use super::*;

    #[test]
    fn callee_fails_without_record_route_when_one_is_required() {
        run(Hop::Direct, |bench, _| {
            let uas = bench.uas("uas_call.xml", Transport::Udp, &[("expect_rr", "yes"), ("ring", "yes")]);
            let uac = bench.uac("uac_call.xml", Transport::Udp).timeout(Duration::from_secs(3)).run(uas.addr());
            uac.assert_failed();
            uas.finish().assert_failed();
        });
    }

    #[test]
    fn caller_fails_on_a_final_status_other_than_the_expected_one() {
        run(Hop::Direct, |bench, _| {
            let uas = bench.uas("uas_reject.xml", Transport::Udp, &[("expect_rr", "no"), ("reject_code", "503")]);
            let uac = bench
                .uac("uac_reject.xml", Transport::Udp)
                .set("expect_code", "486")
                .key("max_forwards", "70")
                .timeout(Duration::from_secs(3))
                .run(uas.addr());
            uac.assert_failed();
            assert_eq!(uac.stats.successful, 0, "{}", uac.diagnostics);
            uas.finish();
        });
    }

    #[test]
    fn caller_fails_when_nothing_answers() {
        run(Hop::Direct, |bench, _| {
            let nobody = std::net::SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
            let uac = bench.uac("uac_call.xml", Transport::Udp).timeout(Duration::from_secs(2)).run(nobody);
            uac.assert_failed();
            assert_eq!(uac.stats.outgoing, 1, "{}", uac.diagnostics);
        });
    }

    #[test]
    fn kamailio_config_template_has_no_unfilled_placeholder() {
        let upstream = Endpoint { transport: Transport::Tcp, port: 5070 };
        let text = harness::kamailio_config(5060, &[upstream], 3200, 2);
        let unfilled = text.split('@').skip(1).step_by(2).find(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        assert_eq!(unfilled, None, "placeholder left in:\n{text}");
        assert!(text.contains("$du = \"sip:127.0.0.1:5070;transport=tcp\""), "{text}");
        assert!(text.contains("listen=udp:127.0.0.1:5060"), "{text}");
        assert!(text.contains("modparam(\"tm\", \"fr_timer\", 3200)"), "{text}");
    }

    #[test]
    fn callveil_config_is_valid_and_keeps_failover_order() {
        use callveil::config::{Settings, Transport as CfgTransport};
        let first = Endpoint { transport: Transport::Udp, port: 5071 };
        let second = Endpoint { transport: Transport::Tcp, port: 5072 };
        let text = harness::callveil_config(5060, 9464, &[first, second], 50, std::path::Path::new("/tmp/x"));
        let settings = Settings::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let ups: Vec<(CfgTransport, u16)> =
            settings.routes.iter().flat_map(|r| &r.upstreams).map(|e| (e.transport, e.addr.port())).collect();
        assert_eq!(ups, [(CfgTransport::Udp, 5071), (CfgTransport::Tcp, 5072)]);
        assert_eq!(settings.raw.sip.t1_ms, 50);
        assert_eq!(settings.sip_listen.len(), 2);
        assert_eq!(settings.metrics_listen.map(|a| a.port()), Some(9464));
    }
}

/// An IVR (consent) route on the in-process app: the SIPp caller gets a 183 whose SDP names
/// callveil's media port, the SIPp callee sees nothing while the INVITE is held, and the call
/// completes normally once `Release` goes through `Running::call_commands()`.
#[test]
fn ivr_hold_until_release() {
    use callveil::sip::events::{CallCommand, CallEvent};

    let _serial = harness::serial();
    if !harness::sipp_available() {
        return;
    }
    let mut bench = Bench::new();
    let uas = bench.uas("uas_call.xml", Transport::Udp, &[("expect_rr", "yes"), ("ring", "yes")]);
    let toml = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\nt1_ms = {T1_MS}\n[[sip.routes]]\nname = \"ivr\"\nmatch_user = \".*\"\n\
         upstream = [\"udp:{}\"]\nconsent = \"ivr\"\n[media]\nports = \"47000-47099\"\nshards = 1\n[metrics]\nlisten = \"\"\n",
        uas.addr()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let settings = callveil::config::Settings::from_toml(&toml).unwrap();
    let running = rt.block_on(callveil::app::start_with(settings, Some(tx))).unwrap();
    let target = running.sip_endpoints()[0].addr;
    let uac = bench.uac("uac_ivr.xml", Transport::Udp).pause_ms(200).timeout(Duration::from_secs(20));
    let caller = std::thread::spawn(move || uac.run(target));

    let call_id = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(CallEvent::Started { call_id, held: true, route, .. }) if route == "ivr" => call_id,
        other => panic!("expected a held Started event, got {other:?}"),
    };
    std::thread::sleep(Duration::from_secs(1));
    let responses: f64 = running
        .metrics()
        .encode()
        .lines()
        .filter(|l| l.starts_with("callveil_sip_responses_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(responses, 0.0, "the callee must not have seen (and answered) the held INVITE");
    assert!(!caller.is_finished(), "the caller waits on the 183 while the INVITE is held");

    running.call_commands().send(CallCommand::Release { call_id }).unwrap();
    let outcome = caller.join().unwrap();
    outcome.assert_calls(1);
    uas.finish().assert_calls(1);
    let events: Vec<String> = rx.try_iter().map(|e| format!("{e:?}")).collect();
    assert!(events.iter().any(|e| e.starts_with("Answered")), "{events:?}");
    assert!(events.iter().any(|e| e.starts_with("Ended")), "{events:?}");
    rt.block_on(running.stop());
}
