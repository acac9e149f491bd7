/*
 * The engine file container: one self-describing file per rank that holds
 * everything serving needs (docs/engine-format.md is the reference).
 *
 *     offset 0      a 4096-byte binary header: magic "ANVILENG", version,
 *                   where the manifest and the data are, the file's size,
 *                   checksums of the manifest and of the header itself
 *     offset 4096   the manifest: UTF-8 JSON, zero-padded to a 4096 boundary
 *     then          the data section: each stored tensor at a 256-aligned
 *                   offset, zeros between them
 *
 * This layer knows the manifest's "format", "format_version",
 * "anvil_version" and "tensors" (the weight table: name, kind, shape,
 * offset, bytes, xxh64, optional scales). Everything else in the manifest
 * (model config, build options, ops and fusion plan, tokenizer, ...) belongs
 * to the builder: the writer stores the caller's object as it is, and the
 * reader hands it back (anvil_engine_file_manifest).
 *
 * Writing, streamed and multi-threaded (no tensor needs to exist in memory
 * whole; the file appears at path only when complete):
 *
 *     anvil_engine_writer *w;
 *     TRY(anvil_engine_writer_create("/m/llama.engine", &w));
 *     int64_t shape[2] = {4096, 4096}, idx;
 *     TRY(anvil_engine_writer_add_tensor(w, "wq", ANVIL_ENGINE_KIND_BF16, 2, shape, &idx));
 *     ...
 *     TRY(anvil_engine_writer_finish(w, manifest, fill, user, 8, progress, NULL)); // frees w
 *
 * Reading (the header and the whole manifest are validated at open; tensor
 * checksums are checked by anvil_engine_file_verify, which reads every byte):
 *
 *     anvil_engine_file *f;
 *     TRY(anvil_engine_file_open("/m/llama.engine", ANVIL_ST_READ, &f));
 *     const anvil_engine_tensor *t = anvil_engine_file_find(f, "wq");
 *     TRY(anvil_engine_file_read(f, t->index, 0, dst, t->bytes));
 *     anvil_engine_file_close(f);
 *
 * An open file is immutable: reads, finds and verify may run on several
 * threads at once. A writer belongs to one thread (it starts its own).
 */
#ifndef ANVIL_IO_ENGINE_FILE_H
#define ANVIL_IO_ENGINE_FILE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "anvil/dtype.h"
#include "anvil/status.h"
#include "io/safetensors.h" /* anvil_st_access */

/* ---------------------------------------------------------------- format */

#define ANVIL_ENGINE_MAGIC         "ANVILENG" /* 8 bytes, no NUL in the file */
#define ANVIL_ENGINE_VERSION_MAJOR 1u
#define ANVIL_ENGINE_VERSION_MINOR 0u
#define ANVIL_ENGINE_HEADER_SIZE   4096u /* reserved for the header; the manifest follows */
#define ANVIL_ENGINE_HEADER_FIELDS 88u   /* bytes of it that 1.x defines (the rest is zero) */
#define ANVIL_ENGINE_SECTION_ALIGN 4096u /* the manifest and the data section start on this */
#define ANVIL_ENGINE_TENSOR_ALIGN  256u  /* every tensor's offset in the data section */
#define ANVIL_ENGINE_MAX_DIMS      4
#define ANVIL_ENGINE_MAX_MANIFEST  ((uint64_t)1 << 30) /* 1 GiB: far above any tokenizer */
#define ANVIL_ENGINE_CHUNK         ((size_t)16 << 20)  /* the writer's and verify's unit of work */

/* Storage kinds. The values are this enum's, never stored: the manifest
 * spells them ("bf16"). fp8_e4m3, int8 and int4 are accepted and validated
 * now so that quantized engines need no format change. */
typedef enum anvil_engine_kind {
    ANVIL_ENGINE_KIND_F32 = 0,
    ANVIL_ENGINE_KIND_BF16,
    ANVIL_ENGINE_KIND_F16,
    ANVIL_ENGINE_KIND_FP8_E4M3,
    ANVIL_ENGINE_KIND_INT8,
    ANVIL_ENGINE_KIND_INT4, /* two per byte along the last dim, low nibble first; bytes = ceil(numel / 2) */
    ANVIL_ENGINE_KIND_U8,   /* int4 zero points (format 1.1) */
    ANVIL_ENGINE_KIND_I32,  /* column permutations (format 1.1) */
    ANVIL_ENGINE_KIND_COUNT,
} anvil_engine_kind;

/* The manifest's spelling ("f32", "bf16", "f16", "fp8_e4m3", "int8",
 * "int4", "u8", "i32"); "?" for an invalid value. */
const char *anvil_engine_kind_name(anvil_engine_kind k);

/* The inverse of anvil_engine_kind_name (exact spelling); 0, or -1 when
 * unknown. */
int anvil_engine_kind_parse(const char *name, anvil_engine_kind *out);

/* Bytes of numel elements of kind k (int4: ceil(numel / 2)); 0 when that
 * overflows or k is invalid (no valid tensor has 0 bytes). */
