// cli::App and cli::Option (examples/cli.h): CLI11, compiled once for all the examples. Each
// call hands on to the CLI11 call of the same name, so help, messages and exit codes are CLI11's.
#include "examples/cli.h"

#include <CLI/CLI.hpp>

namespace cli {

// CLI11 2.1's PositiveNumber and NonNegativeNumber are ranges up to DBL_MAX, and their message
// printed that bound in full (309 digits); the same checks, with a message a person can read.
static CLI::Validator sign_check(bool positive) {
  return CLI::Validator(
      [positive](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value) || value != value) return "Value " + text + " is not a number";
        if (positive && !(value > 0)) return "Value " + text + " is not positive";
        if (!positive && !(value >= 0)) return "Value " + text + " is negative";
        return {};
      },
      positive ? "POSITIVE" : "NONNEGATIVE");
}

Option* Option::check(const Check& c) {
  switch (c.kind) {
    case Check::kPositive: impl_->check(sign_check(true)); break;
    case Check::kNonNegative: impl_->check(sign_check(false)); break;
    case Check::kExistingFile: impl_->check(CLI::ExistingFile); break;
    case Check::kIntRange: impl_->check(CLI::Range(int(c.lo), int(c.hi))); break;
    case Check::kRange: impl_->check(CLI::Range(c.lo, c.hi)); break;
    case Check::kMember: impl_->check(CLI::IsMember(c.members)); break;
  }
  return this;
}

Option* Option::required() {
  impl_->required();
  return this;
}

Option* Option::default_str(const std::string& shown) {
  impl_->default_str(shown);
  return this;
}

size_t Option::count() const { return impl_->count(); }
std::string Option::get_name() const { return impl_->get_name(); }
std::string Option::as_string() const { return impl_->as<std::string>(); }

App::App(const std::string& description, const std::string& name)
    : owned_(std::make_unique<CLI::App>(description, name)), app_(owned_.get()) {}
App::App(CLI::App* borrowed) : app_(borrowed) {}
App::~App() = default;

// One body for every value type: CLI11's own add_option<T>.
template <class T>
static Option* add(CLI::App* app, std::deque<Option>& options, const std::string& name, T& value,
                   const std::string& description) {
  return &options.emplace_back(app->add_option(name, value, description));
}

Option* App::add_option(const std::string& n, std::string& v, const std::string& d) { return add(app_, options_, n, v, d); }
Option* App::add_option(const std::string& n, int& v, const std::string& d) { return add(app_, options_, n, v, d); }
Option* App::add_option(const std::string& n, long& v, const std::string& d) { return add(app_, options_, n, v, d); }
Option* App::add_option(const std::string& n, unsigned long& v, const std::string& d) { return add(app_, options_, n, v, d); }
Option* App::add_option(const std::string& n, double& v, const std::string& d) { return add(app_, options_, n, v, d); }
Option* App::add_option(const std::string& n, float& v, const std::string& d) { return add(app_, options_, n, v, d); }
Option* App::add_option(const std::string& n, std::vector<std::string>& v, const std::string& d) {
  return add(app_, options_, n, v, d);
}

Option* App::add_flag(const std::string& name, bool& value, const std::string& description) {
  return &options_.emplace_back(app_->add_flag(name, value, description));
}

App* App::add_subcommand(const std::string& name, const std::string& description) {
  return subcommands_.emplace_back(new App(app_->add_subcommand(name, description))).get();
}

void App::require_subcommand(int n) { app_->require_subcommand(n); }
bool App::parsed() const { return app_->parsed(); }
void App::show_defaults() { app_->option_defaults()->always_capture_default(); }

int App::parse(int argc, char** argv) {
  try {
    app_->parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app_->exit(e);
  }
  return -1;
}

}  // namespace cli
