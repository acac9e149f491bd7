/* The request flags' table and what reads it; see request_flags.h. */
#include "request_flags.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* getopt codes of the table's flags: REQUEST_FLAG_CODE + index */
#define REQUEST_FLAG_CODE 3000

#define ALL (RF_RUN | RF_BATCH | RF_BENCH)
#define EXEC (RF_BATCH | RF_BENCH)
#define BIG 1e6

/* The order is the help's. */
const request_flag request_flags[] = {
    {"max-tokens", 'n', "max_tokens", RF_INT, 0, INT32_MAX, 0, "N",
     "new tokens at most (default 256; in --input lines 0 means up to the context)", RF_RUN | RF_BATCH,
     RQ_MAX_TOKENS},
    {"temperature", 't', "temperature", RF_NUM, 0, BIG, 0, "T",
     "0 is greedy (default: the model's generation_config.json, else 1; bench's synthetic requests: 0)", ALL, RQ_TEMPERATURE},
    {"top-k", 0, "top_k", RF_INT, -1, INT32_MAX, 0, "K", "keep the K most likely tokens (0: off, the default)", ALL,
     RQ_TOP_K},
    {"top-p", 0, "top_p", RF_NUM, 0, 1, 1, "P", "keep the most likely tokens up to mass P (1: off, the default)", ALL,
     RQ_TOP_P},
    {"min-p", 0, "min_p", RF_NUM, 0, 1, 0, "P", "drop tokens less likely than P times the likeliest (0: off)", ALL,
     RQ_MIN_P},
    {"repetition-penalty", 0, "repetition_penalty", RF_NUM, 0, BIG, 1, "R",
     "divide the logits of tokens already seen by R (1: off; Hugging Face's)", EXEC, RQ_REPETITION_PENALTY},
    {"presence-penalty", 0, "presence_penalty", RF_NUM, -BIG, BIG, 0, "F",
     "subtract F from the logits of tokens generated (0: off; OpenAI's)", EXEC, RQ_PRESENCE_PENALTY},
    {"frequency-penalty", 0, "frequency_penalty", RF_NUM, -BIG, BIG, 0, "F",
     "subtract F times its count from a generated token's logit (0: off)", EXEC, RQ_FREQUENCY_PENALTY},
    {"seed", 's', "seed", RF_SEED, 0, 0, 0, "S",
     "random seed: the same seed gives the same output (default: 0; --input lines draw their own)", ALL, RQ_SEED},
    {NULL, 0, "n", RF_INT, 1, 65536, 0, NULL, NULL, 0, RQ_N},
    {"min-tokens", 0, "min_tokens", RF_INT, 0, INT32_MAX, 0, "N", "no end token, stop token or stop string before N",
     EXEC, RQ_MIN_TOKENS},
    {"ignore-eos", 0, "ignore_eos", RF_BOOL, 0, 0, 0, NULL, "go on past the model's end-of-sequence tokens", ALL,
     RQ_IGNORE_EOS},
    {"stop", 0, "stop", RF_STRINGS, 0, 0, 0, "TEXT", "end a sequence at TEXT, which is not output (repeatable)", EXEC,
     RQ_STOP},
    {"stop-token-ids", 0, "stop_token_ids", RF_IDS, 0, 0, 0, "IDS",
     "comma-separated token ids that end a sequence", EXEC, RQ_STOP_TOKEN_IDS},
    {"logprobs", 0, "logprobs", RF_INT, -1, 1 << 20, 0, "K",
     "each token's log-probability and the K likeliest (-1: none, the default)", RF_BATCH, RQ_LOGPROBS},
    {"beam-width", 0, "beam_width", RF_INT, 0, 65536, 0, "N",
     "beam search with N beams (Hugging Face's); every beam and its score", RF_BATCH, RQ_BEAM_WIDTH},
    {"length-penalty", 0, "length_penalty", RF_NUM, -BIG, BIG, 0, "L", "beam search's length penalty (default 1)",
     RF_BATCH, RQ_LENGTH_PENALTY},
    {NULL, 0, "skip_special_tokens", RF_BOOL, 0, 0, 0, NULL, NULL, 0, RQ_SKIP_SPECIAL_TOKENS},
    {NULL, 0, "add_special_tokens", RF_BOOL, 0, 0, 0, NULL, NULL, 0, RQ_ADD_SPECIAL_TOKENS},
};
const size_t n_request_flags = sizeof request_flags / sizeof request_flags[0];

