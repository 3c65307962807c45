// sp_wrapper.cc: extern "C" functions over sentencepiece::SentencePieceProcessor. Every C++
// exception stops here: the C side only sees NULL / -1 and a one-line reason.
#include "sp_wrapper.h"

#include <sentencepiece_processor.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

struct SpModel {
    sentencepiece::SentencePieceProcessor sp;
};

static void set_err(char *err, size_t err_len, const char *what, const char *why) {
    if (err && err_len) snprintf(err, err_len, "%s (%s)", what, why);
}

// SentencePiece trusts the normalization rules in a model (precompiled_charsmap: a darts-clone
// double array, then NUL-terminated replacement strings): fuzzing found crafted rules that make
// its Normalizer read out of bounds (tests/fuzz/corpus/sentencepiece/regress-charsmap-*). So
// every charsmap in the model is checked first, on the protobuf wire format: each unit's children
// (index ^ offset ^ label, label < 256) lie inside the array, a node with a leaf leads to a
// value unit, and each value points inside the strings, which end with a NUL. (A value unit's
// label has its top bit set, so a traversal stops there; but every search starts by following
// the root's offset, so the root must be a node.)
static bool read_varint(const uint8_t *&p, const uint8_t *end, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
        uint8_t b = *p++;
        *v |= static_cast<uint64_t>(b & 0x7F) << shift;
        if (!(b & 0x80)) return true;
    }
    return false;
}

static bool charsmap_ok(const uint8_t *p, size_t n) {
    if (n == 0) return true;                    // no rules: identity
    if (n < 4) return false;
    uint32_t trie_bytes = p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24;
    if (trie_bytes % 4 || trie_bytes == 0 || trie_bytes > n - 4 || n - 4 - trie_bytes == 0) return false;
    size_t units = trie_bytes / 4, strings = n - 4 - trie_bytes;
    const uint8_t *u = p + 4;
    if (u[trie_bytes + strings - 1] != 0) return false;
    auto unit_at = [u](size_t i) {
        return u[4 * i] | u[4 * i + 1] << 8 | u[4 * i + 2] << 16 | static_cast<uint32_t>(u[4 * i + 3]) << 24;
    };
    if (unit_at(0) >> 31) return false;
    for (size_t i = 0; i < units; i++) {
        uint32_t unit = unit_at(i);
        if (unit >> 31) {                       // a value unit: an offset into the strings
            if ((unit & 0x7FFFFFFFu) >= strings) return false;
            continue;                           // (its label never matches: no children)
        }
        uint64_t offset = static_cast<uint64_t>(unit >> 10) << ((unit & (1u << 9)) >> 6);
        if (((i ^ offset) | 0xFF) >= units) return false;
        if (((unit >> 8) & 1) && !(unit_at(i ^ offset) >> 31)) return false;   // has_leaf: a value unit
    }
    return true;
}

// Walks a message; in fields 3 and 5 (normalizer_spec, denormalizer_spec) checks field 2.
static bool rules_ok(const uint8_t *p, const uint8_t *end, int depth) {
    while (p < end) {
        uint64_t key, len;
        if (!read_varint(p, end, &key)) return false;
        switch (key & 7) {
        case 0: if (!read_varint(p, end, &len)) return false; break;
        case 1: if (end - p < 8) return false; p += 8; break;
        case 5: if (end - p < 4) return false; p += 4; break;
        case 2:
            if (!read_varint(p, end, &len) || len > static_cast<uint64_t>(end - p)) return false;
            if (depth == 0 && ((key >> 3) == 3 || (key >> 3) == 5) && !rules_ok(p, p + len, 1)) return false;
            if (depth == 1 && (key >> 3) == 2 && !charsmap_ok(p, len)) return false;
            p += len;
            break;
        default: return false;
        }
    }
    return true;
}

