#!/usr/bin/env bash
# Build and run the softfree benchmarks, then write a report.
#
#   bash scripts/bench.sh                                  # all benchmarks
#   bash scripts/bench.sh --benchmark_filter='SimA'        # extra args go to softfree_bench
#
# Outputs: build/bench/results.json (Google Benchmark JSON),
#          build/bench/report.md (table, also printed), build/bench/report.svg (time plot),
#          build/bench/report-memory.svg (peak bytes a call allocates, against N).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

fail() {
  echo >&2
  echo "scripts/bench.sh: FAILED ($1)" >&2
  exit 1
}

# --peers: oneDNN too, so that softfree_bench also times oneDNN's softmax attention.
bash scripts/install-deps.sh --peers || fail "installing dependencies"

echo "== softfree: cmake --workflow --preset bench"
cmake --workflow --preset bench || fail "building the bench preset"

bench_exe=""
for candidate in build/bench/bench/softfree_bench build/bench/bench/Release/softfree_bench; do
  if [[ -x "$candidate" ]]; then
    bench_exe="$candidate"
    break
  fi
done
if [[ -z "$bench_exe" ]]; then
  bench_exe="$(find build/bench -type f -name softfree_bench -perm -u+x 2>/dev/null | head -n 1 || true)"
fi
[[ -n "$bench_exe" ]] || fail "softfree_bench was not built (are there bench/*.cpp sources?)"

# oneDNN's OpenMP workers (the peer rows) sleep rather than spin between primitives: spinning,
# its 2-thread rows ran 10-100x slower while other jobs shared the cores; passive cost nothing
# measurable on an idle machine. softfree's own rows use Eigen's pool and ignore it.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

echo "== softfree: $bench_exe $*"
"$bench_exe" --benchmark_out=build/bench/results.json --benchmark_out_format=json "$@" \
  || fail "softfree_bench"

# report.py prints the markdown table as well as writing it.
echo "== softfree: bench/report.py"
python3 bench/report.py build/bench/results.json \
  --markdown build/bench/report.md --plot build/bench/report.svg \
  --memory-plot build/bench/report-memory.svg || fail "bench/report.py"

echo
echo "Results: build/bench/results.json  Report: build/bench/report.md"
echo "Plots: build/bench/report.svg (time)  build/bench/report-memory.svg (memory)"