/* ------------------------------------------------------------ where values go */

/* The one place that knows anvil_request's field of each id (numbers). */
static void set_number(anvil_request *r, rf_id id, double d, long long i)
{
    switch (id) {
    case RQ_MAX_TOKENS: r->max_tokens = (int32_t)i; break;
    case RQ_MIN_TOKENS: r->min_tokens = (int32_t)i; break;
    case RQ_TEMPERATURE: r->sampling.temperature = (float)d; break;
    case RQ_TOP_K: r->sampling.top_k = (int32_t)i; break;
    case RQ_TOP_P: r->sampling.top_p = (float)d; break;
    case RQ_MIN_P: r->sampling.min_p = (float)d; break;
    case RQ_REPETITION_PENALTY: r->repetition_penalty = (float)d; break;
    case RQ_PRESENCE_PENALTY: r->presence_penalty = (float)d; break;
    case RQ_FREQUENCY_PENALTY: r->frequency_penalty = (float)d; break;
    case RQ_SEED:
        r->sampling.seed = (uint64_t)i;
        r->has_seed = 1;
        break;
    case RQ_N: r->n = (int32_t)i; break;
    case RQ_LOGPROBS: r->logprobs = (int32_t)i; break;
    case RQ_IGNORE_EOS: r->ignore_eos = (int)i; break;
    case RQ_BEAM_WIDTH: r->beam_width = (int32_t)i; break;
    case RQ_LENGTH_PENALTY: r->length_penalty = (float)d; break;
    case RQ_SKIP_SPECIAL_TOKENS: r->skip_special_tokens = (int)i; break;
    case RQ_ADD_SPECIAL_TOKENS: r->add_special_tokens = (int)i; break;
    case RQ_STOP:
    case RQ_STOP_TOKEN_IDS:
    case RQ_COUNT: break;
    }
}

static void copy_field(const anvil_request *from, anvil_request *to, rf_id id)
{
    switch (id) {
    case RQ_MAX_TOKENS: to->max_tokens = from->max_tokens; break;
    case RQ_MIN_TOKENS: to->min_tokens = from->min_tokens; break;
    case RQ_TEMPERATURE: to->sampling.temperature = from->sampling.temperature; break;
    case RQ_TOP_K: to->sampling.top_k = from->sampling.top_k; break;
    case RQ_TOP_P: to->sampling.top_p = from->sampling.top_p; break;
    case RQ_MIN_P: to->sampling.min_p = from->sampling.min_p; break;
    case RQ_REPETITION_PENALTY: to->repetition_penalty = from->repetition_penalty; break;
    case RQ_PRESENCE_PENALTY: to->presence_penalty = from->presence_penalty; break;
    case RQ_FREQUENCY_PENALTY: to->frequency_penalty = from->frequency_penalty; break;
    case RQ_SEED:
        to->sampling.seed = from->sampling.seed;
        to->has_seed = from->has_seed;
        break;
    case RQ_N: to->n = from->n; break;
    case RQ_LOGPROBS: to->logprobs = from->logprobs; break;
    case RQ_IGNORE_EOS: to->ignore_eos = from->ignore_eos; break;
    case RQ_STOP:
        to->stop = from->stop;
        to->n_stop = from->n_stop;
        break;
    case RQ_STOP_TOKEN_IDS:
        to->stop_token_ids = from->stop_token_ids;
        to->n_stop_token_ids = from->n_stop_token_ids;
        break;
    case RQ_BEAM_WIDTH: to->beam_width = from->beam_width; break;
    case RQ_LENGTH_PENALTY: to->length_penalty = from->length_penalty; break;
    case RQ_SKIP_SPECIAL_TOKENS: to->skip_special_tokens = from->skip_special_tokens; break;
    case RQ_ADD_SPECIAL_TOKENS: to->add_special_tokens = from->add_special_tokens; break;
    case RQ_COUNT: break;
    }
}

