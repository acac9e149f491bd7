/*
 * Internal types of the tokenizer: the loaded pipeline (model, added tokens,
 * normalizer, pre-tokenizer, post-processor, decoder) and the per-call work
 * area that encode uses. A loaded anvil_tokenizer is never written after
 * load; everything an encode or decode call mutates lives in its tok_work.
 */
#ifndef ANVIL_TOK_INTERNAL_H
#define ANVIL_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>

#include "anvil/tokenizer.h"
#include "tokenizer/tok_unicode.h"

/* Largest token id anvil accepts (ids index dense tables). */
#define TOK_MAX_ID (1 << 24)

/* ------------------------------------------------------------ buffers */

typedef struct tok_buf {
    char *p;
    size_t len, cap;
} tok_buf;

anvil_status tok_buf_reserve(tok_buf *b, size_t extra);
anvil_status tok_buf_append(tok_buf *b, const void *data, size_t n);
void tok_buf_free(tok_buf *b);

/* Grows a malloc'd array *p of *cap elements of size elem to hold need. */
anvil_status tok_grow(void **p, size_t *cap, size_t need, size_t elem);

/* Appends Rust's String::from_utf8_lossy(s[0..n)) to out. */
anvil_status tok_append_lossy(tok_buf *out, const unsigned char *s, size_t n);

/* Length of the trailing incomplete-but-valid UTF-8 prefix of s[0..n) (0..3). */
size_t tok_utf8_incomplete_tail(const unsigned char *s, size_t n);

/* ------------------------------------------------------------ hash maps */

/* String -> int32. Each key lives in one record of the pool, {len, val,
 * bytes, NUL}, 4-byte aligned, so a lookup touches one slot and one record.
 * Later puts of an existing key overwrite its value. */
typedef struct tok_strrec {
    uint32_t len;
    int32_t val;
    char key[]; /* len bytes + NUL */
} tok_strrec;

typedef struct tok_strmap {
    uint64_t *slots; /* (hash tag << 32) | (record offset + 1), 0 = empty */
    uint32_t mask;
    uint32_t *recs; /* record offsets in insertion order */
    size_t n, cap;
    tok_buf pool;
} tok_strmap;

anvil_status tok_strmap_init(tok_strmap *m, size_t expected);
void tok_strmap_free(tok_strmap *m);
/* Sets key -> val. */
anvil_status tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val);
/* The value of key, or -1. */
int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len);
/* The same with the key's tok_hash given (for batched lookups). */
int32_t tok_strmap_get_hashed(const tok_strmap *m, const char *key, size_t len, uint64_t h);
/* Prefetch hints for batched lookups: the slot of a hash, then its record. */
static inline void tok_strmap_prefetch_slot(const tok_strmap *m, uint64_t h)
{
    __builtin_prefetch(&m->slots[(uint32_t)h & m->mask]);
}
static inline void tok_strmap_prefetch_rec(const tok_strmap *m, uint64_t h)
{
    uint64_t s = m->slots[(uint32_t)h & m->mask];
    if (s)
        __builtin_prefetch(m->pool.p + (uint32_t)(s - 1));
}
/* The i-th record (insertion order); valid while the map is not changed. */
static inline const tok_strrec *tok_strmap_rec(const tok_strmap *m, size_t i)
{
    return (const tok_strrec *)(const void *)(m->pool.p + m->recs[i]);
}
uint64_t tok_hash(const void *p, size_t n);

/* (id, id) -> (rank, new id) for BPE merges: one 16-byte slot per pair. */
typedef struct tok_pair_slot {
    uint64_t key; /* UINT64_MAX = empty */
    uint32_t rank;
    int32_t new_id;
} tok_pair_slot;

typedef struct tok_pairmap {
    tok_pair_slot *slots;
    uint32_t mask;
    size_t n;
} tok_pairmap;

anvil_status tok_pairmap_init(tok_pairmap *m, size_t expected);
void tok_pairmap_free(tok_pairmap *m);
static inline void tok_pairmap_prefetch(const tok_pairmap *m, int32_t a, int32_t b)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    __builtin_prefetch(&m->slots[(uint32_t)((k * 0x9E3779B97F4A7C15ull) >> 32) & m->mask], 1);
}
/* Sets (a, b) -> (rank, new_id), overwriting an existing pair; grows as needed. */
anvil_status tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id);
/* 1 and *rank and *new_id if (a, b) is a merge, else 0. */
static inline int tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, uint32_t *rank, int32_t *new_id)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = k * 0x9E3779B97F4A7C15ull;
    uint32_t i = (uint32_t)(h >> 32) & m->mask;
    for (;;) {
        const tok_pair_slot *s = &m->slots[i];
        if (s->key == k) {
            *rank = s->rank;
            *new_id = s->new_id;
            return 1;
        }
        if (s->key == UINT64_MAX)
            return 0;
        i = (i + 1) & m->mask;
    }
}

