/*
 * bench_tokenizer: tokenizer load time and single-thread encode throughput.
 *
 *   For each tokenizer in SHARED/tokenizers: the median time of loading
 *   tokenizer.json, then encode of one long mixed text (prose, source code,
 *   eight scripts; deterministic, ~4 MB) in one call, in MB/s and tokens/s,
 *   and encode of the same text cut into 2 KB prompts (per-call costs,
 *   what a server sees). bench_tokenizer_hf.py runs HF tokenizers on the
 *   same text for comparison.
 *
 *   usage: bench_tokenizer [--shared DIR] [--mb N] [--only NAME] [--json FILE]
 *                          [--write-corpus FILE]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/tokenizer.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* ------------------------------------------------------------ the corpus */

static const char *const words[] = {
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "with", "as",
    "I", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "hot", "word", "but", "what",
    "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how", "said", "an",
    "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "write",
    "would", "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more",
    "day", "could", "go", "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water",
    "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "any", "new", "work", "part",
    "take", "get", "place", "made", "live", "where", "after", "back", "little", "only", "round", "man", "year",
    "came", "show", "every", "good", "me", "give", "our", "under", "name", "very", "through", "just", "form",
    "sentence", "great", "think", "say", "help", "low", "line", "differ", "turn", "cause", "much", "mean",
    "before", "move", "right", "boy", "old", "too", "same", "tell", "does", "set", "three", "want", "air", "well",
    "also", "play", "small", "end", "put", "home", "read", "hand", "port", "large", "spell", "add", "even", "land",
    "here", "must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went", "light", "kind",
    "off", "need", "house", "picture", "try", "us", "again", "animal", "point", "mother", "world", "near", "build",
    "self", "earth", "father", "head", "stand", "own", "page", "should", "country", "found", "answer", "school",
    "grow", "study", "still", "learn", "plant", "cover", "food", "sun", "four", "between", "state", "keep", "eye",
    "never", "last", "let", "thought", "city", "tree", "cross", "farm", "hard", "start", "might", "story", "saw",
    "far", "sea", "draw", "left", "late", "run", "don't", "while", "press", "close", "night", "real", "life", "few",
    "north", "open", "seem", "together", "next", "white", "children", "begin", "got", "walk", "example", "ease",
    "paper", "group", "always", "music", "those", "both", "mark", "often", "letter", "until", "mile", "river",
    "car", "feet", "care", "second", "book", "carry", "took", "science", "eat", "room", "friend", "began", "idea",
    "fish", "mountain", "stop", "once", "base", "hear", "horse", "cut", "sure", "watch", "color", "face", "wood",
    "main", "enough", "plain", "girl", "usual", "young", "ready", "above", "ever", "red", "list", "though", "feel",
    "talk", "bird", "soon", "body", "dog", "family", "direct", "pose", "leave", "song", "measure", "door",
    "product", "black", "short", "numeral", "class", "wind", "question", "happen", "complete", "ship", "area",
    "half", "rock", "order", "fire", "south", "problem", "piece", "told", "knew", "pass", "since", "top", "whole",
    "king", "space", "heard", "best", "hour", "better", "true", "during", "hundred", "five", "remember", "step",
    "early", "hold", "west", "ground", "interest", "reach", "fast", "verb", "sing", "listen", "six", "table",
    "travel", "less", "morning", "ten", "simple", "several", "vowel", "toward", "war", "lay", "against", "pattern",
    "slow", "center", "love", "person", "money", "serve", "appear", "road", "map", "rain", "rule", "govern",
    "pull", "cold", "notice", "voice", "unit", "power", "town", "fine", "certain", "fly", "fall", "lead", "cry",
    "dark", "machine", "note", "wait", "plan", "figure", "star", "box", "noun", "field", "rest", "correct",
    "able", "pound", "done", "beauty", "drive", "stood", "contain", "front", "teach", "week", "final", "gave",
    "green", "oh", "quick", "develop", "ocean", "warm", "free", "minute", "strong", "special", "mind", "behind",
    "clear", "tail", "produce", "fact", "street", "inch", "multiply", "nothing", "course", "stay", "wheel",
    "full", "force", "blue", "object", "decide", "surface", "deep", "moon", "island", "foot", "system", "busy",
    "test", "record", "boat", "common", "gold", "possible", "plane", "stead", "dry", "wonder", "laugh",
    "thousand", "ago", "ran", "check", "game", "shape", "equate", "miss", "brought", "heat", "snow", "tire",
    "bring", "yes", "distant", "fill", "east", "paint", "language", "among", "tokenizer", "inference", "latency",
    "throughput", "transformer", "attention", "gradient", "Kubernetes", "PostgreSQL", "microservice",
};

