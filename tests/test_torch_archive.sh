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
