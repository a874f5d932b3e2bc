// What the examples' command lines share. CLI11 parses (help, validation, subcommands);
// `run` turns a parse error into CLI11's message and exit code and any other error into one
// line on stderr and exit status 1, so every example fails the same way (in a data-parallel job
// the failing rank ends every rank: dist::abort). JSON goes through
// nlohmann::ordered_json (keys in the order written; NaN and infinities print as null).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "dist/dist.h"

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
int run(CLI::App& app, int argc, char** argv, Body&& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
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
inline void add_autocast_option(CLI::App& app, std::string& value) {
  app.add_option("--autocast", value, "mixed precision for training: none, bf16 (products of bfloat16 operands, float32 "
                 "sums; AMX on CPUs that have it) or f16 (float16 products with dynamic loss scaling)")
      ->check(CLI::IsMember({"none", "bf16", "f16"}));
}
inline bcos::DType autocast_type(const std::string& value) {
  return value == "bf16" ? bcos::DType::bf16 : value == "f16" ? bcos::DType::f16 : bcos::DType::f32;
}

// Defaults shown in --help for every option that has one.
inline void show_defaults(CLI::App& app) { app.option_defaults()->always_capture_default(); }

}  // namespace examples