static const char *const code_lines[] = {
    "def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:\n",
    "    return self.proj(self.dropout(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1) @ v))\n",
    "for (size_t i = 0; i < n; i++) {\n", "    out[i] = a[i] * scale + bias[i % 64];\n", "}\n",
    "if (st != ANVIL_OK) {\n        goto fail;\n    }\n", "#include <stdio.h>\n", "import numpy as np\n",
    "    const int32_t *ids = (const int32_t *)buf->data;\n", "        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])\n",
    "fn main() -> Result<(), Box<dyn Error>> {\n", "    let v: Vec<u32> = (0..1024).map(|x| x * 2).collect();\n",
    "SELECT id, name, created_at FROM users WHERE active = 1 ORDER BY created_at DESC LIMIT 50;\n",
    "    console.log(`request ${req.id} took ${Date.now() - start}ms`);\n", "\t\treturn nil, fmt.Errorf(\"bad header: %w\", err)\n",
    "// TODO(perf): fuse the residual add with the RMSNorm that follows it\n", "    x = x.view(B, T, self.n_head, C // self.n_head)\n",
    "        }\n    }\n", "  \"max_position_embeddings\": 131072,\n", "<div class=\"row\"><span id=\"total\">0.00</span></div>\n",
};

static const char *const multi[] = {
    "大型语言模型的推理速度取决于内存带宽和计算能力。", "今天天气很好，我们去公园散步吧。",
    "東京の天気は晴れのち曇り、最高気温は二十五度の予想です。", "私はコーヒーよりお茶のほうが好きです。",
    "Быстрая коричневая лиса перепрыгивает через ленивую собаку.", "Модель обрабатывает запросы пакетами для большей пропускной способности.",
    "الذكاء الاصطناعي يغير طريقة عملنا وتعلمنا كل يوم.", "मशीन लर्निंग मॉडल को बड़े डेटासेट पर प्रशिक्षित किया जाता है।",
    "El rápido zorro marrón salta sobre el perro perezoso, ¿verdad?", "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "인공지능 모델은 많은 양의 데이터를 학습합니다.", "Ελληνικά: η γρήγορη καφέ αλεπού πηδάει πάνω από τον σκύλο.",
    "Việt Nam có nhiều cảnh đẹp và món ăn ngon.", "Ça coûte 12,50 € — c'est très cher ! 🙂", "🚀✨ Ready to ship 👩‍💻👨‍👩‍👧 #launch",
};

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(sbuf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* ~60% English prose (Zipf-ish word choice, rare made-up words, numbers),
 * ~25% source code, ~15% other scripts and emoji. */
static char *make_corpus(size_t bytes, size_t *len)
{
    sbuf b = {0};
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    size_t n_words = sizeof words / sizeof words[0];
    while (b.n < bytes) {
        uint64_t r = rng_next(&rng) % 100;
        if (r < 60) {
            int n = 8 + (int)(rng_next(&rng) % 20);
            for (int i = 0; i < n; i++) {
                uint64_t z = rng_next(&rng);
                double u = (double)(z % 1000000) / 1e6;
                size_t k = (size_t)((double)n_words * u * u * u); /* skewed to the common words */
                const char *w = words[k < n_words ? k : n_words - 1];
                char tmp[64];
                if (z % 53 == 0) { /* a rare word: never seen before, misses every cache */
                    int l = 4 + (int)(z % 9);
                    for (int c = 0; c < l; c++)
                        tmp[c] = (char)('a' + (rng_next(&rng) % 26));
                    tmp[l] = 0;
                    w = tmp;
                } else if (z % 41 == 0) {
                    snprintf(tmp, sizeof tmp, "%u", (unsigned)(rng_next(&rng) % 100000));
                    w = tmp;
                }
                if (i == 0) {
                    char cap[64];
                    snprintf(cap, sizeof cap, "%s", w);
                    if (cap[0] >= 'a' && cap[0] <= 'z')
                        cap[0] = (char)(cap[0] - 32);
                    puts_(&b, cap);
                } else {
                    puts_(&b, " ");
                    puts_(&b, w);
                }
                if (i + 1 < n && z % 11 == 0)
                    puts_(&b, ",");
            }
            puts_(&b, (rng_next(&rng) % 4) ? ". " : ".\n\n");
        } else if (r < 85) {
            int n = 3 + (int)(rng_next(&rng) % 8);
            for (int i = 0; i < n; i++)
                puts_(&b, code_lines[rng_next(&rng) % (sizeof code_lines / sizeof code_lines[0])]);
            puts_(&b, "\n");
        } else {
            puts_(&b, multi[rng_next(&rng) % (sizeof multi / sizeof multi[0])]);
            puts_(&b, (rng_next(&rng) % 3) ? " " : "\n");
        }
    }
    *len = b.n;
    return b.p;
}

/* ------------------------------------------------------------ measuring */

typedef struct result {
    char name[64];
    double load_ms, mb_s, tok_s, prompt_mb_s;
    int64_t tokens;
} result;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int bench_one(const char *dir, const char *name, const char *text, size_t len, result *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    double loads[5];
    anvil_tokenizer *tok = NULL;
    for (int i = 0; i < 5; i++) {
        double t0 = now_s();
        if (anvil_tokenizer_load(dir, &tok) != ANVIL_OK) {
            fprintf(stderr, "%s: %s\n", name, anvil_last_error());
            return -1;
        }
        loads[i] = now_s() - t0;
        if (i < 4)
            anvil_tokenizer_free(tok);
    }
    qsort(loads, 5, sizeof loads[0], cmp_double);
    r->load_ms = loads[2] * 1e3;

    /* one long text: best of 3 */
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        int32_t *ids;
        int64_t n;
        double t0 = now_s();
        if (anvil_tokenizer_encode(tok, text, len, 0, &ids, &n) != ANVIL_OK) {
            fprintf(stderr, "%s: %s\n", name, anvil_last_error());
            anvil_tokenizer_free(tok);
            return -1;
        }
        double t = now_s() - t0;
        free(ids);
        r->tokens = n;
        if (t < best)
            best = t;
    }
    r->mb_s = (double)len / best / 1e6;
    r->tok_s = (double)r->tokens / best;

    /* the same text as 2 KB prompts (cut at UTF-8 boundaries) */
    double t0 = now_s();
    size_t at = 0;
    while (at < len) {
        size_t e = at + 2048 < len ? at + 2048 : len;
        while (e < len && ((unsigned char)text[e] & 0xC0) == 0x80)
            e++;
        int32_t *ids;
        int64_t n;
        if (anvil_tokenizer_encode(tok, text + at, e - at, 1, &ids, &n) != ANVIL_OK) {
            fprintf(stderr, "%s: %s\n", name, anvil_last_error());
            anvil_tokenizer_free(tok);
            return -1;
        }
        free(ids);
        at = e;
    }
    r->prompt_mb_s = (double)len / (now_s() - t0) / 1e6;
    anvil_tokenizer_free(tok);
    return 0;
}

