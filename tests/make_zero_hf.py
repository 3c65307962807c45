"""tests/make_zero_hf.py DIR: a Hugging Face Mamba folder (config.json, model.safetensors) of the
130m width with 4 layers and zero weights (A_log zero too): big enough that converting it takes
a moment (tests/test_newuser.sh checks the progress line). Standard library only."""
import json, os, struct, sys

d_model, n_layer, vocab, d_state, d_conv = 768, 4, 50280, 16, 4
d_inner, dt_rank = 2 * d_model, (d_model + 15) // 16
shapes = {"backbone.embeddings.weight": [vocab, d_model], "backbone.norm_f.weight": [d_model]}
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
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    f.truncate(8 + len(blob) + at)
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"model_type": "mamba", "hidden_size": d_model, "num_hidden_layers": n_layer, "vocab_size": vocab,
               "state_size": d_state, "conv_kernel": d_conv, "expand": 2}, f)
