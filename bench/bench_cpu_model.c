/*
 * bench_cpu_model: prefill and decode speed of whole models on the CPU.
 *
 *   bench_cpu_model [--shared DIR] [--threads N] [--prompt-len N] [--decode N]
 *                   [--scratch DIR] [--models a,b,...] [--json FILE]
 *                   [--kv-cache-dtype auto|f32|bf16|f16]
 *
 * Models: stories260K and tinycode from the shared folder, and llama-1b, a
 * random-weight model of Llama-3.2-1B's shape (hidden 2048, 16 layers, 32
 * heads, 8 KV heads, intermediate 8192, vocab 128256, bf16, tied), written
 * to the scratch folder on first use (--scratch DIR; default bench-scratch/
 * beside this binary, in the build folder).
 *
 * Decode at batch 1 reads every weight once per token, so it is bounded by
 * memory bandwidth: the benchmark reports the bytes a token must read
 * (weights + KV cache) per second, next to a plain streaming read of the
 * same number of bytes on the same threads. Prefill is one step of the
 * whole prompt, the median of --prefill-reps (3) after a warm-up. RSS is the process's
 * resident memory after the decode (weights, activations, KV cache).
 * bench/cpu_vs_llamacpp.py pairs these runs with llama.cpp's.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "anvil/builder.h"
#include "anvil/runtime.h"
#include "anvil/sampling.h"
#include "bench_scratch.h"
#include "anvil_internal.h" /* internal: not part of the API */

static const char *llama_1b_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 2048,\n"
    " \"intermediate_size\": 8192, \"num_hidden_layers\": 16, \"num_attention_heads\": 32,\n"
    " \"num_key_value_heads\": 8, \"head_dim\": 64, \"vocab_size\": 128256, \"max_position_embeddings\": 131072,\n"
    " \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\",\n"
    " \"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,\n"
    " \"original_max_position_embeddings\": 8192}, \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\",\n"
    " \"bos_token_id\": 128000, \"eos_token_id\": 128001}\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct result {
    char name[64];
    double weight_gb;
    double prefill_tps;
    double decode_tps;
    double decode_ms;
    double bytes_per_token;
    double achieved_gbps;
    double stream_gbps;
    char kv_dtype[8];
    double rss_mib; /* the process's resident memory after the decode: weights, activations, KV cache */
} result;

/* VmRSS of /proc/self/status in MiB, 0 where there is none (not Linux) */
static double rss_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = 0;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            v = atof(line + 6) / 1024.0;
    if (f != NULL)
        fclose(f);
    return v;
}

static int ensure_llama_1b(const char *workdir, char *dir, size_t cap)
{
    snprintf(dir, cap, "%s/llama-1b", workdir);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/model.safetensors", dir);
    if (anvil_file_exists(probe))
        return 0;
    mkdir(dir, 0755);
    fprintf(stderr, "writing a random-weight Llama-3.2-1B-shaped model to %s ...\n", dir);
    if (anvil_write_random_model(dir, llama_1b_config, 1) != ANVIL_OK) {
        fprintf(stderr, "error: %s\n", anvil_last_error());
        return -1;
    }
    return 0;
}