uint64_t anvil_engine_kind_bytes(anvil_engine_kind k, uint64_t numel);

/* The kind of an element type (F32, BF16, F16, F8_E4M3, I8, U4, U8, I32),
 * and back; 0, or -1 when there is none. */
int anvil_engine_kind_from_dtype(anvil_dtype dt, anvil_engine_kind *out);
int anvil_engine_kind_to_dtype(anvil_engine_kind k, anvil_dtype *out);

/* The header's fields as numbers (all offsets absolute in the file). */
typedef struct anvil_engine_header {
    uint32_t version_major, version_minor;
    uint32_t header_size;
    uint64_t manifest_offset, manifest_length; /* the JSON text, without its padding */
    uint64_t data_offset, data_length;
    uint64_t file_size;
    uint64_t manifest_xxh64;
    uint32_t flags; /* 0 in 1.0; any bit set is refused (a feature this anvil lacks) */
} anvil_engine_header;

/* Writes h as the 4096 bytes of a header (magic, fields, the header's own
 * checksum, zero padding). The writer uses it; tests use it to make files
 * whose header is consistent but whose contents are not. */
void anvil_engine_header_encode(const anvil_engine_header *h, uint8_t out[ANVIL_ENGINE_HEADER_SIZE]);

/* The fields of a header's first ANVIL_ENGINE_HEADER_FIELDS bytes, as they
 * are (nothing is checked: the reader does that), and the header checksum
 * stored in them. */
void anvil_engine_header_decode(const uint8_t in[ANVIL_ENGINE_HEADER_FIELDS], anvil_engine_header *h,
                                uint64_t *header_xxh64);

/* XXH64 (seed 0) of len bytes: the checksum of the manifest and of every
 * tensor. */
uint64_t anvil_engine_xxh64(const void *data, size_t len);

/* The checksum a header's bytes should store: XXH64 of the 80 bytes before
 * it. */
uint64_t anvil_engine_header_xxh64(const uint8_t in[ANVIL_ENGINE_HEADER_FIELDS]);

/* Called as work is done: bytes done of bytes in all, never from two
 * threads at once and always from the thread that called the writer or
 * verify. A nonzero return stops the work (ANVIL_ERR_CANCELLED). */
typedef int (*anvil_engine_progress_fn)(void *user, size_t bytes_done, size_t bytes_total);

/* ---------------------------------------------------------------- writer */

typedef struct anvil_engine_writer anvil_engine_writer;

/*
 * Starts an engine file at path. The bytes go to a new file
 * "path.tmp-XXXXXX" in the same folder, renamed over path only when
 * anvil_engine_writer_finish succeeds: a failure, a cancel or a crash never
 * leaves a partial engine at path, and a file already there stays as it
 * was until the rename (a crash may leave the temporary file behind;
 * everything else removes it). *out is NULL on failure.
 */
anvil_status anvil_engine_writer_create(const char *path, anvil_engine_writer **out);

/*
 * Declares the next tensor: name (unique, non-empty, UTF-8; copied), kind,
 * n_dims (1 to 4) dims of shape (each > 0; copied). Tensors are laid out in
 * declaration order, each at the next 256-byte boundary; *index (may be
 * NULL) is the tensor's index (0, 1, ...), which the fill callback and the
 * reader use. ANVIL_ERR_INVALID_ARG for a bad argument; the writer stays
 * usable.
 */
anvil_status anvil_engine_writer_add_tensor(anvil_engine_writer *w, const char *name, anvil_engine_kind kind,
                                            int n_dims, const int64_t *shape, int64_t *index);

/* Records that tensor `scales` holds the scales of tensor `index` (the
 * manifest entry's "scales": {"tensor": name}); both already declared and
 * different. What the scales mean is the builder's (set_scales_info). */
anvil_status anvil_engine_writer_set_scales(anvil_engine_writer *w, int64_t index, int64_t scales);

/* The other keys of tensor `index`'s "scales" object (a quantized
 * weight's group, zero points, activation scheme: docs/quantization.md),
 * copied from the object info; set_scales first. The reader checks only
 * "tensor"; the builder checks the rest. */
anvil_status anvil_engine_writer_set_scales_info(anvil_engine_writer *w, int64_t index, const json_t *info);

/*
 * Produces bytes [offset, offset + len) of tensor `index` into dst (len at
 * most ANVIL_ENGINE_CHUNK; chunks of one tensor come in order, from one
 * thread). Called from the writer's threads, several tensors at once: it
 * must be safe for that. A status other than ANVIL_OK stops the write and is
 * returned by anvil_engine_writer_finish with its message.
 */
typedef anvil_status (*anvil_engine_fill_fn)(void *user, int64_t index, size_t offset, void *dst, size_t len);

