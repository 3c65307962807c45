// sp_wrapper.cc: extern "C" functions over sentencepiece::SentencePieceProcessor. Every C++
// exception stops here: the C side only sees NULL / -1 and a one-line reason.
#include "sp_wrapper.h"

#include <sentencepiece_processor.h>

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

SpModel *sp_load(const void *data, size_t n, char *err, size_t err_len) {
    try {
        SpModel *m = new SpModel;
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
