#!/usr/bin/env python3
"""tests/state_tool.py: an independent reading of docs/FORMAT.md's state files and fingerprints,
for tests/test_state.sh.

  state_tool.py fingerprint MODEL.bin        the tensors' fingerprint, computed from the table
  state_tool.py stored MODEL.bin             the fingerprint the header stores (0: none)
  state_tool.py edit IN OUT FIELD=VALUE...   a copy with header fields changed (or payload float
                                             i: float:I=nan, id:I=N), its checksum recomputed
  state_tool.py check FILE                   exit 0 when the checksum is right
  state_tool.py compare A B TOL              exit 0 when A and B hold the same sequence (header
                                             fields but the RNG, ids) and states within TOL, relative to
                                             each tensor's largest magnitude
"""
import struct
import sys

M64 = (1 << 64) - 1
SEED = 0xCBF29CE484222325
HEADER = struct.Struct("<8sIIQIIIIIIIiQQII32sQQ")   # 128 bytes
FIELDS = ["magic", "version", "header_bytes", "fingerprint", "arch", "n_layer", "conv_channels", "d_conv",
          "d_inner", "d_state", "vocab_size", "last_token", "n_tokens", "rng", "n_ids", "n_pending", "pending",
          "file_bytes", "checksum"]
assert HEADER.size == 128


def fold(lane, word):
    lane = ((lane ^ word) * 0x9E3779B97F4A7C15) & M64
    return lane ^ (lane >> 29)


def fingerprint(h, data):
    blocks = len(data) // 32
    words = struct.unpack_from("<%dQ" % (4 * blocks), data)
    lanes = [h, (h + 1) & M64, (h + 2) & M64, (h + 3) & M64]
    for i in range(blocks):
        for k in range(4):
            lanes[k] = fold(lanes[k], words[4 * i + k])
    for k in range(4):
        h = fold(h, lanes[k])
    for b in data[32 * blocks:]:
        h = fold(h, b)
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & M64
    return h ^ (h >> 31)


def model_fingerprint(path):
    data = open(path, "rb").read()
    n_tensors, table = struct.unpack_from("<IQ", data, 76)
    h = SEED
    for i in range(n_tensors):
        offset, size = struct.unpack_from("<QQ", data, table + 96 * i + 80)
        h = fingerprint(h, data[offset:offset + size])
    return h or 1


def checksum(data):
    f = dict(zip(FIELDS, HEADER.unpack_from(data)))
    n_conv = f["n_layer"] * f["conv_channels"] * f["d_conv"]
    n_ssm = f["n_layer"] * f["d_inner"] * f["d_state"]
    header = bytearray(data[:128])
    header[120:128] = bytes(8)
    h = fingerprint(SEED, bytes(header))
    at = 128
    for n in (n_conv, n_ssm, f["n_ids"]):
        h = fingerprint(h, data[at:at + 4 * n])
        at += 4 * n
    return h


def edit(src, dst, changes):
    data = bytearray(open(src, "rb").read())
    f = dict(zip(FIELDS, HEADER.unpack_from(data)))
    for change in changes:
        key, value = change.split("=", 1)
        if key.startswith("float:"):
            struct.pack_into("<f", data, 128 + 4 * int(key[6:]), float(value))
        elif key.startswith("id:"):
            n_floats = f["n_layer"] * (f["conv_channels"] * f["d_conv"] + f["d_inner"] * f["d_state"])
            struct.pack_into("<i", data, 128 + 4 * (n_floats + int(key[3:])), int(value))
        else:
            f[key] = value.encode() if key == "magic" else int(value, 0)
    data[:128] = HEADER.pack(*[f[k] for k in FIELDS])
    struct.pack_into("<Q", data, 120, checksum(bytes(data)))
    open(dst, "wb").write(bytes(data))


def compare(a_path, b_path, tol):
    a, b = open(a_path, "rb").read(), open(b_path, "rb").read()
    fa, fb = dict(zip(FIELDS, HEADER.unpack_from(a))), dict(zip(FIELDS, HEADER.unpack_from(b)))
    same = [k for k in FIELDS if k not in ("checksum", "rng")]   # rng: unseeded runs differ
    if [fa[k] for k in same] != [fb[k] for k in same] or len(a) != len(b):
        sys.exit("the headers differ: %s" % {k: (fa[k], fb[k]) for k in same if fa[k] != fb[k]})
    n_conv = fa["n_layer"] * fa["conv_channels"] * fa["d_conv"]
    n_ssm = fa["n_layer"] * fa["d_inner"] * fa["d_state"]
    at = 128
    for name, n in (("conv", n_conv), ("ssm", n_ssm)):
        x, y = struct.unpack_from("<%df" % n, a, at), struct.unpack_from("<%df" % n, b, at)
        scale = max(max(abs(v) for v in x), 1e-30)
        worst = max(abs(p - q) for p, q in zip(x, y)) / scale
        print("%s: max|a-b|/max|a| = %.3g" % (name, worst))
        if not worst <= tol:
            sys.exit("the %s states differ by %.3g > %g" % (name, worst, tol))
        at += 4 * n
    if a[at:] != b[at:]:
        sys.exit("the ids differ")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "fingerprint":
        print("%016x" % model_fingerprint(args[0]))
    elif cmd == "stored":
        print("%016x" % struct.unpack_from("<Q", open(args[0], "rb").read(), 144)[0])
    elif cmd == "edit":
        edit(args[0], args[1], args[2:])
    elif cmd == "check":
        data = open(args[0], "rb").read()
        sys.exit(0 if checksum(data) == struct.unpack_from("<Q", data, 120)[0] else 1)
    elif cmd == "compare":
        compare(args[0], args[1], float(args[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
