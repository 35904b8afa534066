# Cross-compiling softfree for 64-bit Arm Linux (aarch64, NEON) with Debian's cross compiler
# (g++-aarch64-linux-gnu), its programs run under qemu-user. The `aarch64` preset uses it:
#
#   bash scripts/install-deps.sh --aarch64     # g++-aarch64-linux-gnu, qemu-user, libgtest-dev
#   cmake --workflow --preset aarch64
#
# CMAKE_CROSSCOMPILING_EMULATOR makes ctest and gtest_discover_tests run the aarch64 test
# programs through qemu-aarch64. GoogleTest is built from source by the cross compiler
# (SOFTFREE_GTEST_SOURCE_DIR, set by the preset), so no arm64 packages are needed. Eigen is
# header-only and the same for every architecture, so the build machine's is used.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(_softfree_triple aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${_softfree_triple}-gcc)  # GoogleTest's project needs C as well
set(CMAKE_CXX_COMPILER ${_softfree_triple}-g++)

# Libraries and headers from the target's root only; programs (the emulator) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/${_softfree_triple})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Eigen: the host's package (libeigen3-dev) unless the user points elsewhere. Only Eigen's
# headers are used, so the host's copy is the target's as well.
if(NOT DEFINED Eigen3_DIR AND EXISTS /usr/share/eigen3/cmake/Eigen3Config.cmake)
  set(Eigen3_DIR /usr/share/eigen3/cmake CACHE PATH "Eigen3Config.cmake's directory (the host's: header-only)")
endif()

# qemu-user runs the target's programs; -L gives it the target's dynamic loader and libraries.
if(NOT DEFINED CMAKE_CROSSCOMPILING_EMULATOR)
  find_program(SOFTFREE_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
  if(SOFTFREE_QEMU_AARCH64)
    set(CMAKE_CROSSCOMPILING_EMULATOR "${SOFTFREE_QEMU_AARCH64};-L;/usr/${_softfree_triple}" CACHE STRING
        "How to run the target's programs on the build machine")
  endif()
endif()
