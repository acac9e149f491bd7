#include "core/fileutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"

anvil_status anvil_read_file(const char *path, char **out, size_t *len)
{
    *out = NULL;
    if (len)
        *len = 0;
    /* O_NONBLOCK: a FIFO or device must not block the open; it is refused below */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    CHECK(fd >= 0, ANVIL_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    FILE *f = fdopen(fd, "rb");
    if (f == NULL) {
        int e = errno;
        close(fd);
        return ANVIL_FAIL(ANVIL_ERR_IO, "cannot open %s: %s", path, strerror(e));
    }
    anvil_status st = ANVIL_OK;
    char *buf = NULL;
    struct stat sb;
    CHECK_GOTO(fstat(fileno(f), &sb) == 0 && S_ISREG(sb.st_mode), ANVIL_ERR_IO, done,
               "%s is not a regular file", path);
    size_t size = (size_t)sb.st_size;
    buf = malloc(size + 1);
    CHECK_GOTO(buf != NULL, ANVIL_ERR_OOM, done, "out of memory reading %s (%zu bytes)", path, size);
    CHECK_GOTO(fread(buf, 1, size, f) == size, ANVIL_ERR_IO, done, "cannot read %s", path);
    buf[size] = '\0';
    *out = buf;
    buf = NULL;
    if (len)
        *len = size;
done:
    free(buf);
    fclose(f);
    return st;
}

int anvil_file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

anvil_status anvil_path_join(char *buf, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    CHECK(n >= 0 && (size_t)n < cap, ANVIL_ERR_INVALID_ARG, "path too long: %s/%s", dir, name);
    return ANVIL_OK;
}
