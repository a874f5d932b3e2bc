#!/usr/bin/python3
"""Writes data/tokenizer_tables.inc: the tables CLIP's text cleaning needs beyond utf8proc.

OpenAI's tokenizer cleans text with Python's html.unescape (twice) and str.lower(), and splits it
with the `regex` module's case-insensitive pattern. The C++ port (data/tokenizer.cpp) needs, from
those same sources rather than re-typed by hand:
  - html.entities.html5 (2,231 named references, some without the trailing ';'), and the
    numeric-reference fix-ups of html.unescape (_invalid_charrefs, _invalid_codepoints);
  - the Unicode properties Cased and Case_Ignorable, which str.lower() consults for the final
    sigma (a capital sigma at the end of a word lowers to U+03C2);
  - the code points that, after lower-casing, match an ASCII letter only case-insensitively
    (the pattern's 's, 't, ... and special tokens are matched with IGNORECASE), and those that
    IGNORECASE moves out of the pattern's classes ([\\p{L}] / [\\p{N}] / [^\\s\\p{L}\\p{N}]).
The last two are checked here, so a `regex` release that changes them fails loudly.
And for ftfy.fix_text, which OpenAI's basic_clean runs first (ftfy 6's deterministic fixes; its
mojibake repair is not ported), the tables its chardata module derives from the same sources:
  - the upper-case HTML entities it also decodes (&NTILDE; -> Ñ): for each lower-case html5 name
    with ';' whose upper-case form html.unescape leaves alone, that name -> str.upper() of its value;
  - its width map: U+3000 -> space, and each of U+FF01..U+FFEF whose NFKC form differs -> that form;
  - C1 controls U+0080..U+009F as sloppy Windows-1252 (bytes 81 8D 8F 90 9D, which cp1252 leaves
    undefined, stay themselves);
  - its table of Latin ligatures and digraphs (ftfy/chardata.py's LIGATURES, listed below).

Run with Debian's Python: /usr/bin/python3 tools/gen_tokenizer_tables.py
"""
import html
import html.entities
import os
import string
import sys
import unicodedata

import regex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "tokenizer_tables.inc")


# ftfy 6's chardata.LIGATURES: Latin ligatures and legacy digraphs, taken apart.
FTFY_LIGATURES = {
    0x132: "IJ", 0x133: "ij", 0x149: "\u02bcn",
    0x1F1: "DZ", 0x1F2: "Dz", 0x1F3: "dz", 0x1C4: "D\u017d", 0x1C5: "D\u017e", 0x1C6: "d\u017e",
    0x1C7: "LJ", 0x1C8: "Lj", 0x1C9: "lj", 0x1CA: "NJ", 0x1CB: "Nj", 0x1CC: "nj",
    0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "\u017ft", 0xFB06: "st",
}


def c_string(text):
    # Octal escapes: always three digits, so a following character can never extend them.
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        if 0x20 <= b < 0x7F and ch not in '"\\?':
            out.append(ch)
        else:
            out.append("\\%03o" % b)
    return '"' + "".join(out) + '"'


def code_points():
    return (cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)


def ranges(predicate):
    result, start, last = [], None, None
    for cp in code_points():
        if predicate(cp):
            if start is None or cp != last + 1:
                if start is not None:
                    result.append((start, last))
                start = cp
            last = cp
    if start is not None:
        result.append((start, last))
    return result


