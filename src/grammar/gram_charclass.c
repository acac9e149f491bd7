/*
 * What the regex and GBNF front ends share: UTF-8 decoding of the pattern,
 * escapes, bracket classes ([a-z\d], [^"]), and the element of a set of
 * code points, with JSON escaping when the characters go inside a JSON
 * string (a schema's pattern: '"' must be written \" there).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/gram_charclass.h"

anvil_status gram_cp_next(gram_src *s, uint32_t *cp)
{
    CHECK(s->i < s->n, ANVIL_ERR_INVALID_ARG, "%s: unexpected end at byte %zu", s->what, s->i);
    const unsigned char *p = (const unsigned char *)s->p + s->i;
    size_t left = s->n - s->i;
    uint32_t c = p[0];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    CHECK(len > 0 && (size_t)len <= left, ANVIL_ERR_INVALID_ARG, "%s: invalid UTF-8 at byte %zu", s->what, s->i);
    if (len > 1) {
        c &= 0x3F >> (len - 1);
        for (int k = 1; k < len; k++) {
            CHECK((p[k] & 0xC0) == 0x80, ANVIL_ERR_INVALID_ARG, "%s: invalid UTF-8 at byte %zu", s->what, s->i);
            c = c << 6 | (p[k] & 0x3F);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        CHECK(c >= min[len] && c <= 0x10FFFF && (c < 0xD800 || c > 0xDFFF), ANVIL_ERR_INVALID_ARG,
              "%s: invalid UTF-8 at byte %zu", s->what, s->i);
    }
    s->i += (size_t)len;
    *cp = c;
    return ANVIL_OK;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static anvil_status hex(gram_src *s, int digits, uint32_t *out)
{
    uint32_t v = 0;
    for (int k = 0; k < digits; k++) {
        CHECK(s->i < s->n && hexval(s->p[s->i]) >= 0, ANVIL_ERR_INVALID_ARG,
              "%s: expected %d hex digits at byte %zu", s->what, digits, s->i);
        v = v * 16 + (uint32_t)hexval(s->p[s->i++]);
    }
    CHECK(v <= 0x10FFFF && (v < 0xD800 || v > 0xDFFF), ANVIL_ERR_INVALID_ARG,
          "%s: \\u%X is not a Unicode scalar value", s->what, (unsigned)v);
    *out = v;
    return ANVIL_OK;
}

static anvil_status add_shorthand(gram_ranges *rs, char c)
{
    gram_ranges t = {0};
    anvil_status st = ANVIL_OK;
    switch (c | 0x20) {
    case 'd': st = gram_ranges_add(&t, '0', '9'); break;
    case 'w':
        if ((st = gram_ranges_add(&t, '0', '9')) == ANVIL_OK && (st = gram_ranges_add(&t, 'A', 'Z')) == ANVIL_OK &&
            (st = gram_ranges_add(&t, 'a', 'z')) == ANVIL_OK)
            st = gram_ranges_add(&t, '_', '_');
        break;
    default: /* s */
        if ((st = gram_ranges_add(&t, '\t', '\r')) == ANVIL_OK)
            st = gram_ranges_add(&t, ' ', ' ');
        break;
    }
    if (st == ANVIL_OK && c >= 'A' && c <= 'Z')
        st = gram_ranges_negate(&t);
    for (int i = 0; i < t.n && st == ANVIL_OK; i++)
        st = gram_ranges_add(rs, t.r[i][0], t.r[i][1]);
    gram_ranges_free(&t);
    return st;
}

anvil_status gram_escape(gram_src *s, int regex, gram_ranges *set, uint32_t *cp)
{
    CHECK(s->i < s->n, ANVIL_ERR_INVALID_ARG, "%s: a lone backslash at the end", s->what);
    char c = s->p[s->i++];
    *cp = UINT32_MAX;
    switch (c) {
    case 'n': *cp = '\n'; return ANVIL_OK;
    case 't': *cp = '\t'; return ANVIL_OK;
    case 'r': *cp = '\r'; return ANVIL_OK;
    case 'f': *cp = '\f'; return ANVIL_OK;
    case 'v': *cp = '\v'; return ANVIL_OK;
    case '0': *cp = 0; return ANVIL_OK;
    case 'x': return hex(s, 2, cp);
    case 'u':
        if (s->i < s->n && s->p[s->i] == '{') {
            s->i++;
            uint32_t v = 0;
            int nd = 0;
            while (s->i < s->n && hexval(s->p[s->i]) >= 0 && nd < 6) {
                v = v * 16 + (uint32_t)hexval(s->p[s->i++]);
                nd++;
            }
            CHECK(nd > 0 && s->i < s->n && s->p[s->i] == '}' && v <= 0x10FFFF && (v < 0xD800 || v > 0xDFFF),
                  ANVIL_ERR_INVALID_ARG, "%s: bad \\u{...} escape", s->what);
            s->i++;
            *cp = v;
            return ANVIL_OK;
        }
        return hex(s, 4, cp);
    case 'U': return hex(s, 8, cp);
    default: break;
    }
    if (regex) {
        if (set && (c == 'd' || c == 'D' || c == 'w' || c == 'W' || c == 's' || c == 'S'))
            return add_shorthand(set, c);
        CHECK(!(c >= '1' && c <= '9') && c != 'k', ANVIL_ERR_UNSUPPORTED,
              "%s: backreferences (\\%c) are not supported", s->what, c);
        CHECK(c != 'b' && c != 'B' && c != 'A' && c != 'z' && c != 'Z' && c != 'G', ANVIL_ERR_UNSUPPORTED,
              "%s: the assertion \\%c is not supported", s->what, c);
        CHECK(c != 'p' && c != 'P', ANVIL_ERR_UNSUPPORTED, "%s: Unicode properties (\\%c{...}) are not supported",
              s->what, c);
    }
    CHECK(!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')), ANVIL_ERR_INVALID_ARG,
          "%s: unknown escape \\%c at byte %zu", s->what, c, s->i - 1);
    s->i--;
    return gram_cp_next(s, cp); /* \. \[ \\ \" and any other symbol: itself */
}

