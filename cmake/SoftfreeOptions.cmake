# Options whose dependencies may be missing: the tests (GoogleTest) and the benchmarks
# (Google Benchmark).
#
# A plain `cmake -S . -B build` must configure on a machine without those packages, yet a
# build that asked for them (the `bench` and `default` presets, `-D...=ON`, a parent project's
# set(... ON)) must fail loudly when they are missing, so CI never passes by silently skipping.
# Each such option is therefore a three-valued cache string rather than a BOOL:
#
#   AUTO  (the default when softfree is the top-level project) build it if the package is found,
#         else skip it with a warning;
#   ON    (or any other true value) build it; a missing package is a configure error;
#   OFF   (the default under add_subdirectory / FetchContent) do not build it.
#
# Why not option() with a default chosen by `if(DEFINED CACHE{...})`: option() stores its
# default in the cache, so on the second configure of the same build tree the value looks
# user-given and a missing package would turn from a warning into an error. AUTO stays AUTO in
# the cache until the user changes it, so re-configuring behaves like the first run.
include_guard(GLOBAL)

# softfree_dependent_option(<var> <doc>)
#   Declares <var> as above: cache STRING, default AUTO at top level and OFF otherwise. A value
#   the user (or a parent project, as a normal variable) already gave is kept.
function(softfree_dependent_option var doc)
  if(PROJECT_IS_TOP_LEVEL)
    set(default AUTO)
  else()
    set(default OFF)
  endif()
  set(${var} "${default}" CACHE STRING
      "${doc}: AUTO (if its dependencies are found), ON (they are required) or OFF")
  set_property(CACHE ${var} PROPERTY STRINGS AUTO ON OFF)
endfunction()

# softfree_find_optional_package(<var> <out> <package> <what> <hint> [find_package args...])
#   find_package(<package> [args...]) for the feature controlled by option <var>, then sets
#   <out> to TRUE when it was found. When it was not: FATAL_ERROR if <var> is ON (the user asked
#   for <what>), a warning naming <hint> (how to install it) if <var> is AUTO.
#   A macro, not a function, so that <package>_FOUND, _DIR, ... stay visible to the caller.
macro(softfree_find_optional_package var out package what hint)
  if("${${var}}" STREQUAL "AUTO")
    find_package(${package} ${ARGN} QUIET)  # our warning below says what to do
  else()
    find_package(${package} ${ARGN})        # CMake's own diagnostics, then our error
  endif()
  if(${package}_FOUND)
    set(${out} TRUE)
  else()
    set(${out} FALSE)
    if("${${var}}" STREQUAL "AUTO")
      message(WARNING
        "softfree: ${package} was not found, so ${what} are skipped (${var}=AUTO). "
        "Install it (${hint}) or point CMAKE_PREFIX_PATH at it to build them; "
        "-D${var}=OFF silences this warning and -D${var}=ON makes it an error.")
    else()
      message(FATAL_ERROR
        "softfree: ${var}=${${var}} asks for ${what}, but ${package} was not found. "
        "Install it (${hint}), point CMAKE_PREFIX_PATH or ${package}_DIR at it, "
        "or configure with -D${var}=OFF (or AUTO, to build them only when it is found).")
    endif()
  endif()
endmacro()
