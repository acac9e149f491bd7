/*
 * Activation-aware weight quantization (AWQ; Lin et al. 2023) at build time
 * (docs/quantization.md, "AWQ"): the RTN quantizer of builder/quantize.h
 * applied to W * s instead of W, where s (one factor per input channel) is
 * searched so that the channels with large activations lose less to
 * rounding, and 1/s is folded into what produces the input, so that the
 * unquantized model computes the same function.
 *
 * The linears are taken in groups that read one value (q/k/v after the
 * attention norm, gate/up after the MLP norm, o_proj after attention,
 * down_proj after silu_mul). Per group:
 *
 *     s(alpha) = mean|x|^alpha, normalised by sqrt(max s * min s)
 *     alpha    = argmin over {0, 1/20, .., 19/20} of || x W^T - (x / s) Q(W s)^T ||^2
 *
 * over a sample of the calibration rows (alpha 0 is s = 1: round to
 * nearest). 1/s is folded into the RMSNorm's weight (q/k/v, gate/up), the
 * rows of v_proj (o_proj, only where n_heads == n_kv_heads, as AutoAWQ) or
 * of up_proj (down_proj); a group whose input comes from anything else
 * keeps s = 1. Optionally (clip) each (row, group of K) of W s is then
 * clipped to the fraction of its largest |value| in {1, 0.95, .., 0.55}
 * that minimises that group's share of the output error (not for q and k,
 * as AutoAWQ).
 *
 *     anvil_awq *a;
 *     TRY(anvil_awq_create(net, plan, kind, group, &a));     the groups and their folds
 *     ... anvil_awq_observe(a, value, x, rows) for each value of the calibration pass ...
 *     TRY(anvil_awq_search(a, plan, net, ck, clip, threads));  the scales (and clips)
 *     anvil_awq_attach(a, plan);                               the plan's converters
 *     ... build the engine from the plan ...
 *     anvil_awq_free(a);                                       after the plan's last fill
 *
 * Everything is deterministic: the same calibration rows give the same
 * scales and bytes, whatever the thread count.
 */
#ifndef ANVIL_BUILDER_AWQ_H
#define ANVIL_BUILDER_AWQ_H

#include <stdint.h>

#include "anvil/builder.h"

#include "anvil/network.h"
#include "builder/build_plan.h"
#include "io/safetensors.h"

/* Where a group's 1/s goes. */
typedef enum anvil_awq_fold {
    ANVIL_AWQ_FOLD_NONE = 0, /* nowhere: s stays 1 */
    ANVIL_AWQ_FOLD_NORM,     /* the RMSNorm weight that makes the input */
    ANVIL_AWQ_FOLD_ROWS,     /* the rows of the linear that makes it (v_proj, up_proj), and its bias */
} anvil_awq_fold;

#define ANVIL_AWQ_MAX_LINEARS 8
#define ANVIL_AWQ_GRID 20       /* alphas i / 20, i = 0..19 */
#define ANVIL_AWQ_CLIP_STEPS 10 /* clip fractions 1 - i / 20, i = 0..9 */

typedef struct anvil_awq_group {
    anvil_value input;                      /* the value every linear of the group reads */
    int32_t n_linears;
    int32_t weights[ANVIL_AWQ_MAX_LINEARS]; /* their weight matrices [N_i, k] (network weights) */
    int64_t k;                              /* input width */
    anvil_awq_fold fold;
    int32_t fold_weight, fold_bias;         /* network weights (-1: none) */
    float fold_offset;                      /* NORM: the norm's weight_offset (y = x / rms * (off + w)) */
    /* calibration: sum |x| per channel over every row, and a sample of rows */
    double *abs_sum;                        /* [k] */
    int64_t n_seen;                         /* rows summed */
    float *rows;                            /* [max_rows, k] */
    int32_t n_rows;
    /* results */
    float *scales;                          /* [k]: W's column c is multiplied by scales[c] */
    float alpha;                            /* the chosen alpha (0: RTN); -1: not searched */
    double err_rtn, err_awq;                /* || x W^T - x W'^T ||^2 on the sample, RTN and chosen */
} anvil_awq_group;

