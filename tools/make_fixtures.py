#!/usr/bin/env python3
"""Write the reference fixtures under tests/fixtures/ for the mamba C engine.

How to run (CPU only, a few seconds):

    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip install torch transformers safetensors numpy
    /tmp/venv/bin/python tools/make_fixtures.py          # or: python3 tools/make_fixtures.py

It needs PyTorch, transformers (with MambaForCausalLM), safetensors and numpy from PyPI; no
network access and no downloaded weights. Last run with torch 2.15.0 (CPU), transformers 5.24.0,
safetensors 0.8.0, numpy 2.4.6; other versions may differ in the last bits of ref_logits. Every model is a small random one whose parameters are
re-drawn from fixed seeds so that it behaves a little like a trained model (peaked logits, varied
greedy continuations). Running the script twice gives byte-identical files on the same machine
and library versions. It deletes and rewrites tests/fixtures/<name>/ for each fixture it makes
and leaves tests/fixtures/README.md alone.

Each tests/fixtures/<name>/ holds:
  hf/                  the checkpoint (Hugging Face layout, or state-spaces layout for `statespaces`)
  prompt_ids.txt       one line of comma-separated token ids (64 positions)
  ref_logits.bin       float32 little-endian [64, vocab_size]: model(prompt_ids).logits
  greedy_prompt.txt    the first 8 ids of prompt_ids
  greedy_ids.txt       the 40 NEW ids of a greedy continuation of greedy_prompt (EOS disabled)
  ref_logits_bf16.bin  (tiny, awkward) like ref_logits.bin, with the large matrices rounded to
  ref_logits_f16.bin   bf16 / f16 and back to f32 first (all math still f32)

The large matrices are the embedding and every layer's in_proj, x_proj, dt_proj and out_proj
weights, plus lm_head.weight when it is not tied; norms, conv1d weight/bias, dt_proj.bias, A_log
and D stay f32. That is what the converter's --dtype bf16/f16 does.
"""

import copy
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import MambaConfig, MambaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
ROOT = os.path.normpath(ROOT)

N_POS = 64            # positions in prompt_ids / rows of ref_logits
N_GREEDY_PROMPT = 8   # greedy_prompt = prompt_ids[:8]
N_NEW = 40            # greedy_ids holds this many new ids
LOGIT_STD = 2.5       # target spread of the logits over the vocabulary
# out_proj gain. With out_proj ~ N(0, 1/fan_in) the embedding of the current token dominates the
# residual stream, and with a tied head every token then predicts itself (greedy runs are one id
# repeated). Trained models have a residual stream dominated by the mixers; a gain of 8 gives
# that, and greedy continuations with 30+ distinct ids.
OUT_GAIN = 8.0


# --------------------------------------------------------------------------------------------
# Models


def redraw_parameters(model, seed):
    """Replace every parameter of a MambaForCausalLM with seeded draws that look 'trained'.

    Linear layers get N(0, 1/fan_in) so that activations keep unit scale (out_proj: OUT_GAIN
    times that); the output head is
    scaled so that the logits have a std of about LOGIT_STD over the vocabulary (a tied head is
    the embedding, so then the embedding itself gets that scale, otherwise the embedding is
    N(0, 1)); norms are 1 + noise; conv, D and A_log are noise around HF's init; dt_proj.bias is
    the inverse softplus of dt drawn log-uniformly in [1e-3, 1e-1].
    """
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    d = cfg.hidden_size
    tied = model.lm_head.weight is model.backbone.embeddings.weight

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo

    head_std = LOGIT_STD / math.sqrt(d)
    done = set()
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head.weight is listed once, as the embedding
            shape = tuple(p.shape)
            leaf = name.split("layers.")[-1]
            if name == "backbone.embeddings.weight":
                v = normal(shape, head_std if tied else 1.0)
            elif name == "lm_head.weight":
                v = normal(shape, head_std)
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                v = normal(shape, 0.1, 1.0)
            elif leaf.endswith("mixer.in_proj.weight") or leaf.endswith("mixer.x_proj.weight"):
                v = normal(shape, 1.0 / math.sqrt(shape[1]))
            elif leaf.endswith("mixer.out_proj.weight"):
                v = normal(shape, OUT_GAIN / math.sqrt(shape[1]))
            elif leaf.endswith("mixer.in_proj.bias") or leaf.endswith("mixer.out_proj.bias"):
                v = normal(shape, 0.05)
            elif leaf.endswith("mixer.conv1d.weight"):       # [d_inner, 1, k]; HF: U(+-1/sqrt(k))
                b = 1.0 / math.sqrt(shape[-1])
                v = uniform(shape, -b, b)
            elif leaf.endswith("mixer.conv1d.bias"):         # HF: zeros
                v = normal(shape, 0.1)
            elif leaf.endswith("mixer.dt_proj.weight"):      # HF: U(+-rank^-0.5)
                b = shape[1] ** -0.5
                v = uniform(shape, -b, b)
            elif leaf.endswith("mixer.dt_proj.bias"):
                dt = torch.exp(uniform(shape, math.log(1e-3), math.log(1e-1)))
                v = dt + torch.log(-torch.expm1(-dt))        # softplus(v) == dt
            elif leaf.endswith("mixer.A_log"):               # HF: log(1..d_state)
                n = shape[1]
                base = torch.log(torch.arange(1, n + 1, dtype=torch.float32))[None, :].expand(shape)
                v = base + normal(shape, 0.1)
            elif leaf.endswith("mixer.D"):                   # HF: ones
                v = normal(shape, 0.2, 1.0)
            else:
                raise SystemExit(f"make_fixtures: no rule to draw parameter {name}")
            p.copy_(v)
            done.add(name)
    if not tied:
        assert "lm_head.weight" in done, "untied head was not redrawn"
        assert not torch.equal(model.lm_head.weight, model.backbone.embeddings.weight)
    return model


