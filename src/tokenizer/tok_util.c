/* Buffers, hash maps, lossy UTF-8 and the byte-level alphabet of the tokenizer. */
#include <stdlib.h>
#include <string.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

/* ------------------------------------------------------------ buffers */

anvil_status tok_buf_reserve(tok_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return ANVIL_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        CHECK(cap < SIZE_MAX / 2, ANVIL_ERR_OOM, "buffer too large");
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    CHECK(p != NULL, ANVIL_ERR_OOM, "out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
    return ANVIL_OK;
}

anvil_status tok_buf_append(tok_buf *b, const void *data, size_t n)
{
    TRY(tok_buf_reserve(b, n));
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return ANVIL_OK;
}

void tok_buf_free(tok_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

anvil_status tok_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return ANVIL_OK;
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        CHECK(c < (SIZE_MAX / 2) / elem, ANVIL_ERR_OOM, "array too large");
        c *= 2;
    }
    void *q = realloc(*p, c * elem);
    CHECK(q != NULL, ANVIL_ERR_OOM, "out of memory (%zu bytes)", c * elem);
    *p = q;
    *cap = c;
    return ANVIL_OK;
}

/* ------------------------------------------------------------ lossy UTF-8 */

/* Bytes of a valid sequence starting with lead byte b, and the allowed
 * range of its second byte (Rust's from_utf8 rules). 0: invalid lead. */
static size_t utf8_need(unsigned char b, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF)
        return 2;
    if (b >= 0xE0 && b <= 0xEF) {
        if (b == 0xE0)
            *lo = 0xA0;
        if (b == 0xED)
            *hi = 0x9F;
        return 3;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        if (b == 0xF0)
            *lo = 0x90;
        if (b == 0xF4)
            *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* At s[i] (not ASCII): the length of the valid char there, or 0 with *bad
 * set to the bytes one U+FFFD replaces (Rust's maximal-subpart rule; an
 * incomplete sequence at the end is replaced as a whole). */
static size_t utf8_step(const unsigned char *s, size_t n, size_t i, size_t *bad)
{
    unsigned char lo, hi;
    size_t need = utf8_need(s[i], &lo, &hi);
    if (need == 0) {
        *bad = 1;
        return 0;
    }
    size_t k = 1;
    for (; k < need; k++) {
        if (i + k >= n) {
            *bad = n - i; /* incomplete at the end */
            return 0;
        }
        unsigned char c = s[i + k];
        int ok = (k == 1) ? (c >= lo && c <= hi) : ((c & 0xC0) == 0x80);
        if (!ok) {
            *bad = k;
            return 0;
        }
    }
    return need;
}

anvil_status tok_append_lossy(tok_buf *out, const unsigned char *s, size_t n)
{
    TRY(tok_buf_reserve(out, n * 3));
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            out->p[out->len++] = (char)s[i++];
            continue;
        }
        size_t bad = 0, l = utf8_step(s, n, i, &bad);
        if (l) {
            memcpy(out->p + out->len, s + i, l);
            out->len += l;
            i += l;
        } else {
            memcpy(out->p + out->len, "\xEF\xBF\xBD", 3);
            out->len += 3;
            i += bad;
        }
    }
    out->p[out->len] = 0;
    return ANVIL_OK;
}

size_t tok_utf8_incomplete_tail(const unsigned char *s, size_t n)
{
    /* Look at the last 3 bytes for the start of a sequence that runs past the end. */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        size_t i = n - back;
        unsigned char b = s[i];
        if (b < 0x80)
            return 0;
        if ((b & 0xC0) == 0x80)
            continue; /* continuation: keep looking for the lead */
        size_t bad = 0;
        size_t l = utf8_step(s, n, i, &bad);
        if (l == 0 && i + bad == n && bad == back) {
            unsigned char lo, hi;
            if (utf8_need(b, &lo, &hi) > back)
                return back;
        }
        return 0;
    }
    return 0;
}

/* ------------------------------------------------------------ string map */

uint64_t tok_hash(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}

anvil_status tok_strmap_init(tok_strmap *m, size_t expected)
{
    memset(m, 0, sizeof *m);
    size_t cap = 64;
    while (cap < expected * 2 + 2)
        cap *= 2;
    CHECK(cap <= (1u << 30), ANVIL_ERR_UNSUPPORTED, "map of %zu entries is too large", expected);
    m->slots = calloc(cap, sizeof *m->slots);
    CHECK(m->slots != NULL, ANVIL_ERR_OOM, "out of memory");
    m->mask = (uint32_t)(cap - 1);
    return ANVIL_OK;
}

void tok_strmap_free(tok_strmap *m)
{
    free(m->slots);
    free(m->recs);
    tok_buf_free(&m->pool);
    memset(m, 0, sizeof *m);
}

static tok_strrec *rec_at(const tok_strmap *m, uint64_t slot)
{
    return (tok_strrec *)(void *)(m->pool.p + (uint32_t)(slot - 1));
}

static anvil_status strmap_rehash(tok_strmap *m)
{
    size_t cap = ((size_t)m->mask + 1) * 2;
    CHECK(cap <= (1u << 30), ANVIL_ERR_UNSUPPORTED, "map too large");
    uint64_t *slots = calloc(cap, sizeof *slots);
    CHECK(slots != NULL, ANVIL_ERR_OOM, "out of memory");
    uint32_t mask = (uint32_t)(cap - 1);
    for (size_t e = 0; e < m->n; e++) {
        const tok_strrec *r = tok_strmap_rec(m, e);
        uint64_t h = tok_hash(r->key, r->len);
        uint32_t i = (uint32_t)h & mask;
        while (slots[i])
            i = (i + 1) & mask;
        slots[i] = (h & 0xFFFFFFFF00000000ull) | ((uint64_t)m->recs[e] + 1);
    }
    free(m->slots);
    m->slots = slots;
    m->mask = mask;
    return ANVIL_OK;
}

