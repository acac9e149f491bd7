/*
 * Where a benchmark writes its scratch models (random-weight folders and
 * engines, kept for later runs): --scratch DIR, else bench-scratch/ beside
 * the benchmark's binary, i.e. in the build folder; never the source tree
 * or the current directory.
 */
#ifndef ANVIL_BENCH_SCRATCH_H
#define ANVIL_BENCH_SCRATCH_H

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* given (may be NULL) or the default into out, created if missing. 0 ok;
 * -1 with a message on stderr. */
static inline int bench_scratch_dir(const char *given, char *out, size_t cap)
{
    if (given != NULL) {
        snprintf(out, cap, "%s", given);
    } else {
        char exe[3072];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) {
            fprintf(stderr, "cannot find this benchmark's folder (/proc/self/exe): give --scratch DIR\n");
            return -1;
        }
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash != NULL)
            *slash = '\0';
        const int k = snprintf(out, cap, "%s/bench-scratch", exe);
        if (k < 0 || (size_t)k >= cap) {
            fprintf(stderr, "the scratch folder's path is too long: give --scratch DIR\n");
            return -1;
        }
    }
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot make the scratch folder %s: %s\n", out, strerror(errno));
        return -1;
    }
    return 0;
}

#endif
