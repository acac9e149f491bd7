/*
 * The Jinja interpreter: the constructs chat templates use, Python-exact
 * printing, whitespace control, errors (with line numbers), resource limits
 * and rendering one template from several threads. The bulk comparison with
 * jinja2 itself is test_jinja_reference.c; the expected strings here come
 * from Python 3.11 / jinja2 3.1 as well.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"
#include "jinja/jinja.h"

/* Renders src with the variables of vars_json; returns the malloc'd text, or
 * NULL with the status in *st (when st is given). */
static char *render_lim(const char *src, const char *vars_json, const jinja_limits *lim, anvil_status *st)
{
    jinja_template *t = NULL;
    anvil_status s = jinja_parse(src, strlen(src), &t);
    if (s != ANVIL_OK) {
        if (st)
            *st = s;
        return NULL;
    }
    json_error_t jerr;
    json_t *vars = json_loads(vars_json ? vars_json : "{}", 0, &jerr);
    assert_non_null(vars);
    char *out = NULL;
    size_t len = 0;
    s = jinja_render(t, vars, lim, &out, &len);
    if (s == ANVIL_OK)
        assert_int_equal(len, strlen(out));
    else
        assert_null(out);
    if (st)
        *st = s;
    json_decref(vars);
    jinja_template_free(t);
    return out;
}

static char *render(const char *src, const char *vars_json, anvil_status *st)
{
    return render_lim(src, vars_json, NULL, st);
}

#define assert_renders(src, vars, want)                                                                      \
    do {                                                                                                     \
        anvil_status st_;                                                                                    \
        char *got_ = render((src), (vars), &st_);                                                            \
        if (got_ == NULL)                                                                                    \
            fail_msg("render failed: %s", anvil_last_error());                                               \
        assert_string_equal(got_, (want));                                                                   \
        free(got_);                                                                                          \
    } while (0)

/* Fails with code and an error message containing needle. */
#define assert_fails(src, vars, code, needle)                                                                \
    do {                                                                                                     \
        anvil_status st_;                                                                                    \
        char *got_ = render((src), (vars), &st_);                                                            \
        if (got_ != NULL)                                                                                    \
            fail_msg("rendered instead of failing: %s", got_);                                               \
        assert_status_msg(st_, (code), (needle));                                                            \
    } while (0)

static void test_python_printing(void **state)
{
    (void)state;
    assert_renders("{{ 1.0 }} {{ 0.1 }} {{ 1e16 }} {{ 1e15 }} {{ 1e-5 }} {{ 0.0001 }} {{ 1/3 }} {{ -0.0 }} "
                   "{{ 2.5e-10 }}",
                   NULL, "1.0 0.1 1e+16 1000000000000000.0 1e-05 0.0001 0.3333333333333333 -0.0 2.5e-10");
    assert_renders("{{ 1e300 * 1e10 }} {{ -1e300 * 1e10 }} {{ 123456789.125 }} {{ 1e22 }}", NULL,
                   "inf -inf 123456789.125 1e+22");
    assert_renders("{{ true }} {{ false }} {{ none }} {{ True }} {{ None }} {{ undefined_name }}|", NULL,
                   "True False None True None |");
    assert_renders("{{ [1, 'a', none, true, 2.0] }} {{ {'k': [1]} }} {{ (1,) }} {{ () }} {{ (1, 2) }}", NULL,
                   "[1, 'a', None, True, 2.0] {'k': [1]} (1,) () (1, 2)");
    /* repr picks the quote and escapes like CPython */
    assert_renders("{{ [\"it's\", 'a\"b', 'x\\ny', '\\x01', 'é', '\\u00a0'] }}", NULL,
                   "[\"it's\", 'a\"b', 'x\\ny', '\\x01', 'é', '\\xa0']");
    assert_renders(
        "{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 6 / 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }}", NULL,
        "3 -4 2 3.5 3.0 1024 0.5");
    assert_renders("{{ 'a' ~ 1 ~ none ~ true ~ 1.5 ~ [1] ~ nope }}", NULL, "a1NoneTrue1.5[1]");
    assert_renders("{{ x }}|{{ x.role }}|{{ x['content'] }}",
                   "{\"x\": {\"role\": \"user\", \"content\": \"hi\"}}",
                   "{'role': 'user', 'content': 'hi'}|user|hi");
}

