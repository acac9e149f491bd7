/* Reading tensors with pread (ANVIL_ST_READ) instead of a mapping: the same
 * bytes as the mapping; a file truncated after the open is an error naming
 * it at the next read (never SIGBUS); a file rewritten in place is caught by
 * anvil_safetensors_check_unchanged; a FIFO (a shard that never delivers)
 * is refused at once instead of blocking the open, by the safetensors
 * reader and by anvil_read_file. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fileutil.h"
#include "io/safetensors.h"
#include "testutil.h"

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", anvil_test_tmpdir(), name);
    return buf[k];
}

/* A file of two tensors: "a" f32 [64, 33], "b" bf16 [1000]. */
static void write_two(const char *path, float *a, uint16_t *b)
{
    for (int i = 0; i < 64 * 33; i++)
        a[i] = (float)i * 0.25f - 7.0f;
    for (int i = 0; i < 1000; i++)
        b[i] = anvil_f32_to_bf16((float)i);
    const anvil_st_tensor ts[2] = {
        {.name = "a", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {64, 33}, .data = a, .nbytes = sizeof(float) * 64 * 33},
        {.name = "b", .dtype = ANVIL_DTYPE_BF16, .n_dims = 1, .shape = {1000}, .data = b, .nbytes = 2000},
    };
    assert_int_equal(anvil_safetensors_write(path, ts, 2), ANVIL_OK);
}

static void test_read_equals_map(void **st)
{
    (void)st;
    static float a[64 * 33];
    static uint16_t b[1000];
    const char *path = tmp_path("two.safetensors");
    write_two(path, a, b);
    anvil_safetensors *m = NULL, *r = NULL;
    assert_int_equal(anvil_safetensors_open_ex(path, ANVIL_ST_MMAP, &m), ANVIL_OK);
    assert_int_equal(anvil_safetensors_open_ex(path, ANVIL_ST_READ, &r), ANVIL_OK);
    assert_int_equal(anvil_safetensors_count(r), 2);
    for (int i = 0; i < 2; i++) {
        const anvil_st_tensor *tm = anvil_safetensors_at(m, i), *tr = anvil_safetensors_find(r, tm->name);
        assert_non_null(tr);
        assert_null(tr->data); /* nothing mapped */
        assert_non_null(tm->data);
        assert_int_equal(tr->nbytes, tm->nbytes);
        assert_int_equal(tr->file_offset, tm->file_offset);
        unsigned char *buf = malloc(tr->nbytes);
        assert_non_null(buf);
        assert_int_equal(anvil_st_read(tr, 0, buf, tr->nbytes), ANVIL_OK);
        assert_memory_equal(buf, tm->data, tr->nbytes);
        /* a slice, and the same through the mapped tensor */
        assert_int_equal(anvil_st_read(tr, 6, buf, 10), ANVIL_OK);
        assert_memory_equal(buf, (const char *)tm->data + 6, 10);
        assert_int_equal(anvil_st_read(tm, 6, buf, 10), ANVIL_OK);
        assert_memory_equal(buf, (const char *)tm->data + 6, 10);
        /* outside the tensor */
        assert_status_msg(anvil_st_read(tr, tr->nbytes - 4, buf, 8), ANVIL_ERR_INVALID_ARG, "outside tensor");
        free(buf);
    }
    assert_int_equal(anvil_safetensors_check_unchanged(r), ANVIL_OK);
    assert_int_equal(anvil_safetensors_check_unchanged(m), ANVIL_OK); /* mapped: nothing to check */
    anvil_safetensors_close(m);
    anvil_safetensors_close(r);
}

/* The checkpoint replaced while a server runs, or a disk filling up: the
 * bytes past the new end are an error naming the file, and the bytes still
 * there read as before. */
