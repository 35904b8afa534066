# cmake -DPKG_CONFIG=... -DPREFIX=... -DPKGCONFIG_DIR=share/pkgconfig -DEXPECTED_VERSION=...
#       -DCXX_COMPILER=... [-DCXX_FLAGS=... -DEXE_LINKER_FLAGS=...]
#       -DCONSUMER_SOURCE_DIR=... -DWORK_DIR=... -P check_pkgconfig.cmake
#
# Checks the installed (and relocated) softfree.pc: pkg-config resolves it, every
# -I it prints exists, one of them holds softfree/softfree.hpp, and the consumer
# main.cpp compiles, links and runs with exactly those flags.
cmake_minimum_required(VERSION 3.21)

foreach(var PKG_CONFIG PREFIX PKGCONFIG_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check_pkgconfig.cmake: ${var} is not set")
  endif()
endforeach()

if(IS_ABSOLUTE "${PKGCONFIG_DIR}")
  message(FATAL_ERROR "check_pkgconfig.cmake: SOFTFREE_INSTALL_PKGCONFIGDIR is absolute; "
                      "the installed prefix cannot be relocated")
endif()
set(ENV{PKG_CONFIG_PATH} "${PREFIX}/${PKGCONFIG_DIR}")
message(STATUS "PKG_CONFIG_PATH=$ENV{PKG_CONFIG_PATH}")

function(pkg_query out)
  execute_process(COMMAND "${PKG_CONFIG}" ${ARGN} softfree
    RESULT_VARIABLE rc OUTPUT_VARIABLE text ERROR_VARIABLE err
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "`pkg-config ${ARGN} softfree` failed (${rc}):\n${err}")
  endif()
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

pkg_query(version --modversion)
if(DEFINED EXPECTED_VERSION AND NOT version STREQUAL EXPECTED_VERSION)
  message(FATAL_ERROR "pkg-config reports softfree ${version}, expected ${EXPECTED_VERSION}")
endif()

pkg_query(cflags --cflags)
pkg_query(libs --libs)
message(STATUS "pkg-config --cflags softfree: ${cflags}")
message(STATUS "pkg-config --libs softfree: ${libs}")

separate_arguments(cflag_list UNIX_COMMAND "${cflags}")
separate_arguments(lib_list UNIX_COMMAND "${libs}")

set(found_header FALSE)
set(include_dirs)
foreach(flag IN LISTS cflag_list)
  if(flag MATCHES "^-I(.+)$")
    set(dir "${CMAKE_MATCH_1}")
    if(NOT IS_DIRECTORY "${dir}")
      message(FATAL_ERROR "pkg-config prints -I${dir}, which does not exist")
    endif()
    list(APPEND include_dirs "${dir}")
    if(EXISTS "${dir}/softfree/softfree.hpp")
      set(found_header TRUE)
    endif()
  endif()
endforeach()
if(NOT found_header)
  message(FATAL_ERROR "no -I from `pkg-config --cflags softfree` holds softfree/softfree.hpp: ${cflags}")
endif()

# The pkg-config route must work on its own: compile the consumer with its flags.
if(NOT "${CXX_COMPILER}" STREQUAL "")
  file(REMOVE_RECURSE "${WORK_DIR}")
  file(MAKE_DIRECTORY "${WORK_DIR}")
  separate_arguments(extra_cxx UNIX_COMMAND "${CXX_FLAGS}")
  separate_arguments(extra_ld UNIX_COMMAND "${EXE_LINKER_FLAGS}")
  set(exe "${WORK_DIR}/softfree_consumer_pc")
  set(cmd "${CXX_COMPILER}" -std=c++17 -O1 ${extra_cxx} ${cflag_list}
          "${CONSUMER_SOURCE_DIR}/main.cpp" -o "${exe}" ${extra_ld} ${lib_list})
  string(REPLACE ";" " " pretty "${cmd}")
  message(STATUS "compile: ${pretty}")
  execute_process(COMMAND ${cmd} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "compiling the consumer with pkg-config flags failed (${rc})")
  endif()
  execute_process(COMMAND "${exe}" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "the pkg-config consumer failed (${rc})")
  endif()
endif()
message(STATUS "pkg-config consumer OK")
