#!/usr/bin/env bash
# HTTP/2 rapid reset: Gatehouse against HAProxy (HTTP mode, h2c frontend, one
# thread), both in front of one nginx backend that answers 200 "ok".
# bench/tools/rapid_reset.py sends GET HEADERS each followed by RST_STREAM,
# reconnecting whenever the proxy closes the connection, for DURATION
# seconds per mode (`same`: HEADERS and resets in one write; `split`: the
# resets in a second write). Reported per target and mode: resets the
# attacker wrote per second (a proxy that ends the connection with GOAWAY
# discards what follows: compare CPU, not this rate), connections the
# attacker had to open, requests that reached the backend, and the proxy's
# CPU (utime + stime of its process) in % of one core, for the same
# attacker at full speed.
#   usage: bench/h2_rapid_reset.sh      (DURATION=10, PROCS=2)
# Needs haproxy, nginx and a release build (cargo build --release).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${GATEHOUSE_BIN:-$HERE/target/release/gatehouse}
DURATION=${DURATION:-10}; PROCS=${PROCS:-2}
BASE=${BASE_PORT:-18160}
P_BACKEND=$BASE; P_HAPROXY=$((BASE + 1)); P_OURS=$((BASE + 2))
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup rr

cat >"$RUN/nginx.conf" <<CONF
daemon off;
master_process off;
user root;
pid $RUN/nginx.pid;
error_log $RUN/nginx.err;
events { worker_connections 4096; }
http {
  access_log $RUN/access.log;
  server {
    listen 127.0.0.1:$P_BACKEND;
    location / { return 200 "ok"; }
  }
}
CONF
cat >"$RUN/haproxy.cfg" <<CONF
global
  maxconn 8000
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$P_HAPROXY proto h2
  default_backend be
backend be
  server s1 127.0.0.1:$P_BACKEND
CONF
cat >"$RUN/gatehouse.toml" <<CONF
workers = 1
admin.enabled = false
log.level = "warn"
[[listeners]]
name = "web"
bind = "127.0.0.1:$P_OURS"
backlog = 4096
protocol = "http"
http.h2c = true
http.access_log = false
[[routes]]
name = "app"
action.forward = ["127.0.0.1:$P_BACKEND"]
CONF

nginx -c "$RUN/nginx.conf" & PIDS+=($!)
haproxy -db -f "$RUN/haproxy.cfg" & PIDS+=($!); HAPROXY_PID=$!
"$BIN" run --config "$RUN/gatehouse.toml" 2>"$RUN/gh.log" & PIDS+=($!); OURS_PID=$!
wait_ports $P_BACKEND $P_HAPROXY $P_OURS

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
measure() {  # name pid port mode
  local t0 t1 upstream0 upstream1 out
  upstream0=$(wc -l <"$RUN/access.log" 2>/dev/null || echo 0)
  t0=$(ticks "$2")
  out=$(python3 "$HERE/bench/tools/rapid_reset.py" --port "$3" --seconds "$DURATION" --procs "$PROCS" --mode "$4")
  t1=$(ticks "$2")
  sleep 1
  upstream1=$(wc -l <"$RUN/access.log" 2>/dev/null || echo 0)
  local resets conns
  resets=$(sed -n 's/.*resets=\([0-9]*\).*/\1/p' <<<"$out")
  conns=$(sed -n 's/.*connections=\([0-9]*\).*/\1/p' <<<"$out")
  awk -v n="$1" -v m="$4" -v r="$resets" -v c="$conns" -v d="$DURATION" -v t=$((t1 - t0)) -v hz="$HZ" -v u=$((upstream1 - upstream0)) \
    'BEGIN{cpu=t/hz; printf "| %s | %s | %.0f | %d | %d | %.1f |\n", n, m, r/d, c, u, 100*cpu/d}'
}
echo "| target | mode | resets written/s | connections opened | requests upstream | proxy CPU % of a core |"
echo "|---|---|---:|---:|---:|---:|"
for mode in same split; do
  measure haproxy "$HAPROXY_PID" "$P_HAPROXY" "$mode"
  measure gatehouse "$OURS_PID" "$P_OURS" "$mode"
done