void request_values_init(request_values *v)
{
    memset(v, 0, sizeof *v);
    anvil_request_init(&v->req);
}

void request_values_free(request_values *v)
{
    free(v->stop);
    free(v->stop_ids);
    v->stop = NULL;
    v->stop_ids = NULL;
}

int request_values_given(const request_values *v, rf_id id) { return (v->given >> id) & 1u; }

void request_values_apply(const request_values *v, anvil_request *r)
{
    for (int id = 0; id < RQ_COUNT; id++)
        if (request_values_given(v, (rf_id)id))
            copy_field(&v->req, r, (rf_id)id);
}

/* ------------------------------------------------------------ the command line */

int request_flags_longopts(unsigned cmd, const struct option *own, struct option *out, size_t cap)
{
    size_t n = 0;
    for (; own->name; own++) {
        if (n + 1 >= cap)
            return -1;
        out[n++] = *own;
    }
    for (size_t i = 0; i < n_request_flags; i++) {
        const request_flag *f = &request_flags[i];
        if (f->flag == NULL || !(f->cmds & cmd))
            continue;
        if (n + 1 >= cap)
            return -1;
        out[n++] = (struct option){f->flag, f->kind == RF_BOOL ? no_argument : required_argument, 0,
                                   REQUEST_FLAG_CODE + (int)i};
    }
    out[n] = (struct option){0, 0, 0, 0};
    return 0;
}

void request_flags_shortopts(unsigned cmd, const char *own, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "%s", own);
    for (size_t i = 0; i < n_request_flags && n + 3 < cap; i++) {
        const request_flag *f = &request_flags[i];
        if (f->short_flag == 0 || !(f->cmds & cmd))
            continue;
        out[n++] = f->short_flag;
        if (f->kind != RF_BOOL)
            out[n++] = ':';
        out[n] = '\0';
    }
}

/* "a number in (0, 1]", "an integer >= 0", ... */
static void describe(const request_flag *f, char *buf, size_t cap)
{
    const int is_int = f->kind == RF_INT;
    const char *what = is_int ? "an integer" : "a number";
    if (f->kind == RF_SEED)
        snprintf(buf, cap, "a non-negative integer");
    else if (f->lo <= -BIG && f->hi >= BIG)
        snprintf(buf, cap, "%s", what);
    else if (f->hi >= BIG || (is_int && f->hi >= INT32_MAX))
        snprintf(buf, cap, "%s %s %g", what, f->lo_open ? ">" : ">=", f->lo);
    else
        snprintf(buf, cap, "%s in %s%g, %g]", what, f->lo_open ? "(" : "[", f->lo, f->hi);
}

static int in_range(const request_flag *f, double d)
{
    return (f->lo_open ? d > f->lo : d >= f->lo) && d <= f->hi;
}

int request_ids_parse(const char *s, int32_t **ids, int32_t *n)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    *ids = malloc(cap * sizeof **ids);
    *n = 0;
    if (*ids == NULL)
        return -1;
    const char *p = s;
    while (*p) {
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v > INT32_MAX || (*end != ',' && *end != '\0'))
            break;
        (*ids)[(*n)++] = (int32_t)v;
        p = *end == ',' ? end + 1 : end;
        if (*end == ',' && *p == '\0')
            break; /* a trailing comma */
    }
    if (*p != '\0' || *n == 0 || s[strlen(s) - 1] == ',') {
        free(*ids);
        *ids = NULL;
        return -1;
    }
    return 0;
}

