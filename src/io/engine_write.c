/*
 * Engine file writer. The data is streamed from the caller's fill callback
 * in chunks, several tensors at once on worker threads, each tensor hashed
 * as its chunks pass (XXH64 is sequential, so one tensor stays with one
 * thread); the calling thread only reports progress. The manifest is
 * written after the data because it holds the checksums, the header last
 * because it holds the manifest's checksum, and the file is renamed into
 * place only when all of it is written: whatever fails, path never holds a
 * partial engine.
 *
 * The manifest's length is needed before the data (it decides where the
 * data section starts), and the checksums after: the manifest is printed
 * once with placeholder checksums to measure it, and again with the real
 * ones, which are of the same fixed width (16 hex digits).
 */
#include "io/engine_file.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <xxhash.h>

#include "core/error.h"

#ifndef ANVIL_VERSION_STRING /* CMake defines it: project version + git commit */
#define ANVIL_VERSION_STRING "0.0.0-dev"
#endif

#define MAX_THREADS 64

typedef struct wtensor {
    char *name;
    anvil_engine_kind kind;
    int n_dims;
    int64_t shape[ANVIL_ENGINE_MAX_DIMS];
    uint64_t offset; /* in the data section */
    uint64_t bytes;
    uint64_t xxh64; /* set as it is written */
    int64_t scales; /* index, or -1 */
    json_t *scales_info; /* the "scales" object's other keys (owned), or NULL */
} wtensor;

struct anvil_engine_writer {
    char *path;
    char *tmp; /* path.tmp-XXXXXX, the file being written */
    int fd;
    wtensor *t;
    int64_t n, cap;
    json_t *names;     /* the declared names, as a set */
    uint64_t data_end; /* end of the last tensor in the data section */
};

static uint64_t align_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) / a * a;
}

/* ---------------------------------------------------------------- create */

/* Opens a new file named path.tmp-XXXXXX. Not mkstemp: it creates the file
 * with mode 0600, and the engine should get the usual 0666 & ~umask (which
 * cannot be read without changing it, process-wide). O_EXCL makes a name
 * taken by someone else a retry, never a shared file. */
static anvil_status create_tmp(anvil_engine_writer *w)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    size_t n = strlen(w->path) + sizeof ".tmp-XXXXXX";
    w->tmp = malloc(n);
    CHECK(w->tmp != NULL, ANVIL_ERR_OOM, "out of memory creating %s", w->path);
    struct {
        struct timespec ts;
        pid_t pid;
        const void *self;
        int attempt;
    } seed = {.pid = getpid(), .self = w};
    for (seed.attempt = 0; seed.attempt < 100; seed.attempt++) {
        clock_gettime(CLOCK_REALTIME, &seed.ts);
        uint64_t r = anvil_engine_xxh64(&seed, sizeof seed);
        char suffix[7];
        for (int i = 0; i < 6; i++, r /= 62)
            suffix[i] = alphabet[r % 62];
        suffix[6] = '\0';
        snprintf(w->tmp, n, "%s.tmp-%s", w->path, suffix);
        w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (w->fd >= 0)
            return ANVIL_OK;
        CHECK(errno == EEXIST, ANVIL_ERR_IO, "cannot create %s: %s", w->tmp, strerror(errno));
    }
    return ANVIL_FAIL(ANVIL_ERR_IO, "cannot create a temporary file next to %s: every name tried exists",
                      w->path);
}

anvil_status anvil_engine_writer_create(const char *path, anvil_engine_writer **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "anvil_engine_writer_create: out is NULL");
    *out = NULL;
    CHECK(path != NULL && *path != '\0', ANVIL_ERR_INVALID_ARG, "anvil_engine_writer_create: no path");
    anvil_engine_writer *w = calloc(1, sizeof *w);
    CHECK(w != NULL, ANVIL_ERR_OOM, "out of memory creating %s", path);
    w->fd = -1;
    anvil_status st = ANVIL_OK;
    w->path = strdup(path);
    w->names = json_object();
    CHECK_GOTO(w->path != NULL && w->names != NULL, ANVIL_ERR_OOM, fail, "out of memory creating %s", path);
    TRY_GOTO(create_tmp(w), fail);
    *out = w;
    return ANVIL_OK;
