#!/usr/bin/env python3
"""tools/make_tokenizer_fixtures.py: builds the Falcon-, Mistral- and pre-tokenizer fixtures of
tests/test_tokenizer.sh with Hugging Face `tokenizers`, and the SentencePiece BPE one with the
`sentencepiece` Python trainer. tools/make_bpe_fixture.py makes the GPT-NeoX ones; this script
takes its case list and escaping from there.

  falcon.json         shaped like Falcon's (falcon-mamba-7b): ByteLevel BPE trained on
                      tests/tokenizer/train.txt under Falcon's pre-tokenizer Sequence
                      [Punctuation(Contiguous), ByteLevel(use_regex), Digits, Split("[0-9][0-9][0-9]",
                      Isolated)], ByteLevel decoder, Falcon's 11 special tokens and <|endoftext|> (11)
  mistral_a.json      shaped like Mistral v0.3's / Codestral-Mamba's (the older form): BPE with "▁"
                      pieces, byte_fallback with <0x00>..<0xFF> pieces, fuse_unk, <unk> <s> </s>
                      and control tokens ([INST], [/INST], [TOOL_CALLS], ...) as special added
                      tokens, normalizer Sequence[Prepend("▁"), Replace(" ", "▁")], no
                      pre-tokenizer, decoder Sequence[Replace("▁", " "), ByteFallback, Fuse,
                      Strip(" ", 1, 0)], a TemplateProcessing that prepends <s>
  mistral_b.json      the same model in the newer form: no normalizer, pre-tokenizer
                      Metaspace(prepend_scheme "first", split false), the same decoder
  metaspace.json      the same model with Metaspace(prepend_scheme "always", split true) as
                      pre-tokenizer and decoder, ignore_merges, and two pieces no merge makes
  pretok_ws.json      a small ByteLevel BPE under Sequence[WhitespaceSplit, Punctuation(Isolated),
                      Digits(individual), ByteLevel(add_prefix_space, no regex)]
  pretok_split.json   the same model under Sequence[Split(String "a", MergedWithPrevious),
                      Split(Regex "[0-9]+", MergedWithNext), Split(Regex "[.!?,]", Contiguous),
                      Split(Regex "(?=[xyz])", Isolated), ByteLevel(add_prefix_space, no regex)]
                      (the last pattern matches only empty strings; the prefix space shows each
                      piece in the ids)
  pretok_invert.json  the same model under Sequence[Split(Regex "\\s+", Removed),
                      Split(Regex "[aeiou]+", MergedWithPrevious, invert), Whitespace, ByteLevel(no regex)]
  pretok_meta.json    the Mistral model under Sequence[Punctuation(MergedWithNext),
                      Digits(individual), Metaspace("first", split)]
  bytegaps.json, bytegaps_unfused.json
                      a hand-made model with only some <0xXX> pieces, and unk (fuse_unk on, off)
  sp_mistral.model    SentencePiece BPE like Mistral's tokenizer.model: byte_fallback, identity
                      normalization, split digits, user-defined [INST] [/INST], control
                      [TOOL_CALLS]; trained by the sentencepiece Python trainer on train.txt
  NAME_cases.tsv      for each: one case a row: text, ids, ids with special tokens, decoded text
                      (sp_mistral_cases.tsv from Python sentencepiece)
  mistral_a_decode.tsv, metaspace_decode.tsv
                      random id sequences (byte pieces favoured) and their decoded text

Texts that are not valid UTF-8 get the ids of tokenizer.c's rule (the comment at the top of
tokenizer.c): each valid run encoded by `tokenizers` as a text of its own, each ill-formed byte
the id of its byte-level symbol (with a ByteLevel pre-tokenizer) or of its <0xXX> piece. Decoded
texts are decode(ids, skip_special_tokens=False).

Usage: python3 tools/make_tokenizer_fixtures.py [OUTDIR]     (default: tests/tokenizer)
       (tokenizers 0.23.3 and sentencepiece 0.2.x from PyPI)
Deterministic: one run reproduces the committed files byte for byte.
"""
import io
import json
import os
import random
import sys

