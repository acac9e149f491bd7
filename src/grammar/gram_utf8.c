/*
 * Character classes over code points, compiled to UTF-8 byte sequences
 * (the matcher works on bytes: a token may end inside a character). A
 * range is split until each piece is one sequence of byte ranges, as RE2
 * and Rust's utf8-ranges do: [U+0080, U+07FF] is [C2-DF][80-BF], and so on.
 * Only well-formed UTF-8 comes out: no surrogates, no overlong forms.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/gram_internal.h"

anvil_status gram_ranges_add(gram_ranges *rs, uint32_t lo, uint32_t hi)
{
    if (lo > hi)
        return ANVIL_OK;
    if (rs->n == rs->cap) {
        int c = rs->cap ? rs->cap * 2 : 8;
        void *q = realloc(rs->r, (size_t)c * sizeof *rs->r);
        CHECK(q, ANVIL_ERR_OOM, "out of memory");
        rs->r = q;
        rs->cap = c;
    }
    rs->r[rs->n][0] = lo;
    rs->r[rs->n][1] = hi > 0x10FFFF ? 0x10FFFF : hi;
    rs->n++;
    return ANVIL_OK;
}

static int range_cmp(const void *a, const void *b)
{
    const uint32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

void gram_ranges_normalize(gram_ranges *rs)
{
    if (rs->n == 0)
        return;
    qsort(rs->r, (size_t)rs->n, sizeof *rs->r, range_cmp);
    int k = 0;
    for (int i = 1; i < rs->n; i++) {
        if (rs->r[i][0] <= rs->r[k][1] + 1) {
            if (rs->r[i][1] > rs->r[k][1])
                rs->r[k][1] = rs->r[i][1];
        } else {
            k++;
            rs->r[k][0] = rs->r[i][0];
            rs->r[k][1] = rs->r[i][1];
        }
    }
    rs->n = k + 1;
}

anvil_status gram_ranges_negate(gram_ranges *rs)
{
    gram_ranges_normalize(rs);
    gram_ranges out = {0};
    uint32_t next = 0;
    anvil_status st = ANVIL_OK;
    for (int i = 0; i < rs->n && st == ANVIL_OK; i++) {
        if (rs->r[i][0] > next)
            st = gram_ranges_add(&out, next, rs->r[i][0] - 1);
        next = rs->r[i][1] + 1;
    }
    if (st == ANVIL_OK && next <= 0x10FFFF)
        st = gram_ranges_add(&out, next, 0x10FFFF);
    if (st != ANVIL_OK) {
        gram_ranges_free(&out);
        return st;
    }
    gram_ranges_free(rs);
    *rs = out;
    return ANVIL_OK;
}

void gram_ranges_free(gram_ranges *rs)
{
    free(rs->r);
    memset(rs, 0, sizeof *rs);
}

int gram_utf8_encode(uint32_t c, char *buf)
{
    unsigned char *o = (unsigned char *)buf;
    if (c < 0x80) {
        o[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (unsigned char)(0xC0 | (c >> 6));
        o[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (c >> 12));
        o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (c >> 18));
    o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

static int enc_len(uint32_t c)
{
    return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
}

typedef struct seq_ctx {
    gram_builder *b;
    int32_t rule;        /* the rule collecting alternatives (-1 until needed) */
    uint32_t ascii[8];   /* one-byte characters, merged into one class */
    int n_alts;
} seq_ctx;

/* Adds [s, e] (same encoded length) as one or more byte-range sequences. */
static anvil_status add_seq(seq_ctx *x, uint32_t s, uint32_t e, int depth)
{
    CHECK(depth < 16, ANVIL_ERR_INVALID_ARG, "internal: UTF-8 split too deep");
    int n = enc_len(s);
    if (n == 1) {
        for (uint32_t c = s; c <= e; c++)
            gram_class_add(x->ascii, c);
        return ANVIL_OK;
    }
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((s & ~m) != (e & ~m)) {
            if ((s & m) != 0) {
                TRY(add_seq(x, s, s | m, depth + 1));
                return add_seq(x, (s | m) + 1, e, depth + 1);
            }
            if ((e & m) != m) {
                TRY(add_seq(x, s, (e & ~m) - 1, depth + 1));
                return add_seq(x, e & ~m, e, depth + 1);
            }
        }
    }
    char sb[4], eb[4];
    gram_utf8_encode(s, sb);
    gram_utf8_encode(e, eb);
    if (x->rule < 0)
        TRY(gb_rule_new(x->b, NULL, &x->rule));
    TRY(gb_alt(x->b, x->rule));
    for (int k = 0; k < n; k++) {
        uint32_t set[8] = {0};
        for (unsigned c = (unsigned char)sb[k]; c <= (unsigned char)eb[k]; c++)
            gram_class_add(set, c);
        int32_t el;
        TRY(gb_class(x->b, set, &el));
        TRY(gb_elem(x->b, x->rule, el));
    }
    x->n_alts++;
    return ANVIL_OK;
}

anvil_status gb_utf8_ranges(gram_builder *b, gram_ranges *rs, int32_t *elem)
{
    gram_ranges_normalize(rs);
    seq_ctx x;
    memset(&x, 0, sizeof x);
    x.b = b;
    x.rule = -1;
    static const uint32_t bounds[][2] = {{0, 0x7F}, {0x80, 0x7FF}, {0x800, 0xD7FF}, {0xE000, 0xFFFF},
                                         {0x10000, 0x10FFFF}};
    for (int i = 0; i < rs->n; i++)
        for (int k = 0; k < 5; k++) {
            uint32_t lo = rs->r[i][0] > bounds[k][0] ? rs->r[i][0] : bounds[k][0];
            uint32_t hi = rs->r[i][1] < bounds[k][1] ? rs->r[i][1] : bounds[k][1];
            if (lo <= hi)
                TRY(add_seq(&x, lo, hi, 0));
        }
    int has_ascii = 0;
    for (int k = 0; k < 8; k++)
        has_ascii |= x.ascii[k] != 0;
    CHECK(has_ascii || x.n_alts > 0, ANVIL_ERR_INVALID_ARG, "a character class that matches nothing");
    int32_t ascii_el = 0;
    if (has_ascii)
        TRY(gb_class(b, x.ascii, &ascii_el));
    if (x.n_alts == 0) {
        *elem = ascii_el;
        return ANVIL_OK;
    }
    if (has_ascii) {
        TRY(gb_alt(b, x.rule));
        TRY(gb_elem(b, x.rule, ascii_el));
    }
    *elem = GRAM_REF(x.rule);
    return ANVIL_OK;
}
