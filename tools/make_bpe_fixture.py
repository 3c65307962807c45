#!/usr/bin/env python3
"""tools/make_bpe_fixture.py: builds the byte-level BPE fixtures of tests/test_tokenizer.sh with
Hugging Face `tokenizers` (from PyPI; no PyTorch).

  neox.json        shaped like GPT-NeoX-20B's tokenizer.json: a ByteLevel BPE trained on
                   tests/tokenizer/train.txt, an NFC normalizer, special tokens <|endoftext|> (0)
                   and <|padding|> (1), non-special added tokens for runs of 2 to 24 spaces
                   (normalized), a ByteLevel post-processor, merges as "a b" strings
  variant.json     the same model with the other options tokenizer.c supports: merges as
                   ["a", "b"] pairs, a Sequence normalizer (NFKC, NFC), add_prefix_space,
                   ignore_merges, a TemplateProcessing post-processor that prepends <s>, and added
                   tokens with lstrip, rstrip, single_word and normalized=false
  noregex.json     neox.json with the ByteLevel pre-tokenizer's use_regex off
  neox_cases.tsv   one case a row: text, ids, ids with special tokens, decoded text
  variant_cases.tsv, noregex_cases.tsv (the cases shorter than 1000 bytes)
  neox_decode.tsv  random id sequences (byte pieces favoured) and their decoded text

Texts are escaped: \\\\ \\n \\r \\t, and \\xNN for other control characters and for bytes that are
not valid UTF-8. Cases may hold invalid UTF-8, which `tokenizers` cannot take (it only takes
str), so their ids follow tokenizer.c's rule for it (the comment at the top of tokenizer.c), with
`tokenizers` encoding every valid run:

  * the text splits into maximal runs of valid UTF-8 and the bytes between them (each byte of an
    ill-formed sequence on its own);
  * each run is encoded by `tokenizers` as a text of its own (no special tokens);
  * each ill-formed byte is the vocabulary id of its byte-level symbol (GPT-2 bytes_to_unicode);
  * the ids with special tokens are those of encode("") (the BOS a template prepends) + the ids.

Decoded texts are decode(ids, skip_special_tokens=False), as tokenizer.c decodes: each ill-formed
sequence of the decoded bytes shows as one U+FFFD.

Usage: python3 tools/make_bpe_fixture.py [OUTDIR]     (default: tests/tokenizer)
       (tokenizers 0.23.3 from PyPI: pip install tokenizers==0.23.3)
"""
import json
import os
import random
import re
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/tokenizer"
TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "tokenizer", "train.txt")


