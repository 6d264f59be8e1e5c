#!/usr/bin/env bash
# Memory per idle L4 connection: Gatehouse (examples/bench/tcp.toml) against
# HAProxy in TCP mode, both in front of one nginx backend, on loopback.
# Opens N keep-alive connections through each proxy with
# bench/compare/tools/idle_conns.py (one small request each, then idle) and
# reports (RSS after - RSS before) / N for the proxy process.
#   usage: bench/l4_idle_memory.sh [N]     (default 10000; needs ulimit -n > 2N+500)
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS:-$HERE/bench/compare/tools}
N=${1:-10000}
BASE=${BASE_PORT:-18100}
P_BACKEND=$BASE; P_HAPROXY=$((BASE + 1)); P_OURS=$((BASE + 2))
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup idle

cat >"$RUN/nginx.conf" <<CONF
daemon off; master_process off; worker_rlimit_nofile 65536; pid $RUN/nginx.pid; error_log $RUN/nginx.err warn;
events { worker_connections 65536; }
http { access_log off; keepalive_timeout 600s; keepalive_requests 1000000;
  client_body_temp_path $RUN/cb; proxy_temp_path $RUN/px; fastcgi_temp_path $RUN/fc; uwsgi_temp_path $RUN/uw; scgi_temp_path $RUN/sc;
  server { listen 127.0.0.1:$P_BACKEND backlog=4096; location /small { return 200 "ok\n"; } } }
CONF
cat >"$RUN/haproxy.cfg" <<CONF
global
  maxconn $((N + 1000))
  nbthread 1
  no strict-limits
defaults
  mode tcp
  timeout connect 5s
  timeout client 600s
  timeout server 600s
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  server s1 127.0.0.1:$P_BACKEND
CONF

nginx -c "$RUN/nginx.conf" & PIDS+=($!)
haproxy -db -f "$RUN/haproxy.cfg" & PIDS+=($!); HAPROXY_PID=$!
LISTEN_ADDR=127.0.0.1:$P_OURS BACKEND_ADDR=127.0.0.1:$P_BACKEND WORKERS=1 \
  "$HERE/target/release/gatehouse" run --config "$HERE/examples/bench/tcp.toml" 2>"$RUN/gh.log" & PIDS+=($!); OURS_PID=$!
wait_ports $P_BACKEND $P_HAPROXY $P_OURS

rss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
measure() {  # name pid port
  local before after
  before=$(rss "$2")
  python3 "$TOOLS/idle_conns.py" --port "$3" -n "$N" --hold 600 >"$RUN/idle.$1" 2>&1 & local idle=$!
  for _ in $(seq 1200); do grep -qs READY "$RUN/idle.$1" && break; sleep 0.1; done
  sleep 1
  after=$(rss "$2")
  echo "$1: $(grep -o 'ok=[0-9]* failed=[0-9]*' "$RUN/idle.$1"), RSS ${before} -> ${after} KiB, $(awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN{printf "%.2f", (a-b)/n}') KiB per idle connection"
  kill "$idle"; wait "$idle" 2>/dev/null || true
  sleep 1
}
measure haproxy "$HAPROXY_PID" "$P_HAPROXY"
measure gatehouse "$OURS_PID" "$P_OURS"
