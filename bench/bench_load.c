/*
 * bench_load: how long it takes to build an engine and to get a first
 * token out of it, against loading the Hugging Face folder (issue 12's
 * must-show; numbers in docs/performance.md "Build and load").
 *
 *   bench_load [--config llama-8b|llama-1b|FILE] [--scratch DIR] [--device cuda|cpu] [--dtype bf16]
 *              [--runs N] [--json FILE]
 *
 * In --scratch DIR (default bench-scratch/ beside this binary, in the build
 * folder) it writes a random-weight folder of the config (once; kept for
 * later runs), then:
 *   build   anvil_build_engine(folder -> DIR/model.engine), timed
 *   load    for the engine and for the folder: a fresh process (this
 *           program with --load) loads the model on --device and
 *           generates one token after an 8-token prompt; the parent times
 *           the whole process (start to exit: what a user waits), the
 *           child reports the load and the first token inside it.
 *           "warm": the files in the page cache (read once before);
 *           "cold": evicted from the page cache first (posix_fadvise
 *           DONTNEED on each file; needs no root), as after a reboot.
 *   dd      `dd if=FILE of=/dev/null bs=16M` after the same eviction: the
 *           disk's own read time for the file, the floor of a cold load.
 * Every measurement runs --runs times (default 3); the table gives each.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>

#include "anvil/builder.h"
#include "anvil/generate.h"
#include "anvil/runtime.h"
#include "bench_scratch.h"

static const char *llama_8b =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 4096,\n"
    " \"intermediate_size\": 14336, \"num_hidden_layers\": 32, \"num_attention_heads\": 32,\n"
    " \"num_key_value_heads\": 8, \"head_dim\": 128, \"vocab_size\": 128256, \"max_position_embeddings\": 8192,\n"
    " \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0, \"tie_word_embeddings\": false,\n"
    " \"torch_dtype\": \"bfloat16\", \"bos_token_id\": 128000, \"eos_token_id\": 128001}\n";

static const char *llama_1b =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 2048,\n"
    " \"intermediate_size\": 8192, \"num_hidden_layers\": 16, \"num_attention_heads\": 32,\n"
    " \"num_key_value_heads\": 8, \"head_dim\": 64, \"vocab_size\": 128256, \"max_position_embeddings\": 8192,\n"
    " \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0, \"tie_word_embeddings\": true,\n"
    " \"torch_dtype\": \"bfloat16\", \"bos_token_id\": 128000, \"eos_token_id\": 128001}\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* --load PATH: load and one token; prints "load_s first_token_s". */
static int child_load(const char *path, const char *device)
{
    const double t0 = now_s();
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.device = device;
    o.max_seq_len = 64;
    o.max_num_tokens = 64;
    o.max_batch_size = 1;
    o.kv_cache_tokens = 64;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(path, &o, &rt) != ANVIL_OK) {
        fprintf(stderr, "load %s: %s\n", path, anvil_last_error());
        return 1;
    }
    const double t1 = now_s();
    const int32_t prompt[8] = {128000, 791, 4062, 14198, 39935, 35308, 927, 279};
    anvil_generate_params gp = {.max_tokens = 1};
    anvil_sampling_params_default(&gp.sampling);
    gp.sampling.temperature = 0.0f;
    int32_t out[1], n_out = 0;
    if (anvil_generate(rt, prompt, 8, &gp, NULL, NULL, out, &n_out, NULL) != ANVIL_OK) {
        fprintf(stderr, "generate: %s\n", anvil_last_error());
        return 1;
    }
    const double t2 = now_s();
    printf("%.4f %.4f\n", t1 - t0, t2 - t0);
    anvil_runtime_free(rt);
    return 0;
}

/* Drops path (a file, or every file of a folder) from the page cache. */
static void evict(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", path, de->d_name);
            evict(p);
        }
        if (d)
            closedir(d);
        return;
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* Reads every byte of path once (into the page cache). */
static void warm(const char *path)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cat %s%s > /dev/null", path, strchr(path, '.') ? "" : "/*");
    if (system(cmd) != 0)
        fprintf(stderr, "warm: %s failed\n", cmd);
}

/* Runs this program with --load PATH; the process's wall time, and the
 * child's own two numbers. */
static int timed_load(const char *self, const char *path, const char *device, double out[3])
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s --load %s --device %s", self, path, device);
    const double t0 = now_s();
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    double a = -1, b = -1;
    int n = fscanf(p, "%lf %lf", &a, &b);
    int rc = pclose(p);
    out[0] = now_s() - t0;
    out[1] = a;
    out[2] = b;
    return n == 2 && rc == 0 ? 0 : -1;
}

static double timed_dd(const char *file)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "dd if=%s of=/dev/null bs=16M status=none", file);
    const double t0 = now_s();
    if (system(cmd) != 0)
        return -1;
    return now_s() - t0;
}