static void test_whitespace_control(void **state)
{
    (void)state;
    /* trim_blocks eats the newline after a tag, lstrip_blocks the indentation before it */
    assert_renders("a\n  {% if true %}\n    b\n  {% endif %}\nc\n", NULL, "a\n    b\nc");
    assert_renders("a\n  {%- if true -%}\n    b\n  {%- endif -%}\nc", NULL, "abc");
    assert_renders("a\n  {%+ if true %}\nb{% endif +%}\nc", NULL, "a\n  b\nc");
    assert_renders("{{ 'a' }}\n  {{- 'b' -}}  \n{{ 'c' }}", NULL, "abc");
    assert_renders("  {# comment #}\nx\n  {#- c -#}  y", NULL, "xy");
    assert_renders("  {% raw %}{{ kept }}{% endraw %}|", NULL, "{{ kept }}|");
    assert_renders("line1\r\nline2\rline3\n", NULL, "line1\nline2\nline3"); /* one trailing newline dropped */
    assert_renders("{% for i in [1, 2] %}\n  {{ i }}\n{% endfor %}\n", NULL, "  1\n  2\n");
}

static void test_statements(void **state)
{
    (void)state;
    assert_renders("{% if 0 %}a{% elif [] %}b{% elif 'x' %}c{% else %}d{% endif %}", NULL, "c");
    assert_renders(
        "{% for x in [3, 1, 2] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}"
        "{{ loop.last }}{{ loop.length }}{{ loop.previtem }}|{% endfor %}",
        NULL, "103TrueFalse3|212FalseFalse33|321FalseTrue31|");
    assert_renders("{% for x in [] %}x{% else %}empty{% endfor %}", NULL, "empty");
    assert_renders("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}", NULL,
                   "2/2 4/2 ");
    assert_renders("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}", NULL,
                   "a=1;b=2;");
    assert_renders(
        "{% for x in [1, 2, 3] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}"
        "{% endif %}{{ x }}{% endfor %}",
        NULL, "1");
    /* a set in a loop body is gone at the next iteration and after the loop; a namespace is shared */
    assert_renders("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}",
                   NULL, "12121");
    assert_renders(
        "{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
        NULL, "6");
    assert_renders("{% set a, b = 1, 2 %}{{ a + b }}{% set c %}[{{ a }}]{% endset %}{{ c }}", NULL, "3[1]");
    assert_renders("{% macro m(a, b='d') %}{{ a }}-{{ b }}{% endmacro %}{{ m(1) }} {{ m(b=3, a=2) }}", NULL,
                   "1-d 2-3");
    assert_renders("{% macro f() %}<{{ caller() }}>{% endmacro %}{% call f() %}in{% endcall %}", NULL,
                   "<in>");
    assert_renders("{% filter upper %}abc{% endfilter %}{% with x = 5 %}{{ x }}{% endwith %}", NULL, "ABC5");
    assert_renders("{% generation %}{{ 'assistant text' }}{% endgeneration %}", NULL, "assistant text");
    assert_renders("{{ 'y' if 0 else 'n' }}{{ 'y' if 0 }}|{{ 1 and 'b' }}{{ 0 or 'c' }}{{ not none }}", NULL,
                   "n|bcTrue");
}

static void test_values_and_methods(void **state)
{
    (void)state;
    const char *v =
        "{\"m\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"Hé\"}]}";
    assert_renders(
        "{{ m[0]['role'] }} {{ m[-1].content }} {{ m[5] }}|{{ m[1:] | length }} {{ m[::-1][0].role }}", v,
        "system Hé |1 user");
    assert_renders("{{ 'héllo'[1:3] }} {{ 'abc'[::-1] }} {{ 'héllo' | length }}", NULL, "él cba 5");
    assert_renders(
        "{{ '  a b  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}",
        NULL, "a b|hi|['a', 'b', '', 'c']|['a', 'b']");
    assert_renders(
        "{{ 'hello'.startswith('he') }}{{ 'hello'.endswith(('x', 'lo')) }}{{ 'a-b'.replace('-', '+') }}",
        NULL, "TrueTruea+b");
    assert_renders("{{ 'straße'.upper() }} {{ 'hello wORLD'.title() }} {{ 'ΟΔΟΣ'.lower() }}", NULL,
                   "STRASSE Hello World οδος");
    assert_renders("{{ '{} {x}'.format(1, x='y') }} {{ '%s=%05.1f' % ('a', 3.14159) }}", NULL, "1 y a=003.1");
    assert_renders("{{ {'b': 1}.get('b') }}{{ {'b': 1}.get('z', 'd') }}{{ {'b': 1}.keys() | list }}", NULL,
                   "1d['b']");
    assert_renders("{{ 'a' in 'cat' }}{{ 1 in [1.0] }}{{ 'k' in {'k': 0} }}{{ 'z' not in 'cat' }}", NULL,
                   "TrueTrueTrueTrue");
    assert_renders("{{ 1 == 1.0 }}{{ true == 1 }}{{ [1] == (1,) }}{{ nope == nope }}{{ 1 < 2 < 3 }}", NULL,
                   "TrueTrueFalseTrueTrue");
}

