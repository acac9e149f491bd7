/* Loading tokenizer.json into an anvil_tokenizer, freeing it, and the small accessors. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "anvil/log.h"
#include "core/error.h"
#include "core/fileutil.h"
#include "io/engine_file.h"
#include "io/model_files.h"
#include "tokenizer/tok_internal.h"

void anvil_tokenizer_free(anvil_tokenizer *tok)
{
    if (!tok)
        return;
    tok_bpe_free(&tok->bpe);
    tok_added_free(tok);
    tok_norm_free_all(tok);
    tok_pre_free_all(tok);
    tok_post_free_all(tok);
    tok_dec_free_all(tok);
    tok_regex_free(&tok->bytelevel_re);
    tok_regex_free(&tok->whitespace_re);
    free(tok);
}

static anvil_status build(anvil_tokenizer *tok, const char *text, size_t len)
{
    json_t *root = NULL;
    const char *vocab, *merges;
    size_t vocab_len, merges_len;
    TRY(tok_json_load(text, len, &root, &vocab, &vocab_len, &merges, &merges_len));
    anvil_status st = ANVIL_OK;
    const char *version;
    TRY_GOTO(tok_json_str(root, "version", &version, NULL, "tokenizer"), done);
    CHECK_GOTO(!version || strcmp(version, "1.0") == 0, ANVIL_ERR_UNSUPPORTED, done,
               "tokenizer.json: version '%s' is not supported (only 1.0)", version);
    json_t *model = json_object_get(root, "model");
    CHECK_GOTO(model != NULL, ANVIL_ERR_FORMAT, done, "tokenizer.json has no 'model'");

    for (int b = 0; b < 256; b++)
        tok->bl_char[b] = tok_bytelevel_char((unsigned char)b);
    for (int c = 0; c < 324; c++)
        tok->bl_byte[c] = (int16_t)tok_bytelevel_byte((uint32_t)c);

    TRY_GOTO(tok_bpe_load(&tok->bpe, model, vocab, vocab_len, merges, merges_len), done);
    TRY_GOTO(tok_norm_load(tok, json_object_get(root, "normalizer")), done);
    TRY_GOTO(tok_pre_load(tok, json_object_get(root, "pre_tokenizer")), done);
    TRY_GOTO(tok_post_load(tok, json_object_get(root, "post_processor")), done);
    TRY_GOTO(tok_dec_load(tok, json_object_get(root, "decoder")), done);
    TRY_GOTO(tok_trunc_pad_load(tok, json_object_get(root, "truncation"), json_object_get(root, "padding")), done);

    /* How the model sees its input: byte-level chars when the last
     * pre-tokenizer step is ByteLevel (then it may take raw bytes). */
    int last_bl = tok->n_pres > 0 && tok->pres[tok->n_pres - 1].kind == TOK_PRE_BYTELEVEL;
    const char *meta = NULL;
    size_t meta_len = 0;
    for (int i = 0; i < tok->n_pres; i++)
        if (tok->pres[i].kind == TOK_PRE_METASPACE) {
            meta = tok->pres[i].rep;
            meta_len = tok->pres[i].rep_len;
        }
    tok_bpe_finish(&tok->bpe, last_bl, meta, meta_len);
    if (last_bl && tok->bpe.bytelevel_ok)
        tok->pres[tok->n_pres - 1].raw_out = 1;

    for (int i = 0; i < tok->n_norms; i++) {
        enum tok_norm_kind k = tok->norms[i].kind;
        if ((k <= TOK_NORM_NFKD || (k == TOK_NORM_BERT && tok->norms[i].bert_strip_accents)) &&
            strcmp(utf8proc_unicode_version(), tok_unicode_utf8proc_version) != 0) {
            anvil_log(ANVIL_LOG_WARN,
                      "tokenizer: utf8proc has Unicode %s, the normalization guards were made for %s; "
                      "characters new since then may normalize unlike HF (rerun src/tokenizer/gen_unicode_data.py)",
                      utf8proc_unicode_version(), tok_unicode_utf8proc_version);
            break;
        }
    }

    TRY_GOTO(tok_added_load(tok, json_object_get(root, "added_tokens")), done);
    TRY_GOTO(tok_added_build_tries(tok), done);
