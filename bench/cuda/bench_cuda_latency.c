/*
 * bench_cuda_latency: static-batch latency of the runtime on a CUDA GPU,
 * against the device's own ceilings measured in the same run.
 *
 *   bench_cuda_latency [--models llama-8b,llama-1b,mixtral-8x7b] [--model DIR] [--scratch DIR]
 *                      [--source engine|random] [--cases B:P:N,...] [--graphs on|off|both]
 *                      [--fusion MODE,...] [--quantize none,fp8,int8-wo,int4-wo] [--quantize-lm-head]
 *                      [--json FILE]
 *
 * A case B:P:N is a batch of B sequences with P-token prompts (random
 * ids) generating N tokens each, greedily (anvil_runtime_forward_greedy:
 * the argmax on the device, only ids come back). Prompts are prefilled in
 * steps of up to 2048 tokens; the time until every sequence has its first
 * token is the TTFT; the N - 1 decode steps of B tokens after it give the
 * time per output token (TPOT). Every case runs once to warm up (weights
 * paged in, cuBLASLt plans, step graphs recorded) with up to 4 decode
 * steps, then once measured.
 *
 * Ceilings, measured in the same run: cudaMemcpy device to device of
 * 1 GiB (bytes read + written, median of 9) and a bf16 GEMM 8192^3 through
 * the backend's matmul (cuBLASLt, random data, median of 9 batches of 5);
 * and cuBLASLt's FP8 GEMM alone (e4m3 x e4m3 -> bf16 with the per-channel
 * and per-token scales the fp8 matmul uses: anvil_cuda_gemm_fp8) at
 * 2048 x 4096 x 14336 (2048 tokens through Llama-3-8B's gate or up), the
 * ceiling of an fp8 engine's prefill (its fraction is printed against it).
 * Fractions printed:
 *   decode  bytes a step must read (weights, less the embedding table when
 *           the LM head is separate, + every sequence's K and V at its mean
 *           context over the decode steps) / TPOT, vs copy bandwidth;
 *           matmul + attention FLOPs / TPOT vs the GEMM rate;
 *   prefill 2 x matmul params x prompt tokens (LM head: one row per
 *           sequence) + causal attention FLOPs, / TTFT, vs the GEMM rate.
 * For a mixture of experts a step reads only the experts its tokens
 * select, and a token computes with its top-k only: the decode bytes count
 * of each MoE layer's E experts the expected number of distinct ones that
 * B tokens pick under uniform routing, E (1 - (1 - k/E)^B) (B = 1: k; an
 * estimate, printed as such, not the router's count; random weights route
 * about uniformly), and the FLOPs count k experts a token (+ the router).
 *
 * --quantize takes a list of schemes, each a random-weight engine of its
 * own built as `anvil build --quantize` builds it (the builder's
 * anvil_build_options.quantize; "none" the bf16 one): fp8 (W8A8, dynamic
 * per-token activations), int8-wo, int4-wo (groups of 128), run one after
 * the other in the same process, beside the same ceilings.
 * --quantize-lm-head quantizes the LM head too (anvil build
 * --quantize-lm-head; its engines are named *-lmhead.engine; --source
 * random: runtime option quantize_lm_head).
 *
 * Models: random-weight bf16 models of Llama-3-8B's shape (hidden 4096, 32
 * layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256),
 * Llama-3.2-1B's (hidden 2048, 16 layers, 32/8 heads of 64, intermediate
 * 8192, tied) and Mixtral-8x7B's (MixtralForCausalLM: hidden 4096, 32
 * layers, 32/8 heads, 8 experts of 14336, top-2, vocab 32000, rope_theta
 * 1e6; 93 GB in bf16: an H200's memory, not an H100's; about 47 GB with
 * --quantize fp8, experts included, which an H100 holds); or any model
 * folder or engine with --model. --source engine (the default for the
 * Llama shapes): random-weight engines built into the work folder on first
 * use by the builder (anvil_build_engine, random_weights; --scratch DIR,
 * default bench-scratch/ beside this binary) and loaded; --source random
 * (always for mixtral-8x7b, whose engine no disk or /dev/shm of a GPU
 * machine holds): no engine, the runtime makes the same random weights as
 * it loads them (anvil_runtime_options.random_weights, seed 0x5eed as the
 * engines'), only the config is written to the work folder. The load line
 * prints the process's peak host memory (VmHWM) so far.
 * --graphs off runs without step graphs; --pdl off without programmatic
 * dependent launch (runtime option no_pdl); on and auto (the default) with
 * it, on sm_90 and newer. --fusion takes a list of
 * modes, each run in turn: on (the default fused ops), off (every op of
 * the network separately: runtime option no_fusion), both (on,off), or on
 * plus decode fusions that are off by default (measured slower on an
 * H100, docs/performance.md), joined by +: norm-gemv (the residual add +
 * RMSNorm in the GEMVs' prologue: runtime option norm_gemv),
 * combine-in-kernel (the split-K decode attention's combine inside the
 * decode kernel: runtime option attn_combine_in_kernel). E.g. --fusion
 * on,norm-gemv+combine-in-kernel. ANVIL_CUDA_FP8_UNSHARED=1 in the
 * environment: fp8 engines' prefill with each matmul quantizing its own
 * input (runtime option cuda_fp8_unshared: the A/B of the norm's shared
 * codes, docs/cli.md).
 */
