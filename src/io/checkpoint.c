/*
 * A checkpoint folder: model.safetensors, or the shards named by
 * model.safetensors.index.json. Each shard is opened once however many
 * tensors the index sends to it; the index is checked against the shards
 * (every listed tensor must be in the shard it names) so that a broken
 * download is reported at open time, not as a missing weight later.
 */
#include "io/safetensors.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/error.h"
#include "core/fileutil.h"
#include "core/json_util.h"

#define CKPT_SINGLE "model.safetensors"
#define CKPT_INDEX  "model.safetensors.index.json"

struct anvil_checkpoint {
    anvil_st_access access;
    anvil_safetensors **shards;
    int64_t n_shards;
    const anvil_st_tensor **tensors; /* shard order, then file order */
    const anvil_st_tensor **by_name; /* sorted by name */
    int64_t n;
};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard name must stay inside the folder: relative, no ".." component. */
static int shard_name_ok(const char *s)
{
    if (s[0] == '\0' || s[0] == '/')
        return 0;
    for (const char *p = s; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return 0;
        p += n;
        if (*p == '/')
            p++;
    }
    return 1;
}

/* Opens each distinct shard named by the index, in sorted name order;
 * *names_out (taken, strings borrowed from wmap) holds their names in the
 * same order, so that shard i is names_out[i]. */
static anvil_status open_shards(anvil_checkpoint *c, const char *dir, const char *index_path, json_t *wmap,
                                const char ***names_out)
{
    anvil_status st = ANVIL_OK;
    size_t n_entries = json_object_size(wmap);
    const char **names = calloc(n_entries ? n_entries : 1, sizeof *names);
    *names_out = names;
    CHECK(names != NULL, ANVIL_ERR_OOM, "out of memory reading %s", index_path);
    size_t k = 0;
    const char *key;
    json_t *val;
    json_object_foreach(wmap, key, val)
    {
        CHECK_GOTO(json_is_string(val), ANVIL_ERR_FORMAT, done,
                   "%s: weight_map entry \"%s\" must name a file (a string), got %s", index_path, key,
                   anvil_json_type_name(val));
        const char *file = json_string_value(val);
        CHECK_GOTO(shard_name_ok(file), ANVIL_ERR_FORMAT, done,
                   "%s: weight_map entry \"%s\" names \"%s\", which is not a file inside the folder",
                   index_path, key, file);
        names[k++] = file;
    }
    qsort(names, k, sizeof *names, cmp_str);
    size_t n_unique = 0;
    for (size_t i = 0; i < k; i++)
        if (n_unique == 0 || strcmp(names[i], names[n_unique - 1]) != 0)
            names[n_unique++] = names[i];
    c->shards = calloc(n_unique ? n_unique : 1, sizeof *c->shards);
    CHECK_GOTO(c->shards != NULL, ANVIL_ERR_OOM, done, "out of memory reading %s", index_path);
    for (size_t i = 0; i < n_unique; i++) {
        char path[4096];
        TRY_GOTO(anvil_path_join(path, sizeof path, dir, names[i]), done);
        st = anvil_safetensors_open_ex(path, c->access, &c->shards[i]);
        if (st != ANVIL_OK) {
            anvil_error_wrap("%s names shard %s", index_path, names[i]);
            goto done;
        }
        c->n_shards++;
    }
done:
    return st;
}

/* Index over every tensor of every shard; a name in two shards is an error. */
static anvil_status build_index(anvil_checkpoint *c, const char *dir)
{
    int64_t n = 0;
    for (int64_t s = 0; s < c->n_shards; s++)
        n += anvil_safetensors_count(c->shards[s]);
    c->tensors = calloc(n ? (size_t)n : 1, sizeof *c->tensors);
    c->by_name = calloc(n ? (size_t)n : 1, sizeof *c->by_name);
    CHECK(c->tensors && c->by_name, ANVIL_ERR_OOM, "out of memory indexing %s", dir);
    for (int64_t s = 0; s < c->n_shards; s++) {
        for (int64_t i = 0; i < anvil_safetensors_count(c->shards[s]); i++) {
            c->tensors[c->n] = anvil_safetensors_at(c->shards[s], i);
            c->by_name[c->n] = c->tensors[c->n];
            c->n++;
        }
    }
    anvil_st_sort_by_name(c->by_name, c->n);
    for (int64_t i = 1; i < c->n; i++)
        CHECK(strcmp(c->by_name[i - 1]->name, c->by_name[i]->name) != 0, ANVIL_ERR_FORMAT,
              "%s: tensor \"%s\" is stored in more than one shard", dir, c->by_name[i]->name);
    return ANVIL_OK;
}

