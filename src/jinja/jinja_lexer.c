/*
 * The lexer: template text -> tokens, following jinja2's lexer rule by rule
 * with trim_blocks and lstrip_blocks on:
 *
 * - line breaks (\r\n, \r, \n) become \n and one trailing line break is
 *   dropped (keep_trailing_newline is off);
 * - "{%-", "{{-", "{#-" strip all whitespace before the tag; "-%}", "-}}",
 *   "-#}" strip all whitespace after it;
 * - trim_blocks: "%}" and "#}" swallow one newline right after them;
 * - lstrip_blocks: spaces and tabs between the start of a line and "{%" or
 *   "{#" are dropped ("{%+" keeps them, "+%}" keeps the newline);
 * - {% raw %} ... {% endraw %} is data;
 * - inside tags: names, numbers (with _ separators, 0x/0o/0b), strings with
 *   Python escapes, operators; "}}" or "%}" ends a tag only outside brackets.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jinja/jinja_internal.h"

enum { TAG_BLOCK, TAG_VAR, TAG_COMMENT };

typedef struct lexer {
    jparse *p;
    const char *s;
    size_t len;
    size_t pos;
    int line;
    int line_starting;
} lexer;

static void push_tok(lexer *lx, jtok t)
{
    jparse *p = lx->p;
    if (p->ntoks == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        jtok *nt = jarena_grow(p->arena, p->toks, p->cap * sizeof(jtok), cap * sizeof(jtok));
        if (nt == NULL)
            jparse_fail(p, lx->line, "out of memory");
        p->toks = nt;
        p->cap = cap;
    }
    p->toks[p->ntoks++] = t;
}

static void push_simple(lexer *lx, int type, int line)
{
    jtok t = {.type = (uint8_t)type, .line = line};
    push_tok(lx, t);
}

static int count_nl(const char *s, size_t n)
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += s[i] == '\n';
    return k;
}

/* The length of the Python whitespace run at s[i..] (\s* of re). */
static size_t ws_run(const char *s, size_t len, size_t i)
{
    size_t j = i;
    while (j < len) {
        size_t k = j;
        uint32_t cp = ju8_next(s, len, &k);
        if (!jpy_isspace(cp))
            break;
        j = k;
    }
    return j - i;
}

/* text.rstrip() with Python whitespace: the length that stays. */
static size_t rstrip_len(const char *s, size_t n)
{
    size_t keep = 0, i = 0;
    while (i < n) {
        uint32_t cp = ju8_next(s, n, &i);
        if (!jpy_isspace(cp))
            keep = i;
    }
    return keep;
}

static int starts(const lexer *lx, size_t i, const char *lit)
{
    size_t n = strlen(lit);
    return i <= lx->len && lx->len - i >= n && memcmp(lx->s + i, lit, n) == 0;
}

/* Emits the data before a tag after the whitespace control of the tag. */
static void emit_data(lexer *lx, size_t from, size_t to, int sign, int is_var)
{
    const char *text = lx->s + from;
    size_t n = to - from;
    int line = lx->line;
    if (sign == '-') {
        n = rstrip_len(text, n);
    } else if (sign != '+' && !is_var) {
        /* lstrip_blocks: whitespace alone between the line start and the tag */
        size_t l_pos = 0;
        for (size_t i = n; i > 0; i--) {
            if (text[i - 1] == '\n') {
                l_pos = i;
                break;
            }
        }
        if ((l_pos > 0 || lx->line_starting) && l_pos < n && ws_run(text, n, l_pos) == n - l_pos)
            n = l_pos;
    }
    if (n > 0) {
        jtok t = {.type = T_DATA, .line = line};
        t.str = jparse_str(lx->p, text, n);
        push_tok(lx, t);
    }
    lx->line += count_nl(lx->s + from, to - from);
}

/* Matches the end of a block or comment ("+%}", "-%}\s*", "%}\n?") at i; returns
 * the length consumed or 0. */
static size_t match_block_end(const lexer *lx, size_t i, char c2)
{
    char plus[4] = {'+', c2, '}', 0}, minus[4] = {'-', c2, '}', 0}, plain[3] = {c2, '}', 0};
    if (starts(lx, i, plus))
        return 3;
    if (starts(lx, i, minus))
        return 3 + ws_run(lx->s, lx->len, i + 3);
    if (starts(lx, i, plain))
        return 2 + (i + 2 < lx->len && lx->s[i + 2] == '\n');
    return 0;
}