#include <cuda_runtime_api.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../bench_scratch.h"
#include "anvil/model_config.h"
#include "anvil/network.h"
#include "anvil/builder.h"
#include "anvil/runtime.h"
#include "anvil_internal.h" /* internal: not part of the API */
#include "backend/cuda/cuda_internal.h" /* anvil_cuda_gemm_fp8, for the FP8 ceiling */

static const char *llama_8b_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 4096,\n"
    " \"intermediate_size\": 14336, \"num_hidden_layers\": 32, \"num_attention_heads\": 32,\n"
    " \"num_key_value_heads\": 8, \"head_dim\": 128, \"vocab_size\": 128256, \"max_position_embeddings\": 8192,\n"
    " \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0, \"tie_word_embeddings\": false,\n"
    " \"torch_dtype\": \"bfloat16\", \"bos_token_id\": 128000, \"eos_token_id\": 128001}\n";

static const char *llama_1b_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 2048,\n"
    " \"intermediate_size\": 8192, \"num_hidden_layers\": 16, \"num_attention_heads\": 32,\n"
    " \"num_key_value_heads\": 8, \"head_dim\": 64, \"vocab_size\": 128256, \"max_position_embeddings\": 131072,\n"
    " \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\",\n"
    " \"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,\n"
    " \"original_max_position_embeddings\": 8192}, \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\",\n"
    " \"bos_token_id\": 128000, \"eos_token_id\": 128001}\n";

/* 93 GB of bf16 weights: loaded from the random source (--source random),
 * never an engine (docs/engine.md "Random weights without a file"). */
static const char *mixtral_8x7b_config =
    "{\"architectures\": [\"MixtralForCausalLM\"], \"model_type\": \"mixtral\", \"hidden_size\": 4096,\n"
    " \"intermediate_size\": 14336, \"num_hidden_layers\": 32, \"num_attention_heads\": 32,\n"
    " \"num_key_value_heads\": 8, \"num_local_experts\": 8, \"num_experts_per_tok\": 2, \"vocab_size\": 32000,\n"
    " \"max_position_embeddings\": 32768, \"rms_norm_eps\": 1e-05, \"rope_theta\": 1000000.0,\n"
    " \"sliding_window\": null, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\",\n"
    " \"bos_token_id\": 1, \"eos_token_id\": 2}\n";

#define PREFILL_CHUNK 2048
#define MAX_CASES 16

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------ random model */

