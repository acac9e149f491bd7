/* Lookups in the generated Unicode tables and UTF-8 helpers. */
#include "tokenizer/tok_unicode.h"

#include <string.h>

int tok_uset_has(const tok_uset *s, uint32_t cp)
{
    uint32_t lo = 0, hi = s->n;
    if (hi == 0 || cp < s->r[0][0] || cp > s->r[hi - 1][1])
        return 0;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (cp < s->r[mid][0])
            hi = mid;
        else if (cp > s->r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

int tok_lowercase(uint32_t cp, uint32_t out[3])
{
    if (cp < 0x80) {
        out[0] = (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
        return 1;
    }
    uint32_t lo = 0, hi = tok_lowercase_map_n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        const tok_case_map *m = &tok_lowercase_map[mid];
        if (cp < m->cp) {
            hi = mid;
        } else if (cp > m->cp) {
            lo = mid + 1;
        } else {
            for (int i = 0; i < m->n; i++)
                out[i] = m->out[i];
            return m->n;
        }
    }
    out[0] = cp;
    return 1;
}

size_t tok_utf8_len(unsigned char b)
{
    if (b < 0x80)
        return 1;
    if ((b & 0xE0) == 0xC0)
        return 2;
    if ((b & 0xF0) == 0xE0)
        return 3;
    if ((b & 0xF8) == 0xF0)
        return 4;
    return 1;
}

uint32_t tok_utf8_decode(const char *s, size_t n, size_t *len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t l = tok_utf8_len(u[0]);
    if (l > n)
        l = 1;
    *len = l;
    switch (l) {
    case 1:
        return u[0];
    case 2:
        return ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
    case 3:
        return ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
    default:
        return ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) | ((uint32_t)(u[2] & 0x3F) << 6) |
               (u[3] & 0x3F);
    }
}

size_t tok_utf8_encode(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

int tok_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* ASCII runs eight bytes at a time: most text is ASCII. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, u + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        unsigned char b = u[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t l;
        unsigned char lo = 0x80, hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF) {
            l = 2;
        } else if (b >= 0xE0 && b <= 0xEF) {
            l = 3;
            if (b == 0xE0)
                lo = 0xA0;
            if (b == 0xED)
                hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            l = 4;
            if (b == 0xF0)
                lo = 0x90;
            if (b == 0xF4)
                hi = 0x8F;
        } else {
            return 0;
        }
        if (i + l > n)
            return 0;
        if (u[i + 1] < lo || u[i + 1] > hi)
            return 0;
        for (size_t k = 2; k < l; k++)
            if ((u[i + k] & 0xC0) != 0x80)
                return 0;
        i += l;
    }
    return 1;
}

int tok_utf8_any_in(const char *s, size_t n, const tok_uset *set)
{
    if (set->n == 0)
        return 0;
    uint32_t min = set->r[0][0];
    size_t i = 0;
    while (i < n) {
        if (min >= 0x80) { /* ASCII cannot match: skip it eight bytes at a time */
            while (i + 8 <= n) {
                uint64_t x;
                memcpy(&x, s + i, 8);
                if (x & 0x8080808080808080ull)
                    break;
                i += 8;
            }
            if (i >= n)
                break;
        }
        unsigned char b = (unsigned char)s[i];
        if (b < 0x80) {
            if (b >= min && tok_uset_has(set, b))
                return 1;
            i++;
            continue;
        }
        size_t l;
        uint32_t cp = tok_utf8_decode(s + i, n - i, &l);
        if (cp >= min && tok_uset_has(set, cp))
            return 1;
        i += l;
    }
    return 0;
}
