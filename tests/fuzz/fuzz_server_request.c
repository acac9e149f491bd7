/*
 * libFuzzer target for the server's OpenAI request mapping
 * (src/server/server_openai.c) and response formatting (server_gen.c),
 * without HTTP or an executor. The input is a request body; when it parses
 * as a JSON object it is mapped for /v1/completions and for
 * /v1/chat/completions against a model context built once: stories260K's
 * tokenizer and Phi-3.5's chat template from ANVIL_SHARED_DIR (else
 * ../shared, scripts/fuzz.sh's default; else a small embedded tokenizer and
 * template), max_seq_len 512, no weights.
 *
 * Checks: a refused body gives a 4xx/5xx status and an OpenAI error object
 * ({"error": {message, type, param, code}}) and no request; an accepted one
 * is within every limit (prompts, ids inside the vocabulary, the context,
 * n <= best_of, stop strings). An accepted request then runs through the
 * job the server would enqueue, with the executor's events faked (samples
 * made of the prompt's tokens, logprobs when asked, some prompts failing or
 * cancelled): the output must be one JSON body with every choice (or an
 * error), or SSE chunks that each parse, ending with [DONE]. ASan and UBSan
 * catch memory errors, leaks and undefined behaviour; the model's reference
 * count must be back where it was.
 *
 * The same body is also read as Triton's generate (srv_triton_map, both
 * endpoints) and as a Responses API body (srv_responses_map); what they
 * accept is mapped and run as above with their wire format, whose output
 * must be Triton's JSON and events, or the Responses events in order with
 * consecutive sequence numbers.
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/chat_template.h"
#include "anvil/tokenizer.h"
#include "server/server_openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK_OR_TRAP(c)                                                                                     \
    do {                                                                                                     \
        if (!(c)) {                                                                                          \
            fprintf(stderr, "fuzz_server_request: check failed at line %d: %s\n", __LINE__, #c);             \
            __builtin_trap();                                                                                \
        }                                                                                                    \
    } while (0)

static const char embedded_tok[] =
    "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"unk_token\": \"<unk>\", \"fuse_unk\": true,"
    " \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"\\u2581\": 3, \"a\": 4, \"b\": 5, \"\\u2581a\": 6,"
    " \"ab\": 7, \"<0xC3>\": 8, \"<0xA9>\": 9},"
    " \"merges\": [\"\\u2581 a\", \"a b\"]},"
    " \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": "
    "\"first\","
    " \"split\": true},"
    " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": "
    "\"<s>\","
    " \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [],"
    " \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]}}},"
    " \"added_tokens\": [{\"id\": 1, \"content\": \"<s>\", \"special\": true, \"normalized\": false,"
    " \"lstrip\": false, \"rstrip\": false, \"single_word\": false}],"
    " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\":"
    " \"\\u2581\"}, \"content\": \" \"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"},"
    " {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]}}";

static const char embedded_tmpl[] =
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

static struct anvil_server srv; /* for the model reference only (repo_mu) */
static srv_model model;
static int64_t vocab;
static int ready;

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    char chunk[4096];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            char *b = realloc(buf, cap);
            if (b == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = b;
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

static int load_shared(const char *shared)
{
    char dir[4096], path[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared);
    snprintf(path, sizeof path, "%s/chat_templates/microsoft-Phi-3.5-mini-instruct.jinja", shared);
    char *src = read_text(path);
    if (src == NULL)
        return 0;
    int ok = anvil_tokenizer_load(dir, &model.tok) == ANVIL_OK &&
             anvil_chat_template_load_source(dir, src, &model.tmpl) == ANVIL_OK;
    free(src);
    if (!ok) {
        anvil_tokenizer_free(model.tok);
        model.tok = NULL;
    }
    return ok;
}

static void init(void)
{
    const char *env = getenv("ANVIL_SHARED_DIR");
    if (!(env && load_shared(env)) && !load_shared("../shared")) {
        if (anvil_tokenizer_load_json(embedded_tok, sizeof embedded_tok - 1, &model.tok) != ANVIL_OK ||
            anvil_chat_template_parse(embedded_tmpl, &model.tmpl) != ANVIL_OK) {
            fprintf(stderr, "fuzz_server_request: %s\n", anvil_last_error());
            __builtin_trap();
        }
    }
    model.name = "stories260K";
    model.max_seq_len = 512;
    pthread_mutex_init(&model.mu, NULL);
    pthread_mutex_init(&model.guided_mu, NULL); /* structured output: the grammar vocabulary, built once */
    pthread_mutex_init(&srv.repo_mu, NULL);
    pthread_mutex_init(&srv.wake_mu, NULL);
    pthread_cond_init(&srv.repo_cv, NULL);
    model.srv = &srv;
    model.refs = 1; /* the table's */
    vocab = anvil_tokenizer_vocab_size(model.tok);
    ready = 1;
}

static int is_str_or_null(json_t *v)
{
    return json_is_string(v) || json_is_null(v);
}

static void check_error(int status, json_t *err)
{
    CHECK_OR_TRAP(status >= 400 && status < 600);
    json_t *e = json_object_get(err, "error");
    CHECK_OR_TRAP(json_is_object(e) && json_object_size(e) == 4);
    CHECK_OR_TRAP(json_is_string(json_object_get(e, "message")) &&
                  json_string_length(json_object_get(e, "message")));
    CHECK_OR_TRAP(json_is_string(json_object_get(e, "type")));
    CHECK_OR_TRAP(is_str_or_null(json_object_get(e, "param")) && is_str_or_null(json_object_get(e, "code")));
    /* the body the server sends must serialize */
    char *s = json_dumps(err, JSON_COMPACT);
    CHECK_OR_TRAP(s != NULL);
    free(s);
}

static void check_mapped(const srv_mapped *q, int chat)
{
    const anvil_request *r = &q->req;
    CHECK_OR_TRAP(q->model == &model && q->chat == chat);
    CHECK_OR_TRAP(q->n_prompts >= 1 && q->n_prompts <= SRV_MAX_PROMPTS && (!chat || q->n_prompts == 1));
    CHECK_OR_TRAP(q->n >= 1 && q->n <= q->best_of && q->best_of <= SRV_MAX_N && r->n == q->best_of);
    CHECK_OR_TRAP(!(q->stream && q->best_of > q->n));
    CHECK_OR_TRAP(q->logprobs >= -1 && q->logprobs <= SRV_MAX_LOGPROBS);
    CHECK_OR_TRAP(r->logprobs == q->logprobs || (q->logprobs == -1 && r->logprobs == 0 && q->best_of > q->n));
    CHECK_OR_TRAP(!(q->echo && (chat || q->logprobs >= 0)));
    CHECK_OR_TRAP(r->max_tokens >= 0 && r->min_tokens >= 0 &&
                  (r->max_tokens == 0 || r->min_tokens <= r->max_tokens));
    CHECK_OR_TRAP(anvil_sampling_params_check(&r->sampling) == ANVIL_OK && r->sampling.temperature <= 2);
    CHECK_OR_TRAP(r->n_stop >= 0 && r->n_stop <= SRV_MAX_STOP);
    for (int32_t i = 0; i < r->n_stop; i++)
        CHECK_OR_TRAP(r->stop[i] != NULL && r->stop[i][0] != '\0');
    CHECK_OR_TRAP(r->n_logit_bias >= 0 && r->n_logit_bias <= SRV_MAX_LOGIT_BIAS);
    for (int32_t i = 0; i < r->n_logit_bias; i++)
        CHECK_OR_TRAP(r->logit_bias[i].token >= 0 && r->logit_bias[i].token < vocab &&
                      r->logit_bias[i].bias >= -100 && r->logit_bias[i].bias <= 100);
    for (int32_t i = 0; i < q->n_prompts; i++) {
        const srv_prompt *p = &q->prompts[i];
        CHECK_OR_TRAP(p->n_ids >= 1 && p->n_ids < model.max_seq_len);
        CHECK_OR_TRAP(r->max_tokens == 0 || p->n_ids + r->max_tokens <= model.max_seq_len);
        for (int32_t k = 0; k < p->n_ids; k++)
            CHECK_OR_TRAP(p->ids[k] >= 0 && p->ids[k] < vocab);
        CHECK_OR_TRAP(!q->echo || p->echo != NULL);
    }
}

/* One sample of prompt p: a few of the prompt's tokens, shifted. */
typedef struct fake_seq {
    int32_t ids[4];
    float lp[4];
    anvil_token_logprob top[4 * SRV_MAX_LOGPROBS];
    char *text;
    size_t text_len;
} fake_seq;

static void fake_sample(const srv_prompt *p, int32_t k, int32_t n_top, fake_seq *f, anvil_sequence_output *o)
{
    int32_t n = 1 + (k + p->n_ids) % 4;
    for (int32_t t = 0; t < n; t++) {
        f->ids[t] = (int32_t)((p->ids[(t + k) % p->n_ids] + k) % vocab);
        f->lp[t] = -0.25f * (float)((k * 7 + t) % 5);
        for (int32_t a = 0; a < n_top; a++)
            f->top[t * n_top + a] =
                (anvil_token_logprob){(int32_t)((f->ids[t] + a) % vocab), f->lp[t] - (float)a};
    }
    if (anvil_tokenizer_decode(model.tok, f->ids, n, 1, &f->text, &f->text_len) != ANVIL_OK)
        __builtin_trap();
    memset(o, 0, sizeof *o);
    o->token_ids = f->ids;
    o->n_tokens = n;
    o->text = f->text;
    o->text_len = f->text_len;
    o->finish = k % 2 ? ANVIL_REQUEST_STOP : ANVIL_REQUEST_LENGTH;
    o->stop_token = -1;
    o->stop_string = -1;
    if (n_top >= 0) {
        o->logprobs = f->lp;
        o->top_logprobs = n_top > 0 ? f->top : NULL;
        o->n_top = n_top;
    }
    for (int32_t t = 0; t < n; t++)
        o->cumulative_logprob += f->lp[t];
}

/* A wire format's output: Triton's body or events, or the Responses API's. */
static void check_wire_output(const srv_job *j, int any_failed)
{
    const srv_gen *g = &j->g;
    const int triton = g->wire == &srv_triton_wire || g->wire == &srv_triton_infer_wire;
    if (!g->stream) {
        json_error_t e;
        /* infer's binary answer: the JSON header, then the tensor's 4-byte length and bytes */
        json_t *hl = json_object_get(g->wire_ctx, "header_length");
        size_t json_len = hl ? (size_t)json_integer_value(hl) : g->len;
        CHECK_OR_TRAP(json_len <= g->len && (hl == NULL || g->len - json_len >= 4));
        json_t *o = json_loadb(g->buf, json_len, JSON_ALLOW_NUL, &e);
        CHECK_OR_TRAP(json_is_object(o));
        if (g->wire == &srv_triton_infer_wire && !any_failed)
            CHECK_OR_TRAP(g->http_status == 200 && json_array_size(json_object_get(o, "outputs")) == 1);
        else if (any_failed)
            CHECK_OR_TRAP(g->http_status >= 400 && (triton ? json_is_string(json_object_get(o, "error"))
                                                           : json_is_object(json_object_get(o, "error"))));
        else if (triton)
            CHECK_OR_TRAP(g->http_status == 200 && json_is_string(json_object_get(o, "text_output")));
        else
            CHECK_OR_TRAP(g->http_status == 200 &&
                          strcmp(json_string_value(json_object_get(o, "object")), "response") == 0 &&
                          json_array_size(json_object_get(o, "output")) == 1);
        json_decref(o);
        return;
    }
    const char *at = g->buf, *end = g->buf + g->len;
    json_int_t seq = 0;
    while (at < end) {
        char type[80] = "";
        if (!triton) { /* "event: TYPE\n" first */
            CHECK_OR_TRAP((size_t)(end - at) > 7 && memcmp(at, "event: ", 7) == 0);
            const char *nl = memchr(at, '\n', (size_t)(end - at));
            CHECK_OR_TRAP(nl != NULL && (size_t)(nl - at - 7) < sizeof type);
            memcpy(type, at + 7, (size_t)(nl - at - 7));
            type[nl - at - 7] = '\0';
            at = nl + 1;
        }
        CHECK_OR_TRAP((size_t)(end - at) > 6 && memcmp(at, "data: ", 6) == 0);
        at += 6;
        const char *stop = strstr(at, "\n\n");
        CHECK_OR_TRAP(stop != NULL);
        json_error_t e;
        json_t *o = json_loadb(at, (size_t)(stop - at), JSON_ALLOW_NUL, &e);
        CHECK_OR_TRAP(json_is_object(o));
        if (triton) {
            CHECK_OR_TRAP(json_is_string(json_object_get(o, "text_output")) ||
                          json_is_string(json_object_get(o, "error")));
        } else {
            CHECK_OR_TRAP(strcmp(json_string_value(json_object_get(o, "type")), type) == 0);
            CHECK_OR_TRAP(json_integer_value(json_object_get(o, "sequence_number")) == seq++);
        }
        json_decref(o);
        at = stop + 2;
    }
}

static void check_output(const srv_job *j, int any_failed)
{
    const srv_gen *g = &j->g;
    /* (infer's binary answer holds NUL bytes: its tensor's length) */
    const int binary = g->wire_ctx && json_object_get(g->wire_ctx, "header_length");
    CHECK_OR_TRAP(g->done && g->buf != NULL && (binary || g->len == strlen(g->buf)));
    if (g->wire) {
        check_wire_output(j, any_failed);
        return;
    }
    if (!g->stream) {
        json_error_t e;
        json_t *o = json_loadb(g->buf, g->len, JSON_ALLOW_NUL, &e); /* a generated <0x00> is \u0000 */
        CHECK_OR_TRAP(json_is_object(o));
        if (any_failed) {
            CHECK_OR_TRAP(g->http_status >= 400 && json_is_object(json_object_get(o, "error")));
        } else {
            CHECK_OR_TRAP(g->http_status == 200);
            json_t *ch = json_object_get(o, "choices");
            CHECK_OR_TRAP(json_is_array(ch) && (int32_t)json_array_size(ch) == j->n_choices);
            for (int32_t i = 0; i < j->n_choices; i++)
                CHECK_OR_TRAP(json_integer_value(json_object_get(json_array_get(ch, (size_t)i), "index")) ==
                              i);
        }
        json_decref(o);
        return;
    }
    /* every event is "data: <json>\n\n", the last "data: [DONE]\n\n" */
    const char *at = g->buf, *end = g->buf + g->len;
    int done = 0;
    while (at < end) {
        CHECK_OR_TRAP(!done && (size_t)(end - at) > 6 && memcmp(at, "data: ", 6) == 0);
        at += 6;
        const char *stop = strstr(at, "\n\n");
        CHECK_OR_TRAP(stop != NULL);
        if ((size_t)(stop - at) == 6 && memcmp(at, "[DONE]", 6) == 0) {
            done = 1;
        } else {
            json_error_t e;
            json_t *o = json_loadb(at, (size_t)(stop - at), JSON_ALLOW_NUL, &e);
            if (!json_is_object(o))
                fprintf(stderr, "bad chunk: %.*s (%s)\n", (int)(stop - at), at, e.text);
            CHECK_OR_TRAP(json_is_object(o));
            json_t *ch = json_object_get(o, "choices");
            size_t i;
            json_t *c;
            json_array_foreach(ch, i, c)
            {
                json_int_t idx = json_integer_value(json_object_get(c, "index"));
                CHECK_OR_TRAP(idx >= 0 && idx < j->n_choices);
            }
            json_decref(o);
        }
        at = stop + 2;
    }
    CHECK_OR_TRAP(done);
}

/* What the executor would do with the job's requests, faked. */
static void run_job(const srv_mapped *q, size_t salt)
{
    /* the job's reference, as srv_model_acquire takes it (the server's
     * model table is none of the mapping's business) */
    pthread_mutex_lock(&srv.repo_mu);
    model.refs++;
    pthread_mutex_unlock(&srv.repo_mu);
    srv_job *j = srv_job_new(&srv, q);
    CHECK_OR_TRAP(j != NULL);
    srv_gen *g = &j->g;
    int any_failed = 0;
    for (int32_t i = 0; i < q->n_prompts; i++) {
        pthread_mutex_lock(&g->mu);
        g->refs++;
        j->subs[i].id = (uint64_t)i + 1;
        j->subs[i].enqueued = 1;
        pthread_mutex_unlock(&g->mu);
    }
    for (int32_t i = 0; i < q->n_prompts; i++) {
        const srv_prompt *p = &q->prompts[i];
        int32_t width = q->req.n, n_top = q->req.logprobs;
        int how = (int)((salt + (size_t)i) % 11); /* 9: cancelled, 10: failed */
        fake_seq *f = calloc((size_t)width, sizeof *f);
        anvil_sequence_output *seqs = calloc((size_t)width, sizeof *seqs);
        CHECK_OR_TRAP(f && seqs);
        for (int32_t k = 0; k < width; k++) {
            fake_sample(p, k, n_top, &f[k], &seqs[k]);
            if (how >= 9)
                continue;
            /* streamed in two events: the first token, then the rest with the finish */
            anvil_event ev = {.kind = ANVIL_EVENT_TOKENS, .request_id = (uint64_t)i + 1, .index = k};
            ev.token_ids = f[k].ids;
            ev.n_tokens = 1;
            ev.logprobs = n_top >= 0 ? f[k].lp : NULL;
            ev.top_logprobs = n_top > 0 ? f[k].top : NULL;
            ev.n_top = n_top > 0 ? n_top : 0;
            ev.text = "";
            ev.finish = ANVIL_REQUEST_RUNNING;
            srv_gen_on_event(&j->subs[i], &ev);
            ev.token_ids = f[k].ids + 1;
            ev.n_tokens = seqs[k].n_tokens - 1;
            ev.logprobs = n_top >= 0 ? f[k].lp + 1 : NULL;
            ev.top_logprobs = n_top > 0 ? f[k].top + n_top : NULL;
            ev.text = f[k].text;
            ev.text_len = f[k].text_len;
            ev.finish = seqs[k].finish;
            srv_gen_on_event(&j->subs[i], &ev);
        }
        anvil_result res;
        memset(&res, 0, sizeof res);
        res.id = (uint64_t)i + 1;
        res.prompt_ids = p->ids;
        res.n_prompt = p->n_ids;
        res.sequences = seqs;
        res.n_sequences = width;
        res.finish = how == 9 ? ANVIL_REQUEST_CANCELLED : how == 10 ? ANVIL_REQUEST_ERROR : seqs[0].finish;
        res.status = how == 10 ? ANVIL_ERR_CAPACITY : ANVIL_OK;
        if (how == 10)
            snprintf(res.error, sizeof res.error, "the request cannot be scheduled");
        any_failed |= how >= 9;
        anvil_event fin = {.kind = ANVIL_EVENT_FINAL, .request_id = (uint64_t)i + 1, .result = &res};
        srv_gen_on_event(&j->subs[i], &fin);
        for (int32_t k = 0; k < width; k++)
            free(f[k].text);
        free(f);
        free(seqs);
    }
    check_output(j, any_failed);
    srv_gen_release(g);             /* the HTTP side's reference: frees the job */
    CHECK_OR_TRAP(model.refs == 1); /* and drops its model reference */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ready)
        init();
    json_error_t jerr;
    /* NUL inside strings allowed (the server's parser refuses them, the
     * mapping must cope anyway) */
    json_t *body = json_loadb((const char *)data, size, JSON_ALLOW_NUL, &jerr);
    if (body == NULL)
        return 0;
    if (json_is_object(body)) {
        const char *name;
        int status = 0;
        json_t *err = NULL;
        if (srv_openai_model_name(body, &name, &status, &err) < 0) {
            check_error(status, err);
            json_decref(err);
        }
        /* the other wire formats: their own mapping, then the OpenAI one */
        for (int w = 0; w < 3; w++) {
            json_t *oai = NULL, *ctx = NULL;
            status = 0;
            err = NULL;
            int rc = w < 2 ? srv_triton_map(body, "m", w, &oai, &ctx, &status, &err)
                           : srv_responses_map(body, &oai, &ctx, &status, &err);
            if (w == 0) { /* and as KServe tensors (infer), JSON data only */
                json_t *gen = NULL, *ictx = NULL, *ioai = NULL, *tctx = NULL, *ierr = NULL;
                int ist = 0;
                if (srv_triton_infer_map((const char *)data, size, 0, &gen, &ictx, &ist, &ierr) < 0) {
                    check_error(ist, ierr);
                    json_decref(ierr);
                } else if (srv_triton_map(gen, "m", 0, &ioai, &tctx, &ist, &ierr) < 0) {
                    check_error(ist, ierr);
                    json_decref(ierr);
                } else {
                    json_object_update(tctx, ictx);
                    srv_mapped *iq = NULL;
                    if (srv_openai_map(&model, ioai, 0, &iq, &ist, &ierr) < 0) {
                        check_error(ist, ierr);
                        json_decref(ierr);
                    } else {
                        iq->wire = &srv_triton_infer_wire;
                        iq->wire_ctx = tctx;
                        run_job(iq, size);
                        srv_mapped_free(iq);
                    }
                }
                json_decref(gen);
                json_decref(ictx);
                json_decref(ioai);
                json_decref(tctx);
            }
            if (rc < 0) {
                CHECK_OR_TRAP(oai == NULL && ctx == NULL);
                check_error(status, err);
                json_decref(err);
                continue;
            }
            srv_mapped *q = NULL;
            if (srv_openai_map(&model, oai, w == 2, &q, &status, &err) < 0) {
                if (w < 2)
                    srv_triton_rename(err, ctx);
                else
                    srv_responses_rename(err, ctx);
                check_error(status, err);
                json_decref(err);
            } else {
                CHECK_OR_TRAP(q->n == 1 && q->best_of == 1 && q->logprobs < 0);
                q->wire = w < 2 ? &srv_triton_wire : &srv_responses_wire;
                q->wire_ctx = ctx;
                run_job(q, size);
                srv_mapped_free(q);
            }
            json_decref(oai);
            json_decref(ctx);
        }
        for (int chat = 0; chat <= 1; chat++) {
            srv_mapped *q = (srv_mapped *)&q; /* must be reset */
            status = 0;
            err = NULL;
            int rc = srv_openai_map(&model, body, chat, &q, &status, &err);
            if (getenv("FUZZ_SERVER_VERBOSE")) { /* what each input maps to, for reading a corpus */
                char *e = err ? json_dumps(err, JSON_COMPACT) : NULL;
                fprintf(stderr, "%s: %d %s\n", chat ? "chat" : "completions", rc < 0 ? status : 200,
                        e ? e : "");
                free(e);
            }
            if (rc < 0) {
                CHECK_OR_TRAP(q == NULL);
                check_error(status, err);
                json_decref(err);
                continue;
            }
            CHECK_OR_TRAP(q != NULL && err == NULL);
            check_mapped(q, chat);
            run_job(q, size);
            srv_mapped_free(q);
        }
    }
    json_decref(body);
    return 0;
}
