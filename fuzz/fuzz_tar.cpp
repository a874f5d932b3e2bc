// Fuzz target: the streaming tar reader (data/tar.cpp): ustar headers and checksums, pax
// records, GNU long names, sizes, padding, end blocks; each member's data is read or skipped.
#include "data/tar.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bcos::fuzz::InputFile file(".tar");
  try {
    bcos::data::TarReader tar(file.write(bcos::fuzz::as_view(data, size)));
    bcos::data::TarMember member;
    for (int i = 0; tar.next(member); ++i)
      if (i % 2 == 0) (void)tar.read_data();  // alternate reading and skipping
  } catch (const bcos::Error&) {
  }
  return 0;
}
