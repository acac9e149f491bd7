/*
 * The arena of one parse or one render: small blocks are bumped out of 32 KiB
 * chunks, big ones (output buffers, long strings) get their own malloc so
 * that they can grow with realloc. Everything is freed at once, which is what
 * lets errors unwind with longjmp without leaking.
 */
#include <stdlib.h>
#include <string.h>

#include "jinja/jinja_internal.h"

#define CHUNK_SIZE ((size_t)32 << 10)
#define BIG_MIN    ((size_t)8 << 10)
#define ALIGN      16

struct jchunk {
    struct jchunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

/* Big blocks sit in a doubly linked list so that one can be reallocated. */
struct jbig {
    struct jbig *prev, *next;
    size_t size;
    _Alignas(16) unsigned char data[];
};

void jarena_init(jarena *a, size_t cap)
{
    memset(a, 0, sizeof *a);
    a->cap = cap;
}

static int account(jarena *a, size_t n)
{
    if (n > a->cap - a->used)
        return 0;
    a->used += n;
    return 1;
}

static void *big_alloc(jarena *a, size_t n)
{
    if (n > SIZE_MAX - sizeof(struct jbig) || !account(a, n))
        return NULL;
    struct jbig *b = calloc(1, sizeof *b + n);
    if (b == NULL) {
        a->used -= n;
        return NULL;
    }
    b->size = n;
    b->next = a->bigs;
    if (a->bigs)
        a->bigs->prev = b;
    a->bigs = b;
    return b->data;
}

void *jarena_alloc(jarena *a, size_t n)
{
    if (n == 0)
        n = 1;
    if (n >= BIG_MIN)
        return big_alloc(a, n);
    n = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    struct jchunk *ch = a->chunks;
    if (ch == NULL || ch->cap - ch->used < n) {
        if (!account(a, CHUNK_SIZE))
            return NULL;
        ch = malloc(sizeof *ch + CHUNK_SIZE);
        if (ch == NULL) {
            a->used -= CHUNK_SIZE;
            return NULL;
        }
        ch->used = 0;
        ch->cap = CHUNK_SIZE;
        ch->next = a->chunks;
        a->chunks = ch;
    }
    void *p = ch->data + ch->used;
    ch->used += n;
    memset(p, 0, n);
    return p;
}

void *jarena_grow(jarena *a, void *p, size_t old_n, size_t n)
{
    if (n <= old_n)
        return p;
    if (p == NULL || old_n < BIG_MIN) {
        void *q = jarena_alloc(a, n);
        if (q != NULL && p != NULL)
            memcpy(q, p, old_n);
        return q;
    }
    struct jbig *b = (struct jbig *)((unsigned char *)p - offsetof(struct jbig, data));
    if (n > SIZE_MAX - sizeof(struct jbig) || !account(a, n - b->size))
        return NULL;
    struct jbig *prev = b->prev, *next = b->next;
    size_t old_size = b->size;
    struct jbig *nb = realloc(b, sizeof *nb + n);
    if (nb == NULL) {
        a->used -= n - old_size;
        return NULL;
    }
    memset(nb->data + old_size, 0, n - old_size);
    nb->size = n;
    if (prev)
        prev->next = nb;
    else
        a->bigs = nb;
    if (next)
        next->prev = nb;
    return nb->data;
}

void jarena_free(jarena *a)
{
    struct jchunk *ch = a->chunks;
    while (ch) {
        struct jchunk *next = ch->next;
        free(ch);
        ch = next;
    }
    struct jbig *b = a->bigs;
    while (b) {
        struct jbig *next = b->next;
        free(b);
        b = next;
    }
    a->chunks = NULL;
    a->bigs = NULL;
    a->used = 0;
}