/* The config of a named shape as workdir/NAME-config.json (path). */
static int write_config(const char *workdir, const char *name, const char *config, char *path, size_t cap)
{
    mkdir(workdir, 0755);
    snprintf(path, cap, "%s/%s-config.json", workdir, name);
    FILE *f = fopen(path, "wb");
    const int ok = f != NULL && fputs(config, f) >= 0;
    if (f == NULL || fclose(f) != 0 || !ok) {
        fprintf(stderr, "error: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

/* The process's peak resident memory (VmHWM) in bytes; 0 if unknown. */
static double peak_host_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f != NULL && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = strtod(line + 6, NULL);
    if (f != NULL)
        fclose(f);
    return kb * 1024.0;
}

/* A random-weight engine of the config (the builder's, as `anvil build
 * --config FILE --random-weights` makes it), written once into workdir
 * (--scratch DIR; default bench-scratch/ beside this binary). */
static int ensure_model(const char *workdir, const char *name, const char *config, anvil_quantize quant,
                        int lm_head, char *path, size_t cap)
{
    lm_head = lm_head && quant != ANVIL_QUANTIZE_NONE;
    if (quant == ANVIL_QUANTIZE_NONE)
        snprintf(path, cap, "%s/%s.engine", workdir, name);
    else
        snprintf(path, cap, "%s/%s-%s%s.engine", workdir, name, anvil_quantize_name(quant), lm_head ? "-lmhead" : "");
    if (anvil_file_exists(path))
        return 0;
    char cfg_path[4200];
    if (write_config(workdir, name, config, cfg_path, sizeof cfg_path) != 0)
        return -1;
    fprintf(stderr, "building a random-weight %s-shaped engine %s ...\n", name, path);
    double t0 = now_s();
    anvil_build_options bo;
    anvil_build_options_default(&bo);
    bo.random_weights = 1;
    bo.seed = 0x5eed;
    bo.quantize = quant;
    bo.quantize_lm_head = lm_head;
    if (anvil_build_engine(cfg_path, path, &bo) != ANVIL_OK) {
        fprintf(stderr, "error: %s\n", anvil_last_error());
        return -1;
    }
    fprintf(stderr, "  built in %.1f s\n", now_s() - t0);
    return 0;
}

/* ------------------------------------------------------------ ceilings */

/* cuBLASLt's FP8 GEMM alone at T x K x N (random codes, unit scales), as
 * the fp8 matmul calls it; 0 when this GPU has none. */
static double fp8_gemm_tflops(anvil_backend *be, int64_t T, int64_t K, int64_t N)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    const size_t xb = (size_t)(T * K), wb = (size_t)(N * K);
    void *x = NULL, *w = NULL, *o = NULL, *sx = NULL, *sw = NULL;
    unsigned char *h = malloc(wb > xb ? wb : xb);
    float *ones = malloc((size_t)(N > T ? N : T) * sizeof(float));
    double tf = 0, t[9];
    if (h == NULL || ones == NULL || be->ops->alloc(be, xb, &x) || be->ops->alloc(be, wb, &w) ||
        be->ops->alloc(be, (size_t)(T * N) * 2, &o) || be->ops->alloc(be, (size_t)T * 4, &sx) ||
        be->ops->alloc(be, (size_t)N * 4, &sw))
        goto done;
    uint64_t s = 777;
    for (size_t i = 0; i < (wb > xb ? wb : xb); i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (unsigned char)((s >> 56) & 0x77); /* finite e4m3 codes of either sign, below 2^8 */
    }
    for (int64_t i = 0; i < (N > T ? N : T); i++)
        ones[i] = 1.0f;
    if (be->ops->upload(be, x, h, xb) || be->ops->upload(be, w, h, wb) ||
        be->ops->upload(be, sx, ones, (size_t)T * 4) || be->ops->upload(be, sw, ones, (size_t)N * 4))
        goto done;
    if (anvil_cuda_gemm_fp8(cb, x, sx, w, sw, NULL, ANVIL_DTYPE_F32, o, ANVIL_DTYPE_BF16, T, K, N) != ANVIL_OK ||
        be->ops->synchronize(be))
        goto done;
    for (int r = 0; r < 9; r++) {
        double t0 = now_s();
        for (int k = 0; k < 5; k++)
            if (anvil_cuda_gemm_fp8(cb, x, sx, w, sw, NULL, ANVIL_DTYPE_F32, o, ANVIL_DTYPE_BF16, T, K, N))
                goto done;
        if (be->ops->synchronize(be))
            goto done;
        t[r] = (now_s() - t0) / 5;
    }
    qsort(t, 9, sizeof t[0], cmp_double);
    tf = 2.0 * (double)T * (double)K * (double)N / t[4] / 1e12;
done:
    if (tf == 0)
        fprintf(stderr, "fp8 GEMM ceiling: none (%s)\n", anvil_last_error());
    free(h);
    free(ones);
    be->ops->free(be, x);
    be->ops->free(be, w);
    be->ops->free(be, o);
    be->ops->free(be, sx);
    be->ops->free(be, sw);
    return tf;
}

static int measure_ceilings(double *copy_gbs, double *gemm_tflops, double *fp8_tflops, char *device, size_t cap)
{
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess)
        return -1;
    snprintf(device, cap, "%.200s (%d SMs, %.0f GiB)", prop.name, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / 1073741824.0);
    /* copy: 1 GiB device to device, CUDA events */
    const size_t bytes = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess)
        return -1;
    cudaMemset(a, 1, bytes);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    double t[9];
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    for (int r = 0; r < 9; r++) {
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        t[r] = ms * 1e-3;
    }
    qsort(t, 9, sizeof t[0], cmp_double);
    *copy_gbs = 2.0 * (double)bytes / t[4] / 1e9;
    cudaFree(a);
    cudaFree(b);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (cudaGetLastError() != cudaSuccess)
        return -1;

    /* GEMM: the backend's matmul (cuBLASLt) on random bf16 data */
    anvil_backend *be = NULL;
    if (anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &be) != ANVIL_OK)
        return -1;
    const int64_t n = 8192;
    const size_t mb = (size_t)(n * n) * 2;
    void *x = NULL, *w = NULL, *o = NULL;
    uint16_t *h = malloc(mb);
    int rc = -1;
    if (h == NULL || be->ops->alloc(be, mb, &x) || be->ops->alloc(be, mb, &w) || be->ops->alloc(be, mb, &o))
        goto done;
    uint64_t s = 12345;
    for (int64_t i = 0; i < n * n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        float v = (float)((double)(s >> 40) * 0x1.0p-24 * 2.0 - 1.0);
        uint32_t u;
        memcpy(&u, &v, 4);
        h[i] = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
    }
    if (be->ops->upload(be, x, h, mb) || be->ops->upload(be, w, h, mb))
        goto done;
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_BF16, n, n, x), tw = anvil_tensor_2d(ANVIL_DTYPE_BF16, n, n, w);
    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_BF16, n, n, o);
    if (be->ops->matmul(be, &tx, &tw, NULL, &to) || be->ops->synchronize(be))
        goto done;
    for (int r = 0; r < 9; r++) {
        double t0 = now_s();
        for (int k = 0; k < 5; k++)
            if (be->ops->matmul(be, &tx, &tw, NULL, &to))
                goto done;
        if (be->ops->synchronize(be))
            goto done;
        t[r] = (now_s() - t0) / 5;
    }
    qsort(t, 9, sizeof t[0], cmp_double);
    *gemm_tflops = 2.0 * (double)n * n * n / t[4] / 1e12;
    *fp8_tflops = fp8_gemm_tflops(be, 2048, 4096, 14336);
    rc = 0;
done:
    if (rc != 0)
        fprintf(stderr, "ceilings: %s\n", anvil_last_error());
    free(h);
    be->ops->free(be, x);
    be->ops->free(be, w);
    be->ops->free(be, o);
    anvil_backend_free(be);
    return rc;
}

