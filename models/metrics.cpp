// Accuracy and the grid pointing game (see metrics.h).
#include "models/metrics.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "autograd/ops.h"
#include "data/rng.h"

namespace bcos::models {

double accuracy(const Tensor& logits, const Tensor& labels) {
  BCOS_CHECK(logits.dim() == 2 && labels.dim() == 1 && labels.size(0) == logits.size(0) && labels.dtype() == DType::i64,
             "accuracy: expected logits [N, C] and int64 labels [N], got ", logits.shape(), " and ", labels.dtype(),
             " ", labels.shape());
  if (logits.size(0) == 0) return 0;
  NoGradGuard no_grad;
  return sum(eq(argmax(logits.detach(), 1), labels).to(DType::f32)).item() / double(logits.size(0));
}

int64_t gridpg_smoothing(int64_t cell) {
  int64_t k = std::max<int64_t>(1, std::llround(15.0 * double(cell) / 224.0));
  return k % 2 == 1 ? k : k + 1;
}

double gridpg_score(const Tensor& map, int64_t grid, int64_t row, int64_t col, int64_t smooth) {
  BCOS_CHECK(map.dim() == 2 && map.size(0) % grid == 0 && map.size(1) % grid == 0, "gridpg_score: map ", map.shape(),
             " does not split into a ", grid, " x ", grid, " grid");
  BCOS_CHECK(smooth >= 1 && smooth % 2 == 1, "gridpg_score: the smoothing window must be odd, got ", smooth);
  NoGradGuard no_grad;
  Tensor m = map.detach().to(DType::f64);
  if (smooth > 1) m = avg_pool2d(m.unsqueeze(0).unsqueeze(0), smooth, 1, smooth / 2).squeeze(0).squeeze(0);
  m = clamp_min(m, 0.0);
  const double total = sum(m).item();
  if (!(total > 0)) return 0;
  const int64_t ch = map.size(0) / grid, cw = map.size(1) / grid;
  return sum(m.slice(0, row * ch, (row + 1) * ch).slice(1, col * cw, (col + 1) * cw)).item() / total;
}

void summarize(GridPGResult& r) {
  if (r.scores.empty()) return;
  std::vector<double> v = r.scores;
  std::sort(v.begin(), v.end());
  auto q = [&](double p) {
    const double rank = p * double(v.size() - 1);
    const size_t lo = size_t(std::floor(rank)), hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (rank - double(lo)) * (v[hi] - v[lo]);
  };
  double s = 0;
  for (double x : v) s += x;
  r.mean = s / double(v.size());
  r.q1 = q(0.25), r.median = q(0.5), r.q3 = q(0.75);
}

GridPGResult grid_pointing_game(const Tensor& images, const Tensor& labels, const AttributionFn& attribution,
                                const GridPGOptions& o) {
  BCOS_CHECK(images.dim() == 4 && labels.dim() == 1 && labels.size(0) == images.size(0),
             "grid_pointing_game: expected images [M, C, h, w] and labels [M], got ", images.shape(), " and ",
             labels.shape());
  BCOS_CHECK(o.grid >= 1 && o.grids >= 1 && o.batch >= 1, "grid_pointing_game: grid, grids and batch must be positive");
  const int64_t n = o.grid, cells = n * n, h = images.size(2), w = images.size(3);
  std::map<int64_t, std::vector<int64_t>> by_class;
  const std::vector<int64_t> label_values = labels.to_vector<int64_t>();
  for (size_t i = 0; i < label_values.size(); ++i) by_class[label_values[i]].push_back(int64_t(i));
  BCOS_CHECK(int64_t(by_class.size()) >= cells, "grid_pointing_game: a ", n, " x ", n, " grid needs images of ",
             cells, " distinct classes, the pool has ", by_class.size());
  std::vector<int64_t> classes;
  for (const auto& [c, idx] : by_class) classes.push_back(c);

  GridPGResult r;
  r.cell = std::min(h, w);
  r.smooth = o.smooth > 0 ? o.smooth : gridpg_smoothing(r.cell);
  r.grids = o.grids;
  data::Rng rng(o.seed);
  Tensor pool = images.detach();
  // Grids are assembled, then explained a batch of grids at a time, all their cells' classes at once.
  std::vector<Tensor> batch_images;
  std::vector<int64_t> batch_targets;  // [grids in batch, cells]
  auto flush = [&] {
    if (batch_images.empty()) return;
    const int64_t b = int64_t(batch_images.size());
    Tensor maps = attribution(stack(batch_images, 0), from_vector(batch_targets, {b, cells}));
    BCOS_CHECK(maps.dim() == 4 && maps.size(0) == b && maps.size(1) == cells && maps.size(2) == n * h &&
                   maps.size(3) == n * w,
               "grid_pointing_game: the attribution function returned ", maps.shape(), ", expected [", b, ", ", cells,
               ", ", n * h, ", ", n * w, "]");
    for (int64_t i = 0; i < b; ++i)
      for (int64_t cell = 0; cell < cells; ++cell)
        r.scores.push_back(gridpg_score(maps.select(0, i).select(0, cell), n, cell / n, cell % n, r.smooth));
    batch_images.clear();
    batch_targets.clear();
  };
  for (int64_t g = 0; g < o.grids; ++g) {
    std::vector<int64_t> order = classes;  // a seeded partial Fisher–Yates shuffle: n² distinct classes
    std::vector<Tensor> tiles;
    for (int64_t k = 0; k < cells; ++k) {
      const size_t j = size_t(rng.randint(k, int64_t(order.size())));
      std::swap(order[size_t(k)], order[j]);
      const auto& members = by_class[order[size_t(k)]];
      tiles.push_back(pool.select(0, members[size_t(rng.randint(0, int64_t(members.size())))]));
      batch_targets.push_back(order[size_t(k)]);
    }
    std::vector<Tensor> rows;
    for (int64_t row = 0; row < n; ++row)
      rows.push_back(cat(std::vector<Tensor>(tiles.begin() + row * n, tiles.begin() + (row + 1) * n), 2));
    batch_images.push_back(cat(rows, 1));  // [C, n·h, n·w]
    if (int64_t(batch_images.size()) >= o.batch) flush();
  }
  flush();
  summarize(r);
  return r;
}

double border_area_share(int64_t height, int64_t width, int64_t ring) {
  BCOS_CHECK(height > 0 && width > 0 && ring >= 0, "border_area_share: ", height, " x ", width, ", ring ", ring);
  const int64_t inner = std::max<int64_t>(0, height - 2 * ring) * std::max<int64_t>(0, width - 2 * ring);
  return 1.0 - double(inner) / double(height * width);
}

double border_share(const Tensor& maps, int64_t ring) {
  BCOS_CHECK(maps.dim() == 3 && ring >= 0, "border_share: expected maps [N, H, W] and ring >= 0, got ", maps.shape(),
             " and ", ring);
  NoGradGuard no_grad;
  Tensor m = clamp_min(maps.detach().to(DType::f64), 0.0);
  const double total = sum(m).item();
  if (!(total > 0)) return 0;
  const int64_t h = m.size(1), w = m.size(2);
  if (2 * ring >= h || 2 * ring >= w) return 1;
  const double inner = sum(m.slice(1, ring, h - ring).slice(2, ring, w - ring)).item();
  return (total - inner) / total;
}

}  // namespace bcos::models