anvil_status gram_bracket(gram_src *s, int regex, gram_ranges *rs)
{
    /* at the byte after '[' */
    int neg = 0;
    if (s->i < s->n && s->p[s->i] == '^') {
        neg = 1;
        s->i++;
    }
    int first = 1;
    for (;;) {
        CHECK(s->i < s->n, ANVIL_ERR_INVALID_ARG, "%s: unterminated [ class", s->what);
        char c = s->p[s->i];
        if (c == ']' && !first) {
            s->i++;
            break;
        }
        first = 0;
        CHECK(!(regex && c == '[' && s->i + 1 < s->n && s->p[s->i + 1] == ':'), ANVIL_ERR_UNSUPPORTED,
              "%s: POSIX classes ([:alpha:]) are not supported", s->what);
        uint32_t lo;
        if (c == '\\') {
            s->i++;
            TRY(gram_escape(s, regex, rs, &lo));
            if (lo == UINT32_MAX)
                continue; /* a shorthand added itself */
        } else {
            TRY(gram_cp_next(s, &lo));
        }
        uint32_t hi = lo;
        if (s->i + 1 < s->n && s->p[s->i] == '-' && s->p[s->i + 1] != ']') {
            s->i++;
            if (s->p[s->i] == '\\') {
                s->i++;
                TRY(gram_escape(s, regex, NULL, &hi));
            } else {
                TRY(gram_cp_next(s, &hi));
            }
            CHECK(hi >= lo, ANVIL_ERR_INVALID_ARG, "%s: range out of order in [ class", s->what);
        }
        TRY(gram_ranges_add(rs, lo, hi));
    }
    if (neg)
        TRY(gram_ranges_negate(rs));
    return ANVIL_OK;
}

/* The JSON spelling of a character that cannot appear raw in a string. */
static int json_escape_of(uint32_t c, char *buf)
{
    switch (c) {
    case '"': memcpy(buf, "\\\"", 2); return 2;
    case '\\': memcpy(buf, "\\\\", 2); return 2;
    case '\n': memcpy(buf, "\\n", 2); return 2;
    case '\t': memcpy(buf, "\\t", 2); return 2;
    case '\r': memcpy(buf, "\\r", 2); return 2;
    case '\b': memcpy(buf, "\\b", 2); return 2;
    case '\f': memcpy(buf, "\\f", 2); return 2;
    default: snprintf(buf, 8, "\\u%04x", (unsigned)c); return 6;
    }
}

anvil_status gram_set_elem(gram_builder *b, gram_ranges *rs, int json, int32_t *elem)
{
    gram_ranges_normalize(rs);
    if (!json)
        return gb_utf8_ranges(b, rs, elem);
    /* split off '"', '\\' and control characters: they go in escaped */
    gram_ranges raw = {0};
    anvil_status st = ANVIL_OK;
    int32_t r = -1;
    for (int i = 0; i < rs->n && st == ANVIL_OK; i++)
        for (uint32_t c = rs->r[i][0]; c <= rs->r[i][1] && st == ANVIL_OK; c++) {
            if (c >= 0x20 && c != '"' && c != '\\') {
                /* the rest of this range, up to the next special character */
                uint32_t e = rs->r[i][1];
                if (c <= '"' && e >= '"')
                    e = '"' - 1;
                else if (c <= '\\' && e >= '\\')
                    e = '\\' - 1;
                st = gram_ranges_add(&raw, c, e);
                c = e;
                continue;
            }
            char buf[8];
            int n = json_escape_of(c, buf);
            if (r < 0 && (st = gb_rule_new(b, NULL, &r)) != ANVIL_OK)
                break;
            if ((st = gb_alt(b, r)) == ANVIL_OK)
                st = gb_lit(b, r, buf, (size_t)n);
        }
    if (st == ANVIL_OK && raw.n > 0) {
        int32_t e;
        st = gb_utf8_ranges(b, &raw, &e);
        if (st == ANVIL_OK && r < 0)
            *elem = e;
        else if (st == ANVIL_OK && (st = gb_alt(b, r)) == ANVIL_OK)
            st = gb_elem(b, r, e);
    }
    if (st == ANVIL_OK && r >= 0)
        *elem = GRAM_REF(r);
    CHECK_GOTO(st != ANVIL_OK || r >= 0 || raw.n > 0, ANVIL_ERR_INVALID_ARG, done, "a class that matches nothing");
done:
    gram_ranges_free(&raw);
    return st;
}

anvil_status gram_cp_elem(gram_builder *b, uint32_t cp, int json, int32_t *elem)
{
    gram_ranges rs = {0};
    anvil_status st = gram_ranges_add(&rs, cp, cp);
    if (st == ANVIL_OK)
        st = gram_set_elem(b, &rs, json, elem);
    gram_ranges_free(&rs);
    return st;
}
