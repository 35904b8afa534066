#!/usr/bin/env bash
# Install softfree's build/test dependencies with apt-get (Debian/Ubuntu).
#
#   bash scripts/install-deps.sh           # cmake, g++, make, Eigen, GoogleTest, Google Benchmark, ...
#   bash scripts/install-deps.sh --clang   # ... and clang (with its sanitizer runtimes)
#   bash scripts/install-deps.sh --aarch64 # ... and the aarch64 cross compiler and qemu-user
#   bash scripts/install-deps.sh --peers   # ... and oneDNN, for the benchmarks' peer rows only
#   bash scripts/install-deps.sh --fuzz    # ... and clang with its libFuzzer / sanitizer runtimes
#
# Only missing packages are installed; when nothing is missing it prints nothing
# and touches nothing. Runs as root, or through sudo; otherwise it lists what to
# install and exits 1.
set -euo pipefail

packages=(cmake g++ make libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev pkg-config python3)

for arg in "$@"; do
  case "$arg" in
    # With clang's sanitizer runtimes (the tsan preset): clang only recommends them, and
    # --no-install-recommends below would leave -fsanitize=thread without its library.
    --clang) packages+=(clang libclang-rt-dev) ;;
    # libFuzzer and the sanitizer runtimes of clang 14 (scripts/fuzz.sh); clang-14 itself only
    # pulls them in through a recommended package.
    --fuzz) packages+=(clang libclang-rt-14-dev) ;;
    # The aarch64 preset: GoogleTest is built from libgtest-dev's sources (/usr/src/googletest)
    # by the cross compiler, so no arm64 packages are needed.
    --aarch64) packages+=(g++-aarch64-linux-gnu qemu-user) ;;
    # The OpenCL headers too: Debian's dnnl-config.cmake requires them, and libdnnl-dev only
    # recommends them (not installed under --no-install-recommends).
    --peers) packages+=(libdnnl-dev ocl-icd-opencl-dev) ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install-deps.sh: unknown argument '$arg' (expected --clang, --aarch64, --peers or --fuzz)" >&2; exit 2 ;;
  esac
done

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps.sh: apt-get not found; install these packages (or their equivalents) yourself:" >&2
  echo "  ${missing[*]}" >&2
  exit 1
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-deps.sh: not root and sudo is not available; as root, run:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "install-deps.sh: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
