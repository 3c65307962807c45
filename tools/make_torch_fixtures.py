#!/usr/bin/env python3
"""Write the torch.save files under tests/torch/ that tests/test_torch_archive.sh reads with
tests/torch_dump, and the fuzz seeds of tests/fuzz/corpus/torch_archive/.

How to run (CPU only, a second; from the repository root):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch
    /tmp/venv/bin/python tools/make_torch_fixtures.py      # or: python3 tools/make_torch_fixtures.py

Needs only PyTorch (last run with torch 2.15.0). Tensors come from fixed seeds; torch.save puts
a random serialization id into each archive, so the files differ from run to run in those bytes
only. The script deletes and rewrites tests/torch/*.bin and *.expected and the seed files it
names in the fuzz corpus (other corpus files, such as regression inputs, are kept).

  NAME.bin        a file torch_archive.c must read, and NAME.expected: what tests/torch_dump
                  prints for it, computed here from torch.load of that very file (name, dtype,
                  shape, 64-bit FNV-1a of the tensor's contiguous little-endian bytes)
  bad_NAME.bin    a file it must refuse with one line (the phrase is in the test script)

The hostile pickles (os.system, lying sizes, ...) are written with the pickle module or by hand
straight into a zip archive; none of them is ever loaded.
"""
import collections
import io
import os
import pickle
import struct
import zipfile
import warnings
import zlib

import torch

warnings.filterwarnings("ignore", message="Detected pickle protocol")

OUT = "tests/torch"
CORPUS = "tests/fuzz/corpus/torch_archive"


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def dump_line(name, t):
    dtype = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}.get(t.dtype, "other")
    data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return f"{name} {dtype} [{','.join(str(d) for d in t.shape)}] {fnv1a64(data):016x}"


def expect(path):
    """NAME.expected from what torch itself reads back from NAME.bin (written here, so trusted:
    weights_only=True would refuse protocol 4's FRAME)."""
    sd = torch.load(path, weights_only=False)
    lines = [dump_line(k, v) for k, v in sd.items() if isinstance(v, torch.Tensor)]
    with open(path[:-4] + ".expected", "w") as f:
        f.write("\n".join(lines) + "\n")


def entries(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def write_zip(path, items, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in items:
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, compress_type=compression)


def write_zip64(path, items):
    """A stored zip in which every size and offset is in a zip64 extra field and the directory
    is found through the zip64 end records: the layout of a file over 4 GB, in a few KB."""
    out, central = bytearray(), bytearray()
    for name, data in items:
        nb, crc, off = name.encode(), zlib.crc32(data), len(out)
        extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(nb), len(extra)) + nb + extra + data
        cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF,
                               0xFFFFFFFF, len(nb), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF) + nb + cextra
    cd_off, n = len(out), len(items)
    out += central
    z64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(out)


# ---- hand-made pickles: the objects torch.save pickles, without torch's checks

class Storage:
    def __init__(self, stype, key, numel):
        self.stype, self.key, self.numel = stype, key, numel