static int key_eq(const char *a, const char *b, size_t n)
{
    /* short keys dominate: avoid a call */
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len)
{
    if (!m->slots)
        return -1;
    return tok_strmap_get_hashed(m, key, len, tok_hash(key, len));
}

int32_t tok_strmap_get_hashed(const tok_strmap *m, const char *key, size_t len, uint64_t h)
{
    uint64_t tag = h & 0xFFFFFFFF00000000ull;
    uint32_t i = (uint32_t)h & m->mask;
    for (;;) {
        uint64_t s = m->slots[i];
        if (!s)
            return -1;
        if ((s & 0xFFFFFFFF00000000ull) == tag) {
            const tok_strrec *r = rec_at(m, s & 0xFFFFFFFFull);
            if (r->len == len && key_eq(r->key, key, len))
                return r->val;
        }
        i = (i + 1) & m->mask;
    }
}

anvil_status tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val)
{
    CHECK(len < UINT32_MAX / 2, ANVIL_ERR_UNSUPPORTED, "token too long");
    if ((m->n + 1) * 2 > (size_t)m->mask + 1)
        TRY(strmap_rehash(m));
    uint64_t h = tok_hash(key, len);
    uint64_t tag = h & 0xFFFFFFFF00000000ull;
    uint32_t i = (uint32_t)h & m->mask;
    for (;;) {
        uint64_t s = m->slots[i];
        if (!s)
            break;
        if ((s & 0xFFFFFFFF00000000ull) == tag) {
            tok_strrec *r = rec_at(m, s & 0xFFFFFFFFull);
            if (r->len == len && key_eq(r->key, key, len)) {
                r->val = val;
                return ANVIL_OK;
            }
        }
        i = (i + 1) & m->mask;
    }
    size_t need = (sizeof(tok_strrec) + len + 1 + 3) & ~(size_t)3;
    CHECK(m->pool.len + need < UINT32_MAX, ANVIL_ERR_UNSUPPORTED, "vocabulary too large");
    TRY(tok_grow((void **)&m->recs, &m->cap, m->n + 1, sizeof *m->recs));
    TRY(tok_buf_reserve(&m->pool, need));
    uint32_t off = (uint32_t)m->pool.len;
    tok_strrec *r = (tok_strrec *)(void *)(m->pool.p + off);
    r->len = (uint32_t)len;
    r->val = val;
    if (len)
        memcpy(r->key, key, len);
    memset(r->key + len, 0, need - sizeof(tok_strrec) - len);
    m->pool.len += need;
    m->recs[m->n++] = off;
    m->slots[i] = tag | ((uint64_t)off + 1);
    return ANVIL_OK;
}

/* ------------------------------------------------------------ pair map */

anvil_status tok_pairmap_init(tok_pairmap *m, size_t expected)
{
    memset(m, 0, sizeof *m);
    size_t cap = 64;
    while (cap * 3 < expected * 4 + 4) /* load factor <= 0.75 */
        cap *= 2;
    CHECK(cap <= (1u << 30), ANVIL_ERR_UNSUPPORTED, "too many merges (%zu)", expected);
    m->slots = malloc(cap * sizeof *m->slots);
    CHECK(m->slots, ANVIL_ERR_OOM, "out of memory");
    for (size_t i = 0; i < cap; i++)
        m->slots[i].key = UINT64_MAX;
    m->mask = (uint32_t)(cap - 1);
    return ANVIL_OK;
}

void tok_pairmap_free(tok_pairmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static anvil_status pairmap_grow(tok_pairmap *m)
{
    tok_pairmap bigger;
    TRY(tok_pairmap_init(&bigger, ((size_t)m->mask + 1) * 2));
    for (size_t i = 0; i <= m->mask; i++)
        if (m->slots[i].key != UINT64_MAX)
            (void)tok_pairmap_put(&bigger, (int32_t)(m->slots[i].key >> 32), (int32_t)(uint32_t)m->slots[i].key,
                                  m->slots[i].rank, m->slots[i].new_id);
    tok_pairmap_free(m);
    *m = bigger;
    return ANVIL_OK;
}

anvil_status tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    if ((m->n + 1) * 4 > ((size_t)m->mask + 1) * 3)
        TRY(pairmap_grow(m));
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = k * 0x9E3779B97F4A7C15ull;
    uint32_t i = (uint32_t)(h >> 32) & m->mask;
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != k)
        i = (i + 1) & m->mask;
    if (m->slots[i].key == UINT64_MAX)
        m->n++;
    m->slots[i] = (tok_pair_slot){k, rank, new_id};
    return ANVIL_OK;
}

/* ------------------------------------------------------------ byte-level alphabet */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 bytes to U+0100.. in byte order. */
uint32_t tok_bytelevel_char(unsigned char b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))
        return b;
    uint32_t n = 0;
    for (unsigned c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE)))
            n++;
    return 0x100 + n;
}

int tok_bytelevel_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp < 0x100 || cp >= 0x100 + 68)
        return -1;
    uint32_t n = 0;
    for (unsigned c = 0; c < 256; c++) {
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE))) {
            if (n == cp - 0x100)
                return (int)c;
            n++;
        }
    }
    return -1;
}
