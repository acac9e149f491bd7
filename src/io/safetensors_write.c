/*
 * Safetensors writer. The header is built with jansson (names are escaped
 * properly), the data is streamed tensor by tensor straight from the
 * caller's buffers or from a fill callback, so that a multi-GB file costs
 * no more memory than one chunk.
 */
#include "io/safetensors.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "core/error.h"

#define WRITE_CHUNK ((size_t)8 << 20)

/* Order of the data section: element size descending, then input order. */
typedef struct order_item {
    size_t esize;
    int64_t index;
} order_item;

static int cmp_order(const void *a, const void *b)
{
    const order_item *x = a, *y = b;
    if (x->esize != y->esize)
        return x->esize > y->esize ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* Checks one caller tensor (an argument error if inconsistent). */
static anvil_status check_tensor(const char *path, const anvil_st_tensor *t, int need_data)
{
    CHECK(t->name != NULL, ANVIL_ERR_INVALID_ARG, "%s: a tensor has no name", path);
    CHECK(strcmp(t->name, "__metadata__") != 0, ANVIL_ERR_INVALID_ARG,
          "%s: \"__metadata__\" is reserved and cannot name a tensor", path);
    CHECK((int)t->dtype >= 0 && t->dtype < ANVIL_DTYPE_COUNT, ANVIL_ERR_INVALID_ARG,
          "%s: tensor \"%s\": invalid dtype %d", path, t->name, (int)t->dtype);
    CHECK(t->n_dims >= 0 && t->n_dims <= ANVIL_MAX_DIMS, ANVIL_ERR_INVALID_ARG,
          "%s: tensor \"%s\": n_dims %d outside [0, %d]", path, t->name, t->n_dims, ANVIL_MAX_DIMS);
    uint64_t numel = 1;
    for (int d = 0; d < t->n_dims; d++) {
        CHECK(t->shape[d] >= 0, ANVIL_ERR_INVALID_ARG, "%s: tensor \"%s\": negative dimension", path,
              t->name);
        uint64_t dim = (uint64_t)t->shape[d];
        CHECK(dim == 0 || numel <= (uint64_t)INT64_MAX / dim, ANVIL_ERR_INVALID_ARG,
              "%s: tensor \"%s\": shape overflows", path, t->name);
        numel *= dim;
    }
    size_t esize = anvil_dtype_size(t->dtype);
    CHECK(numel <= (uint64_t)INT64_MAX / esize && numel * esize == (uint64_t)t->nbytes, ANVIL_ERR_INVALID_ARG,
          "%s: tensor \"%s\": nbytes %zu does not match its shape and dtype", path, t->name, t->nbytes);
    CHECK(!need_data || t->nbytes == 0 || t->data != NULL, ANVIL_ERR_INVALID_ARG,
          "%s: tensor \"%s\": data is NULL", path, t->name);
    return ANVIL_OK;
}

/* The header text (not yet padded), with offsets following `order`. */
static anvil_status build_header(const char *path, const anvil_st_tensor *tensors, const order_item *order,
                                 int64_t n, char **out)
{
    *out = NULL;
    anvil_status st = ANVIL_OK;
    json_t *root = json_object();
    CHECK_GOTO(root != NULL, ANVIL_ERR_OOM, done, "%s: out of memory for the header", path);
    json_t *meta = json_pack("{s:s}", "format", "pt");
    CHECK_GOTO(meta != NULL && json_object_set_new(root, "__metadata__", meta) == 0, ANVIL_ERR_OOM, done,
               "%s: out of memory for the header", path);
    uint64_t off = 0;
    for (int64_t k = 0; k < n; k++) {
        const anvil_st_tensor *t = &tensors[order[k].index];
        CHECK_GOTO(json_object_get(root, t->name) == NULL, ANVIL_ERR_INVALID_ARG, done,
                   "%s: tensor name \"%s\" appears twice", path, t->name);
        json_t *shape = json_array();
        CHECK_GOTO(shape != NULL, ANVIL_ERR_OOM, done, "%s: out of memory for the header", path);
        for (int d = 0; d < t->n_dims; d++)
            json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
        json_t *e = json_pack("{s:s,s:o,s:[I,I]}", "dtype", anvil_st_dtype_name(t->dtype), "shape", shape,
                              "data_offsets", (json_int_t)off, (json_int_t)(off + t->nbytes));
        CHECK_GOTO(e != NULL, ANVIL_ERR_OOM, done, "%s: out of memory for the header", path);
        /* Fails for a name that is not valid UTF-8 (JSON cannot hold it). */
        CHECK_GOTO(json_object_set_new(root, t->name, e) == 0, ANVIL_ERR_INVALID_ARG, done,
                   "%s: tensor name \"%s\" is not valid UTF-8", path, t->name);
        off += t->nbytes;
    }
    *out = json_dumps(root, JSON_COMPACT);
    CHECK_GOTO(*out != NULL, ANVIL_ERR_OOM, done, "%s: out of memory for the header", path);
done:
    json_decref(root);
    return st;
}

static anvil_status write_impl(const char *path, const anvil_st_tensor *tensors, int64_t n,
                               anvil_st_fill_fn fill, void *user)
{
    CHECK(path != NULL, ANVIL_ERR_INVALID_ARG, "anvil_safetensors_write: path is NULL");
    CHECK(n >= 0 && (n == 0 || tensors != NULL), ANVIL_ERR_INVALID_ARG, "%s: bad tensor list", path);
    for (int64_t i = 0; i < n; i++)
        TRY(check_tensor(path, &tensors[i], fill == NULL));

    anvil_status st = ANVIL_OK;
    FILE *fp = NULL;
    char *header = NULL;
    void *chunk = NULL;
    int created = 0;
    order_item *order = calloc(n ? (size_t)n : 1, sizeof *order);
    CHECK_GOTO(order != NULL, ANVIL_ERR_OOM, done, "%s: out of memory", path);
    for (int64_t i = 0; i < n; i++)
        order[i] = (order_item){anvil_dtype_size(tensors[i].dtype), i};
    qsort(order, (size_t)n, sizeof *order, cmp_order);
    TRY_GOTO(build_header(path, tensors, order, n, &header), done);

    size_t hlen = strlen(header);
    size_t padded = (hlen + 7) & ~(size_t)7;
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (uint8_t)((uint64_t)padded >> (8 * i));

    fp = fopen(path, "wb");
    CHECK_GOTO(fp != NULL, ANVIL_ERR_IO, done, "cannot create %s: %s", path, strerror(errno));
    created = 1;
    static const char spaces[8] = "        ";
    CHECK_GOTO(fwrite(lenbuf, 1, 8, fp) == 8 && fwrite(header, 1, hlen, fp) == hlen &&
                   fwrite(spaces, 1, padded - hlen, fp) == padded - hlen,
               ANVIL_ERR_IO, done, "cannot write %s: %s", path, strerror(errno));
    if (fill != NULL) {
        chunk = malloc(WRITE_CHUNK);
        CHECK_GOTO(chunk != NULL, ANVIL_ERR_OOM, done, "%s: out of memory for a write buffer", path);
    }
    for (int64_t k = 0; k < n; k++) {
        const anvil_st_tensor *t = &tensors[order[k].index];
        if (fill == NULL) {
            CHECK_GOTO(t->nbytes == 0 || fwrite(t->data, 1, t->nbytes, fp) == t->nbytes, ANVIL_ERR_IO, done,
                       "cannot write %s: %s", path, strerror(errno));
            continue;
        }
        for (size_t off = 0; off < t->nbytes; off += WRITE_CHUNK) {
            size_t len = t->nbytes - off < WRITE_CHUNK ? t->nbytes - off : WRITE_CHUNK;
            st = fill(user, order[k].index, chunk, off, len);
            if (st != ANVIL_OK)
                goto done;
            CHECK_GOTO(fwrite(chunk, 1, len, fp) == len, ANVIL_ERR_IO, done, "cannot write %s: %s", path,
                       strerror(errno));
        }
    }
    int rc = fclose(fp);
    fp = NULL;
    CHECK_GOTO(rc == 0, ANVIL_ERR_IO, done, "cannot write %s: %s", path, strerror(errno));
done:
    if (fp != NULL)
        fclose(fp);
    if (st != ANVIL_OK && created)
        unlink(path);
    free(chunk);
    free(header);
    free(order);
    return st;
}

anvil_status anvil_safetensors_write(const char *path, const anvil_st_tensor *tensors, int64_t n)
{
    return write_impl(path, tensors, n, NULL, NULL);
}

anvil_status anvil_safetensors_write_stream(const char *path, const anvil_st_tensor *tensors, int64_t n,
                                            anvil_st_fill_fn fill, void *user)
{
    CHECK(fill != NULL, ANVIL_ERR_INVALID_ARG, "anvil_safetensors_write_stream: fill is NULL");
    return write_impl(path, tensors, n, fill, user);
}
