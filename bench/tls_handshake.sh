#!/usr/bin/env bash
# New TLS handshakes per second: Gatehouse, nginx and HAProxy terminating the
# same ECDSA P-256 certificate with TLS 1.3 only and session resumption off
# everywhere (every connection is a full handshake), each answering by itself
# (Gatehouse: its redirect action, 308; nginx: return 200; HAProxy:
# http-request return), so the figure is the handshake plus one tiny
# response. Load: wrk with "Connection: close" (one handshake per request),
# pinned to CPU 0; servers pinned to CPU 1, one worker each; runs
# interleaved A B C A B C so drift hits every target alike.
# On a 2-core machine the client's own handshake work (one wrk thread)
# saturates CPU 0 first, so the raw rate is capped by the client for every
# server; the comparable figure is the server's CPU time per handshake
# (utime + stime of its process during the run), reported as handshakes per
# server CPU-second.
#   usage: bench/tls_handshake.sh            (REPS=3, DURATION=10s, CONNS=50)
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${GATEHOUSE_BIN:-$HERE/target/release/gatehouse}
REPS=${REPS:-3}; DURATION=${DURATION:-10s}; CONNS=${CONNS:-50}
BASE=${BASE_PORT:-18140}
P_OURS=$BASE; P_NGINX=$((BASE + 1)); P_HAPROXY=$((BASE + 2))
LOADGEN_CPU=${LOADGEN_CPU:-0}; SERVER_CPU=${SERVER_CPU:-1}
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup tls

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
  maxconn 4000
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

declare -A pid
start() { local name=$1; shift; taskset -c "$SERVER_CPU" "$@" >"$RUN/$name.out" 2>&1 & PIDS+=($!); pid[$name]=$!; }
start gatehouse "$BIN" run --config "$RUN/gatehouse.toml"
start nginx nginx -c "$RUN/nginx.conf"
start haproxy haproxy -f "$RUN/haproxy.cfg" -db
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
wait_ports $P_OURS $P_NGINX $P_HAPROXY

declare -A results capacity
for rep in $(seq "$REPS"); do
  for target in gatehouse:$P_OURS nginx:$P_NGINX haproxy:$P_HAPROXY; do
    name=${target%%:*}; port=${target##*:}
    before=$(ticks "${pid[$name]}")
    out=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" -H "Connection: close" \
      "https://127.0.0.1:$port/")
    after=$(ticks "${pid[$name]}")
    rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    cap=$(echo "$total / (($after - $before) / $HZ)" | bc -l)
    results[$name]+="$rate "
    capacity[$name]+="$cap "
    printf "rep %s %-9s %8.0f handshakes/s (client-bound), %6.0f per server CPU-second (%.0f µs each)\n" \
      "$rep" "$name" "$rate" "$cap" "$(echo "1000000 / $cap" | bc -l)"
    sleep 1
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
echo "medians, new TLS 1.3 handshakes (ECDSA P-256, no resumption, $REPS x $DURATION, $CONNS conns):"
echo "  target     per second   per server CPU-second   gatehouse / target (CPU)"
ours=$(echo "${capacity[gatehouse]}" | median)
for name in gatehouse nginx haproxy; do
  m=$(echo "${results[$name]}" | median)
  c=$(echo "${capacity[$name]}" | median)
  printf "  %-10s %10.0f   %21.0f   %.2f\n" "$name" "$m" "$c" "$(echo "$ours / $c" | bc -l)"
done
