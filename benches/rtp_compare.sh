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
# (= rate / cores used), the ratio callveil/rtpengine, and callveil's added latency p50/p99 at
# half its highest loss-free rate (minus a direct sender->receiver baseline at the same rate).
# Needs: apt-get install -y --no-install-recommends rtpengine-daemon rtpengine-utils
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-500,1000,1500,2000,2500,3000}
SECS=${SECS:-5}
RELAY_CPU=${RELAY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
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
listen = ["udp:127.0.0.1:25060"]
[[sip.routes]]
match_user = ".*"
upstream = ["udp:127.0.0.1:25070"]
[media]
bind = "127.0.0.1"
advertise = "127.0.0.1"
ports = "40000-59999"
inactivity_timeout_s = 600
hold_timeout_s = 3600
shards = 1
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
    --listen-ng=127.0.0.1:2223 --num-threads=1 --foreground --log-stderr --log-level=3 \
    --port-min=20000 --port-max=39999 --timeout=600 2>"$TMP/rtpengine.log" &
  RE_PID=$!; PIDS+=("$RE_PID"); sleep 1
}

# run MODE PID STEPS [ADDR [UAS]] -> output lines
run() { taskset -c "$LOAD_CPU" "$LOADGEN" "$1" "$2" "$3" "$SECS" "${@:4}"; }

# best sustainable line: the highest offered rate with no loss and no queueing. Socket buffers
# hide an overloaded relay for a few seconds (no loss yet, but latency grows to hundreds of ms),
# so a step only counts when its median latency stays under MAX_P50_US.
MAX_P50_US=${MAX_P50_US:-1000}
best() { awk -v maxp50="$MAX_P50_US" '{split($0,a," "); for(i in a){split(a[i],kv,"="); v[kv[1]]=kv[2]} if (v["loss_pct"]+0 == 0 && v["p50_us"]+0 < maxp50 && v["offered_pps"]+0 > m) {m=v["offered_pps"]+0; line=$0}} END {print line}'; }
field() { tr ' ' '\n' | awk -F= -v k="$1" '$1==k {print $2}'; }

echo "== callveil (1 shard, CPU $RELAY_CPU)"
start_callveil
run callveil "$CV_PID" "$STEPS" 127.0.0.1:25060 127.0.0.1:25070 | tee "$TMP/cv.txt"
kill "$CV_PID"; wait "$CV_PID" 2>/dev/null || true

echo "== rtpengine userspace (table=-1, 1 thread, CPU $RELAY_CPU)"
start_rtpengine
run rtpengine "$RE_PID" "$STEPS" 127.0.0.1:2223 | tee "$TMP/re.txt"
kill "$RE_PID"; wait "$RE_PID" 2>/dev/null || true

CV_BEST=$(best < "$TMP/cv.txt"); RE_BEST=$(best < "$TMP/re.txt")
[ -n "$CV_BEST" ] || { echo "callveil lost packets or queued at every step" >&2; exit 1; }
[ -n "$RE_BEST" ] || { echo "rtpengine lost packets or queued at every step" >&2; exit 1; }
CV_PPS=$(echo "$CV_BEST" | field offered_pps); CV_CPU=$(echo "$CV_BEST" | field cpu_pct)
RE_PPS=$(echo "$RE_BEST" | field offered_pps); RE_CPU=$(echo "$RE_BEST" | field cpu_pct)
CV_STREAMS=$(echo "$CV_BEST" | field streams)

# latency at half of callveil's best, against a direct baseline at the same rate
HALF=$(( CV_STREAMS / 2 ))
start_callveil
run callveil "$CV_PID" "$HALF" 127.0.0.1:25060 127.0.0.1:25070 | tee "$TMP/cv_half.txt"
kill "$CV_PID"; wait "$CV_PID" 2>/dev/null || true
run direct 0 "$HALF" | tee "$TMP/direct.txt"

awk -v cvp="$CV_PPS" -v cvc="$CV_CPU" -v rep="$RE_PPS" -v rec="$RE_CPU" \
    -v c50="$(field p50_us < "$TMP/cv_half.txt")" -v c99="$(field p99_us < "$TMP/cv_half.txt")" \
    -v d50="$(field p50_us < "$TMP/direct.txt")" -v d99="$(field p99_us < "$TMP/direct.txt")" 'BEGIN {
  cvpc = cvp / (cvc / 100); repc = rep / (rec / 100);
  printf "callveil : max sustainable %.0f pps at %.1f%% CPU -> %.0f pps per core\n", cvp, cvc, cvpc;
  printf "rtpengine: max sustainable %.0f pps at %.1f%% CPU -> %.0f pps per core\n", rep, rec, repc;
  printf "ratio callveil/rtpengine per core: %.2f\n", cvpc / repc;
  printf "callveil added latency at half max: p50 %.1f us, p99 %.1f us (relay %.1f/%.1f, direct %.1f/%.1f)\n", c50 - d50, c99 - d99, c50, c99, d50, d99;
}'
