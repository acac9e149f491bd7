/* Small file helpers shared by the loaders. */
#ifndef ANVIL_CORE_FILEUTIL_H
#define ANVIL_CORE_FILEUTIL_H

#include <stddef.h>

#include "anvil/status.h"

/* Reads a whole file into a NUL-terminated malloc'd buffer (*out, taken by
 * the caller; *len excludes the NUL). *out is NULL on failure. */
anvil_status anvil_read_file(const char *path, char **out, size_t *len);

/* 1 if path names an existing regular file, else 0. */
int anvil_file_exists(const char *path);

/* Writes dir + "/" + name into buf; ANVIL_ERR_INVALID_ARG if it does not fit. */
anvil_status anvil_path_join(char *buf, size_t cap, const char *dir, const char *name);

#endif