/* Every weight_map entry must be found in the shard it names. */
static anvil_status check_weight_map(const anvil_checkpoint *c, const char *index_path, json_t *wmap,
                                     const char **names)
{
    const char *key;
    json_t *val;
    json_object_foreach(wmap, key, val)
    {
        const char *file = json_string_value(val);
        const char **hit = bsearch(&file, names, (size_t)c->n_shards, sizeof *names, cmp_str);
        if (hit == NULL) /* cannot happen: every name was opened */
            return ANVIL_FAIL(ANVIL_ERR_INTERNAL, "%s: shard %s was not opened", index_path, file);
        const anvil_safetensors *shard = c->shards[hit - names];
        CHECK(anvil_safetensors_find(shard, key) != NULL, ANVIL_ERR_FORMAT,
              "%s: tensor \"%s\" is listed in shard %s, which does not contain it", index_path, key, file);
    }
    return ANVIL_OK;
}

anvil_status anvil_checkpoint_open(const char *dir, anvil_checkpoint **out)
{
    return anvil_checkpoint_open_ex(dir, ANVIL_ST_MMAP, out);
}

anvil_status anvil_checkpoint_check_unchanged(const anvil_checkpoint *c)
{
    for (int64_t s = 0; c && s < c->n_shards; s++)
        TRY(anvil_safetensors_check_unchanged(c->shards[s]));
    return ANVIL_OK;
}

anvil_status anvil_checkpoint_open_ex(const char *dir, anvil_st_access access, anvil_checkpoint **out)
{
    *out = NULL;
    CHECK(dir != NULL, ANVIL_ERR_INVALID_ARG, "anvil_checkpoint_open: dir is NULL");
    anvil_checkpoint *c = calloc(1, sizeof *c);
    CHECK(c != NULL, ANVIL_ERR_OOM, "out of memory opening %s", dir);
    c->access = access;
    anvil_status st = ANVIL_OK;
    json_t *index = NULL;
    const char **names = NULL;
    char path[4096];
    TRY_GOTO(anvil_path_join(path, sizeof path, dir, CKPT_SINGLE), fail);
    if (anvil_file_exists(path)) {
        c->shards = calloc(1, sizeof *c->shards);
        CHECK_GOTO(c->shards != NULL, ANVIL_ERR_OOM, fail, "out of memory opening %s", dir);
        TRY_GOTO(anvil_safetensors_open_ex(path, access, &c->shards[0]), fail);
        c->n_shards = 1;
    } else {
        TRY_GOTO(anvil_path_join(path, sizeof path, dir, CKPT_INDEX), fail);
        CHECK_GOTO(anvil_file_exists(path), ANVIL_ERR_NOT_FOUND, fail,
                   "%s holds neither " CKPT_SINGLE " nor " CKPT_INDEX, dir);
        TRY_GOTO(anvil_json_load_file(path, &index), fail);
        json_t *wmap = NULL;
        TRY_GOTO(anvil_json_get_object(index, NULL, "weight_map", path, &wmap), fail);
        CHECK_GOTO(wmap != NULL, ANVIL_ERR_FORMAT, fail, "%s: missing field \"weight_map\"", path);
        TRY_GOTO(open_shards(c, dir, path, wmap, &names), fail);
        TRY_GOTO(check_weight_map(c, path, wmap, names), fail);
    }
    TRY_GOTO(build_index(c, dir), fail);
    free(names);
    json_decref(index);
    *out = c;
    return ANVIL_OK;
fail:
    free(names);
    json_decref(index);
    anvil_checkpoint_close(c);
    return st;
}

void anvil_checkpoint_close(anvil_checkpoint *c)
{
    if (c == NULL)
        return;
    for (int64_t s = 0; s < c->n_shards; s++)
        anvil_safetensors_close(c->shards[s]);
    free(c->shards);
    free(c->tensors);
    free(c->by_name);
    free(c);
}

int64_t anvil_checkpoint_count(const anvil_checkpoint *c)
{
    return c ? c->n : 0;
}

const anvil_st_tensor *anvil_checkpoint_at(const anvil_checkpoint *c, int64_t i)
{
    if (c == NULL || i < 0 || i >= c->n)
        return NULL;
    return c->tensors[i];
}

const anvil_st_tensor *anvil_checkpoint_find(const anvil_checkpoint *c, const char *name)
{
    if (c == NULL || name == NULL)
        return NULL;
    const anvil_st_tensor *t = anvil_st_lookup(c->by_name, c->n, name);
    /* GPT-2: save_pretrained writes "transformer.h.0...", the original gpt2
     * checkpoint (and its copies) "h.0..." for the same tensors; a name
     * that is not there under the prefix is looked up without it */
    static const char prefix[] = "transformer.";
    if (t == NULL && strncmp(name, prefix, sizeof prefix - 1) == 0)
        t = anvil_st_lookup(c->by_name, c->n, name + sizeof prefix - 1);
    return t;
}
