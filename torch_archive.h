/* torch_archive.h: the tensors of a PyTorch torch.save file (pytorch_model.bin, torch >= 1.6),
 * read without running its pickle (torch_archive.c). */
#ifndef MAMBA_TORCH_ARCHIVE_H
#define MAMBA_TORCH_ARCHIVE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *name;          /* the state-dict key */
    int dtype;           /* DTYPE_F32 / DTYPE_F16 / DTYPE_BF16 (model.h), or -1 for any other storage type */
    int ndim;            /* 0..4 */
    uint64_t shape[4];
    uint64_t bytes;      /* numel * element size */
} TorchTensor;

typedef struct TorchArchive TorchArchive;

/* Opens (mmaps) a torch.save zip file and parses its pickle; NULL and a one-line reason in err on failure.
 * Every reason (here and from torch_archive_data) starts "PATH: ". */
TorchArchive *torch_archive_open(const char *path, char *err, size_t err_len);
/* The same over bytes in memory that outlive the archive (the fuzz target uses it). Reasons have
 * no prefix and read as if after a name ("is empty"): the caller puts its name for the bytes first. */
TorchArchive *torch_archive_open_bytes(const void *data, size_t n, char *err, size_t err_len);
int torch_archive_count(const TorchArchive *a);
const TorchTensor *torch_archive_tensor(const TorchArchive *a, int i);
/* The tensor's bytes (row-major, contiguous, little-endian), valid until the next call on a;
 * NULL and a reason in err on failure (storage entry missing, too short, read error). */
const void *torch_archive_data(TorchArchive *a, int i, char *err, size_t err_len);
void torch_archive_close(TorchArchive *a);

#endif