typedef struct anvil_awq {
    anvil_dtype kind;  /* the quantized weights' kind: U4 or I8 */
    int32_t group;     /* U4's group along K */
    int32_t max_rows;  /* rows sampled per group */
    int32_t n_groups;
    anvil_awq_group *groups;
    int32_t n_weights;  /* the network's; per weight below, NULL where none applies */
    const float **col;  /* [n_weights] column factors of a quantized matrix (its group's scales) */
    const float **div;  /* [n_weights] row divisors of a matrix (1-D weights: element divisors) */
    float *offset;      /* [n_weights] a folded norm's weight_offset (Gemma's 1): (off + w) / s - off */
    float **clip;       /* [n_weights] per (row, group) largest |w s| kept; NULL: none */
    int64_t n_tokens;   /* calibration tokens seen (stride sampling) */
    int64_t stride;     /* every stride-th row of a value is sampled (the calibration pass sets it
                           from the tokens it runs) */
} anvil_awq;

/*
 * The groups of net's quantized linears (those of plan with kind `kind`,
 * U4 or I8; a float kind: the unquantized linears, for tests of the fold
 * alone) and their folds; max_rows rows of each group's input are
 * kept from the calibration (every stride-th token: stride from
 * expected_tokens). *out NULL on failure.
 */
anvil_status anvil_awq_create(const anvil_network *net, const anvil_build_plan *plan, anvil_dtype kind,
                              int32_t group, int32_t max_rows, int64_t expected_tokens, anvil_awq **out);
void anvil_awq_free(anvil_awq *a); /* NULL is a no-op */

/* Whether value v is a group's input (the calibration pass need only keep those). */
int anvil_awq_wants(const anvil_awq *a, anvil_value v);

/*
 * One step's value v: x [n_rows, width] f32, rows first_token.. of the
 * calibration's token stream (the same for every value of one step).
 */
anvil_status anvil_awq_observe(anvil_awq *a, anvil_value v, const float *x, int64_t n_rows, int64_t width,
                               int64_t first_token);

/*
 * Searches every group's scales (and with clip the clip values) from the
 * observed activations and the weights' values (from ck through plan; ck
 * NULL: the plan's random weights). threads: the CPU threads for the
 * products (0: the CPUs). ANVIL_ERR_INVALID_ARG when nothing was observed.
 */
anvil_status anvil_awq_search(anvil_awq *a, const anvil_build_plan *plan, const anvil_network *net,
                              const anvil_checkpoint *ck, int clip, int threads);

/* Sets col and div (above) from every folded group's scales (search does). */
void anvil_awq_set_folds(anvil_awq *a);

/* Points the plan's quantized tensors and folded float tensors at the AWQ
 * converter (plan->awq = a; a must outlive the plan's fills). */
void anvil_awq_attach(anvil_awq *a, anvil_build_plan *plan);

/* The converter the attached tensors fill through: "awq". */
extern const anvil_stored_converter anvil_awq_converter;

/*
 * The factor row r of weight w (a matrix [N, K] read through the plan) is
 * quantized with: value = w[r][c] * col[c] / div[r], clipped to
 * +-clip[r][c / group] (a quantized matrix); a 1-D weight's element r
 * divided by div[r] ((off + w) / div[r] - off for a norm with an offset).
 * Exposed for the tests.
 */
void anvil_awq_transform_row(const anvil_awq *a, int32_t w, int64_t r, float *x, int64_t k);

/*
 * anvil_build_engine with the AWQ groups' scales set by scales_fn (each
 * group's scales [k], where its fold is not NONE) instead of calibrated,
 * then folded: into an unquantized build too, whose logits must then
 * be the plain build's up to rounding (the tests of the fold). scales_fn
 * NULL: anvil_build_engine.
 */
typedef void (*anvil_awq_scales_fn)(void *user, anvil_awq *a, const anvil_network *net);
anvil_status anvil_build_engine_awq(const char *model, const char *output, const anvil_build_options *opts,
                                    anvil_awq_scales_fn scales_fn, void *scales_user);

#endif
