/*
 * Internals of the Jinja-subset interpreter shared by the jinja_*.c files:
 * the arena, values with Python semantics, tokens, the AST and the render
 * context. The interface the rest of anvil uses is jinja.h.
 *
 * Errors inside parsing and rendering unwind with longjmp to the entry point
 * (jinja_parse / jinja_render), which frees the arena that holds every
 * allocation made on the way: no path can leak, and the evaluator does not
 * have to thread an error code through every Python operation.
 */
#ifndef ANVIL_TOKENIZER_JINJA_INTERNAL_H
#define ANVIL_TOKENIZER_JINJA_INTERNAL_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "jinja/jinja.h"

/* ------------------------------------------------------------------ arena */

/* Bump allocation in chunks; blocks of 64 KiB and more are allocated on their
 * own so that they can grow in place (output buffers). Every byte counts
 * against cap. */
typedef struct jarena {
    struct jchunk *chunks;
    struct jbig *bigs;
    size_t used; /* bytes handed out, counted against cap */
    size_t cap;
} jarena;

void jarena_init(jarena *a, size_t cap);
/* NULL when cap would be exceeded or malloc fails. Memory is zeroed. */
void *jarena_alloc(jarena *a, size_t n);
/* Grows a block from jarena_alloc to n bytes (contents kept); NULL on failure
 * (the old block stays valid). */
void *jarena_grow(jarena *a, void *p, size_t old_n, size_t n);
void jarena_free(jarena *a);

/* ------------------------------------------------------------------ values */

typedef enum jkind {
    JK_UNDEF,
    JK_NONE,
    JK_BOOL,
    JK_INT,
    JK_FLOAT,
    JK_STR,
    JK_LIST,
    JK_TUPLE,
    JK_DICT,
    JK_NS,   /* namespace(): a mutable dict with attribute syntax */
    JK_LOOP, /* the loop variable of a for loop */
    JK_MACRO,
    JK_FUNC,   /* a global function: range, namespace, raise_exception, ... */
    JK_METHOD, /* a bound method: 'abc'.upper, d.items, loop.cycle */
    JK_GEN,    /* what jinja2's lazy filters return (map, select, unique, ...): computed
                * eagerly, but iterated once, always true, without len() */
} jkind;

/* Immutable string: len bytes of valid UTF-8 followed by a NUL. */
typedef struct jstr {
    size_t len;
    int64_t ncp; /* code points, or -1 while not yet counted */
    char s[];
} jstr;

typedef struct jv {
    uint8_t k;   /* jkind */
    uint8_t sub; /* JK_UNDEF: the error kind it raises (JE_*) */
    union {
        int64_t i; /* JK_INT, JK_BOOL */
        double f;
        jstr *s; /* JK_STR; JK_UNDEF: the message it raises when used (NULL: generic) */
        struct jlist *l;
        struct jdict *d; /* JK_DICT, JK_NS */
        struct jloop *loop;
        struct jmacro *m;
        struct jmethod *mt;
        int fn; /* JK_FUNC */
    } u;
} jv;

typedef struct jlist {
    size_t n, cap;
    jv *v;
    size_t pos; /* JK_GEN: the items already consumed */
    jstr *err;  /* JK_GEN: raised when consumed (jinja2 fails lazily), or NULL */
    int err_kind;
    const char *gen_type; /* JK_GEN: Python's type name when not "generator" */
} jlist;

/* Insertion-ordered, looked up by linear search with Python equality: chat
 * messages have a handful of keys. */
typedef struct jdict {
    size_t n, cap;
    jv *k;
    jv *v;
} jdict;

typedef struct jloop {
    int64_t index0, length;
    const jlist *items; /* what is iterated, for previtem / nextitem */
    int depth0;
    jv last_changed; /* loop.changed() state */
    int has_changed;
} jloop;

struct jnode;
struct jscope;

typedef struct jmacro {
    const struct jnode *node; /* N_MACRO, or N_CALL_BLOCK for caller() */
    struct jscope *closure;
} jmacro;

