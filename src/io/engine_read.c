/*
 * Engine file reader. The file is untrusted input: every number in
 * the header and the weight table is checked, against the file's real size
 * and against each other, before it is used to form a pointer or a read,
 * so that a hostile, truncated or damaged file is an error message and
 * never an out-of-bounds access. tests/fuzz/fuzz_engine_file.c holds us to
 * that; docs/engine-format.md is the format.
 */
#include "io/engine_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <xxhash.h>

#include "core/error.h"
#include "core/json_util.h"

struct anvil_engine_file {
    char *path; /* for messages; "<memory>" for images */
    anvil_engine_header h;
    const uint8_t *base; /* the whole file (mapped or an image); NULL when read with pread */
    size_t len;          /* the file's size */
    void *map;           /* the mapping to unmap, or NULL */
    int fd;              /* ANVIL_ST_READ: kept open for reads; else -1 */
    struct stat at_open; /* ANVIL_ST_READ: size and modification time when opened */
    json_t *manifest;
    anvil_engine_tensor *tensors; /* in table order */
    int64_t n;
    const anvil_engine_tensor **by_name; /* sorted by name */
};

/* The first n bytes of the file (n = min(size, ANVIL_ENGINE_HEADER_FIELDS))
 * into f->h, in the order that gives the most useful message: what the file
 * is, then its version (a 2.x header may look different past it), then
 * whether its header is intact, then whether the file is whole. */
static anvil_status parse_header(anvil_engine_file *f, const uint8_t *b, size_t n)
{
    const char *path = f->path;
    size_t m = n < 8 ? n : 8;
    CHECK(memcmp(b, ANVIL_ENGINE_MAGIC, m) == 0, ANVIL_ERR_FORMAT,
          "%s: not an anvil engine file (it does not start with \"" ANVIL_ENGINE_MAGIC "\")", path);
    uint8_t whole[ANVIL_ENGINE_HEADER_FIELDS] = {0}; /* what is missing reads as zeros: checked below */
    memcpy(whole, b, n);
    anvil_engine_header *h = &f->h;
    uint64_t stored_xxh64;
    anvil_engine_header_decode(whole, h, &stored_xxh64);
    CHECK(n >= 16, ANVIL_ERR_FORMAT,
          "%s: truncated: %zu bytes, but an engine file starts with a %u-byte header", path, f->len,
          ANVIL_ENGINE_HEADER_SIZE);
    CHECK(h->version_major == ANVIL_ENGINE_VERSION_MAJOR, ANVIL_ERR_UNSUPPORTED,
          "%s: engine format %u.%u; this anvil reads %u.x: rebuild it with `anvil build`", path,
          h->version_major, h->version_minor, ANVIL_ENGINE_VERSION_MAJOR);
    CHECK(n >= ANVIL_ENGINE_HEADER_FIELDS, ANVIL_ERR_FORMAT,
          "%s: truncated: %zu bytes, but an engine file starts with a %u-byte header", path, f->len,
          ANVIL_ENGINE_HEADER_SIZE);
    CHECK(stored_xxh64 == anvil_engine_header_xxh64(whole), ANVIL_ERR_FORMAT,
          "%s: header checksum mismatch (the header is damaged)", path);
    CHECK(h->file_size <= (uint64_t)f->len, ANVIL_ERR_FORMAT,
          "%s: truncated: %zu bytes, but its header says %llu (an interrupted copy or download?)", path,
          f->len, (unsigned long long)h->file_size);
    CHECK(h->file_size == (uint64_t)f->len, ANVIL_ERR_FORMAT,
          "%s: %zu bytes, but its header says %llu (bytes were added after its end)", path, f->len,
          (unsigned long long)h->file_size);
    CHECK(h->flags == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: header flags 0x%08x name features this anvil does not have: rebuild it with `anvil build`",
          path, h->flags);
    return ANVIL_OK;
}

/* [offset, offset + length) as a section of the file: inside it, past the
 * header, without overflow. */
