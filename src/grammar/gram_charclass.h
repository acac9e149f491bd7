/*
 * Character-level parsing shared by the regex and GBNF front ends
 * (gram_charclass.c).
 */
#ifndef ANVIL_GRAM_CHARCLASS_H
#define ANVIL_GRAM_CHARCLASS_H

#include "grammar/gram_internal.h"

/* A text being parsed: what names it in messages ("regular expression"). */
typedef struct gram_src {
    const char *p;
    size_t n, i;
    const char *what;
    int depth; /* nesting of groups, against max_schema_depth-like limits */
} gram_src;

/* The next UTF-8 character (checked). */
anvil_status gram_cp_next(gram_src *s, uint32_t *cp);
/* After a backslash: one character in *cp, or (regex and set non-NULL) a
 * shorthand such as \d added to set with *cp = UINT32_MAX. */
anvil_status gram_escape(gram_src *s, int regex, gram_ranges *set, uint32_t *cp);
/* After '[': the class up to its ']' into rs. */
anvil_status gram_bracket(gram_src *s, int regex, gram_ranges *rs);
/* The element of one character of rs; json: as written inside a JSON string. */
anvil_status gram_set_elem(gram_builder *b, gram_ranges *rs, int json, int32_t *elem);
anvil_status gram_cp_elem(gram_builder *b, uint32_t cp, int json, int32_t *elem);

#endif
