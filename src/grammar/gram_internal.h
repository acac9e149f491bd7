/*
 * The grammar engine's internals. A map:
 *
 *   front ends           gram_ebnf.c (GBNF), gram_regex.c, gram_json_schema.c,
 *                        grammar.c (choice, json_object, the entry points)
 *        │ build rules through gram_builder (gram_build.c; gram_utf8.c turns
 *        ▼ code point ranges into byte sequences)
 *   gram                 one flat grammar: rules of alternatives of elements,
 *        │               each element a byte class or a rule reference
 *        ▼
 *   gram_dfa             sets of parse stacks as states of a lazily built
 *        │               DFA over bytes (gram_dfa.c): a state is every way
 *        │               the output so far can continue
 *        ▼
 *   mask cache           per stack set cut to its top frames: the tokens
 *                        accepted whatever lies below, and the few that need
 *                        the frames below (gram_mask.c, over the vocabulary's
 *                        byte trie in gram_vocab.c); gram_matcher.c applies it.
 *
 * A stack is an array of positions in gram.elems, bottom first. The top is
 * the element to match next (always a byte class once expanded); the frames
 * below are where to continue when the rule above ends. GRAM_BOTTOM under a
 * stack marks a cut stack (the frames below are unknown): returning onto it
 * sets the state's `popped` flag.
 */
#ifndef ANVIL_GRAMMAR_INTERNAL_H
#define ANVIL_GRAMMAR_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "anvil/grammar.h"

#define GRAM_END INT32_MIN           /* ends an alternative */
#define GRAM_BOTTOM (INT32_MIN + 1)  /* under a cut stack */
#define GRAM_REF(r) (-((int32_t)(r)) - 1)
#define GRAM_IS_REF(e) ((e) < 0 && (e) > GRAM_BOTTOM)
#define GRAM_REF_RULE(e) (-(e) - 1)

static inline int gram_class_has(const uint32_t *set, unsigned b)
{
    return (set[b >> 5] >> (b & 31)) & 1;
}
static inline void gram_class_add(uint32_t *set, unsigned b)
{
    set[b >> 5] |= 1u << (b & 31);
}

/* ------------------------------------------------------------ the grammar */

typedef struct gram {
    int32_t *elems;     /* (n_elems) class id >= 0, GRAM_REF(rule), or GRAM_END */
    int64_t n_elems;
    int32_t *alt_start; /* (n_alts) position of each alternative's first element */
    int32_t *rule_alt0; /* (n_rules + 1) rule r's alternatives: alt_start[rule_alt0[r] .. rule_alt0[r+1]) */
    int32_t n_rules;
    uint32_t (*classes)[8]; /* (n_classes) 256-bit byte sets */
    int32_t n_classes;
    int32_t start;      /* position of the reference to the root rule (the start stack) */
} gram;

void gram_free(gram *g);

/* ------------------------------------------------------------ building */

typedef struct gb_seq {
    int32_t *e;
    int32_t n, cap;
} gb_seq;

typedef struct gb_rule {
    char *name; /* for messages */
    gb_seq *alts;
    int32_t n_alts, cap_alts;
    int defined; /* EBNF: a definition was seen (refs may come first) */
} gb_rule;

typedef struct gram_builder {
    anvil_grammar_options o;
    gb_rule *rules;
    int32_t n_rules, cap_rules;
    uint32_t (*classes)[8];
    int32_t n_classes, cap_classes;
    int32_t byte_class[256]; /* class id of each single byte, -1 if not made yet */
    int32_t any_class;       /* [\x00-\xFF], -1 if not made yet */
    int64_t n_elems;
} gram_builder;