/* ------------------------------------------------------------ regex */

/* An Oniguruma (HF) pattern compiled for PCRE2 twice: `fast` uses PCRE2's
 * own Unicode properties, `exact` spells every class out from the probed
 * Oniguruma tables. A subject is matched with `fast` unless it holds a code
 * point of `risk` (where the two engines' tables disagree). */
typedef struct tok_regex {
    pcre2_code *fast;
    pcre2_code *exact; /* NULL when fast is exact for every input */
    uint32_t (*risk)[2];
    uint32_t n_risk;
    int all_risky; /* exact must be used for every subject */
} tok_regex;

anvil_status tok_regex_compile(tok_regex *re, const char *pattern, size_t len);
/* Compiles a literal string (HF's String patterns: regex::escape of it). */
anvil_status tok_regex_compile_literal(tok_regex *re, const char *lit, size_t len);
void tok_regex_free(tok_regex *re);

typedef struct tok_span {
    size_t s, e;
} tok_span;

/* The matches of re in subject[0..n), with Oniguruma's find_iter rules for
 * empty matches, appended to *out (grown with tok_grow). */
anvil_status tok_regex_find_all(const tok_regex *re, const char *subject, size_t n, pcre2_match_data *md,
                                tok_span **out, size_t *n_out, size_t *cap);

/* Match-by-match iteration with the same rules; the subject is passed to
 * each call (it may move between calls, as long as its bytes stay the same). */
typedef struct tok_regex_iter {
    const pcre2_code *code;
    int jit; /* code has JIT code: call pcre2_jit_match directly */
    size_t last_end, last_match_end;
    int have_last;
} tok_regex_iter;

void tok_regex_iter_init(tok_regex_iter *it, const tok_regex *re, const char *subject, size_t n);
/* 1 and [*s, *e) for the next match, 0 at the end; a PCRE2 failure sets *st. */
int tok_regex_iter_next(tok_regex_iter *it, const char *subject, size_t n, pcre2_match_data *md, size_t *s, size_t *e,
                        anvil_status *st);

/* A pattern for Split / Replace: a non-empty literal (searched directly) or a regex. */
typedef struct tok_pattern {
    int is_regex;
    char *lit;
    size_t lit_len;
    tok_regex re;
} tok_pattern;

anvil_status tok_pattern_parse(tok_pattern *p, json_t *j, const char *what);
void tok_pattern_free(tok_pattern *p);
anvil_status tok_pattern_find_all(const tok_pattern *p, const char *s, size_t n, pcre2_match_data *md,
                                  tok_span **out, size_t *n_out, size_t *cap);

typedef struct tok_pattern_iter {
    tok_regex_iter re;
    size_t at;
} tok_pattern_iter;

void tok_pattern_iter_init(tok_pattern_iter *it, const tok_pattern *p, const char *subject, size_t n);
int tok_pattern_iter_next(tok_pattern_iter *it, const tok_pattern *p, const char *subject, size_t n,
                          pcre2_match_data *md, size_t *s, size_t *e, anvil_status *st);

/* ------------------------------------------------------------ components */

enum tok_norm_kind {
    TOK_NORM_NFC,
    TOK_NORM_NFD,
    TOK_NORM_NFKC,
    TOK_NORM_NFKD,
    TOK_NORM_LOWERCASE,
    TOK_NORM_STRIP,
    TOK_NORM_STRIP_ACCENTS,
    TOK_NORM_REPLACE,
    TOK_NORM_PREPEND,
    TOK_NORM_BERT,
    TOK_NORM_NMT,
    TOK_NORM_BYTELEVEL,
};

/* One normalizer step (Sequences are flattened at load). */
typedef struct tok_norm {
    enum tok_norm_kind kind;
    int strip_left, strip_right;
    char *str; /* Prepend text / Replace content */
    size_t str_len;
    tok_pattern pat; /* Replace */
    int bert_clean, bert_chinese, bert_strip_accents, bert_lower;
} tok_norm;

enum tok_behavior {
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
};

enum tok_pre_kind {
    TOK_PRE_BYTELEVEL,
    TOK_PRE_SPLIT,
    TOK_PRE_METASPACE,
    TOK_PRE_DIGITS,
    TOK_PRE_WHITESPACE,       /* regex \w+|[^\w\s]+ kept */
    TOK_PRE_WHITESPACE_SPLIT, /* char::is_whitespace removed */
    TOK_PRE_PUNCTUATION,
    TOK_PRE_CHAR_DELIMITER,
};