import sentencepiece as spm
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_bpe_fixture as base  # noqa: E402  (the case list and the escaping)

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/tokenizer"
TRAIN = base.TRAIN
FALCON_SPECIAL = [">>TITLE<<", ">>ABSTRACT<<", ">>INTRODUCTION<<", ">>SUMMARY<<", ">>COMMENT<<",
                  ">>ANSWER<<", ">>QUESTION<<", ">>DOMAIN<<", ">>PREFIX<<", ">>SUFFIX<<", ">>MIDDLE<<",
                  "<|endoftext|>"]
MISTRAL_SPECIAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                   "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]


def training_text():
    """train.txt and lines of numbers and code, so that digit groups and ▁ runs get merges."""
    with open(TRAIN, encoding="utf-8") as f:
        text = f.read()
    rng = random.Random(7)
    nums = [" ".join(str(rng.randint(0, 10 ** rng.randint(1, 8))) for _ in range(12)) for _ in range(40)]
    code = ["def f(x):\n    return x + %d\n" % i for i in range(20)]
    return [text] + nums + code


def train_falcon():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation(behavior="contiguous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(pattern=Regex("[0-9][0-9][0-9]"), behavior="isolated", invert=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1100, min_frequency=2, show_progress=False, special_tokens=FALCON_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer)
    spec = json.loads(tok.to_str())
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    return spec


def train_mistral():
    """The model part: specials, then the 256 byte pieces, then what BPE learned (Metaspace-split
    words, an alphabet of the 90 most frequent characters, so that the rest falls back to bytes)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=900, min_frequency=2, show_progress=False, special_tokens=MISTRAL_SPECIAL)
    # the alphabet chosen here (the trainer's limit_alphabet breaks ties at random)
    text = training_text()
    freq = {}
    for t in text:
        for c in t:
            freq[c] = freq.get(c, 0) + 1
    keep = set(sorted(freq, key=lambda c: (-freq[c], c))[:90]) | {" "}
    tok.train_from_iterator(["".join(c if c in keep else " " for c in t) for t in text], trainer)
    learned = json.loads(tok.to_str())["model"]
    vocab = {p: i for i, p in enumerate(MISTRAL_SPECIAL)}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    added = [{"id": i, "content": p, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, p in enumerate(MISTRAL_SPECIAL)]
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
             "vocab": vocab, "merges": learned["merges"]}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None, "model": model}


def sp_decoder():
    return {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def bos_template():
    tok = Tokenizer(models.BPE())
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return json.loads(tok.to_str())["post_processor"]


def mistral_variants(model):
    a = json.loads(json.dumps(model))
    a["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    a["decoder"] = sp_decoder()
    a["post_processor"] = bos_template()
    b = json.loads(json.dumps(a))
    b["normalizer"] = None
    b["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    m = json.loads(json.dumps(b))
    m["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    m["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    m["model"]["ignore_merges"] = True
    for piece in ["▁zebra", "▁Привет"]:               # no merges make these: only ignore_merges does
        m["model"]["vocab"][piece] = len(m["model"]["vocab"])
    meta = json.loads(json.dumps(b))
    meta["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Punctuation", "behavior": "MergedWithNext"}, {"type": "Digits", "individual_digits": True},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}]}
    return a, b, m, meta


def byte_gaps():
    """A model that has some <0xXX> pieces only, and unk: a character whose bytes are not all
    there is unk, and an unk waits for the next character that has a piece (after the byte
    pieces of characters in between), as tokenizers' merge_word does."""
    vocab = {"<unk>": 0, "▁": 1, "a": 2, "b": 3, "▁a": 4, "ab": 5}
    for b in [0x78, 0xC3, 0xA9, 0xE4, 0xB8, 0xAD, 0x31, 0x32]:
        vocab["<0x%02X>" % b] = len(vocab)
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
             "vocab": vocab, "merges": [["▁", "a"], ["a", "b"]]}
    fused = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
             "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False},
             "post_processor": None, "decoder": sp_decoder(), "model": model}
    unfused = json.loads(json.dumps(fused))
    unfused["model"]["fuse_unk"] = False
    return fused, unfused


def small_byte_level():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, min_frequency=2, show_progress=False, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer)
    return json.loads(tok.to_str())