fail:
    anvil_engine_writer_abort(w);
    return st;
}

void anvil_engine_writer_abort(anvil_engine_writer *w)
{
    if (w == NULL)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->tmp);
    }
    for (int64_t i = 0; i < w->n; i++) {
        free(w->t[i].name);
        json_decref(w->t[i].scales_info);
    }
    free(w->t);
    json_decref(w->names);
    free(w->tmp);
    free(w->path);
    free(w);
}

/* ---------------------------------------------------------------- tensors */

/* Checks a declaration; its byte size in *bytes. */
static anvil_status check_decl(const anvil_engine_writer *w, const char *name, anvil_engine_kind kind,
                               int n_dims, const int64_t *shape, uint64_t *bytes)
{
    const char *path = w->path;
    CHECK(name != NULL && *name != '\0', ANVIL_ERR_INVALID_ARG, "%s: a tensor needs a name", path);
    CHECK(json_object_get(w->names, name) == NULL, ANVIL_ERR_INVALID_ARG,
          "%s: tensor name '%s' appears twice", path, name);
    CHECK((int)kind >= 0 && kind < ANVIL_ENGINE_KIND_COUNT, ANVIL_ERR_INVALID_ARG,
          "%s: tensor '%s': invalid kind %d", path, name, (int)kind);
    CHECK(n_dims >= 1 && n_dims <= ANVIL_ENGINE_MAX_DIMS && shape != NULL, ANVIL_ERR_INVALID_ARG,
          "%s: tensor '%s': %d dimensions, an engine tensor has 1 to %d", path, name, n_dims,
          ANVIL_ENGINE_MAX_DIMS);
    uint64_t numel = 1;
    for (int d = 0; d < n_dims; d++) {
        CHECK(shape[d] > 0, ANVIL_ERR_INVALID_ARG, "%s: tensor '%s': dimension %d is %lld (must be > 0)",
              path, name, d, (long long)shape[d]);
        CHECK(!__builtin_mul_overflow(numel, (uint64_t)shape[d], &numel), ANVIL_ERR_INVALID_ARG,
              "%s: tensor '%s': shape overflows", path, name);
    }
    *bytes = anvil_engine_kind_bytes(kind, numel);
    CHECK(*bytes != 0 && *bytes <= (uint64_t)INT64_MAX, ANVIL_ERR_INVALID_ARG,
          "%s: tensor '%s': shape overflows", path, name);
    return ANVIL_OK;
}

anvil_status anvil_engine_writer_add_tensor(anvil_engine_writer *w, const char *name, anvil_engine_kind kind,
                                            int n_dims, const int64_t *shape, int64_t *index)
{
    CHECK(w != NULL, ANVIL_ERR_INVALID_ARG, "anvil_engine_writer_add_tensor: w is NULL");
    uint64_t bytes = 0, offset = align_up(w->data_end, ANVIL_ENGINE_TENSOR_ALIGN), end;
    TRY(check_decl(w, name, kind, n_dims, shape, &bytes));
    CHECK(!__builtin_add_overflow(offset, bytes, &end) && end <= (uint64_t)INT64_MAX / 2,
          ANVIL_ERR_INVALID_ARG, "%s: tensor '%s': the data section would pass 2^62 bytes", w->path, name);
    if (w->n == w->cap) {
        int64_t cap = w->cap ? 2 * w->cap : 64;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        CHECK(t != NULL, ANVIL_ERR_OOM, "%s: out of memory for %lld tensors", w->path, (long long)cap);
        w->t = t;
        w->cap = cap;
    }
    wtensor *t = &w->t[w->n];
    *t = (wtensor){.kind = kind, .n_dims = n_dims, .offset = offset, .bytes = bytes, .scales = -1};
    memcpy(t->shape, shape, (size_t)n_dims * sizeof *shape);
    t->name = strdup(name);
    CHECK(t->name != NULL, ANVIL_ERR_OOM, "%s: out of memory", w->path);
    /* json_object_set_new refuses a key that is not UTF-8: so would the manifest */
    if (json_object_set_new(w->names, name, json_true()) != 0) {
        free(t->name);
        return ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "%s: tensor name '%s' is not valid UTF-8", w->path, name);
    }
    if (index != NULL)
        *index = w->n;
    w->n++;
    w->data_end = end;
    return ANVIL_OK;
}