static size_t match_var_end(const lexer *lx, size_t i)
{
    if (starts(lx, i, "-}}"))
        return 3 + ws_run(lx->s, lx->len, i + 3);
    if (starts(lx, i, "}}"))
        return 2;
    return 0;
}

static void set_line_starting(lexer *lx, size_t end)
{
    lx->line_starting = end > 0 && lx->s[end - 1] == '\n';
}

/* ------------------------------------------------------------------ tokens inside tags */

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static int is_name_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

/* (\d+_)*\d+ at i: the length, or 0 */
static size_t digits_us(const lexer *lx, size_t i)
{
    size_t j = i;
    if (j >= lx->len || !is_digit(lx->s[j]))
        return 0;
    for (;;) {
        while (j < lx->len && is_digit(lx->s[j]))
            j++;
        if (j + 1 < lx->len && lx->s[j] == '_' && is_digit(lx->s[j + 1]))
            j++;
        else
            break;
    }
    return j - i;
}

static size_t match_float(const lexer *lx, size_t i)
{
    if (i > 0 && lx->s[i - 1] == '.')
        return 0;
    size_t n = digits_us(lx, i);
    if (n == 0)
        return 0;
    size_t j = i + n;
    /* exponent form, with an optional fraction */
    size_t k = j;
    if (k < lx->len && lx->s[k] == '.') {
        size_t f = digits_us(lx, k + 1);
        if (f)
            k += 1 + f;
    }
    if (k < lx->len && (lx->s[k] == 'e' || lx->s[k] == 'E')) {
        size_t e = k + 1;
        if (e < lx->len && (lx->s[e] == '+' || lx->s[e] == '-'))
            e++;
        size_t d = digits_us(lx, e);
        if (d)
            return e + d - i;
    }
    /* fraction form */
    if (j < lx->len && lx->s[j] == '.') {
        size_t f = digits_us(lx, j + 1);
        if (f)
            return j + 1 + f - i;
    }
    return 0;
}

static int digit_val(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return 99;
}

/* integer_re: 0b/0o/0x with optional _ before each digit, [1-9](_?\d)*, 0(_?0)* */
static size_t match_int(const lexer *lx, size_t i, int *base)
{
    const char *s = lx->s;
    if (i >= lx->len || !is_digit(s[i]))
        return 0;
    if (s[i] == '0' && i + 1 < lx->len && strchr("bBoOxX", s[i + 1]) && s[i + 1] != '\0') {
        char b = (char)(s[i + 1] | 0x20);
        int radix = b == 'b' ? 2 : b == 'o' ? 8 : 16;
        size_t j = i + 2, ndig = 0;
        for (;;) {
            size_t k = j;
            if (k < lx->len && s[k] == '_')
                k++;
            if (k < lx->len && digit_val(s[k]) < radix) {
                j = k + 1;
                ndig++;
            } else {
                break;
            }
        }
        if (ndig) {
            *base = radix;
            return j - i;
        }
        /* "0x" without digits: only the "0" */
    }
    size_t j = i + 1;
    char allowed_max = s[i] == '0' ? '0' : '9';
    for (;;) {
        size_t k = j;
        if (k < lx->len && s[k] == '_')
            k++;
        if (k < lx->len && s[k] >= '0' && s[k] <= allowed_max)
            j = k + 1;
        else
            break;
    }
    *base = 10;
    return j - i;
}

static void lex_int(lexer *lx, size_t i, size_t n, int base)
{
    size_t start = base == 10 ? i : i + 2;
    uint64_t v = 0;
    for (size_t k = start; k < i + n; k++) {
        if (lx->s[k] == '_')
            continue;
        uint64_t d = (uint64_t)digit_val(lx->s[k]);
        if (v > (UINT64_MAX - d) / (uint64_t)base || v * (uint64_t)base + d > (uint64_t)INT64_MAX)
            jparse_fail(lx->p, lx->line, "integer literal too large for anvil (64-bit integers)");
        v = v * (uint64_t)base + d;
    }
    jtok t = {.type = T_INT, .line = lx->line, .i = (int64_t)v};
    push_tok(lx, t);
}

static void lex_float(lexer *lx, size_t i, size_t n)
{
    char buf[128];
    size_t m = 0;
    for (size_t k = i; k < i + n && m + 1 < sizeof buf; k++)
        if (lx->s[k] != '_')
            buf[m++] = lx->s[k];
    buf[m] = '\0';
    jtok t = {.type = T_FLOAT, .line = lx->line, .f = strtod(buf, NULL)};
    push_tok(lx, t);
}

