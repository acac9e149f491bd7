/*
 * The anvil tool's flag errors: one line that names the flag and, for a
 * typo, the closest flag the command has, instead of the whole usage.
 *
 *   int c;
 *   while ((c = cli_getopt(argc, argv, "m:h", longopts)) != -1) {
 *       switch (c) {
 *       ...
 *       default: return cli_bad_flag("anvil run", argv, "m:h", longopts);
 *       }
 *   }
 *
 *   anvil run: unknown flag --temprature (did you mean --temperature?); anvil run --help lists the flags
 */
#ifndef ANVIL_TOOLS_CLI_FLAGS_H
#define ANVIL_TOOLS_CLI_FLAGS_H

#include <getopt.h>
#include <stddef.h>

/* getopt_long with getopt's own messages off (cli_bad_flag says it). */
int cli_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts);

/*
 * After cli_getopt returned '?' (or ':'): prints the one-line error for the
 * flag it stopped at (unknown, with the closest of longopts when close
 * enough; ambiguous; a value missing; a value given to a flag that takes
 * none) to stderr, prefixed with tool. Returns 2, the usage exit code.
 */
int cli_bad_flag(const char *tool, char **argv, const char *shortopts, const struct option *longopts);

/*
 * The closest of names[0..n) to word by edit distance (insertions,
 * deletions, substitutions and swaps of neighbours), or NULL when none is
 * close enough to be a typo of it (at most 1 edit for a word of up to 4
 * characters, 2 up to 8, 3 beyond). NULL entries of names are skipped.
 */
const char *cli_closest(const char *word, const char *const *names, size_t n);

#endif
