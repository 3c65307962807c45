#!/usr/bin/env python3
"""Write the Mamba-2 and Falcon-Mamba reference fixtures under tests/fixtures/.

How to run (CPU only, well under a minute), after tools/make_fixtures.py (statespaces_bin copies
that script's `statespaces` fixture):

    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip install torch transformers safetensors numpy
    /tmp/venv/bin/python tools/make_fixtures.py
    /tmp/venv/bin/python tools/make_ssm_fixtures.py

No network access and no downloaded weights: every model is a small random one whose parameters
are redrawn from fixed seeds, in float32, so that they behave a little like a trained model.
Last run with torch 2.15.0 (CPU), transformers 5.24.0, safetensors 0.8.0, numpy 2.4.6. Running it
twice gives byte-identical files on the same machine and library versions. It deletes and rewrites
tests/fixtures/<name>/ for each fixture below (and tests/fixtures/refuse/) and nothing else.

Fixture folders use the format of tools/make_fixtures.py (see tests/fixtures/README.md):
hf/, prompt_ids.txt, ref_logits.bin, greedy_prompt.txt, greedy_ids.txt and, for some,
ref_logits_bf16.bin / ref_logits_f16.bin.

  mamba2_tiny         Mamba2ForCausalLM, one model.safetensors, tied head, + bf16/f16 refs
  mamba2_awkward      Mamba2ForCausalLM, 3 shards, 3 groups, untied, time_step_limit (0, 0.05)
  mamba2_odd          Mamba2ForCausalLM, 5 heads, default time_step_limit (0, inf)
  mamba2_statespaces  a Mamba-2 in the state-spaces mamba_ssm layout, torch.save'd pytorch_model.bin
  statespaces_bin     the Mamba-1 `statespaces` fixture's weights as a torch.save'd pytorch_model.bin
  falcon_tiny         FalconMambaForCausalLM, untied, + bf16/f16 refs
  falcon_awkward      FalconMambaForCausalLM, d_inner 88 from hidden 40, 2 shards
  refuse/mamba2_attn, refuse/mamba2_mlp   hybrid state-spaces configs (config.json only)

Float64. The checkpoints hold the float32 values that were drawn; the references are computed by
transformers from those values in float64 and then stored as float32. transformers' Mamba-2 and
Falcon-Mamba code casts to float32 in many places, not only in MambaRMSNormGated and
FalconMambaWeightlessRMSNorm: Mamba2RMSNorm and FalconMambaRMSNorm (.to(torch.float32)), the
blocks' residual_in_fp32 (.to(torch.float32)), A = -exp(A_log.float()), mamba2_chunk_scan,
mamba2_selective_state_update and mamba_selective_scan (.float()), and the logits (.float()).
float64_math() below monkeypatches those: inside it `torch.float32` means float64 for the two
modeling modules and Tensor.float() leaves a float64 tensor float64. Every reference is then
checked against an independent numpy float64 token-by-token recurrence (numpy_* below, written
from the published math, reading the checkpoint files), which must agree to 1e-8 relative; a
single float32 rounding anywhere would show up far above that.
"""

import contextlib
import copy
import json
import math
import os
import shutil
import sys
import types
from collections import OrderedDict

import numpy as np
import torch
from safetensors.numpy import load_file as load_safetensors_np
from safetensors.torch import load_file as load_safetensors_torch
from transformers import (FalconMambaConfig, FalconMambaForCausalLM, Mamba2Config,
                          Mamba2ForCausalLM)
from transformers.models.falcon_mamba import modeling_falcon_mamba
from transformers.models.mamba2 import modeling_mamba2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (shared constants, file writers, Mamba-1 redraw rules)

ROOT = mf.ROOT
N_POS, N_GREEDY_PROMPT, N_NEW = mf.N_POS, mf.N_GREEDY_PROMPT, mf.N_NEW
REL_TOL = 1e-8          # numpy recurrence vs transformers, max |diff| / max |logit|
MIN_DISTINCT = 20       # distinct ids a greedy continuation must have
MIN_TOP1_MEDIAN = 0.1   # median top-1 probability over the prompt positions


# --------------------------------------------------------------------------------------------
# float64 throughout


