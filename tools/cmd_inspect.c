/*
 * anvil inspect: what an engine file holds (docs/engine.md): every weight
 * (kind, shape, bytes, quantization), totals, the build options and provenance, the
 * network and its fusion plan, the files it carries, and the memory plan
 * for a batch and KV cache size; --verify reads every byte (checksums,
 * NaN/inf); --json for programs.
 *
 * The engine container and the runtime's size planner have no public API
 * yet: they come through the one internal header, src/anvil_internal.h.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "anvil/model_config.h"
#include "anvil/runtime.h"
#include "anvil_internal.h" /* internal: not part of the API */
#include "cli_env.h"
#include "cli_error.h"
#include "cli_flags.h"
#include "commands.h"
#include "exec_cli.h"

#define TOOL "anvil inspect"

static void usage(FILE *out)
{
    fprintf(out, "usage: anvil inspect FILE [options]\n\n"
                 "Shows what an engine file (anvil build) holds: its weights, totals, build options and\n"
                 "provenance, network and fusion plan, the model files it carries, and the memory a\n"
                 "runtime of it takes for a given batch and KV cache.\n\n"
                 "      --json                  one JSON object instead of tables\n"
                 "      --verify                read every byte: each weight's checksum, and no NaN or\n"
                 "                              infinity (exit 1 naming the first damaged weight)\n"
                 "      --weights               list every weight (default: the first 8 and the totals)\n"
                 "      --max-batch-size N      for the memory plan (default 64)\n"
                 "      --max-num-tokens N      tokens per step, for the memory plan (default 512)\n"
                 "      --max-seq-len N         context, for the memory plan (default: the model's)\n"
                 "      --kv-cache-tokens N     KV cache size, for the memory plan (default: one context)\n"
                 "      --compute-dtype DT      f32 (default), bf16 or f16: the activations' dtype\n"
                 "  -h, --help                  this help\n");
}

typedef struct inspect_args {
    const char *path;
    int json, verify, all_weights;
    anvil_runtime_options rt;
    anvil_dtype act;
} inspect_args;

/* Whether t is named as the "zeros" of a quantized tensor. */
static int is_zeros_of_some(const anvil_engine_file *f, const anvil_engine_tensor *t)
{
    for (int64_t i = 0; i < anvil_engine_file_count(f); i++) {
        const char *z = json_string_value(json_object_get(json_object_get(anvil_engine_file_tensor(f, i)->entry, "scales"), "zeros"));
        if (z != NULL && strcmp(z, t->name) == 0)
            return 1;
    }
    return 0;
}

static int64_t first_above(const char *p, size_t n, unsigned max)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] > max)
            return (int64_t)i;
    return -1;
}

static int64_t first_fp8_nan(const char *p, size_t n) /* e4m3fn's NaN: S.1111.111 */
{
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)p[i] & 0x7f) == 0x7f)
            return (int64_t)i;
    return -1;
}

/* --verify: checksums, then a scan of every weight (and scales) for NaN
 * and infinity, of fp8 weights for NaN codes, of int4 zero points for
 * values above 15. */
