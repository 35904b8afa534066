#pragma once
// Options written in a method's name for make_attention: "method:key=value,key=value". This file
// only reads such text: splitting it, and values as numbers, flags or one of a few words; which
// keys a method takes is the registry's (make_attention.hpp). Every error names the whole text.
#include <algorithm>
#include <charconv>
#include <cstddef>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "checks.hpp"
#include "error.hpp"
#include "tensor.hpp"

namespace softfree {
namespace detail {

/// A name split into its method and its options, in the order written.
struct NameSpec {
  std::string text;    ///< the whole name, for messages
  std::string method;  ///< before the first ':'
  std::vector<std::pair<std::string, std::string>> options;
};

/// Splits "method[:key=value[,key=value...]]"; an option without '=', an empty key or value, or a
/// key given twice is an error.
inline NameSpec parse_name_spec(const std::string& text) {
  NameSpec spec{text, text, {}};
  const std::size_t colon = text.find(':');
  if (colon == std::string::npos) return spec;
  spec.method = text.substr(0, colon);
  std::size_t pos = colon + 1;
  while (true) {
    const std::size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size())
      fail("make_attention", "\"", text, "\": option \"", item, "\" is not key=value");
    std::string key = item.substr(0, eq);
    for (const auto& kv : spec.options)
      if (kv.first == key) fail("make_attention", "\"", text, "\": option ", key, " is given twice");
    spec.options.emplace_back(std::move(key), item.substr(eq + 1));
    if (comma == text.size()) break;
    pos = comma + 1;
  }
  return spec;
}

/// One option's value, read against its key's rule; errors name the text, the key and the rule.
class OptionValue {
 public:
  OptionValue(const NameSpec& spec, const std::string& key, const std::string& value)
      : spec_(spec), key_(key), value_(value) {}

  /// An integer in [lo, hi].
  Index integer(Index lo, Index hi) const {
    long long x = 0;
    const char* end = value_.data() + value_.size();
    const auto r = std::from_chars(value_.data(), end, x);
    if (r.ec != std::errc() || r.ptr != end || x < lo || x > hi)
      bad("an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return static_cast<Index>(x);
  }
  /// A finite number >= lo (> lo when open).
  double number(double lo, bool open) const {
    double x = 0;
    const char* end = value_.data() + value_.size();
    const auto r = std::from_chars(value_.data(), end, x);
    if (r.ec != std::errc() || r.ptr != end || !is_finite(x) || x < lo || (open && x == lo)) {
      std::ostringstream rule;
      rule << "a finite number " << (open ? "> " : ">= ") << lo;
      bad(rule.str());
    }
    return x;
  }
  /// true / false (also 1 / 0).
  bool flag() const {
    if (value_ == "true" || value_ == "1") return true;
    if (value_ == "false" || value_ == "0") return false;
    bad("true or false");
  }
  /// The index of the value among words.
  std::size_t word(const std::vector<const char*>& words) const {
    std::string list;
    for (std::size_t i = 0; i < words.size(); ++i) {
      if (value_ == words[i]) return i;
      list += (i ? " | " : "") + std::string(words[i]);
    }
    bad(list);
  }
  /// `count` positive integers separated by 'x' ("14x14x2").
  std::vector<Index> dims(std::size_t count) const {
    const std::string rule = std::to_string(count) + " positive integers joined by x (as 14x14x2)";
    std::vector<Index> out;
    for (std::size_t pos = 0;;) {
      const std::size_t x = std::min(value_.find('x', pos), value_.size());
      long long v = 0;
      const auto r = std::from_chars(value_.data() + pos, value_.data() + x, v);
      if (r.ec != std::errc() || r.ptr != value_.data() + x || v < 1) bad(rule);
      out.push_back(static_cast<Index>(v));
      if (x == value_.size()) break;
      pos = x + 1;
    }
    if (out.size() != count) bad(rule);
    return out;
  }

 private:
  [[noreturn]] void bad(const std::string& rule) const {
    fail("make_attention", "\"", spec_.text, "\": ", key_, " = \"", value_, "\" is not ", rule);
  }
  const NameSpec& spec_;
  const std::string& key_;
  const std::string& value_;
};

}  // namespace detail
}  // namespace softfree