static void test_filters_and_tests(void **state)
{
    (void)state;
    assert_renders("{{ '  x ' | trim }}|{{ 'ab' | upper }}{{ 'AB' | lower }}{{ 'a b-c' | title }}{{ 'aB' | "
                   "capitalize }}",
                   NULL, "x|ABabA B-CAb");
    assert_renders("{{ [3, 1, 2] | sort | join(',') }} {{ ['b', 'A', 'a'] | unique | list }} {{ [1, 2] | "
                   "reverse | list }}",
                   NULL, "1,2,3 ['b', 'A'] [2, 1]");
    assert_renders(
        "{{ nope | default('d') }}{{ '' | default('e', true) }}{{ [] | first }}|{{ [1, 2] | last }}", NULL,
        "de|2");
    assert_renders(
        "{{ '4.7' | int }}{{ 'x' | int(9) }}{{ '2' | float }}{{ 2.675 | round(2) }}{{ 2.5 | round }}", NULL,
        "492.02.672.0");
    const char *v = "{\"m\": [{\"role\": \"user\", \"c\": 1}, {\"role\": \"bot\", \"c\": 2}, {\"role\": "
                    "\"user\", \"c\": 3}]}";
    assert_renders(
        "{{ m | selectattr('role', 'equalto', 'user') | map(attribute='c') | list }}"
        "{{ m | rejectattr('role', 'eq', 'user') | list | length }}{{ m | map(attribute='c') | sum }}",
        v, "[1, 3]16");
    assert_renders("{{ {'b': [1, 2.5, none, true, 'é\\n\"'], 'a': {}} | tojson }}", NULL,
                   "{\"b\": [1, 2.5, null, true, \"é\\n\\\"\"], \"a\": {}}");
    assert_renders("{{ {'a': [1]} | tojson(indent=2) }}|{{ 'é' | tojson(ensure_ascii=true) }}|"
                   "{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}",
                   NULL, "{\n  \"a\": [\n    1\n  ]\n}|\"\\u00e9\"|{\"a\": 2, \"b\": 1}");
    assert_renders("{{ 'a\\nb' | indent(2, true) }}|{{ 'one two' | wordcount }}|{{ 'x' | center(5) }}|", NULL,
                   "  a\n  b|2|  x  |");
    assert_renders(
        "{{ 1 is number }}{{ true is number }}{{ true is integer }}{{ 'a' is iterable }}{{ nope is defined }}"
        "{{ none is none }}{{ {} is mapping }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}{{ 'a' is in 'abc' }}",
        NULL, "TrueTrueFalseTrueFalseTrueTrueTrueTrueTrue");
}

static void test_syntax_errors_have_lines(void **state)
{
    (void)state;
    assert_fails("a\nb\n{% if %}{% endif %}", NULL, ANVIL_ERR_FORMAT, "TemplateSyntaxError");
    assert_fails("a\nb\n{% if %}{% endif %}", NULL, ANVIL_ERR_FORMAT, "(line 3)");
    assert_fails("line 1\n{% for x in y %}\nno end", NULL, ANVIL_ERR_FORMAT, "'endfor' or 'else'");
    assert_fails("{{ (1, 2 }}", NULL, ANVIL_ERR_FORMAT, "unexpected '}', expected ')'");
    assert_fails("\n\n\n{% endif %}", NULL, ANVIL_ERR_FORMAT, "Encountered unknown tag 'endif'. (line 4)");
    assert_fails("{# never closed", NULL, ANVIL_ERR_FORMAT, "Missing end of comment tag");
    assert_fails("{% include 'other.jinja' %}", NULL, ANVIL_ERR_FORMAT, "'include' tag is not supported");
    assert_fails("{% break %}", NULL, ANVIL_ERR_FORMAT, "'break' outside of a loop");
    /* invalid UTF-8 is refused before lexing */
    assert_fails("{{ 'a' }}\xff", NULL, ANVIL_ERR_FORMAT, "not valid UTF-8");
}

