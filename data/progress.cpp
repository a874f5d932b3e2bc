// The progress bar (see progress.h).
#include "data/progress.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <sys/ioctl.h>
#include <unistd.h>

namespace bcos::data {

namespace {

std::string format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string format_rate(double rate, const std::string& unit) {
  const bool slow = rate > 0 && rate < 1;
  std::string text = format(rate >= 100 ? "%.0f" : "%.2f", slow ? 1.0 / rate : rate);
  text += slow ? " s/" : " ";
  text += unit;
  if (!slow) text += "/s";
  return text;
}

int terminal_width(std::FILE* out) {
  winsize ws{};
  if (::ioctl(::fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20) return ws.ws_col;
  if (const char* c = std::getenv("COLUMNS")) {
    const int n = std::atoi(c);
    if (n > 20) return n;
  }
  return 100;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = int64_t(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

ProgressBar::ProgressBar(int64_t total, std::string description, std::string unit, std::FILE* out, Mode mode,
                         double line_interval_s)
    : total_(total), description_(std::move(description)), unit_(std::move(unit)), out_(out),
      line_interval_s_(line_interval_s) {
  terminal_ = out_ && (mode == Mode::terminal || (mode == Mode::automatic && ::isatty(::fileno(out_))));
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::set_metrics(const Metrics& metrics) {
  for (const auto& [name, value] : metrics) {
    bool found = false;
    for (auto& m : metrics_)
      if (m.first == name) m.second = value, found = true;
    if (!found) metrics_.emplace_back(name, value);
  }
}

void ProgressBar::update(int64_t n, const Metrics& metrics) {
  done_ += n;
  set_metrics(metrics);
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since >= (terminal_ ? 0.1 : line_interval_s_)) draw(false);
}

std::string ProgressBar::render(int width) const {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? double(done_) / elapsed : 0.0;
  // Built with += only: GCC 12 warns (falsely, -Wrestrict) on "literal" + std::string.
  std::string left = description_;
  if (!left.empty()) left += ": ";
  std::string right = " ";
  right += std::to_string(done_);
  if (total_ > 0) {
    left += format("%3.0f%%", 100.0 * double(done_) / double(total_));
    right += '/';
    right += std::to_string(total_);
  }
  right += " [";
  right += format_duration(elapsed);
  if (total_ > 0) {
    right += '<';
    right += rate > 0 ? format_duration(double(total_ - done_) / rate) : std::string("?");
  }
  right += ", ";
  right += format_rate(rate, unit_);
  for (const auto& [name, value] : metrics_) {
    right += ", ";
    right += name;
    right += '=';
    right += format("%.4g", value);
  }
  right += ']';
  if (total_ <= 0) return left + right;
  // The bar fills what the line has left, between 10 and 30 characters.
  const int room = width - int(left.size() + right.size()) - 3;
  if (room < 10) return left + right;
  const int cells = std::min(room, 30);
  const int filled = int(double(cells) * std::clamp(double(done_) / double(total_), 0.0, 1.0));
  left += " |";
  left.append(size_t(filled), '#');
  left.append(size_t(cells - filled), ' ');
  left += '|';
  return left + right;
}

void ProgressBar::draw(bool final) {
  last_draw_ = std::chrono::steady_clock::now();
  if (!out_) return;  // silent (the data-parallel ranks other than 0)
  if (terminal_) {
    std::fprintf(out_, "\r%s\033[K%s", render(terminal_width(out_) - 1).c_str(), final ? "\n" : "");
  } else {
    std::fprintf(out_, "%s\n", render(100).c_str());
  }
  std::fflush(out_);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

}  // namespace bcos::data
