# cmake -DVERSION_FILE=<prefix>/lib/cmake/softfree/softfreeConfigVersion.cmake -DVERSION=<x.y.z>
#       -P check_version.cmake
#
# Evaluates the installed softfreeConfigVersion.cmake as find_package(softfree <request>) does
# and checks its SameMinorVersion policy: softfree is 0.x, where a minor release may break the
# API, so x.y and x.y.z (z <= the installed patch) are accepted and x.(y-1), x.(y+1), (x+1).0
# are refused.
cmake_minimum_required(VERSION 3.23)

foreach(var VERSION_FILE VERSION)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check_version.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT EXISTS "${VERSION_FILE}")
  message(FATAL_ERROR "check_version.cmake: ${VERSION_FILE} does not exist")
endif()
if(NOT VERSION MATCHES "^([0-9]+)\\.([0-9]+)\\.([0-9]+)$")
  message(FATAL_ERROR "check_version.cmake: VERSION '${VERSION}' is not x.y.z")
endif()
set(major ${CMAKE_MATCH_1})
set(minor ${CMAKE_MATCH_2})
set(patch ${CMAKE_MATCH_3})
math(EXPR next_minor "${minor} + 1")
math(EXPR next_major "${major} + 1")

# find_package() sets these PACKAGE_FIND_VERSION* variables before it includes the file.
function(expect request expected)
  string(REPLACE "." ";" parts "${request}")
  list(LENGTH parts PACKAGE_FIND_VERSION_COUNT)
  list(APPEND parts 0 0 0)
  list(GET parts 0 PACKAGE_FIND_VERSION_MAJOR)
  list(GET parts 1 PACKAGE_FIND_VERSION_MINOR)
  list(GET parts 2 PACKAGE_FIND_VERSION_PATCH)
  set(PACKAGE_FIND_VERSION "${request}")
  include("${VERSION_FILE}")
  if(PACKAGE_VERSION_COMPATIBLE)
    set(got TRUE)
  else()
    set(got FALSE)
  endif()
  if(NOT got STREQUAL expected)
    message(FATAL_ERROR "find_package(softfree ${request}) against ${PACKAGE_VERSION}: "
                        "compatible = ${got}, expected ${expected}")
  endif()
  message(STATUS "find_package(softfree ${request}): compatible = ${got} (as expected)")
endfunction()

expect("${major}.${minor}" TRUE)
expect("${major}.${minor}.${patch}" TRUE)
expect("${major}.${next_minor}" FALSE)
expect("${next_major}.0" FALSE)
if(minor GREATER 0)
  math(EXPR prev_minor "${minor} - 1")
  expect("${major}.${prev_minor}" FALSE)
endif()
message(STATUS "softfreeConfigVersion.cmake ${VERSION}: SameMinorVersion OK")
