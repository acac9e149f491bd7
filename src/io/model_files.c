/* A model's non-weight files, from a folder or an engine's manifest (model_files.h). */
#include "io/model_files.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "core/fileutil.h"
#include "io/engine_file.h"

const char *const anvil_model_file_names[] = {
    "config.json",          "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja",  "chat_template.json", NULL,
};

#define N_FILES (sizeof anvil_model_file_names / sizeof anvil_model_file_names[0] - 1)

struct anvil_model_files {
    char *path;
    int engine;
    json_t *files;          /* engine: the manifest's "files" object (name -> text) */
    char *text[N_FILES];    /* folder: files read so far */
    size_t len[N_FILES];
    int absent[N_FILES];    /* folder: looked for and not there */
};

static int file_index(const char *name)
{
    for (size_t i = 0; i < N_FILES; i++)
        if (strcmp(anvil_model_file_names[i], name) == 0)
            return (int)i;
    return -1;
}

anvil_status anvil_model_files_open(const char *path, anvil_model_files **out)
{
    *out = NULL;
    CHECK(path != NULL, ANVIL_ERR_INVALID_ARG, "no model path given");
    struct stat sb;
    if (stat(path, &sb) != 0)
        return ANVIL_FAIL(errno == ENOENT ? ANVIL_ERR_NOT_FOUND : ANVIL_ERR_IO, "no model at %s: %s", path,
                          strerror(errno));
    anvil_model_files *m = calloc(1, sizeof *m);
    CHECK(m != NULL, ANVIL_ERR_OOM, "out of memory");
    m->path = strdup(path);
    anvil_status st = ANVIL_OK;
    CHECK_GOTO(m->path != NULL, ANVIL_ERR_OOM, fail, "out of memory");
    if (S_ISDIR(sb.st_mode)) {
        *out = m;
        return ANVIL_OK;
    }
    CHECK_GOTO(S_ISREG(sb.st_mode) && anvil_engine_file_is_engine(path), ANVIL_ERR_FORMAT, fail,
               "%s is neither a model folder nor an anvil engine file", path);
    anvil_engine_file *f = NULL;
    TRY_GOTO(anvil_engine_file_open(path, ANVIL_ST_READ, &f), fail);
    json_t *files = json_object_get(anvil_engine_file_manifest(f), "files");
    if (!json_is_object(files)) {
        anvil_engine_file_close(f);
        CHECK_GOTO(0, ANVIL_ERR_FORMAT, fail, "%s: the manifest has no \"files\" object", path);
    }
    const char *k;
    json_t *v;
    json_object_foreach(files, k, v)
    {
        if (!json_is_string(v)) {
            anvil_engine_file_close(f);
            CHECK_GOTO(0, ANVIL_ERR_FORMAT, fail, "%s: manifest file \"%s\" is not a string", path, k);
        }
    }
    m->files = json_incref(files);
    m->engine = 1;
    anvil_engine_file_close(f);
    *out = m;
    return ANVIL_OK;
fail:
    anvil_model_files_close(m);
    return st;
}

void anvil_model_files_close(anvil_model_files *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < N_FILES; i++)
        free(m->text[i]);
    json_decref(m->files);
    free(m->path);
    free(m);
}

anvil_status anvil_model_files_get(anvil_model_files *m, const char *name, const char **text, size_t *len)
{
    *text = NULL;
    if (len)
        *len = 0;
    if (m->engine) {
        json_t *v = json_object_get(m->files, name);
        CHECK(v != NULL, ANVIL_ERR_NOT_FOUND, "%s has no %s", m->path, name);
        *text = json_string_value(v);
        if (len)
            *len = json_string_length(v);
        return ANVIL_OK;
    }
    const int i = file_index(name);
    CHECK(i >= 0, ANVIL_ERR_INVALID_ARG, "'%s' is not a model file anvil reads", name);
    if (m->text[i] == NULL && !m->absent[i]) {
        char path[4096];
        TRY(anvil_path_join(path, sizeof path, m->path, name));
        struct stat sb;
        if (stat(path, &sb) != 0) {
            m->absent[i] = 1;
        } else {
            TRY(anvil_read_file(path, &m->text[i], &m->len[i]));
        }
    }
    CHECK(!m->absent[i], ANVIL_ERR_NOT_FOUND, "%s has no %s", m->path, name);
    *text = m->text[i];
    if (len)
        *len = m->len[i];
    return ANVIL_OK;
}

int anvil_model_files_has(const anvil_model_files *m, const char *name)
{
    if (m->engine)
        return json_object_get(m->files, name) != NULL;
    char path[4096];
    return anvil_path_join(path, sizeof path, m->path, name) == ANVIL_OK && anvil_file_exists(path);
}

const char *anvil_model_files_where(const anvil_model_files *m, const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, m->engine ? "%s: %s" : "%s/%s", m->path, name);
    return buf;
}

int anvil_model_files_is_engine(const anvil_model_files *m) { return m->engine; }
const char *anvil_model_files_path(const anvil_model_files *m) { return m->path; }
