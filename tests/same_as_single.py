#!/usr/bin/env python3
"""tests/same_as_single.py MAMBA MODE PROMPTS SEED ARGS...: runs the prompts of the file as one
batch (MODE text: "==> i <==" blocks; json, json-eos: --json lines) and each alone with -s SEED+i;
the outputs must agree byte for byte (json-eos: and at least two stop at EOS)."""
import json, subprocess, sys
mamba, mode, path, seed, args = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
text = open(path, 'rb').read().decode()
prompts = [l[:-1] if l.endswith('\r') else l for l in text.split('\n')]
prompts = [p for p in prompts if p.strip()]
def run(*extra):
    r = subprocess.run([mamba, 'run', *args, *extra], capture_output=True)
    if r.returncode != 0: sys.exit(f"{extra}: exit {r.returncode}: {r.stderr.decode(errors='replace')}")
    return r.stdout
def single(i, *extra): return run('-s', str(seed + i), *extra, '-i', prompts[i])
if mode.startswith('json'):
    rows = [json.loads(l) for l in run('-s', str(seed), '--batch-file', path, '--json').decode().splitlines()]
    if sorted(r['index'] for r in rows) != list(range(len(prompts))): sys.exit(f"indices {[r['index'] for r in rows]}")
    if mode == 'json-eos' and sum(r['finish'] == 'eos' for r in rows) < 2: sys.exit(f"fewer than 2 stopped at EOS: {rows}")
    for r in rows:
        want = single(r['index'], '--no-echo')
        if (r['completion'] + '\n').encode() != want: sys.exit(f"prompt {r['index']}: batch {r['completion']!r}, alone {want!r}")
else:
    got = run('-s', str(seed), '--batch-file', path)
    want = b''.join(b'==> %d <==\n' % i + single(i) + b'\n' for i in range(len(prompts)))
    if got != want: sys.exit(f"batch:\n{got!r}\nalone:\n{want!r}")
