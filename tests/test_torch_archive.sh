#!/usr/bin/env bash
# tests/test_torch_archive.sh: torch_archive.c, the reader of torch.save files, through
# tests/torch_dump. Each valid file of tests/torch/ must give exactly its .expected dump (names,
# dtypes, shapes and hashes of the bytes, as torch.load of that file gives them; written by
# tools/make_torch_fixtures.py, which needs PyTorch: CI only reads the committed files), read
# from the file and from memory. Each hostile file must be refused with one line naming the
# problem, without a crash or a sanitizer report.
source tests/lib.sh
D=tests/torch

# tests/torch_dump for ./mamba, tests/torch_dump-asan for ./mamba-asan (ASan + UBSan)
VARIANT=${MAMBA##*/mamba}
DUMP=tests/torch_dump$VARIANT
[ -x "$DUMP" ] || check "build $DUMP" make -s "$DUMP"

for want in $D/*.expected; do
    f=${want%.expected}.bin
    check "$(basename $f): tensors as torch.load reads them" diff <($DUMP $f 2>&1) $want
    check "$(basename $f): the same from memory (torch_archive_open_bytes)" diff <($DUMP --bytes $f 2>&1) $want
done

# refused: file, then a phrase of the one-line reason
while read -r name phrase; do
    expect_error "refused: $name" "$phrase" $DUMP $D/$name
    expect_error "refused from memory: $name" "$phrase" $DUMP --bytes $D/$name
done <<'EOF'
bad_system.bin        pickle global (posix|os)\.system is not allowed
bad_opcode.bin        pickle opcode 0x64 \('d'\) at offset 1 is not supported
bad_numel.bin         data/0 has 24 bytes, but its 100 elements of torch\.FloatStorage need 400
bad_offset.bin        tensor w: elements \[5, 5 \+ 4\) lie outside its storage of 6 elements
bad_transposed.bin    tensor t is non-contiguous \(stride \(1, 3\) for size \(3, 2\)\)
bad_legacy.bin        is a legacy \(non-zip\) torch file; re-save it with torch >= 1\.6
bad_missing.bin       storage entry archive/data/1 is missing
bad_duplicate.bin     names tensor a twice
bad_huge.bin          tensor w is implausibly large \(over 2\^40 elements\)
bad_5d.bin            tensor w has 5 dimensions \(at most 4\)
bad_list.bin          data\.pkl holds a list, not a dict of tensors
bad_big_endian.bin    byteorder says 'big': only little-endian files are read
bad_crc.bin           cannot read basic/data/6: CRC error
bad_uint16.bin        pickle global torch\._utils\._rebuild_tensor_v3 is not allowed
EOF

# made here: cut short, empty, not a zip, safetensors, a folder, a missing file
head -c 2000 $D/basic.bin >$TMP/truncated.bin
head -c 2 $D/basic.bin >$TMP/two_bytes.bin
: >$TMP/empty.bin
echo "plain text, not a checkpoint" >$TMP/text.bin
printf '\x10\x00\x00\x00\x00\x00\x00\x00{"__metadata__":{}}' >$TMP/model.safetensors
python3 - $D/basic.bin $TMP/nopickle.bin <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as src, zipfile.ZipFile(sys.argv[2], "w") as dst:
    for i in src.infolist():
        if not i.filename.endswith("data.pkl"):
            dst.writestr(i, src.read(i))
PY
while read -r name phrase; do
    expect_error "refused: $name" "$phrase" $DUMP $TMP/$name
    expect_error "refused from memory: $name" "$phrase" $DUMP --bytes $TMP/$name
done <<'EOF'
truncated.bin       truncated\.bin: is a damaged or truncated zip archive \(libzip: 
two_bytes.bin       is not a torch\.save file \(not a zip archive\)
empty.bin           empty\.bin: is empty
text.bin            is not a torch\.save file \(not a zip archive\)
model.safetensors   is a safetensors file, not a torch\.save zip archive
nopickle.bin        has no <folder>/data\.pkl: not a torch\.save archive
EOF
# the limits, on pickles written here byte by byte (no torch needed)
python3 - $TMP <<'PY'
import struct, sys, zipfile
out = sys.argv[1]
def zipped(name, pkl, storages={}, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(f"{out}/{name}", "w", compression) as z:
        z.writestr("archive/data.pkl", pkl)
        for k, v in storages.items():
            z.writestr(f"archive/data/{k}", v)
def s(text):  # BINUNICODE
    return b"X" + struct.pack("<I", len(text)) + text.encode()
pid = b"(" + s("storage") + b"ctorch\nFloatStorage\n" + s("0") + s("cpu") + b"K\x06tq\x01"
rebuild = b"ctorch._utils\n_rebuild_tensor_v2\nq\x00"
def tensor(first):   # a [1] tensor at offset 0 of storage 0 (six floats)
    return (rebuild if first else b"h\x00") + b"(" + (pid if first else b"h\x01") + b"QK\x00K\x01\x85K\x01\x85\x89NtR"
n = 32769
zipped("many_tensors.bin", b"\x80\x02}(" + b"".join(s(f"t{i}") + tensor(i == 0) for i in range(n)) + b"u.", {"0": bytes(24)})
zipped("deep_marks.bin", b"\x80\x02" + b"(" * 65)
zipped("deep_stack.bin", b"\x80\x02" + b"N" * 300000)
zipped("memo_index.bin", b"\x80\x02Nr" + struct.pack("<I", 1 << 20))
zipped("memo_unset.bin", b"\x80\x02h\x05")
zipped("string_cut.bin", b"\x80\x02X\xff\x00\x00\x00abc")
zipped("no_stop.bin", b"\x80\x02}")
zipped("long_int.bin", b"\x80\x02\x8a\x09" + bytes(9))
zipped("proto6.bin", b"\x80\x06}.")
zipped("eval.bin", b"\x80\x02c__builtin__\neval\n.")
zipped("big_pickle.bin", b"\x80\x02" + b"N" * (64 << 20) + b".", compression=zipfile.ZIP_DEFLATED)
zipped("bad_pid.bin", b"\x80\x02}(" + s("w") + b"(" + s("storage") + b"tQ" + b"u.")
PY
while read -r name phrase; do
    expect_error "refused: $name" "$phrase" $DUMP $TMP/$name
done <<'EOF'
many_tensors.bin    data\.pkl has more than 32768 tensors \(the limit\)
deep_marks.bin      nests more than 64 MARKs \(the limit\)
deep_stack.bin      stack grows deeper than 262144 \(the limit\)
memo_index.bin      memo index 1048576 is too large
memo_unset.bin      memo entry 5 is read before it is written
string_cut.bin      data\.pkl is truncated: the opcode at offset 2 needs 255 more bytes
no_stop.bin         data\.pkl is truncated: it ends without a STOP opcode
long_int.bin        integer of 9 bytes at offset 2 \(at most 8\)
proto6.bin          pickle protocol 6 is not supported
eval.bin            pickle global __builtin__\.eval is not allowed
big_pickle.bin      data\.pkl is 67108867 bytes \(the limit is 67108864\)
bad_pid.bin         persistent id at offset [0-9]+ is not \('storage', type, key, location, numel\)
EOF
# 32768 tensors are fine (the same pickle, one tensor fewer)
python3 - $TMP <<'PY'
import sys, zipfile
with zipfile.ZipFile(f"{sys.argv[1]}/many_tensors.bin") as z:
    pkl, data = z.read("archive/data.pkl"), z.read("archive/data/0")
cut = pkl.rfind(b"X\x06\x00\x00\x00t32768")   # the last key
with zipfile.ZipFile(f"{sys.argv[1]}/most_tensors.bin", "w") as z:
    z.writestr("archive/data.pkl", pkl[:cut] + b"u.")
    z.writestr("archive/data/0", data)
PY
check "32768 tensors (the limit) are read" test "$($DUMP $TMP/most_tensors.bin | wc -l)" = 32768
expect_error "refused: a folder" "is not a regular file" $DUMP $D
expect_error "refused: a missing file" "no-such\.bin: cannot open: No such file" $DUMP $TMP/no-such.bin

# a valid file cut short anywhere: refused with one line, never a crash
cuts() {
    local f=$1 n i rc
    n=$(stat -c %s $f)
    for i in $(seq 0 97 $((n - 1))); do
        head -c $i $f >$TMP/cut.bin
        $DUMP $TMP/cut.bin >/dev/null 2>$TMP/cut.err; rc=$?
        if [ $rc -ne 1 ] || [ "$(wc -l <$TMP/cut.err)" -ne 1 ]; then echo "cut at $i: exit $rc"; cat $TMP/cut.err; return 1; fi
    done
}
check "cuts of module.bin every 97 bytes: one-line refusals" cuts $D/module.bin