class _TorchWithF64AsF32(types.ModuleType):
    """Stands in for `torch` in a modeling module: everything is torch's, but float32 is float64."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def float64_math():
    """Keep a float64 Mamba-2 / Falcon-Mamba model in float64 everywhere (see the module doc)."""
    shim = _TorchWithF64AsF32("torch")
    mods = (modeling_mamba2, modeling_falcon_mamba)
    saved_float = torch.Tensor.float

    def float_keeping_f64(self, *args, **kwargs):
        if self.dtype == torch.float64:
            return self
        return saved_float(self, *args, **kwargs)

    for m in mods:
        assert m.torch is torch
        m.torch = shim
    torch.Tensor.float = float_keeping_f64
    try:
        yield
    finally:
        torch.Tensor.float = saved_float
        for m in mods:
            m.torch = torch


# --------------------------------------------------------------------------------------------
# Models


def _gen(seed):
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo

    return normal, uniform


def inv_softplus_of_log_uniform_dt(uniform, shape):
    dt = torch.exp(uniform(shape, math.log(1e-3), math.log(1e-1)))
    return dt + torch.log(-torch.expm1(-dt))        # softplus(result) == dt


def redraw_mamba2(model, seed):
    """Replace every parameter of a Mamba2ForCausalLM with seeded float32 draws that look 'trained'.

    As make_fixtures.redraw_parameters for Mamba-1: linear layers N(0, 1/fan_in), out_proj
    OUT_GAIN times that (so the mixers dominate the residual stream); the head gives logits of
    std about LOGIT_STD (a tied head is the embedding); norms (block, gated mixer norm, norm_f)
    1 + noise; conv weight U(+-1/sqrt(k)), conv bias N(0, 0.1); dt_bias = inverse softplus of dt
    log-uniform in [1e-3, 1e-1]; A = -exp(A_log) log-uniform in [-16, -1] per head; D = 1 + noise.
    """
    normal, uniform = _gen(seed)
    d = model.config.hidden_size
    tied = model.lm_head.weight is model.backbone.embeddings.weight
    head_std = mf.LOGIT_STD / math.sqrt(d)
    done = set()
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            if name == "backbone.embeddings.weight":
                v = normal(shape, head_std if tied else 1.0)
            elif name == "lm_head.weight":
                v = normal(shape, head_std)
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                v = normal(shape, 0.1, 1.0)
            elif name.endswith("mixer.in_proj.weight"):
                v = normal(shape, 1.0 / math.sqrt(shape[1]))
            elif name.endswith("mixer.out_proj.weight"):
                v = normal(shape, mf.OUT_GAIN / math.sqrt(shape[1]))
            elif name.endswith("mixer.conv1d.weight"):
                b = 1.0 / math.sqrt(shape[-1])
                v = uniform(shape, -b, b)
            elif name.endswith("mixer.conv1d.bias"):
                v = normal(shape, 0.1)
            elif name.endswith("mixer.dt_bias"):
                v = inv_softplus_of_log_uniform_dt(uniform, shape)
            elif name.endswith("mixer.A_log"):
                v = uniform(shape, 0.0, math.log(16.0))
            elif name.endswith("mixer.D"):
                v = normal(shape, 0.2, 1.0)
            else:
                raise SystemExit(f"make_ssm_fixtures: no rule to draw parameter {name}")
            p.copy_(v)
            done.add(name)
    if not tied:
        assert "lm_head.weight" in done
        assert not torch.equal(model.lm_head.weight, model.backbone.embeddings.weight)
    return model


def build_mamba2(seed, **cfg):
    torch.manual_seed(seed)
    model = Mamba2ForCausalLM(Mamba2Config(**cfg)).eval()
    tied = model.lm_head.weight is model.backbone.embeddings.weight
    assert tied == cfg["tie_word_embeddings"]
    return redraw_mamba2(model, seed)


def build_falcon(seed, **cfg):
    """FalconMamba has Mamba-1's parameters (its extra norms are weightless), so the Mamba-1 rules
    of make_fixtures.redraw_parameters apply as they are."""
    torch.manual_seed(seed)
    model = FalconMambaForCausalLM(FalconMambaConfig(**cfg)).eval()
    assert (model.lm_head.weight is model.backbone.embeddings.weight) == cfg["tie_word_embeddings"]
    return mf.redraw_parameters(model, seed)


MAMBA2_TINY_CFG = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, state_size=16,
                       expand=2, head_dim=16, num_heads=8, n_groups=1, conv_kernel=4,
                       chunk_size=16, tie_word_embeddings=True, layer_norm_epsilon=1e-5,
                       use_bias=False, use_conv_bias=True)
MAMBA2_AWKWARD_CFG = dict(vocab_size=1003, hidden_size=48, num_hidden_layers=3, state_size=12,
                          expand=2, head_dim=8, num_heads=12, n_groups=3, conv_kernel=3,
                          chunk_size=8, tie_word_embeddings=False, layer_norm_epsilon=1e-6,
                          time_step_limit=(0.0, 0.05), use_bias=False, use_conv_bias=True)
# chunk_size 24 does not divide the 64-token prompt: transformers pads the last chunk.
MAMBA2_ODD_CFG = dict(vocab_size=300, hidden_size=40, num_hidden_layers=2, state_size=8,
                      expand=2, head_dim=16, num_heads=5, n_groups=1, conv_kernel=4,
                      chunk_size=24, tie_word_embeddings=True, layer_norm_epsilon=1e-5,
                      use_bias=False, use_conv_bias=True)
# The HF twin of MAMBA2_STATESPACES_CONFIG: mamba_ssm's defaults expand 2, d_conv 4, eps 1e-5
# (block norms and the gated norm), no in/out_proj bias, conv bias, dt_limit (0, inf).
MAMBA2_SS_CFG = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, state_size=16,
                     expand=2, head_dim=16, num_heads=8, n_groups=2, conv_kernel=4,
                     chunk_size=16, tie_word_embeddings=True, layer_norm_epsilon=1e-5,
                     use_bias=False, use_conv_bias=True)
MAMBA2_STATESPACES_CONFIG = {
    "d_model": 64, "d_intermediate": 0, "n_layer": 2, "vocab_size": 509,
    "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 16},
    "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
    "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}
FALCON_TINY_CFG = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, state_size=16,
                       expand=2, conv_kernel=4, time_step_rank=4, tie_word_embeddings=False,
                       mixer_rms_eps=1e-6, layer_norm_epsilon=1e-5, use_bias=False,
                       use_conv_bias=True)
# FalconMambaConfig sets intermediate_size = expand * hidden_size first; an explicit
# intermediate_size kwarg then wins (config.json says expand 2, intermediate_size 88).
FALCON_AWKWARD_CFG = dict(vocab_size=1003, hidden_size=40, intermediate_size=88,
                          num_hidden_layers=3, state_size=12, conv_kernel=3, time_step_rank=5,
                          tie_word_embeddings=False, mixer_rms_eps=1e-6,
                          layer_norm_epsilon=1e-5, use_bias=False, use_conv_bias=True)


def mamba2_large_names(model):
    names = ["backbone.embeddings.weight"]
    for i in range(model.config.num_hidden_layers):
        names += [f"backbone.layers.{i}.mixer.in_proj.weight",
                  f"backbone.layers.{i}.mixer.out_proj.weight"]
    if model.lm_head.weight is not model.backbone.embeddings.weight:
        names.append("lm_head.weight")
    return names


def rounded_copy(model, dtype, which):
    """A float32 copy of model (ties kept) whose parameters named in `which` went through dtype."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name in which:
                p.copy_(p.to(dtype).to(torch.float32))
    return m


