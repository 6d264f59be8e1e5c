#!/usr/bin/env bash
# Runs the whole Gatehouse test suite (unit + integration tests, each test in
# its own process via cargo-nextest). Installs what the tests need first:
# HAProxy (for the proxy-chain tests), iproute2 and nftables (the network
# partition test, the kernel path's tests), util-linux's setpriv (the kernel
# path without CAP_NET_ADMIN), curl and h2load (nghttp2-client),
# openssl (s_client for the TLS tests), Pebble (the ACME test CA, with
# its fake DNS pebble-challtestsrv) and Chromium (the dashboard test) from
# Debian's packages, and
# Python's websockets library (for the WebSocket test) from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
command -v ss >/dev/null 2>&1 || need_pkgs+=(iproute2)
# (The partition test: a backend in a network namespace cut off by nftables;
# the kernel path's tests: routes forwarded by nftables.)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need_pkgs+=(nftables)
command -v setpriv >/dev/null 2>&1 || need_pkgs+=(util-linux)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v h2load >/dev/null 2>&1 || need_pkgs+=(nghttp2-client)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v pebble >/dev/null 2>&1 || need_pkgs+=(pebble)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3 python3-pip)
# (The dashboard test drives headless Chromium; a font makes its screenshot legible.)
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium fonts-dejavu-core)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need_pkgs[*]}"
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
  # The package starts a system service on :80 where systemd runs; tests use their own.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now haproxy >/dev/null 2>&1 || true
  fi
fi

# The WebSocket test drives a real client and server from the `websockets` library.
if ! python3 -c "import websockets" >/dev/null 2>&1; then
  echo "installing the Python websockets library"
  python3 -m pip install --quiet --disable-pip-version-check websockets \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages websockets
fi

# The leak test holds a few thousand sockets at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest not found; falling back to cargo test (one process per test file)"
  exec cargo test --workspace --no-fail-fast "$@"
fi
