/*
 * The request flags of `anvil run`, `anvil run --input` and `anvil bench`
 * in one table: each flag's name, argument, help text, JSONL field (the
 * OpenAI / vLLM name `--input` and `--dataset` lines use) and where its
 * value goes in an anvil_request. The three commands' parsers, their help
 * and the JSONL reader all read it, so a flag is spelled, checked and
 * described the same everywhere.
 *
 *   request_values rv;
 *   request_values_init(&rv);
 *   struct option longopts[64];
 *   request_flags_longopts(RF_BATCH, own_longopts, longopts, 64);
 *   ... in the getopt loop:
 *   int r = request_flags_option(&rv, RF_BATCH, c, optarg, "anvil run");   1 taken, 0 not a request flag, -1 reported
 *   ... per request:
 *   anvil_request_init(&req);
 *   request_values_apply(&rv, &req);        the flags given, over the defaults
 *   request_values_free(&rv);
 */
#ifndef ANVIL_TOOLS_REQUEST_FLAGS_H
#define ANVIL_TOOLS_REQUEST_FLAGS_H

#include <getopt.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "anvil/executor.h"

/* The commands a flag belongs to (request_flag.cmds). */
enum {
    RF_RUN = 1,   /* anvil run with one prompt (anvil_generate) */
    RF_BATCH = 2, /* anvil run --input / --beam-width (the executor) */
    RF_BENCH = 4, /* anvil bench: the synthetic requests, and the defaults of --dataset lines */
};

/* What a flag or field holds. */
typedef enum rf_kind {
    RF_INT,     /* an integer in [lo, hi] */
    RF_NUM,     /* a number in [lo, hi] ((lo, hi] with lo_open) */
    RF_SEED,    /* a non-negative 64-bit integer */
    RF_BOOL,    /* a flag without a value; a JSON true/false */
    RF_STRINGS, /* a flag given once per string; a JSON string or array of strings */
    RF_IDS,     /* comma-separated token ids; a JSON array of them */
} rf_kind;

/* Where a value goes in anvil_request (request_flag.id). */
typedef enum rf_id {
    RQ_MAX_TOKENS,
    RQ_MIN_TOKENS,
    RQ_TEMPERATURE,
    RQ_TOP_K,
    RQ_TOP_P,
    RQ_MIN_P,
    RQ_REPETITION_PENALTY,
    RQ_PRESENCE_PENALTY,
    RQ_FREQUENCY_PENALTY,
    RQ_SEED,
    RQ_N,
    RQ_LOGPROBS,
    RQ_IGNORE_EOS,
    RQ_STOP,
    RQ_STOP_TOKEN_IDS,
    RQ_BEAM_WIDTH,
    RQ_LENGTH_PENALTY,
    RQ_SKIP_SPECIAL_TOKENS,
    RQ_ADD_SPECIAL_TOKENS,
    RQ_COUNT
} rf_id;

typedef struct request_flag {
    const char *flag;    /* "top-p": --top-p; NULL: a JSONL field only */
    char short_flag;     /* 't' for -t, or 0 */
    const char *field;   /* "top_p": the JSONL field; NULL: a flag only */
    rf_kind kind;
    double lo, hi;       /* RF_INT, RF_NUM: the range */
    int lo_open;         /* RF_NUM: lo itself is out */
    const char *metavar; /* "P" in "--top-p P" */
    const char *help;
    unsigned cmds;       /* RF_RUN | RF_BATCH | RF_BENCH: the commands with the flag */
    rf_id id;
} request_flag;

extern const request_flag request_flags[];
extern const size_t n_request_flags;

/* The values of the request flags on a command line. */
typedef struct request_values {
    anvil_request req;       /* anvil_request_init, then each flag given */
    unsigned given;          /* 1u << rf_id for each flag given */
    const char **stop;       /* --stop strings (argv's) */
    int32_t *stop_ids;       /* --stop-token-ids */
} request_values;

void request_values_init(request_values *v);
void request_values_free(request_values *v);

/* 1 when the flag of id was given. */
int request_values_given(const request_values *v, rf_id id);

/* The flags given, copied over r's fields (pointers borrowed from v). */
void request_values_apply(const request_values *v, anvil_request *r);

/*
 * own (terminated by a zero entry) followed by the table's flags of cmd,
 * into out (cap entries, terminated). 0 ok; -1 when cap is too small.
 */
int request_flags_longopts(unsigned cmd, const struct option *own, struct option *out, size_t cap);

/* own followed by the table's short flags of cmd (with their ':'), into out. */
void request_flags_shortopts(unsigned cmd, const char *own, char *out, size_t cap);

/*
 * Handles getopt's result c for cmd: 1 when it was a request flag (its
 * value stored in v), 0 when it is not one, -1 when the value is bad
 * (reported on stderr with tool, e.g. "anvil run: --top-p expects a number
 * in (0, 1], got '1.5'").
 */
int request_flags_option(request_values *v, unsigned cmd, int c, const char *arg, const char *tool);

/* "1,2,3" (non-negative 32-bit ids, no empty item) into a malloc'd array
 * of *n ids: 0, or -1 when s is not such a list (or memory ran out). The
 * one parser of --prompt-ids and --stop-token-ids. */
int request_ids_parse(const char *s, int32_t **ids, int32_t *n);

/* The help lines of cmd's request flags, in table order. */
void request_flags_help(FILE *out, unsigned cmd);

/* The table entry of --name (without the dashes; "name=value" is fine), or NULL. */
const request_flag *request_flag_find(const char *name);

/* Storage that a request read from JSON points into. */
typedef struct request_storage {
    const char **stop;
    int32_t *stop_ids;
} request_storage;

/*
 * Sets r's fields from the table's fields present in obj (absent or null
 * ones keep r's values). Strings point into obj; arrays into st (freed by
 * request_storage_free). 0 ok; -1 with a message naming the field in err.
 */
int request_fields_from_json(json_t *obj, anvil_request *r, request_storage *st, char *err, size_t errlen);
void request_storage_free(request_storage *st);

/* 1 when key is one of the table's JSONL fields. */
int request_field_known(const char *key);

#endif