/* ------------------------------------------------------------ cases */

typedef struct bench_case {
    int32_t batch, input, output;
} bench_case;

typedef struct case_result {
    double ttft_s, tpot_s, tok_s;
    double decode_bytes, decode_flops, prefill_flops;
    double experts_read; /* MoE: the expected distinct experts a decode step reads per layer (0: dense) */
} case_result;

/* What the fractions count of a model's matmuls. */
typedef struct shape_counts {
    double body;          /* params a token computes with, less the LM head (MoE: its top-k experts + router) */
    double head;          /* the LM head's */
    double expert_params; /* every routed expert's, over the MoE layers; 0: dense */
    int32_t n_experts, top_k;
} shape_counts;

/* Whether layer l's MLP is the experts (src/models/moe.c's rule). */
static int moe_layer(const anvil_model_config *c, int64_t l)
{
    if (c->n_experts <= 0 || c->decoder_sparse_step <= 0)
        return 0;
    const int dense = (int)((c->mlp_only_layers[l / 64] >> (l % 64)) & 1);
    return !dense && (l + 1) % c->decoder_sparse_step == 0;
}

static void count_params(const anvil_model_config *c, shape_counts *sc)
{
    const double h = (double)c->hidden_size, qd = (double)(c->n_heads * c->head_dim),
                 kvd = (double)(c->n_kv_heads * c->head_dim), in = (double)c->intermediate_size;
    const double attn = h * qd + 2 * h * kvd + qd * h;
    memset(sc, 0, sizeof *sc);
    sc->n_experts = c->n_experts;
    sc->top_k = c->n_experts_per_tok;
    for (int64_t l = 0; l < c->n_layers; l++) {
        if (!moe_layer(c, l)) {
            sc->body += attn + 3 * h * in;
            continue;
        }
        const double ie = c->moe_intermediate_size > 0 ? (double)c->moe_intermediate_size : in;
        const double is = (double)c->shared_expert_intermediate_size;
        sc->body += attn + (double)c->n_experts_per_tok * 3 * h * ie + h * (double)c->n_experts +
                    (is > 0 ? 3 * h * is + h : 0);
        sc->expert_params += (double)c->n_experts * 3 * h * ie;
    }
    sc->head = (double)c->vocab_size * h;
}

/* Bytes a routed expert's weight element takes as stored: bf16 2; fp8 and
 * int8 1 (a scale a row of K elements, below 0.1%, left out); int4 half
 * a byte, + an f32 scale and a u8 zero point a group of 128. */
static double expert_elem_bytes(anvil_quantize q)
{
    return q == ANVIL_QUANTIZE_NONE ? 2.0 : q == ANVIL_QUANTIZE_INT4_WO ? 0.5 + 5.0 / 128 : 1.0;
}

/* The expected distinct experts of E that B tokens pick, k distinct each,
 * under uniform routing: E (1 - (1 - k/E)^B). */
static double expected_experts(int32_t E, int32_t k, int32_t B)
{
    return E > 0 ? (double)E * (1.0 - pow(1.0 - (double)k / (double)E, (double)B)) : 0;
}

/* Runs case k: prefill then n_decode decode steps; *res when measured
 * (quant: the routed experts' storage, for their bytes). */
