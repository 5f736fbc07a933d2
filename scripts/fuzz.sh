#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, seeded with the Kitex captures.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      default: 60 seconds, all targets
#
# cargo-fuzz passes nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. Findings land in fuzz/artifacts/<target>/; the script exits non-zero on a crash.
set -euo pipefail
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(sniff thrift framed ttheader ttstream grpc h2wire)
fi
root=$(cd "$(dirname "$0")/.." && pwd)
captures=${SLUICE_CAPTURES:-$root/../shared/captures}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$root/fuzz"
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if [ -d "$captures" ]; then
        for f in "$captures"/*/conn*.bin; do
            scenario=$(basename "$(dirname "$f")")
            cp -n "$f" "corpus/$t/${scenario}-$(basename "$f")" 2>/dev/null || true
        done
    fi
    echo "== fuzz target $t for ${secs}s"
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        2>&1 | tee "/tmp/sluice-fuzz-$t.log" | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|==[0-9]+== ERROR|SUMMARY|panicked)"; then
        :
    fi
    if grep -qE "ERROR|panicked|deadly signal" "/tmp/sluice-fuzz-$t.log"; then
        echo "!! $t found a crash: see fuzz/artifacts/$t and /tmp/sluice-fuzz-$t.log"
        status=1
    fi
done
exit $status
