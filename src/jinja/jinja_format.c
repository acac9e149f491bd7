/*
 * String formatting as Python does it: printf-style `"%s-%d" % (a, b)` (also
 * the `format` filter) and `"{}-{name}".format(a, name=b)`, for the common
 * conversions: s r a d i u x X o c e E f F g G % and, in format specs, fill,
 * alignment, sign, zero padding, width, grouping and precision.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "jinja/jinja_internal.h"

/* Pads s (already converted) to width by code points. align: '<' '>' '^' or
 * '=' (after the sign, for numbers). */
static void put_padded(jctx *c, jbuf *b, const char *s, size_t n, int64_t width, char align, uint32_t fill)
{
    int64_t ncp = 0;
    for (size_t i = 0; i < n; i++)
        ncp += ((unsigned char)s[i] & 0xc0) != 0x80;
    int64_t pad = width > ncp ? width - ncp : 0;
    if (pad > (int64_t)c->lim.max_output)
        jfail(c, JE_LIMIT, "the template output exceeds %zu bytes", c->lim.max_output);
    int64_t left = align == '<' ? 0 : align == '^' ? pad / 2 : pad;
    if (align == '=' && n > 0 && (s[0] == '-' || s[0] == '+' || s[0] == ' ')) {
        jbuf_putc(c, b, s[0]);
        s++;
        n--;
    }
    for (int64_t k = 0; k < left; k++)
        jbuf_put_cp(c, b, fill);
    jbuf_put(c, b, s, n);
    for (int64_t k = 0; k < pad - left; k++)
        jbuf_put_cp(c, b, fill);
}

static double num_as_double(jctx *c, jv v, char conv)
{
    if (v.k == JK_FLOAT)
        return v.u.f;
    if (v.k == JK_INT || v.k == JK_BOOL)
        return (double)v.u.i;
    jv_check_defined(c, v);
    jfail(c, JE_TYPE, "%%%c format: a real number is required, not %s", conv, jv_type_name(v));
}

static int64_t num_as_int(jctx *c, jv v, char conv)
{
    if (v.k == JK_INT || v.k == JK_BOOL)
        return v.u.i;
    if (v.k == JK_FLOAT && (conv == 'd' || conv == 'i' || conv == 'u')) {
        if (!isfinite(v.u.f) || fabs(v.u.f) >= 9.2e18)
            jfail(c, JE_OVERFLOW, "cannot convert float to integer");
        return (int64_t)v.u.f;
    }
    jv_check_defined(c, v);
    if (conv == 'd' || conv == 'i' || conv == 'u')
        jfail(c, JE_TYPE, "%%%c format: a real number is required, not %s", conv, jv_type_name(v));
    jfail(c, JE_TYPE, "%%%c format: an integer is required, not %s", conv, jv_type_name(v));
}

/* ------------------------------------------------------------------ printf-style */