static int run_case(anvil_runtime *rt, const bench_case *bc, int32_t n_decode, anvil_quantize quant,
                    case_result *res)
{
    const anvil_model_config *cfg = anvil_runtime_config(rt);
    const int32_t B = bc->batch, P = bc->input, bs = anvil_runtime_kv_block_size(rt);
    const int32_t MB = (P + bc->output + bs - 1) / bs;
    int32_t *tables = malloc((size_t)B * MB * sizeof *tables);
    int32_t *tok = malloc((size_t)PREFILL_CHUNK * sizeof *tok), *pos = malloc((size_t)PREFILL_CHUNK * sizeof *pos);
    int32_t *starts = malloc((size_t)(B + 1) * sizeof *starts), *rows = malloc((size_t)B * sizeof *rows);
    int32_t *stab = malloc((size_t)B * MB * sizeof *stab), *ids = malloc((size_t)B * sizeof *ids);
    int32_t *cur = malloc((size_t)B * sizeof *cur);
    int rc = -1, have_blocks = 0;
    if (!tables || !tok || !pos || !starts || !rows || !stab || !ids || !cur) {
        fprintf(stderr, "out of memory\n");
        goto done;
    }
    if (anvil_runtime_kv_alloc(rt, B * MB, tables) != ANVIL_OK)
        goto fail;
    have_blocks = 1;
    uint64_t rng = 77;
    /* prefill: the prompts back to back, cut into steps of up to PREFILL_CHUNK tokens */
    double t0 = now_s();
    int32_t seq = 0, off = 0;
    while (seq < B) {
        int32_t T = 0, S = 0, L = 0;
        while (seq < B && T < PREFILL_CHUNK) {
            const int32_t n = P - off < PREFILL_CHUNK - T ? P - off : PREFILL_CHUNK - T;
            starts[S] = T;
            memcpy(stab + (size_t)S * MB, tables + (size_t)seq * MB, (size_t)MB * sizeof *stab);
            for (int32_t j = 0; j < n; j++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                tok[T + j] = (int32_t)((rng >> 33) % (uint64_t)cfg->vocab_size);
                pos[T + j] = off + j;
            }
            T += n;
            S++;
            off += n;
            if (off == P) {
                rows[L++] = T - 1;
                seq++;
                off = 0;
            }
        }
        starts[S] = T;
        anvil_batch b = {.n_tokens = T, .token_ids = tok, .positions = pos, .n_seqs = S, .seq_starts = starts,
                         .block_tables = stab, .max_blocks_per_seq = MB, .n_logits = L, .logit_rows = rows};
        if (anvil_runtime_forward_greedy(rt, &b, ids) != ANVIL_OK)
            goto fail;
        const int32_t first = seq - L; /* the sequences finished in this step */
        for (int32_t i = 0; i < L; i++)
            cur[first + i] = ids[i];
    }
    const double ttft = now_s() - t0;
    /* decode: all B sequences, one token each */
    for (int32_t s = 0; s < B; s++) {
        starts[s] = s;
        rows[s] = s;
    }
    starts[B] = B;
    double t1 = now_s();
    for (int32_t it = 0; it < n_decode; it++) {
        for (int32_t s = 0; s < B; s++)
            pos[s] = P + it;
        anvil_batch b = {.n_tokens = B, .token_ids = cur, .positions = pos, .n_seqs = B, .seq_starts = starts,
                         .block_tables = tables, .max_blocks_per_seq = MB, .n_logits = B, .logit_rows = rows};
        if (anvil_runtime_forward_greedy(rt, &b, ids) != ANVIL_OK)
            goto fail;
        memcpy(cur, ids, (size_t)B * sizeof *cur);
    }
    const double tdec = now_s() - t1;
    if (res) {
        shape_counts sc;
        count_params(cfg, &sc);
        const double body = sc.body, head = sc.head;
        const double kv_row = 2.0 * (double)(cfg->n_kv_heads * cfg->head_dim) * 2 * (double)cfg->n_layers;
        const double mean_ctx = P + 1 + (n_decode - 1) / 2.0;
        const double attn_per_key = 4.0 * (double)(cfg->n_heads * cfg->head_dim) * (double)cfg->n_layers;
        const double embed = (double)cfg->vocab_size * (double)cfg->hidden_size * 2;
        res->ttft_s = ttft;
        res->tpot_s = n_decode > 0 ? tdec / n_decode : 0;
        res->tok_s = (double)B * (n_decode + 1) / (ttft + tdec);
        /* MoE: the experts no token of the step picked stay unread (expected, uniform routing) */
        res->experts_read = expected_experts(sc.n_experts, sc.top_k, B);
        const double unread = sc.n_experts > 0 ? sc.expert_params * expert_elem_bytes(quant) *
                                                     (1.0 - res->experts_read / (double)sc.n_experts)
                                               : 0;
        res->decode_bytes = (double)anvil_runtime_weight_bytes(rt) - (cfg->tie_word_embeddings ? 0 : embed) - unread +
                            (double)B * mean_ctx * kv_row;
        res->decode_flops = (double)B * (2 * (body + head) + attn_per_key * mean_ctx);
        res->prefill_flops = (double)B * (2 * body * P + 2 * head + attn_per_key * (double)P * (P + 1) / 2);
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "case %d:%d:%d: %s\n", B, P, bc->output, anvil_last_error());
done:
    if (have_blocks)
        anvil_runtime_kv_release(rt, B * MB, tables);
    free(tables);
    free(tok);
    free(pos);
    free(starts);
    free(rows);
    free(stab);
    free(ids);
    free(cur);
    return rc;
}

