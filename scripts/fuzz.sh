#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, on the committed seed corpus
# (fuzz/seeds/<target>/), the corpus earlier runs grew (fuzz/corpus/<target>/, not committed)
# and the Kitex captures when they are beside the checkout.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      default: 60 seconds, all targets
#
# Extra libFuzzer flags go in SLUICE_FUZZ_ARGS (e.g. "-runs=10000000" for a long run).
#
# cargo-fuzz passes nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. Every target runs in one process (no -jobs/-workers). Before fuzzing, libFuzzer
# runs every input of the corpus, so a crash the committed seeds reproduce fails at once.
# Findings land in fuzz/artifacts/<target>/. Exits non-zero if any target crashed, hung, ran
# out of memory or did not build; prints the executions of each.
set -euo pipefail
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(sniff thrift framed ttheader ttstream grpc h2wire pingpong_conn ttstream_conn h2_conn)
fi
root=$(cd "$(dirname "$0")/.." && pwd)
captures=${SLUICE_CAPTURES:-$root/../shared/captures}
logs=${SLUICE_FUZZ_LOGS:-${TMPDIR:-/tmp}/sluice-fuzz}
mkdir -p "$logs"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
# One build for every target, so each run below spends its time fuzzing.
cargo fuzz build --sanitizer none

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    if [ -d "$captures" ]; then
        for f in "$captures"/*/conn*.bin; do
            scenario=$(basename "$(dirname "$f")")
            cp -n "$f" "corpus/$t/${scenario}-$(basename "$f")" 2>/dev/null || true
        done
    fi
    log="$logs/$t.log"
    echo "== fuzz target $t for ${secs}s (log: $log)"
    rc=0
    # shellcheck disable=SC2086 # SLUICE_FUZZ_ARGS is a list of flags
    cargo fuzz run --sanitizer none "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 ${SLUICE_FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    grep -E "^(==[0-9]+== ERROR|SUMMARY|thread .* panicked)" "$log" || true
    if [ "$rc" -ne 0 ]; then
        echo "!! $t failed (exit $rc): see fuzz/artifacts/$t and $log"
        tail -n 30 "$log"
        status=1
        summary+=("$(printf '%-14s %12s %10s  FAILED (exit %s)' "$t" "${execs:--}" "${rate:--}" "$rc")")
    else
        summary+=("$(printf '%-14s %12s %10s  ok' "$t" "${execs:--}" "${rate:--}")")
    fi
done
echo "== fuzz summary (${secs}s per target)"
printf '%-14s %12s %10s  %s\n' target executions exec/s result
printf '%s\n' "${summary[@]}"
exit $status