typedef struct jmethod {
    jv self;
    int id;
} jmethod;

/* The exception kinds of Python / jinja2 that a render can raise; the error
 * message starts with the name, as transformers reports it. */
enum {
    JE_TEMPLATE,  /* TemplateError: raise_exception() */
    JE_UNDEFINED, /* UndefinedError */
    JE_TYPE,      /* TypeError */
    JE_VALUE,     /* ValueError */
    JE_ZERODIV,   /* ZeroDivisionError */
    JE_OVERFLOW,  /* OverflowError */
    JE_SECURITY,  /* SecurityError: the sandbox refused */
    JE_RUNTIME,   /* TemplateRuntimeError */
    JE_SYNTAX,    /* TemplateSyntaxError */
    JE_ASSERTION, /* TemplateAssertionError: unknown filter or test */
    JE_KEY,       /* KeyError */
    JE_INDEX,     /* IndexError */
    JE_LIMIT,     /* anvil's resource limits */
    JE_UNSUPPORTED,
    JE_ATTRIBUTE,  /* AttributeError */
    JE_FILTER_ARG, /* FilterArgumentError */
    JE_RECURSION,  /* RecursionError: values nested too deeply */
};

/* ------------------------------------------------------------------ tokens */

typedef enum jtok_type {
    T_DATA,
    T_VAR_BEGIN,
    T_VAR_END,
    T_BLOCK_BEGIN,
    T_BLOCK_END,
    T_NAME,
    T_STRING,
    T_INT,
    T_FLOAT,
    T_OP,
    T_EOF,
} jtok_type;

typedef enum jop {
    OP_NONE,
    OP_ADD,
    OP_SUB,
    OP_DIV,
    OP_FLOORDIV,
    OP_MUL,
    OP_MOD,
    OP_POW,
    OP_TILDE,
    OP_LBRACKET,
    OP_RBRACKET,
    OP_LPAREN,
    OP_RPAREN,
    OP_LBRACE,
    OP_RBRACE,
    OP_EQ,
    OP_NE,
    OP_GT,
    OP_GTEQ,
    OP_LT,
    OP_LTEQ,
    OP_ASSIGN,
    OP_DOT,
    OP_COLON,
    OP_PIPE,
    OP_COMMA,
    OP_SEMICOLON,
    /* compare-only pseudo operators */
    OP_IN,
    OP_NOTIN,
} jop;

typedef struct jtok {
    uint8_t type; /* jtok_type */
    uint8_t op;   /* jop for T_OP */
    int line;
    jstr *str; /* T_DATA, T_NAME, T_STRING (decoded) */
    int64_t i; /* T_INT */
    double f;  /* T_FLOAT */
} jtok;

/* ------------------------------------------------------------------ AST */

typedef enum jnode_kind {
    /* statements */
    N_TEXT,         /* str */
    N_OUTPUT,       /* a */
    N_IF,           /* a test, v body, w else (an elif is an N_IF alone in w) */
    N_FOR,          /* a target, b iterable, c filter or NULL, v body, w else */
    N_SET,          /* a target, b value */
    N_SET_BLOCK,    /* a target, c filter chain or NULL, v body */
    N_MACRO,        /* str name, names params, w defaults (for the last nw params), v body */
    N_CALL_BLOCK,   /* a the call, names/w caller params and defaults, v body */
    N_FILTER_BLOCK, /* c filter chain (innermost input NULL), v body */
    N_WITH,         /* names targets, w values, v body */
    N_GENERATION,   /* v body */
    N_BREAK,
    N_CONTINUE,
    /* expressions */
    E_CONST,   /* cst */
    E_NAME,    /* str */
    E_NSREF,   /* str namespace name, str2 attribute (assignment target) */
    E_GETATTR, /* a object, str attribute */
    E_GETITEM, /* a object, b key (an E_SLICE for slices) */
    E_SLICE,   /* a start, b stop, c step; each may be NULL */
    E_CALL,    /* a callee, v positional, w keyword values, names keyword names */
    E_FILTER,  /* a input (NULL inside a filter block), str name, fid, args like E_CALL */
    E_TEST,    /* a input, str name, fid, args like E_CALL */
    E_BIN,     /* op, a, b */
    E_NEG,
    E_POS,
    E_NOT,
    E_AND,
    E_OR,
    E_COMPARE, /* a first, v operands, ops */
    E_CONCAT,  /* v parts */
    E_COND,    /* a test, b value if true, c value if false or NULL */
    E_LIST,    /* v */
    E_TUPLE,   /* v */
    E_DICT,    /* v keys, w values */
} jnode_kind;

