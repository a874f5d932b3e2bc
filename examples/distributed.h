// What the examples' --distributed runs share: starting the job's processes and checking a
// checkpoint's world size on --resume (each rank's share of the data depends on it).
#pragma once

#include <string>

#include "dist/dist.h"
#include "nn/checkpoint.h"

namespace examples {

// --distributed: joins the job the launcher started (mpirun / srun / torchrun); the global
// `batch` must split evenly over its processes. Without it, refuses to run as one of several
// processes (each would run the whole example and write the same files).
inline void start_processes(const std::string& example, bool distributed, int64_t batch) {
  using namespace bcos;
  if (distributed) {
    dist::init();
    BCOS_CHECK(batch % dist::world_size() == 0, example, ": --batch ", batch, " does not split over ",
               dist::world_size(), " processes");
    return;
  }
  const dist::LaunchInfo launch = dist::launch_info();
  BCOS_CHECK(launch.world_size == 1, example, ": started by ", launch.launcher, " as one of ", launch.world_size,
             " processes; add --distributed (else every process would run the whole example)");
}

// A checkpoint records the world size that wrote it (state.extra["world_size"], absent: 1).
inline void check_resume_world_size(const std::string& example, const std::string& checkpoint,
                                    const bcos::nn::TrainingState& state) {
  using namespace bcos;
  const auto it = state.extra.find("world_size");
  const std::string written = it == state.extra.end() ? "1" : it->second, now = str(dist::world_size());
  BCOS_CHECK(written == now, example, ": --resume: ", checkpoint, " was written by a run of ", written,
             " process(es); resume it with as many (each one's share of the data depends on it), not ", now);
}

}  // namespace examples