int request_flags_option(request_values *v, unsigned cmd, int c, const char *arg, const char *tool)
{
    const request_flag *f = NULL;
    if (c >= REQUEST_FLAG_CODE && (size_t)(c - REQUEST_FLAG_CODE) < n_request_flags) {
        f = &request_flags[c - REQUEST_FLAG_CODE];
    } else if (c > 0 && c < 128) {
        for (size_t i = 0; i < n_request_flags && f == NULL; i++)
            if (request_flags[i].short_flag == c && (request_flags[i].cmds & cmd))
                f = &request_flags[i];
    }
    if (f == NULL)
        return 0;
    char range[64];
    describe(f, range, sizeof range);
    char *end = NULL;
    errno = 0;
    switch (f->kind) {
    case RF_INT: {
        long long i = strtoll(arg, &end, 10);
        if (errno || end == arg || *end != '\0' || !in_range(f, (double)i)) {
            fprintf(stderr, "%s: --%s expects %s, got '%s'\n", tool, f->flag, range, arg);
            return -1;
        }
        set_number(&v->req, f->id, (double)i, i);
        break;
    }
    case RF_NUM: {
        double d = strtod(arg, &end);
        if (errno || end == arg || *end != '\0' || !in_range(f, d)) {
            fprintf(stderr, "%s: --%s expects %s, got '%s'\n", tool, f->flag, range, arg);
            return -1;
        }
        set_number(&v->req, f->id, d, (long long)d);
        break;
    }
    case RF_SEED: {
        unsigned long long s = strtoull(arg, &end, 10);
        if (errno || end == arg || *end != '\0' || arg[0] == '-') {
            fprintf(stderr, "%s: --%s expects %s, got '%s'\n", tool, f->flag, range, arg);
            return -1;
        }
        v->req.sampling.seed = s;
        v->req.has_seed = 1;
        break;
    }
    case RF_BOOL: set_number(&v->req, f->id, 1, 1); break;
    case RF_STRINGS: {
        const char **p = realloc(v->stop, (size_t)(v->req.n_stop + 1) * sizeof *p);
        if (p == NULL) {
            fprintf(stderr, "%s: out of memory\n", tool);
            return -1;
        }
        v->stop = p;
        v->stop[v->req.n_stop++] = arg;
        v->req.stop = v->stop;
        break;
    }
    case RF_IDS:
        free(v->stop_ids);
        v->stop_ids = NULL;
        if (request_ids_parse(arg, &v->stop_ids, &v->req.n_stop_token_ids) != 0) {
            fprintf(stderr, "%s: --%s expects comma-separated token ids, got '%s'\n", tool, f->flag, arg);
            return -1;
        }
        v->req.stop_token_ids = v->stop_ids;
        break;
    }
    v->given |= 1u << f->id;
    return 1;
}

void request_flags_help(FILE *out, unsigned cmd)
{
    for (size_t i = 0; i < n_request_flags; i++) {
        const request_flag *f = &request_flags[i];
        if (f->flag == NULL || !(f->cmds & cmd))
            continue;
        char lhs[64];
        snprintf(lhs, sizeof lhs, "%c%c%c --%s%s%s", f->short_flag ? '-' : ' ', f->short_flag ? f->short_flag : ' ',
                 f->short_flag ? ',' : ' ', f->flag, f->metavar ? " " : "", f->metavar ? f->metavar : "");
        if (strlen(lhs) + 2 > 30)
            fprintf(out, "  %s\n%30s", lhs, "");
        else
            fprintf(out, "  %-28s", lhs);
        /* the help text in lines of at most 66 characters after the 30 of the flag */
        const char *h = f->help;
        while (strlen(h) > 66) {
            int cut = 66;
            while (cut > 0 && h[cut] != ' ')
                cut--;
            if (cut == 0)
                break;
            fprintf(out, "%.*s\n%30s", cut, h, "");
            h += cut + 1;
        }
        fprintf(out, "%s\n", h);
    }
}

const request_flag *request_flag_find(const char *name)
{
    const size_t len = strcspn(name, "=");
    for (size_t i = 0; i < n_request_flags; i++)
        if (request_flags[i].flag && strncmp(request_flags[i].flag, name, len) == 0 &&
            request_flags[i].flag[len] == '\0')
            return &request_flags[i];
    return NULL;
}

/* ------------------------------------------------------------ JSONL fields */

int request_field_known(const char *key)
{
    for (size_t i = 0; i < n_request_flags; i++)
        if (request_flags[i].field && strcmp(request_flags[i].field, key) == 0)
            return 1;
    return 0;
}

