# Shared by the bench scripts (sourced): a run directory and the processes
# started, both cleaned up at exit, and a wait for ports to accept.
#   bench_setup NAME      RUN=/tmp/gh-NAME.XXXXXX, PIDS=(), cleanup trap
#   wait_ports PORT...    until each accepts a connection (10 s at most each)
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