jv jop_percent_format(jctx *c, const jstr *fmt, jv args)
{
    const jv *pos;
    size_t npos;
    jv single = args;
    if (args.k == JK_TUPLE) {
        pos = args.u.l->v;
        npos = args.u.l->n;
    } else {
        pos = &single;
        npos = 1;
    }
    const jdict *mapping = args.k == JK_DICT ? args.u.d : NULL;
    size_t next = 0;
    int used_mapping = 0;
    jbuf b = {0};
    const char *s = fmt->s;
    size_t n = fmt->len, i = 0;
    while (i < n) {
        if (s[i] != '%') {
            size_t j = i;
            while (j < n && s[j] != '%')
                j++;
            jbuf_put(c, &b, s + i, j - i);
            i = j;
            continue;
        }
        size_t start = i++;
        jv arg = jv_none();
        int have_arg = 0;
        if (i < n && s[i] == '(') {
            if (mapping == NULL)
                jfail(c, JE_TYPE, "format requires a mapping");
            size_t k = i + 1;
            int depth = 1;
            while (k < n && depth) {
                depth += s[k] == '(' ? 1 : s[k] == ')' ? -1 : 0;
                k++;
            }
            if (depth)
                jfail(c, JE_VALUE, "incomplete format key");
            if (!jdict_get_str(mapping, s + i + 1, k - i - 2, &arg))
                jfail(c, JE_KEY, "'%.*s'", (int)(k - i - 2), s + i + 1);
            have_arg = 1;
            used_mapping = 1;
            i = k;
        }
        char flags[8] = "";
        size_t nf = 0;
        while (i < n && strchr("-+ #0", s[i]) && s[i] != '\0') {
            if (nf + 1 < sizeof flags && !strchr(flags, s[i]))
                flags[nf++] = s[i], flags[nf] = '\0';
            i++;
        }
        int64_t width = -1, prec = -1;
        if (i < n && s[i] == '*') {
            if (next >= npos)
                jfail(c, JE_TYPE, "not enough arguments for format string");
            width = num_as_int(c, pos[next++], '*');
            i++;
        } else {
            while (i < n && s[i] >= '0' && s[i] <= '9') {
                width = (width < 0 ? 0 : width) * 10 + (s[i++] - '0');
                if (width > 1 << 20)
                    jfail(c, JE_LIMIT, "format width or precision too large");
            }
        }
        if (i < n && s[i] == '.') {
            i++;
            prec = 0;
            if (i < n && s[i] == '*') {
                if (next >= npos)
                    jfail(c, JE_TYPE, "not enough arguments for format string");
                prec = num_as_int(c, pos[next++], '*');
                i++;
            } else {
                while (i < n && s[i] >= '0' && s[i] <= '9') {
                    prec = prec * 10 + (s[i++] - '0');
                    if (prec > 1 << 20)
                        jfail(c, JE_LIMIT, "format width or precision too large");
                }
            }
        }
        if (width > 1 << 20 || prec > 1 << 20)
            jfail(c, JE_LIMIT, "format width or precision too large");
        while (i < n && (s[i] == 'h' || s[i] == 'l' || s[i] == 'L'))
            i++;
        if (i >= n)
            jfail(c, JE_VALUE, "incomplete format");
        char conv = s[i++];
        if (conv == '%') {
            jbuf_putc(c, &b, '%');
            continue;
        }
        if (!have_arg) {
            if (next >= npos)
                jfail(c, JE_TYPE, "not enough arguments for format string");
            arg = pos[next++];
        }
        int left = strchr(flags, '-') != NULL;
        char align = left ? '<' : '>';
        jbuf piece = {0};
        char cfmt[32], tmp[512];
        switch (conv) {
        case 's':
        case 'r':
        case 'a': {
            if (conv == 's')
                jv_str_into(c, &piece, arg);
            else
                jv_repr_into(c, &piece, arg);
            size_t len = piece.n;
            if (prec >= 0) {
                size_t k = 0;
                for (int64_t q = 0; q < prec && k < piece.n; q++)
                    ju8_next(piece.p, piece.n, &k);
                len = k;
            }
            put_padded(c, &b, piece.p ? piece.p : "", len, width, align, ' ');
            continue;
        }
        case 'd':
        case 'i':
        case 'u':
        case 'x':
        case 'X':
        case 'o': {
            int64_t v = num_as_int(c, arg, conv);
            char spec = conv == 'i' || conv == 'u' ? 'd' : conv;
            unsigned long long mag = v < 0 ? (unsigned long long)(-(v + 1)) + 1ULL : (unsigned long long)v;
            char digits[96];
            snprintf(digits, sizeof digits,
                     spec == 'x'   ? "%llx"
                     : spec == 'X' ? "%llX"
                     : spec == 'o' ? "%llo"
                                   : "%llu",
                     mag);
            size_t nd = strlen(digits);
            const char *sign = v < 0 ? "-" : strchr(flags, '+') ? "+" : strchr(flags, ' ') ? " " : "";
            const char *prefix = !strchr(flags, '#') ? ""
                                 : spec == 'x'       ? "0x"
                                 : spec == 'X'       ? "0X"
                                 : spec == 'o'       ? "0o"
                                                     : "";
            int64_t zeros = prec > (int64_t)nd ? prec - (int64_t)nd : 0;
            if (strchr(flags, '0') && !left && width >= 0) {
                int64_t body = (int64_t)(strlen(sign) + strlen(prefix)) + zeros + (int64_t)nd;
                if (width > body)
                    zeros += width - body;
            }
            jbuf_puts(c, &piece, sign);
            jbuf_puts(c, &piece, prefix);
            for (int64_t k = 0; k < zeros; k++)
                jbuf_putc(c, &piece, '0');
            jbuf_put(c, &piece, digits, nd);
            put_padded(c, &b, piece.p, piece.n, width, align, ' ');
            continue;
        }
        case 'e':
        case 'E':
        case 'f':
        case 'F':
        case 'g':
        case 'G': {
            double v = num_as_double(c, arg, conv);
            snprintf(cfmt, sizeof cfmt, "%%%s%s%s%s%s*.*%c", strchr(flags, '-') ? "-" : "",
                     strchr(flags, '+') ? "+" : "", strchr(flags, ' ') ? " " : "",
                     strchr(flags, '#') ? "#" : "", strchr(flags, '0') && !left ? "0" : "", conv);
            snprintf(tmp, sizeof tmp, cfmt, width < 0 ? 0 : (int)width, prec < 0 ? 6 : (int)prec, v);
            jbuf_puts(c, &b, tmp);
            continue;
        }
        case 'c': {
            if (arg.k == JK_STR && jstr_ncp(arg.u.s) == 1) {
                put_padded(c, &b, arg.u.s->s, arg.u.s->len, width, align, ' ');
            } else if (arg.k == JK_INT || arg.k == JK_BOOL) {
                if (arg.u.i < 0 || arg.u.i > 0x10ffff || (arg.u.i >= 0xd800 && arg.u.i <= 0xdfff))
                    jfail(c, JE_OVERFLOW, "%%c arg not in range(0x110000)");
                char enc[4];
                size_t k = ju8_encode((uint32_t)arg.u.i, enc);
                put_padded(c, &b, enc, k, width, align, ' ');
            } else {
                jfail(c, JE_TYPE, "%%c requires int or char");
            }
            continue;
        }
        default:
            jfail(c, JE_VALUE, "unsupported format character '%c' (0x%x) at index %zu", conv,
                  (unsigned char)conv, i - 1 - start + start);
        }
    }
    if (next < npos && !used_mapping && !(mapping && npos == 1))
        jfail(c, JE_TYPE, "not all arguments converted during string formatting");
    if (b.p == NULL)
        return jv_str(c, "", 0);
    return jv_strv(jbuf_str(c, &b));
}

