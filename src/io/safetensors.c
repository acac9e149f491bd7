/*
 * Safetensors reader. The file is untrusted input: every number in the
 * header is checked before it is used to form a pointer (length against the
 * file, shape x element size against the byte span without overflow, the
 * span against the data section, no overlaps), so that a hostile or
 * truncated file is an error message and never an out-of-bounds read.
 * tests/fuzz/fuzz_safetensors.c holds us to that.
 */
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "core/error.h"
#include "core/json_util.h"

/* The reference implementation refuses headers above 100 MB; a header that
 * size would describe millions of tensors, so it is a broken file. */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

struct anvil_safetensors {
    char *path;          /* for messages; "<memory>" for images */
    const uint8_t *base; /* the whole file (mapped or an image), or its first 8 + header bytes (read) */
    size_t len;          /* the file's size */
    int has_data;        /* base holds the data section too */
    void *map; /* the mapping to unmap, or NULL */
    size_t map_len;
    uint8_t *head;       /* ANVIL_ST_READ: the header as read (base points here) */
    int fd;              /* ANVIL_ST_READ: kept open for anvil_st_read; else -1 */
    struct stat at_open; /* ANVIL_ST_READ: size and modification time when opened */
    anvil_st_tensor *tensors; /* in header order */
    int64_t n;
    const anvil_st_tensor **by_name; /* sorted by name */
    char *strings;                   /* names, metadata keys and values, NUL-separated */
    const char **meta;               /* key, value, key, value, ... into strings */
    int64_t n_meta;
};

/* ------------------------------------------------------------------ dtypes */

static const struct {
    const char *name;
    anvil_dtype dt;
} st_dtypes[] = {
    {"F32", ANVIL_DTYPE_F32}, {"F16", ANVIL_DTYPE_F16},         {"BF16", ANVIL_DTYPE_BF16},
    {"I32", ANVIL_DTYPE_I32}, {"I64", ANVIL_DTYPE_I64},         {"I8", ANVIL_DTYPE_I8},
    {"U8", ANVIL_DTYPE_U8},   {"F8_E4M3", ANVIL_DTYPE_F8_E4M3},
};

const char *anvil_st_dtype_name(anvil_dtype dt)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].dt == dt)
            return st_dtypes[i].name;
    return "?";
}

int anvil_st_dtype_parse(const char *name, anvil_dtype *out)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++) {
        if (strcmp(st_dtypes[i].name, name) == 0) {
            *out = st_dtypes[i].dt;
            return 0;
        }
    }
    return -1;
}

/* ------------------------------------------------------------ name index */