anvil_status anvil_engine_writer_set_scales(anvil_engine_writer *w, int64_t index, int64_t scales)
{
    CHECK(w != NULL, ANVIL_ERR_INVALID_ARG, "anvil_engine_writer_set_scales: w is NULL");
    CHECK(index >= 0 && index < w->n && scales >= 0 && scales < w->n && index != scales,
          ANVIL_ERR_INVALID_ARG,
          "%s: set_scales(%lld, %lld): two different declared tensors needed (%lld declared)", w->path,
          (long long)index, (long long)scales, (long long)w->n);
    w->t[index].scales = scales;
    return ANVIL_OK;
}

anvil_status anvil_engine_writer_set_scales_info(anvil_engine_writer *w, int64_t index, const json_t *info)
{
    CHECK(w != NULL && json_is_object(info), ANVIL_ERR_INVALID_ARG,
          "anvil_engine_writer_set_scales_info: w is NULL or info is not an object");
    CHECK(index >= 0 && index < w->n && w->t[index].scales >= 0, ANVIL_ERR_INVALID_ARG,
          "%s: set_scales_info(%lld): a declared tensor with scales needed", w->path, (long long)index);
    CHECK(json_object_get(info, "tensor") == NULL, ANVIL_ERR_INVALID_ARG,
          "%s: set_scales_info: \"tensor\" is set_scales's", w->path);
    json_t *copy = json_deep_copy(info);
    CHECK(copy != NULL, ANVIL_ERR_OOM, "out of memory");
    json_decref(w->t[index].scales_info);
    w->t[index].scales_info = copy;
    return ANVIL_OK;
}

/* --------------------------------------------------------------- manifest */

/* The weight table, with each tensor's checksum as it is now. */
static json_t *tensor_table(const anvil_engine_writer *w)
{
    json_t *arr = json_array();
    for (int64_t i = 0; arr != NULL && i < w->n; i++) {
        const wtensor *t = &w->t[i];
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)t->xxh64);
        json_t *shape = json_array();
        for (int d = 0; shape != NULL && d < t->n_dims; d++)
            if (json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) != 0)
                shape = (json_decref(shape), NULL);
        json_t *e = shape ? json_pack("{s:s, s:s, s:o, s:I, s:I, s:s}", "name", t->name, "kind",
                                      anvil_engine_kind_name(t->kind), "shape", shape, "offset",
                                      (json_int_t)t->offset, "bytes", (json_int_t)t->bytes, "xxh64", hex)
                          : NULL;
        json_t *sc = NULL;
        if (e != NULL && t->scales >= 0) { /* "tensor" first, then the quantization's keys */
            sc = json_pack("{s:s}", "tensor", w->t[t->scales].name);
            if (sc != NULL && t->scales_info != NULL && json_object_update(sc, t->scales_info) != 0)
                sc = (json_decref(sc), NULL);
            if (sc == NULL || json_object_set_new(e, "scales", sc) != 0)
                e = (json_decref(e), NULL);
        }
        if (e == NULL || json_array_append_new(arr, e) != 0)
            arr = (json_decref(arr), NULL);
    }
    return arr;
}