enum tok_prepend_scheme { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };

/* One pre-tokenizer step (Sequences and BertPreTokenizer are flattened). */
typedef struct tok_pre {
    enum tok_pre_kind kind;
    int add_prefix_space, use_regex; /* ByteLevel */
    int raw_out;                      /* ByteLevel: leave bytes unmapped (the model maps them) */
    tok_pattern pat;                  /* Split */
    const tok_regex *re;              /* Split (&pat.re), ByteLevel, Whitespace: borrowed */
    enum tok_behavior behavior;
    int invert;
    char rep[4]; /* Metaspace replacement, UTF-8 */
    size_t rep_len;
    enum tok_prepend_scheme prepend;
    int split;
    int individual_digits;
    uint32_t delim;
} tok_pre;

enum tok_post_kind { TOK_POST_TEMPLATE, TOK_POST_BYTELEVEL, TOK_POST_ROBERTA, TOK_POST_BERT };

/* A post-processor step: for TemplateProcessing the single-sequence template,
 * as items: ids[off..off+n) of special tokens, or n == -1 for "the sequence". */
typedef struct tok_post_item {
    int32_t off, n;
} tok_post_item;

typedef struct tok_post {
    enum tok_post_kind kind;
    tok_post_item *items;
    int n_items;
    int32_t *ids;
    int n_ids;
} tok_post;

enum tok_dec_kind {
    TOK_DEC_BYTELEVEL,
    TOK_DEC_REPLACE,
    TOK_DEC_BYTEFALLBACK,
    TOK_DEC_FUSE,
    TOK_DEC_STRIP,
    TOK_DEC_METASPACE,
    TOK_DEC_WORDPIECE,
    TOK_DEC_BPE,
};

typedef struct tok_dec {
    enum tok_dec_kind kind;
    tok_pattern pat; /* Replace */
    char *str;       /* Replace content, WordPiece prefix, BPE suffix */
    size_t str_len;
    uint32_t ch; /* Strip content, Metaspace replacement */
    int start, stop;
    int drop_first; /* Metaspace: prepend_scheme != never */
    int cleanup;
} tok_dec;

/* The BPE model. */
typedef struct tok_bpe {
    tok_strmap vocab;
    size_t vocab_len; /* distinct keys (HF vocab.len()) */
    tok_pairmap merges;
    int32_t unk_id; /* -1: no unk token */
    int has_unk_token;
    char *unk_token;
    char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix (NULL: none) */
    size_t prefix_len, suffix_len;
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_ids[256];      /* "<0xXX>" tokens, -1 missing */
    int32_t ascii_ids[128];     /* single-char ASCII tokens (no prefix/suffix), -1 missing */
    int32_t bytelevel_ids[256]; /* token of the byte-level char of each byte */
    int bytelevel_ok;           /* all 256 byte-level chars are tokens */
    int meta_merge_ok;          /* no merge joins a non-'▁' left part to a '▁'-initial right part */
    int split_words;            /* cut words before a '▁' that follows another char */
} tok_bpe;

#define TOK_ID_SPECIAL 1     /* its string is a special added token's content */
#define TOK_ID_LSTRIP 2      /* flags of the added token with this id */
#define TOK_ID_RSTRIP 4
#define TOK_ID_SINGLE_WORD 8

/* An added token, in HF's AddedVocabulary order. */
typedef struct tok_added {
    uint32_t off, len; /* content in tok->added_pool */
    int32_t id;
    int special, lstrip, rstrip, normalized, single_word;
} tok_added;

/* A byte trie over added-token contents, for leftmost-longest matching. */
typedef struct tok_trie {
    uint32_t *first; /* node -> first edge */
    uint16_t *n_edges;
    int32_t *term;      /* node -> pattern index or -1 */
    uint8_t *edge_byte; /* edges sorted by byte within a node */
    uint32_t *edge_node;
    uint32_t n_nodes;
    uint8_t first_byte[32]; /* bitmap of bytes that can start a match */
    int n_first;            /* how many such bytes; 1: memchr finds candidates */
    uint8_t only_first;
    int32_t *pattern_id;    /* pattern -> added token id */
    uint32_t n_patterns;
} tok_trie;

enum tok_trunc_dir { TOK_DIR_RIGHT, TOK_DIR_LEFT };

struct anvil_tokenizer {
    tok_bpe bpe;

