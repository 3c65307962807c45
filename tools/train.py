#!/usr/bin/env python3
"""Train the default Mamba-1 language model of this project.

The model is a module of our own whose parameter names and shapes are exactly those of
transformers' MambaForCausalLM, so the output directory (config.json + model.safetensors,
sharded with an index when large) loads with MambaForCausalLM.from_pretrained and goes
straight through `mamba convert`.

The selective scan runs without a Python loop over time steps: the recurrence
h_t = a_t * h_{t-1} + b_t is solved by a recursive pairwise (odd/even) parallel scan whose
depth is log2(L); it only multiplies decays a_t = exp(delta_t * A) in (0, 1], so it is
stable in float32 for any delta and A. A custom autograd function recomputes the large
(batch, length, d_inner, d_state) tensors in the backward pass (itself a reverse parallel
scan) instead of storing them, and the scan always runs in float32, also under bf16 autocast.

Data: tools/prepare_data.py writes .data/{train,valid}.bin (uint16 SentencePiece ids of each
whole file) and .data/meta.json. A training sample is [BOS] + (ctx-1) consecutive train ids
from a random start, the same shape as an evaluation window.

Evaluation (the C engine's `mamba perplexity` computes the same): the ids of the whole
valid.txt are cut into consecutive chunks of ctx-1 ids (the last may be shorter); each chunk
is scored from a fresh state with input [BOS] + chunk and the chunk as targets. We report the
mean NLL per target token (nats), perplexity exp(mean), and bits per byte =
total NLL / ln 2 / bytes of valid.txt.

Usage:
  python3 tools/train.py --selftest                   # CPU checks (needs transformers)
  python3 tools/prepare_data.py --train-tokenizer     # tokenizer + .data/{train,valid}.bin
  python3 tools/train.py --out OUT --steps 1073       # the default model (H100: ~7.5 min)
  python3 tools/train.py --out OUT --time-budget 520  # or: as many steps as fit in 520 s
  python3 tools/train.py --eval OUT                   # fp32 evaluation of a saved model only
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- model

@dataclass
class ModelArgs:
    vocab_size: int = 8192
    d_model: int = 384
    n_layer: int = 12
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int = 0          # 0: ceil(d_model / 16), as MambaConfig's "auto"
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.dt_rank == 0:
            self.dt_rank = math.ceil(self.d_model / 16)

    @property
    def d_inner(self):
        return self.expand * self.d_model


def pscan(a, b):
    """h_t = a_t * h_{t-1} + b_t along dim 1 with h_{-1} = 0; a, b: (B, L, ...).

    Odd/even recursion: pairs (2k, 2k+1) are combined into one step of a half-length
    recurrence over the odd positions, which is solved recursively; the even positions then
    follow in one vectorised step. O(L) work, depth log2(L), only products of the a's.
    """
    L = a.shape[1]
    if L == 1:
        return b
    if L % 2 == 1:
        h = pscan(a[:, :-1], b[:, :-1])
        return torch.cat([h, a[:, -1:] * h[:, -1:] + b[:, -1:]], dim=1)
    a_e, a_o = a[:, 0::2], a[:, 1::2]
    b_e, b_o = b[:, 0::2], b[:, 1::2]
    h_o = pscan(a_o * a_e, torch.addcmul(b_o, a_o, b_e))          # h at 1, 3, 5, ...
    h_e = torch.cat([b_e[:, :1], torch.addcmul(b_e[:, 1:], a_e[:, 1:], h_o[:, :-1])], dim=1)
    return torch.stack([h_e, h_o], dim=2).reshape(b.shape)


def rpscan(c, d):
    """Reverse recurrence g_t = d_t + c_t * g_{t+1} along dim 1 with g_L = 0."""
    L = c.shape[1]
    if L == 1:
        return d
    if L % 2 == 1:
        g = rpscan(c[:, 1:], d[:, 1:])
        return torch.cat([d[:, :1] + c[:, :1] * g[:, :1], g], dim=1)
    c_e, c_o = c[:, 0::2], c[:, 1::2]
    d_e, d_o = d[:, 0::2], d[:, 1::2]
    g_e = rpscan(c_e * c_o, torch.addcmul(d_e, c_e, d_o))          # g at 0, 2, 4, ...
    g_o = torch.cat([torch.addcmul(d_o[:, :-1], c_o[:, :-1], g_e[:, 1:]), d_o[:, -1:]], dim=1)
    return torch.stack([g_e, g_o], dim=2).reshape(d.shape)


class SelectiveScan(torch.autograd.Function):
    """y = SSM(u; delta, A, B, C) + D * u for one Mamba layer, all in float32.

    u, delta: (b, l, d); A: (d, n); Bm, Cm: (b, l, n); D: (d,). delta is already softplus'ed.
    """

    @staticmethod
    def _states(u, delta, A, Bm):
        dA = torch.exp(delta.unsqueeze(-1) * A)                       # (b, l, d, n)
        dBu = (delta * u).unsqueeze(-1) * Bm.unsqueeze(2)             # (b, l, d, n)
        return dA, dBu

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D):
        dA, dBu = SelectiveScan._states(u, delta, A, Bm)
        h = pscan(dA, dBu)
        del dA, dBu
        y = torch.einsum("bldn,bln->bld", h, Cm) + u * D
        ctx.save_for_backward(u, delta, A, Bm, Cm, D)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, Bm, Cm, D = ctx.saved_tensors
        dy = dy.contiguous()
        dA, dBu = SelectiveScan._states(u, delta, A, Bm)
        h = pscan(dA, dBu)
        del dBu
        dCm = torch.einsum("bldn,bld->bln", h, dy)
        # g_t = dL/dh_t = dy_t C_t + dA_{t+1} g_{t+1}
        c = torch.cat([dA[:, 1:], torch.zeros_like(dA[:, :1])], dim=1)
        g = rpscan(c, dy.unsqueeze(-1) * Cm.unsqueeze(2))
        del c
        # h_t = dA_t h_{t-1} + dBu_t: dL/d(dA_t) = g_t h_{t-1}, dL/d(dBu_t) = g_t
        t = torch.zeros_like(h)
        t[:, 1:] = g[:, 1:] * h[:, :-1]
        del h
        t.mul_(dA)                                                    # dL/d(delta_t A)
        del dA
        gB = torch.einsum("bldn,bln->bld", g, Bm)                     # sum_n g B
        ddelta = torch.einsum("bldn,dn->bld", t, A) + gB * u
        dAm = torch.einsum("bldn,bld->dn", t, delta)
        del t
        dBm = torch.einsum("bldn,bld->bln", g, delta * u)
        du = gB * delta + dy * D
        dD = (dy * u).sum(dim=(0, 1))
        return du, ddelta, dAm, dBm, dCm, dD


def selective_scan(u, delta, A, Bm, Cm, D):
    with torch.autocast(device_type=u.device.type, enabled=False):
        return SelectiveScan.apply(u.float(), delta.float(), A.float(), Bm.float(), Cm.float(), D.float())


def selective_scan_ref(u, delta, A, Bm, Cm, D):
    """Naive sequential loop over time (for the self-test only)."""
    b, l, d = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for i in range(l):
        h = torch.exp(delta[:, i, :, None] * A) * h + (delta[:, i] * u[:, i])[..., None] * Bm[:, i, None, :]
        ys.append((h * Cm[:, i, None, :]).sum(-1) + D * u[:, i])
    return torch.stack(ys, dim=1)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


class MambaMixer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        di, n, r = args.d_inner, args.d_state, args.dt_rank
        self.args = args
        self.in_proj = nn.Linear(args.d_model, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, args.d_conv, groups=di, padding=args.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, args.d_model, bias=False)

    def forward(self, x):
        a = self.args
        L = x.shape[1]
        xs, z = self.in_proj(x).chunk(2, dim=-1)                       # (b, l, di) each
        xs = self.conv1d(xs.transpose(1, 2))[..., :L].transpose(1, 2)
        xs = F.silu(xs)
        dt, Bm, Cm = torch.split(self.x_proj(xs), [a.dt_rank, a.d_state, a.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt).float())
        A = -torch.exp(self.A_log.float())
        y = selective_scan(xs, delta, A, Bm, Cm, self.D)
        y = y * F.silu(z.float())
        return self.out_proj(y.to(x.dtype) if not torch.is_autocast_enabled() else y)


class MambaBlock(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.norm = RMSNorm(args.d_model, args.norm_eps)
        self.mixer = MambaMixer(args)


class Backbone(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.embeddings = nn.Embedding(args.vocab_size, args.d_model)
        self.layers = nn.ModuleList([MambaBlock(args) for _ in range(args.n_layer)])
        self.norm_f = RMSNorm(args.d_model, args.norm_eps)


class MambaLM(nn.Module):
    """Parameter names: backbone.embeddings.weight, backbone.layers.{i}.norm.weight,
    backbone.layers.{i}.mixer.*, backbone.norm_f.weight, lm_head.weight (tied)."""

    def __init__(self, args: ModelArgs, dropout=0.0):
        super().__init__()
        self.args = args
        self.dropout = dropout        # training-time only; not part of the saved model
        self.backbone = Backbone(args)
        self.lm_head = nn.Linear(args.d_model, args.vocab_size, bias=False)
        self.lm_head.weight = self.backbone.embeddings.weight

    @torch.no_grad()
    def init_weights(self, seed):
        g = torch.Generator().manual_seed(seed)
        a = self.args
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02, generator=g)
        for blk in self.backbone.layers:
            m = blk.mixer
            for lin in (m.in_proj, m.x_proj, m.out_proj):
                nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=g)
            m.out_proj.weight /= math.sqrt(a.n_layer)                 # GPT-2 style residual rescale
            nn.init.kaiming_uniform_(m.conv1d.weight, a=math.sqrt(5), generator=g)
            nn.init.zeros_(m.conv1d.bias)
            std = a.dt_rank ** -0.5
            nn.init.uniform_(m.dt_proj.weight, -std, std, generator=g)
            # softplus(bias) log-uniform in [1e-3, 0.1]
            dt = torch.exp(torch.rand(a.d_inner, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            dt = dt.clamp(min=1e-4)
            m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            m.A_log.copy_(torch.log(torch.arange(1, a.d_state + 1, dtype=torch.float32)).repeat(a.d_inner, 1))
            m.D.fill_(1.0)
            blk.norm.weight.fill_(1.0)
        self.backbone.norm_f.weight.fill_(1.0)

    def forward(self, ids):
        p = self.dropout if self.training else 0.0
        h = self.backbone.embeddings(ids).float()                     # residual stream in fp32
        if p:
            h = F.dropout(h, p)
        for blk in self.backbone.layers:
            y = blk.mixer(blk.norm(h))
            if p:
                y = F.dropout(y, p)
            h = h + y.float()
        h = self.backbone.norm_f(h)
        return self.lm_head(h)


def n_params(model):
    return sum(p.numel() for p in model.parameters())   # tied weight counted once


# ----------------------------------------------------------------------------- HF output

def hf_config(args: ModelArgs, meta):
    return {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "vocab_size": args.vocab_size,
        "hidden_size": args.d_model,
        "state_size": args.d_state,
        "num_hidden_layers": args.n_layer,
        "expand": args.expand,
        "intermediate_size": args.d_inner,
        "conv_kernel": args.d_conv,
        "time_step_rank": args.dt_rank,
        "layer_norm_epsilon": args.norm_eps,
        "use_bias": False,
        "use_conv_bias": True,
        "hidden_act": "silu",
        "residual_in_fp32": True,
        "tie_word_embeddings": True,
        "bos_token_id": meta["bos_id"],
        "eos_token_id": meta["eos_id"],
        "pad_token_id": meta["pad_id"],
        "torch_dtype": "float32",
    }


def load_hf(model_dir):
    """Our module from an HF-format directory (config.json + model.safetensors or shards)."""
    from safetensors.torch import load_file
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    args = ModelArgs(vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"], n_layer=cfg["num_hidden_layers"],
                     d_state=cfg["state_size"], expand=cfg["expand"], d_conv=cfg["conv_kernel"],
                     dt_rank=cfg["time_step_rank"], norm_eps=cfg["layer_norm_epsilon"])
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    sd = {}
    for f in files:
        sd.update(load_file(os.path.join(model_dir, f)))
    sd.setdefault("lm_head.weight", sd["backbone.embeddings.weight"])
    model = MambaLM(args)
    model.load_state_dict(sd, strict=True)
    return model, cfg


def save_hf(model, meta, out_dir, max_shard_bytes=15 * 2**20):
    """config.json + float32 safetensors; sharded with model.safetensors.index.json when the
    weights exceed max_shard_bytes. lm_head.weight is tied, so (as transformers does) only
    backbone.embeddings.weight is written."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        if f.startswith("model") and (f.endswith(".safetensors") or f.endswith(".json")):
            os.remove(os.path.join(out_dir, f))
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    total = sum(v.numel() * 4 for v in sd.values())
    shards, cur, cur_bytes = [], {}, 0
    for k, v in sd.items():
        nb = v.numel() * 4
        if cur and cur_bytes + nb > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = {}, 0
        cur[k] = v
        cur_bytes += nb
    shards.append(cur)
    meta_st = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata=meta_st)
    else:
        weight_map = {}
        for i, s in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(s, os.path.join(out_dir, name), metadata=meta_st)
            weight_map.update({k: name for k in s})
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(model.args, meta), f, indent=1)
    return len(shards)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model, valid_ids, ctx, bos, n_bytes, batch=16, fp32=True, device="cpu"):
    """Mean NLL per token over [BOS]+chunk windows of ctx-1 ids (see the module docstring)."""
    was_training = model.training
    model.eval()
    W = ctx - 1
    ids = torch.as_tensor(np.asarray(valid_ids, dtype=np.int64))
    chunks = [ids[i:i + W] for i in range(0, len(ids), W)]
    total, count = 0.0, 0
    i = 0
    while i < len(chunks):
        group = [chunks[i]]
        while i + len(group) < len(chunks) and len(group) < batch and len(chunks[i + len(group)]) == len(group[0]):
            group.append(chunks[i + len(group)])
        i += len(group)
        tgt = torch.stack(group).to(device)
        inp = torch.cat([torch.full((tgt.shape[0], 1), bos, dtype=torch.long, device=device), tgt[:, :-1]], dim=1)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=not fp32):
            logits = model(inp)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum")
        total += nll.item()
        count += tgt.numel()
    model.train(was_training)
    mean = total / count
    return {"ctx": ctx, "tokens": count, "windows": len(chunks), "total_nll": total, "mean_nll": mean,
            "perplexity": math.exp(mean), "bytes": n_bytes, "bits_per_byte": total / math.log(2) / n_bytes,
            "fp32": fp32}