static anvil_status check_section(const anvil_engine_file *f, const char *what, uint64_t offset,
                                  uint64_t length)
{
    const anvil_engine_header *h = &f->h;
    uint64_t end;
    CHECK(!__builtin_add_overflow(offset, length, &end) && end <= h->file_size, ANVIL_ERR_FORMAT,
          "%s: the %s (offset %llu, %llu bytes) lies outside the file (%llu bytes)", f->path, what,
          (unsigned long long)offset, (unsigned long long)length, (unsigned long long)h->file_size);
    CHECK(offset >= h->header_size, ANVIL_ERR_FORMAT, "%s: the %s (offset %llu) overlaps the %u-byte header",
          f->path, what, (unsigned long long)offset, h->header_size);
    return ANVIL_OK;
}

/* Where the sections are, against each other and the file (its size is
 * already known to be the real one). */
static anvil_status check_layout(const anvil_engine_file *f)
{
    const anvil_engine_header *h = &f->h;
    const char *path = f->path;
    CHECK(h->header_size >= ANVIL_ENGINE_HEADER_FIELDS && h->header_size <= h->file_size, ANVIL_ERR_FORMAT,
          "%s: header size %u is not between %u and the file's size", path, h->header_size,
          ANVIL_ENGINE_HEADER_FIELDS);
    TRY(check_section(f, "manifest", h->manifest_offset, h->manifest_length));
    TRY(check_section(f, "data section", h->data_offset, h->data_length));
    CHECK(h->manifest_length > 0, ANVIL_ERR_FORMAT, "%s: the manifest is empty", path);
    CHECK(h->manifest_length <= ANVIL_ENGINE_MAX_MANIFEST, ANVIL_ERR_FORMAT,
          "%s: the manifest is %llu bytes, over the %llu-byte limit", path,
          (unsigned long long)h->manifest_length, (unsigned long long)ANVIL_ENGINE_MAX_MANIFEST);
    CHECK(h->data_offset % ANVIL_ENGINE_SECTION_ALIGN == 0, ANVIL_ERR_FORMAT,
          "%s: the data section's offset %llu is not a multiple of %u", path,
          (unsigned long long)h->data_offset, ANVIL_ENGINE_SECTION_ALIGN);
    uint64_t manifest_end = h->manifest_offset + h->manifest_length; /* no overflow: checked above */
    uint64_t data_end = h->data_offset + h->data_length;
    CHECK(h->data_offset >= h->manifest_offset, ANVIL_ERR_FORMAT,
          "%s: the data section (offset %llu) comes before the manifest (offset %llu)", path,
          (unsigned long long)h->data_offset, (unsigned long long)h->manifest_offset);
    CHECK(manifest_end <= h->data_offset, ANVIL_ERR_FORMAT,
          "%s: the manifest [%llu, %llu) and the data section [%llu, %llu) overlap", path,
          (unsigned long long)h->manifest_offset, (unsigned long long)manifest_end,
          (unsigned long long)h->data_offset, (unsigned long long)data_end);
    return ANVIL_OK;
}

/* ----------------------------------------------------------- weight table */

