"""Checks ids the GPU sampled against the logits it wrote for them (mamba run --logits-out):
every id lies in the top-k / top-p set that the CPU sampler's rules give, and the mean
surprisal of the draws matches the mean entropy of the distributions they came from.

    python3 tests/gpu_sampling.py LOGITS IDS VOCAB N_PROMPT TEMPERATURE TOP_K TOP_P
"""
import sys

import numpy as np

logits_path, ids_path = sys.argv[1], sys.argv[2]
vocab, n_prompt = int(sys.argv[3]), int(sys.argv[4])
temperature, top_k, top_p = float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
rows = np.fromfile(logits_path, dtype="<f4").reshape(-1, vocab).astype(np.float64)
ids = [int(t) for t in open(ids_path).read().split()]
outside, surprisal, entropy = 0, 0.0, 0.0
for j, g in enumerate(ids):
    x = rows[n_prompt - 1 + j] / temperature          # the id after row i was drawn from row i
    q = np.exp(x - x.max())
    order = np.lexsort((np.arange(vocab), -q))          # most likely first, lower id on ties
    k = top_k if 0 < top_k < vocab else vocab
    keep = order[:k]
    if top_p < 1:
        cum = np.cumsum(q[keep])
        keep = keep[: int(np.searchsorted(cum, top_p * cum[-1])) + 1]
    if g not in set(keep.tolist()) and q[g] < 0.999 * q[keep[-1]]:
        outside += 1
        continue
    qn = q[keep] / q[keep].sum()
    surprisal -= np.log(max(q[g] / q[keep].sum(), 1e-30))
    entropy -= float((qn * np.log(qn)).sum())
n = len(ids)
print(f"{n} draws, {outside} outside the kept set, mean surprisal {surprisal / n:.4f}, mean entropy {entropy / n:.4f}")
sys.exit(0 if outside == 0 and abs(surprisal - entropy) / n < 0.1 else 1)