SpModel *sp_load(const void *data, size_t n, char *err, size_t err_len) {
    const uint8_t *bytes = static_cast<const uint8_t *>(data);
    if (!rules_ok(bytes, bytes + n, 0)) {
        set_err(err, err_len, "not a valid SentencePiece model", "malformed protobuf or normalization rules");
        return nullptr;
    }
    SpModel *m = nullptr;
    try {
        m = new SpModel;
        auto st = m->sp.LoadFromSerializedProto(
            absl::string_view(static_cast<const char *>(data), n));
        if (!st.ok()) {
            // Messages read "file.cc(line) [failed condition] reason"; keep the reason.
            std::string why = st.message();
            size_t at = why.find("] ");
            why = at == std::string::npos ? why : why.substr(at + 2);
            why = why.substr(0, why.find('\n'));
            if (why.empty() || why == " ") why = "its protobuf does not parse";
            set_err(err, err_len, "not a valid SentencePiece model", why.c_str());
            delete m;
            return nullptr;
        }
        return m;
    } catch (const std::exception &e) {
        // e.g. darts_clone's "zero-length key" while building the piece index: found by fuzzing
        // (tests/fuzz/corpus/sentencepiece/regress-exception-leak), where m used to leak
        delete m;
        set_err(err, err_len, "SentencePiece model", e.what());
        return nullptr;
    }
}

void sp_free(SpModel *m) { delete m; }

int sp_piece_count(const SpModel *m) { return m->sp.GetPieceSize(); }
int sp_bos_id(const SpModel *m) { return m->sp.bos_id(); }
int sp_eos_id(const SpModel *m) { return m->sp.eos_id(); }
int sp_pad_id(const SpModel *m) { return m->sp.pad_id(); }

const char *sp_id_to_piece(const SpModel *m, int id) { return m->sp.IdToPiece(id).c_str(); }

int sp_piece_to_id(const SpModel *m, const char *piece) {
    // PieceToId answers unk_id for anything unknown; tell that apart from the unk piece itself.
    int id = m->sp.PieceToId(piece);
    if (id == m->sp.unk_id() && m->sp.IdToPiece(id) != piece) return -1;
    return id;
}

SpPieceType sp_piece_type(const SpModel *m, int id) {
    if (m->sp.IsUnknown(id)) return SP_UNKNOWN;
    if (m->sp.IsControl(id)) return SP_CONTROL;
    if (m->sp.IsUnused(id)) return SP_UNUSED;
    if (m->sp.IsByte(id)) return SP_BYTE;
    return SP_NORMAL;
}

int sp_encode(const SpModel *m, const char *text, size_t len, int bos, int **ids,
              size_t *n_ids, char *err, size_t err_len) {
    try {
        std::vector<int> v;
        auto st = m->sp.Encode(absl::string_view(text, len), &v);
        if (!st.ok()) {
            set_err(err, err_len, "SentencePiece encode", st.ToString().c_str());
            return -1;
        }
        if (bos >= 0) v.insert(v.begin(), bos);
        *ids = static_cast<int *>(malloc((v.size() + 1) * sizeof(int)));  // +1: never malloc(0)
        if (!*ids) throw std::bad_alloc();
        if (!v.empty()) memcpy(*ids, v.data(), v.size() * sizeof(int));
        *n_ids = v.size();
        return 0;
    } catch (const std::exception &e) {
        set_err(err, err_len, "SentencePiece encode", e.what());
        return -1;
    }
}

char *sp_decode(const SpModel *m, const int *ids, size_t n, size_t *len) {
    try {
        std::string s;
        if (!m->sp.Decode(std::vector<int>(ids, ids + n), &s).ok()) return nullptr;
        char *out = static_cast<char *>(malloc(s.size() + 1));
        if (!out) return nullptr;
        memcpy(out, s.c_str(), s.size() + 1);
        *len = s.size();
        return out;
    } catch (const std::exception &) {
        return nullptr;
    }
}
