/* The last error: a plain message for users, its origin (file:line) apart. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/runtime.h"
#include "core/error.h"
#include "core/fileutil.h"
#include "testutil.h"

/* "file.c:LINE" ends the origin, with at least one digit after the colon. */
static int is_origin(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon - s < 3 || strncmp(colon - 2, ".c", 2) != 0 || colon[1] == '\0')
        return 0;
    for (const char *p = colon + 1; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    return 1;
}

static anvil_status fail_here(int *line)
{
    *line = __LINE__ + 1;
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "bad value %d in '%s'", 7, "x.json");
}

static void test_message_is_plain_and_origin_apart(void **state)
{
    (void)state;
    int line = 0;
    assert_int_equal(fail_here(&line), ANVIL_ERR_FORMAT);
    assert_string_equal(anvil_last_error(), "bad value 7 in 'x.json'");
    assert_int_equal(anvil_last_status(), ANVIL_ERR_FORMAT);
    char want[64];
    snprintf(want, sizeof want, "tests/core/test_error_origin.c:%d", line);
    assert_string_equal(anvil_last_error_origin(), want);
}

static void test_wrap_prefixes_message_and_keeps_origin(void **state)
{
    (void)state;
    int line = 0;
    fail_here(&line);
    char origin[128];
    snprintf(origin, sizeof origin, "%s", anvil_last_error_origin());
    assert_int_equal(anvil_error_wrap("tensor '%s'", "w"), ANVIL_ERR_FORMAT);
    assert_int_equal(anvil_error_wrap("model.safetensors"), ANVIL_ERR_FORMAT);
    assert_string_equal(anvil_last_error(), "model.safetensors: tensor 'w': bad value 7 in 'x.json'");
    assert_string_equal(anvil_last_error_origin(), origin);
    assert_int_equal(anvil_last_status(), ANVIL_ERR_FORMAT);
}

/* A message built from the previous one ("outer: %s", anvil_last_error())
 * reads it before overwriting it. */
static void test_message_from_the_last_one(void **state)
{
    (void)state;
    int line = 0;
    fail_here(&line);
    int outer = __LINE__ + 1;
    ANVIL_FAIL(ANVIL_ERR_IO, "cannot load '%s': %s", "m", anvil_last_error());
    assert_string_equal(anvil_last_error(), "cannot load 'm': bad value 7 in 'x.json'");
    assert_int_equal(anvil_last_status(), ANVIL_ERR_IO);
    char want[64];
    snprintf(want, sizeof want, "tests/core/test_error_origin.c:%d", outer);
    assert_string_equal(anvil_last_error_origin(), want);
}

static void test_clear_and_long_messages(void **state)
{
    (void)state;
    char big[3000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "%s", big);
    size_t n = strlen(anvil_last_error());
    assert_true(n > 500 && n < sizeof big - 1); /* cut, not overflowed */
    assert_int_equal(anvil_last_error()[0], 'a');
    assert_true(is_origin(anvil_last_error_origin()));
    anvil_error_wrap("%s", big); /* a context longer than the buffer */
    assert_true(strlen(anvil_last_error()) < sizeof big - 1);
    anvil_clear_error();
    assert_string_equal(anvil_last_error(), "");
    assert_string_equal(anvil_last_error_origin(), "");
    assert_int_equal(anvil_last_status(), ANVIL_OK);
}

/* Copies the shared stories260K folder's src file into dir, with one
 * string replaced (when from is not NULL). */
static void copy_model_file(const char *dir, const char *name, const char *from, const char *to)
{
    char path[1024];
    snprintf(path, sizeof path, "%s", anvil_test_shared_path("models/stories260K"));
    size_t plen = strlen(path);
    snprintf(path + plen, sizeof path - plen, "/%s", name);
    char *data;
    size_t len;
    assert_int_equal(anvil_read_file(path, &data, &len), ANVIL_OK);
    char out[1024];
    snprintf(out, sizeof out, "%s/%s", dir, name);
    char *at = from ? strstr(data, from) : NULL;
    if (at == NULL) {
        anvil_test_write_file(out, data, len);
    } else {
        FILE *f = fopen(out, "wb");
        assert_non_null(f);
        fwrite(data, 1, (size_t)(at - data), f);
        fputs(to, f);
        fputs(at + strlen(from), f);
        fclose(f);
    }
    free(data);
}

/* Real failures through the public API: the message names the problem, not
 * a source file; the origin is a file under src/. */
static void test_library_failure(void **state)
{
    (void)state;
    const char *dir = anvil_test_tmpdir();
    copy_model_file(dir, "config.json", "\"LlamaForCausalLM\"", "\"FalconForCausalLM\"");
    copy_model_file(dir, "model.safetensors", NULL, NULL);
    anvil_runtime *rt = NULL;
    assert_status_msg(anvil_runtime_load(dir, NULL, &rt), ANVIL_ERR_UNSUPPORTED,
                      "unsupported architecture 'FalconForCausalLM'");
    assert_null(rt);
    const char *msg = anvil_last_error();
    assert_null(strstr(msg, "src/"));
    assert_null(strstr(msg, ".c:"));
    const char *origin = anvil_last_error_origin();
    assert_int_equal(strncmp(origin, "src/", 4), 0);
    assert_true(is_origin(origin));

    char path[1024];
    snprintf(path, sizeof path, "%s/no-such-folder", dir);
    assert_int_not_equal(anvil_runtime_load(path, NULL, &rt), ANVIL_OK);
    assert_non_null(strstr(anvil_last_error(), "no-such-folder"));
    assert_null(strstr(anvil_last_error(), ".c:"));
    assert_int_equal(strncmp(anvil_last_error_origin(), "src/", 4), 0);
    assert_true(is_origin(anvil_last_error_origin()));
}

static void *other_thread(void *arg)
{
    (void)arg;
    ANVIL_FAIL(ANVIL_ERR_IO, "from the other thread");
    return NULL;
}

/* Each thread has its own last error and origin. */
static void test_per_thread(void **state)
{
    (void)state;
    int line = 0;
    fail_here(&line);
    char origin[128];
    snprintf(origin, sizeof origin, "%s", anvil_last_error_origin());
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
    pthread_join(t, NULL);
    assert_string_equal(anvil_last_error(), "bad value 7 in 'x.json'");
    assert_string_equal(anvil_last_error_origin(), origin);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_message_is_plain_and_origin_apart),
        cmocka_unit_test(test_wrap_prefixes_message_and_keeps_origin),
        cmocka_unit_test(test_message_from_the_last_one),
        cmocka_unit_test(test_clear_and_long_messages),
        cmocka_unit_test(test_library_failure),
        cmocka_unit_test(test_per_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