static int cmp_by_name(const void *a, const void *b)
{
    const anvil_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

void anvil_st_sort_by_name(const anvil_st_tensor **v, int64_t n)
{
    if (n > 1)
        qsort(v, (size_t)n, sizeof *v, cmp_by_name);
}

const anvil_st_tensor *anvil_st_lookup(const anvil_st_tensor *const *v, int64_t n, const char *name)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(v[mid]->name, name);
        if (c == 0)
            return v[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* --------------------------------------------------------------- parsing */

/* A non-negative JSON integer, as uint64. */
static anvil_status get_uint(const json_t *v, const char *path, const char *tensor, const char *field,
                             uint64_t *out)
{
    CHECK(json_is_integer(v), ANVIL_ERR_FORMAT, "%s: tensor \"%s\": %s must hold integers, got %s", path,
          tensor, field, anvil_json_type_name(v));
    json_int_t x = json_integer_value(v);
    CHECK(x >= 0, ANVIL_ERR_FORMAT, "%s: tensor \"%s\": %s holds a negative number (%lld)", path, tensor,
          field, (long long)x);
    *out = (uint64_t)x;
    return ANVIL_OK;
}

/* Byte range of one tensor inside the data section, for the overlap check. */
typedef struct span {
    uint64_t begin, end;
    int64_t index;
} span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* Checks one header entry and fills t (except name), recording its span. */
static anvil_status parse_entry(anvil_safetensors *f, const char *name, const json_t *e, const uint8_t *data,
                                uint64_t data_start, uint64_t data_len, anvil_st_tensor *t, span *sp)
{
    const char *path = f->path;
    CHECK(json_is_object(e), ANVIL_ERR_FORMAT, "%s: tensor \"%s\": entry must be an object, got %s", path,
          name, anvil_json_type_name(e));
    json_t *jdt = json_object_get(e, "dtype");
    json_t *jshape = json_object_get(e, "shape");
    json_t *joff = json_object_get(e, "data_offsets");
    CHECK(jdt != NULL, ANVIL_ERR_FORMAT, "%s: tensor \"%s\": missing \"dtype\"", path, name);
    CHECK(jshape != NULL, ANVIL_ERR_FORMAT, "%s: tensor \"%s\": missing \"shape\"", path, name);
    CHECK(joff != NULL, ANVIL_ERR_FORMAT, "%s: tensor \"%s\": missing \"data_offsets\"", path, name);
    CHECK(json_is_string(jdt), ANVIL_ERR_FORMAT, "%s: tensor \"%s\": dtype must be a string, got %s", path,
          name, anvil_json_type_name(jdt));
    CHECK(json_is_array(jshape), ANVIL_ERR_FORMAT, "%s: tensor \"%s\": shape must be an array, got %s", path,
          name, anvil_json_type_name(jshape));
    CHECK(json_is_array(joff) && json_array_size(joff) == 2, ANVIL_ERR_FORMAT,
          "%s: tensor \"%s\": data_offsets must be an array [begin, end]", path, name);

    const char *dts = json_string_value(jdt);
    CHECK(anvil_st_dtype_parse(dts, &t->dtype) == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: tensor \"%s\": dtype \"%s\" is not supported (anvil reads F32, F16, BF16, I32, I64, I8, U8, "
          "F8_E4M3)",
          path, name, dts);

    size_t nd = json_array_size(jshape);
    CHECK(nd <= ANVIL_MAX_DIMS, ANVIL_ERR_UNSUPPORTED,
          "%s: tensor \"%s\": %zu dimensions, anvil supports at most %d", path, name, nd, ANVIL_MAX_DIMS);
    t->n_dims = (int)nd;
    uint64_t numel = 1;
    int overflow = 0;
    for (size_t d = 0; d < nd; d++) {
        uint64_t dim = 0;
        TRY(get_uint(json_array_get(jshape, d), path, name, "shape", &dim));
        t->shape[d] = (int64_t)dim; /* <= INT64_MAX: it came from a json_int_t */
        if (dim != 0 && numel > (uint64_t)INT64_MAX / dim)
            overflow = 1; /* keep going: a later 0 makes it empty, but we still refuse it below */
        else
            numel *= dim;
    }
    for (int d = t->n_dims; d < ANVIL_MAX_DIMS; d++)
        t->shape[d] = 0;
    size_t esize = anvil_dtype_size(t->dtype);
    CHECK(!overflow && numel <= (uint64_t)INT64_MAX / esize, ANVIL_ERR_FORMAT,
          "%s: tensor \"%s\": shape is too large (its byte size overflows 64 bits)", path, name);
    uint64_t nbytes = numel * esize;

    uint64_t begin = 0, end = 0;
    TRY(get_uint(json_array_get(joff, 0), path, name, "data_offsets", &begin));
    TRY(get_uint(json_array_get(joff, 1), path, name, "data_offsets", &end));
    CHECK(begin <= end, ANVIL_ERR_FORMAT,
          "%s: tensor \"%s\": data_offsets [%llu, %llu] end before they begin", path, name,
          (unsigned long long)begin, (unsigned long long)end);
    CHECK(end <= data_len, ANVIL_ERR_FORMAT,
          "%s: tensor \"%s\": data_offsets [%llu, %llu] are out of bounds of the data section (%llu bytes)",
          path, name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_len);
    if (nbytes != end - begin) {
        char shape[96];
        anvil_shape_str(t->shape, t->n_dims, shape, sizeof shape);
        return ANVIL_FAIL(
            ANVIL_ERR_FORMAT,
            "%s: tensor \"%s\": shape %s of %s needs %llu bytes but data_offsets [%llu, %llu] hold %llu",
            path, name, shape, dts, (unsigned long long)nbytes, (unsigned long long)begin,
            (unsigned long long)end, (unsigned long long)(end - begin));
    }
    t->data = data ? data + begin : NULL;
    t->nbytes = (size_t)nbytes;
    t->file = f;
    t->file_offset = data_start + begin;
    /* Consumers read weights in place as float / uint16_t arrays, which needs
     * natural alignment (of the file offset too: a mapping is page-aligned,
     * and reads go to aligned buffers). Every file the reference writer
     * makes is aligned (8-byte padded header, tensors ordered by element
     * size). */
    CHECK(nbytes == 0 || (data ? (uintptr_t)t->data % esize : t->file_offset % esize) == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: tensor \"%s\": data at offset %llu is not aligned to its %zu-byte elements (re-save the file "
          "with the safetensors library)",
          path, name, (unsigned long long)begin, esize);
    sp->begin = begin;
    sp->end = end;
    return ANVIL_OK;
}

static anvil_status parse_metadata(anvil_safetensors *f, const json_t *m)
{
    CHECK(json_is_object(m), ANVIL_ERR_FORMAT, "%s: __metadata__ must be an object, got %s", f->path,
          anvil_json_type_name(m));
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)m, k, v)
    {
        CHECK(json_is_string(v), ANVIL_ERR_FORMAT,
              "%s: __metadata__ value of \"%s\" must be a string, got %s", f->path, k,
              anvil_json_type_name(v));
    }
    return ANVIL_OK;
}

