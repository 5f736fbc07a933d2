#!/usr/bin/env bash
# Soak test: mixed TTHeader, TTStream and gRPC traffic through `sluice run` at a fixed rate,
# with a share of failing calls and caller resets, for MINUTES (default 10). Samples the proxy's
# RSS and open fds every 10 s; fails if either has grown by more than 10% over the first minute
# (judged on the last minute's mean; the peaks are reported too) or
# if any call errs unexpectedly. See examples/soak.rs for the traffic mix.
#
#   scripts/soak.sh [MINUTES]
set -euo pipefail
minutes=${1:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -q --bin sluice --example soak
ulimit -n 65536 2>/dev/null || true
exec target/release/examples/soak "$minutes" target/release/sluice
