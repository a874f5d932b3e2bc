// A progress bar for long loops (training epochs, evaluation). On a terminal it redraws one
// line in place, at most 10 times a second; otherwise (a log file, CI) it prints a plain line
// every few seconds, so logs stay readable. Shows done / total, percentage, rate, elapsed and
// remaining time, and whatever metrics the caller passes (loss, accuracy).
//
//   ProgressBar bar(loader.num_batches(), "epoch 3");
//   for (Batch& b : loader.epoch(3)) { ...; bar.update(1, {{"loss", loss}, {"acc", acc}}); }
//   bar.finish();
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace bcos::data {

class ProgressBar {
 public:
  enum class Mode { automatic, terminal, lines };
  using Metrics = std::vector<std::pair<std::string, double>>;

  // total <= 0: unknown (no percentage or ETA). `unit` names what is counted ("it", "img").
  // out = nullptr: counts but prints nothing.
  ProgressBar(int64_t total, std::string description, std::string unit = "it",
              std::FILE* out = stderr, Mode mode = Mode::automatic, double line_interval_s = 5.0);
  ~ProgressBar();

  void update(int64_t n = 1, const Metrics& metrics = {});
  void set_metrics(const Metrics& metrics);
  void finish();  // draws the final state and ends the line; idempotent

  // The text of the bar as it would be printed now, without terminal control codes.
  std::string render(int width = 100) const;
  int64_t done() const { return done_; }

 private:
  void draw(bool final);
  int64_t total_;
  std::string description_, unit_;
  std::FILE* out_;
  bool terminal_;
  double line_interval_s_;
  int64_t done_ = 0;
  Metrics metrics_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool finished_ = false, drawn_ = false;
};

// 75 -> "01:15", 3725 -> "1:02:05".
std::string format_duration(double seconds);

}  // namespace bcos::data
