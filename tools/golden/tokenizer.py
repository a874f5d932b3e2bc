#!/usr/bin/python3
"""Golden fixtures for CLIP's tokenizer (data/tokenizer.cpp), from a reference written here from
OpenAI's published algorithm (CLIP's simple_tokenizer): byte-level BPE over the first 48,894
merges of bpe_simple_vocab_16e6.txt.gz, text cleaned by html.unescape twice, whitespace runs
collapsed, stripped and lower-cased (ftfy's repair is left out, as in the C++ port), split by
the `regex` module's pattern, then each piece's UTF-8 bytes mapped to printable characters and
merged by rank.

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

Needs ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz ($BCOS_DATA overrides ../shared) and
Debian's python3-regex.  Run:  /usr/bin/python3 tools/golden/tokenizer.py
"""
import gzip
import html
import os
import random
import sys

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
        text = html.unescape(html.unescape(text)).strip()
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
    out = os.path.join(ROOT, "tests", "golden", "tokenizer.safetensors")
    save(fixtures, out, {"generator": "tools/golden/tokenizer.py", "python": sys.version.split()[0],
                         "regex": regex.__version__, "texts": str(len(texts))})
    print(f"wrote {out}: {len(texts)} texts ({sum(map(len, encoded))} ids, {len(long_rows)} over 77 tokens), "
          f"{len(random_ids)} random id lists, {len(unescape_in)} unescape cases")


if __name__ == "__main__":
    main()
