#!/usr/bin/env bash
# Runs every cargo-fuzz target for the given time (seconds, default 60);
# installs nightly and cargo-fuzz if missing. Crashes are saved under
# fuzz/artifacts/<target>/; turn each into a regression test.
#
#   fuzz/run.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
rustup toolchain install nightly --profile minimal >/dev/null
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# heap_ops twice: the default build, then the `hardened` one (encoded free
# lists, shuffled carving, guard pages, every free checked).
for run in "heap_ops" "pymem_ops" "heap_ops --features hardened"; do
    echo "== $run"
    # shellcheck disable=SC2086
    cargo +nightly fuzz run $run -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 \
        | grep -E "^#[0-9]+.*(DONE|pulse)|ERROR|panicked|SUMMARY|Done" | tail -3
done