def f64(model):
    m = copy.deepcopy(model).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    return m


# --------------------------------------------------------------------------------------------
# transformers references (float64)


@torch.no_grad()
def hf_logits(model64, ids):
    with float64_math():
        out = model64(torch.tensor([ids], dtype=torch.long), use_cache=False).logits[0]
    assert out.dtype == torch.float64
    return out


@torch.no_grad()
def hf_generate(model64, prompt):
    """transformers' cached greedy generation (EOS disabled), in float64."""
    with float64_math():
        return mf.greedy_generate(model64, prompt)


def hf_greedy_full_forward(model64, prompt, n_vocab):
    """Greedy by re-running the whole sequence each step (transformers' chunked path), argmax over
    the first n_vocab logits. Returns (new ids, smallest top-1 minus top-2 gap)."""
    ids = list(prompt)
    gap = float("inf")
    for _ in range(N_NEW):
        row = hf_logits(model64, ids)[-1, :n_vocab]
        top = torch.topk(row, 2).values
        gap = min(gap, float(top[0] - top[1]))
        ids.append(int(torch.argmax(row)))
    return ids[len(prompt):], gap


# --------------------------------------------------------------------------------------------
# Independent numpy float64 recurrences, from the checkpoint files


def read_checkpoint_np(hf_dir):
    """All tensors of a checkpoint folder as float64 numpy arrays, by name."""
    files = sorted(os.listdir(hf_dir))
    out = {}
    if "pytorch_model.bin" in files:
        sd = torch.load(os.path.join(hf_dir, "pytorch_model.bin"), map_location="cpu",
                        weights_only=True)
        for k, v in sd.items():
            out[k] = v.to(torch.float64).numpy()
        return out
    for f in files:
        if f.endswith(".safetensors"):
            for k, v in load_safetensors_np(os.path.join(hf_dir, f)).items():
                assert k not in out
                out[k] = v.astype(np.float64)
    return out


def round_np(a, tag):
    """a (float64 holding float32 values) rounded to bf16 / f16 and back, in numpy."""
    if tag == "f16":
        return a.astype(np.float32).astype(np.float16).astype(np.float64)
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000      # round to nearest even
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def rms(v, eps):
    return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps)


def silu(v):
    return v / (1.0 + np.exp(-v))


