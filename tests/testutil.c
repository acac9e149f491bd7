#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

const char *anvil_test_tmpdir(void)
{
    static char dir[256];
    if (dir[0] == '\0') {
        const char *base = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/anvil-test-XXXXXX", base && *base ? base : "/tmp");
        if (mkdtemp(dir) == NULL)
            fail_msg("mkdtemp failed");
    }
    return dir;
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