/* A JSON integer in [min, INT64_MAX], as uint64. */
static anvil_status entry_uint(const anvil_engine_file *f, const char *name, const char *field,
                               const json_t *v, int64_t min, uint64_t *out)
{
    CHECK(v != NULL, ANVIL_ERR_FORMAT, "%s: tensor '%s': missing \"%s\"", f->path, name, field);
    CHECK(json_is_integer(v), ANVIL_ERR_FORMAT, "%s: tensor '%s': \"%s\" must hold integers, got %s", f->path,
          name, field, anvil_json_type_name(v));
    json_int_t x = json_integer_value(v);
    CHECK(x >= min, ANVIL_ERR_FORMAT, "%s: tensor '%s': \"%s\" holds %lld, below %lld", f->path, name, field,
          (long long)x, (long long)min);
    *out = (uint64_t)x;
    return ANVIL_OK;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static anvil_status entry_xxh64(const anvil_engine_file *f, const char *name, const json_t *v, uint64_t *out)
{
    const char *s = json_string_value(v);
    int ok = s != NULL && json_string_length(v) == 16;
    uint64_t x = 0;
    for (int i = 0; ok && i < 16; i++) {
        int d = hex_digit(s[i]);
        ok = d >= 0;
        x = x << 4 | (uint64_t)(d & 15);
    }
    CHECK(ok, ANVIL_ERR_FORMAT, "%s: tensor '%s': \"xxh64\" must be a string of 16 hex digits", f->path,
          name);
    *out = x;
    return ANVIL_OK;
}

/* "kind" and "shape" into t; the product of the dims in *numel. */
static anvil_status entry_kind_shape(const anvil_engine_file *f, const json_t *e, anvil_engine_tensor *t,
                                     uint64_t *numel)
{
    const char *path = f->path, *name = t->name;
    json_t *jkind = json_object_get(e, "kind"), *jshape = json_object_get(e, "shape");
    CHECK(json_is_string(jkind), ANVIL_ERR_FORMAT, "%s: tensor '%s': \"kind\" must be a string, got %s", path,
          name, anvil_json_type_name(jkind));
    CHECK(anvil_engine_kind_parse(json_string_value(jkind), &t->kind) == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: tensor '%s': kind \"%s\" is not one this anvil knows (f32, bf16, f16, fp8_e4m3, int8, int4, u8, i32)",
          path, name, json_string_value(jkind));
    CHECK(json_is_array(jshape), ANVIL_ERR_FORMAT, "%s: tensor '%s': \"shape\" must be an array, got %s",
          path, name, anvil_json_type_name(jshape));
    size_t nd = json_array_size(jshape);
    CHECK(nd >= 1 && nd <= ANVIL_ENGINE_MAX_DIMS, ANVIL_ERR_FORMAT,
          "%s: tensor '%s': %zu dimensions, an engine tensor has 1 to %d", path, name, nd,
          ANVIL_ENGINE_MAX_DIMS);
    t->n_dims = (int)nd;
    *numel = 1;
    int overflow = 0;
    for (size_t d = 0; d < nd; d++) {
        uint64_t dim;
        TRY(entry_uint(f, name, "shape", json_array_get(jshape, d), 1, &dim));
        t->shape[d] = (int64_t)dim; /* <= INT64_MAX: it came from a json_int_t */
        overflow |= __builtin_mul_overflow(*numel, dim, numel);
    }
    uint64_t need = anvil_engine_kind_bytes(t->kind, *numel);
    CHECK(!overflow && need != 0 && need <= (uint64_t)INT64_MAX, ANVIL_ERR_FORMAT,
          "%s: tensor '%s': shape is too large (its byte size overflows 64 bits)", path, name);
    *numel = need;
    return ANVIL_OK;
}

/* "shape [4096, 4096]" for messages. */
static void shape_str(const anvil_engine_tensor *t, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->n_dims && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

/* One entry of "tensors" into t (except scales, resolved once all names are
 * known). */
static anvil_status parse_entry(anvil_engine_file *f, const json_t *e, int64_t i, anvil_engine_tensor *t)
{
    const char *path = f->path;
    CHECK(json_is_object(e), ANVIL_ERR_FORMAT, "%s: tensors[%lld] must be an object, got %s", path,
          (long long)i, anvil_json_type_name(e));
    json_t *jname = json_object_get(e, "name");
    CHECK(json_is_string(jname) && json_string_length(jname) > 0 &&
              strlen(json_string_value(jname)) == json_string_length(jname),
          ANVIL_ERR_FORMAT, "%s: tensors[%lld]: \"name\" must be a non-empty string without NUL, got %s",
          path, (long long)i, anvil_json_type_name(jname));
    t->name = json_string_value(jname);
    t->index = i;
    t->entry = e;
    t->scales = -1;
    uint64_t need = 0, offset = 0, bytes = 0;
    TRY(entry_kind_shape(f, e, t, &need));
    TRY(entry_uint(f, t->name, "offset", json_object_get(e, "offset"), 0, &offset));
    TRY(entry_uint(f, t->name, "bytes", json_object_get(e, "bytes"), 0, &bytes));
    if (bytes != need) {
        char shape[128];
        shape_str(t, shape, sizeof shape);
        return ANVIL_FAIL(ANVIL_ERR_FORMAT,
                          "%s: tensor '%s': shape %s of %s needs %llu bytes but \"bytes\" is %llu", path,
                          t->name, shape, anvil_engine_kind_name(t->kind), (unsigned long long)need,
                          (unsigned long long)bytes);
    }
    CHECK(offset % ANVIL_ENGINE_TENSOR_ALIGN == 0, ANVIL_ERR_FORMAT,
          "%s: tensor '%s': offset %llu is not a multiple of %u", path, t->name, (unsigned long long)offset,
          ANVIL_ENGINE_TENSOR_ALIGN);
    uint64_t end;
    CHECK(!__builtin_add_overflow(offset, bytes, &end) && end <= f->h.data_length, ANVIL_ERR_FORMAT,
          "%s: tensor '%s': bytes [%llu, +%llu) lie outside the data section (%llu bytes)", path, t->name,
          (unsigned long long)offset, (unsigned long long)bytes, (unsigned long long)f->h.data_length);
    TRY(entry_xxh64(f, t->name, json_object_get(e, "xxh64"), &t->xxh64));
    t->offset = f->h.data_offset + offset; /* within file_size: the data section is */
    t->bytes = (size_t)bytes;
    t->data = f->base ? f->base + t->offset : NULL;
    return ANVIL_OK;
}

static int cmp_by_name(const void *a, const void *b)
{
    const anvil_engine_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static const anvil_engine_tensor *lookup(const anvil_engine_file *f, const char *name)
{
    int64_t lo = 0, hi = f->n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->by_name[mid]->name, name);
        if (c == 0)
            return f->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* "scales": {"tensor": name} must name another tensor of the table. */
static anvil_status resolve_scales(anvil_engine_file *f, anvil_engine_tensor *t)
{
    const json_t *s = json_object_get(t->entry, "scales");
    if (s == NULL)
        return ANVIL_OK;
    const char *path = f->path, *name = t->name;
    CHECK(json_is_object(s), ANVIL_ERR_FORMAT, "%s: tensor '%s': \"scales\" must be an object, got %s", path,
          name, anvil_json_type_name(s));
    const json_t *js = json_object_get(s, "tensor");
    CHECK(json_is_string(js), ANVIL_ERR_FORMAT,
          "%s: tensor '%s': \"scales\".\"tensor\" must be a string, got %s", path, name,
          anvil_json_type_name(js));
    const anvil_engine_tensor *st = lookup(f, json_string_value(js));
    CHECK(st != NULL, ANVIL_ERR_FORMAT, "%s: tensor '%s': its scales tensor '%s' is not in the table", path,
          name, json_string_value(js));
    CHECK(st != t, ANVIL_ERR_FORMAT, "%s: tensor '%s': names itself as its scales", path, name);
    t->scales = st->index;
    return ANVIL_OK;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const anvil_engine_tensor *const *x = a, *const *y = b;
    if ((*x)->offset != (*y)->offset)
        return (*x)->offset < (*y)->offset ? -1 : 1;
    return ((*x)->index > (*y)->index) - ((*x)->index < (*y)->index);
}

/* Unique names, then no two tensors sharing a byte (every tensor has at
 * least one: dims are positive). by_name is reused as scratch for the
 * offset order and sorted by name last. */
static anvil_status check_table(anvil_engine_file *f)
{
    size_t n = (size_t)f->n;
    for (size_t i = 0; i < n; i++)
        f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, n, sizeof *f->by_name, cmp_by_offset);
    for (size_t i = 1; i < n; i++) {
        const anvil_engine_tensor *a = f->by_name[i - 1], *b = f->by_name[i];
        CHECK(a->offset + a->bytes <= b->offset, ANVIL_ERR_FORMAT,
              "%s: tensors '%s' and '%s' overlap (bytes [%llu, +%zu) and [%llu, +%zu) of the data section)",
              f->path, a->name, b->name, (unsigned long long)(a->offset - f->h.data_offset), a->bytes,
              (unsigned long long)(b->offset - f->h.data_offset), b->bytes);
    }
    qsort(f->by_name, n, sizeof *f->by_name, cmp_by_name);
    for (size_t i = 1; i < n; i++)
        CHECK(strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) != 0, ANVIL_ERR_FORMAT,
              "%s: tensor name '%s' appears twice", f->path, f->by_name[i]->name);
    for (size_t i = 0; i < n; i++)
        TRY(resolve_scales(f, &f->tensors[i]));
    return ANVIL_OK;
}

static anvil_status parse_tensors(anvil_engine_file *f, const json_t *arr)
{
    size_t n = json_array_size(arr);
    f->n = (int64_t)n;
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
    CHECK(f->tensors && f->by_name, ANVIL_ERR_OOM, "%s: out of memory for %zu tensors", f->path, n);
    for (size_t i = 0; i < n; i++)
        TRY(parse_entry(f, json_array_get(arr, i), (int64_t)i, &f->tensors[i]));
    return check_table(f);
}

/* The keys this layer owns; the rest of the manifest is the builder's. */
static anvil_status parse_manifest(anvil_engine_file *f, const uint8_t *text)
{
    const char *path = f->path;
    const anvil_engine_header *h = &f->h;
    CHECK(anvil_engine_xxh64(text, h->manifest_length) == h->manifest_xxh64, ANVIL_ERR_FORMAT,
          "%s: manifest checksum mismatch (the file is damaged)", path);
    char what[600];
    snprintf(what, sizeof what, "%s: manifest", path);
    TRY(anvil_json_parse((const char *)text, h->manifest_length, what, &f->manifest));
    const json_t *m = f->manifest;
    CHECK(json_is_object(m), ANVIL_ERR_FORMAT, "%s: the manifest must be a JSON object, got %s", path,
          anvil_json_type_name(m));
    const json_t *fmt = json_object_get(m, "format");
    CHECK(json_is_string(fmt) && strcmp(json_string_value(fmt), "anvil-engine") == 0, ANVIL_ERR_FORMAT,
          "%s: the manifest's \"format\" must be \"anvil-engine\"", path);
    const json_t *ver = json_object_get(m, "format_version");
    CHECK(json_is_array(ver) && json_array_size(ver) == 2 && json_is_integer(json_array_get(ver, 0)) &&
              json_is_integer(json_array_get(ver, 1)),
          ANVIL_ERR_FORMAT, "%s: the manifest's \"format_version\" must be [major, minor]", path);
    json_int_t vmaj = json_integer_value(json_array_get(ver, 0)),
               vmin = json_integer_value(json_array_get(ver, 1));
    CHECK(vmaj == (json_int_t)h->version_major && vmin == (json_int_t)h->version_minor, ANVIL_ERR_FORMAT,
          "%s: the manifest says format %lld.%lld but the header %u.%u", path, (long long)vmaj,
          (long long)vmin, h->version_major, h->version_minor);
    const json_t *av = json_object_get(m, "anvil_version");
    CHECK(json_is_string(av), ANVIL_ERR_FORMAT,
          "%s: the manifest's \"anvil_version\" must be a string, got %s", path, anvil_json_type_name(av));
    const json_t *ts = json_object_get(m, "tensors");
    CHECK(json_is_array(ts), ANVIL_ERR_FORMAT, "%s: the manifest's \"tensors\" must be an array, got %s",
          path, anvil_json_type_name(ts));
    return parse_tensors(f, ts);
}

/* ------------------------------------------------------------------ I/O */

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

/* Header, layout and manifest of f, whose len and base (or fd) are set. */
static anvil_status parse(anvil_engine_file *f, int fd)
{
    uint8_t head[ANVIL_ENGINE_HEADER_FIELDS];
    size_t n = f->len < sizeof head ? f->len : sizeof head;
    if (f->base != NULL)
        memcpy(head, f->base, n);
    else
        TRY(read_at(fd, f->path, head, n, 0));
    TRY(parse_header(f, head, n));
    TRY(check_layout(f));
    if (f->base != NULL)
        return parse_manifest(f, f->base + f->h.manifest_offset);
    uint8_t *text = malloc((size_t)f->h.manifest_length);
    CHECK(text != NULL, ANVIL_ERR_OOM, "%s: out of memory for a %llu-byte manifest", f->path,
          (unsigned long long)f->h.manifest_length);
    anvil_status st = read_at(fd, f->path, text, (size_t)f->h.manifest_length, f->h.manifest_offset);
    if (st == ANVIL_OK)
        st = parse_manifest(f, text);
    free(text);
    return st;
}

static anvil_engine_file *file_new(const char *path)
{
    anvil_engine_file *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    f->fd = -1;
    f->path = strdup(path);
    if (f->path == NULL) {
        free(f);
        return NULL;
    }
    return f;
}

/* ------------------------------------------------------------ public API */

anvil_status anvil_engine_file_open(const char *path, anvil_st_access access, anvil_engine_file **out)
{
    *out = NULL;
    CHECK(path != NULL, ANVIL_ERR_INVALID_ARG, "anvil_engine_file_open: path is NULL");
    anvil_engine_file *f = file_new(path);
    CHECK(f != NULL, ANVIL_ERR_OOM, "out of memory opening %s", path);
    anvil_status st = ANVIL_OK;
    /* O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer;
     * only regular files are read */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    CHECK_GOTO(fd >= 0, errno == ENOENT ? ANVIL_ERR_NOT_FOUND : ANVIL_ERR_IO, fail, "cannot open %s: %s",
               path, strerror(errno));
    struct stat sb;
    CHECK_GOTO(fstat(fd, &sb) == 0, ANVIL_ERR_IO, fail, "cannot stat %s: %s", path, strerror(errno));
    CHECK_GOTO(S_ISREG(sb.st_mode), ANVIL_ERR_IO, fail, "%s is not a regular file", path);
    f->len = (size_t)sb.st_size;
    f->at_open = sb;
    if (access == ANVIL_ST_MMAP && f->len > 0) {
        /* Mapped before anything is read, so that the header, manifest and
         * data all come from one view of the file. */
        void *m = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
        CHECK_GOTO(m != MAP_FAILED, ANVIL_ERR_IO, fail, "cannot map %s (%zu bytes): %s", path, f->len,
                   strerror(errno));
        f->map = m;
        f->base = m;
    }
    TRY_GOTO(parse(f, fd), fail);
    if (access == ANVIL_ST_MMAP) {
        close(fd);
    } else {
        f->fd = fd;
    }
    *out = f;
    return ANVIL_OK;
fail:
    if (fd >= 0)
        close(fd);
    anvil_engine_file_close(f);
    return st;
}

anvil_status anvil_engine_file_open_memory(const void *data, size_t len, anvil_engine_file **out)
{
    *out = NULL;
    CHECK(data != NULL || len == 0, ANVIL_ERR_INVALID_ARG, "anvil_engine_file_open_memory: data is NULL");
    anvil_engine_file *f = file_new("<memory>");
    CHECK(f != NULL, ANVIL_ERR_OOM, "out of memory opening an engine image");
    static const uint8_t empty[1];
    f->base = data ? data : empty; /* never read past len (0) */
    f->len = len;
    anvil_status st = parse(f, -1);
    if (st != ANVIL_OK) {
        anvil_engine_file_close(f);
        return st;
    }
    *out = f;
    return ANVIL_OK;
}

void anvil_engine_file_close(anvil_engine_file *f)
{
    if (f == NULL)
        return;
    if (f->map)
        munmap(f->map, f->len);
    if (f->fd >= 0)
        close(f->fd);
    json_decref(f->manifest);
    free(f->tensors);
    free(f->by_name);
    free(f->path);
    free(f);
}

const char *anvil_engine_file_path(const anvil_engine_file *f)
{
    return f ? f->path : "";
}

const anvil_engine_header *anvil_engine_file_header(const anvil_engine_file *f)
{
    return f ? &f->h : NULL;
}

const json_t *anvil_engine_file_manifest(const anvil_engine_file *f)
{
    return f ? f->manifest : NULL;
}

int64_t anvil_engine_file_count(const anvil_engine_file *f)
{
    return f ? f->n : 0;
}

const anvil_engine_tensor *anvil_engine_file_tensor(const anvil_engine_file *f, int64_t i)
{
    if (f == NULL || i < 0 || i >= f->n)
        return NULL;
    return &f->tensors[i];
}

const anvil_engine_tensor *anvil_engine_file_find(const anvil_engine_file *f, const char *name)
{
    if (f == NULL || name == NULL)
        return NULL;
    return lookup(f, name);
}

anvil_status anvil_engine_file_read(const anvil_engine_file *f, int64_t i, size_t offset, void *dst,
                                    size_t len)
{
    CHECK(f != NULL && (dst != NULL || len == 0), ANVIL_ERR_INVALID_ARG,
          "anvil_engine_file_read: NULL argument");
    const anvil_engine_tensor *t = anvil_engine_file_tensor(f, i);
    CHECK(t != NULL, ANVIL_ERR_INVALID_ARG, "%s: no tensor %lld (the table has %lld)", f->path, (long long)i,
          (long long)f->n);
    CHECK(offset <= t->bytes && len <= t->bytes - offset, ANVIL_ERR_INVALID_ARG,
          "%s: bytes [%zu, +%zu) are outside tensor '%s' (%zu bytes)", f->path, offset, len, t->name,
          t->bytes);
    if (len == 0)
        return ANVIL_OK;
    if (t->data != NULL) {
        memcpy(dst, (const uint8_t *)t->data + offset, len);
        return ANVIL_OK;
    }
    return read_at(f->fd, f->path, dst, len, t->offset + offset);
}

/* XXH64 of tensor t, reading through buf (ANVIL_ENGINE_CHUNK bytes) when
 * the file is not mapped; *done advances by each chunk and progress sees it. */
static anvil_status hash_tensor(const anvil_engine_file *f, const anvil_engine_tensor *t, uint8_t *buf,
                                size_t *done, size_t total, anvil_engine_progress_fn progress, void *user,
                                uint64_t *out)
{
    XXH64_state_t s;
    XXH64_reset(&s, 0);
    for (size_t off = 0; off < t->bytes; off += ANVIL_ENGINE_CHUNK) {
        size_t len = t->bytes - off < ANVIL_ENGINE_CHUNK ? t->bytes - off : ANVIL_ENGINE_CHUNK;
        const uint8_t *p = t->data ? (const uint8_t *)t->data + off : buf;
        if (t->data == NULL)
            TRY(read_at(f->fd, f->path, buf, len, t->offset + off));
        XXH64_update(&s, p, len);
        *done += len;
        CHECK(progress == NULL || progress(user, *done, total) == 0, ANVIL_ERR_CANCELLED,
              "%s: verification cancelled", f->path);
    }
    *out = XXH64_digest(&s);
    return ANVIL_OK;
}

anvil_status anvil_engine_file_verify(const anvil_engine_file *f, anvil_engine_progress_fn progress,
                                      void *user)
{
    CHECK(f != NULL, ANVIL_ERR_INVALID_ARG, "anvil_engine_file_verify: f is NULL");
    size_t total = 0, done = 0;
    for (int64_t i = 0; i < f->n; i++)
        total += f->tensors[i].bytes; /* no overflow: the tensors do not overlap inside the file */
    uint8_t *buf = NULL;
    if (f->base == NULL) {
        buf = malloc(ANVIL_ENGINE_CHUNK);
        CHECK(buf != NULL, ANVIL_ERR_OOM, "%s: out of memory for a read buffer", f->path);
    }
    anvil_status st = ANVIL_OK;
    for (int64_t i = 0; i < f->n && st == ANVIL_OK; i++) {
        const anvil_engine_tensor *t = &f->tensors[i];
        uint64_t h = 0;
        st = hash_tensor(f, t, buf, &done, total, progress, user, &h);
        if (st == ANVIL_OK && h != t->xxh64)
            st = ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s: tensor '%s': checksum mismatch (the file is damaged)",
                            f->path, t->name);
    }
    free(buf);
    return st;
}

anvil_status anvil_engine_file_check_unchanged(const anvil_engine_file *f)
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

int anvil_engine_file_is_engine(const char *path)
{
    if (path == NULL)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return 0;
    struct stat sb;
    char magic[8];
    int yes = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && pread(fd, magic, 8, 0) == 8 &&
              memcmp(magic, ANVIL_ENGINE_MAGIC, 8) == 0;
    close(fd);
    return yes;
}
