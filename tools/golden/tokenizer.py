#!/usr/bin/python3
"""Golden fixtures for CLIP's tokenizer (data/tokenizer.cpp), from a reference written here from
OpenAI's published algorithm (CLIP's simple_tokenizer): byte-level BPE over the first 48,894
merges of bpe_simple_vocab_16e6.txt.gz, text cleaned by ftfy.fix_text (below), html.unescape
twice, whitespace runs collapsed, stripped and lower-cased, split by the `regex` module's
pattern, then each piece's UTF-8 bytes mapped to printable characters and merged by rank.

ftfy is not packaged for Debian, so its fix_text is written here from its documented behaviour
(ftfy 6, default settings): per line, until the line stops changing, HTML entities (html5 names
with ';', upper-case forms html.unescape leaves alone, numeric references html.unescape decodes
whole; off from the first line holding a '<'), C1 controls as sloppy Windows-1252, Latin
ligatures, the width map (NFKC of U+FF01..U+FFEF, U+3000 -> space), curly quotes, line breaks,
ANSI terminal escapes, invisible control characters, NFC. Its mojibake repair (fix_encoding) is
left out, as in the C++ port.

tests/golden/tokenizer.safetensors (strings are UTF-8 bytes concatenated in a U8 tensor, with
I64 offsets [N + 1]; id lists likewise):
  texts.bytes/.offsets        the inputs: the issue's examples, hand-picked edge cases
                              (punctuation, digits, contractions, accents, CJK, emoji, entities,
                              whitespace, special tokens, final sigma, ...), real prompts (the
                              CIFAR-10 templates x classes, "a photo of a {}." for the 1,000
                              ImageNet names), every code point whose lower() differs, and seeded
                              random strings
  cleaned.bytes/.offsets      the text after cleaning (what the pattern splits)
  encode.ids/.offsets         encode(text): the BPE ids, without start / end tokens
  decoded.bytes/.offsets      decode(encode(text))
  truncated / truncated.index tokenize(text, 77, truncate=True) rows of the texts whose
                              start + ids + end exceed 77 (tokenize without truncate raises)
  random.ids [R, 24]          random ids (byte tokens included, so UTF-8 breaks mid-character)
  random.bytes/.offsets       their decode (invalid UTF-8 replaced by U+FFFD as Python does)
  unescape.in/.out            html.unescape, once, on references of every kind
  ftfy.in/.out                ftfy.fix_text (as above) on cases for each of its fixes

Needs ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz ($BCOS_DATA overrides ../shared) and
Debian's python3-regex.  Run:  /usr/bin/python3 tools/golden/tokenizer.py
"""
import gzip
import html
import html.entities
import os
import random
import re
import sys
import unicodedata

import regex
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("BCOS_DATA") or os.path.join(ROOT, "..", "shared")
CLIP = os.path.join(DATA, "data", "clip")

MERGES = 49152 - 256 - 2
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                        regex.IGNORECASE)


