#!/usr/bin/env bash
# Runs every cargo-fuzz target of ckan-vault for a bounded time and prints one line per
# target: executions, speed, corpus size, coverage and findings. Not part of CI (see
# docs/reliability.md for recorded runs).
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]     default: 60 s for each of all targets
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain; without one,
# RUSTC_BOOTSTRAP=1 lets the stable compiler accept cargo-fuzz's -Z flags.
# Seeds come from fuzz/seeds/TARGET (committed); what the fuzzer learns goes to
# fuzz/corpus/TARGET, crashes and hangs to fuzz/artifacts/TARGET, logs to fuzz/logs.
# `cargo test` in fuzz/ replays seeds, corpus and artifacts as plain tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

SECS=${1:-60}
[ $# -gt 0 ] && shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(ckan_ini manifest archive_tap access_file storage_sums)

command -v cargo-fuzz >/dev/null || { echo "run: cargo install cargo-fuzz" >&2; exit 2; }
TC=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    TC=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

mkdir -p corpus artifacts logs
cargo "${TC[@]}" fuzz build -O >logs/build.log 2>&1 || { tail -20 logs/build.log >&2; exit 1; }

printf '%-13s %6s %12s %9s %7s %7s  %s\n' TARGET SECONDS EXECUTIONS EXEC/S CORPUS COV FINDINGS
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    set +e
    cargo "${TC[@]}" fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=1048576 \
        -print_final_stats=1 >"logs/$t.log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    last=$(grep -E '^#[0-9]+' "logs/$t.log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    after=$(find "artifacts/$t" -type f | wc -l)
    found=$((after - before))
    what="none"
    if [ "$rc" -ne 0 ] || [ "$found" -gt 0 ]; then
        what="$found new artifact(s), exit $rc: see fuzz/logs/$t.log"
        status=1
    fi
    printf '%-13s %6s %12s %9s %7s %7s  %s\n' "$t" "$SECS" "${execs:-?}" "${speed:-?}" \
        "${corp:-?}" "${cov:-?}" "$what"
done
exit $status