static int container_key(const char *k)
{
    return strcmp(k, "format") == 0 || strcmp(k, "format_version") == 0 || strcmp(k, "anvil_version") == 0 ||
           strcmp(k, "tensors") == 0;
}

/* Sets the container's keys in m and prints it (*text taken by the caller),
 * in the order "format", "format_version", "anvil_version", the caller's
 * keys, "tensors": what a file is and who made it come first, so that the
 * first bytes of the manifest say it. */
static anvil_status print_manifest(const anvil_engine_writer *w, json_t *m, char **text)
{
    *text = NULL;
    anvil_status st = ANVIL_OK;
    json_t *table = tensor_table(w);
    json_t *out = json_pack("{s:s, s:[i, i], s:s}", "format", "anvil-engine", "format_version",
                            (int)ANVIL_ENGINE_VERSION_MAJOR, (int)ANVIL_ENGINE_VERSION_MINOR, "anvil_version",
                            ANVIL_VERSION_STRING);
    CHECK_GOTO(table != NULL && out != NULL, ANVIL_ERR_OOM, done, "%s: out of memory for the manifest",
               w->path);
    const char *k;
    json_t *v;
    int bad = 0;
    json_object_foreach(m, k, v)
    {
        if (!container_key(k))
            bad |= json_object_set(out, k, v);
    }
    bad |= json_object_set(out, "tensors", table);
    json_object_foreach(out, k, v)
    {
        if (container_key(k))
            bad |= json_object_set(m, k, v); /* the caller sees what was written */
    }
    CHECK_GOTO(!bad, ANVIL_ERR_OOM, done, "%s: out of memory for the manifest", w->path);
    /* Compact: a manifest that holds a tokenizer is megabytes; key order is
     * kept, so that the same inputs give the same bytes. */
    *text = json_dumps(out, JSON_COMPACT);
    CHECK_GOTO(*text != NULL, ANVIL_ERR_INVALID_ARG, done,
               "%s: the manifest cannot be printed as JSON (a string that is not UTF-8, or NaN?)", w->path);
done:
    json_decref(table);
    json_decref(out);
    return st;
}

/* ------------------------------------------------------------------- data */

/* Shared by the writer's threads; everything below `lock` is guarded by it. */
typedef struct job {
    anvil_engine_writer *w;
    uint64_t data_offset;
    anvil_engine_fill_fn fill;
    void *user;
    const int64_t *order; /* tensor indices, largest first */
    pthread_mutex_t lock;
    pthread_cond_t changed; /* a chunk done, a failure, a worker ended */
    int64_t next;           /* in order */
    size_t done;            /* data bytes written */
    int running;            /* workers not yet ended */
    int stop;               /* a failure or a cancel: take no more work */
    anvil_status st;        /* the first failure */
    char msg[1024], origin[256];
} job;

typedef struct worker {
    job *j;
    uint8_t *buf; /* ANVIL_ENGINE_CHUNK bytes */
    pthread_t thread;
} worker;

static anvil_status pwrite_all(const anvil_engine_writer *w, const void *src, size_t len, uint64_t offset)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(w->fd, (const char *)src + done, len - done, (off_t)(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0, ANVIL_ERR_IO, "cannot write %s: %s", w->path, n < 0 ? strerror(errno) : "no progress");
        done += (size_t)n;
    }
    return ANVIL_OK;
}

/* Records the first failure (its message is this thread's, so it is copied
 * for the calling thread to raise again) and stops the others. */
static void job_fail(job *j, anvil_status st)
{
    pthread_mutex_lock(&j->lock);
    if (!j->stop) {
        j->stop = 1;
        j->st = st;
        snprintf(j->msg, sizeof j->msg, "%s", anvil_last_error());
        snprintf(j->origin, sizeof j->origin, "%s", anvil_last_error_origin());
    }
    pthread_cond_broadcast(&j->changed);
    pthread_mutex_unlock(&j->lock);
}

