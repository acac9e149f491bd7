/*
 * The executor's command-line clients end to end (the anvil binary from
 * ANVIL_BIN): `anvil run --input` (results in input order, errors on their
 * own lines, greedy = HF), `anvil run --beam-width` (the beams and scores
 * of the goldens), and `anvil bench` (its JSON report adds up).
 */
#include <math.h>
#include <sys/wait.h>

#include "exec_testkit.h"

/* Runs cmd; returns its stdout (malloc'd) and exit code. */
static char *run_cmd(const char *cmd, int *code)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t k;
    while ((k = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += k;
        if (cap - n < 1024) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    buf[n] = '\0';
    int st = pclose(p);
    *code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return buf;
}

static const char *bin(void)
{
    const char *b = getenv("ANVIL_BIN");
    if (b == NULL)
        skip();
    return b;
}

static void test_run_input(void **state)
{
    (void)state;
    kit_case cases[8];
    kit_cases("stories260K", cases, 8);
    char path[600], cmd[2048];
    snprintf(path, sizeof path, "%s/requests.jsonl", anvil_test_tmpdir());
    char body[4096];
    int off = 0;
    off += snprintf(body + off, sizeof body - (size_t)off, "{\"prompt_ids\": [");
    for (int32_t i = 0; i < cases[2].n_ids; i++)
        off += snprintf(body + off, sizeof body - (size_t)off, "%s%d", i ? "," : "", cases[2].ids[i]);
    off += snprintf(body + off, sizeof body - (size_t)off,
                    "], \"max_tokens\": %d, \"temperature\": 0}\n"
                    "{\"prompt\": \"Once upon a time\", \"max_tokens\": 12, \"temperature\": 0.7, \"seed\": 5, "
                    "\"n\": 2, \"logprobs\": 3, \"stop\": [\"zzz\"]}\n"
                    "{\"prompt\": \"x\", \"top_p\": 7}\n"
                    "\n"
                    "{\"prompt\": \"Once upon a time\", \"max_tokens\": 8, \"temperature\": 0}\n",
                    cases[2].n_greedy);
    anvil_test_write_file(path, body, (size_t)off);
    snprintf(cmd, sizeof cmd, "%s run --model %s/models/stories260K --input %s 2>/dev/null", bin(),
             anvil_test_shared_dir(), path);
    int code;
    char *out = run_cmd(cmd, &code);
    assert_int_equal(code, 1); /* one line was refused */
    json_t *lines[4];
    char *save = NULL, *tokp = strtok_r(out, "\n", &save);
    for (int i = 0; i < 4; i++, tokp = strtok_r(NULL, "\n", &save)) {
        assert_non_null(tokp);
        json_error_t jerr;
        lines[i] = json_loads(tokp, 0, &jerr);
        assert_non_null(lines[i]);
        assert_int_equal(json_integer_value(json_object_get(lines[i], "index")), i);
    }
    assert_null(tokp);
    /* line 0: HF's greedy continuation */
    json_t *ids = json_object_get(json_array_get(json_object_get(lines[0], "choices"), 0), "token_ids");
    assert_int_equal((int)json_array_size(ids), cases[2].n_greedy);
    for (int32_t i = 0; i < cases[2].n_greedy; i++)
        assert_int_equal(json_integer_value(json_array_get(ids, (size_t)i)), cases[2].greedy[i]);
    /* line 1: two samples with logprobs and text */
    json_t *choices = json_object_get(lines[1], "choices");
    assert_int_equal((int)json_array_size(choices), 2);
    json_t *c0 = json_array_get(choices, 0);
    assert_true(json_is_string(json_object_get(c0, "text")));
    json_t *top = json_object_get(json_object_get(c0, "logprobs"), "top_logprobs");
    assert_int_equal((int)json_array_size(top), 12);
    assert_int_equal((int)json_array_size(json_array_get(top, 0)), 3);
    /* line 2: the error, named */
    assert_non_null(strstr(json_string_value(json_object_get(lines[2], "error")), "top_p"));
    /* line 3 (after an empty input line) */
    assert_string_equal(json_string_value(json_object_get(lines[3], "finish_reason")), "length");
    json_t *usage = json_object_get(lines[3], "usage");
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 8);
    for (int i = 0; i < 4; i++)
        json_decref(lines[i]);
    free(out);
}

static void test_run_beam(void **state)
{
    (void)state;
    kit_case cases[8];
    kit_cases("stories260K", cases, 8);
    char ids[1024] = "", cmd[2048];
    for (int32_t i = 0; i < cases[3].n_ids; i++)
        snprintf(ids + strlen(ids), sizeof ids - strlen(ids), "%s%d", i ? "," : "", cases[3].ids[i]);
    snprintf(cmd, sizeof cmd, "%s run --model %s/models/stories260K --prompt-ids %s --beam-width 4 --max-tokens %d 2>/dev/null",
             bin(), anvil_test_shared_dir(), ids, cases[3].n_beam_tokens[0]);
    int code;
    char *out = run_cmd(cmd, &code);
    assert_int_equal(code, 0);
    json_error_t jerr;
    json_t *o = json_loads(out, 0, &jerr);
    assert_non_null(o);
    json_t *choices = json_object_get(o, "choices");
    assert_int_equal((int)json_array_size(choices), 4);
    for (int b = 0; b < 4; b++) {
        json_t *c = json_array_get(choices, (size_t)b);
        json_t *t = json_object_get(c, "token_ids");
        for (int32_t i = 0; i < cases[3].n_beam_tokens[b]; i++)
            assert_int_equal(json_integer_value(json_array_get(t, (size_t)i)), cases[3].beams[b][i]);
        assert_true(fabs(json_real_value(json_object_get(c, "score")) - cases[3].beam_scores[b]) < 1e-3);
    }
    json_decref(o);
    free(out);
}

static void test_bench(void **state)
{
    (void)state;
    char path[600], cmd[2048];
    snprintf(path, sizeof path, "%s/bench.json", anvil_test_tmpdir());
    snprintf(cmd, sizeof cmd,
             "%s bench --model %s/models/stories260K --num-requests 12 --input-len 10:40 --output-len 6 "
             "--shared-prefix 8 --concurrency 4 --block-size 8 --no-progress --json %s 2>/dev/null",
             bin(), anvil_test_shared_dir(), path);
    int code;
    char *out = run_cmd(cmd, &code);
    assert_int_equal(code, 0);
    assert_non_null(strstr(out, "time to first token"));
    json_error_t jerr;
    json_t *o = json_load_file(path, 0, &jerr);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "requests")), 12);
    assert_int_equal(json_integer_value(json_object_get(o, "output_tokens")), 12 * 6);
    json_t *itl = json_object_get(json_object_get(o, "latency_ms"), "itl");
    assert_int_equal(json_integer_value(json_object_get(itl, "count")), 12 * 5);
    assert_true(json_real_value(json_object_get(o, "prefix_hit_rate")) > 0.0); /* the shared 8-token block */
    json_decref(o);
    free(out);

    /* a bad flag is a usage error */
    snprintf(cmd, sizeof cmd, "%s bench --model %s/models/stories260K --input-len 5:2 2>/dev/null", bin(),
             anvil_test_shared_dir());
    out = run_cmd(cmd, &code);
    assert_int_equal(code, 2);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_input),
        cmocka_unit_test(test_run_beam),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
