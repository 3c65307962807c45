#!/usr/bin/env python3
"""tests/quant_ref.py MODEL.bin SOURCE.safetensors SOURCE_NAME TENSOR: the codes and scales of a
q8/q4 tensor of a mamba checkpoint must be those that docs/FORMAT.md's rule gives for the f32
source tensor, computed here independently in plain Python (f32 arithmetic emulated)."""
import json, struct, sys

def f32(x): return struct.unpack('<f', struct.pack('<f', x))[0]

def checkpoint_tensor(path, name):
    data = open(path, 'rb').read()
    dtype, n, table = struct.unpack_from('<I', data, 52)[0], struct.unpack_from('<I', data, 76)[0], struct.unpack_from('<Q', data, 80)[0]
    for i in range(n):
        e = table + 96 * i
        if data[e:e + 64].split(b'\0')[0].decode() == name:
            t, _, rows, cols, off, nbytes = struct.unpack_from('<IIIIQQ', data, e + 64)
            return t, rows, cols, data[off:off + nbytes]
    sys.exit(f"{path}: no tensor {name}")

def source_tensor(path, name):
    data = open(path, 'rb').read()
    n = struct.unpack_from('<Q', data, 0)[0]
    meta = json.loads(data[8:8 + n])[name]
    if meta['dtype'] != 'F32': sys.exit(f"{name}: source dtype {meta['dtype']}, this check reads F32")
    a, b = meta['data_offsets']
    return meta['shape'], struct.unpack_from(f'<{(b - a) // 4}f', data, 8 + n + a)

def expected_group(q4, w):
    big = max(w, key=abs) if w else 0.0
    scale = f32(-big / 8) if q4 else f32(abs(big) / 127)
    inv = f32(1 / scale) if scale else 0.0
    codes = [round(f32(v * inv)) for v in w] + [0] * (32 - len(w))
    return scale, [min(15, max(0, c + 8)) for c in codes] if q4 else codes

dtype, rows, cols, blob = checkpoint_tensor(sys.argv[1], sys.argv[4])
if dtype not in (3, 4): sys.exit(f"{sys.argv[4]} has dtype {dtype}, not q8 (3) or q4 (4)")
q4 = dtype == 4
shape, values = source_tensor(sys.argv[2], sys.argv[3])
if shape != [rows, cols]: sys.exit(f"shapes {shape} vs [{rows}, {cols}]")
groups = (cols + 31) // 32
row_bytes = groups * (16 if q4 else 32)
scales = struct.unpack_from(f'<{rows * groups}f', blob, rows * row_bytes)
bad = 0
for r in range(rows):
    for g in range(groups):
        scale, codes = expected_group(q4, list(values[r * cols + 32 * g: r * cols + min(cols, 32 * g + 32)]))
        got = blob[r * row_bytes + g * (16 if q4 else 32):][:16 if q4 else 32]
        got_codes = [c for b in got for c in (b & 15, b >> 4)] if q4 else [b - 256 if b > 127 else b for b in got]
        bad += scales[r * groups + g] != scale or got_codes != codes
if bad: sys.exit(f"{bad} of {rows * groups} groups differ from the reference")
print(f"{sys.argv[4]}: {rows * groups} groups of {'q4' if q4 else 'q8'} codes and scales = the reference")
