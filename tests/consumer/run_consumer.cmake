# Configure, build and run the consumer project in tests/consumer.
#
#   cmake -DMODE=package -DPREFIX=<installed softfree prefix>   ... -P run_consumer.cmake
#   cmake -DMODE=subdir  -DSOFTFREE_SOURCE_DIR=<softfree source> ... -P run_consumer.cmake
#
# Common: CONSUMER_SOURCE_DIR, CONSUMER_BINARY_DIR (wiped first), and optional
# CONFIG, GENERATOR, GENERATOR_PLATFORM, GENERATOR_TOOLSET, MAKE_PROGRAM,
# CXX_COMPILER, CXX_FLAGS, EXE_LINKER_FLAGS, EIGEN3_DIR taken from the outer build,
# and LABEL (what the log lines say; default consumer/<MODE>).
#
# The build's output is kept in CONSUMER_BINARY_DIR/build.log; when the build fails, a count of
# its compiler warnings by flag ([-Wmaybe-uninitialized] ...) and by location ends the output.
cmake_minimum_required(VERSION 3.21)

foreach(var MODE CONSUMER_SOURCE_DIR CONSUMER_BINARY_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${var} is not set")
  endif()
endforeach()
if("${LABEL}" STREQUAL "")
  set(LABEL "consumer/${MODE}")
endif()

function(run_step what)
  string(REPLACE ";" " " pretty "${ARGN}")
  message(STATUS "[${LABEL}] ${what}: ${pretty}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[${LABEL}] ${what} failed (${rc})")
  endif()
endfunction()

# Counts the "warning: ... [-Wflag]" lines of a compiler log (under -Werror "error: ...
# [-Werror=flag]"), by flag and by file:line.
function(summarize_warnings log)
  file(STRINGS "${log}" lines ENCODING UTF-8 REGEX "(warning|error): .*\\[-W[-a-zA-Z0-9_=+]+\\]$")
  list(LENGTH lines total)
  set(flags)
  set(places)
  foreach(line IN LISTS lines)
    string(REGEX MATCH "\\[-W(error=)?([-a-zA-Z0-9_=+]+)\\]$" _ "${line}")
    list(APPEND flags "-W${CMAKE_MATCH_2}")
    string(REGEX MATCH "^([^ :]+):([0-9]+):[0-9]+: (warning|error)" _ "${line}")
    get_filename_component(file "${CMAKE_MATCH_1}" NAME)
    list(APPEND places "${file}:${CMAKE_MATCH_2}")
  endforeach()
  set(summary "${total} compiler warnings:")
  foreach(kind flags places)
    set(items ${${kind}})
    list(REMOVE_DUPLICATES items)
    foreach(item IN LISTS items)
      set(all ${${kind}})
      list(FILTER all INCLUDE REGEX "^${item}$")
      list(LENGTH all n)
      string(APPEND summary "\n  ${n}\t${item}")
    endforeach()
  endforeach()
  message(STATUS "[${LABEL}] ${summary}")
endfunction()

file(REMOVE_RECURSE "${CONSUMER_BINARY_DIR}")

set(configure "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${CONSUMER_BINARY_DIR}")
if(NOT "${GENERATOR}" STREQUAL "")
  list(APPEND configure -G "${GENERATOR}")
endif()
if(NOT "${GENERATOR_PLATFORM}" STREQUAL "")
  list(APPEND configure -A "${GENERATOR_PLATFORM}")
endif()
if(NOT "${GENERATOR_TOOLSET}" STREQUAL "")
  list(APPEND configure -T "${GENERATOR_TOOLSET}")
endif()
if(NOT "${MAKE_PROGRAM}" STREQUAL "")
  list(APPEND configure "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(NOT "${CXX_COMPILER}" STREQUAL "")
  list(APPEND configure "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(NOT "${CONFIG}" STREQUAL "")
  list(APPEND configure "-DCMAKE_BUILD_TYPE=${CONFIG}")
endif()
list(APPEND configure
  "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
  "-DCMAKE_EXE_LINKER_FLAGS=${EXE_LINKER_FLAGS}"
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
  "-DSOFTFREE_CONSUMER_MODE=${MODE}")
if(NOT "${EIGEN3_DIR}" STREQUAL "")
  list(APPEND configure "-DEigen3_DIR=${EIGEN3_DIR}")
endif()

if(MODE STREQUAL "package")
  if("${PREFIX}" STREQUAL "" OR NOT IS_DIRECTORY "${PREFIX}")
    message(FATAL_ERROR "run_consumer.cmake: PREFIX '${PREFIX}' is not an installed softfree prefix")
  endif()
  list(APPEND configure "-DCMAKE_PREFIX_PATH=${PREFIX}")
elseif(MODE STREQUAL "subdir")
  if("${SOFTFREE_SOURCE_DIR}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: SOFTFREE_SOURCE_DIR is not set")
  endif()
  list(APPEND configure "-DSOFTFREE_SOURCE_DIR=${SOFTFREE_SOURCE_DIR}")
else()
  message(FATAL_ERROR "run_consumer.cmake: MODE must be 'package' or 'subdir', not '${MODE}'")
endif()

set(build_config_args)
set(config_args)
if(NOT "${CONFIG}" STREQUAL "")
  set(build_config_args --config "${CONFIG}")
  set(config_args -C "${CONFIG}")
endif()

run_step("configure" ${configure})

set(build "${CMAKE_COMMAND}" --build "${CONSUMER_BINARY_DIR}" ${build_config_args})
string(REPLACE ";" " " pretty "${build}")
message(STATUS "[${LABEL}] build: ${pretty}")
execute_process(COMMAND ${build} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
file(WRITE "${CONSUMER_BINARY_DIR}/build.log" "${out}")
message("${out}")
if(NOT rc EQUAL 0)
  summarize_warnings("${CONSUMER_BINARY_DIR}/build.log")
  message(FATAL_ERROR "[${LABEL}] build failed (${rc}); full output in ${CONSUMER_BINARY_DIR}/build.log")
endif()

# Eigen must reach the consumer as a system include directory (-isystem), never
# as -I: otherwise a consumer's -Werror would trip on Eigen's own warnings.
set(ccdb "${CONSUMER_BINARY_DIR}/compile_commands.json")
set(eigen_dirs_file "${CONSUMER_BINARY_DIR}/eigen_include_dirs.txt")
if(EXISTS "${ccdb}" AND EXISTS "${eigen_dirs_file}")
  file(READ "${ccdb}" ccdb_text)
  file(STRINGS "${eigen_dirs_file}" eigen_dirs)
  foreach(dir IN LISTS eigen_dirs)
    if(dir STREQUAL "")
      continue()
    endif()
    string(FIND "${ccdb_text}" "-I${dir}" pos_i)
    string(FIND "${ccdb_text}" "-I ${dir}" pos_i2)
    string(FIND "${ccdb_text}" "-isystem ${dir}" pos_sys)
    if(NOT pos_i EQUAL -1 OR NOT pos_i2 EQUAL -1)
      message(FATAL_ERROR "[${LABEL}] Eigen's include dir ${dir} is passed with -I, not -isystem")
    endif()
    if(pos_sys EQUAL -1 AND ccdb_text MATCHES "-isystem")
      message(FATAL_ERROR "[${LABEL}] Eigen's include dir ${dir} is not passed with -isystem")
    endif()
  endforeach()
endif()

# The consumer registers exactly one test; in subdir mode this proves softfree
# added none of its own.
execute_process(COMMAND "${CMAKE_CTEST_COMMAND}" -N ${config_args}
  WORKING_DIRECTORY "${CONSUMER_BINARY_DIR}"
  OUTPUT_VARIABLE listing RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT listing MATCHES "Total Tests: 1\n")
  message(FATAL_ERROR "[${LABEL}] expected exactly one test in the consumer, ctest -N says:\n${listing}")
endif()

run_step("run" "${CMAKE_CTEST_COMMAND}" --output-on-failure ${config_args}
  --test-dir "${CONSUMER_BINARY_DIR}")
message(STATUS "[${LABEL}] OK")