class Tensor:
    """Pickles as torch's tensors do: _rebuild_tensor_v2 over a persistent-id storage."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.stype, obj.key, "cpu", obj.numel)
        return None


class System:
    def __reduce__(self):
        return (os.system, ("echo this pickle ran a shell command",))


def pickled(obj, protocol=2):
    b = io.BytesIO()
    Pickler(b, protocol=protocol).dump(obj)
    return b.getvalue()


def crafted(name, pkl, storages):
    """A torch.save-shaped archive around pkl; storages: key -> bytes."""
    items = [("archive/data.pkl", pkl), ("archive/byteorder", b"little")]
    items += [(f"archive/data/{k}", v) for k, v in storages.items()]
    items += [("archive/version", b"3\n")]
    write_zip(f"{OUT}/{name}", items)


def f32_bytes(n):
    return struct.pack(f"<{n}f", *[0.5 + i for i in range(n)])


# ---- the files

def basic_dict():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, generator=g)
    grid = torch.randn(3, 4, generator=g)
    line = torch.arange(10, dtype=torch.float32)
    return {
        "w": w,                                   # f32, 2-d
        "w_tied": w,                              # the same tensor under a second name
        "w_flat": w.view(12),                     # another tensor over w's storage
        "row": grid[1],                           # a view at storage offset 4
        "tail": line[6:],                         # offset 6 of a 10-element storage
        "h": torch.randn(5, generator=g).half(),  # f16, 1-d
        "conv": torch.randn(4, 1, 3, generator=g).bfloat16(),  # bf16, [C, 1, K] like conv1d weights
        "scalar": torch.tensor(2.5),              # 0-d
        "steps": torch.tensor([7, 8], dtype=torch.int64),      # another storage type
        "epoch": 3,                               # not tensors: skipped
        "note": "not a tensor",
    }


def module_state():
    torch.manual_seed(2)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Conv1d(3, 3, 3, groups=3, padding=2),
                            torch.nn.LayerNorm(3), torch.nn.BatchNorm1d(3))
    return m


def write_valid():
    torch.save(basic_dict(), f"{OUT}/basic.bin")
    torch.save(basic_dict(), f"{OUT}/proto4.bin", pickle_protocol=4)
    torch.save(module_state().state_dict(), f"{OUT}/module.bin")   # OrderedDict with _metadata
    torch.save(module_state()[0].state_dict(keep_vars=True), f"{OUT}/params.bin")  # _rebuild_parameter
    write_zip(f"{OUT}/deflated.bin", entries(f"{OUT}/basic.bin"), zipfile.ZIP_DEFLATED)
    # the prefix folder is whatever torch.save named it; a zip64 layout under another one
    write_zip64(f"{OUT}/zip64.bin", [("pytorch_model/" + n.split("/", 1)[1], d) for n, d in entries(f"{OUT}/basic.bin")])
    for name in ["basic", "proto4", "module", "params", "deflated", "zip64"]:
        expect(f"{OUT}/{name}.bin")


def write_hostile():
    fs = torch.FloatStorage
    six = f32_bytes(6)
    crafted("bad_system.bin", pickled({"weight": System()}), {})
    crafted("bad_opcode.bin", pickle.dumps({"weight": 1}, protocol=0), {})   # DICT ('d'), protocol 0
    crafted("bad_numel.bin", pickled({"w": Tensor(Storage(fs, "0", 100), 0, [6], [1])}), {"0": six})
    crafted("bad_offset.bin", pickled({"w": Tensor(Storage(fs, "0", 6), 5, [4], [1])}), {"0": six})
    crafted("bad_missing.bin", pickled({"w": Tensor(Storage(fs, "0", 6), 0, [6], [1]),
                                        "v": Tensor(Storage(fs, "1", 6), 0, [6], [1])}), {"0": six})
    pkl = pickled({"a": Tensor(Storage(fs, "0", 6), 0, [6], [1]), "b": Tensor(Storage(fs, "1", 6), 0, [6], [1])})
    crafted("bad_duplicate.bin", pkl.replace(b"X\x01\x00\x00\x00b", b"X\x01\x00\x00\x00a"), {"0": six, "1": six})
    crafted("bad_huge.bin", pickled({"w": Tensor(Storage(fs, "0", 6), 0, [1 << 21, 1 << 21], [1 << 21, 1])}), {"0": six})
    crafted("bad_5d.bin", pickled({"w": Tensor(Storage(fs, "0", 6), 0, [1, 1, 1, 2, 3], [6, 6, 6, 3, 1])}), {"0": six})
    crafted("bad_list.bin", pickled([Tensor(Storage(fs, "0", 6), 0, [6], [1])]), {"0": six})
    torch.save({"t": torch.arange(6, dtype=torch.float32).reshape(2, 3).t()}, f"{OUT}/bad_transposed.bin")
    torch.save({"u": torch.zeros(3, dtype=torch.uint16)}, f"{OUT}/bad_uint16.bin")   # _rebuild_tensor_v3
    torch.save({"w": torch.ones(3)}, f"{OUT}/bad_legacy.bin", _use_new_zipfile_serialization=False)
    items = entries(f"{OUT}/basic.bin")
    write_zip(f"{OUT}/bad_big_endian.bin", [(n, b"big" if n.endswith("/byteorder") else d) for n, d in items])
    # one flipped byte in a stored storage's data: its CRC no longer matches
    write_zip(f"{OUT}/bad_crc.bin", items)
    flip_data_byte(f"{OUT}/bad_crc.bin", [n for n, _ in items if "/data/" in n][-1])


def flip_data_byte(path, name):
    buf = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as z:
        at = z.getinfo(name).header_offset
    name_len, extra_len = struct.unpack_from("<HH", buf, at + 26)
    buf[at + 30 + name_len + extra_len] ^= 1
    open(path, "wb").write(bytes(buf))


# ---- fuzz seeds (tests/fuzz/fuzz_torch_archive.c): byte 0 is 0: a whole archive in memory; 2: the
# same as a file; 1: [count][u16 sizes...] then a data.pkl, which the target wraps into an
# archive of storages 0..count-1 of those sizes

def write_seeds():
    os.makedirs(CORPUS, exist_ok=True)
    for name in ["basic", "proto4", "module", "params", "deflated", "zip64"]:
        data = open(f"{OUT}/{name}.bin", "rb").read()
        open(f"{CORPUS}/zip-{name}", "wb").write(b"\x00" + data)
    open(f"{CORPUS}/file-basic", "wb").write(b"\x02" + open(f"{OUT}/basic.bin", "rb").read())
    for name in ["basic", "proto4", "module", "params"]:
        items = dict((n.split("/", 1)[1], d) for n, d in entries(f"{OUT}/{name}.bin"))
        keys = sorted(int(k[5:]) for k in items if k.startswith("data/"))
        assert keys == list(range(len(keys))) and len(keys) <= 16
        head = bytes([1, len(keys)]) + b"".join(struct.pack("<H", len(items[f"data/{k}"])) for k in keys)
        open(f"{CORPUS}/pickle-{name}", "wb").write(head + items["data.pkl"])
    # hand-made pickles with what torch's own rarely hold: every kind of value, each protocol,
    # and more than 256 memo entries (LONG_BINPUT, LONG_BINGET)
    w = Tensor(Storage(torch.FloatStorage, "0", 6), 0, [2, 3], [3, 1])
    h = Tensor(Storage(torch.HalfStorage, "1", 4), 1, [3], [1])
    values = [0, 1, 300, 70000, -5, 1 << 40, -(1 << 63), 2.5, None, True, False, "text", ("t",), {"k": "v"}, []]
    head = bytes([1, 2]) + struct.pack("<HH", 24, 8)
    for protocol in [2, 3, 4, 5]:
        pkl = pickled(collections.OrderedDict([("w", w), ("h", h), ("values", values)]), protocol)
        open(f"{CORPUS}/pickle-values{protocol}", "wb").write(head + pkl)
    many = {f"t{i}": Tensor(Storage(torch.FloatStorage, "0", 6), i % 6, [1], [1]) for i in range(40)}
    many["t39_again"] = many["t39"]
    open(f"{CORPUS}/pickle-memo", "wb").write(head + pickled(many))


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".bin") or f.endswith(".expected"):
            os.remove(f"{OUT}/{f}")
    write_valid()
    write_hostile()
    write_seeds()


if __name__ == "__main__":
    main()
