#!/usr/bin/env bash
# One command for the figures in docs/performance.md: installs the peers and
# load generators (apt: nginx, HAProxy, Caddy, wrk, h2load; builds the
# Pingora peer with cargo), builds Gatehouse in release mode, and runs the
# side-by-side comparison (bench/compare/compare.sh) with Gatehouse as
# "ours" on examples/bench/{http,tcp}.toml. Results (report.md with req/s,
# latency, CPU per request, idle memory, socket hygiene) go to
# bench/compare/results/<UTC time>/.
#   usage: bench/run.sh                      full run, about 6 minutes
#          QUICK=1 bench/run.sh              smoke run, about 1 minute
#          PEERS="nginx haproxy" bench/run.sh   only these peers
#          SCENARIOS="h2_small h1_keepalive" bench/run.sh
#          FEATURES=send-batch bench/run.sh   Gatehouse built with these cargo features
#          TCP_CONFIG=examples/bench/tcp-kernel.toml SCENARIOS=tcp_1mib bench/run.sh
#                                             the L4 figure on the kernel path (nftables)
# Run as root (or with sudo available for apt), on an otherwise quiet host.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
"$HERE/compare/install.sh"
cargo build --release --manifest-path "$ROOT/Cargo.toml" ${FEATURES:+--features "$FEATURES"}
G=$ROOT/target/release/gatehouse
export PROXY_CMD="$G run --config $ROOT/examples/bench/http.toml"
export PROXY_TCP_CMD="$G run --config $ROOT/${TCP_CONFIG:-examples/bench/tcp.toml}"
exec "$HERE/compare/compare.sh" "$@"
