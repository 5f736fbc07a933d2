#!/usr/bin/env bash
# Proxy benchmark: direct vs Sluice vs an L4 relay (HAProxy, mode tcp), and nginx grpc_pass for
# gRPC unary. Builds Sluice in release mode, installs HAProxy and nginx from Debian when missing,
# runs everything on loopback, and rewrites the results section of docs/benchmarks.md and
# docs/bench.svg. See docs/benchmarks.md for what it measures and how.
#
#   scripts/bench.sh [--rounds N] [--seconds S] [--quick] [--sizes BYTES,...] [--only NAMES] [--compare OTHER_SLUICE_BIN]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx >/dev/null
fi
cargo build --release -q
ulimit -n 65536 2>/dev/null || true
exec python3 scripts/bench.py "$@"
