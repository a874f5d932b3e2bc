// The words of an out-of-range index error. An index op (index_select, gather, ...) names itself;
// an op built on one sets an IndexRole for its scope so that the error speaks of that op's input
// instead ("cross_entropy: target 7 is out of range for 5 classes"). A GPU finds a bad index
// inside the kernel and the error is raised at the next synchronisation (tensor/cuda/fault.cu),
// after the scope has ended: so a role is kept in a process-wide table and kernels carry its
// number.
#pragma once

#include <cstdint>
#include <string>

namespace bcos {

class IndexRole {
 public:
  // subject: what the indices are, with the op ("cross_entropy: target"); unit: what the limit
  // counts ("classes").
  IndexRole(const std::string& subject, const std::string& unit);
  ~IndexRole();
  IndexRole(const IndexRole&) = delete;
  IndexRole& operator=(const IndexRole&) = delete;

 private:
  int previous_;
};

// This thread's role now (0: none, the index op speaks for itself).
int current_index_role();
// "gather: index 7 is out of range for size 5", or under role r its own words.
std::string index_error_text(const char* op, int role, int64_t value, int64_t limit);

}  // namespace bcos
