// IndexRole's table: roles are interned (one entry per distinct wording, a handful per process)
// and never removed, so a number a kernel carries stays valid until its error is raised.
#include "tensor/index_errors.h"

#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "tensor/error.h"

namespace bcos {

namespace {
thread_local int t_role = 0;

struct Roles {
  std::mutex mutex;
  std::vector<std::pair<std::string, std::string>> words{{"", ""}};  // [0]: no role
  std::map<std::pair<std::string, std::string>, int> numbers;
};
Roles& roles() {
  static Roles* r = new Roles;  // leaked: errors may be raised while statics are destroyed
  return *r;
}
}  // namespace

IndexRole::IndexRole(const std::string& subject, const std::string& unit) : previous_(t_role) {
  Roles& r = roles();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto [it, added] = r.numbers.try_emplace({subject, unit}, int(r.words.size()));
  if (added) r.words.emplace_back(subject, unit);
  t_role = it->second;
}

IndexRole::~IndexRole() { t_role = previous_; }

int current_index_role() { return t_role; }

std::string index_error_text(const char* op, int role, int64_t value, int64_t limit) {
  std::pair<std::string, std::string> words;
  {
    Roles& r = roles();
    std::lock_guard<std::mutex> lock(r.mutex);
    if (role > 0 && size_t(role) < r.words.size()) words = r.words[size_t(role)];
  }
  if (words.first.empty()) return str(op, ": index ", value, " is out of range for size ", limit);
  return str(words.first, " ", value, " is out of range for ", limit, " ", words.second);
}

}  // namespace bcos
