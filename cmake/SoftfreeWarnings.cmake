# softfree_set_warnings(<target>)
#
# Strict warnings for softfree's own executables (tests, examples, benchmarks).
# Never applied to the softfree INTERFACE target itself, so consumers keep
# their own warning flags. Warnings become errors when SOFTFREE_WERROR is ON.
include_guard(GLOBAL)

function(softfree_set_warnings target)
  if(MSVC)
    target_compile_options(${target} PRIVATE /W4 /permissive-)
    if(SOFTFREE_WERROR)
      target_compile_options(${target} PRIVATE /WX)
    endif()
  elseif(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
    if(SOFTFREE_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  endif()
endfunction()