/* Fills, hashes and writes one tensor, chunk by chunk. */
static anvil_status write_tensor(job *j, uint8_t *buf, int64_t index)
{
    wtensor *t = &j->w->t[index];
    XXH64_state_t s;
    XXH64_reset(&s, 0);
    for (uint64_t off = 0; off < t->bytes; off += ANVIL_ENGINE_CHUNK) {
        size_t len = (size_t)(t->bytes - off < ANVIL_ENGINE_CHUNK ? t->bytes - off : ANVIL_ENGINE_CHUNK);
        pthread_mutex_lock(&j->lock);
        int stop = j->stop;
        pthread_mutex_unlock(&j->lock);
        if (stop)
            return ANVIL_ERR_CANCELLED; /* not recorded: the first failure already is */
        TRY(j->fill(j->user, index, (size_t)off, buf, len));
        XXH64_update(&s, buf, len);
        TRY(pwrite_all(j->w, buf, len, j->data_offset + t->offset + off));
        pthread_mutex_lock(&j->lock);
        j->done += len;
        pthread_cond_broadcast(&j->changed);
        pthread_mutex_unlock(&j->lock);
    }
    t->xxh64 = XXH64_digest(&s); /* this thread owns t until it ends: read after the join */
    return ANVIL_OK;
}