/* ------------------------------------------------------------------ str.format */

typedef struct spec {
    uint32_t fill;
    char align; /* 0 default */
    char sign;  /* 0, '+', '-', ' ' */
    int alt, zero;
    int64_t width, prec;
    char group; /* 0, ',' or '_' */
    char type;  /* 0 default */
} spec;

static void parse_spec(jctx *c, const char *s, size_t n, spec *sp)
{
    memset(sp, 0, sizeof *sp);
    sp->fill = ' ';
    sp->width = -1;
    sp->prec = -1;
    size_t i = 0;
    /* [[fill]align] */
    if (n > 0) {
        size_t k = 0;
        uint32_t cp = ju8_next(s, n, &k);
        if (k < n && strchr("<>=^", s[k]) && s[k] != '\0') {
            sp->fill = cp;
            sp->align = s[k];
            i = k + 1;
        } else if (strchr("<>=^", s[0]) && s[0] != '\0') {
            sp->align = s[0];
            i = 1;
        }
    }
    if (i < n && (s[i] == '+' || s[i] == '-' || s[i] == ' '))
        sp->sign = s[i++];
    if (i < n && s[i] == '#') {
        sp->alt = 1;
        i++;
    }
    if (i < n && s[i] == '0') {
        sp->zero = 1;
        i++;
    }
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        sp->width = (sp->width < 0 ? 0 : sp->width) * 10 + (s[i++] - '0');
        if (sp->width > 1 << 20)
            jfail(c, JE_LIMIT, "format width too large");
    }
    if (i < n && (s[i] == ',' || s[i] == '_'))
        sp->group = s[i++];
    if (i < n && s[i] == '.') {
        i++;
        sp->prec = 0;
        if (i >= n || s[i] < '0' || s[i] > '9')
            jfail(c, JE_VALUE, "Format specifier missing precision");
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            sp->prec = sp->prec * 10 + (s[i++] - '0');
            if (sp->prec > 1 << 20)
                jfail(c, JE_LIMIT, "format precision too large");
        }
    }
    if (i < n)
        sp->type = s[i++];
    if (i < n)
        jfail(c, JE_VALUE, "Invalid format specifier '%.*s'", (int)n, s);
}

static void group_digits(char *digits, size_t cap, char sep)
{
    /* digits: optional sign then [0-9]+ then the rest (fraction) */
    char out[600];
    size_t len = strlen(digits), start = (digits[0] == '-' || digits[0] == '+' || digits[0] == ' ') ? 1 : 0,
           end = start;
    while (end < len && digits[end] >= '0' && digits[end] <= '9')
        end++;
    size_t o = 0;
    for (size_t k = 0; k < start; k++)
        out[o++] = digits[k];
    for (size_t k = start; k < end && o + 2 < sizeof out; k++) {
        out[o++] = digits[k];
        size_t rest = end - k - 1;
        if (rest > 0 && rest % 3 == 0)
            out[o++] = sep;
    }
    for (size_t k = end; k < len && o + 1 < sizeof out; k++)
        out[o++] = digits[k];
    out[o] = '\0';
    snprintf(digits, cap, "%s", out);
}

