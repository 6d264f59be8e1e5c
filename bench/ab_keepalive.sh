#!/usr/bin/env bash
# Two builds of Gatehouse side by side on the keep-alive scenario (wrk, 50
# connections, an nginx backend, one worker), alternating runs, each
# build's CPU per request. By default the proxy has CPU 1 to itself and
# the backend shares CPU 0 with wrk (BACKEND_CPU=1 puts it beside the
# proxy, as bench/run.sh does): what a proxy costs per request without
# the scheduling effects of a backend on its CPU.
#   usage: bench/ab_keepalive.sh OLD_BINARY NEW_BINARY [SECONDS] [ROUNDS]
# Needs nginx and wrk (bench/compare/install.sh installs them).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
OLD=$1 NEW=$2 DUR=${3:-10} ROUNDS=${4:-3}
BACKEND_CPU=${BACKEND_CPU:-0}
bench_setup ab
BACKEND=127.0.0.1:18120 LISTEN=127.0.0.1:18121
HZ=$(getconf CLK_TCK)
nginx_backend "$BACKEND_CPU" "$BACKEND"
wait_ports 18120

run() { # $1: binary; prints "rate cpu_us_per_req"
  LISTEN_ADDR=$LISTEN BACKEND_ADDR=$BACKEND WORKERS=1 \
    taskset -c 1 "$1" run --config "$ROOT/examples/bench/http.toml" 2>"$RUN/gh.log" &
  local pid=$!
  wait_ports 18121
  taskset -c 0 wrk -t1 -c50 -d2s "http://$LISTEN/" >/dev/null
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

o_cpu=0 n_cpu=0 o_rate=0 n_rate=0
for r in $(seq "$ROUNDS"); do
  read -r rate cpu < <(run "$OLD"); printf 'round %s old %10.0f req/s %6.2f CPU µs/req\n' "$r" "$rate" "$cpu"
  o_cpu=$(echo "$o_cpu + $cpu" | bc -l); o_rate=$(echo "$o_rate + $rate" | bc -l)
  read -r rate cpu < <(run "$NEW"); printf 'round %s new %10.0f req/s %6.2f CPU µs/req\n' "$r" "$rate" "$cpu"
  n_cpu=$(echo "$n_cpu + $cpu" | bc -l); n_rate=$(echo "$n_rate + $rate" | bc -l)
done
printf 'mean: old %.0f req/s %.2f µs/req, new %.0f req/s %.2f µs/req (%+.1f %% CPU per request)\n' \
  "$(echo "$o_rate / $ROUNDS" | bc -l)" "$(echo "$o_cpu / $ROUNDS" | bc -l)" \
  "$(echo "$n_rate / $ROUNDS" | bc -l)" "$(echo "$n_cpu / $ROUNDS" | bc -l)" \
  "$(echo "($n_cpu - $o_cpu) / $o_cpu * 100" | bc -l)"
