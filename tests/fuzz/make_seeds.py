#!/usr/bin/env python3
"""tests/fuzz/make_seeds.py: writes the seed corpora under tests/fuzz/corpus/<target>/ from the
test fixtures and a few small synthetic files. Needs ./mamba (for the checkpoint seeds, written
by `mamba convert` itself). Deterministic; run from the repository root. Regression inputs from
fuzzing live beside the seeds as crash-*/regress-* files and are kept."""
import json, os, shutil, struct, subprocess, tempfile

ROOT = "tests/fuzz/corpus"
TOK = "tests/tokenizer"


def put(target, name, data):
    os.makedirs(f"{ROOT}/{target}", exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(f"{ROOT}/{target}/{name}", "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    """tensors: name -> (dtype, shape, bytes)."""
    header, blob = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def f32(n, start=0.25):
    return struct.pack(f"<{n}f", *[start + 0.01 * i for i in range(n)])


def bf16(n):
    return b"".join(struct.pack("<f", 0.5 + 0.01 * i)[2:] for i in range(n))


def hf_tiny(d=4, layers=1, vocab=8, state=2, conv=2, rank=1, tied=True, dtype="F32"):
    """A minimal transformers-style Mamba checkpoint: (config, safetensors bytes)."""
    di = 2 * d
    pack = f32 if dtype == "F32" else bf16
    t = {"backbone.embeddings.weight": (dtype, [vocab, d], pack(vocab * d)),
         "backbone.norm_f.weight": ("F32", [d], f32(d, 1.0))}
    for l in range(layers):
        p = f"backbone.layers.{l}."
        t[p + "norm.weight"] = ("F32", [d], f32(d, 1.0))
        t[p + "mixer.in_proj.weight"] = (dtype, [2 * di, d], pack(2 * di * d))
        t[p + "mixer.conv1d.weight"] = ("F32", [di, 1, conv], f32(di * conv))
        t[p + "mixer.conv1d.bias"] = ("F32", [di], f32(di))
        t[p + "mixer.x_proj.weight"] = (dtype, [rank + 2 * state, di], pack((rank + 2 * state) * di))
        t[p + "mixer.dt_proj.weight"] = (dtype, [di, rank], pack(di * rank))
        t[p + "mixer.dt_proj.bias"] = ("F32", [di], f32(di, -2.0))
        t[p + "mixer.A_log"] = ("F32", [di, state], f32(di * state))
        t[p + "mixer.D"] = ("F32", [di], f32(di, 1.0))
        t[p + "mixer.out_proj.weight"] = (dtype, [d, di], pack(d * di))
    if not tied:
        t["lm_head.weight"] = (dtype, [vocab, d], pack(vocab * d))
    config = {"model_type": "mamba", "hidden_size": d, "num_hidden_layers": layers, "vocab_size": vocab,
              "state_size": state, "conv_kernel": conv, "expand": 2, "time_step_rank": rank,
              "tie_word_embeddings": tied, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    return config, safetensors(t, {"format": "pt"})


def main():
    # config.json
    for name in ["tiny", "statespaces", "awkward", "bf16src", "f16src", "mamba2_tiny", "mamba2_awkward", "mamba2_odd",
                 "mamba2_statespaces", "falcon_tiny", "falcon_awkward"]:
        put("config", f"{name}.json", open(f"tests/fixtures/{name}/hf/config.json", "rb").read())
    for name in ["mamba2_attn", "mamba2_mlp"]:
        put("config", f"refuse_{name}.json", open(f"tests/fixtures/refuse/{name}/config.json", "rb").read())
    inf = json.load(open("tests/fixtures/mamba2_tiny/hf/config.json"))
    inf["time_step_limit"] = [0.0, float("inf")]            # transformers 4's bare Infinity
    put("config", "mamba2_bare_infinity.json", json.dumps(inf))
    put("config", "minimal_hf.json", json.dumps(hf_tiny()[0]))
    put("config", "ssm_cfg.json", json.dumps({"d_model": 8, "n_layer": 2, "vocab_size": 11, "pad_vocab_size_multiple": 8,
                                              "ssm_cfg": {"layer": "Mamba1", "d_state": 4, "d_conv": 3, "expand": 3, "dt_rank": "auto"},
                                              "rms_norm": True, "tie_embeddings": False}))
    put("config", "dt_rank_auto.json", json.dumps({"hidden_size": 40, "num_hidden_layers": 1, "vocab_size": 3,
                                                   "time_step_rank": "auto", "layer_norm_epsilon": 1e-6}))

    # safetensors: first byte 0 = a .safetensors file, 1 = an index over shards a/b.safetensors
    _, st = hf_tiny()
    put("safetensors", "tiny_f32", b"\0" + st)
    put("safetensors", "tiny_bf16_untied", b"\0" + hf_tiny(tied=False, dtype="BF16")[1])
    put("safetensors", "dtypes", b"\0" + safetensors({"a": ("F16", [2, 1], b"\0\x3c\0\x40"), "b": ("I64", [1], b"\0" * 8),
                                                       "c": ("F32", [], b"\0\0\x80\x3f"), "d": ("BF16", [0, 3], b"")}))
    put("safetensors", "index", b"\1" + json.dumps({"metadata": {"total_size": 12},
                                                     "weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}).encode())
    put("safetensors", "index_same_shard", b"\1" + json.dumps({"weight_map": {"y": "b.safetensors", "z": "b.safetensors"}}).encode())

    # checkpoints, written by mamba convert
    with tempfile.TemporaryDirectory() as tmp:
        def convert(name, dtype, tied=True, tokenizer=None, **kw):
            d = f"{tmp}/{name}"
            os.makedirs(d)
            config, st = hf_tiny(tied=tied, **kw)
            json.dump(config, open(f"{d}/config.json", "w"))
            open(f"{d}/model.safetensors", "wb").write(st)
            if tokenizer:
                shutil.copy(f"{TOK}/{tokenizer}", f"{d}/{'tokenizer.json' if tokenizer.endswith('.json') else 'tokenizer.model'}")
            subprocess.run(["./mamba", "convert", d, f"{ROOT}/checkpoint/{name}.bin", "--dtype", dtype], check=True,
                           stderr=subprocess.DEVNULL)
        os.makedirs(f"{ROOT}/checkpoint", exist_ok=True)
        convert("tied_f32", "f32")
        convert("untied_bf16", "bf16", tied=False, layers=2)
        convert("f16_neox", "f16", tokenizer="neox.json")
        convert("bf16_sp", "bf16", tokenizer="sp_bytes.model")
    subprocess.run(["./mamba", "convert", "tests/fixtures/tiny/hf", f"{ROOT}/checkpoint/fixture_tiny_bf16.bin"],
                   check=True, stderr=subprocess.DEVNULL)
    for shape in ["mamba2-tiny", "falcon-mamba-tiny"]:       # the other architectures' layouts
        subprocess.run(["./mamba", "init", "--shape", shape, f"{ROOT}/checkpoint/init_{shape}_bf16.bin"],
                       check=True, stderr=subprocess.DEVNULL)

    state_seeds()

    # tokenizer.json
    for name in ["neox.json", "variant.json", "noregex.json", "falcon.json", "mistral_a.json", "mistral_b.json",
                 "metaspace.json", "pretok_split.json", "bytegaps.json"]:
        put("tokenizer_json", name, open(f"{TOK}/{name}", "rb").read())
    put("tokenizer_json", "small_bpe.json", json.dumps({
        "added_tokens": [{"id": 5, "content": "<s>", "special": True}],
        "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4}, "merges": ["a b", "Ġ ab"]}}))

    # byte-level BPE input: lines of the fixture texts, ASCII, invalid UTF-8
    lines = open(f"{TOK}/train.txt", "rb").read().split(b"\n")
    for i, line in enumerate(lines[:40]):
        if line:
            put("bpe_encode", f"train_{i:02d}", line)
    put("bpe_encode", "spaces", b"a    b\t\tc\n\n  <|endoftext|>  <|padding|>")
    put("bpe_encode", "invalid_utf8", b"ok \xff\xfe \xc3 \xe2\x82 \xf0\x9f\x98 \xed\xa0\x80 \xc0\xaf end")
    put("bpe_encode", "nul", b"a\0b\0\0c")
    put("bpe_encode", "falcon_digits", b">>TITLE<< 1 12 123 1234 1234567 1,234,567 3.14159 !!!...?? (x)")
    put("bpe_encode", "mistral_control", "<s>[INST] Héllo, 世界 🙂 [/INST] ok</s>[TOOL_CALLS]".encode())
    put("bpe_encode", "metaspace_spaces", "  ▁ leading\t\tand   trailing  ▁▁ \u3000 ".encode())

    # decode: first byte picks the tokenizer (0 SentencePiece, 1 BPE), then little-endian u16 ids
    def ids(sel, seq):
        return bytes([sel]) + b"".join(struct.pack("<H", i) for i in seq)
    put("decode", "sp_words", ids(0, [1, 100, 200, 300, 400, 500, 600, 700, 2]))
    put("decode", "sp_bytes", ids(0, list(range(3, 3 + 256, 7)) + [0xE2 + 3, 0x82 + 3, 0xAC + 3]))
    put("decode", "bpe_words", ids(1, [0, 10, 100, 200, 300, 400, 500, 900, 910, 1]))
    put("decode", "bpe_split_utf8", ids(1, [161, 130, 172, 240, 159, 152, 128, 255]))

    # SentencePiece models
    for name in ["sp_bytes.model", "sp_unigram.model"]:
        put("sentencepiece", name, open(f"{TOK}/{name}", "rb").read())

    # CLI: first byte picks the command (run tokenize info perplexity convert bench help), then NUL-separated args
    cli = {
        "run": (0, ["-n", "5", "-t", "0.5", "-k", "10", "-p", "0.9", "--seed", "3", "--repeat-penalty", "1.1",
                    "--repeat-last-n", "8", "--stats", "--print-ids", "--no-echo", "--ignore-eos", "--device", "cpu",
                    "--threads", "1", "--logits-out", "l.bin", "hello", "world"]),
        "run_ids": (0, ["--prompt-ids", "1,2 3", "-m", "x.bin", "--tokenizer", "t.json", "-i", "text"]),
        "tokenize": (1, ["--tokenizer", "t.json", "--bos", "--decode", "1 2 3"]),
        "info": (2, ["model.bin"]),
        "perplexity": (3, ["--ctx", "16", "--max-tokens", "100", "--json", "-m", "m.bin", "valid.txt"]),
        "convert": (4, ["hf", "out.bin", "--dtype", "f16"]),
        "bench": (5, ["-n", "4", "--prompt-len", "8", "--json", "--device", "cpu"]),
        "help": (6, []),
    }
    for name, (cmd, args) in cli.items():
        put("cli", name, bytes([cmd]) + b"\0".join(a.encode() for a in args))


def state_seeds():
    """State files of the two models fuzz_state loads (first byte: the model, bit 1: fix the checksum),
    written by mamba run: after a prompt, after generated tokens, a prompt cache."""
    models = [(0, "tied_f32.bin", "1,2,3,4"), (1, "init_mamba2-tiny_bf16.bin", "5,6,7,8,9")]
    with tempfile.TemporaryDirectory() as tmp:
        for sel, model, prompt in models:
            m = f"{ROOT}/checkpoint/{model}"
            runs = {"prompt": ["-n", "0", "--state-out"], "generated": ["-n", "3", "--state-out"],
                    "cache": ["-n", "0", "--prompt-cache"]}
            for name, args in runs.items():
                out = f"{tmp}/{sel}_{name}"
                subprocess.run(["./mamba", "-m", m, "--device", "cpu", "--prompt-ids", prompt, "-t", "0", "--ignore-eos",
                                "--print-ids"] + args + [out], check=True, stdout=subprocess.DEVNULL)
                put("state", f"{model.split('.')[0]}_{name}", bytes([sel | 2]) + open(out, "rb").read())


if __name__ == "__main__":
    main()