def train_neox():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=2, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([TRAIN], trainer)
    # GPT-NeoX's runs of spaces: non-special, matched on normalized text, longest first
    tok.add_tokens([AddedToken(" " * n, normalized=True, special=False) for n in range(24, 1, -1)])
    spec = json.loads(tok.to_str())
    spec["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    return spec


def make_variant(neox):
    spec = json.loads(json.dumps(neox))
    spec["model"]["merges"] = [m.split(" ") for m in spec["model"]["merges"]]
    spec["model"]["ignore_merges"] = True
    spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "NFC"}]}
    spec["pre_tokenizer"]["add_prefix_space"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([AddedToken("<s>", special=True, normalized=False),
                            AddedToken("</s>", special=True, normalized=False),
                            AddedToken("<mask>", special=True, normalized=False, lstrip=True, rstrip=True)])
    tok.add_tokens([AddedToken("[L]", lstrip=True, normalized=False),
                    AddedToken("[R]", rstrip=True, normalized=True),
                    AddedToken("cat", single_word=True, normalized=True),
                    AddedToken("ﬁx", normalized=False),    # matched before NFKC turns it into "fix"
                    AddedToken("Ⅻ", normalized=True)])     # normalized to "XII", so "XII" matches it
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return json.loads(tok.to_str())


def cases():
    s = ["", " ", "a", "hello", "Hello world", " hello", "hello ", "  hello  world  ", "\n", "\n\n",
         "\t", "a\tb", "a\nb", "line one\nline two\n", "\r\n", "a\r\nb", "The quick brown fox.",
         # contractions
         "it's", "It's", "IT'S", "don't", "we'll", "they've", "I'm", "you're", "he'd", "'s", "'tis",
         "rock 'n' roll", "o'clock", "it’s curly", "can't won't", "'ll'll'll", "x's'y", " 's", "'re'",
         "She'd've", "I'M", "'D", "''", "'", "y'all'd've",
         # numbers
         "123", "1234567890", "3.14", "1,000,000", "-42", "+17", "1e10", "0x1F", "v1.2.3",
         "2024-03-15", "09:30", "١٢٣", "²³", "½", "Ⅻ", "①②", "１２３", "12abc34", "a1b2c3", "0",
         "৩৪", "𝟙𝟚𝟛", "1 2 3", "100%",
         # punctuation runs
         "!!!", "?!?!", "...", "…", "---", "===>", "((()))", "{[<>]}", "#$%^&*", "@user", "a.b.c",
         "end.", "“quoted”", "«x»", "—", "~~~", "////", "\\\\", "`code`", "'''", '"""', "!?" * 20,
         ".,;:", " - ", "a -- b", "<html><body>", "x=1;y=2;", "-_-", "::", "| |",
         # white space of every kind
         " \t ", "\t\t", " \n ", "  \n  ", "a \n b", "\u00a0", "a\u00a0b", "a\u3000b", "\u2028",
         "\u0085", "x  \u0085 y", "x  \u180e y", "x\u180ey", "\u200b", "\ufeff", "\u2009thin",
         "a\u2029b", "\x0b\x0c", "x  \x1c y", " \u00a0 ", "\u1680x", "a \u202f b", "\n \n",
         "a\n\n\nb", "   \n", "\n   ", "\t\tx", "x\t\t",
         # scripts
         "Hello мир 世界 🌍", "naïve café", "Ελληνικά and English", "日本語とEnglishの混在", "עברית123",
         "مرحبا123", "한국어 텍스트", "हिन्दी", "ภาษาไทย", "Ünïcödé", "ÀÉÎÕÜ", "ß ẞ", "İı",
         "Straße", "Москва", "東京", "北京是中国的首都。", "🙂", "👍🏽", "👨‍👩‍👧", "🇫🇷",
         "❤️", "🙂🙂🙂", "a🙂b", " 🙂 ", "😀 😀", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0001F9D1\u200D\U0001F4BB",
         # normalization
         "e\u0301", "cafe\u0301", "\u1100\u1161", "\u1100\u1161\u11a8", "A\u030a", "\u212b", "\u0958",
         "o\u0308\u0304", "a\u0323\u0302", "a\u0302\u0323", "ﬁ", "ﬁx", "x\u0301", "\u0301",
         "\u00c5\u0301", "Ω\u2126", "\u0344", "ｶﾀｶﾅ", "Ⅻ and XII", "㌀", "¼",
         # special and added tokens
         "<|endoftext|>", "a<|endoftext|>b", "Hello<|endoftext|> world", "<|endoftext|><|endoftext|>",
         " <|endoftext|> ", "<|endoftext|>\n", "<|endoftext", "<|endoftext|", "<|padding|>",
         "x<|padding|>y", "<|ENDOFTEXT|>", "<|endoftext|>e\u0301", "  <|endoftext|>  ",
         "<<|endoftext|>>", "<|endoftext|><|padding|><|endoftext|>",
         "<s>", "a<s>b", "</s> x", "x <mask> y", "x<mask>y", "  <mask>  ", "a [L] b", "a   [L]b",
         "a [R]   b", "a[R]b", "cat", "a cat sat", "concatenate", "cat_x", "cat5", "é cat é",
         "xcat", "ﬁx it", "fix it", "ﬁxﬁx", "XII", "Ⅻ", "<mask><mask>", " <mask>[R]  [L] cat ",
         "[R]  <mask>", "a\u00a0<mask>\u00a0b", "\u3000[L]", "<s><s>", "cat\u00a0cat",
         ]
    s += ["x" + " " * k + "y" for k in range(1, 31)]
    s += [" " * k for k in range(2, 31)]
    s += [" " * k + "x" for k in range(1, 27, 3)] + ["x" + " " * k for k in range(1, 27, 3)]
    s += ["\t" + " " * k + "\t" for k in range(1, 6)] + [" " * k + "\n" + " " * k for k in range(1, 6)]
    s += ["a" * 5000, "word " * 1000, "🙂" * 500, "x" + " " * 100 + "y", " " * 1000,
          "ab" * 3000, "the " * 2000 + "end", "\n" * 100, "é" * 800, "e\u0301" * 300, "1" * 2000,
          "-" * 3000, "<|endoftext|>" * 50]
    with open(TRAIN, encoding="utf-8") as f:
        text = f.read()
    s += [line for line in text.split("\n") if line][:40]
    s.append(text)
    out = [x.encode("utf-8") for x in s]
    out += [b"\xff", b"\xfe\xff", b"a\x80b", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xe2\x82(",
            b"\xf0\x9f\x99", b"\xf0\x9f\x99 x", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe0\x80\xaf",
            b"\xf4\x90\x80\x80", b"\xf5\x80", b"hello\xffworld", b" \xff ", b"\x80\x80\x80",
            b"<|endoftext|>\xff", b"\xff<|endoftext|>", b"caf\xe9", b"\xc3\xa9\xc3",
            b"\xf8\x88\x80\x80\x80", b"a  \xff  b", b"\xef\xbf\xbd", b"\x00", b"a\x00b", b"\x7f",
            b"\x01\x02\x1b[31m", b"\xe4\xb8", b"x\xe4\xb8", b"\xe4\xb8\xad\xe4", b"\xc2\xa0\xc2",
            b"\xed\xbf\xbf", b"\xf0\x8f\xbf\xbf", b"\xc1\xbf", b"e\xcc", b"e\xcc\x81\xcc",
            b"  \x80  ", b"\xff" * 10, b"I\xe2\x80\x99m", b"I\xe2\x80m"]
    rng = random.Random(1234)
    pool = (list("abcXYZ019 _.,'!?-") + [" "] * 6 + ["\t", "\n", "  "] +
            list("éüñçßøåÆ") + ["e\u0301", "\u0308", "\u0323", "\u1100", "\u1161", "\u11a8"] +
            list("мирΩλ東京語한글ا") + ["🙂", "👍", "🏽", "\u200d", "\ufe0f", "🇫", "🇷"] +
            ["\u00a0", "\u0085", "\u3000", "\u180e", "\u2028", "\u200b", "\x00", "\x1b"] +
            ["'s", "'ll", "'", "<|endoftext|>", "<|padding|>", "<mask>", "[L]", "[R]", "cat", "ﬁx", "Ⅻ", "XII"] +
            list("½²①１ｶ"))
    out += ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))).encode("utf-8") for _ in range(120)]
    byte_pool = list(range(0x20, 0x7f)) + list(range(0x80, 0x100)) + [0x20] * 20
    out += [bytes(rng.choice(byte_pool) for _ in range(rng.randint(1, 24))) for _ in range(40)]
    out += [bytes(rng.choice(b"\xe4\xb8\xad\xf0\x9f\x99\x82\xc3\xa9 a") for _ in range(rng.randint(1, 12))) for _ in range(40)]
    return out


