// The timing loop of the model benchmarks (bench/models.cpp, bench/bcos.cpp): two warm-up steps
// (allocations, caches, cuDNN's algorithm choices), then steps for `seconds` (at least 2), each
// followed by `sync` (waits for queued GPU work; nothing to do on the CPU). Prints
// "images_per_s <f> peak_rss_mb <f>" without the newline, so a caller can append fields.
#pragma once

#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>

inline void time_steps(const std::function<void()>& run, const std::function<void()>& sync, int64_t batch,
                       double seconds) {
  run();
  run();
  sync();
  int64_t iters = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  while (iters < 2 || elapsed < seconds) {
    run();
    ++iters;
    sync();
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("images_per_s %.2f peak_rss_mb %.1f", double(iters * batch) / elapsed, double(usage.ru_maxrss) / 1024.0);
}
