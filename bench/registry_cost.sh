#!/usr/bin/env bash
# What the service registry costs: 10,000 instances registered in one
# service over the admin API in a burst (one keep-alive connection, as
# fast as it answers: the admin API's answer times, each PUT and GET
# /healthz every 10 ms, the proxy's CPU and resident memory per instance,
# then with the pools a request through the service's route makes); then
# the HTTP/1.1 keep-alive scenario through another route (50 connections,
# an nginx backend; wrk and the registrars on CPU 0, the proxy alone on
# CPU 1, one worker) alternately alone, beside the same paced client
# sending to the backend instead (a control), and while 10,000 more
# instances register at a pace over its 10 s: the data plane's rate and
# the proxy's CPU per request in each.
#   usage: bench/registry_cost.sh [INSTANCES] [ROUNDS]   (default 10000 3)
# Needs nginx and wrk (bench/compare/install.sh installs them).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
N=${1:-10000}
ROUNDS=${2:-3}
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

# The burst's registrar: PUTs N instances one after the other, then
# reports its answer times and the /healthz probes' (a thread, every
# 10 ms, on connections of its own).
registrar() {
  taskset -c 0 python3 - "$ADMIN" "$N" <<'PY'
import http.client, json, sys, threading, time
host, port = sys.argv[1].split(":"); n = int(sys.argv[2])
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
    body = json.dumps({"address": f"127.{1 + i // 65000}.{(i // 250) % 250}.{1 + i % 250}:8080", "ttl": "1h"})
    t = time.perf_counter()
    try:
        c.request("PUT", f"/v1/services/bulk/instances/i{i}", body=body)
        r = c.getresponse(); r.read()
    except (http.client.HTTPException, ConnectionError):
        # (The admin listener ends a connection after 60 s: a new one.)
        c.close(); c = http.client.HTTPConnection(host, int(port), timeout=10)
        c.request("PUT", f"/v1/services/bulk/instances/i{i}", body=body)
        r = c.getresponse(); r.read()
    assert r.status == 201, r.status
    puts.append(time.perf_counter() - t)
total = time.perf_counter() - t0
stop = True; th.join()
q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1000
print(f"burst: registered {n} in {total:.1f} s ({n / total:.0f}/s); PUT ms p50 {q(puts, .5):.2f} p99 {q(puts, .99):.2f} max {max(puts) * 1000:.2f}; "
      f"GET /healthz ms p50 {q(health, .5):.2f} p99 {q(health, .99):.2f} max {max(health) * 1000:.2f} ({len(health)} probes)")
PY
}

# The paced registrar: N PUTs, one every 10 s / N, over one keep-alive
# connection (wrk with a script: a client as light as the load
# generator's, where a Python client would take CPU 0 from wrk and
# nginx and lower the rate for reasons of its own).
paced_registrar() { # $1: seconds to spread them over, $2: the ids' prefix, $3: their port, $4: where to (host:port)
  cat >"$RUN/paced.lua" <<LUA
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } gh_timespec;
int clock_gettime(int clock, gh_timespec *tp);
]]
local ts = ffi.new("gh_timespec")
local function now_ms() -- CLOCK_MONOTONIC
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local n, every, t0, i, done = $N, $1 * 1000 / $N, nil, 0, 0
request = function()
  local a = string.format("127.%d.%d.%d:$3", 1 + math.floor(i / 65000), math.floor(i / 250) % 250, 1 + i % 250)
  local body = '{"address": "' .. a .. '", "ttl": "1h"}'
  local path = "/v1/services/bulk/instances/$2" .. i
  i = i + 1
  return wrk.format("PUT", path, { ["Content-Type"] = "application/json" }, body)
end
response = function()
  done = done + 1
  if done >= n then wrk.thread:stop() end
end
delay = function() -- until the next one's time (none after the last)
  if done >= n then return 60000 end
  t0 = t0 or now_ms()
  local d = t0 + done * every - now_ms()
  return d > 0 and math.floor(d) or 0