def main():
    cased = regex.compile(r"\p{Cased}")
    ignorable = regex.compile(r"\p{Case_Ignorable}")
    cased_ranges = ranges(lambda cp: cased.fullmatch(chr(cp)) is not None)
    ignorable_ranges = ranges(lambda cp: ignorable.fullmatch(chr(cp)) is not None)

    # Lower-cased code points that IGNORECASE matches to an ASCII letter of the pattern.
    folds = []
    for letter in string.ascii_lowercase:
        p = regex.compile(regex.escape(letter), regex.IGNORECASE)
        for cp in code_points():
            c = chr(cp)
            if c != letter and c.lower() == c and p.fullmatch(c):
                folds.append((cp, letter))
    assert folds == [(0x17F, "s")], f"new case-insensitive letter matches: {folds}"

    # Code points whose class the IGNORECASE flag changes (letters / digits / other / space).
    classes = [(regex.compile(p, regex.IGNORECASE), regex.compile(p))
               for p in (r"[\p{L}]", r"[\p{N}]", r"[^\s\p{L}\p{N}]")]
    moved = [cp for cp in code_points()
             if any(bool(a.fullmatch(chr(cp))) != bool(b.fullmatch(chr(cp))) for a, b in classes)]
    assert moved == [0x345], f"IGNORECASE moves other code points: {[hex(c) for c in moved]}"
    assert not any(a.fullmatch("\u0345") for a, _ in classes)  # U+0345 matches no class: skipped

    # regex's \s (what whitespace_clean collapses) and str.isspace (what strip() removes).
    regex_space = [cp for cp in code_points() if regex.fullmatch(r"\s", chr(cp))]
    python_space = [cp for cp in code_points() if chr(cp).isspace()]

    entities = sorted(html.entities.html5.items(), key=lambda kv: kv[0].encode())
    charrefs = sorted(html._invalid_charrefs.items())
    invalid = sorted(html._invalid_codepoints)

    lines = [
        "// Generated by tools/gen_tokenizer_tables.py; do not edit. Sources: Python %s's html module"
        % sys.version.split()[0],
        "// (html.entities.html5, html.unescape's numeric fix-ups) and the regex module %s (Unicode"
        % regex.__version__,
        "// properties Cased and Case_Ignorable, whitespace); unicodedata %s." % unicodedata.unidata_version,
        "// Included by data/tokenizer.cpp only.",
        "",
        "struct NamedEntity {",
        "  const char* name;   // without '&'; with ';' unless it is one of the legacy bare names",
        "  const char* value;  // UTF-8",
        "};",
        "",
        "// html.entities.html5, sorted by name (byte order) for binary search.",
        "constexpr NamedEntity kHtml5Entities[] = {",
    ]
    for name, value in entities:
        lines.append("    {%s, %s}," % (c_string(name), c_string(value)))
    lines += ["};", "",
              "// html.unescape: numeric references replaced by another code point (Windows-1252 for 0x80-0x9F).",
              "constexpr uint32_t kInvalidCharrefs[][2] = {"]
    lines += ["    {0x%X, 0x%X}," % (n, ord(v)) for n, v in charrefs]
    lines += ["};", "", "// html.unescape: numeric references to these code points become nothing.",
              "constexpr uint32_t kInvalidCodepoints[] = {"]
    for i in range(0, len(invalid), 10):
        lines.append("    " + " ".join("0x%X," % c for c in invalid[i:i + 10]))
    lines += ["};", "", "// Unicode property Cased (str.lower()'s final-sigma rule), inclusive ranges.",
              "constexpr uint32_t kCasedRanges[][2] = {"]
    lines += ["    {0x%X, 0x%X}," % r for r in cased_ranges]
    lines += ["};", "", "// Unicode property Case_Ignorable, inclusive ranges.",
              "constexpr uint32_t kCaseIgnorableRanges[][2] = {"]
    lines += ["    {0x%X, 0x%X}," % r for r in ignorable_ranges]
    lines += ["};", "", "// regex's \\s: runs of these collapse to one space.", "constexpr uint32_t kRegexSpace[] = {"]
    lines += ["    " + " ".join("0x%X," % c for c in regex_space[i:i + 10]) for i in range(0, len(regex_space), 10)]
    lines += ["};", "", "// str.isspace(): strip() removes these at both ends.", "constexpr uint32_t kPythonSpace[] = {"]
    lines += ["    " + " ".join("0x%X," % c for c in python_space[i:i + 10]) for i in range(0, len(python_space), 10)]
    lines += ["};", ""]

    # ftfy's tables (see the docstring).
    upper = {}
    for name, value in html.entities.html5.items():
        if name.endswith(";") and name == name.lower():
            entity = "&" + name.upper()
            if html.unescape(entity) == entity:
                upper[name.upper()] = value.upper()
    width = {0x3000: " "}
    for cp in range(0xFF01, 0xFFF0):
        alternate = unicodedata.normalize("NFKC", chr(cp))
        if alternate != chr(cp):
            width[cp] = alternate
    sloppy = []
    for b in range(0x80, 0xA0):
        try:
            sloppy.append(ord(bytes([b]).decode("cp1252")))
        except UnicodeDecodeError:
            sloppy.append(b)
    lines += ["// ftfy.fix_text's tables (tools/gen_tokenizer_tables.py says where each comes from).",
              "struct CodePointText {",
              "  uint32_t cp;",
              "  const char* value;  // UTF-8",
              "};", "",
              "// Upper-case entities ftfy decodes beside html5's, sorted by name (byte order).",
              "constexpr NamedEntity kFtfyUpperEntities[] = {"]
    lines += ["    {%s, %s}," % (c_string(n), c_string(v)) for n, v in sorted(upper.items(), key=lambda kv: kv[0].encode())]
    lines += ["};", "", "// Halfwidth and fullwidth forms -> standard width, by code point.",
              "constexpr CodePointText kFtfyWidthMap[] = {"]
    lines += ["    {0x%X, %s}," % (cp, c_string(v)) for cp, v in sorted(width.items())]
    lines += ["};", "", "// Latin ligatures and digraphs -> their letters, by code point.",
              "constexpr CodePointText kFtfyLigatures[] = {"]
    lines += ["    {0x%X, %s}," % (cp, c_string(v)) for cp, v in sorted(FTFY_LIGATURES.items())]
    lines += ["};", "", "// U+0080..U+009F read as sloppy Windows-1252.",
              "constexpr uint32_t kSloppyWindows1252[32] = {"]
    lines += ["    " + " ".join("0x%X," % c for c in sloppy[i:i + 8]) for i in range(0, 32, 8)]
    lines += ["};", ""]
    with open(OUT, "w", encoding="ascii") as f:
        f.write("\n".join(lines))
    print(f"wrote {OUT}: {len(entities)} entities, {len(cased_ranges)} cased and {len(ignorable_ranges)} "
          f"case-ignorable ranges; ftfy: {len(upper)} upper-case entities, {len(width)} width forms")


if __name__ == "__main__":
    main()
