/*
 * After the model: truncation, the post-processor (TemplateProcessing,
 * ByteLevel, RobertaProcessing, BertProcessing, Sequence of them) and
 * padding, for a single sequence, in HF's order (Tokenizer::post_process).
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

/* ------------------------------------------------------------ loading */

static anvil_status add_post(anvil_tokenizer *tok, tok_post *p)
{
    tok_post *s = realloc(tok->posts, (size_t)(tok->n_posts + 1) * sizeof *s);
    CHECK(s, ANVIL_ERR_OOM, "out of memory");
    tok->posts = s;
    tok->posts[tok->n_posts++] = *p;
    return ANVIL_OK;
}

static anvil_status push_ids(tok_post *p, const int32_t *ids, int n)
{
    int32_t *q = realloc(p->ids, (size_t)(p->n_ids + n + 1) * sizeof *q);
    CHECK(q, ANVIL_ERR_OOM, "out of memory");
    p->ids = q;
    memcpy(p->ids + p->n_ids, ids, (size_t)n * sizeof *ids);
    p->n_ids += n;
    return ANVIL_OK;
}

static anvil_status push_item(tok_post *p, int32_t off, int32_t n)
{
    tok_post_item *q = realloc(p->items, (size_t)(p->n_items + 1) * sizeof *q);
    CHECK(q, ANVIL_ERR_OOM, "out of memory");
    p->items = q;
    p->items[p->n_items++] = (tok_post_item){off, n};
    return ANVIL_OK;
}

static void post_free(tok_post *p)
{
    free(p->items);
    free(p->ids);
}

/* ["token", id] of RobertaProcessing / BertProcessing */
static anvil_status special_pair(json_t *j, const char *key, const char *what, int32_t *id)
{
    json_t *v = json_object_get(j, key);
    CHECK(json_is_array(v) && json_array_size(v) == 2 && json_is_integer(json_array_get(v, 1)), ANVIL_ERR_FORMAT,
          "tokenizer.json: %s.%s must be [token, id]", what, key);
    json_int_t x = json_integer_value(json_array_get(v, 1));
    CHECK(x >= 0 && x < TOK_MAX_ID, ANVIL_ERR_FORMAT, "tokenizer.json: %s.%s id out of range", what, key);
    *id = (int32_t)x;
    return ANVIL_OK;
}

static anvil_status load_template(tok_post *p, json_t *j)
{
    json_t *single = json_object_get(j, "single");
    json_t *specials = json_object_get(j, "special_tokens");
    CHECK(json_is_array(single), ANVIL_ERR_FORMAT, "tokenizer.json: TemplateProcessing.single must be a list");
    CHECK(specials == NULL || json_is_object(specials), ANVIL_ERR_FORMAT,
          "tokenizer.json: TemplateProcessing.special_tokens must be an object");
    for (size_t i = 0; i < json_array_size(single); i++) {
        json_t *piece = json_array_get(single, i);
        json_t *sp = json_object_get(piece, "SpecialToken");
        json_t *sq = json_object_get(piece, "Sequence");
        if (json_is_object(sq)) {
            const char *id;
            TRY(tok_json_str(sq, "id", &id, NULL, "TemplateProcessing.single"));
            CHECK(id && strcmp(id, "A") == 0, ANVIL_ERR_UNSUPPORTED,
                  "tokenizer.json: TemplateProcessing.single uses sequence '%s'", id ? id : "?");
            TRY(push_item(p, 0, -1));
        } else if (json_is_object(sp)) {
            const char *name;
            TRY(tok_json_str(sp, "id", &name, NULL, "TemplateProcessing.single"));
            CHECK(name, ANVIL_ERR_FORMAT, "tokenizer.json: TemplateProcessing special token without id");
            json_t *def = specials ? json_object_get(specials, name) : NULL;
            CHECK(json_is_object(def), ANVIL_ERR_FORMAT,
                  "tokenizer.json: TemplateProcessing is missing special token '%s'", name);
            json_t *ids = json_object_get(def, "ids");
            CHECK(json_is_array(ids), ANVIL_ERR_FORMAT, "tokenizer.json: special token '%s' has no ids", name);
            int32_t off = p->n_ids;
            for (size_t k = 0; k < json_array_size(ids); k++) {
                json_t *v = json_array_get(ids, k);
                CHECK(json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) < TOK_MAX_ID,
                      ANVIL_ERR_FORMAT, "tokenizer.json: special token '%s' has a bad id", name);
                int32_t x = (int32_t)json_integer_value(v);
                TRY(push_ids(p, &x, 1));
            }
            TRY(push_item(p, off, (int32_t)json_array_size(ids)));
        } else {
            return ANVIL_FAIL(ANVIL_ERR_FORMAT, "tokenizer.json: TemplateProcessing piece %zu is not understood", i);
        }
    }
    return ANVIL_OK;
}

