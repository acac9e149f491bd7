/* anvil build: a model folder (or a config with random weights) into one engine file (docs/engine.md). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/builder.h"
#include "cli_error.h"
#include "cli_flags.h"
#include "cli_progress.h"
#include "commands.h"
#include "exec_cli.h"

#define TOOL "anvil build"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: anvil build --model DIR --output FILE [options]\n"
            "       anvil build --model DIR --tp N --output FOLDER [options]\n"
            "       anvil build --config config.json --random-weights --output FILE [options]\n\n"
            "Builds a Hugging Face model folder into one engine file: the weights prepared for the\n"
            "runtime (converted, fused), the network's ops and fusion plan, and the config, tokenizer,\n"
            "chat template and generation config. Every command that takes a model folder takes the\n"
            "engine file instead (docs/engine.md).\n\n"
            "  -m, --model DIR         the Hugging Face folder (config.json, *.safetensors, tokenizer.json)\n"
            "      --config FILE       with --random-weights: an HF config (any file name, or a folder holding config.json)\n"
            "  -o, --output FILE       the engine file to write (replaced only when the build succeeds)\n"
            "      --dtype DT          auto (default: weights as stored), f32, bf16 or f16\n"
            "      --random-weights    random weights from the config alone (benchmarks at a real shape)\n"
            "      --seed N            the random weights' seed (default 1)\n"
            "      --no-fusion         no fused ops, no fused weight matrices\n"
            "      --quantize Q        quantize the linear weights (not embeddings, norms, LM head), round to\n"
            "                          nearest: fp8 (e4m3, per-channel scales, fp8 activations per token),\n"
            "                          int8-wo (per-channel scales), int4-wo (groups along K, zero points);\n"
            "                          none (default). docs/quantization.md\n"
            "      --group-size N      int4-wo's group (default 128); it must divide every weight's width\n"
            "      --quantize-lm-head  the LM head too (default: it stays in --dtype); tied embeddings stay\n"
            "                          unquantized, the LM head gets a quantized copy\n"
            "      --calib FILE        with int4-wo or int8-wo: activation-aware scaling (AWQ) searched on this\n"
            "                          UTF-8 text, run through the model (f32, CPU) before quantizing; with\n"
            "                          --kv-cache-dtype fp8: the KV scales (max |k|, |v| / 448) from it too\n"
            "      --calib-seq-len N   tokens per calibration window (default 512)\n"
            "      --calib-tokens N    calibration tokens at most (default 16384: whole windows from the start)\n"
            "      --calib-rows N      rows of each linear's input in the search (default 512)\n"
            "      --calib-no-clip     no clipping search (scales only)\n"
            "      --kv-cache-dtype KV auto (default: fp8 when the checkpoint declares an fp8 KV cache) or fp8:\n"
            "                          the engine runs an fp8 KV cache, with the checkpoint's k/v scales,\n"
            "                          else --calib's, else 1\n"
            "      --tp N              tensor parallelism: N engines, one a rank, into the folder --output\n"
            "                          (rank0.engine ... rank<N-1>.engine); run them with mpirun -np N anvil\n"
            "                          run|bench|serve --model FOLDER --tp N (docs/parallel.md)\n"
            "      --threads N         threads preparing and writing (default: the CPUs, at most 16)\n"
            "      --no-progress       no progress bar (it shows only on a terminal)\n"
            "  -h, --help              this help\n");
}

int anvil_cmd_build(int argc, char **argv)
{
    enum {
        OPT_CONFIG = 256,
        OPT_DTYPE,
        OPT_RANDOM,
        OPT_SEED,
        OPT_NO_FUSION,
        OPT_THREADS,
        OPT_NO_PROGRESS,
        OPT_QUANTIZE,
        OPT_GROUP,
        OPT_CALIB,
        OPT_CALIB_SEQ_LEN,
        OPT_CALIB_TOKENS,
        OPT_CALIB_ROWS,
        OPT_CALIB_NO_CLIP,
        OPT_LM_HEAD,
        OPT_KV_DTYPE,
        OPT_TP
    };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},      {"config", required_argument, 0, OPT_CONFIG},
        {"output", required_argument, 0, 'o'},     {"dtype", required_argument, 0, OPT_DTYPE},
        {"random-weights", no_argument, 0, OPT_RANDOM}, {"seed", required_argument, 0, OPT_SEED},
        {"no-fusion", no_argument, 0, OPT_NO_FUSION}, {"threads", required_argument, 0, OPT_THREADS},
        {"no-progress", no_argument, 0, OPT_NO_PROGRESS}, {"help", no_argument, 0, 'h'},
        {"quantize", required_argument, 0, OPT_QUANTIZE}, {"group-size", required_argument, 0, OPT_GROUP},
        {"calib", required_argument, 0, OPT_CALIB},       {"calib-seq-len", required_argument, 0, OPT_CALIB_SEQ_LEN},
        {"calib-tokens", required_argument, 0, OPT_CALIB_TOKENS}, {"calib-rows", required_argument, 0, OPT_CALIB_ROWS},
        {"calib-no-clip", no_argument, 0, OPT_CALIB_NO_CLIP}, {"quantize-lm-head", no_argument, 0, OPT_LM_HEAD},
        {"kv-cache-dtype", required_argument, 0, OPT_KV_DTYPE}, {"tp", required_argument, 0, OPT_TP},
        {0, 0, 0, 0},
    };
    anvil_build_options o;
    anvil_build_options_default(&o);
    o.seed = 1;
    const char *model = NULL, *config = NULL, *output = NULL;
    int no_progress = 0;
    long v;
    optind = 1;
    int c;
    while ((c = cli_getopt(argc, argv, "m:o:h", longopts)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case OPT_CONFIG: config = optarg; break;
        case 'o': output = optarg; break;
        case OPT_DTYPE:
            if (exec_cli_dtype(optarg, &o.weight_dtype, TOOL)) return 2;
            break;
        case OPT_RANDOM: o.random_weights = 1; break;
        case OPT_SEED:
            if (exec_cli_int(optarg, "--seed", 0, 0x7fffffffL, &v, TOOL)) return 2;
            o.seed = (uint64_t)v;
            break;
        case OPT_NO_FUSION: o.no_fusion = 1; break;
        case OPT_THREADS:
            if (exec_cli_int(optarg, "--threads", 0, 1024, &v, TOOL)) return 2;
            o.n_threads = (int)v;
            break;
        case OPT_NO_PROGRESS: no_progress = 1; break;
        case OPT_QUANTIZE:
            if (anvil_quantize_parse(optarg, &o.quantize) != 0) {
                fprintf(stderr, TOOL ": --quantize %s: expected none, fp8, int8-wo or int4-wo\n", optarg);
                return 2;
            }
            break;
        case OPT_GROUP:
            if (exec_cli_int(optarg, "--group-size", 2, 1L << 20, &v, TOOL)) return 2;
            o.quant_group = (int32_t)v;
            break;
        case OPT_CALIB: o.calib_file = optarg; break;
        case OPT_CALIB_SEQ_LEN:
            if (exec_cli_int(optarg, "--calib-seq-len", 2, 1L << 20, &v, TOOL)) return 2;
            o.calib_seq_len = (int32_t)v;
            break;
        case OPT_CALIB_TOKENS:
            if (exec_cli_int(optarg, "--calib-tokens", 2, 1L << 30, &v, TOOL)) return 2;
            o.calib_tokens = v;
            break;
        case OPT_CALIB_ROWS:
            if (exec_cli_int(optarg, "--calib-rows", 1, 1L << 20, &v, TOOL)) return 2;
            o.calib_rows = (int32_t)v;
            break;
        case OPT_CALIB_NO_CLIP: o.calib_no_clip = 1; break;
        case OPT_LM_HEAD: o.quantize_lm_head = 1; break;
        case OPT_KV_DTYPE: o.kv_cache_dtype = optarg; break;
        case OPT_TP:
            if (exec_cli_int(optarg, "--tp", 1, 1024, &v, TOOL)) return 2;
            o.tp_size = (int32_t)v;
            break;
        case 'h': usage(stdout); return 0;
        default: return cli_bad_flag(TOOL, argv, "m:o:h", longopts);
        }
    }
    if (optind < argc) {
        fprintf(stderr, TOOL ": unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (output == NULL) {
        fprintf(stderr, TOOL ": --output FILE is required (see anvil build --help)\n");
        return 2;
    }
    if (o.random_weights ? (config == NULL || model != NULL) : (model == NULL || config != NULL)) {
        fprintf(stderr, o.random_weights ? TOOL ": --random-weights builds from --config config.json (no --model)\n"
                                         : TOOL ": --model DIR is required (--config goes with --random-weights)\n");
        return 2;
    }
    if (o.quant_group > 0 && o.quantize != ANVIL_QUANTIZE_INT4_WO) {
        fprintf(stderr, TOOL ": --group-size goes with --quantize int4-wo (fp8 and int8-wo scale whole rows)\n");
        return 2;
    }
    const int calib_flags = o.calib_seq_len > 0 || o.calib_tokens > 0 || o.calib_rows > 0 || o.calib_no_clip;
    if (o.calib_file == NULL && calib_flags) {
        fprintf(stderr, TOOL ": --calib-seq-len, --calib-tokens, --calib-rows and --calib-no-clip go with --calib FILE\n");
        return 2;
    }
    const int kv_fp8 = o.kv_cache_dtype != NULL && strncmp(o.kv_cache_dtype, "fp8", 3) == 0;
    if (o.calib_file != NULL && o.quantize != ANVIL_QUANTIZE_INT4_WO && o.quantize != ANVIL_QUANTIZE_INT8_WO &&
        !kv_fp8) {
        fprintf(stderr, TOOL ": --calib goes with --quantize int4-wo or int8-wo (AWQ) or --kv-cache-dtype fp8 (the "
                             "KV cache's scales)\n");
        return 2;
    }
    if (o.calib_file != NULL && o.calib_seq_len > 0 && o.calib_tokens > 0 && o.calib_tokens < o.calib_seq_len) {
        fprintf(stderr, TOOL ": --calib-tokens %lld is less than one window (--calib-seq-len %d)\n",
                (long long)o.calib_tokens, (int)o.calib_seq_len);
        return 2;
    }
    if (o.quantize_lm_head && o.quantize == ANVIL_QUANTIZE_NONE) {
        fprintf(stderr, TOOL ": --quantize-lm-head goes with --quantize\n");
        return 2;
    }
    cli_progress b;
    cli_progress_start(&b, TOOL, !no_progress);
    o.progress = cli_progress_cb;
    o.progress_user = &b;
    const char *src = o.random_weights ? config : model;
    anvil_status st = o.tp_size > 1 ? anvil_build_engines_tp(src, output, &o) : anvil_build_engine(src, output, &o);
    cli_progress_end(&b);
    if (st != ANVIL_OK) {
        anvil_cli_report(TOOL);
        return st == ANVIL_ERR_CANCELLED ? 130 : 1;
    }
    if (o.tp_size > 1)
        fprintf(stderr, TOOL ": wrote %d engines (rank0.engine ... rank%d.engine) into %s in %.2f s\n",
                (int)o.tp_size, (int)o.tp_size - 1, output, cli_progress_elapsed(&b));
    else
        fprintf(stderr, TOOL ": wrote %s in %.2f s\n", output, cli_progress_elapsed(&b));
    return 0;
}
