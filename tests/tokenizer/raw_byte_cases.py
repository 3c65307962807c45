#!/usr/bin/env python3
"""tests/tokenizer/raw_byte_cases.py: the reference ids of the BPE cases that are not valid UTF-8.

tools/make_bpe_fixture.py writes neox_cases.tsv, variant_cases.tsv and noregex_cases.tsv with
Hugging Face `tokenizers`, which only takes str. tokenizer.c tokenizes ill-formed UTF-8 as raw
bytes (see the comment at the top of tokenizer.c), so this script rewrites the rows whose text is
not valid UTF-8 with that rule, `tokenizers` still encoding every valid run:

  * the text splits into maximal runs of valid UTF-8 and the bytes between them (each byte of an
    ill-formed sequence on its own);
  * each run is encoded by `tokenizers` as a text of its own (no special tokens);
  * each ill-formed byte is the vocabulary id of its byte-level symbol (bytes_to_unicode);
  * the ids with special tokens are those of encode("") (the BOS a template prepends) + the ids;
  * the decoded text is decode(ids, skip_special_tokens=False), as before.

Rows of valid UTF-8 are left as they are, after a check that they are still what `tokenizers`
says. Run it after tools/make_bpe_fixture.py, from the repository root:

    pip install tokenizers==0.23.3 && python3 tests/tokenizer/raw_byte_cases.py [DIR]
"""
import os
import re
import sys

from tokenizers import Tokenizer

DIR = sys.argv[1] if len(sys.argv) > 1 else "tests/tokenizer"
ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "\\": b"\\"}


def byte_alphabet():
    """GPT-2's bytes_to_unicode: each byte's one-character symbol."""
    same = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in same:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def unescape(s):
    """The inverse of make_bpe_fixture.esc, as tok_check reads the fixtures."""
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] != "\\":
            out += s[i].encode("utf-8")
            i += 1
        elif s[i + 1] == "x":
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        else:
            out += ESCAPES[s[i + 1]]
            i += 2
    return bytes(out)


def esc(b):
    """make_bpe_fixture.esc: \\\\ \\n \\r \\t, \\xNN for other controls and ill-formed bytes."""
    out = []
    for ch in b.decode("utf-8", "surrogateescape"):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append("\\x%02x" % (o - 0xDC00))
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif o < 0x20 or o == 0x7F:
            out.append("\\x%02x" % o)
        else:
            out.append(ch)
    return "".join(out)


def runs(b):
    """Valid runs (str) and ill-formed bytes (int), in order: surrogateescape turns each byte
    of an ill-formed sequence into its own lone surrogate."""
    for part in re.split("([\udc80-\udcff])", b.decode("utf-8", "surrogateescape")):
        if len(part) == 1 and 0xDC80 <= ord(part) <= 0xDCFF:
            yield ord(part) - 0xDC00
        elif part:
            yield part


def encode_raw(tok, b, byte_ids):
    ids = []
    for run in runs(b):
        ids += [byte_ids[run]] if isinstance(run, int) else tok.encode(run, add_special_tokens=False).ids
    return ids


def row(tok, b, byte_ids):
    ids = encode_raw(tok, b, byte_ids)
    with_bos = tok.encode("").ids + ids
    dec = tok.decode(ids, skip_special_tokens=False)
    return "%s\t%s\t%s\t%s" % (esc(b), " ".join(map(str, ids)), " ".join(map(str, with_bos)),
                               esc(dec.encode("utf-8")))


def rewrite(name):
    tok = Tokenizer.from_file(os.path.join(DIR, name + ".json"))
    vocab = tok.get_vocab(with_added_tokens=False)
    byte_ids = {b: vocab[c] for b, c in byte_alphabet().items()}
    path = os.path.join(DIR, name + "_cases.tsv")
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")[:-1]
    out, changed = [], 0
    for line in lines:
        b = unescape(line.split("\t")[0])
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            out.append(row(tok, b, byte_ids))
            changed += 1
            continue
        if row(tok, b, byte_ids) != line:
            sys.exit("%s: a valid row differs from tokenizers: %r" % (path, line[:80]))
        out.append(line)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(out) + "\n")
    print("%s: %d rows, %d of them not valid UTF-8" % (path, len(lines), changed))


if __name__ == "__main__":
    for name in ("neox", "variant", "noregex"):
        rewrite(name)