def byte_alphabet():
    """Byte -> printable character, in vocabulary order: the printable Latin-1 bytes keep their
    own character; the other 68 bytes take 256, 257, ... in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    for i, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + i)
    return table


# ---- ftfy.fix_text without its mojibake repair (see the docstring) ----------------------------
# ftfy's table of Latin ligatures and legacy digraphs.
LIGATURES = {0x132: "IJ", 0x133: "ij", 0x149: "\u02bcn", 0x1F1: "DZ", 0x1F2: "Dz", 0x1F3: "dz",
             0x1C4: "D\u017d", 0x1C5: "D\u017e", 0x1C6: "d\u017e", 0x1C7: "LJ", 0x1C8: "Lj", 0x1C9: "lj",
             0x1CA: "NJ", 0x1CB: "Nj", 0x1CC: "nj", 0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi",
             0xFB04: "ffl", 0xFB05: "\u017ft", 0xFB06: "st"}
WIDTH = {0x3000: " ", **{cp: unicodedata.normalize("NFKC", chr(cp)) for cp in range(0xFF01, 0xFFF0)
                         if unicodedata.normalize("NFKC", chr(cp)) != chr(cp)}}
CONTROLS = dict.fromkeys([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
                          *range(0xFFF9, 0xFFFD)])


def sloppy_1252(char):
    try:
        return char.encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:  # bytes cp1252 leaves undefined stay themselves
        return char


def upper_entities():
    table = {}
    for name, value in html.entities.html5.items():
        if name.endswith(";") and name == name.lower() and html.unescape("&" + name.upper()) == "&" + name.upper():
            table["&" + name.upper()] = value.upper()
    return table


ENTITIES = {**{"&" + n: v for n, v in html.entities.html5.items() if n.endswith(";")}, **upper_entities()}


def ftfy_entity(match):
    ref = match.group(0)
    if ref in ENTITIES:
        return ENTITIES[ref]
    if ref.startswith("&#"):
        decoded = html.unescape(ref)
        return ref if ";" in decoded else decoded  # only references decoded whole
    return ref


def ftfy_line(line, unescape):
    while True:
        before = line
        if unescape:
            line = re.sub(r"&#?[0-9A-Za-z]{1,24};", ftfy_entity, line)
        line = re.sub("[\x80-\x9f]", lambda m: sloppy_1252(m.group(0)), line)
        line = line.translate(LIGATURES).translate(WIDTH)
        line = re.sub("[\u02bc\u2018-\u201b]", "'", re.sub("[\u201c-\u201f]", '"', line))
        for brk in ("\r\n", "\r", "\u2028", "\u2029", "\x85"):
            line = line.replace(brk, "\n")
        line = re.sub("\x1b\\[(?:\\d|;)*[a-zA-Z]", "", line)
        line = unicodedata.normalize("NFC", line.translate(CONTROLS))
        if line == before:
            return line


def ftfy_fix_text(text):
    out, pos, unescape = [], 0, True
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        end = min(end, pos + 1_000_000)
        unescape = unescape and "<" not in text[pos:end]
        out.append(ftfy_line(text[pos:end], unescape))
        pos = end
    return "".join(out)


class Reference:
    def __init__(self, path):
        lines = gzip.open(path).read().decode("utf-8").split("\n")[1:MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self.to_char = byte_alphabet()
        self.to_byte = {c: b for b, c in self.to_char.items()}
        symbols = list(self.to_char.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.tokens = dict(enumerate(vocab))
        self.rank = {m: i for i, m in enumerate(merges)}
        self.cache = {SOT: SOT, EOT: EOT}

    @staticmethod
    def clean(text):
        text = html.unescape(html.unescape(ftfy_fix_text(text))).strip()
        return regex.sub(r"\s+", " ", text).strip().lower()

    def bpe(self, piece):
        if piece in self.cache:
            return self.cache[piece]
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.rank.get(p, float("inf")))
            if best not in self.rank:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        result = " ".join(word)
        self.cache[piece] = result
        return result

    def encode(self, text):
        ids = []
        for piece in PATTERN.findall(self.clean(text)):
            chars = "".join(self.to_char[b] for b in piece.encode("utf-8"))
            ids += [self.ids[t] for t in self.bpe(chars).split(" ")]
        return ids

    def decode(self, ids):
        chars = "".join(self.tokens[i] for i in ids)
        return bytes(self.to_byte[c] for c in chars).decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, text, context=77, truncate=False):
        ids = [self.ids[SOT]] + self.encode(text) + [self.ids[EOT]]
        if len(ids) > context:
            if not truncate:
                return None
            ids = ids[:context]
            ids[-1] = self.ids[EOT]
        return ids + [0] * (context - len(ids))


def hand_picked():
    return [
        "a photo of a cat.", "a photo of a goldfish.", "A bad photo of the Great White Shark!",
        "", " ", "   \t\n  ", "a", "A", "!", "?!?!", "...", "a.b.c", "hello, world!", "e-mail: x@y.com",
        "C++ & C#", "50% off!!!", "$12.99 / 3 = 4.33", "2026-11-30 22:41", "1234567890", "3.14159",
        "x1y2z3", "route66", "100km/h", "#hashtag @user", "(parenthesised) [bracketed] {braced}",
        "quotes: \"double\" 'single' `back`", "under_score and-hyphen", "a/b\\c|d", "~tilde^caret",
        "don't", "DON'T", "it's", "IT'S", "we're", "they've", "i'm", "you'll", "he'd", "'s'", "''", "'",
        "can't won't shan't", "rock'n'roll", "o'clock", "it\u2019s curly", "'sss 'tt 'rere", "x's y's",
        "caf\u00e9 na\u00efve r\u00e9sum\u00e9", "CAF\u00c9", "Stra\u00dfe \u1e9e", "\u00c5ngstr\u00f6m",
        "ni\u00f1o se\u00f1or", "cafe\u0301 (combining accent)", "e\u0301\u0301\u0301",
        "\u6771\u4eac\u30bf\u30ef\u30fc", "\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5", "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
        "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
        "\u05e9\u05dc\u05d5\u05dd", "\u0928\u092e\u0938\u094d\u0924\u0947", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
        "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440", "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5",
        "\U0001f431\U0001f436", "\U0001f44d\U0001f3fd thumbs", "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",
        "\U0001f1e9\U0001f1ea flag", "I \u2764\ufe0f NY", "\u2603 snowman \u2600", "\U0001d400\U0001d401 math bold",
        "\uff21\uff22\uff23\uff11\uff12\uff13 fullwidth", "x\u00b2 + y\u00b3", "\u00bd \u00bc \u00be", "\u216b \u2170\u2171",
        "\u0663\u0664\u0665 arabic digits", "\u0967\u0968 devanagari digits", "\u2460\u2461 circled",
        "&amp;", "&amp;amp;", "&amp;lt;", "&lt;b&gt;bold&lt;/b&gt;", "&quot;quoted&quot;", "&#39;apos&#39;",
        "&#x27;hex&#X27;", "&copy 2026", "&ampfoo;", "&notit;", "&notin;", "&#0;", "&#128; &#150;", "&#xD800;",
        "&#1114112;", "&#99999999999999999999;", "&#1;&#11;&#127;", "&#xFFFE;", "&AMP &amp", "& alone", "&;", "&#;",
        "&#x;", "&nbsp;non&nbsp;breaking", "&NotNestedGreaterGreater;", "&bne;", "&Aacute&aacute", "&zwj;&zwnj;",
        "tab\tseparated\tvalues", "line\nbreaks\r\nand\rreturns", "form\ffeed\vvertical", "multiple     spaces",
        "nbsp\u00a0here", "em\u2003space", "ideographic\u3000space", "line\u2028separator", "next\u0085line",
        "info\u001fseparator", "\u001cfile\u001dgroup\u001erecord\u001f", "zero\u200bwidth", "soft\u00adhyphen",
        "<|startoftext|>", "<|endoftext|>", "hello<|endoftext|>", "!!<|endoftext|>", "<|STARTOFTEXT|>",
        "<|endoftext|><|endoftext|>", "<|endof text|>", "<|\u017ftartoftext|>", "'\u017f and \u017ftra\u00dfe",
        "\u039f\u0394\u039f\u03a3", "\u03a3", "A\u03a3", "\u0391\u03a3.", "\u0391\u03a3'\u03a3", "\u03a3\u0391\u03a3 \u03a3\u039f\u03a6\u039f\u03a3",
        "\u0391\u0345\u03a3", "\u03b1\u0345\u03b9", "\u0130stanbul", "D\u0130YARBAKIR", "I\u0307", "\u212a kelvin",
        "\u01c5 \u01c4 \u01c6 titlecase", "\u1f88 \u1f80", "\ufb01 ligature", "\u2126 ohm", "\u00b5 micro",
        "a" * 60, "ab" * 40, "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
        "the " * 80, "A long caption that goes on and on, describing a dog running across a grassy field "
        "on a sunny afternoon while children play in the background near a red barn and a tractor, "
        "with mountains far away under a pale blue sky dotted with small white clouds.",
        "word " * 75, "word " * 74, "1 " * 76, "\U0001f431" * 30, "a photo of a cat. " * 20,
        "&amp;" * 100, "\u6771\u4eac" * 40,
    ]


def real_prompts():
    def lines(name):
        with open(os.path.join(CLIP, name), encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    prompts = [t.format(c) for t in lines("cifar10_templates.txt") for c in lines("cifar10_classes.txt")]
    prompts += ["a photo of a {}.".format(c) for c in lines("imagenet_classes.txt")]
    prompts += [t.format("tench") for t in lines("imagenet_templates.txt")]
    return prompts


def every_lowercased():
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and chr(cp).lower() != chr(cp)]
    return [" ".join(chars[i:i + 12]) for i in range(0, len(chars), 12)]


def random_strings(rng, n):
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 4 + list(" \t\n.,;:!?'\"-&#<>|()") * 2
            + list("\u00e9\u00fc\u00df\u03a3\u03c3\u0130\u017f\u0345\u6771\u4eac\U0001f431\u200d\u0301\u00a0\u2028\u0663\u00bd")
            + ["&amp;", "&lt;", "&#65;", "&#x42;", "'s", "'ll", "<|endoftext|>"])
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def unescape_cases():
    return ["plain", "&amp;", "&amp", "&AMP;", "&lt;&gt;&quot;&apos;", "&#65;&#x42;&#X43;", "&#65", "&#x42",
            "&#0;", "&#13;", "&#128;", "&#129;", "&#159;", "&#x80;", "&#xD7FF;", "&#xD800;", "&#xDFFF;", "&#xE000;",
            "&#x10FFFF;", "&#x110000;", "&#1;", "&#8;", "&#9;", "&#11;", "&#127;", "&#xFDD0;", "&#xFFFF;",
            "&#x1FFFE;", "&#00000000065;", "&#123456789012345678901234567890;", "&ampx", "&ampx;", "&amp;x",
            "&notit;", "&notin;", "&noti", "&copyright", "&copy;right", "&a;", "&ab", "&zz;", "&;", "&#;", "&#x;",
            "& &", "&&amp;", "&amp;&amp;", "&" + "a" * 40 + ";", "&aacute" + "b" * 40, "&\u00e9;", "&nbsp\ttab",
            "&lt\nnewline", "&lt\rreturn", "&lt<", "&gt#", "&NotNestedLessLess;", "&bne;", "&fjlig;",
            "&ThickSpace;", "&acE;", "&Abreve", "&Abreve;"]


def ftfy_cases():
    return ["it\u2019s \u201cquoted\u201d \u2018single\u2019 \u201ahigh\u201b \u201e\u201f \u02bcokina",
            "\ufb01sh \ufb02ow o\ufb03ce \ufb00 \ufb04 \ufb05 \ufb06 \u0132\u0133 \u0149 \u01c4\u01c5\u01c6 \u01c7\u01ca\u01cb",
            "\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33 \uff01\uff1f \uff35\uff80\uff70\uff9d \uffe0\uffe5 \uffe8",
            "price \x80 \x85 \x91x\x92 \x81\x8d\x8f\x90\x9d \x9f", "it&#x2019;s &#8220;entities&#8221;",
            "P&EACUTE;REZ BUNDESSTRA&SZLIG;E &ntilde; &Ntilde; &NTILDE; &nTILDE;", "&#59; &amp&#59; &#x3B;",
            "&#12ab; &#x; &#xZ; &#65;&#X42; &#0; &#128; &#xD800;", "&" + "a" * 25 + ";", "&checkmark; &Jscr;ohn",
            "&amp;lt; twice", "a < b &amp; c", "x &amp; y\n<b>z</b>\n&amp; after", "&amp;\n&amp;<\n&amp;",
            "\x1b[31mred\x1b[0m \x1b[1;\u0663m \x1b[m \x1b[31 \x1b[", "a\x00b\x08c\x0bd\x0ce\x0ef\x1fg\x7fh",
            "\ufeffbom \u206a\u206f \ufff9\ufffc\ufffd kept", "cafe\u0301 e\u0301\u0301 \u1100\u1161 A\u030a",
            "win\r\nmac\rsep\u2028par\u2029", "\u2126 \u212b \u00b5 nfc", "&amp;#x2019;s", "\x93quoted\x94",
            "&#x2018;&#x2019; &#8216;", "\uff07s \uff02q\uff02", "line one\nline two &amp; more\n"]


def pack(strings):
    data = [s.encode("utf-8", errors="surrogatepass") for s in strings]
    offsets = [0]
    for d in data:
        offsets.append(offsets[-1] + len(d))
    blob = b"".join(data)
    return (torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8),
            torch.tensor(offsets, dtype=torch.int64))


def pack_ids(lists):
    flat = [i for ids in lists for i in ids]
    offsets = [0]
    for ids in lists:
        offsets.append(offsets[-1] + len(ids))
    return torch.tensor(flat, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64)


def main():
    path = os.path.join(CLIP, "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.exists(path):
        sys.exit(f"tokenizer.py: {path} is missing (set BCOS_DATA)")
    ref = Reference(path)
    assert len(ref.tokens) == 49408 and ref.ids[SOT] == 49406 and ref.ids[EOT] == 49407
    examples = {"a photo of a cat.": [49406, 320, 1125, 539, 320, 2368, 269, 49407],
                "a photo of a goldfish.": [49406, 320, 1125, 539, 320, 40293, 269, 49407],
                "A bad photo of the Great White Shark!": [49406, 320, 2103, 1125, 539, 518, 830, 1579, 7980, 256, 49407]}
    for text, ids in examples.items():
        assert ref.tokenize(text)[:len(ids)] == ids, (text, ref.tokenize(text))

    rng = random.Random(20261130)
    texts = hand_picked() + real_prompts() + every_lowercased() + random_strings(rng, 120)
    encoded = [ref.encode(t) for t in texts]
    long_rows = [i for i, ids in enumerate(encoded) if len(ids) + 2 > 77]
    random_ids = [[rng.randrange(49408) if rng.random() < 0.5 else rng.randrange(512) for _ in range(24)]
                  for _ in range(40)]
    unescape_in = unescape_cases()

    fixtures = {}
    fixtures["texts.bytes"], fixtures["texts.offsets"] = pack(texts)
    fixtures["cleaned.bytes"], fixtures["cleaned.offsets"] = pack([ref.clean(t) for t in texts])
    fixtures["encode.ids"], fixtures["encode.offsets"] = pack_ids(encoded)
    fixtures["decoded.bytes"], fixtures["decoded.offsets"] = pack([ref.decode(ids) for ids in encoded])
    fixtures["truncated"] = torch.tensor([ref.tokenize(texts[i], truncate=True) for i in long_rows], dtype=torch.int64)
    fixtures["truncated.index"] = torch.tensor(long_rows, dtype=torch.int64)
    fixtures["random.ids"] = torch.tensor(random_ids, dtype=torch.int64)
    fixtures["random.bytes"], fixtures["random.offsets"] = pack([ref.decode(ids) for ids in random_ids])
    fixtures["unescape.in.bytes"], fixtures["unescape.in.offsets"] = pack(unescape_in)
    fixtures["unescape.out.bytes"], fixtures["unescape.out.offsets"] = pack([html.unescape(s) for s in unescape_in])
    fixtures["ftfy.in.bytes"], fixtures["ftfy.in.offsets"] = pack(ftfy_cases())
    fixtures["ftfy.out.bytes"], fixtures["ftfy.out.offsets"] = pack([ftfy_fix_text(s) for s in ftfy_cases()])
    out = os.path.join(ROOT, "tests", "golden", "tokenizer.safetensors")
    save(fixtures, out, {"generator": "tools/golden/tokenizer.py", "python": sys.version.split()[0],
                         "regex": regex.__version__, "texts": str(len(texts))})
    print(f"wrote {out}: {len(texts)} texts ({sum(map(len, encoded))} ids, {len(long_rows)} over 77 tokens), "
          f"{len(random_ids)} random id lists, {len(unescape_in)} unescape cases")


if __name__ == "__main__":
    main()