static anvil_status load_one(anvil_tokenizer *tok, json_t *j, int depth)
{
    CHECK(depth < 16, ANVIL_ERR_FORMAT, "tokenizer.json: post-processors nested too deep");
    CHECK(json_is_object(j), ANVIL_ERR_FORMAT, "tokenizer.json: a post-processor must be an object");
    const char *type;
    TRY(tok_json_str(j, "type", &type, NULL, "post_processor"));
    CHECK(type, ANVIL_ERR_FORMAT, "tokenizer.json: a post-processor has no type");
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(j, "processors");
        CHECK(json_is_array(list), ANVIL_ERR_FORMAT, "tokenizer.json: post-processor Sequence needs 'processors'");
        for (size_t i = 0; i < json_array_size(list); i++)
            TRY(load_one(tok, json_array_get(list, i), depth + 1));
        return ANVIL_OK;
    }
    tok_post p;
    memset(&p, 0, sizeof p);
    anvil_status st = ANVIL_OK;
    if (strcmp(type, "TemplateProcessing") == 0) {
        p.kind = TOK_POST_TEMPLATE;
        st = load_template(&p, j);
    } else if (strcmp(type, "ByteLevel") == 0) {
        p.kind = TOK_POST_BYTELEVEL;
    } else if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        int32_t cls, sep;
        p.kind = type[0] == 'R' ? TOK_POST_ROBERTA : TOK_POST_BERT;
        st = special_pair(j, "cls", type, &cls);
        if (st == ANVIL_OK)
            st = special_pair(j, "sep", type, &sep);
        if (st == ANVIL_OK)
            st = push_ids(&p, &cls, 1);
        if (st == ANVIL_OK)
            st = push_ids(&p, &sep, 1);
        if (st == ANVIL_OK)
            st = push_item(&p, 0, 1);
        if (st == ANVIL_OK)
            st = push_item(&p, 0, -1);
        if (st == ANVIL_OK)
            st = push_item(&p, 1, 1);
    } else {
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "tokenizer.json: post-processor '%s' is not supported", type);
    }
    if (st == ANVIL_OK)
        st = add_post(tok, &p);
    if (st != ANVIL_OK)
        post_free(&p);
    return st;
}

anvil_status tok_post_load(anvil_tokenizer *tok, json_t *j)
{
    if (!j || json_is_null(j))
        return ANVIL_OK;
    tok->has_post = 1;
    return load_one(tok, j, 0);
}

static anvil_status direction(json_t *j, enum tok_trunc_dir *out, const char *what)
{
    const char *d;
    TRY(tok_json_str(j, "direction", &d, NULL, what));
    *out = TOK_DIR_RIGHT;
    if (d && strcmp(d, "Left") == 0)
        *out = TOK_DIR_LEFT;
    else
        CHECK(!d || strcmp(d, "Right") == 0, ANVIL_ERR_FORMAT, "tokenizer.json: %s.direction '%s' is unknown", what,
              d);
    return ANVIL_OK;
}

static anvil_status size_field(json_t *j, const char *key, size_t *out, const char *what)
{
    json_t *v = json_object_get(j, key);
    CHECK(json_is_integer(v) && json_integer_value(v) >= 0, ANVIL_ERR_FORMAT,
          "tokenizer.json: %s.%s must be a non-negative integer", what, key);
    *out = (size_t)json_integer_value(v);
    return ANVIL_OK;
}

