/*
 * Typed getters over jansson with error messages that name the file and the
 * field, so that every loader reports bad input the same way:
 *
 *     json_t *root;
 *     TRY(anvil_json_load_file(path, &root));
 *     int64_t n;
 *     TRY_GOTO(anvil_json_require_int(root, NULL, "hidden_size", path, &n), fail);
 *     TRY_GOTO(anvil_json_get_int(rope, "rope_scaling", "factor", path, 1, &f), fail);
 *
 * Conventions for every getter:
 *  - `what` names the document in messages ("/m/config.json"); `prefix`
 *    (may be NULL) names the enclosing object of a nested field, so that
 *    messages say "rope_scaling.factor".
 *  - get_*: an absent key or a JSON null yields the default (ANVIL_OK).
 *  - require_*: an absent key is ANVIL_ERR_FORMAT "missing field"; null is a
 *    type error.
 *  - A value of the wrong JSON type is ANVIL_ERR_FORMAT naming the field, the
 *    expected type and the type found.
 *  - Integers must be JSON integers (1, not 1.0); doubles accept both.
 *  - Strings are borrowed from the json_t and live as long as it does.
 */
#ifndef ANVIL_CORE_JSON_UTIL_H
#define ANVIL_CORE_JSON_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "anvil/status.h"

/* "object", "array", "string", "integer", "real", "true", "false", "null";
 * "absent" for NULL. */
const char *anvil_json_type_name(const json_t *v);

/* Parses len bytes of text (need not be NUL-terminated). Malformed JSON is
 * ANVIL_ERR_FORMAT with jansson's text, line and column, prefixed by what.
 * Duplicate object keys are rejected. *out (taken by the caller, release
 * with json_decref) is NULL on failure. */
anvil_status anvil_json_parse(const char *text, size_t len, const char *what, json_t **out);

/* Reads and parses a whole file; the root must be an object. A missing file
 * is ANVIL_ERR_NOT_FOUND, an unreadable one ANVIL_ERR_IO. */
anvil_status anvil_json_load_file(const char *path, json_t **out);

/* The getters. obj must be an object (callers check it). `prefix` (may be
 * NULL) is prepended to key in messages as "prefix.key". */
anvil_status anvil_json_get_int(const json_t *obj, const char *prefix, const char *key, const char *what,
                                int64_t def, int64_t *out);
anvil_status anvil_json_require_int(const json_t *obj, const char *prefix, const char *key, const char *what,
                                    int64_t *out);
anvil_status anvil_json_get_double(const json_t *obj, const char *prefix, const char *key, const char *what,
                                   double def, double *out);
anvil_status anvil_json_require_double(const json_t *obj, const char *prefix, const char *key,
                                       const char *what, double *out);
anvil_status anvil_json_get_bool(const json_t *obj, const char *prefix, const char *key, const char *what,
                                 int def, int *out);
anvil_status anvil_json_get_string(const json_t *obj, const char *prefix, const char *key, const char *what,
                                   const char *def, const char **out);
anvil_status anvil_json_require_string(const json_t *obj, const char *prefix, const char *key,
                                       const char *what, const char **out);

/* An object-valued field: absent or null gives *out = NULL and ANVIL_OK;
 * anything but an object is a type error. Borrowed. */
anvil_status anvil_json_get_object(const json_t *obj, const char *prefix, const char *key, const char *what,
                                   json_t **out);

/* Copies a string field into buf (cap bytes incl. the NUL); a longer string
 * is ANVIL_ERR_FORMAT. Absent or null leaves def. */
anvil_status anvil_json_get_string_buf(const json_t *obj, const char *prefix, const char *key,
                                       const char *what, const char *def, char *buf, size_t cap);

#endif