def pretok_variants(small):
    def with_pre(pre):
        spec = json.loads(json.dumps(small))
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": pre}
        return spec
    bl = lambda prefix, regex: {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True, "use_regex": regex}
    split = lambda kind, pat, behavior, invert=False: {"type": "Split", "pattern": {kind: pat}, "behavior": behavior, "invert": invert}
    ws = with_pre([{"type": "WhitespaceSplit"}, {"type": "Punctuation", "behavior": "Isolated"},
                   {"type": "Digits", "individual_digits": True}, bl(True, False)])
    sp = with_pre([split("String", "a", "MergedWithPrevious"), split("Regex", "[0-9]+", "MergedWithNext"),
                   split("Regex", "[.!?,]", "Contiguous"), split("Regex", "(?=[xyz])", "Isolated"), bl(True, False)])
    inv = with_pre([split("Regex", "\\s+", "Removed"), split("Regex", "[aeiou]+", "MergedWithPrevious", True),
                    {"type": "Whitespace"}, bl(False, False)])
    return ws, sp, inv


def extra_cases():
    """Cases for what these fixtures add: digit groups, control and special tokens, byte
    fallback, Metaspace's prefix, more scripts and whitespace."""
    s = ["1", "12", "123", "1234", "12345", "123456", "1234567", "12345678901234567890", "1,234,567",
         "1.234.567", "1 234 567", "1_234_567", "12:34:56", "v12.345.6789", "x1234y", "0001", "١٢٣٤", "１２３４",
         "²³⁴", "½¼", "Ⅻ12", "12%", "$1234.56", "-1234", "1e-123", "a1b22c333d4444", " 123 4567 ",
         "[INST]", "[INST] Hello [/INST]", "[INST]Hello[/INST]", "<s>[INST] What is 2+2? [/INST]", "</s>",
         "<unk>", "[TOOL_CALLS][{\"name\": \"f\"}]", "[AVAILABLE_TOOLS][]", "a[INST]b", " [INST] ", "[INST][INST]",
         "[inst]", "[INST", "<s>", "<s> hi", "hi</s>", ">>TITLE<<", "x>>ABSTRACT<<y", ">>TITLE<< the end<|endoftext|>",
         "▁", "▁▁", "▁hello", " ▁ ", "a▁b", "\u2581\u2581x", "hello\u3000world", "x\u00a0\u00a0y",
         "Привет, мир!", "שלום עולם", "مرحبا بالعالم", "Ελληνικά!", "中文，标点。", "「引用」", "¿Qué?", "¡Hola!",
         "e\u0301\u0301", "\u0915\u094d\u0937", "Z\u0351\u036b\u0343\u036a\u0302", "🙂🙂", "👩🏽‍💻", "x🙂y", "🏳️‍🌈",
         "((a))", "a...b", "!!!???", "a--b", "«»", "—–-", "‽", "x\u061fy", "\u066a", "\u2e43", "\u166d",
         "    def f(x):\n        return 1\n", "\t\tindent", "a \t b", "\n\n\n", " \n", "x \n", "  ",
         "   leading", "trailing   ", "mid    dle", "\r\n\r\n", "a\x0bb", "\u0085x", "\u2028\u2029",
         "aaaaa", "xx", "xxx yyy", "axbx", "a1a2", "ba", "the cat", "The Cat Sat", "zebra", "a zebra",
         "Привет мир", "zebras", "a\u2e43b", "a\u166db", "a\u061db", "a\u2e5db", "x\U00010d40y", "a½b", "a\u00b2b"]
    return [x.encode("utf-8") for x in s] + [b"[INST]\xff", b"\xe4\xb8[INST]", b"1\xff234", b"\xc3\xa9\xc3"]


def all_cases(max_len=None):
    out = base.cases() + extra_cases()
    return [c for c in out if max_len is None or len(c) <= max_len]


def fallback_ids(tok, spec):
    """Each byte's id for an ill-formed byte: its byte-level symbol's with a ByteLevel
    pre-tokenizer, else its <0xXX> piece's, else unk's."""
    vocab = tok.get_vocab(with_added_tokens=False)
    if "ByteLevel" in json.dumps(spec["pre_tokenizer"]):
        return {b: vocab[c] for b, c in base.byte_alphabet().items()}
    unk = spec["model"].get("unk_token")
    return {b: vocab.get("<0x%02X>" % b, vocab.get(unk)) for b in range(256)}