void request_storage_free(request_storage *st)
{
    free(st->stop);
    free(st->stop_ids);
    st->stop = NULL;
    st->stop_ids = NULL;
}

static int json_ids(json_t *arr, const char *key, int32_t **out, int32_t *n_out, char *err, size_t n)
{
    if (!json_is_array(arr)) {
        snprintf(err, n, "'%s' must be an array of token ids", key);
        return -1;
    }
    size_t m = json_array_size(arr);
    free(*out);
    *out = malloc((m ? m : 1) * sizeof **out);
    if (*out == NULL) {
        snprintf(err, n, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < m; i++) {
        json_t *e = json_array_get(arr, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX) {
            snprintf(err, n, "'%s' must hold non-negative integers", key);
            return -1;
        }
        (*out)[i] = (int32_t)json_integer_value(e);
    }
    *n_out = (int32_t)m;
    return 0;
}

static int json_strings(json_t *v, const char *key, anvil_request *r, request_storage *st, char *err, size_t n)
{
    size_t m = json_is_string(v) ? 1 : json_is_array(v) ? json_array_size(v) : 0;
    if (!json_is_string(v) && !json_is_array(v)) {
        snprintf(err, n, "'%s' must be a string or an array of strings", key);
        return -1;
    }
    free(st->stop);
    st->stop = malloc((m ? m : 1) * sizeof *st->stop);
    if (st->stop == NULL) {
        snprintf(err, n, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < m; i++) {
        json_t *e = json_is_string(v) ? v : json_array_get(v, i);
        if (!json_is_string(e)) {
            snprintf(err, n, "'%s' must be a string or an array of strings", key);
            return -1;
        }
        st->stop[i] = json_string_value(e);
    }
    r->stop = st->stop;
    r->n_stop = (int32_t)m;
    return 0;
}

int request_fields_from_json(json_t *obj, anvil_request *r, request_storage *st, char *err, size_t n)
{
    for (size_t i = 0; i < n_request_flags; i++) {
        const request_flag *f = &request_flags[i];
        json_t *v = f->field ? json_object_get(obj, f->field) : NULL;
        if (v == NULL || json_is_null(v))
            continue;
        char range[64];
        describe(f, range, sizeof range);
        switch (f->kind) {
        case RF_INT:
            if (f->id == RQ_LOGPROBS && json_is_boolean(v)) { /* OpenAI's logprobs: true */
                r->logprobs = json_is_true(v) ? 0 : -1;
                break;
            }
            if (!json_is_integer(v) || !in_range(f, (double)json_integer_value(v))) {
                snprintf(err, n, "'%s' must be %s", f->field, range);
                return -1;
            }
            set_number(r, f->id, (double)json_integer_value(v), (long long)json_integer_value(v));
            break;
        case RF_NUM: {
            if (!json_is_number(v)) {
                snprintf(err, n, "'%s' must be a number", f->field);
                return -1;
            }
            double d = json_number_value(v);
            if (!in_range(f, d)) {
                snprintf(err, n, "'%s' must be %s, got %g", f->field, range, d);
                return -1;
            }
            set_number(r, f->id, d, (long long)d);
            break;
        }
        case RF_SEED:
            if (!json_is_integer(v) || json_integer_value(v) < 0) {
                snprintf(err, n, "'%s' must be %s", f->field, range);
                return -1;
            }
            set_number(r, f->id, 0, (long long)json_integer_value(v));
            break;
        case RF_BOOL:
            if (!json_is_boolean(v)) {
                snprintf(err, n, "'%s' must be true or false", f->field);
                return -1;
            }
            set_number(r, f->id, json_is_true(v), json_is_true(v));
            break;
        case RF_STRINGS:
            if (json_strings(v, f->field, r, st, err, n))
                return -1;
            break;
        case RF_IDS:
            if (json_ids(v, f->field, &st->stop_ids, &r->n_stop_token_ids, err, n))
                return -1;
            r->stop_token_ids = st->stop_ids;
            break;
        }
    }
    return 0;
}
