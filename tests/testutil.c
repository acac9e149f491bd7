#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <math.h>

#include "io/safetensors.h"

const char *anvil_test_shared_dir(void)
{
    const char *d = getenv("ANVIL_SHARED_DIR");
    return d && *d ? d : "../shared";
}

const char *anvil_test_shared_path(const char *rel)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", anvil_test_shared_dir(), rel);
    return buf;
}

/* tests/data/models/<model>/<file> of the source tree into buf, or NULL
 * when that file is not there. */
static const char *repo_model_file(const char *model, const char *file, char *buf, size_t cap)
{
    const char *src = getenv("ANVIL_SOURCE_DIR");
    snprintf(buf, cap, "%s/tests/data/models/%s/%s", src && *src ? src : ".", model, file);
    if (access(buf, R_OK) != 0)
        return NULL;
    snprintf(buf, cap, "%s/tests/data/models/%s", src && *src ? src : ".", model);
    return buf;
}

const char *anvil_test_model_dir(const char *model)
{
    static char buf[4096];
    if (repo_model_file(model, "config.json", buf, sizeof buf) != NULL)
        return buf;
    snprintf(buf, sizeof buf, "%s/models/%s", anvil_test_shared_dir(), model);
    return buf;
}

const char *anvil_test_golden_dir(const char *model)
{
    static char buf[4096];
    if (repo_model_file(model, "cases.json", buf, sizeof buf) != NULL)
        return buf;
    snprintf(buf, sizeof buf, "%s/golden/models/%s", anvil_test_shared_dir(), model);
    return buf;
}

static char tmp_dir[256];
static pid_t tmp_dir_owner;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* At exit, the test's temporary folder goes (engines and model copies of
 * hundreds of MB each: left behind, a day of test runs filled the disk).
 * Only in the process that made it: a forked child's exit leaves it to its
 * parent. ANVIL_TEST_KEEP_TMP=1 keeps it, for looking at after a failure. */
static void remove_tmp_dir(void)
{
    const char *keep = getenv("ANVIL_TEST_KEEP_TMP");
    if (tmp_dir[0] == '\0' || getpid() != tmp_dir_owner || (keep && *keep && strcmp(keep, "0") != 0))
        return;
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *anvil_test_tmpdir(void)
{
    if (tmp_dir[0] == '\0') {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_dir, sizeof tmp_dir, "%s/anvil-test-XXXXXX", base && *base ? base : "/tmp");
        if (mkdtemp(tmp_dir) == NULL)
            fail_msg("mkdtemp failed");
        tmp_dir_owner = getpid();
        atexit(remove_tmp_dir);
    }
    return tmp_dir;
}

void anvil_test_model_variant(const char *model, const char *name, const char *patch, char *out, size_t cap)
{
    char rel[1024], src[PATH_MAX], from[PATH_MAX + 256], to[2048];
    snprintf(rel, sizeof rel, "%s/models/%s", anvil_test_shared_dir(), model);
    /* absolute: the links live elsewhere */
    if (realpath(rel, src) == NULL)
        fail_msg("cannot open %s", rel);
    if ((size_t)snprintf(out, cap, "%s/%s", anvil_test_tmpdir(), name) >= cap)
        fail_msg("model variant path too long");
    if (mkdir(out, 0755) != 0 && errno != EEXIST)
        fail_msg("cannot make %s", out);
    DIR *d = opendir(src);
    if (d == NULL)
        fail_msg("cannot open %s", src);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "config.json") == 0)
            continue;
        snprintf(from, sizeof from, "%s/%s", src, e->d_name);
        snprintf(to, sizeof to, "%s/%s", out, e->d_name);
        unlink(to);
        if (symlink(from, to) != 0)
            fail_msg("cannot link %s", to);
    }
    closedir(d);
    json_error_t err;
    snprintf(from, sizeof from, "%s/config.json", src);
    json_t *cfg = json_load_file(from, 0, &err), *p = json_loads(patch, 0, &err);
    if (cfg == NULL || p == NULL || json_object_update(cfg, p) != 0)
        fail_msg("config patch for %s: %s", name, err.text);
    snprintf(to, sizeof to, "%s/config.json", out);
    if (json_dump_file(cfg, to, JSON_INDENT(2)) != 0)
        fail_msg("cannot write %s", to);
    json_decref(cfg);
    json_decref(p);
}

