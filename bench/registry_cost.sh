#!/usr/bin/env bash
# What the service registry costs: 10,000 instances registered in one
# service over the admin API (one keep-alive connection, as fast as it
# answers: the admin API's answer times, each PUT and GET /healthz every
# 10 ms, and the resident memory per instance, then with the pools a
# request through the service's route makes), the data plane's rate right
# after the burst, then 10,000 more spread
# over 10 s while wrk runs the HTTP/1.1 keep-alive scenario through another
# route (50 connections, an nginx backend, wrk and the registrar on CPU 0,
# the proxy alone on CPU 1, one worker): the data plane's rate before,
# during and after.
#   usage: bench/registry_cost.sh [INSTANCES]   (default 10000)
# Needs nginx and wrk (bench/compare/install.sh installs them).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
N=${1:-10000}
bench_setup registry
cargo build --release --manifest-path "$ROOT/Cargo.toml" >/dev/null 2>&1
G=$ROOT/target/release/gatehouse
PORT=18130 LISTEN=127.0.0.1:18131 ADMIN=127.0.0.1:18132

nginx_backend 0 "127.0.0.1:$PORT"
wait_ports $PORT

run_proxy() {
  cat >"$RUN/g.toml" <<CONF
workers = 1
admin.bind = "$ADMIN"
[[listeners]]
name = "bench"
bind = "$LISTEN"
backlog = 4096
protocol = "http"
http.access_log = false
[[routes]]
name = "bench"
match.path_prefix = "/"
action.forward = ["127.0.0.1:$PORT"]
policy.pool_max_idle = 256
[[routes]]
name = "bulk"
match.path_prefix = "/bulk/"
action.cluster = "bulk"
[[clusters]]
name = "bulk"
service = "bulk"
CONF
  taskset -c 1 "$G" run --config "$RUN/g.toml" --no-watch 2>"$RUN/g.log" &
  GPID=$!
  wait_ports 18131 18132
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# The process's CPU time so far, in clock ticks (user + system).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

wrk_rate() { # $1: seconds
  taskset -c 0 wrk -t1 -c50 -d"${1}s" "http://$LISTEN/" | awk '/Requests\/sec/ {print $2}'
}

# The registrar: PUTs N instances, then reports its answer times and the
# /healthz probes' (a thread, every 10 ms, on connections of its own).
registrar() { # $1: ids' prefix, $2: seconds to spread them over (0: as fast as answered)
  taskset -c 0 python3 - "$ADMIN" "$N" "$1" "$2" <<'PY'
import http.client, json, sys, threading, time
host, port = sys.argv[1].split(":"); n = int(sys.argv[2]); prefix = sys.argv[3]; spread = float(sys.argv[4])
stop = False; health = []
def probe():
    while not stop:
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        t = time.perf_counter(); c.request("GET", "/healthz"); c.getresponse().read()
        health.append(time.perf_counter() - t); c.close(); time.sleep(0.01)
th = threading.Thread(target=probe, daemon=True); th.start()
c = http.client.HTTPConnection(host, int(port), timeout=10)
puts = []; t0 = time.perf_counter()
for i in range(n):
    body = json.dumps({"address": f"127.{1 + i // 65000}.{(i // 250) % 250}.{1 + i % 250}:{8080 if prefix == 'i' else 8081}", "ttl": "1h"})
    if spread:
        time.sleep(max(0.0, t0 + i * spread / n - time.perf_counter()))
    t = time.perf_counter()
    try:
        c.request("PUT", f"/v1/services/bulk/instances/{prefix}{i}", body=body)
        r = c.getresponse(); r.read()
    except (http.client.HTTPException, ConnectionError):
        # (The admin listener ends a connection after 60 s: a new one.)
        c.close(); c = http.client.HTTPConnection(host, int(port), timeout=10)
        c.request("PUT", f"/v1/services/bulk/instances/{prefix}{i}", body=body)
        r = c.getresponse(); r.read()
    assert r.status == 201, r.status
    puts.append(time.perf_counter() - t)
total = time.perf_counter() - t0
stop = True; th.join()
q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1000
print(f"{'paced' if spread else 'burst'}: registered {n} in {total:.1f} s ({n / total:.0f}/s); PUT ms p50 {q(puts, .5):.2f} p99 {q(puts, .99):.2f} max {max(puts) * 1000:.2f}; "
      f"GET /healthz ms p50 {q(health, .5):.2f} p99 {q(health, .99):.2f} max {max(health) * 1000:.2f} ({len(health)} probes)")
PY
}

run_proxy
taskset -c 0 wrk -t1 -c50 -d2s "http://$LISTEN/" >/dev/null
t0=$(cpu_ticks "$GPID")
before=$(wrk_rate 10)
t1=$(cpu_ticks "$GPID")
rss0=$(rss_kib "$GPID")
# A burst: N registrations as fast as the admin API answers (its answer
# times; the registrar runs on CPU 0, beside wrk and nginx).
cpu0=$(cpu_ticks "$GPID")
registrar i 0 >"$RUN/reg.out"
cpu1=$(cpu_ticks "$GPID")
rss1=$(rss_kib "$GPID")
# One request through the service's route: its pools are made (one per
# instance), as any traffic there makes them.
curl -s -o /dev/null --max-time 2 "http://$LISTEN/bulk/x" || true
rss2=$(rss_kib "$GPID")
# The data plane right after the burst, before the paced registrations:
# what the burst leaves behind apart from what registering at a pace costs.
settled=$(wrk_rate 10)
# Then N more spread over 10 s (a large deploy) beside a wrk run of the
# same length: the data plane's rate while they register.
registrar j 10 >>"$RUN/reg.out" &
RP=$!
t2=$(cpu_ticks "$GPID")
during=$(wrk_rate 10)
t3=$(cpu_ticks "$GPID")
wait "$RP"
after=$(wrk_rate 10)
cat "$RUN/reg.out"
count=$(curl -s "http://$ADMIN/v1/clusters" | python3 -c 'import json,sys; print([len(c["endpoints"]) for c in json.load(sys.stdin)["clusters"] if c["name"]=="bulk"][0])')
echo "cluster bulk: $count endpoints"
echo "right after the burst: $settled req/s ($(echo "$settled / $before" | bc -l | cut -c1-5)×)"
echo "data plane: $before req/s before, $during during the paced registrations ($(echo "$during / $before" | bc -l | cut -c1-5)×), $after after, with $count endpoints ($(echo "$after / $before" | bc -l | cut -c1-5)×)"
# The proxy's CPU per data-plane request, registrations included: what
# its capacity is while they arrive, apart from the registrar's own CPU
# (beside wrk and nginx on the other core here; elsewhere in production).
per_req() { echo "($2 - $1) * 1000000 / $(getconf CLK_TCK) / ($3 * 10)" | bc -l | cut -c1-5; }
echo "proxy CPU per data-plane request (its registrations' work included): $(per_req "$t0" "$t1" "$before") µs before, $(per_req "$t2" "$t3" "$during") µs during the paced registrations"
echo "proxy CPU per registration (burst, no other traffic): $(echo "($cpu1 - $cpu0) * 1000000 / $(getconf CLK_TCK) / $N" | bc) µs"
echo "resident memory: $rss0 KiB before, $rss1 KiB after the burst: $(echo "($rss1 - $rss0) * 1024 / $N" | bc) bytes per instance; $rss2 KiB once a request made the route's pools: $(echo "($rss2 - $rss0) * 1024 / $N" | bc) bytes per instance"
kill "$GPID"