typedef struct jnode {
    uint8_t kind;
    uint8_t op;
    int line;
    int fid; /* E_FILTER / E_TEST: index in the table, -1: unknown (fails when run) */
    struct jnode *a, *b, *c;
    struct jnode **v;
    struct jnode **w;
    jstr **names;
    uint8_t *ops;
    int nv, nw, nnames;
    jstr *str, *str2;
    jv cst;
} jnode;

struct jinja_template {
    jarena arena;
    jnode **body;
    int nbody;
};

/* ------------------------------------------------------------------ render */

typedef struct jbuf {
    char *p;
    size_t n, cap;
} jbuf;

typedef struct jscope {
    struct jscope *parent;
    jdict vars;
} jscope;

typedef struct jctx {
    jarena arena;
    jmp_buf jb;
    char err[768];
    int err_kind;
    jinja_limits lim;
    int64_t steps;
    int depth;           /* macro calls and loops */
    int eval_depth;      /* expression recursion */
    int vdepth;          /* value recursion (repr, tojson) */
    jbuf *out;           /* where output goes now (captures swap it) */
    jdict *context;      /* the variables the caller passed */
    struct jscope *root; /* the template's top-level scope */
} jctx;

/* Records "<Kind>: message" and unwinds to the entry point. */
#if defined(__GNUC__)
__attribute__((noreturn, format(printf, 3, 4)))
#endif
void jfail(jctx *c, int kind, const char *fmt, ...);

/* Counts one unit of work; fails past the step limit. */
void jstep(jctx *c);

