/*
 * A set of literal strings (guided_choice, a JSON enum) as a trie of rules:
 * each rule branches on the next byte, so matching never carries more than
 * one parse per prefix, however many strings there are.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/gram_internal.h"

typedef struct lit {
    const char *p;
    size_t n;
} lit;

static int lit_cmp(const void *a, const void *b)
{
    const lit *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, n);
    if (c)
        return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

#define LIT_MAX_BRANCH_DEPTH 4096

/* The rule of literals l[lo..hi), all sharing their first depth bytes. */
static anvil_status node(gram_builder *b, const lit *l, size_t lo, size_t hi, size_t depth, int level, int32_t *rule)
{
    CHECK(level < LIT_MAX_BRANCH_DEPTH, ANVIL_ERR_INVALID_ARG,
          "too many literals sharing prefixes (more than %d branch points on one path)", LIT_MAX_BRANCH_DEPTH);
    int32_t r;
    TRY(gb_rule_new(b, NULL, &r));
    size_t i = lo;
    if (i < hi && l[i].n == depth) {
        TRY(gb_alt(b, r)); /* a literal ends here */
        while (i < hi && l[i].n == depth)
            i++; /* duplicates */
    }
    while (i < hi) {
        unsigned char c = (unsigned char)l[i].p[depth];
        size_t j = i + 1;
        while (j < hi && (unsigned char)l[j].p[depth] == c)
            j++;
        /* the bytes all of l[i..j) share past depth */
        size_t common = l[i].n;
        for (size_t k = i + 1; k < j; k++) {
            size_t m = depth;
            while (m < common && m < l[k].n && l[k].p[m] == l[i].p[m])
                m++;
            common = m;
        }
        TRY(gb_alt(b, r));
        TRY(gb_lit(b, r, l[i].p + depth, common - depth));
        if (j - i > 1 || l[i].n > common) {
            int32_t child;
            TRY(node(b, l, i, j, common, level + 1, &child));
            TRY(gb_elem(b, r, GRAM_REF(child)));
        }
        i = j;
    }
    *rule = r;
    return ANVIL_OK;
}

anvil_status gb_literals(gram_builder *b, const char *const *s, const size_t *n, int count, int32_t *rule)
{
    CHECK(count > 0, ANVIL_ERR_INVALID_ARG, "an empty list of choices");
    CHECK(count <= b->o.max_enum, ANVIL_ERR_INVALID_ARG, "%d choices are more than the limit of %d (max_enum)",
          count, b->o.max_enum);
    lit *l = malloc((size_t)count * sizeof *l);
    CHECK(l, ANVIL_ERR_OOM, "out of memory");
    for (int i = 0; i < count; i++) {
        l[i].p = s[i];
        l[i].n = n[i];
    }
    qsort(l, (size_t)count, sizeof *l, lit_cmp);
    anvil_status st = node(b, l, 0, (size_t)count, 0, 0, rule);
    free(l);
    return st;
}
