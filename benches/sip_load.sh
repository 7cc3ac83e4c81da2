#!/usr/bin/env bash
# callveil: SIP load comparison, callveil vs Kamailio, side by side in one run on this machine.
#
#   SIPp uac --> { Kamailio 5.6 (stateful: record_route, loose_route, t_relay), callveil } --> SIPp uas
#
# Both proxies (and one SIPp callee each) run for the whole ramp; for every call rate the script
# runs one step against Kamailio and then one against callveil, so background noise on a shared
# machine hits both alike. Each step is RATE cps for DURATION s of calls (INVITE/200/ACK/pause/
# BYE/200, no 180: a multi-worker proxy may reorder 180 and 200, which SIPp would count as a
# failure). A proxy leaves the ramp after its first step with a failed call.
#
# Reported per proxy: the highest rate with 0 failed calls, and the CPU seconds the proxy used
# (utime+stime from /proc/PID/stat, summed over every process in its session, so Kamailio's
# workers count) per 1000 calls. Ratios callveil/kamailio: max cps, and CPU per 1000 calls at
# the highest rate both passed. The CPU includes what the proxy burns when idle (timers), which
# is measured first and printed. The scenarios are the integration tests' (tests/sipp/).
# It does not measure latency, RTP or TCP.
#
# Usage: benches/sip_load.sh [--proxies "kamailio callveil"] [--rates "500 1000 ..."]
#                            [--duration S] [--call-ms MS] [--out DIR]
# Env: CALLVEIL_BIN (skip the release build and use this binary), SIP_LOAD_BASE_PORT (25060).
# Needs sipp (Debian: sip-tester) and kamailio; Kamailio is given children=2 and -m 2048.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCEN="$ROOT/tests/sipp"
PROXIES="kamailio callveil"
RATES="500 1000 2000 3000 4000 5000"
DURATION=10
CALL_MS=1000
OUT=""
BASE="${SIP_LOAD_BASE_PORT:-25060}"

while [ $# -gt 0 ]; do
    case "$1" in
        --proxies) PROXIES="$2"; shift 2 ;;
        --rates) RATES="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --call-ms) CALL_MS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
    esac
done

for tool in sipp kamailio python3; do
    command -v "$tool" >/dev/null || { echo "sip_load: $tool is not installed" >&2; exit 69; }
done
OUT="${OUT:-$(mktemp -d /tmp/callveil-sip-load.XXXXXX)}"
mkdir -p "$OUT"
TICK="$(getconf CLK_TCK)"
PIDS=()

cleanup() {
    # Only what this script started, by PID; Kamailio stops its workers itself on SIGTERM.
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Ports per proxy: SIP, its callee, the caller, metrics, SIPp control and media.
port() { # proxy-index offset
    echo $((BASE + $1 * 100 + $2))
}

SIPP_COMMON=(-bind_local -i 127.0.0.1 -mi 127.0.0.1 -ci 127.0.0.1 -nostdin -buff_size 4194304
    -trace_stat -fd 1 -trace_err)

# CPU seconds (utime+stime) of every process in session SID, as ticks.
session_ticks() {
    local sid="$1" total=0 f rest
    for f in /proc/[0-9]*/stat; do
        rest="$(cat "$f" 2>/dev/null)" || continue
        rest="${rest##*) }" # fields after the command name, which may contain spaces
        # shellcheck disable=SC2086
        set -- $rest
        # $1 state, $2 ppid, $3 pgrp, $4 session, ..., $12 utime, $13 stime
        [ "${4:-}" = "$sid" ] && total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

pid_ticks() { # pid: utime+stime of one process
    local rest
    rest="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
    rest="${rest##*) }"
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13}))
}

# Last-row counter NAME from a SIPp -trace_stat file.
stat_col() { # file name
    python3 - "$1" "$2" <<'EOF'
import sys
try:
    rows = [l.rstrip("\n").split(";") for l in open(sys.argv[1]) if l.strip()]
    head, last = rows[0], [r for r in rows[1:] if len(r) >= len(rows[0])][-1]
    print(last[head.index(sys.argv[2])].strip())
except (OSError, IndexError, ValueError):
    print(0)  # SIPp wrote no statistics: it placed no call
EOF
}

wait_ready() { # name pid check-command...
    local name="$1" pid="$2"; shift 2
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || { echo "sip_load: $name exited during start-up" >&2; return 1; }
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "sip_load: $name not ready after 15 s" >&2
    return 1
}

options_ok() { # port: one OPTIONS over UDP, true on 200
    python3 - "$1" <<'EOF'
import socket, sys
p = int(sys.argv[1]); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
lp = s.getsockname()[1]; s.settimeout(0.3)
s.sendto((f"OPTIONS sip:127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK-ready-{lp}\r\n"
          f"From: <sip:probe@127.0.0.1:{lp}>;tag=ready\r\nTo: <sip:127.0.0.1:{p}>\r\nCall-ID: ready-{lp}\r\n"
          "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", p))
sys.exit(0 if s.recv(2048).startswith(b"SIP/2.0 200") else 1)
EOF
}