int main(int argc, char **argv)
{
    const char *shared = getenv("ANVIL_SHARED_DIR");
    const char *json_path = NULL, *only = NULL, *corpus_path = NULL;
    double mb = 4.0;
    static const struct option opts[] = {
        {"shared", required_argument, NULL, 's'}, {"mb", required_argument, NULL, 'm'},
        {"only", required_argument, NULL, 'o'},   {"json", required_argument, NULL, 'j'},
        {"write-corpus", required_argument, NULL, 'w'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "s:m:o:j:w:h", opts, NULL)) != -1) {
        switch (c) {
        case 's': shared = optarg; break;
        case 'm': mb = atof(optarg); break;
        case 'o': only = optarg; break;
        case 'j': json_path = optarg; break;
        case 'w': corpus_path = optarg; break;
        default:
            printf("usage: bench_tokenizer [--shared DIR] [--mb N] [--only NAME] [--json FILE] [--write-corpus FILE]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (!shared)
        shared = "../shared";
    size_t len;
    char *text = make_corpus((size_t)(mb * 1e6), &len);
    if (corpus_path) {
        FILE *f = fopen(corpus_path, "wb");
        if (!f || fwrite(text, 1, len, f) != len || fclose(f) != 0) {
            fprintf(stderr, "cannot write %s\n", corpus_path);
            return 1;
        }
        free(text);
        return 0;
    }
    static const char *const names[] = {"gpt2", "llama2", "llama3", "mistral-7b-instruct-v0.3", "phi-2",
                                        "phi-3-mini", "qwen2.5", "smollm2-135m-instruct"};
    result res[16];
    int n_res = 0;
    printf("corpus: %.2f MB (prose, code, 8 scripts + emoji), one thread\n\n", (double)len / 1e6);
    printf("%-26s %9s %9s %12s %10s %14s\n", "tokenizer", "load ms", "MB/s", "tokens/s", "tokens", "2KB-prompt MB/s");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (only && strcmp(only, names[i]) != 0)
            continue;
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/tokenizers/%s", shared, names[i]);
        if (bench_one(dir, names[i], text, len, &res[n_res]) != 0)
            return 1;
        result *r = &res[n_res++];
        printf("%-26s %9.1f %9.1f %12.0f %10lld %14.1f\n", r->name, r->load_ms, r->mb_s, r->tok_s,
               (long long)r->tokens, r->prompt_mb_s);
        fflush(stdout);
    }
    if (json_path) {
        FILE *f = fopen(json_path, "w");
        if (!f) {
            fprintf(stderr, "cannot write %s\n", json_path);
            return 1;
        }
        fprintf(f, "{\"corpus_bytes\": %zu, \"results\": [", len);
        for (int i = 0; i < n_res; i++)
            fprintf(f,
                    "%s\n  {\"tokenizer\": \"%s\", \"load_ms\": %.2f, \"encode_mb_s\": %.2f, \"tokens_s\": %.0f, "
                    "\"tokens\": %lld, \"prompt_mb_s\": %.2f}",
                    i ? "," : "", res[i].name, res[i].load_ms, res[i].mb_s, res[i].tok_s, (long long)res[i].tokens,
                    res[i].prompt_mb_s);
        fprintf(f, "\n]}\n");
        fclose(f);
    }
    free(text);
    return 0;
}