static void test_truncated_after_open(void **st)
{
    (void)st;
    static float a[64 * 33];
    static uint16_t b[1000];
    const char *path = tmp_path("trunc.safetensors");
    write_two(path, a, b);
    anvil_safetensors *r = NULL;
    assert_int_equal(anvil_safetensors_open_ex(path, ANVIL_ST_READ, &r), ANVIL_OK);
    const anvil_st_tensor *ta = anvil_safetensors_find(r, "a"), *tb = anvil_safetensors_find(r, "b");
    /* data is ordered by element size, largest first: a, then b at the end */
    assert_true(tb->file_offset > ta->file_offset);
    assert_int_equal(truncate(path, (off_t)tb->file_offset + 100), 0);
    unsigned char buf[2000];
    assert_int_equal(anvil_st_read(tb, 0, buf, 100), ANVIL_OK); /* still there */
    assert_status_msg(anvil_st_read(tb, 0, buf, 2000), ANVIL_ERR_IO, "changed while in use");
    assert_status_msg(anvil_st_read(tb, 0, buf, 2000), ANVIL_ERR_IO, "trunc.safetensors");
    assert_status_msg(anvil_safetensors_check_unchanged(r), ANVIL_ERR_IO, "changed while it was read");
    anvil_safetensors_close(r);
    /* opened again, the header no longer fits the file */
    r = (anvil_safetensors *)0x1;
    assert_status_msg(anvil_safetensors_open_ex(path, ANVIL_ST_READ, &r), ANVIL_ERR_FORMAT, "out of bounds");
    assert_null(r);
}

/* Rewritten in place (same size, new contents): only the modification time
 * tells; check_unchanged does. */
static void test_rewritten_in_place(void **st)
{
    (void)st;
    static float a[64 * 33];
    static uint16_t b[1000];
    const char *path = tmp_path("rewrite.safetensors");
    write_two(path, a, b);
    anvil_safetensors *r = NULL;
    assert_int_equal(anvil_safetensors_open_ex(path, ANVIL_ST_READ, &r), ANVIL_OK);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    struct timespec later[2] = {sb.st_atim, sb.st_mtim};
    later[1].tv_sec += 5;
    assert_int_equal(utimensat(AT_FDCWD, path, later, 0), 0);
    assert_status_msg(anvil_safetensors_check_unchanged(r), ANVIL_ERR_IO, "rewrite.safetensors");
    anvil_safetensors_close(r);
}

/* A FIFO is not a regular file: refused at once, whichever way it is opened
 * (before the fix, opening a FIFO shard waited forever for a writer). */
static void test_fifo_refused(void **st)
{
    (void)st;
    const char *path = tmp_path("fifo.safetensors");
    unlink(path);
    assert_int_equal(mkfifo(path, 0600), 0);
    anvil_safetensors *f = (anvil_safetensors *)0x1;
    assert_status_msg(anvil_safetensors_open_ex(path, ANVIL_ST_READ, &f), ANVIL_ERR_IO, "not a regular file");
    assert_null(f);
    assert_status_msg(anvil_safetensors_open_ex(path, ANVIL_ST_MMAP, &f), ANVIL_ERR_IO, "not a regular file");
    char *text = NULL;
    size_t len = 0;
    assert_status_msg(anvil_read_file(path, &text, &len), ANVIL_ERR_IO, "not a regular file");
    assert_null(text);
    unlink(path);
}

/* A sharded checkpoint whose index names a FIFO shard: an error naming the
 * shard, not a load that never ends. */
static void test_fifo_shard(void **st)
{
    (void)st;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/fifo_ckpt", anvil_test_tmpdir());
    assert_int_equal(mkdir(dir, 0700), 0);
    static float a[64 * 33];
    static uint16_t b[1000];
    char p1[600], p2[600], idx[600];
    snprintf(p1, sizeof p1, "%s/part-1.safetensors", dir);
    snprintf(p2, sizeof p2, "%s/part-2.safetensors", dir);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    write_two(p1, a, b);
    assert_int_equal(mkfifo(p2, 0600), 0);
    const char *index = "{\"weight_map\": {\"a\": \"part-1.safetensors\", \"c\": \"part-2.safetensors\"}}";
    anvil_test_write_file(idx, index, strlen(index));
    for (int mode = 0; mode < 2; mode++) {
        anvil_checkpoint *c = (anvil_checkpoint *)0x1;
        assert_status_msg(anvil_checkpoint_open_ex(dir, mode ? ANVIL_ST_READ : ANVIL_ST_MMAP, &c), ANVIL_ERR_IO,
                          "part-2.safetensors is not a regular file");
        assert_null(c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_equals_map),   cmocka_unit_test(test_truncated_after_open),
        cmocka_unit_test(test_rewritten_in_place), cmocka_unit_test(test_fifo_refused),
        cmocka_unit_test(test_fifo_shard),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
