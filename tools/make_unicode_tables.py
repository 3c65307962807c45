#!/usr/bin/env python3
"""tools/make_unicode_tables.py: writes tokenizer_unicode.h, the two character classes that
Hugging Face `tokenizers` pre-tokenizers test and that no C library gives with the same Unicode
version: what the Punctuation pre-tokenizer splits off (ASCII punctuation or a P* category in the
tables `tokenizers` was built with, which are older than utf8proc's) and what Digits splits off
(Rust's char::is_numeric: Nd, Nl, No, in Rust's newer tables). Both sets are read off the
library's own behaviour, every code point tried.

Usage: python3 tools/make_unicode_tables.py [OUT]   (default: tokenizer_unicode.h; tokenizers 0.23.3)
"""
import sys

import tokenizers
from tokenizers import pre_tokenizers

OUT = sys.argv[1] if len(sys.argv) > 1 else "tokenizer_unicode.h"


def split_off(pre):
    """The code points that pre, splitting each one off on its own, isolates from 'a'."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and c != ord("a")]
    found = set()
    for i in range(0, len(chars), 4096):
        text = "a" + "a".join(chars[i:i + 4096]) + "a"
        found |= {ord(p) for p, _ in pre.pre_tokenize_str(text) if len(p) == 1 and p != "a"}
    return sorted(found)


def ranges(points):
    out = []
    for c in points:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def table(name, points):
    rows = ["{0x%X, 0x%X}," % tuple(r) for r in ranges(points)]
    lines, line = [], "   "
    for r in rows:
        if len(line) + len(r) + 1 > 100:
            lines.append(line)
            line = "   "
        line += " " + r
    lines.append(line)
    return "static const uint32_t %s[][2] = {\n%s\n};\n" % (name, "\n".join(lines))


def main():
    punct = split_off(pre_tokenizers.Punctuation(behavior="isolated"))
    digits = split_off(pre_tokenizers.Digits(individual_digits=True))
    with open(OUT, "w") as f:
        f.write("/* tokenizer_unicode.h: written by tools/make_unicode_tables.py from Hugging Face tokenizers %s;\n"
                " * do not edit. Ranges [first, last] of code points, in order. */\n" % tokenizers.__version__)
        f.write("#ifndef MAMBA_TOKENIZER_UNICODE_H\n#define MAMBA_TOKENIZER_UNICODE_H\n\n#include <stdint.h>\n\n")
        f.write("/* what the Punctuation pre-tokenizer splits off */\n" + table("PUNCTUATION_RANGES", punct) + "\n")
        f.write("/* what the Digits pre-tokenizer splits off (Rust's char::is_numeric) */\n" + table("NUMERIC_RANGES", digits))
        f.write("\n#endif\n")
    print("%d punctuation, %d numeric code points" % (len(punct), len(digits)))


if __name__ == "__main__":
    main()
