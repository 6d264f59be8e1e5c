#!/usr/bin/env bash
# Memory per idle WebSocket: Gatehouse against HAProxy (HTTP mode, one
# thread), both in front of one backend that answers every upgrade with 101
# and stays silent (bench/tools/ws_idle.py). Opens N WebSockets through
# each proxy, then reports (RSS after - RSS before) / N for the proxy
# process, as bench/l4_idle_memory.sh does for L4 connections.
#   usage: bench/ws_idle_memory.sh [N]     (default 10000; needs ulimit -n > 2N+500)
# Needs haproxy and a release build (cargo build --release).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-10000}
BASE=${BASE_PORT:-18150}
P_BACKEND=$BASE; P_HAPROXY=$((BASE + 1)); P_OURS=$((BASE + 2))
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup ws

cat >"$RUN/haproxy.cfg" <<CONF
global
  maxconn $((N + 1000))
  nbthread 1
  no strict-limits
defaults
  mode http
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout tunnel 600s
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  server s1 127.0.0.1:$P_BACKEND
CONF
cat >"$RUN/gatehouse.toml" <<CONF
workers = 1
admin.bind = "127.0.0.1:0"
[limits]
max_connections = $((N + 1000))
[[listeners]]
name = "ws"
bind = "127.0.0.1:$P_OURS"
backlog = 4096
protocol = "http"
http.access_log = false
[[routes]]
name = "ws"
action.forward = ["127.0.0.1:$P_BACKEND"]
policy.allow_upgrade = true
CONF

python3 "$HERE/bench/tools/ws_idle.py" backend --port "$P_BACKEND" & PIDS+=($!)
haproxy -db -f "$RUN/haproxy.cfg" & PIDS+=($!); HAPROXY_PID=$!
${GH_ENV:-} "$HERE/target/release/gatehouse" run --config "$RUN/gatehouse.toml" 2>"$RUN/gh.log" & PIDS+=($!); OURS_PID=$!
wait_ports $P_BACKEND $P_HAPROXY $P_OURS

rss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
measure() {  # name pid port
  local before after
  sleep 1
  before=$(rss "$2")
  python3 "$HERE/bench/tools/ws_idle.py" clients --port "$3" -n "$N" >"$RUN/idle.$1" 2>&1 & local idle=$!
  for _ in $(seq 1200); do grep -qs READY "$RUN/idle.$1" && break; sleep 0.1; done
  sleep 3  # idle: longer than Gatehouse's parking delay for tunnels (2 s)
  after=$(rss "$2")
  echo "$1: $(grep -o 'ok=[0-9]* failed=[0-9]*' "$RUN/idle.$1"), RSS ${before} -> ${after} KiB, $(awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN{printf "%.2f", (a-b)/n}') KiB per idle WebSocket"
  kill "$idle"; wait "$idle" 2>/dev/null || true
}
measure haproxy "$HAPROXY_PID" "$P_HAPROXY"
measure gatehouse "$OURS_PID" "$P_OURS"