metrics_ok() { # port
    python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$1/metrics', timeout=0.5).status != 200)"
}

start_uas() { # index
    local i="$1" dir="$OUT/p$1"
    sipp "${SIPP_COMMON[@]}" -sf "$SCEN/uas_call.xml" -t u1 -p "$(port "$i" 10)" -cp "$(port "$i" 40)" \
        -mp "$(port "$i" 50)" -set expect_rr yes -set ring no -stf "$dir/uas.csv" \
        -error_file "$dir/uas_errors.log" >"$dir/uas.out" 2>&1 &
    UAS_PID[$i]="$!"
    PIDS+=("$!")
}

start_kamailio() { # index
    local i="$1" dir="$OUT/p$1"
    sed -e "s/@CHILDREN@/2/g" -e "s/@PORT@/$(port "$i" 0)/g" -e "s/@FR_TIMER_MS@/32000/g" \
        -e "s#@UPSTREAM1@#sip:127.0.0.1:$(port "$i" 10);transport=udp#" \
        -e "s#@UPSTREAM2@#sip:127.0.0.1:$(port "$i" 10);transport=udp#" \
        "$SCEN/kamailio.cfg.in" >"$dir/kamailio.cfg"
    # setsid: Kamailio and its workers get their own session, which the CPU count sums over.
    setsid kamailio -f "$dir/kamailio.cfg" -DD -E -m 2048 -M 16 -w "$dir" >"$dir/proxy.log" 2>&1 &
    PROXY_PID="$!"
    PIDS+=("$PROXY_PID")
    wait_ready kamailio "$PROXY_PID" options_ok "$(port "$i" 0)"
}

start_callveil() { # index
    local i="$1" dir="$OUT/p$1" bin="${CALLVEIL_BIN:-}"
    if [ -z "$bin" ]; then
        (cd "$ROOT" && cargo build --release --quiet --bin callveil) || return 1
        bin="$ROOT/target/release/callveil"
    fi
    local p mp up
    p="$(port "$i" 0)"; mp="$(port "$i" 30)"; up="$(port "$i" 10)"
    sed -e "s/\"udp:127.0.0.1:5060\"/\"udp:127.0.0.1:$p\"/" -e "s/\"tcp:127.0.0.1:5060\"/\"tcp:127.0.0.1:$p\"/" \
        -e "s/\"udp:127.0.0.1:5070\"/\"udp:127.0.0.1:$up\"/" -e "s/\"127.0.0.1:9464\"/\"127.0.0.1:$mp\"/" \
        -e "s#^dir = .*#dir = \"$dir/var\"#" "$ROOT/config/bench.toml" >"$dir/callveil.toml"
    for want in "udp:127.0.0.1:$p" "udp:127.0.0.1:$up" "127.0.0.1:$mp"; do
        grep -q "\"$want\"" "$dir/callveil.toml" || {
            echo "sip_load: config/bench.toml changed shape; could not set $want" >&2
            return 1
        }
    done
    setsid "$bin" run --config "$dir/callveil.toml" >"$dir/proxy.log" 2>&1 &
    PROXY_PID="$!"
    PIDS+=("$PROXY_PID")
    wait_ready callveil "$PROXY_PID" metrics_ok "$mp"
}

# One step: RATE cps for DURATION s against proxy INDEX.
# Prints "ok failed retrans proxy_cpu_s wall_s uac_cpu_s uas_cpu_s"; the load generators' CPU
# tells whether SIPp, rather than the proxy, ran out of CPU (the machine has 2 cores).
step() { # index rate
    local i="$1" rate="$2" dir="$OUT/p$1" calls limit before after uas_before uas_after rc=0
    calls=$((rate * DURATION))
    limit=$((rate * (CALL_MS / 1000 + 5)))
    before="$(session_ticks "${PROXY_SID[$i]}")"
    uas_before="$(pid_ticks "${UAS_PID[$i]}")"
    local TIMEFORMAT="%R %U %S"
    { time sipp "${SIPP_COMMON[@]}" -sf "$SCEN/uac_call.xml" -t u1 "127.0.0.1:$(port "$i" 0)" \
        -p "$(port "$i" 20)" -cp "$(port "$i" 41)" -mp "$(port "$i" 60)" \
        -m "$calls" -r "$rate" -l "$limit" -d "$CALL_MS" -timeout "$((DURATION + CALL_MS / 1000 + 40))s" \
        -timeout_error -stf "$dir/uac-$rate.csv" -error_file "$dir/uac-$rate-errors.log" \
        >"$dir/uac-$rate.out" 2>&1 || rc=$?; } 2>"$dir/uac-$rate.time"
    after="$(session_ticks "${PROXY_SID[$i]}")"
    uas_after="$(pid_ticks "${UAS_PID[$i]}")"
    local ok failed retrans wall user sys
    ok="$(stat_col "$dir/uac-$rate.csv" 'SuccessfulCall(C)')"
    failed="$(stat_col "$dir/uac-$rate.csv" 'FailedCall(C)')"
    retrans="$(stat_col "$dir/uac-$rate.csv" 'Retransmissions(C)')"
    # Calls SIPp never placed (it gave up or timed out) count as failed too.
    [ "$rc" -eq 0 ] && [ "$ok" -eq "$calls" ] || failed=$((calls - ok))
    read -r wall user sys <"$dir/uac-$rate.time"
    python3 -c "print($ok, $failed, $retrans, f'{($after - $before) / $TICK:.2f}', f'{$wall:.1f}',
                f'{$user + $sys:.2f}', f'{($uas_after - $uas_before) / $TICK:.2f}')"
}

