#!/usr/bin/env bash
# New TLS handshakes per second: Gatehouse, nginx and HAProxy terminating the
# same ECDSA P-256 certificate with TLS 1.3 only and session resumption off
# everywhere (every connection is a full handshake), each answering by itself
# (Gatehouse: its redirect action, 308; nginx: return 200; HAProxy:
# http-request return), so the figure is the handshake plus one tiny
# response. Load: wrk with "Connection: close" (one handshake per request),
# pinned to CPU 0; servers pinned to CPU 1, one worker each; runs
# interleaved A B C A B C so drift hits every target alike.
#   usage: bench/tls_handshake.sh            (REPS=3, DURATION=10s, CONNS=50)
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${GATEHOUSE_BIN:-$HERE/target/release/gatehouse}
REPS=${REPS:-3}; DURATION=${DURATION:-10s}; CONNS=${CONNS:-50}
BASE=${BASE_PORT:-18140}
P_OURS=$BASE; P_NGINX=$((BASE + 1)); P_HAPROXY=$((BASE + 2))
LOADGEN_CPU=${LOADGEN_CPU:-0}; SERVER_CPU=${SERVER_CPU:-1}
ulimit -n "$(ulimit -Hn)"
RUN=$(mktemp -d /tmp/gh-tls.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null
cat "$RUN/cert.pem" "$RUN/key.pem" >"$RUN/combined.pem"

cat >"$RUN/gatehouse.toml" <<CONF
workers = 1
admin.enabled = false
log.level = "warn"
[[certificates]]
cert = "$RUN/cert.pem"
key = "$RUN/key.pem"
default = true
[[listeners]]
name = "https"
bind = "127.0.0.1:$P_OURS"
backlog = 4096
protocol = "https"
tls = { min_version = "1.3", alpn = ["http/1.1"], session_resumption = false }
http.access_log = false
[[routes]]
name = "r"
match.listener = "https"
action = { redirect_https = true }
CONF
cat >"$RUN/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 65536;
pid $RUN/nginx.pid; error_log $RUN/nginx.err warn;
events { worker_connections 65536; }
http { access_log off; keepalive_timeout 300s;
  client_body_temp_path $RUN/cb; proxy_temp_path $RUN/px; fastcgi_temp_path $RUN/fc; uwsgi_temp_path $RUN/uw; scgi_temp_path $RUN/sc;
  server { listen 127.0.0.1:$P_NGINX ssl backlog=4096;
    ssl_certificate $RUN/cert.pem; ssl_certificate_key $RUN/key.pem;
    ssl_protocols TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    location / { return 200 "ok\n"; } } }
CONF
cat >"$RUN/haproxy.cfg" <<CONF
global
  maxconn 20000
  nbthread 1
  tune.ssl.cachesize 0
defaults
  mode http
  timeout client 300s
  timeout server 300s
  timeout connect 5s
frontend tls
  bind 127.0.0.1:$P_HAPROXY ssl crt $RUN/combined.pem ssl-min-ver TLSv1.3 no-tls-tickets alpn http/1.1
  http-request return status 200 content-type text/plain string "ok"
CONF

start() { taskset -c "$SERVER_CPU" "$@" >"$RUN/$(basename "$1").out" 2>&1 & PIDS+=($!); }
start "$BIN" run --config "$RUN/gatehouse.toml"
start nginx -c "$RUN/nginx.conf"
start haproxy -f "$RUN/haproxy.cfg" -db
for p in $P_OURS $P_NGINX $P_HAPROXY; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done

declare -A results
for rep in $(seq "$REPS"); do
  for target in gatehouse:$P_OURS nginx:$P_NGINX haproxy:$P_HAPROXY; do
    name=${target%%:*}; port=${target##*:}
    rate=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" -H "Connection: close" \
      "https://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
    results[$name]+="$rate "
    echo "rep $rep $name: $rate handshakes/s"
    sleep 1
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
echo "median new TLS 1.3 handshakes/s (ECDSA P-256, no resumption, $REPS x $DURATION, $CONNS conns):"
ours=$(echo "${results[gatehouse]}" | median)
for name in gatehouse nginx haproxy; do
  m=$(echo "${results[$name]}" | median)
  printf "  %-10s %10.0f  (gatehouse / %s = %.2f)\n" "$name" "$m" "$name" "$(echo "$ours / $m" | bc -l)"
done