def softplus(v):
    return np.logaddexp(0.0, v)


def json_float(v):
    """A config.json number. transformers 5 writes inf / nan as {"__float__": "Infinity"} (strict
    JSON); older writers and Python's json module wrote a bare Infinity, which json.load reads."""
    if isinstance(v, dict):
        assert set(v) == {"__float__"}, v
        return {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}[v["__float__"]]
    return float(v)


def mamba2_cfg_np(cfg_json):
    """The shape facts of a Mamba-2 config.json, HF or state-spaces style."""
    c = cfg_json
    if "ssm_cfg" in c:
        s = c["ssm_cfg"]
        d = c["d_model"]
        d_inner = s.get("expand", 2) * d
        pad = c.get("pad_vocab_size_multiple", 1)
        return dict(d=d, L=c["n_layer"], N=s["d_state"], P=s["headdim"], H=d_inner // s["headdim"],
                    G=s["ngroups"], K=s.get("d_conv", 4), eps=1e-5, d_inner=d_inner,
                    dt_limit=tuple(s.get("dt_limit", (0.0, math.inf))),
                    rows=-(-c["vocab_size"] // pad) * pad, tied=c["tie_embeddings"], emb="embedding")
    d_inner = c["expand"] * c["hidden_size"]
    assert d_inner == c["num_heads"] * c["head_dim"]
    return dict(d=c["hidden_size"], L=c["num_hidden_layers"], N=c["state_size"], P=c["head_dim"],
                H=c["num_heads"], G=c["n_groups"], K=c["conv_kernel"],
                eps=c["layer_norm_epsilon"], d_inner=d_inner,
                dt_limit=tuple(json_float(v) for v in c.get("time_step_limit", (0.0, math.inf))),
                rows=c["vocab_size"], tied=c["tie_word_embeddings"], emb="embeddings")


class NumpyMamba2:
    """Mamba-2, one token at a time, with a conv window and an SSM state [H, P, N] per layer."""

    def __init__(self, W, c):
        self.W, self.c = W, c
        self.conv_dim = c["d_inner"] + 2 * c["G"] * c["N"]
        self.emb = W[f"backbone.{c['emb']}.weight"]
        self.head = self.emb if c["tied"] else W["lm_head.weight"]
        assert self.emb.shape == (c["rows"], c["d"]) and self.head.shape == self.emb.shape
        self.conv = [np.zeros((self.conv_dim, c["K"] - 1)) for _ in range(c["L"])]
        self.S = [np.zeros((c["H"], c["P"], c["N"])) for _ in range(c["L"])]
        self.clamped = 0
        self.deltas = 0

    def step(self, tok):
        c, W = self.c, self.W
        di, G, N, H, P = c["d_inner"], c["G"], c["N"], c["H"], c["P"]
        lo, hi = c["dt_limit"]
        h = self.emb[tok].copy()
        for l in range(c["L"]):
            p = f"backbone.layers.{l}."
            u = rms(h, c["eps"]) * W[p + "norm.weight"]
            proj = W[p + "mixer.in_proj.weight"] @ u
            z, xbc, dt = proj[:di], proj[di:di + self.conv_dim], proj[di + self.conv_dim:]
            assert dt.shape == (H,)
            win = np.concatenate([self.conv[l], xbc[:, None]], axis=1)       # [conv_dim, K]
            self.conv[l] = win[:, 1:]
            xbc = silu((win * W[p + "mixer.conv1d.weight"][:, 0, :]).sum(axis=1)
                       + W[p + "mixer.conv1d.bias"])
            x = xbc[:di].reshape(H, P)
            Bh = np.repeat(xbc[di:di + G * N].reshape(G, N), H // G, axis=0)    # head h: group h/(H/G)
            Ch = np.repeat(xbc[di + G * N:].reshape(G, N), H // G, axis=0)
            delta = softplus(dt + W[p + "mixer.dt_bias"])
            self.clamped += int(np.sum((delta > hi) | (delta < lo)))
            self.deltas += delta.size
            delta = np.clip(delta, lo, hi)
            A = -np.exp(W[p + "mixer.A_log"])
            S = self.S[l]
            S = np.exp(delta * A)[:, None, None] * S + (delta[:, None] * x)[:, :, None] * Bh[:, None, :]
            self.S[l] = S
            y = np.einsum("hpn,hn->hp", S, Ch) + W[p + "mixer.D"][:, None] * x
            y = y.reshape(di) * silu(z)
            y = rms(y.reshape(G, di // G), c["eps"]).reshape(di) * W[p + "mixer.norm.weight"]
            h = h + W[p + "mixer.out_proj.weight"] @ y
        return self.head @ (rms(h, c["eps"]) * W["backbone.norm_f.weight"])


def falcon_cfg_np(c):
    return dict(d=c["hidden_size"], L=c["num_hidden_layers"], N=c["state_size"],
                d_inner=c["intermediate_size"], R=c["time_step_rank"], K=c["conv_kernel"],
                eps=c["layer_norm_epsilon"], mixer_eps=c["mixer_rms_eps"],
                rows=c["vocab_size"], tied=c["tie_word_embeddings"])


class NumpyFalconMamba:
    """Falcon-Mamba: Mamba-1 with a weightless RMS norm of dt (low rank), B and C after x_proj."""

    def __init__(self, W, c):
        self.W, self.c = W, c
        self.emb = W["backbone.embeddings.weight"]
        self.head = self.emb if c["tied"] else W["lm_head.weight"]
        assert self.emb.shape == (c["rows"], c["d"]) and self.head.shape == self.emb.shape
        self.conv = [np.zeros((c["d_inner"], c["K"] - 1)) for _ in range(c["L"])]
        self.S = [np.zeros((c["d_inner"], c["N"])) for _ in range(c["L"])]

    def step(self, tok):
        c, W = self.c, self.W
        di, N, R = c["d_inner"], c["N"], c["R"]
        h = self.emb[tok].copy()
        for l in range(c["L"]):
            p = f"backbone.layers.{l}."
            u = rms(h, c["eps"]) * W[p + "norm.weight"]
            xz = W[p + "mixer.in_proj.weight"] @ u
            x, z = xz[:di], xz[di:]
            win = np.concatenate([self.conv[l], x[:, None]], axis=1)
            self.conv[l] = win[:, 1:]
            x = silu((win * W[p + "mixer.conv1d.weight"][:, 0, :]).sum(axis=1)
                     + W[p + "mixer.conv1d.bias"])
            dbc = W[p + "mixer.x_proj.weight"] @ x
            dtl, B, C = (rms(dbc[:R], c["mixer_eps"]), rms(dbc[R:R + N], c["mixer_eps"]),
                         rms(dbc[R + N:], c["mixer_eps"]))
            delta = softplus(W[p + "mixer.dt_proj.weight"] @ dtl + W[p + "mixer.dt_proj.bias"])
            A = -np.exp(W[p + "mixer.A_log"])
            S = np.exp(delta[:, None] * A) * self.S[l] + (delta * x)[:, None] * B[None, :]
            self.S[l] = S
            y = (S @ C + W[p + "mixer.D"] * x) * silu(z)
            h = h + W[p + "mixer.out_proj.weight"] @ y
        return self.head @ (rms(h, c["eps"]) * W["backbone.norm_f.weight"])


def numpy_run(make, ids, n_vocab, n_new=0):
    """Logits of every position of ids, then n_new greedy ids (argmax over the first n_vocab)."""
    m = make()
    rows = [m.step(t) for t in ids]
    new = []
    for _ in range(n_new):
        new.append(int(np.argmax(rows[-1][:n_vocab])))
        rows.append(m.step(new[-1]))
    return np.stack(rows[:len(ids)]), new, m


def rel_diff(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------------------------
# One fixture


def top1_median(logits, n_vocab):
    p = torch.softmax(logits[:, :n_vocab], dim=-1)
    return float(p.max(dim=-1).values.median())


def write_fixture(name, d, model, prompt, n_vocab, make_np, rounded=None):
    """prompt_ids, ref_logits, greedy files (and the rounded refs) for one fixture, each reference
    checked against the numpy recurrence. model: the float32 model (saved as is); make_np(tag):
    a fresh numpy model with tag None / 'bf16' / 'f16' weights."""
    m64 = f64(model)
    logits = hf_logits(m64, prompt)[:, :n_vocab]
    mf.check_logits(name, logits)
    np_logits, _, npm = numpy_run(lambda: make_np(None), prompt, n_vocab)
    rel = rel_diff(np_logits[:, :n_vocab], logits.numpy())
    assert rel <= REL_TOL, f"{name}: numpy recurrence differs from transformers by {rel:.2e}"
    top1 = top1_median(logits, n_vocab)
    assert top1 >= MIN_TOP1_MEDIAN, f"{name}: logits not peaked, top-1 median {top1:.3f}"
    mf.write_ids(os.path.join(d, "prompt_ids.txt"), prompt)
    mf.write_f32(os.path.join(d, "ref_logits.bin"), logits.to(torch.float32).contiguous())

    gp = prompt[:N_GREEDY_PROMPT]
    loop_ids, gap = hf_greedy_full_forward(m64, gp, n_vocab)
    _, np_ids, _ = numpy_run(lambda: make_np(None), gp, n_vocab, N_NEW)
    assert np_ids == loop_ids, f"{name}: numpy greedy differs from transformers' full-forward greedy"
    # transformers' cached generate() must agree, except where Mamba-2's time_step_limit has a
    # finite upper end: its one-token step (mamba2_selective_state_update) does not clamp dt,
    # while the chunked path (and the math these fixtures encode) does.
    cached = "n/a (padded vocab)"
    if n_vocab == model.config.vocab_size:
        gen_ids = hf_generate(m64, gp)
        cached = "same"
        if gen_ids != loop_ids:
            assert math.isfinite(getattr(model.config, "time_step_limit", (0, math.inf))[1]), \
                f"{name}: cached generate disagrees with full-forward greedy"
            step = next(i for i, (a, b) in enumerate(zip(gen_ids, loop_ids)) if a != b)
            cached = f"differs from new id {step} on (unclamped one-token steps)"
    distinct = len(set(loop_ids))
    assert distinct >= MIN_DISTINCT, f"{name}: greedy has only {distinct} distinct ids"
    assert gap >= 1e-3, f"{name}: greedy top-1/top-2 gap {gap:.2e} is too small"
    mf.write_ids(os.path.join(d, "greedy_prompt.txt"), gp)
    mf.write_ids(os.path.join(d, "greedy_ids.txt"), loop_ids)

    rels = {"f32": rel}
    for tag, dt in (("bf16", torch.bfloat16), ("f16", torch.float16)) if rounded else ():
        lg = hf_logits(f64(rounded_copy(model, dt, set(rounded))), prompt)[:, :n_vocab]
        mf.check_logits(f"{name}/{tag}", lg)
        np_lg, _, _ = numpy_run(lambda: make_np(tag), prompt, n_vocab)
        rels[tag] = rel_diff(np_lg[:, :n_vocab], lg.numpy())
        assert rels[tag] <= REL_TOL, f"{name}/{tag}: numpy differs by {rels[tag]:.2e}"
        assert not torch.equal(lg, logits)
        mf.write_f32(os.path.join(d, f"ref_logits_{tag}.bin"), lg.to(torch.float32).contiguous())
    clamp = f", dt clamped {npm.clamped}/{npm.deltas}" if isinstance(npm, NumpyMamba2) else ""
    line = (f"  {name}: logits {tuple(logits.shape)}, numpy rel diff "
            + " ".join(f"{k} {v:.1e}" for k, v in rels.items())
            + f"; top-1 p median {top1:.3f}; greedy {distinct} distinct, gap {gap:.3f}, "
            f"cached generate {cached}{clamp}")
    print(line)
    return logits, npm


def np_maker(hf_dir, cls, cfg_fn, rounded_np_names=()):
    W = read_checkpoint_np(hf_dir)
    with open(os.path.join(hf_dir, "config.json")) as f:
        c = cfg_fn(json.load(f))

    def make(tag):
        if tag is None:
            return cls(W, c)
        return cls({k: (round_np(v, tag) if k in rounded_np_names else v) for k, v in W.items()}, c)
    return make


@torch.no_grad()
def verify_reload(name, cls, hf_dir, prompt, expect):
    m = cls.from_pretrained(hf_dir).eval()
    assert all(p.dtype == torch.float32 for p in m.parameters())
    got = hf_logits(m.to(torch.float64), prompt)[:, :expect.shape[1]]
    assert torch.equal(got, expect), f"{name}: reloaded checkpoint gives different logits"


def save_sharded(model, hf, max_shard_size, n_shards):
    model.save_pretrained(hf, safe_serialization=True, max_shard_size=max_shard_size)
    shards = [f for f in os.listdir(hf) if f.endswith(".safetensors")]
    assert os.path.exists(os.path.join(hf, "model.safetensors.index.json")) and \
        len(shards) == n_shards, f"expected {n_shards} shards, got {sorted(os.listdir(hf))}"


# --------------------------------------------------------------------------------------------
# Fixtures


def make_mamba2_hf(name, seed, cfg, prompt_seed, shards=None, rounded=False):
    d = mf.fresh_dir(name)
    model = build_mamba2(seed, **cfg)
    hf = os.path.join(d, "hf")
    if shards:
        save_sharded(model, hf, *shards)
    else:
        model.save_pretrained(hf, safe_serialization=True)
    big = mamba2_large_names(model)
    make_np = np_maker(hf, NumpyMamba2, mamba2_cfg_np, set(big) if rounded else ())
    prompt = mf.prompt_for(prompt_seed, model.config.vocab_size)
    logits, _ = write_fixture(name, d, model, prompt, model.config.vocab_size, make_np,
                              big if rounded else None)
    verify_reload(name, Mamba2ForCausalLM, hf, prompt, logits)
    return model


class _Params(torch.nn.Module):
    """A module that only holds parameters, to give torch.save a real state_dict()."""


def module_tree(tensors, tie=None):
    """An nn.Module tree whose state_dict() has exactly these names (in this order), as the
    original mamba_ssm model's would. tie = (name, same_as): name reuses same_as's Parameter."""
    root = _Params()
    for name, t in list(tensors.items()) + ([(tie[0], None)] if tie else []):
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if part not in m._modules:
                m.add_module(part, _Params())
            m = m._modules[part]
        if t is None:
            p = root.get_parameter(tie[1])
        else:
            p = torch.nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)
        m.register_parameter(leaf, p)
    return root


def torch_save_state_dict(root, path):
    torch.save(root.state_dict(), path)
    back = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(back, OrderedDict)
    return back


def make_mamba2_statespaces():
    """A Mamba-2 in the state-spaces layout: built as the HF twin (MAMBA2_SS_CFG, 512 rows =
    509 padded to 8), renamed (embeddings -> embedding) and torch.save'd with lm_head.weight
    sharing the embedding's storage, as a tied mamba_ssm model's state_dict does."""
    name = "mamba2_statespaces"
    d = mf.fresh_dir(name)
    hf = os.path.join(d, "hf")
    c = MAMBA2_STATESPACES_CONFIG
    n_vocab, pad = c["vocab_size"], c["pad_vocab_size_multiple"]
    model = build_mamba2(4, **MAMBA2_SS_CFG)
    assert model.config.vocab_size == -(-n_vocab // pad) * pad == 512
    tensors = OrderedDict()
    for k, v in model.state_dict().items():
        if k != "lm_head.weight":
            tensors[k.replace("backbone.embeddings.", "backbone.embedding.")] = v
    root = module_tree(tensors, tie=("lm_head.weight", "backbone.embedding.weight"))
    back = torch_save_state_dict(root, os.path.join(hf, "pytorch_model.bin"))
    expect = ["backbone.embedding.weight"]
    for i in range(c["n_layer"]):
        expect += [f"backbone.layers.{i}.{s}" for s in (
            "norm.weight", "mixer.dt_bias", "mixer.A_log", "mixer.D", "mixer.conv1d.weight",
            "mixer.conv1d.bias", "mixer.in_proj.weight", "mixer.norm.weight",
            "mixer.out_proj.weight")]
    expect += ["backbone.norm_f.weight", "lm_head.weight"]
    assert sorted(back) == sorted(expect), sorted(set(back) ^ set(expect))
    assert back["lm_head.weight"].untyped_storage().data_ptr() == \
        back["backbone.embedding.weight"].untyped_storage().data_ptr()
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
        f.write("\n")
    # The HF model loads the renamed weights back (its load hook renames embedding. again).
    m = Mamba2ForCausalLM(model.config).eval()
    m.load_state_dict({k.replace("backbone.embedding.", "backbone.embeddings."): v
                       for k, v in back.items()})
    for k, v in model.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    prompt = mf.prompt_for(404, n_vocab)
    make_np = np_maker(hf, NumpyMamba2, mamba2_cfg_np)
    write_fixture(name, d, model, prompt, n_vocab, make_np)


def make_statespaces_bin():
    """The Mamba-1 `statespaces` fixture (tools/make_fixtures.py) with its weights as a
    torch.save'd pytorch_model.bin (lm_head.weight sharing the embedding's storage); the
    references and config.json are copied byte for byte."""
    name = "statespaces_bin"
    src = os.path.join(ROOT, "statespaces")
    d = mf.fresh_dir(name)
    for f in ("prompt_ids.txt", "ref_logits.bin", "greedy_prompt.txt", "greedy_ids.txt"):
        shutil.copyfile(os.path.join(src, f), os.path.join(d, f))
    shutil.copyfile(os.path.join(src, "hf", "config.json"), os.path.join(d, "hf", "config.json"))
    st = read_checkpoint_np(os.path.join(src, "hf"))
    tensors = load_safetensors_torch(os.path.join(src, "hf", "model.safetensors"))
    assert torch.equal(tensors["lm_head.weight"], tensors["backbone.embedding.weight"])
    order = [k for k in tensors if k != "lm_head.weight"]
    order.sort(key=lambda k: (k != "backbone.embedding.weight", k.startswith("backbone.norm_f"),
                              _layer_key(k)))
    root = module_tree(OrderedDict((k, tensors[k]) for k in order),
                       tie=("lm_head.weight", "backbone.embedding.weight"))
    back = torch_save_state_dict(root, os.path.join(d, "hf", "pytorch_model.bin"))
    assert sorted(back) == sorted(tensors)
    for k, v in back.items():
        assert torch.equal(v, tensors[k]) and np.array_equal(v.numpy(), st[k].astype(np.float32))
    assert back["lm_head.weight"].untyped_storage().data_ptr() == \
        back["backbone.embedding.weight"].untyped_storage().data_ptr()
    # the same weights in two shards named by pytorch_model.bin.index.json (the embedding, its
    # tied head and layer 0 in the first), as transformers' save_pretrained writes them for .bin
    sharded = os.path.join(d, "sharded")
    os.makedirs(sharded)
    shutil.copyfile(os.path.join(src, "hf", "config.json"), os.path.join(sharded, "config.json"))
    first = [k for k in order if k == "backbone.embedding.weight" or k.startswith("backbone.layers.0.")]
    files = ("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin")
    parts = (OrderedDict((k, tensors[k]) for k in first), OrderedDict((k, tensors[k]) for k in order if k not in first))
    weight_map = {}
    for i, (part, fname) in enumerate(zip(parts, files)):
        tie = ("lm_head.weight", "backbone.embedding.weight") if i == 0 else None
        shard_back = torch_save_state_dict(module_tree(part, tie=tie), os.path.join(sharded, fname))
        weight_map.update({k: fname for k in shard_back})
    assert sorted(weight_map) == sorted(tensors)
    with open(os.path.join(sharded, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(v.numel() * 4 for v in back.values())},
                   "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.write("\n")
    line = f"  {name}: {len(back)} tensors (also in 2 shards), references copied from statespaces"
    print(line)


def _layer_key(k):
    parts = k.split(".")
    return (int(parts[2]), parts[3:]) if parts[1] == "layers" else (-1, parts)


def make_falcon(name, seed, cfg, prompt_seed, shards=None, rounded=False):
    d = mf.fresh_dir(name)
    model = build_falcon(seed, **cfg)
    c = model.config
    hf = os.path.join(d, "hf")
    if shards:
        save_sharded(model, hf, *shards)
    else:
        model.save_pretrained(hf, safe_serialization=True)
    big = mf.large_matrix_names(model)
    make_np = np_maker(hf, NumpyFalconMamba, falcon_cfg_np, set(big) if rounded else ())
    prompt = mf.prompt_for(prompt_seed, c.vocab_size)
    logits, _ = write_fixture(name, d, model, prompt, c.vocab_size, make_np,
                              big if rounded else None)
    verify_reload(name, FalconMambaForCausalLM, hf, prompt, logits)
    return model


def make_refusals():
    base = dict(MAMBA2_STATESPACES_CONFIG)
    attn = dict(base, attn_layer_idx=[1],
                attn_cfg={"causal": True, "d_conv": 0, "head_dim": 16, "num_heads": 4,
                          "out_proj_bias": False, "qkv_proj_bias": False, "rotary_emb_dim": 8})
    mlp = dict(base, d_intermediate=128)
    top = os.path.join(ROOT, "refuse")
    if os.path.isdir(top):
        shutil.rmtree(top)
    for sub, c in (("mamba2_attn", attn), ("mamba2_mlp", mlp)):
        os.makedirs(os.path.join(top, sub))
        with open(os.path.join(top, sub, "config.json"), "w") as f:
            json.dump(c, f, indent=2)
            f.write("\n")


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if not os.path.exists(os.path.join(ROOT, "statespaces", "hf", "model.safetensors")):
        raise SystemExit("make_ssm_fixtures: run tools/make_fixtures.py first (statespaces_bin "
                         "copies its statespaces fixture)")
    print(f"torch {torch.__version__}, writing fixtures under {ROOT}")
    made = ["mamba2_tiny", "mamba2_awkward", "mamba2_odd", "mamba2_statespaces",
            "statespaces_bin", "falcon_tiny", "falcon_awkward", "refuse"]
    make_mamba2_hf("mamba2_tiny", 1, MAMBA2_TINY_CFG, 111, rounded=True)
    make_mamba2_hf("mamba2_awkward", 2, MAMBA2_AWKWARD_CFG, 222, shards=("250KB", 3),
                   rounded=True)
    make_mamba2_hf("mamba2_odd", 3, MAMBA2_ODD_CFG, 333)
    make_mamba2_statespaces()
    make_statespaces_bin()
    make_falcon("falcon_tiny", 5, FALCON_TINY_CFG, 555, rounded=True)
    make_falcon("falcon_awkward", 6, FALCON_AWKWARD_CFG, 667, shards=("300KB", 2))
    make_refusals()
    total = 0
    for n in made:
        for dirpath, _, files in os.walk(os.path.join(ROOT, n)):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"done, {total} bytes in {len(made)} folders under {ROOT}")


if __name__ == "__main__":
    import transformers
    print(f"transformers {transformers.__version__}", file=sys.stderr)
    main()
