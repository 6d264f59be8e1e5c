#!/usr/bin/env bash
# What filters cost the HTTP/1.1 keep-alive scenario (wrk, 50 connections,
# an nginx backend; the proxy and the backend on CPU 1, wrk on CPU 0): a
# bare route, against the same route with JWT authentication (HS256, every
# request carrying the same token), a rate limit per client address (set
# high enough never to refuse) and two header rules; the bare route sent
# the same requests, token included (what the filters cost apart from
# the longer request); and nginx as a bare
# proxy on the same layout; and the same route with a response cache
# (every request a hit) against wrk going straight to the backend. Runs
# alternate and repeat; the report is the
# rate and the proxy's CPU per request of each. BACKEND_CPU=0 puts the
# backend beside wrk on CPU 0 and leaves CPU 1 to the proxy alone (the
# proxy's own cost, without the scheduling effects of sharing a CPU with
# its backend that a real deployment does not have).
#   usage: [BACKEND_CPU=0|1] bench/filter_cost.sh [SECONDS_PER_RUN] [ROUNDS]   (default 8 3)
# Needs nginx and wrk (bench/compare/install.sh installs them).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
DUR=${1:-8}
ROUNDS=${2:-3}
bench_setup filters
cargo build --release --manifest-path "$ROOT/Cargo.toml" >/dev/null 2>&1
G=$ROOT/target/release/gatehouse
PORT=18120 LISTEN=127.0.0.1:18121
HZ=$(getconf CLK_TCK)
SECRET=bench-secret-bench-secret-bench-secret
# {"sub":"bench","exp":4102444800} (2100-01-01), HS256 with $SECRET.
TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
head = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b(json.dumps({"sub": "bench", "exp": 4102444800}).encode())
sig = b(hmac.new(sys.argv[1].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
PY
)

BACKEND_CPU=${BACKEND_CPU:-1}
# The backend's answers may be cached for an hour (the cached runs).
NGINX_LOCATION='add_header Cache-Control "max-age=3600";' \
  nginx_backend "$BACKEND_CPU" "127.0.0.1:$PORT"
wait_ports $PORT

config() { # $1: bare, token (the bare route), filtered or cached
  local filters=
  if [ "$1" = cached ]; then
    filters="filters = [\"cache\"]
[[filters]]
name = \"cache\"
kind = \"cache\""
  fi
  if [ "$1" = filtered ]; then
    filters="filters = [\"token\", \"per-client\", \"route\", \"client\"]
[[filters]]
name = \"token\"
kind = \"jwt\"
algorithm = \"HS256\"
secret = \"$SECRET\"
claims_to_headers = { sub = \"x-user\" }
[[filters]]
name = \"per-client\"
kind = \"rate_limit\"
rate = \"10000000/s\"
[[filters]]
name = \"route\"
kind = \"headers\"
request_set = { x-gatehouse-route = \"{route}\" }
[[filters]]
name = \"client\"
kind = \"headers\"
request_set = { x-real-ip = \"{client_ip}\" }"
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
action.forward = ["127.0.0.1:$PORT"]
policy.pool_max_idle = 256
$filters
CONF
}

nginx_proxy_conf() {
  cat <<CONF
worker_processes 1;
pid $RUN/proxy.pid;
error_log $RUN/proxy.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  upstream b { server 127.0.0.1:$PORT; keepalive 256; }
  server { listen $LISTEN backlog=4096;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
}

cpu_of() { # CPU ticks of $1 and its children (nginx's worker)
  local t=0 p
  for p in "$1" $(pgrep -P "$1"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

run() { # $1: bare, token, filtered, nginx, cached or direct; prints "rate cpu_us_per_req"
  if [ "$1" = direct ]; then
    run_direct
    return
  fi
  if [ "$1" = nginx ]; then
    nginx_proxy_conf >"$RUN/proxy.conf"
    taskset -c 1 nginx -c "$RUN/proxy.conf" -e "$RUN/proxy.err" -g 'daemon off;' &
  else
    config "$1" >"$RUN/$1.toml"
    taskset -c 1 "$G" run --config "$RUN/$1.toml" --no-watch 2>"$RUN/$1.log" &
  fi
  local pid=$!
  wait_ports 18121
  # (The token only where it is checked: a shared cache stores no
  # response to a request with credentials.)
  local auth=()
  [ "$1" != filtered ] && [ "$1" != token ] || auth=(-H "Authorization: Bearer $TOKEN")
  taskset -c 0 wrk -t1 -c50 -d2s ${auth[@]+"${auth[@]}"} "http://$LISTEN/" >/dev/null   # warm-up
  local t0 t1 out
  t0=$(cpu_of "$pid")
  out=$(taskset -c 0 wrk -t1 -c50 -d"${DUR}s" ${auth[@]+"${auth[@]}"} "http://$LISTEN/")
  t1=$(cpu_of "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local reqs rate non2xx
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  [ -z "$non2xx" ] || { echo "$1: $non2xx answers were not 2xx" >&2; exit 1; }
  echo "$rate $(echo "($t1 - $t0) / $HZ * 1000000 / $reqs" | bc -l)"
}

run_direct() { # wrk straight to the backend: its rate (no proxy CPU)
  local out
  taskset -c 0 wrk -t1 -c50 -d2s "http://127.0.0.1:$PORT/" >/dev/null
  out=$(taskset -c 0 wrk -t1 -c50 -d"${DUR}s" "http://127.0.0.1:$PORT/")
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") 0"
}

declare -A RATE CPU
NAMES="bare token filtered nginx cached direct"
for r in $(seq "$ROUNDS"); do
  for n in $NAMES; do
    read -r rate cpu < <(run "$n")
    printf 'round %s %-9s %10.0f req/s  %6.2f CPU µs/req\n' "$r" "$n" "$rate" "$cpu"
    RATE[$n]=$(echo "${RATE[$n]:-0} + $rate" | bc -l)
    CPU[$n]=$(echo "${CPU[$n]:-0} + $cpu" | bc -l)
  done
done
echo "mean over $ROUNDS rounds, backend on CPU $BACKEND_CPU (filtered: jwt + rate_limit + two header rules; token: the bare route, sent the filtered route's requests):"
for n in $NAMES; do
  printf '  %-9s %10.0f req/s (%.3f× bare)  %6.2f CPU µs/req\n' "$n" \
    "$(echo "${RATE[$n]} / $ROUNDS" | bc -l)" "$(echo "${RATE[$n]} / ${RATE[bare]}" | bc -l)" \
    "$(echo "${CPU[$n]} / $ROUNDS" | bc -l)"
done
printf '  filtered against token: %.3f×\n' "$(echo "${RATE[filtered]} / ${RATE[token]}" | bc -l)"