def esc(b):
    """Escapes bytes as tok_check's unescape reads them."""
    out = []
    for ch in b.decode("utf-8", "surrogateescape"):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:                 # a byte that is not valid UTF-8
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


def runs(b):
    """Valid runs (str) and ill-formed bytes (int), in order: surrogateescape turns each byte
    of an ill-formed sequence into its own lone surrogate."""
    for part in re.split("([\udc80-\udcff])", b.decode("utf-8", "surrogateescape")):
        if len(part) == 1 and 0xDC80 <= ord(part) <= 0xDCFF:
            yield ord(part) - 0xDC00
        elif part:
            yield part


def encode_raw(tok, b, byte_ids):
    """tokenizer.c's ids for bytes that are not valid UTF-8: each valid run encoded by
    `tokenizers` as a text of its own, each ill-formed byte the id of its byte-level symbol."""
    ids = []
    for run in runs(b):
        ids += [byte_ids[run]] if isinstance(run, int) else tok.encode(run, add_special_tokens=False).ids
    return ids


def write_cases(tok, path, check_roundtrip, max_len=None):
    vocab = tok.get_vocab(with_added_tokens=False)
    byte_ids = {b: vocab[c] for b, c in byte_alphabet().items()}
    rows = []
    for b in cases():
        if max_len and len(b) > max_len:
            continue
        text = b.decode("utf-8", "replace")
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            ids = encode_raw(tok, b, byte_ids)
            with_bos = tok.encode("").ids + ids
        else:
            ids = tok.encode(text, add_special_tokens=False).ids
            with_bos = tok.encode(text).ids
        dec = tok.decode(ids, skip_special_tokens=False)
        if check_roundtrip and tok.normalizer.normalize_str(text) != dec:
            sys.exit("round trip fails for %r" % text)
        rows.append("%s\t%s\t%s\t%s\n" % (esc(b), " ".join(map(str, ids)), " ".join(map(str, with_bos)),
                                          esc(dec.encode("utf-8"))))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(rows)
    return len(rows)


def write_decode(tok, path):
    """Random id sequences; half the ids are one-byte pieces, which split characters."""
    rng = random.Random(99)
    vocab = tok.get_vocab(with_added_tokens=True)
    one_char = sorted(i for p, i in vocab.items() if len(p) == 1)
    every = sorted(vocab.values())
    rows = []
    for _ in range(300):
        ids = [rng.choice(one_char) if rng.random() < 0.5 else rng.choice(every) for _ in range(rng.randint(1, 24))]
        dec = tok.decode(ids, skip_special_tokens=False)
        rows.append("%s\t%s\n" % (" ".join(map(str, ids)), esc(dec.encode("utf-8"))))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(rows)
    return len(rows)


def main():
    neox = train_neox()
    variant = make_variant(neox)
    noregex = json.loads(json.dumps(neox))
    noregex["pre_tokenizer"]["use_regex"] = False
    for name, spec in (("neox", neox), ("variant", variant), ("noregex", noregex)):
        with open(os.path.join(OUT, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, ensure_ascii=False, indent=1)
    tok = Tokenizer.from_file(os.path.join(OUT, "neox.json"))
    n = write_cases(tok, os.path.join(OUT, "neox_cases.tsv"), True)
    write_decode(tok, os.path.join(OUT, "neox_decode.tsv"))
    write_cases(Tokenizer.from_file(os.path.join(OUT, "variant.json")), os.path.join(OUT, "variant_cases.tsv"), False)
    write_cases(Tokenizer.from_file(os.path.join(OUT, "noregex.json")), os.path.join(OUT, "noregex_cases.tsv"), True, 1000)
    print("%d cases, vocab %d" % (n, tok.get_vocab_size()))


if __name__ == "__main__":
    main()