static void *worker_main(void *arg)
{
    worker *wk = arg;
    job *j = wk->j;
    for (;;) {
        pthread_mutex_lock(&j->lock);
        int64_t k = j->stop || j->next >= j->w->n ? -1 : j->next++;
        pthread_mutex_unlock(&j->lock);
        if (k < 0)
            break;
        anvil_status st = write_tensor(j, wk->buf, j->order[k]);
        if (st != ANVIL_OK) {
            job_fail(j, st);
            break;
        }
    }
    pthread_mutex_lock(&j->lock);
    j->running--;
    pthread_cond_broadcast(&j->changed);
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

/* The calling thread's part: report progress until every worker has ended;
 * a nonzero progress return stops them. */
static void watch(job *j, size_t total, anvil_engine_progress_fn progress, void *progress_user)
{
    size_t reported = (size_t)-1;
    pthread_mutex_lock(&j->lock);
    while (j->running > 0 || (progress != NULL && !j->stop && j->done != reported)) {
        if (progress == NULL || j->stop || j->done == reported) {
            pthread_cond_wait(&j->changed, &j->lock);
            continue;
        }
        reported = j->done;
        pthread_mutex_unlock(&j->lock);
        int cancel = progress(progress_user, reported, total);
        pthread_mutex_lock(&j->lock);
        if (cancel && !j->stop) {
            j->stop = 1;
            j->st = ANVIL_ERR_CANCELLED;
            snprintf(j->msg, sizeof j->msg, "%s: writing cancelled", j->w->path);
            j->origin[0] = '\0';
        }
    }
    pthread_mutex_unlock(&j->lock);
}

static int cmp_largest_first(const void *a, const void *b, void *ctx)
{
    const wtensor *t = ctx;
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    if (t[x].bytes != t[y].bytes)
        return t[x].bytes > t[y].bytes ? -1 : 1;
    return (x > y) - (x < y);
}

/* Raises a worker's failure again on this thread (messages are per thread). */
static anvil_status reraise(const job *j)
{
    char file[256];
    snprintf(file, sizeof file, "%s", j->origin);
    char *colon = strrchr(file, ':');
    int line = colon ? atoi(colon + 1) : 0;
    if (colon)
        *colon = '\0';
    if (j->st == ANVIL_ERR_CANCELLED && j->origin[0] == '\0')
        return ANVIL_FAIL(j->st, "%s", j->msg);
    return anvil_error_set(j->st, file[0] ? file : __FILE__, line, "%s", j->msg);
}

/* Writes every tensor's bytes at data_offset with up to n_threads workers. */
static anvil_status write_data(anvil_engine_writer *w, uint64_t data_offset, anvil_engine_fill_fn fill,
                               void *user, int n_threads, anvil_engine_progress_fn progress,
                               void *progress_user)
{
    job j = {.w = w, .data_offset = data_offset, .fill = fill, .user = user};
    int nw = n_threads < 1 ? 1 : n_threads > MAX_THREADS ? MAX_THREADS : n_threads;
    if (nw > w->n)
        nw = w->n > 0 ? (int)w->n : 1;
    anvil_status st = ANVIL_OK;
    int64_t *order = malloc((size_t)(w->n ? w->n : 1) * sizeof *order);
    worker *wk = calloc((size_t)nw, sizeof *wk);
    CHECK_GOTO(order != NULL && wk != NULL, ANVIL_ERR_OOM, done, "%s: out of memory", w->path);
    for (int64_t i = 0; i < w->n; i++)
        order[i] = i;
    qsort_r(order, (size_t)w->n, sizeof *order, cmp_largest_first, w->t);
    j.order = order;
    for (int i = 0; i < nw; i++) {
        wk[i].j = &j;
        wk[i].buf = malloc(ANVIL_ENGINE_CHUNK);
        CHECK_GOTO(wk[i].buf != NULL, ANVIL_ERR_OOM, done,
                   "%s: out of memory for %d write buffers of %zu MiB", w->path, nw,
                   ANVIL_ENGINE_CHUNK >> 20);
    }
    pthread_mutex_init(&j.lock, NULL);
    pthread_cond_init(&j.changed, NULL);
    int started = 0;
    for (; started < nw; started++) {
        pthread_mutex_lock(&j.lock);
        j.running++;
        pthread_mutex_unlock(&j.lock);
        if (pthread_create(&wk[started].thread, NULL, worker_main, &wk[started]) != 0) {
            pthread_mutex_lock(&j.lock);
            j.running--;
            pthread_mutex_unlock(&j.lock);
            break; /* fewer threads do the same work */
        }
    }
    if (started == 0)
        job_fail(&j, ANVIL_FAIL(ANVIL_ERR_INTERNAL, "%s: cannot start a writer thread", w->path));
    size_t total = 0; /* the tensors' bytes, without the padding */
    for (int64_t i = 0; i < w->n; i++)
        total += (size_t)w->t[i].bytes;
    watch(&j, total, progress, progress_user);
    for (int i = 0; i < started; i++)
        pthread_join(wk[i].thread, NULL);
    pthread_cond_destroy(&j.changed);
    pthread_mutex_destroy(&j.lock);
    if (j.stop)
        st = reraise(&j);
done:
    for (int i = 0; wk != NULL && i < nw; i++)
        free(wk[i].buf);
    free(wk);
    free(order);
    return st;
}

/* ----------------------------------------------------------------- finish */

/* Sizes the file up front: the space is reserved, so a full disk fails here
 * rather than after minutes of writing, and the padding between tensors
 * reads as zeros without being written. */
static anvil_status reserve(const anvil_engine_writer *w, uint64_t size)
{
    if (size == 0)
        return ANVIL_OK;
    if (fallocate(w->fd, 0, 0, (off_t)size) == 0)
        return ANVIL_OK;
    CHECK(errno == EOPNOTSUPP || errno == ENOSYS, ANVIL_ERR_IO, "cannot make %s %llu bytes: %s", w->path,
          (unsigned long long)size, strerror(errno));
    CHECK(ftruncate(w->fd, (off_t)size) == 0, ANVIL_ERR_IO, "cannot make %s %llu bytes: %s", w->path,
          (unsigned long long)size, strerror(errno));
    return ANVIL_OK;
}

static anvil_status finish(anvil_engine_writer *w, json_t *m, anvil_engine_fill_fn fill, void *user,
                           int n_threads, anvil_engine_progress_fn progress, void *progress_user)
{
    char *text = NULL;
    anvil_status st = ANVIL_OK;
    TRY_GOTO(print_manifest(w, m, &text), done); /* placeholder checksums (all 0): only its length counts */
    anvil_engine_header h = {
        .version_major = ANVIL_ENGINE_VERSION_MAJOR,
        .version_minor = ANVIL_ENGINE_VERSION_MINOR,
        .header_size = ANVIL_ENGINE_HEADER_SIZE,
        .manifest_offset = ANVIL_ENGINE_HEADER_SIZE,
        .manifest_length = strlen(text),
        .data_length = w->data_end,
    };
    CHECK_GOTO(h.manifest_length <= ANVIL_ENGINE_MAX_MANIFEST, ANVIL_ERR_INVALID_ARG, done,
               "%s: the manifest is %llu bytes, over the %llu-byte limit", w->path,
               (unsigned long long)h.manifest_length, (unsigned long long)ANVIL_ENGINE_MAX_MANIFEST);
    h.data_offset = align_up(h.manifest_offset + h.manifest_length, ANVIL_ENGINE_SECTION_ALIGN);
    h.file_size = h.data_offset + h.data_length;
    TRY_GOTO(reserve(w, h.file_size), done);
    TRY_GOTO(write_data(w, h.data_offset, fill, user, n_threads, progress, progress_user), done);
    free(text);
    TRY_GOTO(print_manifest(w, m, &text), done);
    CHECK_GOTO(strlen(text) == h.manifest_length, ANVIL_ERR_INTERNAL, done,
               "%s: the manifest changed length when its checksums were filled in", w->path);
    h.manifest_xxh64 = anvil_engine_xxh64(text, h.manifest_length);
    TRY_GOTO(pwrite_all(w, text, h.manifest_length, h.manifest_offset), done);
    uint8_t head[ANVIL_ENGINE_HEADER_SIZE];
    anvil_engine_header_encode(&h, head);
    TRY_GOTO(pwrite_all(w, head, sizeof head, 0), done);
    /* close reports late write errors (NFS, quotas); the fd is gone either way */
    int rc = close(w->fd);
    w->fd = -1;
    CHECK_GOTO(rc == 0, ANVIL_ERR_IO, done, "cannot write %s: %s", w->path, strerror(errno));
    CHECK_GOTO(rename(w->tmp, w->path) == 0, ANVIL_ERR_IO, done, "cannot rename %s to %s: %s", w->tmp,
               w->path, strerror(errno));
done:
    if (st != ANVIL_OK && w->fd < 0)
        unlink(w->tmp); /* closed above but not renamed; abort removes it when still open */
    free(text);
    return st;
}

anvil_status anvil_engine_writer_finish(anvil_engine_writer *w, json_t *manifest, anvil_engine_fill_fn fill,
                                        void *user, int n_threads, anvil_engine_progress_fn progress,
                                        void *progress_user)
{
    CHECK(w != NULL, ANVIL_ERR_INVALID_ARG, "anvil_engine_writer_finish: w is NULL");
    anvil_status st = ANVIL_OK;
    json_t *m = manifest ? json_incref(manifest) : json_object();
    CHECK_GOTO(m != NULL, ANVIL_ERR_OOM, done, "%s: out of memory", w->path);
    CHECK_GOTO(json_is_object(m), ANVIL_ERR_INVALID_ARG, done,
               "%s: the manifest must be a JSON object, got %s", w->path,
               json_is_array(m) ? "an array" : "a scalar");
    CHECK_GOTO(fill != NULL || w->n == 0, ANVIL_ERR_INVALID_ARG, done, "%s: no fill callback", w->path);
    st = finish(w, m, fill, user, n_threads, progress, progress_user);
done:
    json_decref(m);
    anvil_engine_writer_abort(w); /* after a rename there is nothing left to remove */
    return st;
}
