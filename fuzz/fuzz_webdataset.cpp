// Fuzz target: a WebDataset shard (data/webdataset.cpp) read as the loader does: the sample
// count from the headers, then every sample (grouping by key, labels, images decoded).
#include "data/webdataset.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bcos::fuzz::InputFile file(".tar");
  try {
    bcos::data::WebDatasetOptions options;
    options.require_label = size > 0 && (data[size - 1] & 1);
    bcos::data::WebDataset dataset(file.write(bcos::fuzz::as_view(data, size)), options);
    (void)dataset.count();
    auto stream = dataset.stream();
    bcos::data::Record record;
    std::string missing;
    while (stream.next(record, &missing)) {
      if (missing.empty() && !record.image_bytes.empty()) {
        try {
          (void)bcos::data::record_image(record);
        } catch (const bcos::Error&) {
        }
      }
      missing.clear();
    }
  } catch (const bcos::Error&) {
  }
  return 0;
}