    /* id -> token string (added tokens first, as HF's id_to_token). */
    uint32_t n_ids; /* max id + 1 */
    const char **id_str; /* NULL = no token; points into bpe.vocab / added_pool */
    uint32_t *id_len;
    uint8_t *id_flags; /* TOK_ID_* */
    int64_t vocab_size;

    /* Added vocabulary. */
    tok_added *added;
    size_t n_added;
    tok_buf added_pool;
    tok_strmap added_map; /* content -> id */
    tok_strmap special_set; /* contents of special tokens */
    tok_trie trie_raw, trie_norm;
    tok_buf norm_pool; /* normalized contents for trie_norm */

    tok_norm *norms;
    int n_norms;
    tok_pre *pres;
    int n_pres;
    tok_post *posts;
    int n_posts;
    int has_post;
    tok_dec *decs;
    int n_decs;
    int has_decoder;

    uint32_t bl_char[256]; /* byte -> byte-level char */
    int16_t bl_byte[324];  /* byte-level char (< U+0144) -> byte, -1 if none */

    tok_regex bytelevel_re;  /* GPT-2's split regex, when a ByteLevel step uses it */
    tok_regex whitespace_re; /* \w+|[^\w\s]+ for the Whitespace pre-tokenizer */
    int have_bytelevel_re, have_whitespace_re;

    int has_truncation;
    size_t trunc_max;
    enum tok_trunc_dir trunc_dir;
    int has_padding, pad_fixed;
    size_t pad_len, pad_multiple;
    int32_t pad_id;
    enum tok_trunc_dir pad_dir;
};

/* ------------------------------------------------------------ per-call work */

/* A piece of text: bytes [off, off+len) of the input (in_input) or of the
 * work arena w->text (everything a step rewrote). zp counts its leading
 * bytes that map back to offset 0 of the input (HF's offsets_original().0
 * == 0 test in Metaspace prepend_scheme "first"). raw: the bytes still need
 * the byte-level char mapping (done by the model). */
typedef struct tok_piece {
    size_t off, len, zp;
    uint8_t raw, in_input;
} tok_piece;

/* The sub-piece [a, b) of p. */
static inline tok_piece tok_piece_sub(tok_piece p, size_t a, size_t b)
{
    tok_piece s = p;
    s.off = p.off + a;
    s.len = b - a;
    s.zp = p.zp > a ? (p.zp - a < b - a ? p.zp - a : b - a) : 0;
    return s;
}

typedef struct tok_vec_piece {
    tok_piece *p;
    size_t n, cap;
} tok_vec_piece;

/* A word-cache slot: one cache line holding the key and, for up to three
 * ids, the value too (longer values live in tok_work.cache_ids). */
#define TOK_CACHE_KEY 36
typedef struct tok_cache_slot {
    uint64_t hash; /* 0 = empty */
    uint16_t key_len, n_ids;
    uint32_t ids_off;
    int32_t ids[3];
    char key[TOK_CACHE_KEY];
} tok_cache_slot;

typedef struct tok_sym {
    int32_t id;
    int32_t prev, next;
    uint32_t len;
} tok_sym;

typedef struct tok_merge_ent {
    uint32_t rank, pos;
    int32_t new_id;
} tok_merge_ent;

#define TOK_MAX_STAGES 16

typedef struct tok_work {
    const anvil_tokenizer *tok;
    const char *input; /* the text being encoded (borrowed) */
    tok_buf text;      /* bytes of rewritten pieces */
    int32_t *ids;
    size_t n_ids, cap_ids;
    pcre2_match_data *md;
    tok_vec_piece stage[TOK_MAX_STAGES + 1];
    tok_span *spans[TOK_MAX_STAGES + 1];
    size_t n_spans[TOK_MAX_STAGES + 1], cap_spans[TOK_MAX_STAGES + 1];
    /* BPE */
    tok_sym *syms;
    size_t cap_syms;
    tok_merge_ent *heap;
    size_t cap_heap;
    tok_buf scratch; /* mapped words, prefixed chars */
    uint32_t *u32;   /* code point scratch for normalization */
    size_t cap_u32;
    /* word cache */
    tok_cache_slot *cache;
    size_t cache_hint; /* input bytes: sizes the first cache table */
    uint32_t cache_mask;
    size_t cache_n;
    int32_t *cache_ids;
    size_t cache_n_ids, cache_cap_ids;
} tok_work;