/* Appends s and its NUL at *pos in f->strings; returns where it went. */
static const char *put_string(anvil_safetensors *f, size_t *pos, const char *s)
{
    size_t n = strlen(s) + 1;
    char *dst = f->strings + *pos;
    memcpy(dst, s, n);
    *pos += n;
    return dst;
}

static anvil_status parse(anvil_safetensors *f)
{
    const char *path = f->path;
    CHECK(f->len >= 8, ANVIL_ERR_FORMAT,
          "%s: truncated: %zu bytes, but a safetensors file starts with an 8-byte header length", path,
          f->len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->base[i];
    uint64_t avail = (uint64_t)f->len - 8;
    CHECK(hlen <= avail, ANVIL_ERR_FORMAT, "%s: header length %llu is past the end of the file (%zu bytes)",
          path, (unsigned long long)hlen, f->len);
    CHECK(hlen <= ST_MAX_HEADER, ANVIL_ERR_FORMAT, "%s: header length %llu is over the 100 MB limit", path,
          (unsigned long long)hlen);
    const uint8_t *data = f->has_data ? f->base + 8 + hlen : NULL;
    uint64_t data_len = avail - hlen;

    char what[600];
    snprintf(what, sizeof what, "%s: header", path);
    json_t *root = NULL;
    TRY(anvil_json_parse((const char *)f->base + 8, (size_t)hlen, what, &root));
    anvil_status st = ANVIL_OK;
    span *spans = NULL;
    CHECK_GOTO(json_is_object(root), ANVIL_ERR_FORMAT, done, "%s: header must be a JSON object, got %s", path,
               anvil_json_type_name(root));

    /* Sizes first, so that everything is allocated once. */
    size_t strings_len = 0;
    const char *key;
    json_t *val;
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta != NULL) {
        TRY_GOTO(parse_metadata(f, meta), done);
        json_object_foreach(meta, key, val)
        {
            strings_len += strlen(key) + 1 + strlen(json_string_value(val)) + 1;
        }
    }
    f->n = (int64_t)json_object_size(root) - (meta != NULL);
    f->n_meta = meta ? (int64_t)json_object_size(meta) : 0;
    json_object_foreach(root, key, val)
    {
        strings_len += strlen(key) + 1;
    }
    size_t n = (size_t)f->n;
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
    f->meta = calloc(f->n_meta ? 2 * (size_t)f->n_meta : 1, sizeof *f->meta);
    f->strings = malloc(strings_len ? strings_len : 1);
    spans = calloc(n ? n : 1, sizeof *spans);
    CHECK_GOTO(f->tensors && f->by_name && f->meta && f->strings && spans, ANVIL_ERR_OOM, done,
               "%s: out of memory for %zu tensors", path, n);

    size_t pos = 0;
    int64_t mi = 0;
    if (meta != NULL) {
        json_object_foreach(meta, key, val)
        {
            f->meta[mi++] = put_string(f, &pos, key);
            f->meta[mi++] = put_string(f, &pos, json_string_value(val));
        }
    }
    int64_t i = 0;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        anvil_st_tensor *t = &f->tensors[i];
        TRY_GOTO(parse_entry(f, key, val, data, 8 + hlen, data_len, t, &spans[i]), done);
        t->name = put_string(f, &pos, key);
        spans[i].index = i;
        f->by_name[i] = t;
        i++;
    }

    /* Overlaps: sorted by begin, a non-empty tensor must start at or after
     * the furthest end seen so far. Empty tensors own no bytes. */
    qsort(spans, n, sizeof *spans, cmp_span);
    const span *prev = NULL; /* the non-empty span reaching furthest so far */
    for (size_t k = 0; k < n; k++) {
        if (spans[k].begin == spans[k].end)
            continue;
        CHECK_GOTO(prev == NULL || spans[k].begin >= prev->end, ANVIL_ERR_FORMAT, done,
                   "%s: tensors \"%s\" and \"%s\" overlap (data_offsets [%llu, %llu] and [%llu, %llu])", path,
                   f->tensors[prev->index].name, f->tensors[spans[k].index].name,
                   (unsigned long long)prev->begin, (unsigned long long)prev->end,
                   (unsigned long long)spans[k].begin, (unsigned long long)spans[k].end);
        if (prev == NULL || spans[k].end > prev->end)
            prev = &spans[k];
    }
    anvil_st_sort_by_name(f->by_name, f->n);