static void test_unknown_filter_and_test(void **state)
{
    (void)state;
    assert_fails("x\n{{ 1 | frobnicate }}", NULL, ANVIL_ERR_FORMAT,
                 "TemplateAssertionError: No filter named 'frobnicate'. (line 2)");
    assert_fails("{{ 1 is frobnicated }}", NULL, ANVIL_ERR_FORMAT, "No test named 'frobnicated'.");
    /* as in jinja2, inside an if it only fails when it runs */
    assert_renders("{% if false %}{{ 1 | frobnicate }}{% endif %}ok", NULL, "ok");
    assert_fails("{% if true %}{{ 1 | frobnicate }}{% endif %}", NULL, ANVIL_ERR_INVALID_ARG,
                 "TemplateRuntimeError: No filter named 'frobnicate' found.");
    /* jinja2 filters anvil lacks are known, and fail when used */
    assert_fails("{{ [1] | pprint }}", NULL, ANVIL_ERR_UNSUPPORTED, "'pprint' filter is not supported");
}

static void test_runtime_errors(void **state)
{
    (void)state;
    assert_fails("{{ raise_exception('System role not supported') }}", NULL, ANVIL_ERR_INVALID_ARG,
                 "TemplateError: System role not supported");
    assert_fails("{{ nope.attr }}", NULL, ANVIL_ERR_INVALID_ARG, "UndefinedError: 'nope' is undefined");
    assert_fails("{{ x.a.b }}", "{\"x\": {}}", ANVIL_ERR_INVALID_ARG,
                 "UndefinedError: 'dict object' has no attribute 'a'");
    assert_fails("{{ 'a' + 1 }}", NULL, ANVIL_ERR_INVALID_ARG,
                 "TypeError: can only concatenate str (not \"int\") to str");
    assert_fails("{{ 1 // 0 }}", NULL, ANVIL_ERR_INVALID_ARG, "ZeroDivisionError");
    assert_fails("{{ [1].append(2) }}", NULL, ANVIL_ERR_INVALID_ARG,
                 "SecurityError: access to attribute 'append' of 'list' object is unsafe.");
    assert_fails("{% set x = 1 %}{% set x.y = 2 %}", NULL, ANVIL_ERR_INVALID_ARG,
                 "cannot assign attribute on non-namespace object");
    assert_fails("{{ 9223372036854775807 + 1 }}", NULL, ANVIL_ERR_INVALID_ARG, "OverflowError");
    assert_fails("{{ range(100001) | length }}", NULL, ANVIL_ERR_INVALID_ARG, "MAX_RANGE (100000)");
}

