// bcos::Error and the checks that raise it. Every bad input (shape, dtype, device, index,
// file) becomes an exception whose message names the operation and the offending values,
// never an abort or a silent wrong answer.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace bcos {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A device allocation that cannot be met even after the allocator's cache is returned (PyTorch's
// torch.OutOfMemoryError). A caller with a smaller way to do its work catches this one alone:
// the cuDNN convolutions do, to try an algorithm with less workspace.
struct OutOfMemoryError : Error {
  using Error::Error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from any streamable pieces: str("conv2d: weight ", w.shape(), " ...").
template <class... Parts>
std::string str(const Parts&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  return os.str();
}

template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw Error(str(parts...));
}

}  // namespace bcos

// BCOS_CHECK(cond, "op: ", details...) raises bcos::Error with the message when cond is false.
#define BCOS_CHECK(cond, ...)            \
  do {                                   \
    if (!(cond)) ::bcos::fail(__VA_ARGS__); \
  } while (0)