static int hexval(const char *s, size_t n, uint32_t *out)
{
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int d = digit_val(s[i]);
        if (d > 15)
            return 0;
        v = v * 16 + (uint32_t)d;
    }
    *out = v;
    return 1;
}

/* Decodes the body of a string literal as Python's "unicode-escape" codec
 * does after jinja2's backslashreplace: \n \t \xhh \uXXXX \ooo ..., an
 * unknown escape stays as written, a backslash before a non-ASCII character
 * keeps the backslash and spells the character as \xhh / \uXXXX. */
static jstr *unescape(lexer *lx, const char *s, size_t n, int line)
{
    char *out = jparse_alloc(lx->p, n * 3 + 1);
    size_t o = 0, i = 0;
    while (i < n) {
        if (s[i] != '\\') {
            out[o++] = s[i++];
            continue;
        }
        if (i + 1 >= n)
            jparse_fail(lx->p, line, "\\ at end of string");
        char e = s[i + 1];
        uint32_t cp;
        size_t used = 2;
        switch (e) {
        case '\n':
            i += 2;
            continue; /* line continuation */
        case '\\':
            cp = '\\';
            break;
        case '\'':
            cp = '\'';
            break;
        case '"':
            cp = '"';
            break;
        case 'a':
            cp = 7;
            break;
        case 'b':
            cp = 8;
            break;
        case 'f':
            cp = 12;
            break;
        case 'n':
            cp = 10;
            break;
        case 'r':
            cp = 13;
            break;
        case 't':
            cp = 9;
            break;
        case 'v':
            cp = 11;
            break;
        case 'x':
        case 'u':
        case 'U': {
            size_t nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            if (i + 2 + nd > n || !hexval(s + i + 2, nd, &cp))
                jparse_fail(lx->p, line, "truncated \\%cXX escape", e);
            if (cp > 0x10ffff)
                jparse_fail(lx->p, line, "illegal Unicode character");
            if (cp >= 0xd800 && cp <= 0xdfff)
                jparse_fail(lx->p, line, "lone surrogate \\u%04x in a string is not supported", cp);
            used = 2 + nd;
            break;
        }
        case 'N':
            jparse_fail(lx->p, line, "\\N{...} escapes are not supported");
        default:
            if (e >= '0' && e <= '7') {
                cp = 0;
                size_t k = i + 1;
                while (k < n && k < i + 4 && s[k] >= '0' && s[k] <= '7')
                    cp = cp * 8 + (uint32_t)(s[k++] - '0');
                used = k - i;
            } else if ((unsigned char)e >= 0x80) {
                /* backslashreplace turned the character into an escape; the
                 * backslash before it escapes only the backslash of that */
                size_t k = i + 1;
                uint32_t c2 = ju8_next(s, n, &k);
                char tmp[16];
                int m = c2 < 0x100     ? snprintf(tmp, sizeof tmp, "\\x%02x", c2)
                        : c2 < 0x10000 ? snprintf(tmp, sizeof tmp, "\\u%04x", c2)
                                       : snprintf(tmp, sizeof tmp, "\\U%08x", c2);
                memcpy(out + o, tmp, (size_t)m);
                o += (size_t)m;
                i = k;
                continue;
            } else {
                /* unknown escape: kept */
                out[o++] = '\\';
                i += 1;
                continue;
            }
        }
        char enc[4];
        size_t k = ju8_encode(cp, enc);
        memcpy(out + o, enc, k);
        o += k;
        i += used;
    }
    return jparse_str(lx->p, out, o);
}

static size_t match_string(lexer *lx, size_t i)
{
    char q = lx->s[i];
    size_t j = i + 1;
    while (j < lx->len) {
        if (lx->s[j] == '\\') {
            j += 2;
            continue;
        }
        if (lx->s[j] == q)
            return j + 1 - i;
        j++;
    }
    return 0;
}