static int parse_cases(const char *s, bench_case *cs, int *n)
{
    *n = 0;
    const char *p = s;
    while (*p && *n < MAX_CASES) {
        int b, i, o, used = 0;
        if (sscanf(p, "%d:%d:%d%n", &b, &i, &o, &used) != 3 || b < 1 || i < 1 || o < 1)
            return -1;
        cs[(*n)++] = (bench_case){b, i, o};
        p += used;
        if (*p == ',')
            p++;
        else if (*p)
            return -1;
    }
    return *n > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *models = "llama-8b,llama-1b", *model_dir = NULL, *scratch = NULL;
    const char *cases_s = "1:512:64,1:2048:1,64:512:32,256:512:32", *json_path = NULL, *graphs = "on";
    const char *fusion = "on", *quant_s = "none", *source = NULL;
    int no_pdl = 0, force_pdl = 0, q_lm_head = 0;
    static const struct option longopts[] = {
        {"models", required_argument, 0, 'M'}, {"model", required_argument, 0, 'd'},
        {"scratch", required_argument, 0, 'w'}, {"workdir", required_argument, 0, 'w'},
        {"cases", required_argument, 0, 'c'},
        {"graphs", required_argument, 0, 'g'}, {"json", required_argument, 0, 'j'},
        {"fusion", required_argument, 0, 'f'}, {"pdl", required_argument, 0, 'p'},
        {"quantize", required_argument, 0, 'q'}, {"quantize-lm-head", no_argument, 0, 'L'},
        {"source", required_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'M': models = optarg; break;
        case 'd': model_dir = optarg; break;
        case 'w': scratch = optarg; break;
        case 'c': cases_s = optarg; break;
        case 'g': graphs = optarg; break;
        case 'f': fusion = optarg; break;
        case 'j': json_path = optarg; break;
        case 'q': quant_s = optarg; break;
        case 'L': q_lm_head = 1; break;
        case 's':
            if (strcmp(optarg, "engine") != 0 && strcmp(optarg, "random") != 0) {
                fprintf(stderr, "--source engine or random\n");
                return 2;
            }
            source = optarg;
            break;
        case 'p':
            if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0 && strcmp(optarg, "auto") != 0) {
                fprintf(stderr, "--pdl on, off or auto\n");
                return 2;
            }
            no_pdl = strcmp(optarg, "off") == 0;
            force_pdl = strcmp(optarg, "on") == 0;
            break;
        default:
            fprintf(stderr, "usage: %s [--models llama-8b,llama-1b,mixtral-8x7b] [--model DIR] [--scratch DIR] "
                            "[--source engine|random] [--cases B:P:N,...] [--graphs on|off|both] [--fusion on,off,both,norm-gemv+combine-in-kernel] [--pdl on|off|auto] "
                            "[--quantize none,fp8,int8-wo,int4-wo] [--quantize-lm-head] [--json FILE]\n",
                    argv[0]);
            return c == 'h' ? 0 : 2;
        }
    }
    bench_case cs[MAX_CASES];
    int n_cases = 0;
    if (parse_cases(cases_s, cs, &n_cases) != 0) {
        fprintf(stderr, "bad --cases '%s' (B:P:N,...)\n", cases_s);
        return 2;
    }
    int g_modes[2], n_modes = 0;
    if (strcmp(graphs, "on") == 0 || strcmp(graphs, "both") == 0)
        g_modes[n_modes++] = 1;
    if (strcmp(graphs, "off") == 0 || strcmp(graphs, "both") == 0)
        g_modes[n_modes++] = 0;
    if (n_modes == 0) {
        fprintf(stderr, "--graphs on, off or both\n");
        return 2;
    }
    /* fusion modes: bit 0 fused ops on, bit 1 norm_gemv, bit 2 attn_combine_in_kernel */
    int f_modes[8], n_fmodes = 0;
    {
        char fl[128];
        snprintf(fl, sizeof fl, "%s", fusion);
        int bad = 0;
        for (char *sv = NULL, *m = strtok_r(fl, ",", &sv); m && !bad; m = strtok_r(NULL, ",", &sv)) {
            if (n_fmodes > 6) {
                bad = 1;
            } else if (strcmp(m, "both") == 0) {
                f_modes[n_fmodes++] = 1;
                f_modes[n_fmodes++] = 0;
            } else if (strcmp(m, "on") == 0 || strcmp(m, "off") == 0) {
                f_modes[n_fmodes++] = strcmp(m, "on") == 0;
            } else { /* on, plus some fusions: norm-gemv, combine-in-kernel, joined by + */
                int f = 1;
                for (char *sv2 = NULL, *x = strtok_r(m, "+", &sv2); x; x = strtok_r(NULL, "+", &sv2)) {
                    if (strcmp(x, "on") == 0)
                        continue; /* on+norm-gemv: the same as norm-gemv */
                    if (strcmp(x, "norm-gemv") == 0)
                        f |= 2;
                    else if (strcmp(x, "combine-in-kernel") == 0)
                        f |= 4;
                    else
                        bad = 1;
                }
                f_modes[n_fmodes++] = f;
            }
        }
        if (bad || n_fmodes == 0) {
            fprintf(stderr, "--fusion: a list of on, off, both (on,off), or on plus decode fusions: "
                            "norm-gemv, combine-in-kernel, norm-gemv+combine-in-kernel\n");
            return 2;
        }
    }

    anvil_quantize quants[ANVIL_QUANTIZE_COUNT];
    int n_quants = 0;
    {
        char ql[128];
        snprintf(ql, sizeof ql, "%s", quant_s);
        for (char *sv = NULL, *m = strtok_r(ql, ",", &sv); m; m = strtok_r(NULL, ",", &sv)) {
            if (n_quants >= ANVIL_QUANTIZE_COUNT || anvil_quantize_parse(m, &quants[n_quants]) != 0) {
                fprintf(stderr, "--quantize: a list of none, fp8, int8-wo, int4-wo\n");
                return 2;
            }
            n_quants++;
        }
        if (n_quants == 0 || (model_dir != NULL && (n_quants > 1 || quants[0] != ANVIL_QUANTIZE_NONE))) {
            fprintf(stderr, "--quantize: a list of none, fp8, int8-wo, int4-wo (named shapes only, not --model)\n");
            return 2;
        }
    }
    if (source != NULL && model_dir != NULL) {
        fprintf(stderr, "--source: for the named shapes (--models), not --model\n");
        return 2;
    }

    double copy_gbs = 0, gemm_tflops = 0, fp8_tflops = 0;
    char device[256];
    if (measure_ceilings(&copy_gbs, &gemm_tflops, &fp8_tflops, device, sizeof device) != 0) {
        fprintf(stderr, "no CUDA device, or the ceilings failed\n");
        return 1;
    }
    printf("device: %s\nceilings: copy %.0f GB/s (read + written), bf16 GEMM 8192^3 %.0f TFLOP/s, "
           "fp8 GEMM 2048x4096x14336 %.0f TFLOP/s (cuBLASLt alone)\n",
           device, copy_gbs, gemm_tflops, fp8_tflops);

    FILE *js = NULL;
    if (json_path) {
        js = fopen(json_path, "w");
        if (js == NULL) {
            fprintf(stderr, "cannot write %s\n", json_path);
            return 1;
        }
        fprintf(js, "{\"device\": \"%s\", \"copy_gbs\": %.1f, \"gemm_tflops\": %.1f, \"fp8_gemm_tflops\": %.1f, "
                "\"results\": [", device, copy_gbs, gemm_tflops, fp8_tflops);
    }
    int first_json = 1, rc = 0;

    /* the model list: named shapes, or one folder */
    char list[256];
    snprintf(list, sizeof list, "%s", model_dir ? "dir" : models);
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save))
    for (int qi = 0; qi < n_quants; qi++) {
        const anvil_quantize quant = quants[qi];
        /* an fp8 engine's prefill runs on the FP8 GEMM: its ceiling */
        const double pf_ceiling = quant == ANVIL_QUANTIZE_FP8 && fp8_tflops > 0 ? fp8_tflops : gemm_tflops;
        char dir[4200];
        int random = 0; /* the runtime makes the weights: dir is a config */
        if (model_dir) {
            snprintf(dir, sizeof dir, "%s", model_dir);
        } else {
            const char *cfg = strcmp(name, "llama-8b") == 0       ? llama_8b_config
                              : strcmp(name, "llama-1b") == 0     ? llama_1b_config
                              : strcmp(name, "mixtral-8x7b") == 0 ? mixtral_8x7b_config
                                                                  : NULL;
            if (cfg == NULL) {
                fprintf(stderr, "unknown model %s (llama-8b, llama-1b, mixtral-8x7b)\n", name);
                return 2;
            }
            /* Mixtral's 93 GB engine fits no GPU machine's disk or /dev/shm */
            const int no_engine = cfg == mixtral_8x7b_config;
            random = no_engine || (source != NULL && strcmp(source, "random") == 0);
            if (no_engine && source != NULL && strcmp(source, "engine") == 0) {
                fprintf(stderr, "%s: --source engine is not offered (its engine outgrows the disk)\n", name);
                return 2;
            }
            char workdir[3072];
            if (bench_scratch_dir(scratch, workdir, sizeof workdir) != 0)
                return 1;
            if (random ? write_config(workdir, name, cfg, dir, sizeof dir)
                       : ensure_model(workdir, name, cfg, quant, q_lm_head, dir, sizeof dir))
                return 1;
        }
        for (int mode = 0; mode < n_modes * n_fmodes; mode++) {
            const int gm = mode / n_fmodes, fused = f_modes[mode % n_fmodes];
            int32_t max_b = 1, max_ctx = 1;
            int64_t kv_tokens = 0;
            for (int k = 0; k < n_cases; k++) {
                const int32_t ctx = (cs[k].input + cs[k].output + 31) / 32 * 32;
                max_b = cs[k].batch > max_b ? cs[k].batch : max_b;
                max_ctx = ctx > max_ctx ? ctx : max_ctx;
                kv_tokens = (int64_t)cs[k].batch * ctx > kv_tokens ? (int64_t)cs[k].batch * ctx : kv_tokens;
            }
            anvil_runtime_options o;
            anvil_runtime_options_default(&o);
            o.device = "cuda";
            o.no_cuda_graphs = !g_modes[gm];
            o.no_pdl = no_pdl;
            o.pdl = force_pdl;
            o.weight_dtype = ANVIL_DTYPE_BF16;
            o.max_num_tokens = PREFILL_CHUNK > max_b ? PREFILL_CHUNK : max_b;
            o.max_batch_size = max_b > PREFILL_CHUNK ? max_b : PREFILL_CHUNK; /* a prefill step packs many prompts */
            o.max_logit_rows = max_b;
            o.kv_block_size = 32;
            o.max_seq_len = max_ctx;
            o.kv_cache_tokens = kv_tokens;
            o.no_fusion = !(fused & 1);
            o.norm_gemv = (fused & 2) != 0;
            o.attn_combine_in_kernel = (fused & 1) && (fused & 4) != 0; /* off: nothing fused, this neither */
            /* the quantized matmuls' kernel choice, as the anvil command reads it (docs/cli.md) */
            const char *mq = getenv("ANVIL_CUDA_MATMUL_QUANT");
            o.cuda_matmul_quant = mq != NULL ? atoi(mq) : 0;
            /* ANVIL_CUDA_ROWS_WARPS=4|8|16: the row GEMVs' warps a block (the knob rows_warps) */
            const char *rw = getenv("ANVIL_CUDA_ROWS_WARPS");
            o.cuda_rows_warps = rw != NULL ? atoi(rw) : 0;
            /* ANVIL_CUDA_MOE_LOOP=0..3: the moe op's kernel choice (the knob moe_loop, docs/cli.md) */
            const char *ml = getenv("ANVIL_CUDA_MOE_LOOP");
            o.cuda_moe_loop = ml != NULL ? atoi(ml) : 0;
            /* ANVIL_CUDA_FP8_UNSHARED=1: fp8 prefill without the norm's shared codes (A/B, docs/cli.md) */
            const char *fu = getenv("ANVIL_CUDA_FP8_UNSHARED");
            o.cuda_fp8_unshared = fu != NULL && strcmp(fu, "1") == 0;
            if (random) { /* the engines' values (ensure_model's seed), made as they load */
                o.random_weights = 1;
                o.seed = 0x5eed;
                o.quantize = quant;
                o.quantize_lm_head = q_lm_head && quant != ANVIL_QUANTIZE_NONE;
            }
            anvil_runtime *rt = NULL;
            double tl = now_s();
            if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK) {
                fprintf(stderr, "load %s: %s\n", dir, anvil_last_error());
                rc = 1;
                continue;
            }
            tl = now_s() - tl;
            printf("\n%s%s%s%s (%.2f GB of weights, %s in %.1f s; host peak %.2f GB), step graphs %s, fusion %s\n",
                   name, quant != ANVIL_QUANTIZE_NONE ? " " : "",
                   quant != ANVIL_QUANTIZE_NONE ? anvil_quantize_name(quant) : "",
                   quant != ANVIL_QUANTIZE_NONE && q_lm_head ? " (LM head too)" : "",
                   (double)anvil_runtime_weight_bytes(rt) / 1e9, random ? "made (random source)" : "loaded", tl,
                   peak_host_bytes() / 1e9, g_modes[gm] ? "on" : "off",
                   !(fused & 1) ? "off"
                   : fused == 1 ? "on"
                   : fused == 3 ? "on + add+norm in the GEMV prologue (norm-gemv)"
                   : fused == 5 ? "on + the attention combine in the decode kernel (combine-in-kernel)"
                                : "on + norm-gemv+combine-in-kernel");
            printf("%-12s %9s %9s %9s  %-28s %-24s %s\n", "B:P:N", "TTFT ms", "TPOT ms", "tok/s", "decode (bytes | flops)",
                   "prefill", "");
            for (int k = 0; k < n_cases; k++) {
                case_result r;
                const int32_t nd = cs[k].output - 1;
                if (run_case(rt, &cs[k], nd < 4 ? nd : 4, quant, NULL) != 0 ||
                    run_case(rt, &cs[k], nd, quant, &r) != 0) {
                    rc = 1;
                    continue;
                }
                const double bw = nd > 0 ? r.decode_bytes / r.tpot_s / 1e9 : 0;
                const double dfl = nd > 0 ? r.decode_flops / r.tpot_s / 1e12 : 0;
                const double pfl = r.prefill_flops / r.ttft_s / 1e12;
                char dec[64] = "-";
                if (nd > 0)
                    snprintf(dec, sizeof dec, "%5.0f GB/s %3.0f%% | %4.0f%%", bw, 100 * bw / copy_gbs,
                             100 * dfl / gemm_tflops);
                char moe[96] = "";
                if (r.experts_read > 0) /* the estimate the decode bytes count */
                    snprintf(moe, sizeof moe, "  decode reads ~%.2f of %d experts a layer (expected, uniform routing)",
                             r.experts_read, anvil_runtime_config(rt)->n_experts);
                printf("%4d:%d:%-5d %9.2f %9.3f %9.1f  %-28s %5.0f TFLOP/s %3.0f%%%s\n", cs[k].batch, cs[k].input,
                       cs[k].output, r.ttft_s * 1e3, r.tpot_s * 1e3, r.tok_s, dec, pfl, 100 * pfl / pf_ceiling, moe);
                fflush(stdout);
                if (js) {
                    fprintf(js,
                            "%s\n {\"model\": \"%s\", \"quantize\": \"%s\", \"quantize_lm_head\": %s, \"graphs\": %s, \"fusion\": %s, \"norm_gemv\": %s, \"combine_in_kernel\": %s, \"batch\": %d, \"input\": %d, \"output\": %d, "
                            "\"ttft_ms\": %.3f, \"tpot_ms\": %.4f, \"tokens_per_s\": %.2f, \"decode_gbs\": %.1f, "
                            "\"decode_bw_frac\": %.4f, \"decode_tflops\": %.2f, \"decode_gemm_frac\": %.4f, "
                            "\"prefill_tflops\": %.2f, \"prefill_gemm_frac\": %.4f, \"source\": \"%s\", "
                            "\"decode_experts_expected\": %.3f}",
                            first_json ? "" : ",", name, anvil_quantize_name(quant),
                            quant != ANVIL_QUANTIZE_NONE && q_lm_head ? "true" : "false", g_modes[gm] ? "true" : "false",
                            (fused & 1) ? "true" : "false", (fused & 1) && (fused & 2) ? "true" : "false",
                            (fused & 1) && (fused & 4) ? "true" : "false", cs[k].batch, cs[k].input,
                            cs[k].output, r.ttft_s * 1e3, r.tpot_s * 1e3, r.tok_s, bw, bw / copy_gbs, dfl,
                            dfl / gemm_tflops, pfl, pfl / pf_ceiling,
                            model_dir ? "model" : random ? "random" : "engine", r.experts_read);
                    first_json = 0;
                }
            }
            anvil_runtime_free(rt);
        }
    }
    if (js) {
        fprintf(js, "\n]}\n");
        fclose(js);
    }
    return rc;
}
