/* The manifest's "kv_cache" object (kv_manifest.h). */
#include "builder/kv_manifest.h"

#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "io/kv_scales.h"

json_t *anvil_manifest_kv(int fp8, const char *source, int32_t n_layers, const float *scales)
{
    json_t *o = json_pack("{s:s, s:s}", "dtype", fp8 ? "fp8" : "auto", "scales", scales ? source : "none");
    if (o == NULL || scales == NULL)
        return o;
    json_t *k = json_array(), *v = json_array();
    int ok = k != NULL && v != NULL;
    /* a float widened to double prints with 17 digits: read back bit for bit */
    for (int32_t l = 0; ok && l < n_layers; l++)
        ok = json_array_append_new(k, json_real(scales[2 * l])) == 0 &&
             json_array_append_new(v, json_real(scales[2 * l + 1])) == 0;
    ok = ok && json_object_set(o, "k_scale", k) == 0 && json_object_set(o, "v_scale", v) == 0;
    json_decref(k);
    json_decref(v);
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static anvil_status read_array(const json_t *kv, const char *key, const char *path, int32_t n_layers,
                               float *scales, int at)
{
    const json_t *a = json_object_get(kv, key);
    CHECK(json_is_array(a) && json_array_size(a) == (size_t)n_layers, ANVIL_ERR_FORMAT,
          "%s: the manifest's kv_cache.%s must be an array of %d numbers (one per KV layer)", path, key,
          (int)n_layers);
    for (int32_t l = 0; l < n_layers; l++) {
        const json_t *x = json_array_get(a, (size_t)l);
        char what[300];
        snprintf(what, sizeof what, "%s: the manifest's kv_cache.%s[%d]", path, key, (int)l);
        CHECK(json_is_number(x), ANVIL_ERR_FORMAT, "%s is not a number", what);
        const float s = (float)json_number_value(x);
        TRY(anvil_kv_scale_check(s, what));
        scales[2 * l + at] = s;
    }
    return ANVIL_OK;
}

anvil_status anvil_manifest_read_kv(const anvil_engine_file *f, int32_t n_layers, float *scales, int *found,
                                    int *fp8)
{
    *found = *fp8 = 0;
    const char *path = anvil_engine_file_path(f);
    const json_t *kv = json_object_get(anvil_engine_file_manifest(f), "kv_cache");
    if (kv == NULL)
        return ANVIL_OK;
    CHECK(json_is_object(kv), ANVIL_ERR_FORMAT, "%s: the manifest's kv_cache must be an object", path);
    const char *dt = json_string_value(json_object_get(kv, "dtype"));
    const char *src = json_string_value(json_object_get(kv, "scales"));
    CHECK(dt && (strcmp(dt, "fp8") == 0 || strcmp(dt, "auto") == 0), ANVIL_ERR_FORMAT,
          "%s: the manifest's kv_cache.dtype must be \"fp8\" or \"auto\"", path);
    CHECK(src != NULL, ANVIL_ERR_FORMAT, "%s: the manifest's kv_cache.scales must be a string", path);
    *fp8 = strcmp(dt, "fp8") == 0;
    if (strcmp(src, "none") == 0)
        return ANVIL_OK;
    TRY(read_array(kv, "k_scale", path, n_layers, scales, 0));
    TRY(read_array(kv, "v_scale", path, n_layers, scales, 1));
    *found = 1;
    return ANVIL_OK;
}