anvil_status tok_trunc_pad_load(anvil_tokenizer *tok, json_t *trunc, json_t *pad)
{
    if (trunc && !json_is_null(trunc)) {
        CHECK(json_is_object(trunc), ANVIL_ERR_FORMAT, "tokenizer.json: truncation must be an object");
        tok->has_truncation = 1;
        TRY(size_field(trunc, "max_length", &tok->trunc_max, "truncation"));
        TRY(direction(trunc, &tok->trunc_dir, "truncation"));
        const char *strategy;
        TRY(tok_json_str(trunc, "strategy", &strategy, NULL, "truncation"));
        CHECK(!strategy || strcmp(strategy, "OnlySecond") != 0, ANVIL_ERR_UNSUPPORTED,
              "tokenizer.json: truncation strategy OnlySecond fails on single sequences in HF");
    }
    if (pad && !json_is_null(pad)) {
        CHECK(json_is_object(pad), ANVIL_ERR_FORMAT, "tokenizer.json: padding must be an object");
        tok->has_padding = 1;
        json_t *s = json_object_get(pad, "strategy");
        if (json_is_object(s)) {
            json_t *f = json_object_get(s, "Fixed");
            CHECK(json_is_integer(f) && json_integer_value(f) >= 0, ANVIL_ERR_FORMAT,
                  "tokenizer.json: padding.strategy.Fixed must be an integer");
            tok->pad_fixed = 1;
            tok->pad_len = (size_t)json_integer_value(f);
        } else {
            CHECK(json_is_string(s) && strcmp(json_string_value(s), "BatchLongest") == 0, ANVIL_ERR_FORMAT,
                  "tokenizer.json: padding.strategy is not understood");
        }
        json_t *m = json_object_get(pad, "pad_to_multiple_of");
        if (m && !json_is_null(m))
            TRY(size_field(pad, "pad_to_multiple_of", &tok->pad_multiple, "padding"));
        size_t id = 0;
        TRY(size_field(pad, "pad_id", &id, "padding"));
        CHECK(id < TOK_MAX_ID, ANVIL_ERR_FORMAT, "tokenizer.json: padding.pad_id out of range");
        tok->pad_id = (int32_t)id;
        TRY(direction(pad, &tok->pad_dir, "padding"));
    }
    return ANVIL_OK;
}

void tok_post_free_all(anvil_tokenizer *tok)
{
    for (int i = 0; i < tok->n_posts; i++)
        post_free(&tok->posts[i]);
    free(tok->posts);
    tok->posts = NULL;
    tok->n_posts = 0;
}

/* ------------------------------------------------------------ processing */

static size_t n_added_single(const anvil_tokenizer *tok)
{
    size_t n = 0;
    for (int i = 0; i < tok->n_posts; i++)
        for (int k = 0; k < tok->posts[i].n_items; k++)
            if (tok->posts[i].items[k].n > 0)
                n += (size_t)tok->posts[i].items[k].n;
    return n;
}

anvil_status tok_post_process(const anvil_tokenizer *tok, tok_work *w, int add_special)
{
    if (tok->has_truncation) {
        size_t n_added = n_added_single(tok);
        size_t max = tok->trunc_max;
        if (add_special && n_added > 0) {
            CHECK(max >= n_added, ANVIL_ERR_FORMAT,
                  "tokenizer.json: truncation max_length %zu is below the %zu special tokens", max, n_added);
            max -= n_added;
        }
        if (w->n_ids > max) {
            if (tok->trunc_dir == TOK_DIR_LEFT)
                memmove(w->ids, w->ids + (w->n_ids - max), max * sizeof *w->ids);
            w->n_ids = max;
        }
    }
    for (int i = 0; i < tok->n_posts && add_special; i++) {
        const tok_post *p = &tok->posts[i];
        if (p->n_items == 0)
            continue;
        size_t extra = 0, seqs = 0;
        for (int k = 0; k < p->n_items; k++) {
            if (p->items[k].n < 0)
                seqs++;
            else
                extra += (size_t)p->items[k].n;
        }
        size_t n = w->n_ids, total = extra + seqs * n;
        int32_t *out = malloc((total + 1) * sizeof *out);
        CHECK(out, ANVIL_ERR_OOM, "out of memory");
        size_t k2 = 0;
        for (int k = 0; k < p->n_items; k++) {
            if (p->items[k].n < 0) {
                memcpy(out + k2, w->ids, n * sizeof *out);
                k2 += n;
            } else {
                memcpy(out + k2, p->ids + p->items[k].off, (size_t)p->items[k].n * sizeof *out);
                k2 += (size_t)p->items[k].n;
            }
        }
        free(w->ids);
        w->ids = out;
        w->n_ids = total;
        w->cap_ids = total + 1;
    }
    if (tok->has_padding) {
        size_t target = tok->pad_fixed ? tok->pad_len : w->n_ids;
        if (tok->pad_multiple > 0 && target % tok->pad_multiple)
            target += tok->pad_multiple - target % tok->pad_multiple;
        if (w->n_ids < target) {
            size_t add = target - w->n_ids;
            TRY(tok_grow((void **)&w->ids, &w->cap_ids, target, sizeof *w->ids));
            if (tok->pad_dir == TOK_DIR_LEFT)
                memmove(w->ids + add, w->ids, w->n_ids * sizeof *w->ids);
            int32_t *at = tok->pad_dir == TOK_DIR_LEFT ? w->ids : w->ids + w->n_ids;
            for (size_t i = 0; i < add; i++)
                at[i] = tok->pad_id;
            w->n_ids = target;
        }
    }
    return ANVIL_OK;
}