# ----------------------------------------------------------------------------- self-test

def selftest():
    torch.manual_seed(0)
    ok = True

    def report(name, err, tol):
        nonlocal ok
        good = err < tol
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {name}: rel err {err:.2e} (tol {tol:.0e})")

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    # 1. parallel scan vs a sequential loop, odd and even lengths, float64
    for L in (1, 2, 7, 64, 100, 257):
        a = torch.rand(2, L, 3, 4, dtype=torch.float64)
        b = torch.randn(2, L, 3, 4, dtype=torch.float64)
        h = torch.zeros(2, 3, 4, dtype=torch.float64)
        ref = []
        for t in range(L):
            h = a[:, t] * h + b[:, t]
            ref.append(h)
        report(f"pscan L={L}", rel(pscan(a, b), torch.stack(ref, 1)), 1e-12)
        g = torch.zeros(2, 3, 4, dtype=torch.float64)
        refg = [None] * L
        for t in reversed(range(L)):
            g = b[:, t] + a[:, t] * g
            refg[t] = g
        report(f"rpscan L={L}", rel(rpscan(a, b), torch.stack(refg, 1)), 1e-12)

    # 2. selective scan (forward and all gradients) vs the naive loop, float64 and float32,
    #    with strong decays (large delta * A) to exercise stability
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        b, l, d, n = 2, 67, 5, 4
        u = torch.randn(b, l, d, dtype=dtype, requires_grad=True)
        delta = (F.softplus(torch.randn(b, l, d, dtype=dtype) * 2)).requires_grad_()
        A = (-torch.exp(torch.randn(d, n, dtype=dtype) + 1)).requires_grad_()
        Bm = torch.randn(b, l, n, dtype=dtype, requires_grad=True)
        Cm = torch.randn(b, l, n, dtype=dtype, requires_grad=True)
        D = torch.randn(d, dtype=dtype, requires_grad=True)
        ins = (u, delta, A, Bm, Cm, D)
        y1 = SelectiveScan.apply(*ins)
        y2 = selective_scan_ref(*ins)
        report(f"selective scan fwd {dtype}", rel(y1, y2), tol)
        w = torch.randn_like(y1)
        g1 = torch.autograd.grad((y1 * w).sum(), ins)
        g2 = torch.autograd.grad((y2 * w).sum(), ins)
        for name, x1, x2 in zip(("u", "delta", "A", "B", "C", "D"), g1, g2):
            report(f"selective scan grad {name} {dtype}", rel(x1, x2), tol * 10)
    # a long, strongly decaying float32 sequence stays finite
    l = 4096
    u = torch.randn(1, l, 8)
    delta = torch.full((1, l, 8), 5.0)
    A = -torch.full((8, 4), 16.0)
    y = SelectiveScan.apply(u, delta, A, torch.randn(1, l, 4), torch.randn(1, l, 4), torch.ones(8))
    report("strong decay finite (0 = finite)", float(not torch.isfinite(y).all()), 0.5)

    # 3. our module vs transformers' MambaForCausalLM, and the saved HF directory
    try:
        from transformers import MambaConfig, MambaForCausalLM
    except ImportError:
        print("transformers not installed: skipping the comparison with MambaForCausalLM")
        return ok
    import tempfile
    args = ModelArgs(vocab_size=300, d_model=48, n_layer=3, d_state=8)
    meta = {"bos_id": 1, "eos_id": 2, "pad_id": 3}
    model = MambaLM(args)
    model.init_weights(1)
    with torch.no_grad():     # make norms, D and conv bias non-trivial
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight") or name.endswith(".D") \
                    or name.endswith("conv1d.bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    ids = torch.randint(0, args.vocab_size, (2, 37))
    with torch.no_grad():
        ours = model(ids)
    cfg = MambaConfig(**{k: v for k, v in hf_config(args, meta).items()
                         if k not in ("architectures", "model_type", "torch_dtype", "intermediate_size")})
    hf = MambaForCausalLM(cfg).eval()
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=True)
    names_ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names_hf = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    same = names_ours == names_hf
    ok &= same
    print(f"{'ok  ' if same else 'FAIL'} parameter names and shapes equal MambaForCausalLM's ({len(names_hf)} tensors)")
    with torch.no_grad():
        theirs = hf(ids).logits
    report("logits vs MambaForCausalLM", rel(ours, theirs), 1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        for shard_bytes, label in ((15 * 2**20, "single file"), (40_000, "sharded")):
            d = os.path.join(tmp, label.replace(" ", "_"))
            n = save_hf(model, meta, d, max_shard_bytes=shard_bytes)
            loaded = MambaForCausalLM.from_pretrained(d).eval()
            with torch.no_grad():
                lo = loaded(ids).logits
            report(f"from_pretrained of saved dir ({label}, {n} files)", rel(lo, ours), 1e-6)
    # 4. evaluation: windowed NLL equals a direct computation
    valid = torch.randint(5, args.vocab_size, (250,)).tolist()
    ctx = 64
    r = evaluate(model, valid, ctx, 1, n_bytes=1000, batch=3)
    tot = 0.0
    with torch.no_grad():
        for s in range(0, len(valid), ctx - 1):
            c = torch.tensor(valid[s:s + ctx - 1])
            lg = hf(torch.cat([torch.tensor([1]), c])[None]).logits[0, :-1]
            tot += F.cross_entropy(lg, c, reduction="sum").item()
    report("windowed evaluation vs direct", abs(r["total_nll"] - tot) / tot, 1e-5)
    # 5. one training step under autocast runs and gives gradients everywhere
    model.train()
    model.dropout = 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(ids).float().flatten(0, 1), ids.flatten())
    loss.backward()
    nograd = [k for k, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    ok &= not nograd
    print(f"{'ok  ' if not nograd else 'FAIL'} bf16-autocast training step: loss {loss.item():.3f}, "
          f"params without finite grads: {nograd}")
    return ok


# ----------------------------------------------------------------------------- training

def lr_at(step, total, peak, warmup, final_frac):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--selftest", action="store_true", help="CPU correctness checks, then exit")
    ap.add_argument("--data", default=os.path.join(ROOT, ".data"), help="folder from prepare_data.py")
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "weights", "tokenizer.model"))
    ap.add_argument("--out", default=os.path.join(ROOT, ".data", "out"), help="HF-format output folder")
    ap.add_argument("--log", default=None, help="log file (default OUT/train_log.tsv)")
    ap.add_argument("--ckpt", default=None, help="resumable checkpoint path (model+optimizer+step+RNG)")
    ap.add_argument("--ckpt-every", type=float, default=120, help="seconds between checkpoints")
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--expand", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16, help="windows per optimizer step")
    ap.add_argument("--micro", type=int, default=0, help="windows per forward pass (0: = batch)")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps (0: fit --time-budget)")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds for the whole run incl. eval")
    ap.add_argument("--max-epochs", type=float, default=0, help="cap on train tokens seen / train tokens")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--final-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1, help="training-time dropout on embeddings "
                    "and block outputs (inference is unchanged)")
    ap.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=True, help="early stopping: if the last periodic "
                    "validation loss is worse than the best one, restore the best weights before the final eval")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--compile", choices=("none", "model"), default="none")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--eval", metavar="MODEL_DIR", help="only evaluate an HF-format model (fp32) and exit")
    ap.add_argument("--bench", type=int, default=0, help="time this many steps, print tokens/s, exit")
    args = ap.parse_args()

    if args.selftest:
        ok = selftest()
        print("SELFTEST", "PASSED" if ok else "FAILED")
        sys.exit(0 if ok else 1)

    if args.eval:
        meta = json.load(open(os.path.join(args.data, "meta.json")))
        valid_ids = np.fromfile(os.path.join(args.data, "valid.bin"), dtype=np.uint16).astype(np.int64)
        model, cfg = load_hf(args.eval)
        model.to(args.device)
        torch.backends.cuda.matmul.allow_tf32 = False
        t0 = time.time()
        r = evaluate(model, valid_ids, args.ctx, cfg["bos_token_id"], meta["valid"]["bytes"], batch=4, fp32=True,
                     device=args.device)
        r["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(r))
        return

    t_start = time.time()
    dev = args.device
    dtype_dev = dev.split(":")[0]
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    meta = json.load(open(os.path.join(args.data, "meta.json")))
    train_ids = torch.from_numpy(np.fromfile(os.path.join(args.data, "train.bin"), dtype=np.uint16).astype(np.int64))
    valid_ids = np.fromfile(os.path.join(args.data, "valid.bin"), dtype=np.uint16).astype(np.int64)
    assert len(train_ids) == meta["train"]["tokens"] and len(valid_ids) == meta["valid"]["tokens"]
    if os.path.exists(args.tokenizer):
        import hashlib
        h = hashlib.sha256(open(args.tokenizer, "rb").read()).hexdigest()
        assert h == meta["tokenizer_sha256"], "tokenizer does not match the prepared data"
    train_ids = train_ids.to(dev)
    bos = meta["bos_id"]

    margs = ModelArgs(vocab_size=meta["vocab_size"], d_model=args.d_model, n_layer=args.n_layer,
                      d_state=args.d_state, expand=args.expand)
    model = MambaLM(margs, dropout=args.dropout)
    model.init_weights(args.seed)
    model.to(dev)
    P = n_params(model)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "A_log" not in n and "conv1d" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "A_log" not in n and "conv1d" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=(dtype_dev == "cuda"))
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)

    step, tokens_seen, total_steps, elapsed_before = 0, 0, args.steps, 0.0
    if args.ckpt and os.path.exists(args.ckpt):
        ck = torch.load(args.ckpt, map_location=dev, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, tokens_seen, total_steps = ck["step"], ck["tokens_seen"], args.steps or ck["total_steps"]
        elapsed_before = ck["elapsed"]
        gen.set_state(ck["gen"].cpu() if dtype_dev != "cuda" else ck["gen"])
        torch.set_rng_state(ck["cpu_rng"])
        if dtype_dev == "cuda":
            torch.cuda.set_rng_state(ck["cuda_rng"])
        print(f"resumed from {args.ckpt} at step {step}", flush=True)

    fwd = model
    if args.compile == "model":
        fwd = torch.compile(model)

    micro = args.micro or args.batch
    assert args.batch % micro == 0
    n_micro = args.batch // micro
    T = args.ctx
    tok_per_step = args.batch * T

    def get_batch():
        s = torch.randint(0, len(train_ids) - T, (micro,), device=dev, generator=gen)
        idx = s[:, None] + torch.arange(T, device=dev)[None, :]
        y = train_ids[idx]                                            # ids[s .. s+T-1]
        x = torch.cat([torch.full((micro, 1), bos, dtype=torch.long, device=dev), y[:, :-1]], dim=1)
        return x, y

    def train_step(lr):
        for gr in opt.param_groups:
            gr["lr"] = lr
        tot = 0.0
        for _ in range(n_micro):
            x, y = get_batch()
            with torch.autocast(device_type=dtype_dev, dtype=torch.bfloat16):
                logits = fwd(x)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1)) / n_micro
            loss.backward()
            tot = tot + loss.detach()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return tot, gn

    def sync():
        if dtype_dev == "cuda":
            torch.cuda.synchronize()

    print(f"model: d_model={margs.d_model} n_layer={margs.n_layer} d_inner={margs.d_inner} d_state={margs.d_state} "
          f"dt_rank={margs.dt_rank} vocab={margs.vocab_size} params={P} ({P / 1e6:.2f}M); "
          f"train tokens {len(train_ids)}, valid tokens {len(valid_ids)}; {tok_per_step} tokens/step; "
          f"dropout {args.dropout}; device {torch.cuda.get_device_name() if dtype_dev == 'cuda' else dev}",
          flush=True)

    if args.bench:
        model.train()
        for i in range(args.bench + 3):
            if i == 3:
                sync()
                t0 = time.time()
            loss, _ = train_step(args.lr)
        sync()
        dt = (time.time() - t0) / args.bench
        mem = torch.cuda.max_memory_allocated() / 2**30 if dtype_dev == "cuda" else 0
        print(f"BENCH batch={args.batch} micro={micro} compile={args.compile}: {dt * 1000:.1f} ms/step, "
              f"{tok_per_step / dt:.0f} tokens/s, peak mem {mem:.1f} GiB, loss {loss.item():.3f}", flush=True)
        return

    os.makedirs(args.out, exist_ok=True)
    log_path = args.log or os.path.join(args.out, "train_log.tsv")
    new_log = step == 0 or not os.path.exists(log_path)
    logf = open(log_path, "w" if new_log else "a")
    if new_log:
        logf.write("step\ttokens\ttrain_loss\tval_loss\tlr\telapsed_s\n")

    def log(s, train_loss, val_loss, lr):
        el = elapsed_before + time.time() - t_start
        logf.write(f"{s}\t{tokens_seen}\t{train_loss:.4f}\t{'' if val_loss is None else f'{val_loss:.4f}'}\t"
                   f"{lr:.3e}\t{el:.1f}\n")
        logf.flush()

    def save_ckpt():
        if not args.ckpt:
            return
        ck = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "tokens_seen": tokens_seen,
              "total_steps": total_steps, "elapsed": elapsed_before + time.time() - t_start,
              "gen": gen.get_state(), "cpu_rng": torch.get_rng_state(), "args": vars(args)}
        if dtype_dev == "cuda":
            ck["cuda_rng"] = torch.cuda.get_rng_state()
        tmp = args.ckpt + ".tmp"
        torch.save(ck, tmp)
        os.replace(tmp, args.ckpt)

    model.train()
    # calibrate the step time to fit the time budget (first steps include compilation)
    eval_reserve = 45.0
    calib_t0, calib_n = None, 0
    if total_steps == 0 and not args.time_budget:
        sys.exit("give --steps or --time-budget")
    if args.max_epochs and total_steps:
        total_steps = min(total_steps, int(args.max_epochs * len(train_ids) / tok_per_step))
    provisional = total_steps or 10**9
    last_ckpt = time.time()
    run_loss, run_n = 0.0, 0
    val_hist = []
    best = None
    deadline = t_start + args.time_budget - eval_reserve if args.time_budget else float("inf")
    while step < (total_steps or provisional):
        if total_steps == 0:
            if step == 20:
                sync()
                calib_t0 = time.time()
            elif step == 60:
                sync()
                dt = (time.time() - calib_t0) / 40
                n_evals_left = 0
                left = deadline - time.time()
                # an eval of the valid set costs about (valid tokens / train tokens per step) steps
                eval_cost = dt * len(valid_ids) / tok_per_step * 0.5
                total_steps = step + int(left / (dt + eval_cost / args.eval_every))
                if args.max_epochs:
                    total_steps = min(total_steps, int(args.max_epochs * len(train_ids) / tok_per_step))
                print(f"calibrated: {dt * 1000:.1f} ms/step -> total_steps {total_steps} "
                      f"({total_steps * tok_per_step / len(train_ids):.1f} epochs)", flush=True)
        sched_total = total_steps or max(provisional, 10 * args.warmup)
        lr = lr_at(step, sched_total, args.lr, args.warmup, args.final_lr_frac)
        loss, gn = train_step(lr)
        step += 1
        tokens_seen += tok_per_step
        if step % 10 == 0 or step == 1:
            lv = loss.item()
            if not math.isfinite(lv):
                sys.exit(f"non-finite loss at step {step}")
            run_loss += lv
            run_n += 1
        done = total_steps and step >= total_steps
        if time.time() > deadline and not done:
            print(f"time budget reached at step {step}; stopping early", flush=True)
            done = True
        if step % args.eval_every == 0 or done:
            r = evaluate(model, valid_ids, args.ctx, bos, meta["valid"]["bytes"], fp32=False, device=dev)
            val_hist.append((step, r["mean_nll"]))
            if args.keep_best and (best is None or r["mean_nll"] < best[1]):
                best = (step, r["mean_nll"], {k: v.detach().clone() for k, v in model.state_dict().items()})
            tl = run_loss / max(1, run_n)
            log(step, tl, r["mean_nll"], lr)
            print(f"step {step:5d}/{total_steps or '?'} tok {tokens_seen / 1e6:7.1f}M ep {tokens_seen / len(train_ids):5.2f} "
                  f"train {tl:.4f} val {r['mean_nll']:.4f} (bpb {r['bits_per_byte']:.4f}) lr {lr:.2e} "
                  f"gn {gn.item():.2f} t {elapsed_before + time.time() - t_start:.0f}s", flush=True)
            run_loss, run_n = 0.0, 0
        elif step % 10 == 0:
            log(step, loss.item(), None, lr)
        if args.ckpt and time.time() - last_ckpt > args.ckpt_every:
            save_ckpt()
            last_ckpt = time.time()
        if done:
            break
    save_ckpt()
    train_time = elapsed_before + time.time() - t_start
    weights_step = step
    if best is not None and best[0] != step:
        print(f"keep-best: restoring the weights of step {best[0]} (val {best[1]:.4f}; last {val_hist[-1][1]:.4f})",
              flush=True)
        model.load_state_dict(best[2])
        weights_step = best[0]
    best = None

    # final evaluation: float32, no autocast, the final weights
    torch.backends.cuda.matmul.allow_tf32 = False
    te = time.time()
    r = evaluate(model, valid_ids, args.ctx, bos, meta["valid"]["bytes"], fp32=True, device=dev)
    r.update({"step": step, "weights_step": weights_step, "tokens_seen": tokens_seen, "epochs": tokens_seen / len(train_ids), "params": P,
              "train_seconds": round(train_time, 1), "eval_seconds": round(time.time() - te, 1),
              "device": torch.cuda.get_device_name() if dtype_dev == "cuda" else dev,
              "config": asdict(margs), "train_args": vars(args), "val_history": val_hist})
    nshards = save_hf(model, meta, args.out)
    if os.path.exists(args.tokenizer):
        shutil.copy(args.tokenizer, os.path.join(args.out, "tokenizer.model"))
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(r, f, indent=1)
    logf.write(f"# final fp32 eval ctx={args.ctx}: mean_nll {r['mean_nll']:.5f} ppl {r['perplexity']:.3f} "
               f"bpb {r['bits_per_byte']:.5f} over {r['tokens']} tokens / {r['bytes']} bytes\n")
    logf.close()
    print(f"FINAL fp32 ctx={args.ctx} step={step} weights_step={weights_step} epochs={r['epochs']:.2f} params={P}: mean_nll={r['mean_nll']:.5f} "
          f"ppl={r['perplexity']:.3f} bpb={r['bits_per_byte']:.5f} train_s={train_time:.0f} shards={nshards}",
          flush=True)


if __name__ == "__main__":
    main()