static const char *kv_cache_dtype; /* --kv-cache-dtype; NULL: auto */
static int prefill_reps = 3;       /* --prefill-reps: timed prefills after the warm-up */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int bench_model(const char *name, const char *dir, int threads, int32_t prompt_len, int32_t n_decode,
                       result *r)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = threads;
    o.kv_cache_dtype = kv_cache_dtype;
    o.max_num_tokens = prompt_len;
    o.max_batch_size = 1;
    o.max_logit_rows = 1;
    o.max_seq_len = prompt_len + n_decode + 1;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK) {
        fprintf(stderr, "%s: %s\n", name, anvil_last_error());
        return -1;
    }
    const anvil_model_config *cfg = anvil_runtime_config(rt);
    const int32_t vocab = (int32_t)cfg->vocab_size, bs = anvil_runtime_kv_block_size(rt);
    const int32_t n_blocks = (o.max_seq_len + bs - 1) / bs;
    int32_t *blocks = malloc((size_t)n_blocks * 4), *ids = malloc((size_t)prompt_len * 4);
    int32_t *pos = malloc((size_t)prompt_len * 4);
    float *logits = malloc((size_t)vocab * 4);
    int rc = -1;
    if (!blocks || !ids || !pos || !logits || anvil_runtime_kv_alloc(rt, n_blocks, blocks) != ANVIL_OK)
        goto done;
    uint64_t seed = 42;
    for (int32_t i = 0; i < prompt_len; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((seed >> 33) % (uint64_t)vocab);
        pos[i] = i;
    }
    int32_t starts[2] = {0, prompt_len}, row = prompt_len - 1;
    anvil_batch b = {.n_tokens = prompt_len, .token_ids = ids, .positions = pos, .n_seqs = 1,
                     .seq_starts = starts, .block_tables = blocks, .max_blocks_per_seq = n_blocks,
                     .n_logits = 1, .logit_rows = &row};
    /* prefill: one warm-up, then the median of prefill_reps (the median,
     * not the best: paired runs against llama.cpp, whose llama-bench
     * reports a mean) */
    double times[16];
    for (int rep = 0; rep <= prefill_reps; rep++) {
        double t0 = now_s();
        if (anvil_runtime_forward(rt, &b, logits) != ANVIL_OK)
            goto fail;
        if (rep > 0)
            times[rep - 1] = now_s() - t0;
    }
    qsort(times, (size_t)prefill_reps, sizeof times[0], cmp_double);
    r->prefill_tps = prompt_len / times[prefill_reps / 2];

    /* decode: greedy, one token per step after the prompt */
    int32_t tok = anvil_argmax(logits, vocab), cur = prompt_len, one_start[2] = {0, 1}, zero = 0;
    double t0 = now_s();
    for (int32_t i = 0; i < n_decode; i++, cur++) {
        anvil_batch d = {.n_tokens = 1, .token_ids = &tok, .positions = &cur, .n_seqs = 1,
                         .seq_starts = one_start, .block_tables = blocks, .max_blocks_per_seq = n_blocks,
                         .n_logits = 1, .logit_rows = &zero};
        if (anvil_runtime_forward(rt, &d, logits) != ANVIL_OK)
            goto fail;
        tok = anvil_argmax(logits, vocab);
    }
    double dt = now_s() - t0;
    r->rss_mib = rss_mib();
    r->decode_tps = n_decode / dt;
    r->decode_ms = dt * 1e3 / n_decode;
    /* bytes a decode step must read: every weight once, plus the KV cache of
     * the context (K and V, every layer, in the cache's dtype) at its mean length */
    double mean_ctx = prompt_len + n_decode / 2.0;
    double kv = mean_ctx * (double)cfg->n_layers * 2.0 * (double)(cfg->n_kv_heads * cfg->head_dim) *
                (double)anvil_dtype_size(anvil_runtime_kv_cache_dtype(rt));
    snprintf(r->kv_dtype, sizeof r->kv_dtype, "%s", anvil_dtype_name(anvil_runtime_kv_cache_dtype(rt)));
    r->weight_gb = (double)anvil_runtime_weight_bytes(rt) / 1e9;
    r->bytes_per_token = (double)anvil_runtime_weight_bytes(rt) + kv;
    r->achieved_gbps = r->bytes_per_token * r->decode_tps / 1e9;
    r->stream_gbps = anvil_cpu_stream_read_gbps((size_t)r->bytes_per_token, threads);
    snprintf(r->name, sizeof r->name, "%s", name);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "%s: %s\n", name, anvil_last_error());
done:
    free(blocks);
    free(ids);
    free(pos);
    free(logits);
    anvil_runtime_free(rt);
    return rc;
}