static anvil_status verify(const anvil_engine_file *f, json_t *out)
{
    TRY(anvil_engine_file_verify(f, NULL, NULL));
    const size_t chunk = (size_t)16 << 20;
    char *buf = malloc(chunk);
    CHECK(buf != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = ANVIL_OK;
    for (int64_t i = 0; i < anvil_engine_file_count(f) && st == ANVIL_OK; i++) {
        const anvil_engine_tensor *t = anvil_engine_file_tensor(f, i);
        anvil_dtype dt;
        if (anvil_engine_kind_to_dtype(t->kind, &dt) != 0 || anvil_dtype_size(dt) == 0)
            continue; /* int4 codes are all valid */
        const size_t es = anvil_dtype_size(dt);
        const int zeros = is_zeros_of_some(f, t); /* int4 zero points: 0..15 */
        for (size_t off = 0; off < t->bytes && st == ANVIL_OK; off += chunk) {
            const size_t len = t->bytes - off < chunk ? t->bytes - off : chunk;
            st = anvil_engine_file_read(f, i, off, buf, len);
            const int64_t bad = st != ANVIL_OK ? -1
                                : zeros        ? first_above(buf, len, 15)
                                : dt == ANVIL_DTYPE_F8_E4M3 ? first_fp8_nan(buf, len)
                                               : anvil_find_nonfinite(dt, buf, (int64_t)(len / es));
            if (bad >= 0)
                st = ANVIL_FAIL(ANVIL_ERR_FORMAT, "tensor '%s' holds %s at element %lld", t->name,
                                zeros ? "a zero point above 15" : "a NaN or infinity", (long long)(off / es) + bad);
        }
    }
    free(buf);
    if (st == ANVIL_OK)
        json_object_set_new(out, "verified", json_true());
    return st;
}

static json_t *weights_json(const anvil_engine_file *f, size_t *total)
{
    json_t *a = json_array();
    *total = 0;
    for (int64_t i = 0; i < anvil_engine_file_count(f); i++) {
        const anvil_engine_tensor *t = anvil_engine_file_tensor(f, i);
        json_t *o = json_object(), *shape = json_array();
        for (int d = 0; d < t->n_dims; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_object_set_new(o, "name", json_string(t->name));
        json_object_set_new(o, "kind", json_string(anvil_engine_kind_name(t->kind)));
        json_object_set_new(o, "shape", shape);
        json_object_set_new(o, "bytes", json_integer((json_int_t)t->bytes));
        const json_t *sc = json_object_get(t->entry, "scales");
        if (json_is_object(sc)) { /* the table's "scales" object, with the scheme its kind implies */
            json_t *q = json_deep_copy(sc);
            json_object_set_new(q, "scheme", json_string(t->kind == ANVIL_ENGINE_KIND_FP8_E4M3 ? "fp8"
                                                         : t->kind == ANVIL_ENGINE_KIND_INT8   ? "int8"
                                                         : t->kind == ANVIL_ENGINE_KIND_INT4   ? "int4"
                                                                                               : "?"));
            json_object_set_new(o, "quantization", q);
        }
        json_array_append_new(a, o);
        *total += t->bytes;
    }
    return a;
}

/* "quantization": the build's record (scheme, method, group) and how many
 * weight tensors are quantized, of how many (companions not counted). */
static json_t *quant_summary(const json_t *manifest, const json_t *weights)
{
    const json_t *bq = json_object_get(json_object_get(manifest, "build"), "quantization");
    json_t *o = json_is_object(bq) ? json_deep_copy(bq) : json_object();
    json_t *companions = json_object(); /* names of the scales, zeros and perm tensors */
    size_t i;
    const json_t *e;
    json_array_foreach(weights, i, e)
    {
        const json_t *q = json_object_get(e, "quantization");
        static const char *const keys[] = {"tensor", "zeros", "perm"};
        for (int k = 0; q != NULL && k < 3; k++)
            if (json_is_string(json_object_get(q, keys[k])))
                json_object_set_new(companions, json_string_value(json_object_get(q, keys[k])), json_true());
    }
    json_int_t n = 0, of = 0;
    json_array_foreach(weights, i, e)
    {
        if (json_object_get(companions, json_string_value(json_object_get(e, "name"))) != NULL)
            continue;
        of++;
        n += json_object_get(e, "quantization") != NULL;
    }
    json_object_set_new(o, "quantized_tensors", json_integer(n));
    json_object_set_new(o, "weight_tensors", json_integer(of));
    json_object_set_new(o, "companion_tensors", json_integer((json_int_t)json_object_size(companions)));
    json_decref(companions);
    return o;
}

/* The memory a runtime of this engine takes with the given options. */
static json_t *memory_json(const anvil_model_config *cfg, const inspect_args *a, size_t weight_bytes)
{
    anvil_runtime_sizes sz;
    json_t *o = json_object();
    if (anvil_runtime_plan_sizes(cfg, &a->rt, a->act, 0, &sz) != ANVIL_OK) {
        json_object_set_new(o, "error", json_string(anvil_last_error()));
        return o;
    }
    json_object_set_new(o, "compute_dtype", json_string(anvil_dtype_name(a->act)));
    json_object_set_new(o, "max_batch_size", json_integer(a->rt.max_batch_size));
    json_object_set_new(o, "max_num_tokens", json_integer(a->rt.max_num_tokens));
    json_object_set_new(o, "max_seq_len", json_integer(sz.max_seq_len));
    json_object_set_new(o, "kv_cache_tokens", json_integer(sz.kv_cache_tokens));
    json_object_set_new(o, "weights_bytes", json_integer((json_int_t)weight_bytes));
    json_object_set_new(o, "kv_cache_bytes", json_integer((json_int_t)sz.kv_bytes));
    json_object_set_new(o, "kv_bytes_per_token", json_integer((json_int_t)sz.kv_bytes_per_token));
    json_object_set_new(o, "activation_bytes", json_integer((json_int_t)sz.act_bytes));
    json_object_set_new(o, "step_bytes", json_integer((json_int_t)sz.step_bytes));
    json_object_set_new(o, "total_bytes",
                        json_integer((json_int_t)(weight_bytes + sz.kv_bytes + sz.act_bytes + sz.step_bytes)));
    return o;
}

/* Counts of ops by kind and of fused groups by kind. */
static json_t *network_json(const json_t *manifest)
{
    json_t *o = json_object(), *ops = json_object(), *groups = json_object();
    const json_t *list = json_object_get(json_object_get(manifest, "network"), "ops");
    size_t i;
    const json_t *e;
    json_array_foreach(list, i, e)
    {
        const char *k = json_string_value(json_object_get(e, "kind"));
        json_t *c = json_object_get(ops, k ? k : "?");
        json_object_set_new(ops, k ? k : "?", json_integer(c ? json_integer_value(c) + 1 : 1));
    }
    const json_t *fusion = json_object_get(json_object_get(manifest, "plan"), "fusion");
    json_array_foreach(fusion, i, e)
    {
        const char *k = json_string_value(json_object_get(e, "kind"));
        json_t *c = json_object_get(groups, k ? k : "?");
        json_object_set_new(groups, k ? k : "?", json_integer(c ? json_integer_value(c) + 1 : 1));
    }
    json_object_set_new(o, "ops", ops);
    json_object_set_new(o, "n_ops", json_integer((json_int_t)json_array_size(list)));
    json_object_set_new(o, "fused_groups", groups);
    return o;
}

/* The manifest's "kv_cache" (builder/kv_manifest.h): what kv_cache_dtype
 * auto runs, and each layer's k_scale / v_scale (the first 8 layers
 * unless all). */
static void print_kv(const json_t *kv, int all)
{
    if (!json_is_object(kv))
        return;
    const char *dt = json_string_value(json_object_get(kv, "dtype"));
    const char *src = json_string_value(json_object_get(kv, "scales"));
    printf("kv cache    %s under --kv-cache-dtype auto; scales: %s\n",
           dt && strcmp(dt, "fp8") == 0 ? "fp8" : "not fp8", src ? src : "?");
    const json_t *ks = json_object_get(kv, "k_scale"), *vs = json_object_get(kv, "v_scale");
    const size_t n = json_array_size(ks);
    for (size_t l = 0; l < n; l++) {
        if (!all && l >= 8) {
            printf("  ... (%zu more layers: --weights lists them all)\n", n - 8);
            break;
        }
        printf("  layer %-4zu k_scale %-12.6g v_scale %.6g\n", l, json_number_value(json_array_get(ks, l)),
               json_number_value(json_array_get(vs, l)));
    }
}

static void print_human(const json_t *r, int all_weights)
{
    const json_t *m = json_object_get(r, "model"), *b = json_object_get(r, "build");
    printf("engine      %s (format %s, built by anvil %s)\n", json_string_value(json_object_get(r, "path")),
           json_string_value(json_object_get(r, "format_version")), json_string_value(json_object_get(r, "anvil_version")));
    printf("model       %s (%s)\n", json_string_value(json_object_get(m, "architecture")),
           json_string_value(json_object_get(m, "model_type")));
    printf("built       %s from %s, dtype %s, fusion %s%s\n", json_string_value(json_object_get(b, "created")),
           json_string_value(json_object_get(b, "source")), json_string_value(json_object_get(b, "dtype")),
           json_is_true(json_object_get(b, "fusion")) ? "on" : "off",
           json_is_true(json_object_get(b, "random_weights")) ? ", random weights" : "");
    const json_t *refit = json_object_get(b, "refit"); /* anvil refit's record */
    if (json_is_object(refit))
        printf("refit       %s with the weights of %s\n", json_string_value(json_object_get(refit, "created")),
               json_string_value(json_object_get(refit, "source")));
    const json_t *files = json_object_get(r, "files");
    printf("files      ");
    size_t i;
    const json_t *e;
    json_array_foreach(files, i, e) printf(" %s", json_string_value(e));
    printf("\n");
    const json_t *net = json_object_get(r, "network");
    printf("network     %lld ops;", (long long)json_integer_value(json_object_get(net, "n_ops")));
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)json_object_get(net, "ops"), k, v) printf(" %s %lld", k, (long long)json_integer_value(v));
    printf("\nfused       ");
    json_object_foreach((json_t *)json_object_get(net, "fused_groups"), k, v)
        printf(" %s %lld", k, (long long)json_integer_value(v));
    printf("\n");
    const json_t *ws = json_object_get(r, "weights");
    printf("weights     %zu tensors, %.1f MiB\n", json_array_size(ws),
           (double)json_integer_value(json_object_get(r, "weight_bytes")) / 1048576.0);
    const json_t *qs = json_object_get(r, "quantization");
    if (json_integer_value(json_object_get(qs, "quantized_tensors")) > 0) {
        const char *scheme = json_string_value(json_object_get(qs, "scheme"));
        const char *method = json_string_value(json_object_get(qs, "method"));
        const json_int_t g = json_integer_value(json_object_get(qs, "group"));
        char grp[32] = "";
        if (g > 0)
            snprintf(grp, sizeof grp, ", group %lld", (long long)g);
        printf("quantization %s%s%s%s: %lld of %lld tensors (and %lld scales/zero-point tensors)\n",
               scheme ? scheme : "pre-quantized", method ? " " : "", method ? method : "", grp,
               (long long)json_integer_value(json_object_get(qs, "quantized_tensors")),
               (long long)json_integer_value(json_object_get(qs, "weight_tensors")),
               (long long)json_integer_value(json_object_get(qs, "companion_tensors")));
    }
    print_kv(json_object_get(r, "kv_cache"), all_weights);
    json_array_foreach(ws, i, e)
    {
        if (!all_weights && i >= 8) {
            printf("  ... (%zu more: --weights lists them all)\n", json_array_size(ws) - 8);
            break;
        }
        char shape[64] = "";
        size_t d;
        const json_t *x;
        json_array_foreach(json_object_get(e, "shape"), d, x)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", d ? ", " : "",
                     (long long)json_integer_value(x));
        char qdesc[160] = "";
        const json_t *q = json_object_get(e, "quantization");
        if (q != NULL) {
            const json_int_t g = json_integer_value(json_object_get(q, "group"));
            const char *act = json_string_value(json_object_get(q, "act"));
            char grp[32];
            snprintf(grp, sizeof grp, g > 0 ? "group %lld" : "per channel", (long long)g);
            snprintf(qdesc, sizeof qdesc, "  %s, %s%s%s%s, scales %s", json_string_value(json_object_get(q, "scheme")), grp,
                     json_object_get(q, "zeros") ? ", zero points" : "", act ? ", act " : "", act ? act : "",
                     json_string_value(json_object_get(q, "tensor")));
        }
        printf("  %-60.60s %-8s [%s] %lld bytes%s\n", json_string_value(json_object_get(e, "name")),
               json_string_value(json_object_get(e, "kind")), shape,
               (long long)json_integer_value(json_object_get(e, "bytes")), qdesc);
    }
    const json_t *mem = json_object_get(r, "memory");
    if (json_object_get(mem, "error")) {
        printf("memory      %s\n", json_string_value(json_object_get(mem, "error")));
    } else {
        printf("memory      for %lld sequences, %lld tokens a step, context %lld, %lld KV tokens, %s activations:\n",
               (long long)json_integer_value(json_object_get(mem, "max_batch_size")),
               (long long)json_integer_value(json_object_get(mem, "max_num_tokens")),
               (long long)json_integer_value(json_object_get(mem, "max_seq_len")),
               (long long)json_integer_value(json_object_get(mem, "kv_cache_tokens")),
               json_string_value(json_object_get(mem, "compute_dtype")));
        static const char *const parts[] = {"weights_bytes", "kv_cache_bytes", "activation_bytes", "step_bytes",
                                            "total_bytes"};
        for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++)
            printf("  %-18s %10.1f MiB\n", parts[p], (double)json_integer_value(json_object_get(mem, parts[p])) / 1048576.0);
    }
    if (json_is_true(json_object_get(r, "verified")))
        printf("verified    every checksum matches, no NaN or infinity\n");
}