static void test_limits(void **state)
{
    (void)state;
    jinja_limits lim;
    jinja_default_limits(&lim);
    /* steps: 10^10 iterations stop at the step limit */
    lim.max_steps = 100000;
    anvil_status st;
    char *out = render_lim("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                           NULL, &lim, &st);
    assert_null(out);
    assert_status_msg(st, ANVIL_ERR_CAPACITY, "steps");
    /* output */
    jinja_default_limits(&lim);
    lim.max_output = 1000;
    out = render_lim("{% for i in range(2000) %}x{% endfor %}", NULL, &lim, &st);
    assert_null(out);
    assert_status_msg(st, ANVIL_ERR_CAPACITY, "output exceeds 1000 bytes");
    out = render_lim("{% for i in range(999) %}x{% endfor %}", NULL, &lim, &st);
    assert_non_null(out);
    assert_int_equal(strlen(out), 999);
    free(out);
    /* memory: a string doubled 40 times */
    jinja_default_limits(&lim);
    lim.max_memory = 16 << 20;
    out = render_lim(
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
        "{{ ns.s | length }}",
        NULL, &lim, &st);
    assert_null(out);
    assert_status_msg(st, ANVIL_ERR_CAPACITY, "memory");
    out = render_lim("{{ 'a' * 1000000000000 }}", NULL, &lim, &st);
    assert_null(out);
    assert_status_msg(st, ANVIL_ERR_CAPACITY, "memory");
    /* depth: unbounded macro recursion */
    out = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, &st);
    assert_null(out);
    assert_status_msg(st, ANVIL_ERR_CAPACITY, "nested more than");
    /* nesting while parsing: 150 parentheses */
    char *src = malloc(2000);
    assert_non_null(src);
    strcpy(src, "{{ ");
    for (int i = 0; i < 150; i++)
        strcat(src, "(");
    strcat(src, "1");
    for (int i = 0; i < 150; i++)
        strcat(src, ")");
    strcat(src, " }}");
    out = render(src, NULL, &st);
    assert_null(out);
    assert_status_msg(st, ANVIL_ERR_FORMAT, "nests more than");
    free(src);
    /* a long flat chain parses iteratively and evaluates under the expression depth limit */
    size_t n = 5000;
    src = malloc(n * 2 + 16);
    assert_non_null(src);
    strcpy(src, "{{ 1");
    for (size_t i = 0; i < n; i++)
        strcat(src, "+1");
    strcat(src, " }}");
    out = render(src, NULL, &st);
    assert_null(out);
    assert_status_msg(st, ANVIL_ERR_CAPACITY, "expression nested more than");
    free(src);
    /* values a template nests itself: compared, printed and dumped without blowing the stack */
    const char *deep = "{% set ns = namespace(x=[], y=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}"
                       "{% set ns.y = [ns.y] %}{% endfor %}";
    char tpl[512];
    snprintf(tpl, sizeof tpl, "%s{{ ns.x == ns.x }}", deep); /* the same object: equal, as in CPython */
    assert_renders(tpl, NULL, "True");
    snprintf(tpl, sizeof tpl, "%s{{ ns.x == ns.y }}", deep);
    out = render(tpl, NULL, &st);
    assert_null(out);
    assert_status_msg(st, ANVIL_ERR_CAPACITY,
                      "RecursionError: maximum recursion depth exceeded in comparison");
    snprintf(tpl, sizeof tpl, "%s{{ ns.x | tojson }}", deep);
    out = render(tpl, NULL, &st);
    assert_null(out);
    assert_status_msg(st, ANVIL_ERR_CAPACITY, "RecursionError");
    snprintf(tpl, sizeof tpl, "%s{{ ns.x }}", deep);
    out = render(tpl, NULL, &st);
    assert_null(out);
    assert_status_msg(st, ANVIL_ERR_CAPACITY, "RecursionError");
    /* sources over the cap are refused */
    jinja_template *t = NULL;
    assert_int_equal(jinja_parse("x", JINJA_MAX_SOURCE + 1, &t), ANVIL_ERR_CAPACITY);
    assert_null(t);
}

static void test_strftime_now(void **state)
{
    (void)state;
    char want[16];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(want, sizeof want, "%Y", &tm);
    anvil_status st;
    char *out = render("{{ strftime_now('%Y') }}", NULL, &st);
    assert_non_null(out);
    /* the year can only change between the two reads at midnight on 31 December */
    assert_int_equal(strlen(out), strlen(want));
    free(out);
    assert_renders("{{ strftime_now is defined }}", NULL, "True");
}

typedef struct thread_job {
    const jinja_template *t;
    const json_t *vars;
    const char *want;
    int mismatches;
} thread_job;

static void *render_many(void *arg)
{
    thread_job *job = arg;
    for (int i = 0; i < 200; i++) {
        char *out = NULL;
        if (jinja_render(job->t, job->vars, NULL, &out, NULL) != ANVIL_OK || strcmp(out, job->want) != 0)
            job->mismatches++;
        free(out);
    }
    return NULL;
}

static void test_threads_share_a_template(void **state)
{
    (void)state;
    const char *src = "{% for m in messages %}<{{ m.role | upper }}>{{ m.content | trim | length }}"
                      "{{ m.content[::-1] }}{% endfor %}";
    jinja_template *t = NULL;
    assert_int_equal(jinja_parse(src, strlen(src), &t), ANVIL_OK);
    json_error_t jerr;
    json_t *vars = json_loads("{\"messages\": [{\"role\": \"user\", \"content\": \" héllo \"}, "
                              "{\"role\": \"assistant\", \"content\": \"日本\"}]}",
                              0, &jerr);
    assert_non_null(vars);
    const char *want = "<USER>5 olléh <ASSISTANT>2本日";
    thread_job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (thread_job){t, vars, want, 0};
        assert_int_equal(pthread_create(&th[i], NULL, render_many, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].mismatches, 0);
    }
    json_decref(vars);
    jinja_template_free(t);
    jinja_template_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_printing),
        cmocka_unit_test(test_whitespace_control),
        cmocka_unit_test(test_statements),
        cmocka_unit_test(test_values_and_methods),
        cmocka_unit_test(test_filters_and_tests),
        cmocka_unit_test(test_syntax_errors_have_lines),
        cmocka_unit_test(test_unknown_filter_and_test),
        cmocka_unit_test(test_runtime_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_strftime_now),
        cmocka_unit_test(test_threads_share_a_template),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