int main(int argc, char **argv)
{
    const char *shared = "../shared", *scratch = NULL, *json_path = NULL;
    const char *models = "stories260K,tinycode,llama-1b";
    int threads = 0;
    int32_t prompt_len = 128, n_decode = 32;
    static const struct option opts[] = {
        {"shared", required_argument, 0, 'S'}, {"threads", required_argument, 0, 't'},
        {"prompt-len", required_argument, 0, 'p'}, {"decode", required_argument, 0, 'd'},
        {"scratch", required_argument, 0, 'w'}, {"workdir", required_argument, 0, 'w'},
        {"models", required_argument, 0, 'm'}, {"kv-cache-dtype", required_argument, 0, 'k'},
        {"prefill-reps", required_argument, 0, 'r'},
        {"json", required_argument, 0, 'j'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'S': shared = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'p': prompt_len = atoi(optarg); break;
        case 'd': n_decode = atoi(optarg); break;
        case 'w': scratch = optarg; break;
        case 'm': models = optarg; break;
        case 'k': kv_cache_dtype = optarg; break;
        case 'r': prefill_reps = atoi(optarg); break;
        case 'j': json_path = optarg; break;
        default:
            fprintf(c == 'h' ? stdout : stderr,
                    "usage: bench_cpu_model [--shared DIR] [--threads N] [--prompt-len N] [--decode N]\n"
                    "                       [--scratch DIR] [--models stories260K,tinycode,llama-1b] [--json FILE]\n"
                    "                       [--kv-cache-dtype auto|f32|bf16|f16] [--prefill-reps N (1..16)]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (threads <= 0)
        threads = anvil_cpu_count();
    if (prompt_len < 1 || n_decode < 1 || prefill_reps < 1 || prefill_reps > 16) {
        fprintf(stderr, "prompt-len and decode must be >= 1, prefill-reps in 1..16\n");
        return 2;
    }
    result res[8];
    int n_res = 0;
    char list[512];
    snprintf(list, sizeof list, "%s", models);
    for (char *save = NULL, *m = strtok_r(list, ",", &save); m && n_res < 8; m = strtok_r(NULL, ",", &save)) {
        char dir[4096];
        if (strcmp(m, "llama-1b") == 0) {
            char workdir[3072];
            if (bench_scratch_dir(scratch, workdir, sizeof workdir) != 0 || ensure_llama_1b(workdir, dir, sizeof dir) != 0)
                return 1;
        } else {
            snprintf(dir, sizeof dir, "%s/models/%s", shared, m);
        }
        if (bench_model(m, dir, threads, prompt_len, n_decode, &res[n_res]) != 0)
            return 1;
        n_res++;
    }
    printf("\nCPU, %d threads, prompt %d tokens, %d decode tokens (batch 1)\n\n", threads, prompt_len, n_decode);
    printf("| model | KV | weights GB | prefill tok/s | decode tok/s | ms/token | GB/s read | stream GB/s | of stream | RSS MiB |\n");
    printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (int i = 0; i < n_res; i++) {
        result *r = &res[i];
        printf("| %s | %s | %.4f | %.1f | %.1f | %.2f | %.2f | %.2f | %.0f%% | %.0f |\n", r->name, r->kv_dtype,
               r->weight_gb, r->prefill_tps, r->decode_tps, r->decode_ms, r->achieved_gbps, r->stream_gbps,
               100.0 * r->achieved_gbps / r->stream_gbps, r->rss_mib);
    }
    if (json_path) {
        json_t *arr = json_array();
        for (int i = 0; i < n_res; i++) {
            result *r = &res[i];
            json_array_append_new(
                arr, json_pack("{s:s, s:s, s:f, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "model", r->name,
                               "kv_cache_dtype", r->kv_dtype, "rss_mib", r->rss_mib,
                               "threads", threads, "prompt_len", prompt_len, "decode_tokens", n_decode,
                               "weight_gb", r->weight_gb, "prefill_tok_s", r->prefill_tps, "decode_tok_s",
                               r->decode_tps, "decode_ms", r->decode_ms, "bytes_per_token", r->bytes_per_token,
                               "achieved_gbps", r->achieved_gbps, "stream_gbps", r->stream_gbps));
        }
        if (json_dump_file(arr, json_path, JSON_INDENT(2)) != 0)
            fprintf(stderr, "cannot write %s\n", json_path);
        json_decref(arr);
    }
    return 0;
}