/* ---- allocation and strings (jinja_value.c) */
void *jalloc(jctx *c, size_t n);
jstr *jstr_new(jctx *c, const char *s, size_t len);
jstr *jstr_cat(jctx *c, const jstr *a, const jstr *b);
int64_t jstr_ncp(jstr *s); /* code point count */
jstr *jstr_fmt(jctx *c, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

void jbuf_put(jctx *c, jbuf *b, const char *s, size_t n);
void jbuf_putc(jctx *c, jbuf *b, char ch);
void jbuf_puts(jctx *c, jbuf *b, const char *s);
void jbuf_put_cp(jctx *c, jbuf *b, uint32_t cp);
jstr *jbuf_str(jctx *c, const jbuf *b);

/* UTF-8 over valid input */
uint32_t ju8_next(const char *s, size_t len, size_t *i);
size_t ju8_encode(uint32_t cp, char out[4]);
int ju8_valid(const char *s, size_t len);
int jpy_isspace(uint32_t cp);

/* ---- values (jinja_value.c) */
static inline jv jv_none(void)
{
    jv v = {.k = JK_NONE};
    return v;
}
static inline jv jv_bool(int b)
{
    jv v = {.k = JK_BOOL};
    v.u.i = b ? 1 : 0;
    return v;
}
static inline jv jv_int(int64_t i)
{
    jv v = {.k = JK_INT};
    v.u.i = i;
    return v;
}
static inline jv jv_float(double f)
{
    jv v = {.k = JK_FLOAT};
    v.u.f = f;
    return v;
}
static inline jv jv_strv(jstr *s)
{
    jv v = {.k = JK_STR};
    v.u.s = s;
    return v;
}
jv jv_str(jctx *c, const char *s, size_t len);
jv jv_cstr(jctx *c, const char *s);
/* An undefined value that raises "UndefinedError: <message>" when used. */
jv jv_undef(jctx *c, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
jv jv_undef_plain(void);
/* The undefined of a missing attribute or item of obj. */
jv jv_undef_attr(jctx *c, jv obj, const jstr *name);
jv jv_undef_item(jctx *c, jv obj, jv key);
jv jv_list(jctx *c, size_t cap);
jv jv_tuple(jctx *c, size_t n);
jv jv_dict(jctx *c);
void jlist_push(jctx *c, jlist *l, jv v);
void jdict_set(jctx *c, jdict *d, jv k, jv v);
int jdict_get(jctx *c, const jdict *d, jv k, jv *out);
int jdict_get_str(const jdict *d, const char *k, size_t klen, jv *out);

const char *jv_type_name(jv v);
int jv_truthy(jv v);
int jv_eq(jctx *c, jv a, jv b);
/* a < b and friends with Python rules; TypeError for unorderable types. */
int jv_lt(jctx *c, jv a, jv b);
int jv_cmp_op(jctx *c, int op, jv a, jv b);
/* Fails with UndefinedError when v is undefined. */
void jv_check_defined(jctx *c, jv v);

/* str() and repr() as Python prints them. */
void jv_str_into(jctx *c, jbuf *b, jv v);
void jv_repr_into(jctx *c, jbuf *b, jv v);
jstr *jv_to_jstr(jctx *c, jv v);
void jpy_float_repr(double f, char out[32]);
void jpy_str_repr_into(jctx *c, jbuf *b, const char *s, size_t len);

/* len(); TypeError for values without a length. */
int64_t jv_len(jctx *c, jv v);
/* list(v): strings give their characters, dicts their keys; a generator
 * gives what is left of it and is then exhausted. */
jlist *jv_iter_list(jctx *c, jv v);
/* A generator over the items of l. */
jv jv_gen(jlist *l);
/* A generator that raises "<kind>: <message>" when it is consumed: what jinja2's
 * lazy filters do with input they cannot iterate. */
jv jv_gen_failing(jctx *c, int kind, const char *message);
/* Raises the error of a failing generator. */
void jv_gen_check(jctx *c, jv g);

/* ---- operators and access (jinja_ops.c) */
jv jop_binary(jctx *c, int op, jv a, jv b);
jv jop_neg(jctx *c, jv a);
jv jop_pos(jctx *c, jv a);
int jop_contains(jctx *c, jv container, jv item);
jv jop_getattr(jctx *c, jv obj, const jstr *name);
jv jop_getitem(jctx *c, jv obj, jv key);
jv jop_slice(jctx *c, jv obj, jv start, jv stop, jv step);
/* str % args (printf-style formatting, jinja_format.c) */
jv jop_percent_format(jctx *c, const jstr *fmt, jv args);

/* ---- calls: arguments as evaluated */
typedef struct jargs {
    jv *pos;
    int npos;
    jv *kwv;
    jstr **kwn;
    uint8_t *used; /* keyword arguments consumed */
    int nkw;
} jargs;

/* Takes the argument of the named or positional parameter at index idx (or
 * returns 0); marks it used. */
int jargs_take(jctx *c, jargs *a, int idx, const char *name, jv *out);
/* Fails on arguments left over after the takes. */
void jargs_done(jctx *c, jargs *a, const char *fname, int max_pos);

/* ---- methods and globals (jinja_methods.c, jinja_builtins.c) */
/* The bound method name of obj, or 0 when it has none. */
int jmethod_lookup(jctx *c, jv obj, const jstr *name, jv *out);
jv jmethod_call(jctx *c, const jmethod *m, jargs *args);
int jglobal_lookup(const char *name, size_t len, jv *out);
/* str.format(*args, **kwargs) (jinja_format.c) */
jv jformat_str_method(jctx *c, const jstr *fmt, jargs *a);
jv jglobal_call(jctx *c, int fn, jargs *args);
const char *jglobal_name(int fn);

/* ---- filters and tests (jinja_filters.c, jinja_filters_seq.c, jinja_tests.c) */
/* the sequence filters, with jinja2's names (jinja_filters_seq.c) */
jv jf_dictsort(jctx *c, jv v, jargs *a, const char *name);
jv jf_first_last(jctx *c, jv v, jargs *a, const char *name);
jv jf_groupby(jctx *c, jv v, jargs *a, const char *name);
jv jf_items(jctx *c, jv v, jargs *a, const char *name);
jv jf_join(jctx *c, jv v, jargs *a, const char *name);
jv jf_list(jctx *c, jv v, jargs *a, const char *name);
jv jf_map(jctx *c, jv v, jargs *a, const char *name);
jv jf_select(jctx *c, jv v, jargs *a, const char *name);
jv jf_minmax(jctx *c, jv v, jargs *a, const char *name);
jv jf_batch(jctx *c, jv v, jargs *a, const char *name);
jv jf_reverse(jctx *c, jv v, jargs *a, const char *name);
jv jf_sort(jctx *c, jv v, jargs *a, const char *name);
jv jf_sum(jctx *c, jv v, jargs *a, const char *name);
jv jf_unique(jctx *c, jv v, jargs *a, const char *name);
int jfilter_find(const char *name, size_t len);
jv jfilter_apply(jctx *c, int fid, jv v, jargs *args);
int jtest_find(const char *name, size_t len);
int jtest_apply(jctx *c, int tid, jv v, jargs *args);
/* Python-style string helpers shared by filters and methods */
jstr *jpy_strip(jctx *c, const jstr *s, const jstr *chars, int left, int right);
jstr *jpy_case(jctx *c, const jstr *s, int mode); /* 0 lower, 1 upper, 2 title, 3 capitalize, 4 swapcase */
/* The multi-character case mapping of cp (mode 0 lower, 1 upper, 2 title):
 * the count written to out, 0 when cp maps to one character (jinja_casing.c) */
int jpy_special_case(uint32_t cp, int mode, uint32_t out[3]);
jstr *jpy_replace(jctx *c, const jstr *s, const jstr *old, const jstr *new_, int64_t count);
jv jpy_split(jctx *c, const jstr *s, const jstr *sep, int64_t maxsplit, int from_right);
jv jpy_splitlines(jctx *c, const jstr *s, int keepends);

/* ---- JSON (jinja_json.c) */
typedef struct jjson_opts {
    int ensure_ascii;
    int sort_keys;
    const char *indent; /* NULL: none */
    size_t indent_len;
    const char *item_sep, *key_sep;
} jjson_opts;
void jjson_dump(jctx *c, jbuf *b, jv v, const jjson_opts *o);
/* JSON (jansson) -> value */
jv jjson_to_value(jctx *c, const json_t *j);

/* ---- evaluation (jinja_eval.c) */
jv jeval(jctx *c, jscope *s, const jnode *n);
jv jcall_value(jctx *c, jscope *s, jv callee, jargs *args);

/* ---- lexing and parsing (jinja_lexer.c, jinja_parser.c) */
typedef struct jparse {
    jarena *arena;
    jmp_buf jb;
    char err[768];
    jtok *toks;
    size_t ntoks, cap, pos;
    int depth;
    int soft;      /* inside an if or a conditional expression: unknown filters fail when run */
    int loops;     /* enclosing for loops (break / continue) */
    int assertion; /* the error is a TemplateAssertionError */
    int oom;
    const char *tag_stack[64]; /* open block tags, for error messages */
    int tag_stack_n;
    const char *end_stack[64]; /* the end tags looked for, for error messages */
    int end_stack_n;
} jparse;

#if defined(__GNUC__)
__attribute__((noreturn, format(printf, 3, 4)))
#endif
void jparse_fail(jparse *p, int line, const char *fmt, ...);
void *jparse_alloc(jparse *p, size_t n);
jstr *jparse_str(jparse *p, const char *s, size_t len);
void jlex(jparse *p, const char *src, size_t len);

#endif
