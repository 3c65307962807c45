#!/usr/bin/env python3
"""bench/random_mamba.py LLAMA_CPP_DIR OUT_DIR [--shape 130m] [--seed 1]: one random Mamba-1
checkpoint, written twice with the same weights: OUT_DIR/hf (a Hugging Face folder,
config.json + model.safetensors in f32, for `mamba convert`) and OUT_DIR/model-{bf16,f16}.gguf
(for llama.cpp, through the gguf-py library of its source tree). The GGUF follows what
llama.cpp's convert_hf_to_gguf.py writes for MambaForCausalLM (A stored as -exp(A_log), the
conv weight squeezed to [d_inner, d_conv], norms, biases, A, D and the conv in f32, its built-in
GPT-NeoX vocabulary); that converter itself needs PyTorch and transformers, which a CPU-only
benchmark machine need not have. Needs numpy only."""
import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

SHAPES = {  # the published Mamba-1 shapes: d_model, n_layer
    "130m": (768, 24), "370m": (1024, 48), "790m": (1536, 48), "1.4b": (2048, 48), "2.8b": (2560, 64),
}
VOCAB, D_STATE, D_CONV = 50280, 16, 4


def random_weights(d_model, n_layer, seed):
    """HF names → f32 arrays, scaled roughly as trained models are (finite, not degenerate)."""
    rng = np.random.default_rng(seed)
    d_inner, dt_rank = 2 * d_model, -(-d_model // 16)
    normal = lambda shape, std: (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
    w = {"backbone.embeddings.weight": normal((VOCAB, d_model), 0.02)}
    for l in range(n_layer):
        p = f"backbone.layers.{l}."
        w[p + "norm.weight"] = np.ones(d_model, np.float32)
        w[p + "mixer.in_proj.weight"] = normal((2 * d_inner, d_model), d_model ** -0.5)
        w[p + "mixer.conv1d.weight"] = normal((d_inner, 1, D_CONV), 0.5)
        w[p + "mixer.conv1d.bias"] = normal((d_inner,), 0.1)
        w[p + "mixer.x_proj.weight"] = normal((dt_rank + 2 * D_STATE, d_inner), d_inner ** -0.5)
        w[p + "mixer.dt_proj.weight"] = normal((d_inner, dt_rank), dt_rank ** -0.5)
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), d_inner)).astype(np.float32)
        w[p + "mixer.dt_proj.bias"] = (dt + np.log(-np.expm1(-dt))).astype(np.float32)   # softplus⁻¹(dt)
        w[p + "mixer.A_log"] = np.log(np.tile(np.arange(1, D_STATE + 1, dtype=np.float32), (d_inner, 1)))
        w[p + "mixer.D"] = np.ones(d_inner, np.float32)
        w[p + "mixer.out_proj.weight"] = normal((d_model, d_inner), d_inner ** -0.5 / n_layer ** 0.5)
    w["backbone.norm_f.weight"] = np.ones(d_model, np.float32)
    return w


def write_hf(folder, weights, d_model, n_layer):
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": d_model,
              "num_hidden_layers": n_layer, "vocab_size": VOCAB, "state_size": D_STATE, "conv_kernel": D_CONV,
              "expand": 2, "intermediate_size": 2 * d_model, "time_step_rank": -(-d_model // 16),
              "layer_norm_epsilon": 1e-5, "use_bias": False, "use_conv_bias": True, "tie_word_embeddings": True,
              "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    header, offset = {}, 0
    for name, a in weights.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for a in weights.values():
            f.write(np.ascontiguousarray(a).tobytes())


def write_gguf(path, weights, d_model, n_layer, dtype, llama_cpp):
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import gguf
    qtype = {"bf16": gguf.GGMLQuantizationType.BF16, "f16": gguf.GGMLQuantizationType.F16}[dtype]
    ftype = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "f16": gguf.LlamaFileType.MOSTLY_F16}[dtype]
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_name(f"random mamba {d_model}x{n_layer}")
    w.add_context_length(2 ** 20)
    w.add_embedding_length(d_model)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(n_layer)
    w.add_ssm_conv_kernel(D_CONV)
    w.add_ssm_inner_size(2 * d_model)
    w.add_ssm_state_size(D_STATE)
    w.add_ssm_time_step_rank(-(-d_model // 16))
    w.add_layer_norm_rms_eps(1e-5)
    w.add_ssm_dt_b_c_rms(False)
    w.add_file_type(ftype)
    vocab = gguf.GGUFReader(str(llama_cpp / "models" / "ggml-vocab-gpt-neox.gguf"), "r")
    field = lambda key: vocab.get_field(key)
    w.add_tokenizer_model(field(gguf.Keys.Tokenizer.MODEL).contents())
    w.add_tokenizer_pre("mpt")
    w.add_token_list(field(gguf.Keys.Tokenizer.LIST).contents()[:VOCAB])
    w.add_token_types(field(gguf.Keys.Tokenizer.TOKEN_TYPE).contents()[:VOCAB])
    w.add_token_merges(field(gguf.Keys.Tokenizer.MERGES).contents())
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    names = {"norm.weight": "attn_norm.weight", "mixer.in_proj.weight": "ssm_in.weight",
             "mixer.conv1d.weight": "ssm_conv1d.weight", "mixer.conv1d.bias": "ssm_conv1d.bias",
             "mixer.x_proj.weight": "ssm_x.weight", "mixer.dt_proj.weight": "ssm_dt.weight",
             "mixer.dt_proj.bias": "ssm_dt.bias", "mixer.A_log": "ssm_a", "mixer.D": "ssm_d",
             "mixer.out_proj.weight": "ssm_out.weight"}
    for name, a in weights.items():
        if name == "backbone.embeddings.weight":
            new = "token_embd.weight"
        elif name == "backbone.norm_f.weight":
            new = "output_norm.weight"
        else:
            l, rest = name[len("backbone.layers."):].split(".", 1)
            new = f"blk.{l}.{names[rest]}"
        if new.endswith("ssm_a"):
            a = -np.exp(a)
        if new.endswith("ssm_conv1d.weight"):
            a = a.squeeze()
        matrix = a.ndim == 2 and new.endswith(".weight") and "ssm_conv1d" not in new and "_norm" not in new
        if matrix:
            w.add_tensor(new, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(new, a.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("llama_cpp", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", default="130m", choices=SHAPES)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    d_model, n_layer = SHAPES[args.shape]
    weights = random_weights(d_model, n_layer, args.seed)
    write_hf(args.out / "hf", weights, d_model, n_layer)
    for dtype in ("bf16", "f16"):
        write_gguf(args.out / f"model-{dtype}.gguf", weights, d_model, n_layer, dtype, args.llama_cpp)


if __name__ == "__main__":
    main()