static const struct {
    const char *text;
    jop op;
} operators[] = {
    {"//", OP_FLOORDIV}, {"**", OP_POW},   {"==", OP_EQ},      {"!=", OP_NE},      {"<=", OP_LTEQ},
    {">=", OP_GTEQ},     {"+", OP_ADD},    {"-", OP_SUB},      {"/", OP_DIV},      {"*", OP_MUL},
    {"%", OP_MOD},       {"~", OP_TILDE},  {"[", OP_LBRACKET}, {"]", OP_RBRACKET}, {"(", OP_LPAREN},
    {")", OP_RPAREN},    {"{", OP_LBRACE}, {"}", OP_RBRACE},   {"<", OP_LT},       {">", OP_GT},
    {"=", OP_ASSIGN},    {".", OP_DOT},    {":", OP_COLON},    {"|", OP_PIPE},     {",", OP_COMMA},
    {";", OP_SEMICOLON},
};

#define MAX_BRACKETS 256

/* Tokens of a {% %} or {{ }} tag from lx->pos to its end. */
static void lex_tag(lexer *lx, int tag)
{
    char stack[MAX_BRACKETS];
    int depth = 0;
    for (;;) {
        size_t i = lx->pos;
        if (i >= lx->len)
            jparse_fail(lx->p, lx->line, "unexpected end of template, expected '%s'",
                        tag == TAG_VAR ? "}}" : "%}");
        if (depth == 0) {
            size_t n = tag == TAG_VAR ? match_var_end(lx, i) : match_block_end(lx, i, '%');
            if (n) {
                push_simple(lx, tag == TAG_VAR ? T_VAR_END : T_BLOCK_END, lx->line);
                lx->line += count_nl(lx->s + i, n);
                lx->pos = i + n;
                set_line_starting(lx, lx->pos);
                return;
            }
        }
        size_t n = ws_run(lx->s, lx->len, i);
        if (n) {
            lx->line += count_nl(lx->s + i, n);
            lx->pos += n;
            continue;
        }
        if ((n = match_float(lx, i)) != 0) {
            lex_float(lx, i, n);
            lx->pos += n;
            continue;
        }
        int base;
        if ((n = match_int(lx, i, &base)) != 0) {
            lex_int(lx, i, n, base);
            lx->pos += n;
            continue;
        }
        char ch = lx->s[i];
        if (is_name_start(ch)) {
            size_t j = i + 1;
            while (j < lx->len && (is_name_start(lx->s[j]) || is_digit(lx->s[j])))
                j++;
            jtok t = {.type = T_NAME, .line = lx->line};
            t.str = jparse_str(lx->p, lx->s + i, j - i);
            push_tok(lx, t);
            lx->pos = j;
            continue;
        }
        if ((ch == '\'' || ch == '"') && (n = match_string(lx, i)) != 0) {
            jtok t = {.type = T_STRING, .line = lx->line};
            t.str = unescape(lx, lx->s + i + 1, n - 2, lx->line);
            push_tok(lx, t);
            lx->line += count_nl(lx->s + i, n);
            lx->pos += n;
            continue;
        }
        size_t k;
        for (k = 0; k < sizeof operators / sizeof operators[0]; k++)
            if (starts(lx, i, operators[k].text))
                break;
        if (k == sizeof operators / sizeof operators[0]) {
            size_t e = i;
            ju8_next(lx->s, lx->len, &e);
            jparse_fail(lx->p, lx->line, "unexpected char '%.*s' at %zu", (int)(e - i), lx->s + i, i);
        }
        jop op = operators[k].op;
        if (op == OP_LBRACE || op == OP_LPAREN || op == OP_LBRACKET) {
            if (depth == MAX_BRACKETS)
                jparse_fail(lx->p, lx->line, "brackets nested too deeply");
            stack[depth++] = op == OP_LBRACE ? '}' : op == OP_LPAREN ? ')' : ']';
        } else if (op == OP_RBRACE || op == OP_RPAREN || op == OP_RBRACKET) {
            char closing = operators[k].text[0];
            if (depth == 0)
                jparse_fail(lx->p, lx->line, "unexpected '%c'", closing);
            char want = stack[--depth];
            if (want != closing)
                jparse_fail(lx->p, lx->line, "unexpected '%c', expected '%c'", closing, want);
        }
        jtok t = {.type = T_OP, .op = (uint8_t)op, .line = lx->line};
        push_tok(lx, t);
        lx->pos += strlen(operators[k].text);
    }
}

