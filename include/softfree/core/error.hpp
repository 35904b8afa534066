#pragma once
// The one exception type softfree throws for bad input, and the message helpers that name
// the argument and its shape.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace softfree {

/// Thrown for any invalid argument (shape, option, alias). Derives from std::invalid_argument
/// so callers can catch either. Always thrown before any output element is written.
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <class... Parts>
[[noreturn]] void fail(const char* where, Parts&&... parts) {
  std::ostringstream os;
  os << "softfree::" << where << ": ";
  (os << ... << std::forward<Parts>(parts));
  throw invalid_argument(os.str());
}

}  // namespace detail
}  // namespace softfree
