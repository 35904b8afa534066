# cmake -DSOFTFREE_BINARY_DIR=... -DCONFIG=... -DSTAGING_PREFIX=... -DPREFIX=... -P install_prefix.cmake
#
# Installs softfree from its build tree into STAGING_PREFIX, then renames that
# directory to PREFIX. Nothing is left at the staging path, so consumers of PREFIX
# only succeed if the installed package (CMake config and pkg-config) is relocatable.
cmake_minimum_required(VERSION 3.21)

foreach(var SOFTFREE_BINARY_DIR STAGING_PREFIX PREFIX)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "install_prefix.cmake: ${var} is not set")
  endif()
endforeach()

file(REMOVE_RECURSE "${STAGING_PREFIX}" "${PREFIX}")

set(cmd "${CMAKE_COMMAND}" --install "${SOFTFREE_BINARY_DIR}" --prefix "${STAGING_PREFIX}")
if(NOT "${CONFIG}" STREQUAL "")
  list(APPEND cmd --config "${CONFIG}")
endif()
execute_process(COMMAND ${cmd} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install_prefix.cmake: `cmake --install` failed (${rc})")
endif()

file(RENAME "${STAGING_PREFIX}" "${PREFIX}")
message(STATUS "softfree installed at ${STAGING_PREFIX} and moved to ${PREFIX}")
