// Metrics of classifiers and their explanations: top-1 accuracy, and the grid pointing game
// (GridPG, B-cos v1/v2): tile n × n images of distinct classes, explain the grid for each
// cell's class, and score how much of the positive attribution lands inside that cell.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "tensor/tensor.h"

namespace bcos::models {

// Fraction of rows whose largest logit is the label. logits [N, C], labels int64 [N].
double accuracy(const Tensor& logits, const Tensor& labels);

// (images [B, C, H, W], targets int64 [B, K]) -> attribution maps [B, K, H, W] (summed over
// channels), one per target: GridPG asks for the n² cells' classes of each grid at once, so one
// forward pass can serve them all (models/explain.h: contribution_maps).
using AttributionFn = std::function<Tensor(const Tensor& images, const Tensor& targets)>;

struct GridPGOptions {
  int64_t grid = 3;        // n: n × n cells
  int64_t grids = 500;     // how many grids
  uint64_t seed = 0;
  int64_t smooth = -1;     // avg-pool window; -1: 15 at 224-px cells, scaled to the cell size (odd)
  int64_t batch = 4;       // grids per call of the attribution function
};

struct GridPGResult {
  std::vector<double> scores;  // one per (grid, cell)
  double mean = 0, q1 = 0, median = 0, q3 = 0;
  int64_t smooth = 1, cell = 0, grids = 0;
  // No score (too few classes to fill a grid, or GridPG skipped): NaN statistics.
  static GridPGResult unscored() {
    GridPGResult r;
    r.mean = r.q1 = r.median = r.q3 = std::nan("");
    return r;
  }
};

// The smoothing window GridPG uses for a cell size: 15 at 224 px, scaled, rounded to an odd size.
int64_t gridpg_smoothing(int64_t cell);

// The score of one attribution map [H, W] for the cell (row, col) of an n × n grid: positive
// attribution inside the cell / total positive attribution (0 when there is none), after
// avg-pool smoothing (window `smooth`, stride 1, zero padding counted).
double gridpg_score(const Tensor& map, int64_t grid, int64_t row, int64_t col, int64_t smooth);

// images: the candidate pool [M, C, h, w] (correctly classified, confident images), labels [M].
// Each grid draws n² distinct classes (seeded) and one image of each; needs ≥ n² classes.
GridPGResult grid_pointing_game(const Tensor& images, const Tensor& labels, const AttributionFn& attribution,
                                const GridPGOptions& options = {});

// Mean and quartiles (linear interpolation) of scores.
void summarize(GridPGResult& result);

// How much of the positive attribution lies in the outer `ring` pixels of the image: maps
// [N, H, W] -> Σ positive attribution in the ring / Σ positive attribution, over all N maps
// together (0 when there is none). A map spread evenly gives the ring's share of the area,
// border_area_share(): explanations that hug the border score well above it.
double border_share(const Tensor& maps, int64_t ring);
double border_area_share(int64_t height, int64_t width, int64_t ring);

}  // namespace bcos::models
