#!/usr/bin/env python3
"""Prepare the training data for tools/train.py.

Two steps, both reproducible:

1. --train-tokenizer: train the SentencePiece model weights/tokenizer.model (+ .vocab) with
   the Debian `spm_train` program on the training split. The settings (see SPM_FLAGS) keep
   the text byte-exact: identity normalisation, no dummy prefix, no whitespace squeezing,
   "\\n" as a user-defined piece (so generated text keeps its line structure) and byte
   fallback for anything unseen.
2. Encode train.txt and valid.txt, each file as ONE string (sp.encode(text), no BOS), into
   uint16 token-id arrays OUT/train.bin and OUT/valid.bin, plus OUT/meta.json with the byte
   counts that bits-per-byte needs. OUT (default .data/, ignored by git) is what travels to
   the GPU machine; the corpus itself never enters the tracked project.

Needs the Python `sentencepiece` package for step 2 (and `spm_train` for step 1).
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.join(os.path.dirname(ROOT), "shared", "data", "classics")

VOCAB_SIZE = 8192
SPM_FLAGS = [
    "--model_type=unigram",
    f"--vocab_size={VOCAB_SIZE}",
    "--character_coverage=1.0",
    "--byte_fallback=true",
    "--normalization_rule_name=identity",
    "--add_dummy_prefix=false",
    "--remove_extra_whitespaces=false",
    "--user_defined_symbols=\n",   # newline is a piece of its own (id 4)
    "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=3",
    "--max_sentence_length=16384",  # the longest corpus line is 6340 bytes
    "--input_sentence_size=0",      # use every line
    "--num_threads=2",
]


def train_tokenizer(corpus, prefix):
    cmd = ["spm_train", f"--input={os.path.join(corpus, 'train.txt')}",
           f"--model_prefix={prefix}"] + SPM_FLAGS
    print("running:", " ".join(repr(c) if "\n" in c else c for c in cmd), file=sys.stderr)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:])
        sys.exit(f"spm_train failed with status {r.returncode}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=DEFAULT_CORPUS, help="folder with train.txt and valid.txt")
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "weights", "tokenizer.model"))
    ap.add_argument("--train-tokenizer", action="store_true", help="(re)train the tokenizer first")
    ap.add_argument("--out", default=os.path.join(ROOT, ".data"))
    args = ap.parse_args()

    if args.train_tokenizer:
        assert args.tokenizer.endswith(".model")
        train_tokenizer(args.corpus, args.tokenizer[: -len(".model")])

    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    assert sp.get_piece_size() <= 65536
    os.makedirs(args.out, exist_ok=True)
    meta = {"tokenizer_sha256": hashlib.sha256(open(args.tokenizer, "rb").read()).hexdigest(),
            "vocab_size": sp.get_piece_size(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
            "unk_id": sp.unk_id(), "pad_id": sp.pad_id()}
    for split in ("train", "valid"):
        raw = open(os.path.join(args.corpus, f"{split}.txt"), "rb").read()
        text = raw.decode("utf-8")
        ids = sp.encode(text)
        if sp.decode(ids) != text:
            sys.exit(f"{split}: encode/decode round trip is not exact")
        n_unk = sum(1 for i in ids if i == sp.unk_id())
        np.asarray(ids, dtype=np.uint16).tofile(os.path.join(args.out, f"{split}.bin"))
        meta[split] = {"bytes": len(raw), "tokens": len(ids), "unk": n_unk,
                       "bytes_per_token": len(raw) / len(ids)}
        print(f"{split}: {len(raw)} bytes -> {len(ids)} tokens ({len(raw) / len(ids):.3f} bytes/token), "
              f"round trip exact, {n_unk} unk", file=sys.stderr)
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
