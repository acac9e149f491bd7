/* anvil_model_config_load_path: a config named by a folder, an engine or a
 * config file of any name (random weights take the last). */
#include "anvil/model_config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "core/fileutil.h"
#include "io/engine_file.h"

anvil_status anvil_model_config_load_path(const char *path, anvil_model_config *out)
{
    CHECK(out != NULL && path != NULL, ANVIL_ERR_INVALID_ARG, "anvil_model_config_load_path: NULL argument");
    memset(out, 0, sizeof *out);
    struct stat sb;
    CHECK(stat(path, &sb) == 0, errno == ENOENT || errno == ENOTDIR ? ANVIL_ERR_NOT_FOUND : ANVIL_ERR_IO,
          "cannot read %s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode) || anvil_engine_file_is_engine(path))
        return anvil_model_config_load(path, out);
    char *text = NULL;
    size_t len = 0;
    TRY(anvil_read_file(path, &text, &len));
    anvil_status st = ANVIL_OK;
    CHECK_GOTO(strlen(text) == len, ANVIL_ERR_FORMAT, done, "%s is not a config.json (it holds a NUL byte)", path);
    st = anvil_model_config_parse(text, out);
    if (st != ANVIL_OK)
        anvil_error_wrap("%s", path);
done:
    free(text);
    return st;
}