anvil_status gb_init(gram_builder *b, const anvil_grammar_options *o);
void gb_free(gram_builder *b);
/* A new rule with no alternatives; name is copied (NULL: "rule <id>"). */
anvil_status gb_rule_new(gram_builder *b, const char *name, int32_t *id);
/* Starts a new (empty) alternative of rule r: elements go to it. */
anvil_status gb_alt(gram_builder *b, int32_t r);
/* Appends an element (class id or GRAM_REF) to r's last alternative. */
anvil_status gb_elem(gram_builder *b, int32_t r, int32_t e);
/* The element of a byte set (a class id, shared between equal singletons). */
anvil_status gb_class(gram_builder *b, const uint32_t set[8], int32_t *e);
anvil_status gb_byte(gram_builder *b, int32_t r, unsigned char c);
anvil_status gb_lit(gram_builder *b, int32_t r, const char *s, size_t n);
/* A rule matching elem repeated min..max times (max -1: unbounded); *out is its GRAM_REF. */
anvil_status gb_repeat(gram_builder *b, int32_t elem, int min, int max, const char *what, int32_t *out);
/* Wraps the elements e[0..n) as one element (itself when n == 1). */
anvil_status gb_group(gram_builder *b, const int32_t *e, int n, int32_t *out);
/* A set of code points as ranges (gram_utf8.c). */
typedef struct gram_ranges {
    uint32_t (*r)[2];
    int n, cap;
} gram_ranges;
anvil_status gram_ranges_add(gram_ranges *rs, uint32_t lo, uint32_t hi);
void gram_ranges_normalize(gram_ranges *rs); /* sorted, merged */
anvil_status gram_ranges_negate(gram_ranges *rs); /* every other scalar value */
void gram_ranges_free(gram_ranges *rs);
/* An element matching one character of rs, as UTF-8 bytes (surrogates never match). */
anvil_status gb_utf8_ranges(gram_builder *b, gram_ranges *rs, int32_t *elem);
/* Appends the UTF-8 bytes of code point c to buf (4 bytes room); returns their count. */
int gram_utf8_encode(uint32_t c, char *buf);
/* A rule matching exactly one of count literal strings (a trie of rules; gram_literals.c). */
anvil_status gb_literals(gram_builder *b, const char *const *s, const size_t *n, int count, int32_t *rule);
/* Checks the grammar (every rule defined and non-empty, no left recursion
 * that grows the stack) and flattens it; root is the start rule. */
anvil_status gb_finish(gram_builder *b, int32_t root, gram *out);

/* ------------------------------------------------------------ vocabulary */

typedef struct gram_tnode {
    int32_t end;     /* index past this node's subtree (children are i+1 .. end) */
    int32_t lo, hi;  /* the subtree's tokens: vocab.sorted[lo .. hi) */
    int32_t n_here;  /* the first n_here of them end at this node */
    uint8_t byte;    /* the byte that leads here from the parent */
} gram_tnode;

struct anvil_grammar_vocab {
    int32_t n;            /* tokens (mask bits) */
    char *pool;           /* token bytes */
    uint32_t *off, *len;  /* (n) token i is pool[off[i] .. off[i]+len[i]); len 0: never allowed */
    int32_t *stop;        /* stop ids */
    int n_stop;
    int32_t *sorted;      /* allowed ids by their bytes (lexicographic) */
    int32_t n_sorted;
    gram_tnode *trie;     /* preorder; node 0 is the empty prefix */
    int32_t n_trie;
    int32_t max_len;      /* longest token in bytes */
};

/* ------------------------------------------------------------ DFA over stack sets */

typedef struct gram_dstate {
    size_t first;   /* its stacks: stk[first .. first + n) */
    int32_t n;
    uint8_t accept; /* an empty stack: the output may end here */
    uint8_t popped; /* a cut stack returned onto GRAM_BOTTOM */
    uint8_t deep;   /* a parse was dropped for going past max_depth */
    uint64_t hash;
} gram_dstate;

typedef struct gram_stk {
    size_t off;
    int32_t len;
} gram_stk;

typedef struct gram_dfa {
    const gram *g;
    int max_depth, max_stacks;
    gram_dstate *st;
    int32_t n_st, cap_st;
    int32_t *trans;     /* (n_st, 256) next state, -1 not computed yet; state 0 is dead */
    int32_t *data;      /* all stacks' positions */
    size_t n_data, cap_data;
    gram_stk *stk;
    size_t n_stk, cap_stk;
    int32_t *ht;        /* state hash table */
    size_t ht_cap;
    /* scratch of one step */
    int32_t *work;      /* stacks to expand: len, positions... */
    size_t n_work, cap_work;
    int32_t *seen;      /* stacks seen in this step: len, positions... */
    size_t n_seen, cap_seen;
    uint32_t *seen_ht;  /* offsets into seen + 1; 0 empty */
    size_t seen_cap, n_seen_ent;
    gram_stk *out;      /* class-topped stacks found (in seen) */
    size_t n_out, cap_out;
} gram_dfa;