done:
    free(spans);
    json_decref(root);
    return st;
}

/* ------------------------------------------------------------ public API */

static anvil_status open_common(anvil_safetensors *f, anvil_safetensors **out)
{
    anvil_status st = parse(f);
    if (st != ANVIL_OK) {
        anvil_safetensors_close(f);
        return st;
    }
    *out = f;
    return ANVIL_OK;
}

/* Reads exactly len bytes at offset: a short read (the file was truncated
 * since it was opened) is an error naming the file, never a signal. */
static anvil_status read_at(int fd, const char *path, void *dst, size_t len, uint64_t offset)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)dst + done, len - done, (off_t)(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n >= 0, ANVIL_ERR_IO, "cannot read %s: %s", path, strerror(errno));
        CHECK(n > 0, ANVIL_ERR_IO,
              "%s changed while in use: %zu bytes at offset %llu are past its end (was it truncated or "
              "replaced?)",
              path, len - done, (unsigned long long)(offset + done));
        done += (size_t)n;
    }
    return ANVIL_OK;
}

/* ANVIL_ST_READ: the 8-byte length and the header, read into f->head. */
static anvil_status read_head(anvil_safetensors *f, int fd)
{
    uint8_t len8[8];
    CHECK(f->len >= 8, ANVIL_ERR_FORMAT,
          "%s: truncated: %zu bytes, but a safetensors file starts with an 8-byte header length", f->path, f->len);
    TRY(read_at(fd, f->path, len8, 8, 0));
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | len8[i];
    /* parse() reports a bad length; read no more than the file holds */
    if (hlen > (uint64_t)f->len - 8 || hlen > ST_MAX_HEADER)
        hlen = 0;
    f->head = malloc(8 + (size_t)hlen);
    CHECK(f->head != NULL, ANVIL_ERR_OOM, "out of memory reading the header of %s", f->path);
    memcpy(f->head, len8, 8);
    TRY(read_at(fd, f->path, f->head + 8, (size_t)hlen, 8));
    f->base = f->head;
    return ANVIL_OK;
}

anvil_status anvil_safetensors_open_ex(const char *path, anvil_st_access access, anvil_safetensors **out)
{
    *out = NULL;
    CHECK(path != NULL, ANVIL_ERR_INVALID_ARG, "anvil_safetensors_open: path is NULL");
    anvil_safetensors *f = calloc(1, sizeof *f);
    CHECK(f != NULL, ANVIL_ERR_OOM, "out of memory opening %s", path);
    f->fd = -1;
    anvil_status st = ANVIL_OK;
    int fd = -1;
    f->path = strdup(path);
    CHECK_GOTO(f->path != NULL, ANVIL_ERR_OOM, fail, "out of memory opening %s", path);
    /* O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer;
     * only regular files are read */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    CHECK_GOTO(fd >= 0, errno == ENOENT ? ANVIL_ERR_NOT_FOUND : ANVIL_ERR_IO, fail, "cannot open %s: %s",
               path, strerror(errno));
    struct stat sb;
    CHECK_GOTO(fstat(fd, &sb) == 0, ANVIL_ERR_IO, fail, "cannot stat %s: %s", path, strerror(errno));
    CHECK_GOTO(S_ISREG(sb.st_mode), ANVIL_ERR_IO, fail, "%s is not a regular file", path);
    f->len = (size_t)sb.st_size;
    if (access == ANVIL_ST_READ) {
        TRY_GOTO(read_head(f, fd), fail);
        f->fd = fd;
        f->at_open = sb;
        fd = -1;
    } else if (f->len >= 8) { /* shorter files fail in parse() with a clear message; mmap of 0 bytes is an error */
        void *m = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
        CHECK_GOTO(m != MAP_FAILED, ANVIL_ERR_IO, fail, "cannot map %s (%zu bytes): %s", path, f->len,
                   strerror(errno));
        f->map = m;
        f->map_len = f->len;
        f->base = m;
        f->has_data = 1;
    } else {
        static const uint8_t empty[8];
        f->base = empty; /* never read: parse() stops at the length check */
    }
    if (fd >= 0)
        close(fd);
    return open_common(f, out);
fail:
    if (fd >= 0)
        close(fd);
    anvil_safetensors_close(f);
    return st;
}