static void format_value(jctx *c, jbuf *b, jv v, const spec *sp)
{
    char tmp[600];
    char align = sp->align ? sp->align : (v.k == JK_STR ? '<' : '>');
    uint32_t fill = sp->fill;
    if (sp->zero && !sp->align) {
        align = '=';
        fill = '0';
    }
    if (v.k == JK_STR || (sp->type == 's')) {
        if (v.k != JK_STR)
            jfail(c, JE_VALUE, "Unknown format code 's' for object of type '%s'", jv_type_name(v));
        size_t len = v.u.s->len;
        if (sp->prec >= 0) {
            size_t k = 0;
            for (int64_t q = 0; q < sp->prec && k < v.u.s->len; q++)
                ju8_next(v.u.s->s, v.u.s->len, &k);
            len = k;
        }
        put_padded(c, b, v.u.s->s, len, sp->width, align, fill);
        return;
    }
    if ((v.k == JK_INT || v.k == JK_BOOL) && (sp->type == 0 || strchr("dxXobc", sp->type))) {
        if (v.k == JK_BOOL && sp->type == 0) {
            put_padded(c, b, v.u.i ? "True" : "False", v.u.i ? 4 : 5, sp->width, align, fill);
            return;
        }
        int64_t x = v.u.i;
        unsigned long long mag = x < 0 ? (unsigned long long)(-(x + 1)) + 1ULL : (unsigned long long)x;
        char digits[80];
        char t = sp->type ? sp->type : 'd';
        if (t == 'c') {
            char enc[4];
            size_t k = ju8_encode((uint32_t)x, enc);
            put_padded(c, b, enc, k, sp->width, align, fill);
            return;
        }
        if (t == 'b') {
            char rev[70];
            int k = 0;
            do {
                rev[k++] = (char)('0' + (mag & 1));
                mag >>= 1;
            } while (mag);
            for (int q = 0; q < k; q++)
                digits[q] = rev[k - 1 - q];
            digits[k] = '\0';
        } else {
            snprintf(digits, sizeof digits,
                     t == 'x'   ? "%llx"
                     : t == 'X' ? "%llX"
                     : t == 'o' ? "%llo"
                                : "%llu",
                     mag);
        }
        const char *prefix = !sp->alt   ? ""
                             : t == 'x' ? "0x"
                             : t == 'X' ? "0X"
                             : t == 'o' ? "0o"
                             : t == 'b' ? "0b"
                                        : "";
        snprintf(tmp, sizeof tmp, "%s%s%s",
                 x < 0             ? "-"
                 : sp->sign == '+' ? "+"
                 : sp->sign == ' ' ? " "
                                   : "",
                 prefix, digits);
        if (sp->group)
            group_digits(tmp, sizeof tmp, sp->group);
        put_padded(c, b, tmp, strlen(tmp), sp->width, align, fill);
        return;
    }
    if ((v.k == JK_INT || v.k == JK_BOOL || v.k == JK_FLOAT) &&
        (sp->type == 0 || strchr("eEfFgG%", sp->type))) {
        double x = v.k == JK_FLOAT ? v.u.f : (double)v.u.i;
        char t = sp->type;
        if (t == 0 && sp->prec < 0) {
            jpy_float_repr(x, tmp);
            if (sp->sign == '+' && x >= 0) {
                memmove(tmp + 1, tmp, strlen(tmp) + 1);
                tmp[0] = '+';
            }
        } else {
            int prec = sp->prec < 0 ? 6 : (int)sp->prec;
            if (t == '%')
                x *= 100.0;
            char ct = t == 0 ? 'g' : t == '%' ? 'f' : t;
            char cf[16];
            snprintf(cf, sizeof cf, "%%%s%s.*%c",
                     sp->sign == '+'   ? "+"
                     : sp->sign == ' ' ? " "
                                       : "",
                     sp->alt ? "#" : "", ct);
            snprintf(tmp, sizeof tmp, cf, prec, x);
            if (t == '%')
                strncat(tmp, "%", sizeof tmp - strlen(tmp) - 1);
        }
        if (sp->group)
            group_digits(tmp, sizeof tmp, sp->group);
        put_padded(c, b, tmp, strlen(tmp), sp->width, align, fill);
        return;
    }
    if (sp->type || sp->width >= 0 || sp->prec >= 0)
        jfail(c, JE_TYPE, "unsupported format string passed to %s.__format__", jv_type_name(v));
    jv_str_into(c, b, v);
}

