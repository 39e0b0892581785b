// Typed errors that carry the argument name and the source location, so the
// Python binding can map them to ValueError with a useful message.
#pragma once
#include <stdexcept>
#include <string>

namespace fastmem {

class InvalidArgument : public std::invalid_argument {
 public:
  InvalidArgument(const std::string& what, const char* file, int line)
      : std::invalid_argument(what + " [" + file + ":" + std::to_string(line) + "]") {}
};

}  // namespace fastmem

#define FASTMEM_CHECK_ARG(cond, msg)                                   \
  do {                                                                 \
    if (!(cond)) throw ::fastmem::InvalidArgument((msg), __FILE__, __LINE__); \
  } while (0)