anvil_status anvil_safetensors_open(const char *path, anvil_safetensors **out)
{
    return anvil_safetensors_open_ex(path, ANVIL_ST_MMAP, out);
}

anvil_status anvil_st_read(const anvil_st_tensor *t, size_t offset, void *dst, size_t len)
{
    CHECK(t != NULL && (dst != NULL || len == 0), ANVIL_ERR_INVALID_ARG, "anvil_st_read: NULL argument");
    CHECK(offset <= t->nbytes && len <= t->nbytes - offset, ANVIL_ERR_INVALID_ARG,
          "anvil_st_read: bytes [%zu, +%zu) outside tensor \"%s\" (%zu bytes)", offset, len, t->name, t->nbytes);
    if (len == 0)
        return ANVIL_OK;
    if (t->data != NULL) {
        memcpy(dst, (const char *)t->data + offset, len);
        return ANVIL_OK;
    }
    const anvil_safetensors *f = t->file;
    CHECK(f != NULL && f->fd >= 0, ANVIL_ERR_INVALID_ARG, "anvil_st_read: tensor \"%s\" has no file", t->name);
    return read_at(f->fd, f->path, dst, len, t->file_offset + offset);
}

anvil_status anvil_safetensors_check_unchanged(const anvil_safetensors *f)
{
    if (f == NULL || f->fd < 0)
        return ANVIL_OK;
    struct stat sb;
    CHECK(fstat(f->fd, &sb) == 0, ANVIL_ERR_IO, "cannot stat %s: %s", f->path, strerror(errno));
    CHECK(sb.st_size == f->at_open.st_size && sb.st_mtim.tv_sec == f->at_open.st_mtim.tv_sec &&
              sb.st_mtim.tv_nsec == f->at_open.st_mtim.tv_nsec,
          ANVIL_ERR_IO, "%s changed while it was read (size %lld -> %lld bytes): load it again", f->path,
          (long long)f->at_open.st_size, (long long)sb.st_size);
    return ANVIL_OK;
}

anvil_status anvil_safetensors_open_memory(const void *data, size_t len, anvil_safetensors **out)
{
    *out = NULL;
    CHECK(data != NULL || len == 0, ANVIL_ERR_INVALID_ARG, "anvil_safetensors_open_memory: data is NULL");
    anvil_safetensors *f = calloc(1, sizeof *f);
    CHECK(f != NULL, ANVIL_ERR_OOM, "out of memory opening a safetensors image");
    f->path = strdup("<memory>");
    if (f->path == NULL) {
        free(f);
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory opening a safetensors image");
    }
    static const uint8_t empty[8];
    f->base = data ? data : empty;
    f->len = len;
    f->has_data = 1;
    f->fd = -1;
    return open_common(f, out);
}

void anvil_safetensors_close(anvil_safetensors *f)
{
    if (f == NULL)
        return;
    if (f->map)
        munmap(f->map, f->map_len);
    if (f->fd >= 0)
        close(f->fd);
    free(f->head);
    free(f->tensors);
    free(f->by_name);
    free(f->meta);
    free(f->strings);
    free(f->path);
    free(f);
}

int64_t anvil_safetensors_count(const anvil_safetensors *f)
{
    return f ? f->n : 0;
}

const anvil_st_tensor *anvil_safetensors_at(const anvil_safetensors *f, int64_t i)
{
    if (f == NULL || i < 0 || i >= f->n)
        return NULL;
    return &f->tensors[i];
}

const anvil_st_tensor *anvil_safetensors_find(const anvil_safetensors *f, const char *name)
{
    if (f == NULL || name == NULL)
        return NULL;
    return anvil_st_lookup(f->by_name, f->n, name);
}

const char *anvil_safetensors_metadata(const anvil_safetensors *f, const char *key)
{
    if (f == NULL || key == NULL)
        return NULL;
    for (int64_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[2 * i], key) == 0)
            return f->meta[2 * i + 1];
    return NULL;
}

const char *anvil_safetensors_path(const anvil_safetensors *f)
{
    return f ? f->path : "";
}
