// A small command-line parser for the examples: --name value options and --flags, with a usage
// text built from what the program declares, and errors for unknown or missing options.
#pragma once

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "tensor/error.h"

namespace examples {

class Args {
 public:
  Args(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

  // Declares an option; an empty default with required = true makes it mandatory.
  Args& option(const std::string& name, const std::string& fallback, const std::string& help, bool required = false) {
    specs_.push_back({name, fallback, help, required, false});
    return *this;
  }
  Args& flag(const std::string& name, const std::string& help) {
    specs_.push_back({name, "", help, false, true});
    return *this;
  }

  // Exits with the usage text on --help; raises bcos::Error for anything malformed.
  void parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        std::fputs(usage().c_str(), stdout);
        std::exit(0);
      }
      BCOS_CHECK(a.rfind("--", 0) == 0, program_, ": unexpected argument '", a, "'\n", usage());
      std::string name(a, 2), value;
      const size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value.assign(name, eq + 1);
        name.resize(eq);
      }
      const Spec* s = find(name);
      BCOS_CHECK(s, program_, ": unknown option --", name, "\n", usage());
      if (s->is_flag) {
        values_.insert_or_assign(name, std::string(1, '1'));  // (not = "1": GCC 12 -Wrestrict false positive)
        continue;
      }
      if (eq == std::string::npos) {
        BCOS_CHECK(i + 1 < argc, program_, ": --", name, " needs a value");
        value = argv[++i];
      }
      values_[name] = value;
    }
    for (const Spec& s : specs_)
      BCOS_CHECK(!s.required || values_.count(s.name), program_, ": --", s.name, " is required\n", usage());
  }

  std::string get(const std::string& name) const {
    auto it = values_.find(name);
    if (it != values_.end()) return it->second;
    const Spec* s = find(name);
    BCOS_CHECK(s, program_, ": option --", name, " was never declared");
    return s->fallback;
  }
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  int64_t integer(const std::string& name) const {
    const std::string v = get(name);
    char* end = nullptr;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    BCOS_CHECK(!v.empty() && end && *end == '\0', program_, ": --", name, " expects an integer, got '", v, "'");
    return n;
  }
  double number(const std::string& name) const {
    const std::string v = get(name);
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    BCOS_CHECK(!v.empty() && end && *end == '\0' && std::isfinite(x), program_, ": --", name,
               " expects a number, got '", v, "'");
    return x;
  }
  bool enabled(const std::string& name) const { return values_.count(name) > 0; }

  std::string usage() const {  // built with += only: GCC 12 misreports "literal" + std::string
    std::string u = "usage: ";
    u += program_;
    for (const Spec& s : specs_) {
      u += s.required ? " --" : " [--";
      u += s.name;
      if (!s.is_flag) {
        u += ' ';
        u += upper(s.name);
      }
      if (!s.required) u += ']';
    }
    u += '\n';
    u += summary_;
    u += '\n';
    for (const Spec& s : specs_) {
      u += "  --";
      u += s.name;
      if (!s.is_flag) {
        u += ' ';
        u += upper(s.name);
      }
      u += "\n      ";
      u += s.help;
      if (!s.fallback.empty() && !s.is_flag) {
        u += " (default ";
        u += s.fallback;
        u += ')';
      }
      u += '\n';
    }
    return u;
  }

 private:
  struct Spec {
    std::string name, fallback, help;
    bool required, is_flag;
  };
  const Spec* find(const std::string& name) const {
    for (const Spec& s : specs_)
      if (s.name == name) return &s;
    return nullptr;
  }
  static std::string upper(std::string s) {
    for (char& c : s) c = c == '-' ? '_' : char(std::toupper(static_cast<unsigned char>(c)));
    return s;
  }
  std::string program_, summary_;
  std::vector<Spec> specs_;
  std::map<std::string, std::string> values_;
};

}  // namespace examples