def write_cases(spec, path, max_len=None):
    tok = Tokenizer.from_str(json.dumps(spec))
    byte_ids = fallback_ids(tok, spec)
    rows = []
    for b in all_cases(max_len):
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError:
            ids = base.encode_raw(tok, b, byte_ids)
            with_bos = tok.encode("").ids + ids
        else:
            ids = tok.encode(text, add_special_tokens=False).ids
            with_bos = tok.encode(text).ids
        dec = tok.decode(ids, skip_special_tokens=False)
        rows.append("%s\t%s\t%s\t%s\n" % (base.esc(b), " ".join(map(str, ids)), " ".join(map(str, with_bos)),
                                          base.esc(dec.encode("utf-8"))))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(rows)
    return len(rows)


def write_decode(spec, path, seed):
    """Random id sequences, half of them byte pieces (<0xXX>, most of them of multi-byte
    characters), which ByteFallback joins across tokens."""
    tok = Tokenizer.from_str(json.dumps(spec))
    rng = random.Random(seed)
    vocab = tok.get_vocab(with_added_tokens=True)
    byte_pieces = sorted(i for p, i in vocab.items() if len(p) == 6 and p.startswith("<0x"))
    utf8 = [vocab["<0x%02X>" % b] for b in "🙂é中".encode("utf-8")]
    every = sorted(vocab.values())
    rows = []
    for _ in range(300):
        ids = []
        while len(ids) < rng.randint(1, 24):
            r = rng.random()
            ids += utf8[:] if r < 0.15 else [rng.choice(byte_pieces)] if r < 0.5 else [rng.choice(every)]
        dec = tok.decode(ids, skip_special_tokens=False)
        rows.append("%s\t%s\n" % (" ".join(map(str, ids)), base.esc(dec.encode("utf-8"))))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(rows)


def train_sp(path):
    """From the lines of train.txt (an iterator: a file name would be written into the model)."""
    model = io.BytesIO()
    with open(TRAIN, encoding="utf-8") as f:
        lines = f.read().split("\n")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=700, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=0.98, num_threads=1,
        user_defined_symbols=["[INST]", "[/INST]"], control_symbols=["[TOOL_CALLS]"], minloglevel=2)
    with open(path, "wb") as f:
        f.write(model.getvalue())


def write_sp_cases(model, path):
    sp = spm.SentencePieceProcessor(model_file=model)
    rows = []
    for b in all_cases():
        ids = sp.encode(b)
        rows.append("%s\t%s\t%s\t%s\n" % (base.esc(b), " ".join(map(str, ids)), " ".join(map(str, [sp.bos_id()] + ids)),
                                          base.esc(sp.decode(ids).encode("utf-8"))))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(rows)
    return len(rows)


def dump(spec, name):
    with open(os.path.join(OUT, name + ".json"), "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False, indent=1)


def main():
    falcon = train_falcon()
    a, b, m, meta = mistral_variants(train_mistral())
    ws, sp, inv = pretok_variants(small_byte_level())
    gaps, gaps_unfused = byte_gaps()
    for name, spec, max_len in (("falcon", falcon, None), ("mistral_a", a, None), ("mistral_b", b, None),
                                ("metaspace", m, None), ("pretok_ws", ws, 1000), ("pretok_split", sp, 1000),
                                ("pretok_invert", inv, 1000), ("pretok_meta", meta, 1000),
                                ("bytegaps", gaps, 200), ("bytegaps_unfused", gaps_unfused, 200)):
        dump(spec, name)
        n = write_cases(spec, os.path.join(OUT, name + "_cases.tsv"), max_len)
        print("%s: %d cases" % (name, n))
    write_decode(a, os.path.join(OUT, "mistral_a_decode.tsv"), 5)
    write_decode(m, os.path.join(OUT, "metaspace_decode.tsv"), 6)
    train_sp(os.path.join(OUT, "sp_mistral.model"))
    print("sp_mistral: %d cases" % write_sp_cases(os.path.join(OUT, "sp_mistral.model"), os.path.join(OUT, "sp_mistral_cases.tsv")))


if __name__ == "__main__":
    main()