void tok_work_init(tok_work *w, const anvil_tokenizer *tok);
void tok_work_free(tok_work *w);
anvil_status tok_work_push_id(tok_work *w, int32_t id);
/* The bytes of a piece (valid until the arena grows). */
static inline const char *tok_piece_ptr(const tok_work *w, const tok_piece *p)
{
    return (p->in_input ? w->input : w->text.p) + p->off;
}

/* After a step wrote a piece's new bytes at the end of the arena: k bytes,
 * zp of them mapping to input offset 0. */
static inline void tok_piece_rewritten(tok_work *w, tok_piece *p, size_t k, size_t zp)
{
    p->off = w->text.len;
    p->len = k;
    p->zp = zp;
    p->in_input = 0;
    w->text.len += k;
}

/* ------------------------------------------------------------ functions between files */

/* tok_json.c: JSON helpers. */
anvil_status tok_json_load(const char *text, size_t len, json_t **root, const char **vocab, size_t *vocab_len,
                           const char **merges, size_t *merges_len);
anvil_status tok_json_parse_vocab(const char *s, size_t n, tok_strmap *vocab, int32_t *max_id);
/* Calls fn(a, a_len, b, b_len, ctx) for every merge, in order. */
anvil_status tok_json_parse_merges(const char *s, size_t n,
                                   anvil_status (*fn)(const char *a, size_t al, const char *b, size_t bl, void *ctx),
                                   void *ctx);
/* Field helpers over jansson objects: absent or null gives the default. */
anvil_status tok_json_bool(json_t *obj, const char *key, int def, int *out, const char *what);
anvil_status tok_json_str(json_t *obj, const char *key, const char **out, size_t *len, const char *what);
anvil_status tok_json_char(json_t *obj, const char *key, uint32_t def, uint32_t *out, const char *what);

/* tok_model_bpe.c */
anvil_status tok_bpe_load(tok_bpe *bpe, json_t *model, const char *vocab, size_t vocab_len, const char *merges,
                          size_t merges_len);
void tok_bpe_free(tok_bpe *bpe);
void tok_bpe_finish(tok_bpe *bpe, int model_sees_bytelevel, const char *meta_char, size_t meta_len);
anvil_status tok_bpe_tokenize(tok_work *w, const char *s, size_t n, int raw);

/* tok_added.c */
anvil_status tok_added_load(anvil_tokenizer *tok, json_t *list);
anvil_status tok_added_build_tries(anvil_tokenizer *tok);
void tok_added_free(anvil_tokenizer *tok);
/* Splits piece p by the trie's matches: token pieces become ids, text pieces
 * are passed to fn. */
anvil_status tok_added_split(tok_work *w, const tok_trie *trie, tok_piece p,
                             anvil_status (*fn)(tok_work *w, tok_piece p), anvil_status (*on_id)(tok_work *w, int32_t id));

/* tok_normalize.c */
anvil_status tok_norm_load(anvil_tokenizer *tok, json_t *j);
void tok_norm_free_all(anvil_tokenizer *tok);
/* Runs every normalizer step over piece *p (rewritten in place). */
anvil_status tok_normalize(tok_work *w, tok_piece *p);
/* Normalizes a standalone string (added-token contents) into out. */
anvil_status tok_normalize_string(const anvil_tokenizer *tok, const char *s, size_t n, tok_buf *out);

/* tok_pretok.c */
anvil_status tok_pre_load(anvil_tokenizer *tok, json_t *j);
void tok_pre_free_all(anvil_tokenizer *tok);
/* Runs the pre-tokenizer steps from `stage` and the model over piece p. */
anvil_status tok_pretokenize(tok_work *w, int stage, tok_piece p);

/* tok_post.c */
anvil_status tok_post_load(anvil_tokenizer *tok, json_t *j);
anvil_status tok_trunc_pad_load(anvil_tokenizer *tok, json_t *trunc, json_t *pad);
void tok_post_free_all(anvil_tokenizer *tok);
anvil_status tok_post_process(const anvil_tokenizer *tok, tok_work *w, int add_special);

/* tok_decode.c */
anvil_status tok_dec_load(anvil_tokenizer *tok, json_t *j);
void tok_dec_free_all(anvil_tokenizer *tok);
/* Decodes ids into out (appended, not NUL-terminated). *unstable (may be
 * NULL) is set when appending more ids could change the end of the text. */
anvil_status tok_decode_into(const anvil_tokenizer *tok, const int32_t *ids, size_t n, int skip_special, tok_buf *out,
                             int *unstable);

/* Byte-level alphabet (GPT-2's bytes_to_unicode). */
uint32_t tok_bytelevel_char(unsigned char b);
/* The byte of a byte-level char, or -1. */
int tok_bytelevel_byte(uint32_t cp);

#endif
