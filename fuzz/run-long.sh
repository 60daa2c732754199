#!/usr/bin/env bash
# The long libFuzzer runs of docs/fuzzing.md: each TARGET given (default: all) to 10^7
# executions, one after another, from fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET/,
# libFuzzer's output to fuzz/logs/TARGET.log. Build first:
#     cargo +nightly fuzz build -O -a -s none
# Run two of these at once (different targets) to use both cores.
set -euo pipefail
cd "$(dirname "$0")"
bin=target/x86_64-unknown-linux-gnu/release
runs=${RUNS:-10000000}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config queue request iommu devices report phase_order ktap trace)
mkdir -p logs
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "start $t $(date +%s)" >> logs/times
    rc=0
    nice -n 19 "$bin/$t" "corpus/$t" -runs="$runs" -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" > "logs/$t.log" 2>&1 || rc=$?
    echo "end $t $(date +%s) rc=$rc" >> logs/times
done
