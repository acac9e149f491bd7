/* The anvil tool's flag errors; see cli_flags.h. */
#include "cli_flags.h"

#include <stdio.h>
#include <string.h>

int cli_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts)
{
    opterr = 0;
    return getopt_long(argc, argv, shortopts, longopts, NULL);
}

/* Optimal string alignment distance (Damerau-Levenshtein without edits of
 * a swapped pair), on words of up to 63 characters. */
static size_t edit_distance(const char *a, const char *b)
{
    enum { M = 64 };
    size_t n = strlen(a), m = strlen(b);
    if (n >= M || m >= M)
        return (size_t)-1;
    size_t d[M][M];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= n; i++) {
        for (size_t j = 1; j <= m; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[n][m];
}

const char *cli_closest(const char *word, const char *const *names, size_t n)
{
    const size_t len = strlen(word);
    const size_t limit = len <= 4 ? 1 : len <= 8 ? 2 : 3;
    const char *best = NULL;
    size_t best_d = limit + 1;
    for (size_t i = 0; i < n; i++) {
        if (names[i] == NULL)
            continue;
        size_t d = edit_distance(word, names[i]);
        if (d < best_d) {
            best_d = d;
            best = names[i];
        }
    }
    return best;
}

static int has_value(const char *shortopts, int c)
{
    const char *p = c ? strchr(shortopts, c) : NULL;
    return p != NULL && p[1] == ':';
}

int cli_bad_flag(const char *tool, char **argv, const char *shortopts, const struct option *longopts)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "";
    if (arg != NULL && strncmp(arg, "--", 2) == 0 && arg[2] != '\0') {
        const char *name = arg + 2;
        const size_t len = strcspn(name, "=");
        const int given = name[len] == '=';
        const struct option *exact = NULL, *prefixed[4];
        size_t n_prefixed = 0, n_names = 0;
        for (const struct option *o = longopts; o->name; o++, n_names++) {
            if (strncmp(o->name, name, len) != 0)
                continue;
            if (o->name[len] == '\0')
                exact = o;
            else if (n_prefixed < 4)
                prefixed[n_prefixed++] = o;
            else
                n_prefixed++;
        }
        const struct option *o = exact ? exact : n_prefixed == 1 ? prefixed[0] : NULL;
        if (o != NULL && o->has_arg == no_argument && given) {
            fprintf(stderr, "%s: --%s takes no value; %s --help lists the flags\n", tool, o->name, tool);
            return 2;
        }
        if (o != NULL && o->has_arg == required_argument && !given) {
            fprintf(stderr, "%s: --%s needs a value; %s --help lists the flags\n", tool, o->name, tool);
            return 2;
        }
        if (o == NULL && n_prefixed > 1) {
            fprintf(stderr, "%s: --%.*s is ambiguous (", tool, (int)len, name);
            const size_t shown = n_prefixed < 4 ? n_prefixed : 4;
            for (size_t i = 0; i < shown; i++)
                fprintf(stderr, "%s--%s", i == 0 ? "" : i + 1 == shown && n_prefixed <= 4 ? " or " : ", ",
                        prefixed[i]->name);
            fprintf(stderr, "%s?); %s --help lists the flags\n", n_prefixed > 4 ? ", ..." : "", tool);
            return 2;
        }
        if (o == NULL) {
            char word[64];
            snprintf(word, sizeof word, "%.*s", (int)(len < 63 ? len : 63), name);
            const char *names[256];
            size_t k = 0;
            for (size_t i = 0; i < n_names && k < 256; i++)
                names[k++] = longopts[i].name;
            const char *best = cli_closest(word, names, k);
            if (best)
                fprintf(stderr, "%s: unknown flag --%.*s (did you mean --%s?); %s --help lists the flags\n", tool,
                        (int)len, name, best, tool);
            else
                fprintf(stderr, "%s: unknown flag --%.*s; %s --help lists the flags\n", tool, (int)len, name,
                        tool);
            return 2;
        }
        /* the long flag itself was fine: the error is a short one of a group */
    }
    if (optopt != 0 && has_value(shortopts, optopt))
        fprintf(stderr, "%s: -%c needs a value; %s --help lists the flags\n", tool, optopt, tool);
    else if (optopt > ' ' && optopt < 127)
        fprintf(stderr, "%s: unknown flag -%c; %s --help lists the flags\n", tool, optopt, tool);
    else
        fprintf(stderr, "%s: unknown flag %s; %s --help lists the flags\n", tool, arg ? arg : "", tool);
    return 2;
}
