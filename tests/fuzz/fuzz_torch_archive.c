/* libFuzzer target: torch_archive.c (torch.save files). Byte 0 chooses what the rest is:
 *   0 mod 4  a whole archive, read with torch_archive_open_bytes
 *   2 mod 4  the same, as a file (a memfd) read with torch_archive_open
 *   odd      [count][count × u16 size] data.pkl: the pickle alone, which this target wraps into a
 *            valid stored archive with storages archive/data/0..count-1 of those sizes (mod 4096,
 *            count mod 17), so that mutations reach the pickle interpreter instead of failing the
 *            zip's CRC check
 * Every tensor of an archive that opens is read whole; a failure must come with a one-line
 * reason. */
#include "fuzz_common.h"
#include "mamba_unity.h"

volatile uint8_t fuzz_sink;   /* reads that must not be optimized away */

static void check_reason(const char *err) {
    if (!err[0] || strchr(err, '\n')) {
        fprintf(fuzz_stderr(), "fuzz: a failure without a one-line reason\n");
        abort();
    }
}

static void read_all(TorchArchive *a) {
    char err[512];
    for (int i = 0; i < torch_archive_count(a); i++) {
        const TorchTensor *t = torch_archive_tensor(a, i);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        if (!t->name || t->ndim < 0 || t->ndim > 4 || (t->dtype == DTYPE_F32 && t->bytes != 4 * numel) ||
            ((t->dtype == DTYPE_F16 || t->dtype == DTYPE_BF16) && t->bytes != 2 * numel))
            abort();
        err[0] = 0;
        const uint8_t *p = torch_archive_data(a, i, err, sizeof err);
        if (!p) check_reason(err);
        else if (t->bytes) fuzz_sink ^= p[0] ^ p[t->bytes - 1];
    }
}

/* ---- a stored zip archive in memory */

static uint32_t crc32_of(const uint8_t *p, size_t n) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c >> 1 ^ (0xedb88320u & -(c & 1));
            table[i] = c;
        }
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xff] ^ c >> 8;
    return ~c;
}

typedef struct { uint8_t *b; size_t n, cap; } Bytes;

static void put(Bytes *o, const void *p, size_t n) {
    if (o->n + n > o->cap) {
        while (o->n + n > o->cap) o->cap = o->cap ? 2 * o->cap : 4096;
        if (!(o->b = realloc(o->b, o->cap))) abort();
    }
    memcpy(o->b + o->n, p, n);
    o->n += n;
}

static void put_le(Bytes *o, uint64_t v, int n) {
    for (int i = 0; i < n; i++) {
        uint8_t c = (uint8_t)(v >> (8 * i));
        put(o, &c, 1);
    }
}

typedef struct { const char *name; const uint8_t *data; size_t n; } Entry;

/* [local header, name, data]... [central header, name]... [end record] */
static void write_zip(Bytes *o, const Entry *e, int count) {
    uint32_t offset[20], crc[20];
    for (int i = 0; i < count; i++) {
        offset[i] = (uint32_t)o->n, crc[i] = crc32_of(e[i].data, e[i].n);
        put_le(o, 0x04034b50, 4), put_le(o, 20, 2), put_le(o, 0, 2), put_le(o, 0, 2), put_le(o, 0, 2);
        put_le(o, 0x21, 2), put_le(o, crc[i], 4), put_le(o, e[i].n, 4), put_le(o, e[i].n, 4);
        put_le(o, strlen(e[i].name), 2), put_le(o, 0, 2);
        put(o, e[i].name, strlen(e[i].name));
        put(o, e[i].data, e[i].n);
    }
    size_t cd = o->n;
    for (int i = 0; i < count; i++) {
        put_le(o, 0x02014b50, 4), put_le(o, 20, 2), put_le(o, 20, 2), put_le(o, 0, 2), put_le(o, 0, 2);
        put_le(o, 0, 2), put_le(o, 0x21, 2), put_le(o, crc[i], 4);
        put_le(o, e[i].n, 4), put_le(o, e[i].n, 4), put_le(o, strlen(e[i].name), 2);
        put_le(o, 0, 2), put_le(o, 0, 2), put_le(o, 0, 2), put_le(o, 0, 2), put_le(o, 0, 4), put_le(o, offset[i], 4);
        put(o, e[i].name, strlen(e[i].name));
    }
    size_t cd_bytes = o->n - cd;
    put_le(o, 0x06054b50, 4), put_le(o, 0, 2), put_le(o, 0, 2), put_le(o, count, 2), put_le(o, count, 2);
    put_le(o, cd_bytes, 4), put_le(o, cd, 4), put_le(o, 0, 2);
}

/* The archive around a fuzzed pickle; its storages hold a byte pattern. */
static void wrap_pickle(Bytes *o, const uint8_t *data, size_t size) {
    static uint8_t pattern[16 * 4096];
    static char names[16][32];
    if (!pattern[1])
        for (size_t i = 0; i < sizeof pattern; i++) pattern[i] = (uint8_t)(i * 131 + 7);
    int count = size ? data[0] % 17 : 0;
    size_t at = 1;
    Entry e[20] = {{"archive/byteorder", (const uint8_t *)"little", 6}};
    for (int i = 0; i < count; i++, at += 2) {
        size_t n = at + 1 < size ? (size_t)(data[at] | data[at + 1] << 8) % 4096 : 0;
        snprintf(names[i], sizeof names[i], "archive/data/%d", i);
        e[1 + i] = (Entry){names[i], pattern + 4096 * i, n};
    }
    if (at > size) at = size;
    e[1 + count] = (Entry){"archive/data.pkl", data + at, size - at};
    write_zip(o, e, count + 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char err[512] = "";
    TorchArchive *a;
    Bytes zip = {0};
    int fd = -1;
    if (data[0] & 1) {
        wrap_pickle(&zip, data + 1, size - 1);
        a = torch_archive_open_bytes(zip.b, zip.n, err, sizeof err);
    } else if (data[0] & 2) {
        a = torch_archive_open(fuzz_memfd(data + 1, size - 1, &fd), err, sizeof err);
    } else {
        a = torch_archive_open_bytes(data + 1, size - 1, err, sizeof err);
    }
    if (a) read_all(a);
    else check_reason(err);
    if (!a && (data[0] & 1) && !strncmp(err, "is a damaged or truncated zip archive", 37)) {
        fprintf(fuzz_stderr(), "fuzz: the archive this target wrapped was refused: %s\n", err);
        abort();
    }
    torch_archive_close(a);
    free(zip.b);
    if (fd >= 0) close(fd);
    fuzz_sweep(0);   /* torch_archive.c never dies: it must have freed everything */
    return 0;
}