/* {% raw %}: "{%(-|+|)\s*raw\s*(-%}\s*|%})" at i; the length or 0. */
static size_t match_raw_begin(const lexer *lx, size_t i)
{
    size_t j = i + 2;
    if (j < lx->len && (lx->s[j] == '-' || lx->s[j] == '+'))
        j++;
    j += ws_run(lx->s, lx->len, j);
    if (!starts(lx, j, "raw"))
        return 0;
    j += 3;
    j += ws_run(lx->s, lx->len, j);
    if (starts(lx, j, "-%}"))
        return j + 3 + ws_run(lx->s, lx->len, j + 3) - i;
    if (starts(lx, j, "%}"))
        return j + 2 - i;
    return 0;
}

static void lex_raw(lexer *lx)
{
    for (size_t i = lx->pos; i + 1 < lx->len; i++) {
        if (lx->s[i] != '{' || lx->s[i + 1] != '%')
            continue;
        size_t j = i + 2;
        int sign = 0;
        if (j < lx->len && (lx->s[j] == '-' || lx->s[j] == '+'))
            sign = lx->s[j++];
        j += ws_run(lx->s, lx->len, j);
        if (!starts(lx, j, "endraw"))
            continue;
        j += 6;
        j += ws_run(lx->s, lx->len, j);
        size_t n = match_block_end(lx, j, '%');
        if (!n)
            continue;
        emit_data(lx, lx->pos, i, sign, 0);
        lx->line += count_nl(lx->s + i, j + n - i);
        lx->pos = j + n;
        set_line_starting(lx, lx->pos);
        return;
    }
    jparse_fail(lx->p, lx->line, "Missing end of raw directive");
}

static void lex_comment(lexer *lx)
{
    for (size_t i = lx->pos; i < lx->len; i++) {
        size_t n = 0;
        if (starts(lx, i, "+#}") || starts(lx, i, "-#}") || starts(lx, i, "#}"))
            n = match_block_end(lx, i, '#');
        if (!n)
            continue;
        lx->line += count_nl(lx->s + lx->pos, i + n - lx->pos);
        lx->pos = i + n;
        set_line_starting(lx, lx->pos);
        return;
    }
    jparse_fail(lx->p, lx->line, "Missing end of comment tag");
}

/* Line breaks to \n and the last one dropped, as jinja2's tokeniter does. */
static char *normalize(jparse *p, const char *src, size_t len, size_t *out_len)
{
    char *s = jparse_alloc(p, len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[o++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else {
            s[o++] = src[i];
        }
    }
    if (o > 0 && s[o - 1] == '\n')
        o--;
    s[o] = '\0';
    *out_len = o;
    return s;
}

void jlex(jparse *p, const char *src, size_t len)
{
    lexer lx = {.p = p, .line = 1, .line_starting = 1};
    lx.s = normalize(p, src, len, &lx.len);
    for (;;) {
        /* the next tag start */
        size_t q = lx.pos;
        int tag = -1;
        for (; q + 1 < lx.len; q++) {
            if (lx.s[q] != '{')
                continue;
            char c2 = lx.s[q + 1];
            if (c2 == '%' || c2 == '{' || c2 == '#') {
                tag = c2 == '%' ? TAG_BLOCK : c2 == '{' ? TAG_VAR : TAG_COMMENT;
                break;
            }
        }
        if (tag < 0) {
            if (lx.pos < lx.len) {
                jtok t = {.type = T_DATA, .line = lx.line};
                t.str = jparse_str(p, lx.s + lx.pos, lx.len - lx.pos);
                push_tok(&lx, t);
            }
            break;
        }
        int sign = 0;
        if (q + 2 < lx.len && (lx.s[q + 2] == '-' || lx.s[q + 2] == '+'))
            sign = lx.s[q + 2];
        size_t raw = tag == TAG_BLOCK ? match_raw_begin(&lx, q) : 0;
        emit_data(&lx, lx.pos, q, sign, tag == TAG_VAR);
        if (raw) {
            lx.line += count_nl(lx.s + q, raw);
            lx.pos = q + raw;
            set_line_starting(&lx, lx.pos);
            lex_raw(&lx);
            continue;
        }
        lx.pos = q + 2 + (sign != 0);
        lx.line_starting = 0;
        if (tag == TAG_COMMENT) {
            lex_comment(&lx);
            continue;
        }
        push_simple(&lx, tag == TAG_VAR ? T_VAR_BEGIN : T_BLOCK_BEGIN, lx.line);
        lex_tag(&lx, tag);
    }
    jtok eof = {.type = T_EOF, .line = lx.line};
    push_tok(&lx, eof);
}
