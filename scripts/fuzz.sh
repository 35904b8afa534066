#!/usr/bin/env bash
# Build the libFuzzer harness (tests/fuzz, preset "fuzz": clang, -march=native, ASan + UBSan) and
# run it for SECONDS seconds from the committed seed corpus.
#
#   bash scripts/fuzz.sh 120          # build, then fuzz for 120 s (default 60)
#   bash scripts/fuzz.sh 600 -seed=1  # extra arguments go to libFuzzer
#
# The seed corpus (tests/fuzz/corpus) is copied into build/fuzz/corpus-run, where libFuzzer adds
# what it finds, so runs never touch the repository. Exits non-zero on any finding (a crash, a
# sanitizer report, a broken oracle; the input is saved as build/fuzz/artifacts/crash-*) and
# prints the number of executions. Reproduce a finding with
#   build/fuzz/tests/fuzz/softfree_fuzz build/fuzz/artifacts/crash-<hash>
set -euo pipefail

seconds="${1:-60}"
shift || true
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/install-deps.sh --fuzz

echo "== softfree fuzz: building (cmake --preset fuzz)"
# SOFTFREE_FUZZ_FEWER_TYPES=ON (CI): the harness for float and half only, built in half the time.
cmake --preset fuzz -DSOFTFREE_FUZZ_FEWER_TYPES="${SOFTFREE_FUZZ_FEWER_TYPES:-OFF}" >/dev/null
cmake --build --preset fuzz

work="build/fuzz"
rm -rf "$work/corpus-run" "$work/artifacts"
mkdir -p "$work/corpus-run" "$work/artifacts"
cp tests/fuzz/corpus/* "$work/corpus-run/"
log="$work/fuzz.log"

echo "== softfree fuzz: running for ${seconds}s (log: $log)"
status=0
# -rss_limit_mb: the harness's shapes are tiny, so growth means a leak. -timeout: a single
# input taking seconds is a hang. Leaks are checked at exit (detect_leaks).
ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:${ASAN_OPTIONS:-}" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}" \
  "$work/tests/fuzz/softfree_fuzz" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=4096 \
  -max_len=4096 -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$@" "$work/corpus-run" \
  >"$log" 2>&1 || status=$?

execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
grep -E '^#[0-9]+ +DONE|^Done [0-9]+ runs' "$log" | tail -2 || true
findings=$(find "$work/artifacts" -type f | wc -l)
echo "== softfree fuzz: executions: ${execs:-unknown}, findings: ${findings}, exit status: ${status}"
if [[ $status -ne 0 || $findings -ne 0 ]]; then
  echo "== softfree fuzz: FAILED; the end of $log:" >&2
  tail -60 "$log" >&2
  ls -l "$work/artifacts" >&2
  exit 1
fi
echo "== softfree fuzz: passed"