void anvil_test_perturbed_model(const char *model, const char *name, double amplitude, const char *patch,
                                void (*edit)(anvil_st_tensor *t, void *data), char *out, size_t cap)
{
    anvil_test_model_variant(model, name, patch ? patch : "{}", out, cap);
    char src[1024], dst[1100];
    snprintf(src, sizeof src, "%s/models/%s/model.safetensors", anvil_test_shared_dir(), model);
    snprintf(dst, sizeof dst, "%s/model.safetensors", out);
    anvil_safetensors *f = NULL;
    if (anvil_safetensors_open(src, &f) != ANVIL_OK)
        fail_msg("%s: %s", src, anvil_last_error());
    const int64_t n = anvil_safetensors_count(f);
    anvil_st_tensor *ts = calloc((size_t)n, sizeof *ts);
    void **bufs = calloc((size_t)n, sizeof *bufs);
    if (ts == NULL || bufs == NULL)
        fail_msg("out of memory");
    for (int64_t k = 0; k < n; k++) {
        const anvil_st_tensor *t = anvil_safetensors_at(f, k);
        ts[k] = *t;
        bufs[k] = malloc(t->nbytes ? t->nbytes : 1);
        if (bufs[k] == NULL)
            fail_msg("out of memory");
        memcpy(bufs[k], t->data, t->nbytes);
        const size_t es = anvil_dtype_size(t->dtype);
        const int64_t ne = (int64_t)(t->nbytes / es);
        if (amplitude != 0.0 && (t->dtype == ANVIL_DTYPE_F32 || t->dtype == ANVIL_DTYPE_BF16 ||
                                 t->dtype == ANVIL_DTYPE_F16)) {
            float *v = malloc((size_t)(ne ? ne : 1) * sizeof *v);
            if (v == NULL)
                fail_msg("out of memory");
            anvil_convert_to_f32(t->dtype, bufs[k], v, ne);
            for (int64_t i = 0; i < ne; i++)
                v[i] *= (float)(1.0 + amplitude * sin((double)i + 7.0 * (double)k));
            anvil_convert_from_f32(t->dtype, v, bufs[k], ne);
            free(v);
        }
        if (edit)
            edit(&ts[k], bufs[k]);
        ts[k].data = bufs[k];
    }
    unlink(dst); /* the link to the original */
    if (anvil_safetensors_write(dst, ts, n) != ANVIL_OK)
        fail_msg("%s: %s", dst, anvil_last_error());
    for (int64_t k = 0; k < n; k++)
        free(bufs[k]);
    free(bufs);
    free(ts);
    anvil_safetensors_close(f);
}

void anvil_test_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        fail_msg("cannot write %s", path);
    if (len && fwrite(data, 1, len, f) != len)
        fail_msg("short write to %s", path);
    fclose(f);
}

void anvil_test_assert_status_msg(anvil_status st, anvil_status want, const char *needle, const char *file, int line)
{
    if (st != want) {
        print_error("status %s, wanted %s (message: %s)\n", anvil_status_name(st), anvil_status_name(want),
                    anvil_last_error());
        _fail(file, line);
    }
    if (needle && strstr(anvil_last_error(), needle) == NULL) {
        print_error("message \"%s\" lacks \"%s\"\n", anvil_last_error(), needle);
        _fail(file, line);
    }
}

uint64_t anvil_test_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

float anvil_test_randf(uint64_t *s) { return (float)((anvil_test_rand(s) >> 40) * (1.0 / 8388608.0)) - 1.0f; }

int anvil_test_n_skipped;

int anvil_test_group_result(int n_failed, size_t n_tests)
{
    if (n_failed == 0 && n_tests > 0 && (size_t)anvil_test_n_skipped >= n_tests) {
        printf("every case skipped: exit 77 (CTest: skipped)\n");
        return 77;
    }
    return n_failed;
}
