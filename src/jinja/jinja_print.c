/*
 * str() and repr() of values, byte for byte as CPython prints them: floats
 * with the shortest round-trip digits, strings with CPython's choice of
 * quotes and escapes, containers recursively.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "jinja/jinja_internal.h"

/* repr(float): the shortest digits that round-trip, laid out as CPython's
 * float_repr_style 'short' does (exponent form below 1e-4 and from 1e16). */
void jpy_float_repr(double f, char out[32])
{
    if (isnan(f)) {
        strcpy(out, "nan");
        return;
    }
    if (isinf(f)) {
        strcpy(out, f < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f)
            break;
    }
    /* tmp: [-]d.ddde[+-]xx */
    char digits[24];
    int nd = 0;
    const char *p = tmp;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9')
            digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int decpt = exp10 + 1; /* digits d1 d2 ... with the point after decpt of them */
    char *o = out;
    if (neg)
        *o++ = '-';
    if (decpt > 16 || decpt < -3) {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, (size_t)nd - 1);
            o += nd - 1;
        }
        snprintf(o, 8, "e%c%02d", exp10 < 0 ? '-' : '+', (exp10 < 0 ? -exp10 : exp10) % 1000);
        return;
    }
    if (decpt <= 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -decpt; i++)
            *o++ = '0';
        memcpy(o, digits, (size_t)nd);
        o += nd;
    } else if (decpt >= nd) {
        memcpy(o, digits, (size_t)nd);
        o += nd;
        for (int i = nd; i < decpt; i++)
            *o++ = '0';
        *o++ = '.';
        *o++ = '0';
    } else {
        memcpy(o, digits, (size_t)decpt);
        o += decpt;
        *o++ = '.';
        memcpy(o, digits + decpt, (size_t)(nd - decpt));
        o += nd - decpt;
    }
    *o = '\0';
}

/* str.isprintable() of one code point */
static int jpy_isprintable(uint32_t cp)
{
    if (cp == ' ')
        return 1;
    if (cp < 0x20 || cp == 0x7f)
        return 0;
    if (cp < 0x7f)
        return 1;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS:
        return 0;
    default:
        return 1;
    }
}

void jpy_str_repr_into(jctx *c, jbuf *b, const char *s, size_t len)
{
    int has_sq = memchr(s, '\'', len) != NULL, has_dq = memchr(s, '"', len) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    jbuf_putc(c, b, q);
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        uint32_t cp = ju8_next(s, len, &i);
        char esc[16];
        if (cp == (uint32_t)q || cp == '\\') {
            esc[0] = '\\';
            esc[1] = (char)cp;
            jbuf_put(c, b, esc, 2);
        } else if (cp == '\n') {
            jbuf_put(c, b, "\\n", 2);
        } else if (cp == '\r') {
            jbuf_put(c, b, "\\r", 2);
        } else if (cp == '\t') {
            jbuf_put(c, b, "\\t", 2);
        } else if (!jpy_isprintable(cp)) {
            if (cp < 0x100)
                snprintf(esc, sizeof esc, "\\x%02x", cp);
            else if (cp < 0x10000)
                snprintf(esc, sizeof esc, "\\u%04x", cp);
            else
                snprintf(esc, sizeof esc, "\\U%08x", cp);
            jbuf_puts(c, b, esc);
        } else {
            jbuf_put(c, b, s + start, i - start);
        }
    }
    jbuf_putc(c, b, q);
}

static void seq_repr(jctx *c, jbuf *b, jv v)
{
    const jlist *l = v.u.l;
    jbuf_putc(c, b, v.k == JK_TUPLE ? '(' : '[');
    for (size_t i = 0; i < l->n; i++) {
        if (i)
            jbuf_put(c, b, ", ", 2);
        jv_repr_into(c, b, l->v[i]);
    }
    if (v.k == JK_TUPLE && l->n == 1)
        jbuf_putc(c, b, ',');
    jbuf_putc(c, b, v.k == JK_TUPLE ? ')' : ']');
}

static void dict_repr(jctx *c, jbuf *b, const jdict *d)
{
    jbuf_putc(c, b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i)
            jbuf_put(c, b, ", ", 2);
        jv_repr_into(c, b, d->k[i]);
        jbuf_put(c, b, ": ", 2);
        jv_repr_into(c, b, d->v[i]);
    }
    jbuf_putc(c, b, '}');
}

void jv_repr_into(jctx *c, jbuf *b, jv v)
{
    if (++c->vdepth > 1000)
        jfail(c, JE_RECURSION, "maximum recursion depth exceeded while getting the repr of an object");
    switch ((jkind)v.k) {
    case JK_STR:
        jpy_str_repr_into(c, b, v.u.s->s, v.u.s->len);
        break;
    case JK_UNDEF:
        jbuf_puts(c, b, "Undefined");
        break;
    case JK_LIST:
    case JK_TUPLE:
        seq_repr(c, b, v);
        break;
    case JK_DICT:
        dict_repr(c, b, v.u.d);
        break;
    default:
        jv_str_into(c, b, v);
        break;
    }
    c->vdepth--;
}

void jv_str_into(jctx *c, jbuf *b, jv v)
{
    char tmp[64];
    switch ((jkind)v.k) {
    case JK_UNDEF:
        break;
    case JK_NONE:
        jbuf_puts(c, b, "None");
        break;
    case JK_BOOL:
        jbuf_puts(c, b, v.u.i ? "True" : "False");
        break;
    case JK_INT:
        snprintf(tmp, sizeof tmp, "%" PRId64, v.u.i);
        jbuf_puts(c, b, tmp);
        break;
    case JK_FLOAT:
        jpy_float_repr(v.u.f, tmp);
        jbuf_puts(c, b, tmp);
        break;
    case JK_STR:
        jbuf_put(c, b, v.u.s->s, v.u.s->len);
        break;
    case JK_LIST:
    case JK_TUPLE:
    case JK_DICT:
        jv_repr_into(c, b, v);
        break;
    case JK_NS:
        jbuf_puts(c, b, "<Namespace ");
        dict_repr(c, b, v.u.d);
        jbuf_putc(c, b, '>');
        break;
    case JK_LOOP:
        snprintf(tmp, sizeof tmp, "<LoopContext %" PRId64 "/%" PRId64 ">", v.u.loop->index0 + 1,
                 v.u.loop->length);
        jbuf_puts(c, b, tmp);
        break;
    case JK_MACRO:
        jbuf_puts(c, b, "<Macro '");
        if (v.u.m->node->str)
            jbuf_put(c, b, v.u.m->node->str->s, v.u.m->node->str->len);
        else
            jbuf_puts(c, b, "caller");
        jbuf_puts(c, b, "'>");
        break;
    case JK_FUNC:
        jbuf_puts(c, b, "<function ");
        jbuf_puts(c, b, jglobal_name(v.u.fn));
        jbuf_putc(c, b, '>');
        break;
    case JK_METHOD:
        jbuf_puts(c, b, "<built-in method>");
        break;
    case JK_GEN: /* Python adds the address */
        jbuf_putc(c, b, '<');
        jbuf_puts(c, b, jv_type_name(v));
        jbuf_puts(c, b, " object>");
        break;
    }
}

jstr *jv_to_jstr(jctx *c, jv v)
{
    if (v.k == JK_STR)
        return v.u.s;
    jbuf b = {0};
    jv_str_into(c, &b, v);
    return jstr_new(c, b.p, b.n);
}
