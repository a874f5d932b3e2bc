// What the examples' command lines share. CLI11 parses (help, validation, subcommands) behind
// `cli::App`, a thin wall compiled once in examples/cli.cpp: CLI11 is header-only, and every
// example compiled its parser again (a minimal CLI11 program: 16 s at -O3). `run` turns a parse
// error into CLI11's message and exit code and any other error into one line on stderr and exit
// status 1, so every example fails the same way (in a data-parallel job the failing rank ends
// every rank: dist::abort). JSON goes through nlohmann::ordered_json (keys in the order written;
// NaN and infinities print as null).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dist/dist.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

// CLI11's App / Option / validators, by the same names, for the types the examples parse.
namespace cli {

// A check of an option's value, turned into the CLI11 validator of the same name.
struct Check {
  enum Kind { kPositive, kNonNegative, kExistingFile, kIntRange, kRange, kMember } kind;
  double lo = 0, hi = 0;
  std::vector<std::string> members = {};
};
inline const Check PositiveNumber{Check::kPositive};
inline const Check NonNegativeNumber{Check::kNonNegative};
inline const Check ExistingFile{Check::kExistingFile};
inline Check Range(int lo, int hi) { return {Check::kIntRange, double(lo), double(hi)}; }
inline Check Range(double lo, double hi) { return {Check::kRange, lo, hi}; }
inline Check IsMember(std::vector<std::string> members) { return {Check::kMember, 0, 0, std::move(members)}; }

class Option {
 public:
  explicit Option(CLI::Option* impl) : impl_(impl) {}
  Option* check(const Check& c);
  Option* required();
  Option* default_str(const std::string& shown);  // what --help shows as the default
  size_t count() const;                            // times given on the command line
  std::string get_name() const;
  std::string as_string() const;                   // the value as typed

 private:
  CLI::Option* impl_;
};

class App {
 public:
  explicit App(const std::string& description = "", const std::string& name = "");
  ~App();
  App(const App&) = delete;
  App& operator=(const App&) = delete;

  Option* add_option(const std::string& name, std::string& value, const std::string& description = "");
  Option* add_option(const std::string& name, int& value, const std::string& description = "");
  Option* add_option(const std::string& name, long& value, const std::string& description = "");
  Option* add_option(const std::string& name, unsigned long& value, const std::string& description = "");
  Option* add_option(const std::string& name, double& value, const std::string& description = "");
  Option* add_option(const std::string& name, float& value, const std::string& description = "");
  Option* add_option(const std::string& name, std::vector<std::string>& values, const std::string& description = "");
  Option* add_flag(const std::string& name, bool& value, const std::string& description = "");
  App* add_subcommand(const std::string& name, const std::string& description);
  void require_subcommand(int n);
  bool parsed() const;   // a subcommand: was it given?
  void show_defaults();  // --help shows the default of every option added after this

  // Parses the command line. --help or a parse error: prints CLI11's message and returns the exit
  // status; -1 when the program should go on.
  int parse(int argc, char** argv);

 private:
  explicit App(CLI::App* borrowed);
  std::unique_ptr<CLI::App> owned_;
  CLI::App* app_;
  std::deque<Option> options_;
  std::deque<std::unique_ptr<App>> subcommands_;
};

}  // namespace cli

namespace examples {

using Json = nlohmann::ordered_json;

// Where ../shared-style data lives: $BCOS_DATA, else ../shared.
inline std::string data_root() {
  const char* env = std::getenv("BCOS_DATA");
  return env && *env ? env : "../shared";
}

// The command line as typed, for reports.
inline std::string command_line(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) {
    if (i) s += ' ';
    s += argv[i];
  }
  return s;
}

// Parses the command line into `app`, then runs `body`; returns main's exit status.
template <class Body>
int run(cli::App& app, int argc, char** argv, Body&& body) {
  if (const int status = app.parse(argc, argv); status >= 0) return status;
  try {
    body();
    bcos::dist::finalize();
    return 0;
  } catch (const std::exception& e) {
    // One rank of several: end them all (the others would wait for it until their timeout).
    if (bcos::dist::world_size() > 1) bcos::dist::abort(1, bcos::str("rank ", bcos::dist::rank(), ": ", e.what()));
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}

// Pretty JSON; bytes that are not UTF-8 (paths, say) become U+FFFD instead of an exception.
inline std::string dump(const Json& j) { return j.dump(2, ' ', false, Json::error_handler_t::replace); }

// --autocast none | bf16 | f16: the operand type of the training step's products
// (autograd.h: AutocastGuard; float32 when none).
inline void add_autocast_option(cli::App& app, std::string& value) {
  app.add_option("--autocast", value, "mixed precision for training: none, bf16 (products of bfloat16 operands, float32 "
                 "sums; AMX or AVX-512 BF16 on CPUs that have them) or f16 (float16 products with dynamic loss scaling)")
      ->check(cli::IsMember({"none", "bf16", "f16"}));
}
inline bcos::DType autocast_type(const std::string& value) {
  return value == "bf16" ? bcos::DType::bf16 : value == "f16" ? bcos::DType::f16 : bcos::DType::f32;
}

// Defaults shown in --help for every option that has one.
inline void show_defaults(cli::App& app) { app.show_defaults(); }

}  // namespace examples
