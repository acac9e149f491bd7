/* Typed jansson getters with messages that say which file, which field and
 * what was wrong, so that a user can fix a config without reading code. */
#include "core/json_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "core/fileutil.h"

const char *anvil_json_type_name(const json_t *v)
{
    if (v == NULL)
        return "absent";
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "real";
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    case JSON_NULL:
        return "null";
    }
    return "?";
}

anvil_status anvil_json_parse(const char *text, size_t len, const char *what, json_t **out)
{
    *out = NULL;
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    CHECK(root != NULL, ANVIL_ERR_FORMAT, "%s: malformed JSON at line %d, column %d: %s", what, err.line,
          err.column, err.text);
    *out = root;
    return ANVIL_OK;
}

anvil_status anvil_json_load_file(const char *path, json_t **out)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return ANVIL_FAIL(errno == ENOENT ? ANVIL_ERR_NOT_FOUND : ANVIL_ERR_IO, "cannot open %s: %s", path,
                          strerror(errno));
    CHECK(S_ISREG(sb.st_mode), ANVIL_ERR_IO, "cannot read %s: not a regular file", path);
    char *text = NULL;
    size_t len = 0;
    TRY(anvil_read_file(path, &text, &len));
    json_t *root = NULL;
    anvil_status st = anvil_json_parse(text, len, path, &root);
    free(text);
    TRY(st);
    if (!json_is_object(root)) {
        st = ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s: the top level must be a JSON object, got %s", path,
                        anvil_json_type_name(root));
        json_decref(root);
        return st;
    }
    *out = root;
    return ANVIL_OK;
}

/* "prefix.key" or "key", for messages. */
static const char *field_name(char *buf, size_t cap, const char *prefix, const char *key)
{
    if (prefix && *prefix)
        snprintf(buf, cap, "%s.%s", prefix, key);
    else
        snprintf(buf, cap, "%s", key);
    return buf;
}

/* The value of key, or NULL when absent or null. Sets *present when the key
 * exists at all (even as null). */
static json_t *lookup(const json_t *obj, const char *key, int *present)
{
    json_t *v = json_object_get(obj, key);
    *present = v != NULL;
    return json_is_null(v) ? NULL : v;
}

static anvil_status type_error(const char *prefix, const char *key, const char *what, const char *want,
                               const json_t *got)
{
    char name[160];
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s: field \"%s\" must be %s, got %s", what,
                      field_name(name, sizeof name, prefix, key), want, anvil_json_type_name(got));
}

static anvil_status missing(const char *prefix, const char *key, const char *what)
{
    char name[160];
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s: missing field \"%s\"", what,
                      field_name(name, sizeof name, prefix, key));
}

anvil_status anvil_json_get_int(const json_t *obj, const char *prefix, const char *key, const char *what,
                                int64_t def, int64_t *out)
{
    int present;
    json_t *v = lookup(obj, key, &present);
    if (v == NULL) {
        *out = def;
        return ANVIL_OK;
    }
    if (!json_is_integer(v))
        return type_error(prefix, key, what, "an integer", v);
    *out = (int64_t)json_integer_value(v);
    return ANVIL_OK;
}

anvil_status anvil_json_require_int(const json_t *obj, const char *prefix, const char *key, const char *what,
                                    int64_t *out)
{
    int present;
    json_t *v = lookup(obj, key, &present);
    if (!present)
        return missing(prefix, key, what);
    if (!json_is_integer(v))
        return type_error(prefix, key, what, "an integer", json_object_get(obj, key));
    *out = (int64_t)json_integer_value(v);
    return ANVIL_OK;
}

anvil_status anvil_json_get_double(const json_t *obj, const char *prefix, const char *key, const char *what,
                                   double def, double *out)
{
    int present;
    json_t *v = lookup(obj, key, &present);
    if (v == NULL) {
        *out = def;
        return ANVIL_OK;
    }
    if (!json_is_number(v))
        return type_error(prefix, key, what, "a number", v);
    *out = json_number_value(v);
    return ANVIL_OK;
}

anvil_status anvil_json_require_double(const json_t *obj, const char *prefix, const char *key,
                                       const char *what, double *out)
{
    int present;
    json_t *v = lookup(obj, key, &present);
    if (!present)
        return missing(prefix, key, what);
    if (!json_is_number(v))
        return type_error(prefix, key, what, "a number", json_object_get(obj, key));
    *out = json_number_value(v);
    return ANVIL_OK;
}

anvil_status anvil_json_get_bool(const json_t *obj, const char *prefix, const char *key, const char *what,
                                 int def, int *out)
{
    int present;
    json_t *v = lookup(obj, key, &present);
    if (v == NULL) {
        *out = def;
        return ANVIL_OK;
    }
    if (!json_is_boolean(v))
        return type_error(prefix, key, what, "true or false", v);
    *out = json_is_true(v);
    return ANVIL_OK;
}

anvil_status anvil_json_get_string(const json_t *obj, const char *prefix, const char *key, const char *what,
                                   const char *def, const char **out)
{
    int present;
    json_t *v = lookup(obj, key, &present);
    if (v == NULL) {
        *out = def;
        return ANVIL_OK;
    }
    if (!json_is_string(v))
        return type_error(prefix, key, what, "a string", v);
    *out = json_string_value(v);
    return ANVIL_OK;
}

anvil_status anvil_json_require_string(const json_t *obj, const char *prefix, const char *key,
                                       const char *what, const char **out)
{
    int present;
    json_t *v = lookup(obj, key, &present);
    if (!present)
        return missing(prefix, key, what);
    if (!json_is_string(v))
        return type_error(prefix, key, what, "a string", json_object_get(obj, key));
    *out = json_string_value(v);
    return ANVIL_OK;
}

anvil_status anvil_json_get_object(const json_t *obj, const char *prefix, const char *key, const char *what,
                                   json_t **out)
{
    int present;
    json_t *v = lookup(obj, key, &present);
    *out = NULL;
    if (v == NULL)
        return ANVIL_OK;
    if (!json_is_object(v))
        return type_error(prefix, key, what, "an object", v);
    *out = v;
    return ANVIL_OK;
}

anvil_status anvil_json_get_string_buf(const json_t *obj, const char *prefix, const char *key,
                                       const char *what, const char *def, char *buf, size_t cap)
{
    const char *s = NULL;
    TRY(anvil_json_get_string(obj, prefix, key, what, def, &s));
    if (s == NULL)
        return ANVIL_OK;
    size_t n = strlen(s);
    if (n >= cap) {
        char name[160];
        return ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s: field \"%s\" is too long (%zu bytes, at most %zu)", what,
                          field_name(name, sizeof name, prefix, key), n, cap - 1);
    }
    memcpy(buf, s, n + 1);
    return ANVIL_OK;
}
