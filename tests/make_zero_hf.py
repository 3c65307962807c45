"""tests/make_zero_hf.py DIR [FAMILY [D_MODEL N_LAYER VOCAB]]: a Hugging Face folder (config.json,
model.safetensors) of transformers' model_type FAMILY (mamba, the default; mamba2; falcon_mamba)
with zero weights (A_log zero too). The default, the 130m width with 4 layers and 50280 ids, is
big enough that converting it takes a moment (tests/test_newuser.sh checks the progress line);
smaller ones carry a tokenizer in tests that need no real weights. Standard library only."""
import json, os, struct, sys

out = sys.argv[1]
family = sys.argv[2] if len(sys.argv) > 2 else "mamba"
d_model, n_layer, vocab = map(int, sys.argv[3:6]) if len(sys.argv) > 5 else (768, 4, 50280)
d_state, d_conv, d_inner = 16, 4, 2 * d_model
shapes = {"backbone.embeddings.weight": [vocab, d_model], "backbone.norm_f.weight": [d_model]}
config = {"model_type": family, "hidden_size": d_model, "num_hidden_layers": n_layer, "vocab_size": vocab,
          "state_size": d_state, "conv_kernel": d_conv, "expand": 2}
if family == "mamba2":
    head_dim, n_groups = 16, 1
    n_heads, conv_dim = d_inner // head_dim, d_inner + 2 * n_groups * d_state
    config.update({"head_dim": head_dim, "num_heads": n_heads, "n_groups": n_groups, "tie_word_embeddings": True})
    for l in range(n_layer):
        p = f"backbone.layers.{l}."
        shapes.update({p + "norm.weight": [d_model], p + "mixer.in_proj.weight": [d_inner + conv_dim + n_heads, d_model],
                       p + "mixer.conv1d.weight": [conv_dim, 1, d_conv], p + "mixer.conv1d.bias": [conv_dim],
                       p + "mixer.dt_bias": [n_heads], p + "mixer.A_log": [n_heads], p + "mixer.D": [n_heads],
                       p + "mixer.norm.weight": [d_inner], p + "mixer.out_proj.weight": [d_model, d_inner]})
else:
    dt_rank = (d_model + 15) // 16
    for l in range(n_layer):
        p = f"backbone.layers.{l}."
        shapes.update({p + "norm.weight": [d_model], p + "mixer.in_proj.weight": [2 * d_inner, d_model],
                       p + "mixer.conv1d.weight": [d_inner, 1, d_conv], p + "mixer.conv1d.bias": [d_inner],
                       p + "mixer.x_proj.weight": [dt_rank + 2 * d_state, d_inner],
                       p + "mixer.dt_proj.weight": [d_inner, dt_rank], p + "mixer.dt_proj.bias": [d_inner],
                       p + "mixer.A_log": [d_inner, d_state], p + "mixer.D": [d_inner],
                       p + "mixer.out_proj.weight": [d_model, d_inner]})
header, at = {}, 0
for name, shape in shapes.items():
    n = 4
    for s in shape:
        n *= s
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [at, at + n]}
    at += n
blob = json.dumps(header).encode()
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    f.truncate(8 + len(blob) + at)
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f)
