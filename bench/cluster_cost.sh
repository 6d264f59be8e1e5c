#!/usr/bin/env bash
# What balancing and health checks cost the HTTP/1.1 keep-alive scenario
# (wrk, 50 connections, an nginx backend, the proxy and the backend on
# CPU 1, wrk on CPU 0): one target, against a cluster of four endpoints
# (the same nginx on four loopback addresses) with active HTTP health
# checks every second, for each balancing algorithm. Runs alternate
# (single, round_robin, least_request, peak_ewma, hash) and repeat; the
# report is the rate and the proxy's CPU per request of each.
#   usage: bench/cluster_cost.sh [SECONDS_PER_RUN] [ROUNDS]   (default 8 2)
# Needs nginx and wrk (bench/compare/install.sh installs them).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
DUR=${1:-8}
ROUNDS=${2:-2}
bench_setup cluster
cargo build --release --manifest-path "$ROOT/Cargo.toml" >/dev/null 2>&1
G=$ROOT/target/release/gatehouse
PORT=18110 LISTEN=127.0.0.1:18111
HZ=$(getconf CLK_TCK)

nginx_backend 1 "127.0.0.1:$PORT" "127.0.0.2:$PORT" "127.0.0.3:$PORT" "127.0.0.4:$PORT"
wait_ports $PORT

config() { # $1: "single" or a balance setting
  local route cluster=
  if [ "$1" = single ]; then
    route="action.forward = [\"127.0.0.1:$PORT\"]"
  else
    route='action.cluster = "four"'
    cluster="[[clusters]]
name = \"four\"
endpoints = [{ address = \"127.0.0.1:$PORT\" }, { address = \"127.0.0.2:$PORT\" }, { address = \"127.0.0.3:$PORT\" }, { address = \"127.0.0.4:$PORT\" }]
$1
health = { path = \"/\", interval = \"1s\", timeout = \"500ms\" }"
  fi
  cat <<CONF
workers = 1
admin.bind = "127.0.0.1:0"
[[listeners]]
name = "bench"
bind = "$LISTEN"
backlog = 4096
protocol = "http"
http.access_log = false
[[routes]]
name = "bench"
$route
policy.pool_max_idle = 256
$cluster
CONF
}

run() { # $1: config name, $2: balance setting; prints "rate cpu_us_per_req"
  config "$2" >"$RUN/$1.toml"
  taskset -c 1 "$G" run --config "$RUN/$1.toml" --no-watch 2>"$RUN/$1.log" &
  local pid=$!
  wait_ports 18111
  taskset -c 0 wrk -t1 -c50 -d2s "http://$LISTEN/" >/dev/null   # warm-up
  local t0 t1 out
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(taskset -c 0 wrk -t1 -c50 -d"${DUR}s" "http://$LISTEN/")
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local reqs rate
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  echo "$rate $(echo "($t1 - $t0) / $HZ * 1000000 / $reqs" | bc -l)"
}

declare -A RATE CPU
NAMES="single round_robin least_request peak_ewma hash"
for r in $(seq "$ROUNDS"); do
  for n in $NAMES; do
    case $n in
      single) setting=single ;;
      hash) setting='balance = "hash"
hash_key = "client_ip"' ;;
      *) setting="balance = \"$n\"" ;;
    esac
    read -r rate cpu < <(run "$n" "$setting")
    printf 'round %s %-14s %10.0f req/s  %6.2f CPU µs/req\n' "$r" "$n" "$rate" "$cpu"
    RATE[$n]=$(echo "${RATE[$n]:-0} + $rate" | bc -l)
    CPU[$n]=$(echo "${CPU[$n]:-0} + $cpu" | bc -l)
  done
done
echo "mean over $ROUNDS rounds (four endpoints with health checks, against one target):"
for n in $NAMES; do
  printf '  %-14s %10.0f req/s  %6.2f CPU µs/req  (%+.1f %% CPU)\n' "$n" \
    "$(echo "${RATE[$n]} / $ROUNDS" | bc -l)" "$(echo "${CPU[$n]} / $ROUNDS" | bc -l)" \
    "$(echo "(${CPU[$n]} - ${CPU[single]}) / ${CPU[single]} * 100" | bc -l)"
done
