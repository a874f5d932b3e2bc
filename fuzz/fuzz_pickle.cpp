// Fuzz target: the allow-list unpickler (nn/pickle.cpp) on raw pickle bytes. The first byte
// picks whether TorchScript's __torch__ objects are accepted; persistent ids become storages of
// the element count they name (item 4), as the checkpoint readers do, without data.
#include <memory>

#include "fuzz/fuzz_util.h"
#include "nn/pickle.h"

using namespace bcos::nn::pickle;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool script = data[0] & 1;
  const std::string_view bytes = bcos::fuzz::as_view(data + 1, size - 1);
  auto persistent_load = [](const Value& pid) -> StorageRef {
    if (!pid.is(Value::Kind::tuple) || pid.items.size() < 5 || !pid.items[4]->is(Value::Kind::integer) ||
        pid.items[4]->integer < 0 || pid.items[4]->integer > (int64_t(1) << 40))
      bcos::fail("persistent id: not a storage id: ", describe(pid));
    auto record = std::make_shared<StorageRecord>();
    record->numel = pid.items[4]->integer;
    return StorageRef{record, 0, record->numel};
  };
  try {
    Unpickler unpickler(bytes, "fuzz.pkl", 0, persistent_load);
    unpickler.allow_script_objects(script);
    const Value& v = unpickler.load();
    (void)describe(v);
  } catch (const bcos::Error&) {
  }
  return 0;
}
