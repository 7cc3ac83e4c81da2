#!/usr/bin/env bash
# Side-by-side RTP relay benchmark: callveil vs rtpengine (userspace only, FACTS.md §4).
#
# The same load for both: N one-way G.711 streams x 50 packets/s of 172 bytes, N rising
# (STEPS), each step SECS seconds, loopback. Each relay is pinned to one CPU (RELAY_CPU) with one
# worker (callveil: [media] shards = 1; rtpengine: --num-threads=1, --table=-1); the load
# generator (benches/rtp_compare/loadgen.rs) runs on the other CPU (LOAD_CPU). CPU time is read
# from /proc for the relay process (all its threads).
#
# Prints each relay's highest sustainable rate (no loss, median latency under MAX_P50_US), the
# CPU share it used there, packets/s per core
# (= rate / cores used), the ratio callveil/rtpengine, and the added latency of both relays at
# half callveil's highest loss-free rate: p50/p90/p99/p99.9 of the per-packet difference between
# a packet through the relay and its twin sent straight to the receiver at the same moment
# (every 8th packet; see loadgen.rs). Next to it the machine's noise: how busy the relay's CPU
# was with other processes, how often the relay was preempted, and a spinning probe's gaps on
# both CPUs (time the CPU was taken away). On this 2-vCPU VM such gaps reach several ms whatever
# runs, so the p99 and above are the machine's, not relay work: compare with rtpengine's.
# BUSY_POLL_US=N adds a latency row for callveil with [media] busy_poll_us = N at the same load.
# Needs: apt-get install -y --no-install-recommends rtpengine-daemon rtpengine-utils
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-500,1000,1500,2000,2500,3000}
SECS=${SECS:-5}
RELAY_CPU=${RELAY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
# control ports (override on a shared machine): callveil's SIP and its upstream, rtpengine's ng
SIP_PORT=${SIP_PORT:-25060}
UAS_PORT=${UAS_PORT:-$((SIP_PORT + 10))}
NG_PORT=${NG_PORT:-2223}
command -v rtpengine >/dev/null || { echo "rtpengine missing: apt-get install -y --no-install-recommends rtpengine-daemon rtpengine-utils" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --bin callveil --example rtp_loadgen >&2
LOADGEN=target/release/examples/rtp_loadgen
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

start_callveil() {
  cat > "$TMP/callveil.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:$SIP_PORT"]
[[sip.routes]]
match_user = ".*"
upstream = ["udp:127.0.0.1:$UAS_PORT"]
[media]
bind = "127.0.0.1"
advertise = "127.0.0.1"
ports = "40000-59999"
inactivity_timeout_s = 600
hold_timeout_s = 3600
shards = 1
busy_poll_us = ${CV_BUSY_POLL_US:-0}
[consent]
mode = "not_required"
[recording]
enabled = false
[metrics]
listen = ""
[log]
level = "warn"
TOML
  taskset -c "$RELAY_CPU" target/release/callveil run --config "$TMP/callveil.toml" 2>"$TMP/callveil.log" &
  CV_PID=$!; PIDS+=("$CV_PID"); sleep 0.5
}

start_rtpengine() {
  taskset -c "$RELAY_CPU" rtpengine --config-file=none --table=-1 --interface=127.0.0.1 \
    --listen-ng=127.0.0.1:$NG_PORT --num-threads=1 --foreground --log-stderr --log-level=3 \
    --port-min=20000 --port-max=39999 --timeout=600 2>"$TMP/rtpengine.log" &
  RE_PID=$!; PIDS+=("$RE_PID"); sleep 1
}

# run MODE PID STEPS [ADDR [UAS]] -> output lines
run() { RELAY_CPU="$RELAY_CPU" taskset -c "$LOAD_CPU" "$LOADGEN" "$1" "$2" "$3" "$SECS" "${@:4}"; }

# best sustainable line: the highest offered rate with no loss and no queueing. Socket buffers
# hide an overloaded relay for a few seconds (no loss yet, but latency grows to hundreds of ms),
# so a step only counts when its median latency stays under MAX_P50_US.
MAX_P50_US=${MAX_P50_US:-1000}
best() { awk -v maxp50="$MAX_P50_US" '{split($0,a," "); for(i in a){split(a[i],kv,"="); v[kv[1]]=kv[2]} if (v["loss_pct"]+0 == 0 && v["p50_us"]+0 < maxp50 && v["offered_pps"]+0 > m) {m=v["offered_pps"]+0; line=$0}} END {print line}'; }
field() { tr ' ' '\n' | awk -F= -v k="$1" '$1==k {print $2}'; }

echo "== callveil (1 shard, CPU $RELAY_CPU)"
start_callveil
run callveil "$CV_PID" "$STEPS" 127.0.0.1:$SIP_PORT 127.0.0.1:$UAS_PORT | tee "$TMP/cv.txt"
kill "$CV_PID"; wait "$CV_PID" 2>/dev/null || true

echo "== rtpengine userspace (table=-1, 1 thread, CPU $RELAY_CPU)"
start_rtpengine
run rtpengine "$RE_PID" "$STEPS" 127.0.0.1:$NG_PORT | tee "$TMP/re.txt"
kill "$RE_PID"; wait "$RE_PID" 2>/dev/null || true

CV_BEST=$(best < "$TMP/cv.txt"); RE_BEST=$(best < "$TMP/re.txt")
[ -n "$CV_BEST" ] || { echo "callveil lost packets or queued at every step" >&2; exit 1; }
[ -n "$RE_BEST" ] || { echo "rtpengine lost packets or queued at every step" >&2; exit 1; }
CV_PPS=$(echo "$CV_BEST" | field offered_pps); CV_CPU=$(echo "$CV_BEST" | field cpu_pct)
RE_PPS=$(echo "$RE_BEST" | field offered_pps); RE_CPU=$(echo "$RE_BEST" | field cpu_pct)
CV_STREAMS=$(echo "$CV_BEST" | field streams)

# latency at half of callveil's best, both relays at the same load; each run carries its own
# simultaneous direct baseline. Before each, the machine's noise floor on both CPUs: a spinning
# thread's gaps (time the CPU was taken away; on a VM mostly the host descheduling the vCPU)
noise_probe() {
  for c in "$RELAY_CPU" "$LOAD_CPU"; do
    printf "noise on CPU %s (%ss, nothing relayed): " "$c" "$NOISE_SECS"
    taskset -c "$c" "$LOADGEN" noise 0 0 "$NOISE_SECS"
  done
}
NOISE_SECS=${NOISE_SECS:-2}
noise_probe | tee "$TMP/noise1.txt"
HALF=$(( CV_STREAMS / 2 ))
start_callveil
run callveil "$CV_PID" "$HALF" 127.0.0.1:$SIP_PORT 127.0.0.1:$UAS_PORT | tee "$TMP/cv_half.txt"
kill "$CV_PID"; wait "$CV_PID" 2>/dev/null || true
# Optionally the same half load through callveil with busy polling ([media] busy_poll_us): the
# wake-up per packet disappears from its latency, and the CPU it spins is in its cpu_pct.
if [ "${BUSY_POLL_US:-0}" -gt 0 ]; then
  CV_BUSY_POLL_US=$BUSY_POLL_US start_callveil
  run callveil "$CV_PID" "$HALF" 127.0.0.1:$SIP_PORT 127.0.0.1:$UAS_PORT | tee "$TMP/cv_half_busy.txt"
  kill "$CV_PID"; wait "$CV_PID" 2>/dev/null || true
fi
noise_probe | tee "$TMP/noise2.txt"
start_rtpengine
run rtpengine "$RE_PID" "$HALF" 127.0.0.1:$NG_PORT | tee "$TMP/re_half.txt"
kill "$RE_PID"; wait "$RE_PID" 2>/dev/null || true

awk -v cvp="$CV_PPS" -v cvc="$CV_CPU" -v rep="$RE_PPS" -v rec="$RE_CPU" 'BEGIN {
  cvpc = cvp / (cvc / 100); repc = rep / (rec / 100);
  printf "callveil : max sustainable %.0f pps at %.1f%% CPU -> %.0f pps per core\n", cvp, cvc, cvpc;
  printf "rtpengine: max sustainable %.0f pps at %.1f%% CPU -> %.0f pps per core\n", rep, rec, repc;
  printf "ratio callveil/rtpengine per core: %.2f\n", cvpc / repc;
}'
latency() {
  tr ' ' '\n' < "$2" | awk -F= -v who="$1" '{v[$1]=$2} END {
    printf "%-9s added latency at %s pps, per packet (relay copy minus its direct twin, %s pairs): p50 %+.1f  p90 %+.1f  p99 %+.1f  p99.9 %+.1f us\n",
      who, v["offered_pps"], v["added_n"], v["added_p50_us"], v["added_p90_us"], v["added_p99_us"], v["added_p999_us"];
    printf "          relay p50/p90/p99/p99.9/max %.1f/%.1f/%.1f/%.1f/%.1f us; direct %.1f/%.1f/%.1f/%.1f/%.1f us (%s samples)\n",
      v["p50_us"], v["p90_us"], v["p99_us"], v["p999_us"], v["max_us"],
      v["direct_p50_us"], v["direct_p90_us"], v["direct_p99_us"], v["direct_p999_us"], v["direct_max_us"], v["direct_n"];
    printf "          noise: relay CPU busy with other processes %s%%, relay preempted %s times, load average %s\n",
      v["relay_cpu_other_pct"], v["relay_preempted"], v["loadavg"];
  }'
}
latency callveil "$TMP/cv_half.txt"
if [ -s "$TMP/cv_half_busy.txt" ]; then
  latency "callveil with busy_poll_us=$BUSY_POLL_US" "$TMP/cv_half_busy.txt"
  echo "          its CPU at that load: $(field cpu_pct < "$TMP/cv_half_busy.txt")% (spinning included), without busy polling $(field cpu_pct < "$TMP/cv_half.txt")%"
fi
latency rtpengine "$TMP/re_half.txt"
echo "noise floor (a spinning thread's gaps; a packet in flight waits as long, on either CPU it crosses):"
sed 's/^/  /' "$TMP/noise1.txt" "$TMP/noise2.txt"