end
LUA
  taskset -c 0 wrk -t1 -c1 -d"$(($1 + 2))s" --latency -s "$RUN/paced.lua" "http://$4/"
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
registrar >"$RUN/reg.out"
cpu1=$(cpu_ticks "$GPID")
rss1=$(rss_kib "$GPID")
# One request through the service's route: its pools are made (one per
# instance), as any traffic there makes them.
curl -s -o /dev/null --max-time 2 "http://$LISTEN/bulk/x" || true
rss2=$(rss_kib "$GPID")
# The data plane right after the burst: what the burst leaves behind.
settled=$(wrk_rate 10)
# Then, alternating (the host's speed drifts more between runs than the
# effect measured), ROUNDS times, 10 s of wrk each:
#   alone;
#   control: the paced client sends its N PUTs to the nginx backend
#     instead (the same load on CPU 0, none on the proxy's);
#   renewing: the paced client PUTs the burst's N registrations again,
#     unchanged (the admin API's and the registry's work per request,
#     without a change to any endpoint set);
#   registering: N more instances register at a pace over the 10 s (a
#     large deploy; each round adds N, so the service grows to
#     N * (ROUNDS + 1)).
# Each gives the data plane's rate and the proxy's CPU per data-plane
# request (its registrations' work included).
per_req() { echo "($2 - $1) * 1000000 / $(getconf CLK_TCK) / ($3 * 10)" | bc -l; }
phase() { # $1: "" (alone), or the paced client's target, ids' prefix and port; prints "rate cpu"
  local c0 c1 rate rp=
  if [ -n "$1" ]; then
    paced_registrar 10 "$2" "$3" "$1" >"$RUN/paced.out" &
    rp=$!
  fi
  c0=$(cpu_ticks "$GPID")
  rate=$(wrk_rate 10)
  c1=$(cpu_ticks "$GPID")
  if [ -n "$rp" ]; then
    wait "$rp"
    awk -v to="$1" '/requests in/ {n = $1} /Non-2xx/ {bad = $NF} / 50%/ {p50 = $2} / 99%/ {p99 = $2}
      END {printf "  (paced client to %s: %d PUTs, p50 %s p99 %s, %d not 2xx)\n", to, n, p50, p99, bad > "/dev/stderr"}' "$RUN/paced.out"
  fi
  echo "$rate $(per_req "$c0" "$c1" "$rate")"
}
declare -A RATE CPU
for r in $(seq "$ROUNDS"); do
  line="round $r:"
  for p in alone control renewing registering; do
    case $p in
      alone) read -r rate cpu < <(phase "") ;;
      control) read -r rate cpu < <(phase "127.0.0.1:$PORT" "c$r" 8080) ;;
      renewing) read -r rate cpu < <(phase "$ADMIN" i 8080) ;;
      registering) read -r rate cpu < <(phase "$ADMIN" "r$r" $((8080 + r))) ;;
    esac
    line+=$(printf ' %s %.0f req/s (%.2f µs/req, busy %.0f %%);' "$p" "$rate" "$cpu" "$(echo "$rate * $cpu / 10000" | bc -l)")
    RATE[$p]=$(echo "${RATE[$p]:-0} + $rate" | bc -l)
    CPU[$p]=$(echo "${CPU[$p]:-0} + $cpu" | bc -l)
  done
  echo "$line"
done
cat "$RUN/reg.out"
count=$(curl -s "http://$ADMIN/v1/clusters" | python3 -c 'import json,sys; print([len(c["endpoints"]) for c in json.load(sys.stdin)["clusters"] if c["name"]=="bulk"][0])')
echo "cluster bulk: $count endpoints at the end"
echo "data plane: $before req/s before the burst, $settled right after it ($(echo "$settled / $before" | bc -l | cut -c1-5)×)"
# (The paced client's own CPU is beside wrk and nginx on the other core
# here, elsewhere in production: the control phase shows what it costs
# the data plane by that alone.)
ratio() { echo "${RATE[$1]} / ${RATE[$2]}" | bc -l | cut -c1-5; }
cpu() { echo "${CPU[$1]} / $ROUNDS" | bc -l | cut -c1-5; }
over() { echo "(${CPU[$1]} / ${CPU[control]} - 1) * 100" | bc -l | cut -c1-5; }
echo "mean of $ROUNDS rounds: rate with the registrations $(ratio registering alone)× alone and $(ratio registering control)× control (control $(ratio control alone)× alone, renewing $(ratio renewing control)× control); proxy CPU per data-plane request $(cpu alone) µs alone, $(cpu control) control, $(cpu renewing) renewing ($(over renewing) % over control), $(cpu registering) registering ($(over registering) %)"
echo "proxy CPU per registration (burst, no other traffic): $(echo "($cpu1 - $cpu0) * 1000000 / $(getconf CLK_TCK) / $N" | bc) µs"
echo "resident memory: $rss0 KiB before, $rss1 KiB after the burst: $(echo "($rss1 - $rss0) * 1024 / $N" | bc) bytes per instance; $rss2 KiB once a request made the route's pools: $(echo "($rss2 - $rss0) * 1024 / $N" | bc) bytes per instance"
kill "$GPID"