void gram_dfa_init(gram_dfa *d, const gram *g, int max_depth, int max_stacks);
void gram_dfa_reset(gram_dfa *d);
void gram_dfa_free(gram_dfa *d);
/* The state of the given stacks (each is expanded first: a stack whose top
 * is not a byte class becomes the stacks it leads to). */
anvil_status gram_dfa_start(gram_dfa *d, const int32_t *const *stacks, const int32_t *lens, int n, int accept,
                            int32_t *state);
/* The state after byte c (0: dead). */
anvil_status gram_dfa_step(gram_dfa *d, int32_t s, uint8_t c, int32_t *next);
static inline int gram_dfa_live(const gram_dfa *d, int32_t s)
{
    return d->st[s].n > 0;
}

/* ------------------------------------------------------------ compiled grammar */

typedef struct gram_mask_entry gram_mask_entry;

#define GRAM_MAX_PENDING 64 /* entries computed at once, beyond which a miss computes its own */

struct anvil_grammar {
    gram g;
    const anvil_grammar_vocab *v;
    anvil_grammar_options o;
    atomic_int refs;      /* anvil_grammar_retain / anvil_grammar_free (a server's cache shares one) */
    pthread_mutex_t lock; /* guards the cache below */
    pthread_cond_t done;  /* an entry being computed is in the cache (or given up) */
    gram_mask_entry **ht; /* mask cache: open addressing by key hash */
    size_t ht_cap, n_entries;
    int64_t cache_bytes;
    /* The keys whose entries threads are computing now (gram_mask_fill):
     * a thread that misses on one of them waits for it instead of walking
     * the trie for the same key (the rows of a batch tend to reach a new
     * state together). Each points at the computing matcher's key. */
    struct gram_pending {
        const int32_t *key;
        int32_t n_key;
        uint64_t hash;
    } pending[GRAM_MAX_PENDING];
    int n_pending;
};

/* Builds the grammar object around a finished builder (grammar.c). */
anvil_status gram_compiled_new(const anvil_grammar_vocab *v, const anvil_grammar_options *o, gram_builder *b,
                               int32_t root, anvil_grammar **out);

/* Mask cache (gram_mask.c). */
struct gram_mask_entry {
    uint64_t hash;
    int32_t *key; /* the cut stack set: n_key ints */
    int32_t n_key;
    int32_t n_acc;    /* accepted ids */
    int32_t *acc;     /* when n_acc is small: the ids; else NULL and bits */
    uint32_t *bits;
    int32_t n_unc;    /* uncertain tokens, as indices into vocab.sorted (ascending) */
    int32_t *unc;
};
void gram_mask_cache_free(anvil_grammar *g);

/* The matcher's use of the mask machinery. */
struct anvil_grammar_matcher {
    const anvil_grammar *g;
    gram_dfa dfa;      /* full stacks: the matcher's states */
    int32_t state;
    int done;
    int32_t *cut;      /* scratch: the cut key */
    size_t cap_cut;
    int32_t *depth_st; /* scratch: states along a token (max_len + 1) */
};

anvil_status gram_mask_fill(anvil_grammar_matcher *m, uint32_t *words);

/* Front ends: each adds its rules to b and returns the root rule. */
anvil_status gram_ebnf_parse(gram_builder *b, const char *text, size_t len, const char *root_name, int32_t *root);
anvil_status gram_regex_parse(gram_builder *b, const char *re, size_t len, int json_escape, int32_t *elem);
anvil_status gram_json_schema(gram_builder *b, const char *schema, size_t len, int32_t *root);
anvil_status gram_json_any_object(gram_builder *b, int32_t *root);

#endif