jv jformat_str_method(jctx *c, const jstr *fmt, jargs *a)
{
    jbuf b = {0};
    const char *s = fmt->s;
    size_t n = fmt->len, i = 0;
    int auto_idx = 0, manual = 0;
    while (i < n) {
        char ch = s[i];
        if (ch == '}') {
            if (i + 1 < n && s[i + 1] == '}') {
                jbuf_putc(c, &b, '}');
                i += 2;
                continue;
            }
            jfail(c, JE_VALUE, "Single '}' encountered in format string");
        }
        if (ch != '{') {
            jbuf_putc(c, &b, ch);
            i++;
            continue;
        }
        if (i + 1 < n && s[i + 1] == '{') {
            jbuf_putc(c, &b, '{');
            i += 2;
            continue;
        }
        size_t j = i + 1;
        int depth = 1;
        while (j < n && depth) {
            depth += s[j] == '{' ? 1 : s[j] == '}' ? -1 : 0;
            if (depth)
                j++;
        }
        if (j >= n)
            jfail(c, JE_VALUE, "Single '{' encountered in format string");
        /* field: name[.attr|[key]]*[!conv][:spec] */
        const char *f = s + i + 1;
        size_t fn = j - i - 1, k = 0;
        while (k < fn && f[k] != '.' && f[k] != '[' && f[k] != '!' && f[k] != ':')
            k++;
        jv v;
        if (k == 0) {
            if (manual)
                jfail(c, JE_VALUE,
                      "cannot switch from manual field specification to automatic field numbering");
            if (auto_idx >= a->npos)
                jfail(c, JE_INDEX, "Replacement index %d out of range for positional args tuple", auto_idx);
            v = a->pos[auto_idx++];
        } else if (f[0] >= '0' && f[0] <= '9') {
            int64_t idx = 0;
            for (size_t q = 0; q < k; q++) {
                if (f[q] < '0' || f[q] > '9' || idx > 1000000)
                    jfail(c, JE_VALUE, "invalid field name in format string");
                idx = idx * 10 + (f[q] - '0');
            }
            manual = 1;
            if (idx >= a->npos)
                jfail(c, JE_INDEX, "Replacement index %" PRId64 " out of range for positional args tuple",
                      idx);
            v = a->pos[idx];
        } else {
            int found = 0;
            for (int q = 0; q < a->nkw; q++) {
                if (a->kwn[q]->len == k && memcmp(a->kwn[q]->s, f, k) == 0) {
                    v = a->kwv[q];
                    a->used[q] = 1;
                    found = 1;
                }
            }
            if (!found)
                jfail(c, JE_KEY, "'%.*s'", (int)k, f);
        }
        while (k < fn && (f[k] == '.' || f[k] == '[')) {
            if (f[k] == '.') {
                size_t e = k + 1;
                while (e < fn && f[e] != '.' && f[e] != '[' && f[e] != '!' && f[e] != ':')
                    e++;
                v = jop_getattr(c, v, jstr_new(c, f + k + 1, e - k - 1));
                k = e;
            } else {
                size_t e = k + 1;
                while (e < fn && f[e] != ']')
                    e++;
                jv key = jv_str(c, f + k + 1, e - k - 1);
                int digits = e > k + 1;
                int64_t iv = 0;
                for (size_t q = k + 1; q < e; q++) {
                    if (f[q] < '0' || f[q] > '9' || iv > 1000000000)
                        digits = 0;
                    else
                        iv = iv * 10 + (f[q] - '0');
                }
                v = jop_getitem(c, v, digits ? jv_int(iv) : key);
                k = e < fn ? e + 1 : e;
            }
            jv_check_defined(c, v);
        }
        if (k < fn && f[k] == '!') {
            char conv = k + 1 < fn ? f[k + 1] : 0;
            jbuf t = {0};
            if (conv == 's')
                jv_str_into(c, &t, v);
            else if (conv == 'r' || conv == 'a')
                jv_repr_into(c, &t, v);
            else
                jfail(c, JE_VALUE, "Unknown conversion specifier %c", conv ? conv : '?');
            v = jv_strv(jbuf_str(c, &t));
            k += 2;
        }
        spec sp;
        if (k < fn && f[k] == ':')
            parse_spec(c, f + k + 1, fn - k - 1, &sp);
        else if (k < fn)
            jfail(c, JE_VALUE, "expected ':' after conversion specifier");
        else
            parse_spec(c, "", 0, &sp);
        format_value(c, &b, v, &sp);
        i = j + 1;
    }
    if (b.p == NULL)
        return jv_str(c, "", 0);
    return jv_strv(jbuf_str(c, &b));
}
