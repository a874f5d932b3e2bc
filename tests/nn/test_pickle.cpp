// The allow-list unpickler on its own: plain data from Python's pickler in protocols 0-4,
// forbidden globals and code-running opcodes, and hostile streams (deep nesting, bad memo
// indices, truncation) that must end in a bcos::Error, never a crash.
#include <doctest/doctest.h>

#include "nn/pickle.h"
#include "nn/torch_checkpoint.h"
#include "tests/nn/helpers.h"

using namespace bcos;
using namespace bcos::nn;
using pickle::Unpickler;
using pickle::Value;
using testdata::error_of;
using testdata::TempDir;
using testnn::PickleWriter;
using Kind = Value::Kind;
using namespace std::string_literals;

namespace {

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += char(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

const Value* get(const Value& dict, const std::string& key) {
  for (const auto& [k, v] : dict.entries)
    if (k->is_string() && k->text == key) return v;
  return nullptr;
}

std::string unpickle_error(const std::string& bytes) {
  return error_of([&] {
    Unpickler u(bytes, "test.pkl");
    u.load();
  });
}

// pickle.dumps({'a': [1, -2, 300, 70000, -70000, 2**40, -2**63, 2**64, 3.5, None, True, False],
//               'b': ('x', 'é', b'yz'), 'c': {}, 'd': [[], ()]}, protocol=3 and 4)
const char* kProtocol3 =
    "80037d71002858010000006171015d7102284b014afeffffff4d2c014a701101004a90eefeff8a060000000000018a08000000000000"
    "00808a0900000000000000000147400c0000000000004e888965580100000062710358010000007871045802000000c3a97105430279"
    "7a710687710758010000006371087d7109580100000064710a5d710b285d710c2965752e";
const char* kProtocol4 =
    "8004956f000000000000007d94288c0161945d94284b014afeffffff4d2c014a701101004a90eefeff8a060000000000018a08000000"
    "00000000808a0900000000000000000147400c0000000000004e8889658c0162948c0178948c02c3a9944302797a9487948c0163947d"
    "948c0164945d94285d942965752e";

}  // namespace

TEST_CASE("serialize: pickle reads Python's plain data, protocols 3 and 4") {
  for (const char* hex : {kProtocol3, kProtocol4}) {
    const std::string bytes = from_hex(hex);  // the Unpickler reads it in place
    Unpickler u(bytes, "test.pkl");
    const Value& root = u.load();
    REQUIRE(root.is(Kind::dict));
    REQUIRE(root.entries.size() == 4);
    const Value* a = get(root, "a");
    REQUIRE(a);
    REQUIRE(a->is(Kind::list));
    REQUIRE(a->items.size() == 12);
    const int64_t ints[] = {1, -2, 300, 70000, -70000, int64_t(1) << 40, INT64_MIN};
    for (int i = 0; i < 7; ++i) {
      CHECK(a->items[size_t(i)]->is(Kind::integer));
      CHECK(a->items[size_t(i)]->integer == ints[i]);
    }
    CHECK(a->items[7]->is(Kind::big_integer));  // 2**64
    CHECK(a->items[8]->floating == 3.5);
    CHECK(a->items[9]->is(Kind::none));
    CHECK(a->items[10]->boolean);
    CHECK_FALSE(a->items[11]->boolean);
    const Value* b = get(root, "b");
    REQUIRE(b->is(Kind::tuple));
    CHECK(b->items[1]->text == "\xc3\xa9");
    CHECK(b->items[2]->is(Kind::bytes));
    CHECK(b->items[2]->text == "yz");
    CHECK(get(root, "c")->is(Kind::dict));
    CHECK(get(root, "d")->items[1]->is(Kind::tuple));
    CHECK(u.consumed() == bytes.size());
  }
}

TEST_CASE("serialize: pickle reads protocol 0 text opcodes") {
  // pickle.dumps({1: [1, -2, 2**40, -2**63, 3.5, None, True, False], 2: ((), {}, [])}, protocol=0)
  const std::string p0 = "(dp0\nI1\n(lp1\nI1\naI-2\naL1099511627776L\naL-9223372036854775808L\naF3.5\naNaI01\naI00\nasI2\n"
                         "((t(dp2\n(lp3\ntp4\ns.";
  Unpickler u(p0, "test.pkl");
  const Value& root = u.load();
  REQUIRE(root.entries.size() == 2);
  const Value* list = root.entries[0].second;
  REQUIRE(list->items.size() == 8);
  CHECK(list->items[2]->integer == int64_t(1) << 40);
  CHECK(list->items[3]->integer == INT64_MIN);
  CHECK(list->items[4]->floating == 3.5);
  CHECK(list->items[6]->is(Kind::boolean));
  CHECK(root.entries[1].second->items.size() == 3);
}

TEST_CASE("serialize: pickle memo, mutation after memoizing, and SETITEM replacing a key") {
  // d = {} (memoized as 0); d['k'] = 1; d['k'] = 2; then (d, memo[0]): the same, filled dict twice.
  const std::string bytes = "\x80\x02}q\x00X\x01\x00\x00\x00kK\x01sX\x01\x00\x00\x00kK\x02sh\x00\x86."s;
  Unpickler u(bytes, "test.pkl");
  const Value& root = u.load();
  REQUIRE(root.is(Kind::tuple));
  CHECK(root.items[0] == root.items[1]);
  REQUIRE(root.items[1]->entries.size() == 1);
  CHECK(root.items[1]->entries[0].second->integer == 2);
}

TEST_CASE("serialize: pickle refuses globals that are not on the allow-list") {
  struct Case {
    std::string bytes;
    const char* global;
  };
  const std::vector<Case> cases = {
      // protocol 0, as in the textbook exploit: os.system('echo pwned')
      {"cos\nsystem\n(S'echo pwned'\ntR.", "os.system"},
      {PickleWriter().global("builtins", "eval").str("1+1").op("\x85").reduce().stop().out, "builtins.eval"},
      {PickleWriter().str("posix").str("system").op("\x93").stop().out, "posix.system"},  // STACK_GLOBAL
      {PickleWriter().global("torch", "load").stop().out, "torch.load"},
      {PickleWriter().global("torch.nn.parameter", "Parameter").stop().out, "torch.nn.parameter.Parameter"},
      {PickleWriter().global("torch.storage", "_load_from_bytes").stop().out, "torch.storage._load_from_bytes"},
      {PickleWriter().global("collections", "OrderedDictX").stop().out, "collections.OrderedDictX"},
      {PickleWriter().global("torch", "Storage").stop().out, "torch.Storage"},
  };
  for (const Case& c : cases) {
    const std::string msg = unpickle_error(c.bytes);
    INFO(msg);
    CHECK(msg.find(std::string("'") + c.global + "'") != std::string::npos);
    CHECK(msg.find("would run code") != std::string::npos);
    CHECK(msg.find("test.pkl") != std::string::npos);
  }

  // Through the checkpoint readers too: a legacy-looking file and a zip archive.
  TempDir dir;
  const std::string system_pickle = PickleWriter().global("os", "system").str("ls").op("\x85").reduce().stop().out;
  testnn::write_bytes(dir / "legacy.pt", system_pickle);
  std::string msg = error_of([&] { load_checkpoint(dir / "legacy.pt"); });
  CHECK(msg.find("'os.system'") != std::string::npos);
  CHECK(msg.find(dir / "legacy.pt") != std::string::npos);
  const std::string eval_pickle = PickleWriter().global("builtins", "eval").str("2").op("\x85").reduce().stop().out;
  testnn::write_bytes(dir / "zip.pt", testnn::ZipWriter().add("archive/data.pkl", eval_pickle).bytes());
  msg = error_of([&] { load_checkpoint(dir / "zip.pt"); });
  CHECK(msg.find("'builtins.eval'") != std::string::npos);
  CHECK(msg.find("archive/data.pkl") != std::string::npos);
}

TEST_CASE("serialize: pickle refuses to call or build anything but the allowed callables") {
  const std::vector<std::pair<std::string, const char*>> cases = {
      {PickleWriter().str("f").op(")").reduce().stop().out, "calling the string 'f'"},
      {PickleWriter().global("torch", "FloatStorage").op(")").reduce().stop().out, "calling torch.FloatStorage"},
      {PickleWriter().op("]").op("}").op("b").stop().out, "setting the state of a list"},
      {PickleWriter().global("collections", "OrderedDict").op(")").reduce().str("x").op("b").stop().out,
       "setting the state of a dict"},
      {PickleWriter().global("torch", "FloatStorage").op(")").op("\x81").stop().out, "creating an instance"},
      {PickleWriter().global("collections", "OrderedDict").ints({1}).reduce().stop().out, "called with arguments"},
      {PickleWriter().mark().op("ios\nsystem\n").stop().out, "arbitrary objects"},  // INST
      {PickleWriter().op("]").op("o").stop().out, "arbitrary objects"},             // OBJ
      {PickleWriter().op("\x82\x01").stop().out, "arbitrary objects"},             // EXT1
      {PickleWriter().global("torch._utils", "_rebuild_tensor").ints({1, 2}).reduce().stop().out, "2 arguments"},
  };
  for (const auto& [bytes, expect] : cases) {
    const std::string msg = unpickle_error(bytes);
    INFO(msg);
    CHECK(msg.find(expect) != std::string::npos);
  }
}

TEST_CASE("serialize: pickle rejects malformed streams with an offset") {
  const std::vector<std::pair<std::string, const char*>> cases = {
      {""s, "truncated"},
      {"\x80\x02", "truncated"},
      {"\x80\x02X\xff\x00\x00\x00" "ab"s, "truncated: 255 bytes needed at byte 7"},
      {std::string("\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff", 11), "truncated"},  // BINUNICODE8, 2^64-1
      {std::string("\x80\x02\x8b\xff\xff\xff\xff", 7), "negative length"},            // LONG4
      {std::string("\x80\x02T\xfe\xff\xff\xff", 7), "negative length"},               // BINSTRING
      {"\x80\x02h\x05.", "memo index 5 was never stored"},
      {"\x80\x02j\x00\x00\x00\x01."s, "memo index 16777216"},
      {"\x80\x02g12\n.", "memo index 12"},
      {"\x80\x02gx\n.", "malformed memo index"},
      {"\x80\x02q\x00."s, "empty stack"},
      {"\x80\x02" "a.", "stack underflow"},
      {"\x80\x02K\x01(a.", "stack underflow (past a MARK)"},
      {"\x80\x02t.", "no MARK"},
      {"\x80\x02K\x01K\x02.", "STOP leaves 2 values"},
      {"\x80\x02(K\x01.", "open MARK"},
      {"\x80\x02.", "STOP leaves 0 values"},
      {"\x80\x09N.", "pickle protocol 9"},
      {"\x80\x02\xff", "unknown opcode 0xff"},
      {"\x80\x02S'x'\n.", "unsupported opcode STRING"},
      {"\x80\x02\x8f.", "unsupported opcode EMPTY_SET"},
      {"\x80\x02I12x\n.", "malformed or out-of-range INT"},
      {"\x80\x02I99999999999999999999\n.", "out-of-range INT"},
      {"\x80\x02" "F1.5x\n.", "malformed FLOAT"},
      {"\x80\x02I1" + std::string(300, '1'), "longer than 256 bytes"},
      {"\x80\x02I1", "no end of line"},
      {"\x80\x02K\x01K\x02" "a.", "appending to the integer 1"},
      {"\x80\x02K\x01K\x02K\x03s.", "setting an item of the integer 1"},
      {"\x80\x02(K\x01" "d.", "odd number"},
      {"\x80\x02K\x01Q.", "persistent id where none is expected"},
      {"\x80\x02K\x01K\x02\x93.", "STACK_GLOBAL needs two strings"},
  };
  for (const auto& [bytes, expect] : cases) {
    const std::string msg = unpickle_error(bytes);
    INFO(msg);
    CHECK(msg.find(expect) != std::string::npos);
    CHECK(msg.find("at byte") != std::string::npos);
  }
}

TEST_CASE("serialize: pickle survives hostile nesting and self-reference") {
  // A million nested lists: [[[[...]]]], built with EMPTY_LIST x N then APPEND x (N - 1).
  const int n = 1'000'000;
  std::string deep = "\x80\x02" + std::string(size_t(n), ']') + std::string(size_t(n - 1), 'a') + ".";
  {
    Unpickler u(deep, "deep.pkl");
    CHECK(u.load().is(Kind::list));
  }  // and the arena frees it without recursion
  // A list containing itself, and a dict whose value is itself.
  const std::string self_list_bytes = "\x80\x02]q\x00h\x00" "a."s;
  Unpickler self_list(self_list_bytes, "self.pkl");
  const Value& l = self_list.load();
  CHECK(l.items[0] == &l);
  CHECK(pickle::describe(l) == "a list of 1 items");
  const std::string self_dict_bytes = "\x80\x02}q\x00K\x01h\x00s."s;
  Unpickler self_dict(self_dict_bytes, "self.pkl");
  CHECK(self_dict.load().entries.size() == 1);
  // Deep tuples inside a checkpoint's state dict: an error, not a recursion.
  TempDir dir;
  std::string nested = PickleWriter().out + std::string(100000, ')');
  for (int i = 0; i < 99999; ++i) nested += "\x86";
  nested += ".";
  testnn::write_bytes(dir / "nested.pt", testnn::ZipWriter().add("a/data.pkl", nested).bytes());
  CHECK(error_of([&] { load_checkpoint(dir / "nested.pt"); }).find("a tuple of 2 items") != std::string::npos);
}