def build(seed, **cfg_kwargs):
    torch.manual_seed(seed)
    cfg = MambaConfig(**cfg_kwargs)
    model = MambaForCausalLM(cfg).eval()
    return redraw_parameters(model, seed)


TINY_CFG = dict(vocab_size=512, hidden_size=64, state_size=16, num_hidden_layers=2, expand=2,
                conv_kernel=4, tie_word_embeddings=True, use_bias=False, use_conv_bias=True,
                layer_norm_epsilon=1e-5)

# intermediate_size is passed explicitly: MambaConfig derives expand*hidden_size first, but an
# explicit intermediate_size kwarg wins (config.json then says expand=2, intermediate_size=88).
AWKWARD_CFG = dict(vocab_size=1003, hidden_size=40, intermediate_size=88, state_size=12,
                   num_hidden_layers=3, conv_kernel=3, time_step_rank=5, tie_word_embeddings=False,
                   use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5)


def large_matrix_names(model):
    names = ["backbone.embeddings.weight"]
    for i in range(model.config.num_hidden_layers):
        for m in ("in_proj", "x_proj", "dt_proj", "out_proj"):
            names.append(f"backbone.layers.{i}.mixer.{m}.weight")
    if model.lm_head.weight is not model.backbone.embeddings.weight:
        names.append("lm_head.weight")
    return names


def rounded_copy(model, dtype, which):
    """A float32 copy of model whose parameters named in `which` (None: all) went through dtype."""
    m = MambaForCausalLM(model.config).eval()
    m.load_state_dict(model.state_dict())
    assert (m.lm_head.weight is m.backbone.embeddings.weight) == \
        (model.lm_head.weight is model.backbone.embeddings.weight)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if which is None or name in which:
                p.copy_(p.to(dtype).to(torch.float32))
    return m


# --------------------------------------------------------------------------------------------
# Reference computations


@torch.no_grad()
def full_logits(model, ids):
    out = model(torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32)


@torch.no_grad()
def greedy_generate(model, prompt):
    """transformers' cached greedy generation, EOS disabled so it always makes N_NEW ids."""
    gc = copy.deepcopy(model.generation_config)
    gc.eos_token_id = None
    gc.pad_token_id = 0
    gc.do_sample = False
    gc.max_new_tokens = N_NEW
    out = model.generate(torch.tensor([prompt], dtype=torch.long), generation_config=gc)
    new = out[0, len(prompt):].tolist()
    assert len(new) == N_NEW, f"generate made {len(new)} ids, not {N_NEW}"
    return new


@torch.no_grad()
def greedy_by_full_forward(model, prompt, n_vocab):
    """Greedy decoding by re-running the whole sequence each step and taking the argmax over the
    first n_vocab logits. Returns (new ids, smallest top-1 minus top-2 logit gap on the way)."""
    ids = list(prompt)
    gap = float("inf")
    for _ in range(N_NEW):
        row = full_logits(model, ids)[-1, :n_vocab]
        top = torch.topk(row, 2).values
        gap = min(gap, float(top[0] - top[1]))
        ids.append(int(torch.argmax(row)))
    return ids[len(prompt):], gap