done:
    json_decref(root);
    return st;
}

anvil_status anvil_tokenizer_load_json(const char *json, size_t len, anvil_tokenizer **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "out must not be NULL");
    *out = NULL;
    CHECK(json != NULL, ANVIL_ERR_INVALID_ARG, "json must not be NULL");
    anvil_tokenizer *tok = calloc(1, sizeof *tok);
    CHECK(tok, ANVIL_ERR_OOM, "out of memory");
    tok->bpe.unk_id = -1;
    anvil_status st = build(tok, json, len);
    if (st != ANVIL_OK) {
        anvil_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return ANVIL_OK;
}

anvil_status anvil_tokenizer_load_file(const char *path, anvil_tokenizer **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "out must not be NULL");
    *out = NULL;
    CHECK(path != NULL, ANVIL_ERR_INVALID_ARG, "path must not be NULL");
    char *text;
    size_t len;
    TRY(anvil_read_file(path, &text, &len));
    anvil_status st = anvil_tokenizer_load_json(text, len, out);
    free(text);
    if (st != ANVIL_OK)
        anvil_error_wrap("%s", path);
    return st;
}

anvil_status anvil_tokenizer_load(const char *dir, anvil_tokenizer **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "out must not be NULL");
    *out = NULL;
    CHECK(dir != NULL, ANVIL_ERR_INVALID_ARG, "dir must not be NULL");
    if (anvil_engine_file_is_engine(dir)) { /* an engine carries tokenizer.json in its manifest */
        anvil_model_files *mf = NULL;
        TRY(anvil_model_files_open(dir, &mf));
        const char *text;
        size_t len;
        anvil_status st = anvil_model_files_get(mf, "tokenizer.json", &text, &len);
        if (st == ANVIL_OK)
            st = anvil_tokenizer_load_json(text, len, out);
        if (st != ANVIL_OK)
            anvil_error_wrap("%s", dir);
        anvil_model_files_close(mf);
        return st;
    }
    if (anvil_file_exists(dir))
        return anvil_tokenizer_load_file(dir, out);
    char path[PATH_MAX];
    TRY(anvil_path_join(path, sizeof path, dir, "tokenizer.json"));
    CHECK(anvil_file_exists(path), ANVIL_ERR_NOT_FOUND, "no tokenizer.json in %s", dir);
    return anvil_tokenizer_load_file(path, out);
}

int anvil_tokenizer_available(const char *path)
{
    anvil_model_files *mf = NULL;
    if (path == NULL || anvil_model_files_open(path, &mf) != ANVIL_OK) {
        anvil_clear_error();
        return 0;
    }
    const int has = anvil_model_files_has(mf, "tokenizer.json");
    anvil_model_files_close(mf);
    return has;
}

int64_t anvil_tokenizer_vocab_size(const anvil_tokenizer *tok)
{
    return tok ? tok->vocab_size : 0;
}

int32_t anvil_tokenizer_token_id(const anvil_tokenizer *tok, const char *token)
{
    if (!tok || !token)
        return -1;
    size_t n = strlen(token);
    int32_t id = tok_strmap_get(&tok->added_map, token, n);
    return id >= 0 ? id : tok_strmap_get(&tok->bpe.vocab, token, n);
}

const char *anvil_tokenizer_token_text(const anvil_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || (uint32_t)id >= tok->n_ids)
        return NULL;
    return tok->id_str[id];
}

int anvil_tokenizer_is_special(const anvil_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || (uint32_t)id >= tok->n_ids || !tok->id_str[id])
        return 0;
    return (tok->id_flags[id] & TOK_ID_SPECIAL) != 0;
}