/*
 * Writes the file and frees w, whatever the result. manifest (borrowed; NULL
 * means {}) is the caller's JSON object: the writer sets "format",
 * "format_version", "anvil_version" and "tensors" in it (replacing any such
 * keys: a manifest read from another engine can be passed back) and stores
 * it. The data comes from fill, up to n_threads tensors at a time (< 1: one;
 * the largest tensors go first), each hashed with XXH64 as it streams; then
 * the manifest, then the header, then the rename over path. progress (may be
 * NULL) sees the data bytes; its nonzero return is ANVIL_ERR_CANCELLED.
 * On any failure nothing is left at path (an older file there is kept) and
 * the temporary file is removed.
 */
anvil_status anvil_engine_writer_finish(anvil_engine_writer *w, json_t *manifest, anvil_engine_fill_fn fill,
                                        void *user, int n_threads, anvil_engine_progress_fn progress,
                                        void *progress_user);

/* Frees w and removes its temporary file. NULL is a no-op. */
void anvil_engine_writer_abort(anvil_engine_writer *w);

/* ---------------------------------------------------------------- reader */

typedef struct anvil_engine_file anvil_engine_file;

typedef struct anvil_engine_tensor {
    const char *name; /* borrowed from the file */
    int64_t index;    /* its position in the weight table */
    anvil_engine_kind kind;
    int n_dims;                           /* 1 to 4 */
    int64_t shape[ANVIL_ENGINE_MAX_DIMS]; /* unused dims are 0 */
    uint64_t offset; /* of its first byte in the file (data offset + its manifest "offset") */
    size_t bytes;
    uint64_t xxh64;      /* of its bytes, as the manifest says */
    int64_t scales;      /* index of the tensor holding its scales, or -1 */
    const void *data;    /* ANVIL_ST_MMAP and memory images: its bytes (256-aligned); else NULL */
    const json_t *entry; /* its object in the manifest's "tensors" (borrowed; other keys are the builder's) */
} anvil_engine_tensor;

/*
 * Opens and validates an engine file: the header (magic, version, checksum,
 * every offset and length against each other and the file's real size),
 * the manifest (checksum, JSON, the keys this layer knows) and the weight
 * table (unique names, kinds, shapes x kind == bytes, 256-aligned offsets
 * inside the data section, no overlaps, scales naming a tensor), all before
 * returning. Only regular files are opened (a FIFO is refused without
 * waiting). access as for safetensors: ANVIL_ST_MMAP maps the whole file
 * (tensor data in place; a file truncated while mapped raises SIGBUS),
 * ANVIL_ST_READ reads the header and manifest and keeps the file open for
 * pread (a file changed underneath is an error at the next read). *out is
 * NULL on failure; the message names the file and what is wrong.
 */
anvil_status anvil_engine_file_open(const char *path, anvil_st_access access, anvil_engine_file **out);

/* The same over an image in memory (borrowed; must outlive the handle).
 * For the fuzzer and tests; tensors have data pointers into it. */
anvil_status anvil_engine_file_open_memory(const void *data, size_t len, anvil_engine_file **out);

void anvil_engine_file_close(anvil_engine_file *f); /* NULL is a no-op */

/* The path given to open ("<memory>" for images); borrowed. */
const char *anvil_engine_file_path(const anvil_engine_file *f);

/* The header as read (borrowed). */
const anvil_engine_header *anvil_engine_file_header(const anvil_engine_file *f);

/* The whole manifest object (borrowed, valid until close; do not modify:
 * the tensors' names and entries point into it). */
const json_t *anvil_engine_file_manifest(const anvil_engine_file *f);

int64_t anvil_engine_file_count(const anvil_engine_file *f);
/* Tensor i in weight-table order, or NULL when i is out of range. */
const anvil_engine_tensor *anvil_engine_file_tensor(const anvil_engine_file *f, int64_t i);
/* By name (binary search), or NULL. */
const anvil_engine_tensor *anvil_engine_file_find(const anvil_engine_file *f, const char *name);

/* Copies bytes [offset, offset + len) of tensor i into dst, with memcpy when
 * mapped, else pread. A range outside the tensor is ANVIL_ERR_INVALID_ARG; a
 * file that no longer holds the bytes is ANVIL_ERR_IO ("changed while in
 * use"). Safe from several threads. */
anvil_status anvil_engine_file_read(const anvil_engine_file *f, int64_t i, size_t offset, void *dst,
                                    size_t len);

/* Recomputes every tensor's XXH64 and compares it with the manifest. A
 * mismatch is ANVIL_ERR_FORMAT naming the first such tensor in table order
 * ("tensor 'X': checksum mismatch (the file is damaged)"). progress (may be
 * NULL) as for the writer, over every tensor byte. */
anvil_status anvil_engine_file_verify(const anvil_engine_file *f, anvil_engine_progress_fn progress,
                                      void *user);

/* ANVIL_ST_READ files: ANVIL_ERR_IO when the file's size or modification
 * time changed since it was opened; ANVIL_OK otherwise (and when mapped). */
anvil_status anvil_engine_file_check_unchanged(const anvil_engine_file *f);

/* 1 when path is a regular file that starts with the engine magic (a cheap
 * test, so that commands taking a model folder also take an engine), else 0.
 * Never blocks on a FIFO; sets no error. */
int anvil_engine_file_is_engine(const char *path);

#endif