declare -a NAMES PROXY_SID ALIVE UAS_PID NOT_STARTED=()
idx=0
for name in $PROXIES; do
    mkdir -p "$OUT/p$idx"
    NAMES[$idx]="$name"
    start_uas "$idx"
    if "start_$name" "$idx"; then
        # The CPU count sums over the proxy's session: it must be the proxy's own.
        sid="$(awk '{ sub(/.*\) /, ""); print $4 }' "/proc/$PROXY_PID/stat")"
        [ "$sid" = "$PROXY_PID" ] || { echo "sip_load: $name is not a session leader" >&2; exit 70; }
        PROXY_SID[$idx]="$PROXY_PID"
        ALIVE[$idx]=1
    else
        echo "sip_load: $name did not start; see $OUT/p$idx/proxy.log" >&2
        ALIVE[$idx]=0
        NOT_STARTED+=("$name")
    fi
    idx=$((idx + 1))
done

# Idle baseline: what each proxy burns with no traffic, so per-call figures can be read honestly.
declare -a IDLE_BEFORE
for i in "${!NAMES[@]}"; do
    [ "${ALIVE[$i]}" = 1 ] && IDLE_BEFORE[$i]="$(session_ticks "${PROXY_SID[$i]}")"
done
sleep 5
for i in "${!NAMES[@]}"; do
    [ "${ALIVE[$i]}" = 1 ] || continue
    python3 -c "print(f'${NAMES[$i]}: idle CPU {($(session_ticks "${PROXY_SID[$i]}") - ${IDLE_BEFORE[$i]}) / $TICK / 5:.3f} s per s')"
done

RESULTS="$OUT/results.tsv"
printf 'proxy\trate_cps\tcalls\tok\tfailed\tretrans\tcpu_s\tcpu_s_per_1k\twall_s\tuac_cpu_s\tuas_cpu_s\n' >"$RESULTS"
for rate in $RATES; do
    for i in "${!NAMES[@]}"; do
        [ "${ALIVE[$i]}" = 1 ] || continue
        read -r ok failed retrans cpu wall uac_cpu uas_cpu < <(step "$i" "$rate")
        per1k="$(python3 -c "print(f'{$cpu * 1000 / max($ok, 1):.3f}')")"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${NAMES[$i]}" "$rate" "$((rate * DURATION))" \
            "$ok" "$failed" "$retrans" "$cpu" "$per1k" "$wall" "$uac_cpu" "$uas_cpu" | tee -a "$RESULTS"
        [ "$failed" -eq 0 ] || ALIVE[$i]=0
        sleep 2 # let the callee and the proxy's transaction timers drain
    done
done

python3 - "$RESULTS" "${NOT_STARTED[*]}" "${NAMES[@]}" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
not_started = sys.argv[2].split()
names = sys.argv[3:]
print()
print(f"{'proxy':<10} {'rate':>6} {'calls':>7} {'failed':>7} {'retrans':>8} {'proxy cpu s':>12} "
      f"{'cpu s/1k calls':>15} {'wall s':>7} {'uac cpu s':>10} {'uas cpu s':>10}")
for r in rows:
    print(f"{r['proxy']:<10} {r['rate_cps']:>6} {r['calls']:>7} {r['failed']:>7} {r['retrans']:>8} "
          f"{r['cpu_s']:>12} {r['cpu_s_per_1k']:>15} {r['wall_s']:>7} {r['uac_cpu_s']:>10} {r['uas_cpu_s']:>10}")
passed = {n: {int(r["rate_cps"]): float(r["cpu_s_per_1k"]) for r in rows
              if r["proxy"] == n and r["failed"] == "0"} for n in names}
print()
for n in names:
    best = max(passed[n], default=None)
    if n in not_started:
        print(f"{n}: did not start (see its proxy.log)")
    elif best is None:
        print(f"{n}: no step without failed calls")
    else:
        print(f"{n}: max rate with 0 failed calls: {best} cps, {passed[n][best]:.3f} CPU s per 1000 calls there")
if "kamailio" in passed and "callveil" in passed:
    k, c = passed["kamailio"], passed["callveil"]
    if k and c:
        print(f"ratio callveil/kamailio, max cps: {max(c) / max(k):.2f}")
        common = sorted(set(k) & set(c))
        if common:
            r = common[-1]
            print(f"ratio callveil/kamailio, CPU per 1000 calls at {r} cps: {c[r] / k[r]:.2f}")
    else:
        print("ratio callveil/kamailio: n/a (a proxy passed no step)")
EOF
echo "details: $OUT"
