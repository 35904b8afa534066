#!/usr/bin/env bash
# Configure, build and test softfree with a CMake workflow preset.
#
#   bash scripts/test.sh            # preset "default": Release, warnings as errors
#   bash scripts/test.sh asan       # AddressSanitizer + UndefinedBehaviorSanitizer
#   bash scripts/test.sh clang      # clang++ -march=native (the vector paths of this machine)
#   bash scripts/test.sh tsan       # ThreadSanitizer (clang): the concurrency tests alone
#   bash scripts/test.sh aarch64    # cross-built for aarch64 (NEON), unit tests under qemu-user
#
# Installs missing dependencies first (scripts/install-deps.sh), then runs
# `cmake --workflow --preset <preset>` (configure, build with 2 jobs, ctest).
set -euo pipefail

preset="${1:-default}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

fail() {
  echo >&2
  echo "==============================================================" >&2
  echo "scripts/test.sh: FAILED ($1) [preset: $preset]" >&2
  echo "==============================================================" >&2
  exit 1
}

deps_args=()
if [[ "$preset" == clang* || "$preset" == tsan* ]]; then
  deps_args+=(--clang)
elif [[ "$preset" == aarch64* ]]; then
  deps_args+=(--aarch64)
fi
bash scripts/install-deps.sh "${deps_args[@]}" || fail "installing dependencies"

workflows="$(cmake --list-presets=workflow 2>&1)" || fail "cmake --list-presets (needs CMake >= 3.25)"
if [[ "$workflows" != *"\"$preset\""* ]]; then
  echo "scripts/test.sh: unknown workflow preset '$preset'; available:" >&2
  echo "$workflows" >&2
  fail "unknown preset"
fi

echo "== softfree: cmake --workflow --preset $preset"
cmake --workflow --preset "$preset" || fail "cmake --workflow --preset $preset"
echo "== softfree: preset '$preset' passed"