static int parse(int argc, char **argv, inspect_args *a)
{
    enum { OPT_JSON = 256, OPT_VERIFY, OPT_WEIGHTS, OPT_BATCH, OPT_TOKENS, OPT_SEQ, OPT_KV, OPT_ACT };
    static const struct option longopts[] = {
        {"json", no_argument, 0, OPT_JSON},          {"verify", no_argument, 0, OPT_VERIFY},
        {"weights", no_argument, 0, OPT_WEIGHTS},    {"max-batch-size", required_argument, 0, OPT_BATCH},
        {"max-num-tokens", required_argument, 0, OPT_TOKENS}, {"max-seq-len", required_argument, 0, OPT_SEQ},
        {"kv-cache-tokens", required_argument, 0, OPT_KV}, {"compute-dtype", required_argument, 0, OPT_ACT},
        {"help", no_argument, 0, 'h'},               {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    anvil_runtime_options_default(&a->rt);
    cli_env_runtime_options(&a->rt);
    a->act = ANVIL_DTYPE_F32;
    optind = 1;
    int c;
    long v;
    while ((c = cli_getopt(argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case OPT_JSON: a->json = 1; break;
        case OPT_VERIFY: a->verify = 1; break;
        case OPT_WEIGHTS: a->all_weights = 1; break;
        case OPT_BATCH:
            if (exec_cli_int(optarg, "--max-batch-size", 1, 65536, &v, TOOL)) return 2;
            a->rt.max_batch_size = (int32_t)v;
            break;
        case OPT_TOKENS:
            if (exec_cli_int(optarg, "--max-num-tokens", 1, 1 << 24, &v, TOOL)) return 2;
            a->rt.max_num_tokens = (int32_t)v;
            break;
        case OPT_SEQ:
            if (exec_cli_int(optarg, "--max-seq-len", 1, 1 << 28, &v, TOOL)) return 2;
            a->rt.max_seq_len = (int32_t)v;
            break;
        case OPT_KV:
            if (exec_cli_int(optarg, "--kv-cache-tokens", 1, 1L << 40, &v, TOOL)) return 2;
            a->rt.kv_cache_tokens = v;
            break;
        case OPT_ACT:
            if (exec_cli_dtype(optarg, &a->act, TOOL)) return 2;
            if (a->act == ANVIL_DTYPE_COUNT)
                a->act = ANVIL_DTYPE_F32;
            break;
        case 'h': usage(stdout); return 0;
        default: return cli_bad_flag(TOOL, argv, "h", longopts);
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, optind >= argc ? TOOL ": which engine file? (anvil inspect FILE)\n"
                                       : TOOL ": one engine file at a time\n");
        return 2;
    }
    a->path = argv[optind];
    return -1;
}

int anvil_cmd_inspect(int argc, char **argv)
{
    inspect_args a;
    int rc = parse(argc, argv, &a);
    if (rc >= 0)
        return rc;
    if (!anvil_engine_file_is_engine(a.path)) {
        fprintf(stderr, TOOL ": %s is not an anvil engine file (build one with anvil build --model DIR --output FILE)\n",
                a.path);
        return 1;
    }
    anvil_engine_file *f = NULL;
    anvil_model_config cfg;
    json_t *r = NULL;
    rc = 1;
    if (anvil_engine_file_open(a.path, ANVIL_ST_READ, &f) != ANVIL_OK || anvil_model_config_load(a.path, &cfg) != ANVIL_OK) {
        anvil_cli_report(TOOL);
        goto done;
    }
    const json_t *man = anvil_engine_file_manifest(f);
    const anvil_engine_header *h = anvil_engine_file_header(f);
    char ver[32];
    snprintf(ver, sizeof ver, "%u.%u", h->version_major, h->version_minor);
    r = json_object();
    json_object_set_new(r, "path", json_string(a.path));
    json_object_set_new(r, "format_version", json_string(ver));
    json_object_set_new(r, "anvil_version", json_incref(json_object_get(man, "anvil_version")));
    json_object_set_new(r, "model", json_incref(json_object_get(man, "model")));
    json_object_set_new(r, "build", json_incref(json_object_get(man, "build")));
    if (json_object_get(man, "kv_cache") != NULL) /* builder/kv_manifest.h */
        json_object_set_new(r, "kv_cache", json_incref(json_object_get(man, "kv_cache")));
    json_t *files = json_array();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)json_object_get(man, "files"), k, v) json_array_append_new(files, json_string(k));
    json_object_set_new(r, "files", files);
    json_object_set_new(r, "network", network_json(man));
    size_t total = 0;
    json_object_set_new(r, "weights", weights_json(f, &total));
    json_object_set_new(r, "quantization", quant_summary(man, json_object_get(r, "weights")));
    json_object_set_new(r, "weight_bytes", json_integer((json_int_t)total));
    json_object_set_new(r, "file_bytes", json_integer((json_int_t)h->file_size));
    const char *kv_dt = json_string_value(json_object_get(json_object_get(man, "kv_cache"), "dtype"));
    if (a.rt.kv_cache_dtype == NULL && kv_dt != NULL && strcmp(kv_dt, "fp8") == 0)
        a.rt.kv_cache_dtype = "fp8"; /* what auto runs for this engine */
    json_object_set_new(r, "memory", memory_json(&cfg, &a, total));
    if (a.verify && verify(f, r) != ANVIL_OK) {
        anvil_cli_report(TOOL ": %s", a.path);
        goto done;
    }
    if (a.json) {
        char *t = json_dumps(r, JSON_INDENT(2));
        puts(t ? t : "{}");
        free(t);
    } else {
        print_human(r, a.all_weights);
    }
    rc = 0;
done:
    json_decref(r);
    anvil_engine_file_close(f);
    return rc;
}