def check_logits(name, logits):
    assert torch.isfinite(logits).all(), f"{name}: non-finite logits"
    row_std = logits.std(dim=-1)
    assert float(row_std.min()) >= 0.5, f"{name}: a logit row has std {float(row_std.min()):.3f} < 0.5"
    return float(row_std.min()), float(row_std.mean())


def check_greedy(name, new_ids, gap):
    distinct = len(set(new_ids))
    assert distinct >= 8, f"{name}: greedy continuation has only {distinct} distinct ids"
    # A near-tie would make the fixture depend on rounding; demand a clear winner at every step.
    assert gap >= 1e-3, f"{name}: greedy top-1/top-2 gap {gap:.2e} is too small"
    return distinct


# --------------------------------------------------------------------------------------------
# Output helpers


def write_ids(path, ids):
    with open(path, "w") as f:
        f.write(",".join(str(int(i)) for i in ids) + "\n")


def write_f32(path, t):
    a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
    a.tofile(path)


def fresh_dir(name):
    d = os.path.join(ROOT, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(os.path.join(d, "hf"))
    return d


def prompt_for(seed, vocab):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (N_POS,), generator=g).tolist()


def write_common(name, d, model, prompt, n_vocab, logits=None):
    """prompt_ids, ref_logits (first n_vocab columns) and the greedy files for one fixture."""
    if logits is None:
        logits = full_logits(model, prompt)
    logits = logits[:, :n_vocab].contiguous()
    smin, smean = check_logits(name, logits)
    write_ids(os.path.join(d, "prompt_ids.txt"), prompt)
    write_f32(os.path.join(d, "ref_logits.bin"), logits)
    gp = prompt[:N_GREEDY_PROMPT]
    loop_ids, gap = greedy_by_full_forward(model, gp, n_vocab)
    if n_vocab == model.config.vocab_size:
        gen_ids = greedy_generate(model, gp)
        assert gen_ids == loop_ids, f"{name}: cached generate disagrees with full-forward greedy"
    else:
        gen_ids = loop_ids  # generate() could pick a padded id >= n_vocab; the loop cannot
    distinct = check_greedy(name, gen_ids, gap)
    write_ids(os.path.join(d, "greedy_prompt.txt"), gp)
    write_ids(os.path.join(d, "greedy_ids.txt"), gen_ids)
    print(f"  {name}: logits {tuple(logits.shape)} row std min {smin:.2f} mean {smean:.2f}; "
          f"greedy {distinct} distinct ids, min gap {gap:.3f}")
    return logits


def write_rounded(name, d, model, prompt):
    which = set(large_matrix_names(model))
    for tag, dt in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        m = rounded_copy(model, dt, which)
        lg = full_logits(m, prompt)
        check_logits(f"{name}/{tag}", lg)
        write_f32(os.path.join(d, f"ref_logits_{tag}.bin"), lg)


@torch.no_grad()
def verify_hf_reload(name, hf_dir, prompt, expect, upcast=False):
    m = MambaForCausalLM.from_pretrained(hf_dir).eval()
    if upcast:
        m = m.to(torch.float32)
    got = full_logits(m, prompt)[:, :expect.shape[1]]
    assert torch.equal(got, expect), f"{name}: reloaded checkpoint gives different logits"


# --------------------------------------------------------------------------------------------
# Fixtures


def make_tiny():
    name = "tiny"
    d = fresh_dir(name)
    model = build(1, **TINY_CFG)
    assert model.lm_head.weight is model.backbone.embeddings.weight
    model.save_pretrained(os.path.join(d, "hf"), safe_serialization=True)
    prompt = prompt_for(101, model.config.vocab_size)
    logits = write_common(name, d, model, prompt, model.config.vocab_size)
    write_rounded(name, d, model, prompt)
    verify_hf_reload(name, os.path.join(d, "hf"), prompt, logits)
    return model


