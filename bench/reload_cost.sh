#!/usr/bin/env bash
# What a config reload every second costs the HTTP/1.1 keep-alive rate:
# the bench's keep-alive scenario (wrk, 50 connections, an nginx backend,
# the proxy and the backend on CPU 1, wrk on CPU 0), alternating runs
# without reloads and with `POST /config/reload` every second, each reload
# adding or removing a route (so each builds and swaps a new snapshot).
#   usage: bench/reload_cost.sh [SECONDS_PER_RUN] [PAIRS]   (default 10 3)
# Needs nginx and wrk (bench/compare/install.sh installs them).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
DUR=${1:-10}
PAIRS=${2:-3}
bench_setup reload
cargo build --release --manifest-path "$ROOT/Cargo.toml" >/dev/null 2>&1
G=$ROOT/target/release/gatehouse
BACKEND=127.0.0.1:18100 LISTEN=127.0.0.1:18101 ADMIN=127.0.0.1:18102

nginx_backend 1 "$BACKEND"
cp "$ROOT/examples/bench/http.toml" "$RUN/gatehouse.toml"
extra=$'\n[[routes]]\nname = "reload-churn"\nmatch.listener = "bench"\nmatch.path_prefix = "/churn"\naction.forward = ["127.0.0.1:9"]\n'
LISTEN_ADDR=$LISTEN BACKEND_ADDR=$BACKEND ADMIN_ADDR=$ADMIN WORKERS=1 \
  taskset -c 1 "$G" run --config "$RUN/gatehouse.toml" --no-watch 2>"$RUN/gatehouse.log" &
PIDS+=($!)
wait_ports 18100 18101 18102

run() { # $1: with reloads (1) or not (0); prints the rate
  local reloader=
  if [ "$1" = 1 ]; then
    ( i=0
      while true; do
        sleep 1
        cp "$ROOT/examples/bench/http.toml" "$RUN/gatehouse.toml"
        if [ $((i % 2)) = 0 ]; then printf '%s' "$extra" >>"$RUN/gatehouse.toml"; fi
        curl -fsS -X POST "http://$ADMIN/config/reload" >/dev/null
        i=$((i + 1))
      done ) &
    reloader=$!
  fi
  taskset -c 0 wrk -t1 -c50 -d"${DUR}s" "http://$LISTEN/" | awk '/Requests\/sec/ {print $2}'
  if [ -n "$reloader" ]; then kill "$reloader"; wait "$reloader" 2>/dev/null || true; fi
}

taskset -c 0 wrk -t1 -c50 -d2s "http://$LISTEN/" >/dev/null   # warm-up
plain=0 reloading=0
for p in $(seq "$PAIRS"); do
  a=$(run 0); b=$(run 1)
  echo "pair $p: without reloads $a req/s, with a reload every second $b req/s"
  plain=$(echo "$plain + $a" | bc -l); reloading=$(echo "$reloading + $b" | bc -l)
done
metrics=$(curl -fsS "http://$ADMIN/metrics")
applied=$(awk '/^gatehouse_config_reloads_total\{result="applied"\}/ {print $2}' <<<"$metrics")
refused=$(awk '/^gatehouse_config_reloads_total\{result="refused"\}/ {print $2}' <<<"$metrics")
printf 'mean: %.0f req/s without, %.0f with (%+.2f %%); reloads: %s applied, %s refused\n' \
  "$(echo "$plain / $PAIRS" | bc -l)" "$(echo "$reloading / $PAIRS" | bc -l)" \
  "$(echo "($reloading - $plain) / $plain * 100" | bc -l)" "$applied" "$refused"
