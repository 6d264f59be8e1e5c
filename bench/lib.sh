# Shared by the bench scripts (sourced): a run directory and the processes
# started, both cleaned up at exit, and a wait for ports to accept.
#   bench_setup NAME      RUN=/tmp/gh-NAME.XXXXXX, PIDS=(), cleanup trap
#   wait_ports PORT...    until each accepts a connection (10 s at most each)
#   nginx_backend CPU ADDR...  an nginx backend answering "hello" on each address
bench_setup() {
  ulimit -n "$(ulimit -Hn)"
  RUN=$(mktemp -d "/tmp/gh-$1.XXXXXX")
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RUN"' EXIT
}

wait_ports() {
  local p
  for p in "$@"; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
  done
}

# nginx_backend CPU ADDR...: an nginx answering "hello" on each address
# (keep-alive without a request limit), pinned to CPU; it joins PIDS.
# NGINX_LOCATION: directives added before the answer (headers, say).
nginx_backend() {
  local cpu=$1 listens="" a
  shift
  for a in "$@"; do listens+="listen $a backlog=4096; "; done
  cat >"$RUN/nginx.conf" <<CONF
worker_processes 1;
pid $RUN/nginx.pid;
error_log $RUN/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  server { $listens location / { ${NGINX_LOCATION:-} return 200 "hello\n"; } }
}
CONF
  taskset -c "$cpu" nginx -c "$RUN/nginx.conf" -e "$RUN/nginx.err" -g 'daemon off;' &
  PIDS+=($!)
}