def make_awkward():
    name = "awkward"
    d = fresh_dir(name)
    model = build(2, **AWKWARD_CFG)
    c = model.config
    assert (c.intermediate_size, c.time_step_rank, c.state_size, c.conv_kernel) == (88, 5, 12, 3)
    assert model.lm_head.weight is not model.backbone.embeddings.weight
    hf = os.path.join(d, "hf")
    model.save_pretrained(hf, safe_serialization=True, max_shard_size="200KB")
    shards = [f for f in os.listdir(hf) if f.endswith(".safetensors")]
    assert os.path.exists(os.path.join(hf, "model.safetensors.index.json")) and len(shards) >= 2, \
        f"awkward: expected a sharded checkpoint, got {sorted(os.listdir(hf))}"
    prompt = prompt_for(202, c.vocab_size)
    logits = write_common(name, d, model, prompt, c.vocab_size)
    write_rounded(name, d, model, prompt)
    verify_hf_reload(name, hf, prompt, logits)


STATESPACES_CONFIG = {"d_model": 64, "n_layer": 2, "vocab_size": 509, "ssm_cfg": {},
                      "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
                      "pad_vocab_size_multiple": 8, "tie_embeddings": True}


def make_statespaces(tiny):
    """The tiny model in the original state-spaces (mamba_ssm MambaLMHeadModel) layout.

    mamba_ssm names the embedding backbone.embedding.weight (HF: embeddings) and otherwise uses
    the same names and shapes as transformers. Its save_pretrained writes torch.save(
    model.state_dict()), and a state_dict lists a tied parameter under both of its names, so the
    published checkpoints hold lm_head.weight as a copy of the embedding (and mamba_ssm's strict
    load_state_dict expects it). We do the same, in a safetensors file, as a separate copy
    (safetensors refuses tensors that share memory).
    """
    name = "statespaces"
    d = fresh_dir(name)
    n_vocab = STATESPACES_CONFIG["vocab_size"]
    pad = STATESPACES_CONFIG["pad_vocab_size_multiple"]
    assert tiny.config.vocab_size == -(-n_vocab // pad) * pad == 512
    tensors = {}
    for k, v in tiny.state_dict().items():
        if k == "lm_head.weight":
            continue
        k2 = k.replace("backbone.embeddings.", "backbone.embedding.")
        tensors[k2] = v.detach().clone().contiguous()
    tensors["lm_head.weight"] = tensors["backbone.embedding.weight"].clone()
    save_file(tensors, os.path.join(d, "hf", "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "hf", "config.json"), "w") as f:
        json.dump(STATESPACES_CONFIG, f, indent=2)
        f.write("\n")
    # Its own prompt, all ids < 509 (ids the real vocabulary can hold); reference = tiny's logits,
    # first 509 columns. Greedy: full-forward argmax loop over those 509 columns, because
    # transformers' generate() on the 512-row tiny model could pick one of the 3 padding rows.
    prompt = prompt_for(303, n_vocab)
    write_common(name, d, tiny, prompt, n_vocab)
    # Check the re-named weights load back into the HF model and give the same logits.
    m = MambaForCausalLM(tiny.config).eval()
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in tensors.items()}
    m.load_state_dict(sd)
    assert torch.equal(full_logits(m, prompt), full_logits(tiny, prompt))


def make_lowp_source(tiny, name, dtype):
    """The tiny model with every tensor stored in dtype; references from its f32 upcast."""
    d = fresh_dir(name)
    low = rounded_copy(tiny, dtype, None).to(dtype)
    low.save_pretrained(os.path.join(d, "hf"), safe_serialization=True)
    up = rounded_copy(tiny, dtype, None)     # the same values, as f32 parameters
    prompt = prompt_for(101, tiny.config.vocab_size)   # tiny's prompt
    logits = write_common(name, d, up, prompt, tiny.config.vocab_size)
    verify_hf_reload(name, os.path.join(d, "hf"), prompt, logits, upcast=True)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(ROOT, exist_ok=True)
    print(f"torch {torch.__version__}, writing fixtures under {ROOT}")
    tiny = make_tiny()
    make_awkward()
    make_statespaces(tiny)
    make_lowp_source(tiny, "bf16src", torch.bfloat16)
    make_lowp_source(tiny, "f16src", torch.float16)
    total = 0
    for dirpath, _, files in sorted(os.walk(ROOT)):
        for f in sorted(files):
            total += os.path.getsize(os.path.join(dirpath, f))
    print(f"done, {total} bytes under {ROOT}")


if __name__ == "__main__":
    import transformers
    print(f"transformers {transformers.__version__}", file=sys.stderr)
    main()
