#pragma once
// softfree version, kept in step with project(VERSION) in the top-level CMakeLists.txt.
#define SOFTFREE_VERSION_MAJOR 0
#define SOFTFREE_VERSION_MINOR 2
#define SOFTFREE_VERSION_PATCH 0
#define SOFTFREE_VERSION_STRING "0.2.0"