static long long file_bytes(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

int main(int argc, char **argv)
{
    const char *config = "llama-8b", *scratch = NULL, *device = "cuda", *json = NULL;
    const char *load = NULL;
    int runs = 3;
    anvil_dtype dtype = ANVIL_DTYPE_COUNT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--load") == 0 && v) load = argv[++i];
        else if (strcmp(a, "--config") == 0 && v) config = argv[++i];
        else if ((strcmp(a, "--scratch") == 0 || strcmp(a, "--workdir") == 0) && v) scratch = argv[++i];
        else if (strcmp(a, "--device") == 0 && v) device = argv[++i];
        else if (strcmp(a, "--runs") == 0 && v) runs = atoi(argv[++i]);
        else if (strcmp(a, "--json") == 0 && v) json = argv[++i];
        else if (strcmp(a, "--dtype") == 0 && v && strcmp(argv[++i], "bf16") == 0) dtype = ANVIL_DTYPE_BF16;
        else {
            fprintf(stderr, "usage: bench_load [--config llama-8b|llama-1b|FILE] [--scratch DIR] [--device D] "
                            "[--dtype bf16] [--runs N] [--json FILE]\n");
            return 2;
        }
    }
    if (load)
        return child_load(load, device);
    const char *cfg = strcmp(config, "llama-8b") == 0 ? llama_8b : strcmp(config, "llama-1b") == 0 ? llama_1b : NULL;
    char *cfg_text = NULL;
    if (cfg == NULL) {
        FILE *f = fopen(config, "rb");
        if (f == NULL) {
            fprintf(stderr, "bench_load: no config %s\n", config);
            return 1;
        }
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        cfg_text = calloc(1, (size_t)n + 1);
        if (fread(cfg_text, 1, (size_t)n, f) != (size_t)n)
            n = 0;
        fclose(f);
        cfg = cfg_text;
    }
    char workdir[4096], folder[4200], engine[4300], marker[4300];
    if (bench_scratch_dir(scratch, workdir, sizeof workdir) != 0)
        return 1;
    snprintf(folder, sizeof folder, "%s/model", workdir);
    snprintf(engine, sizeof engine, "%s/model.engine", workdir);
    snprintf(marker, sizeof marker, "%s/model.safetensors", folder);
    mkdir(folder, 0755);
    if (file_bytes(marker) < 0) {
        printf("writing a random %s folder in %s ...\n", config, folder);
        fflush(stdout);
        if (anvil_write_random_model(folder, cfg, 1) != ANVIL_OK) {
            fprintf(stderr, "bench_load: %s\n", anvil_last_error());
            return 1;
        }
    }
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0)
        return 1;
    self[sl] = '\0';
    FILE *js = json ? fopen(json, "w") : NULL;
    if (js)
        fprintf(js, "{\"config\": \"%s\", \"device\": \"%s\", \"runs\": [\n", config, device);
    printf("%-8s %-7s %-5s %10s %10s %12s\n", "what", "model", "cache", "wall s", "load s", "1st token s");
    int first_json = 1;
    for (int r = 0; r < runs; r++) {
        warm(folder);
        anvil_build_options bo;
        anvil_build_options_default(&bo);
        bo.weight_dtype = dtype;
        unlink(engine);
        const double t0 = now_s();
        if (anvil_build_engine(folder, engine, &bo) != ANVIL_OK) {
            fprintf(stderr, "bench_load: build: %s\n", anvil_last_error());
            return 1;
        }
        const double build_s = now_s() - t0;
        printf("%-8s %-7s %-5s %10.2f\n", "build", "folder", "warm", build_s);
        if (js)
            fprintf(js, "%s{\"what\": \"build\", \"seconds\": %.4f, \"bytes\": %lld}", first_json ? "" : ",\n",
                    build_s, file_bytes(engine));
        first_json = 0;
        const char *paths[2] = {engine, folder}, *names[2] = {"engine", "folder"};
        for (int k = 0; k < 2; k++) {
            for (int cold = 0; cold < 2; cold++) {
                if (cold)
                    evict(paths[k]);
                else
                    warm(paths[k]);
                double t[3];
                if (timed_load(self, paths[k], device, t) != 0) {
                    fprintf(stderr, "bench_load: loading %s failed\n", paths[k]);
                    return 1;
                }
                printf("%-8s %-7s %-5s %10.2f %10.2f %12.2f\n", "load", names[k], cold ? "cold" : "warm", t[0], t[1],
                       t[2]);
                if (js)
                    fprintf(js, ",\n{\"what\": \"load\", \"model\": \"%s\", \"cache\": \"%s\", \"wall_s\": %.4f, "
                                "\"load_s\": %.4f, \"first_token_s\": %.4f}",
                            names[k], cold ? "cold" : "warm", t[0], t[1], t[2]);
            }
        }
        evict(engine);
        const double dd = timed_dd(engine);
        printf("%-8s %-7s %-5s %10.2f   (%lld bytes, %.2f GB/s)\n", "dd", "engine", "cold", dd, file_bytes(engine),
               dd > 0 ? (double)file_bytes(engine) / dd / 1e9 : 0.0);
        if (js)
            fprintf(js, ",\n{\"what\": \"dd\", \"seconds\": %.4f, \"bytes\": %lld}", dd, file_bytes(engine));
        fflush(stdout);
    }
    if (js) {
        fprintf(js, "\n]}\n");
        fclose(js);
    }
    free(cfg_text);
    return 0;
}
