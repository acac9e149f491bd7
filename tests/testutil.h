/* Helpers shared by the C tests (cmocka). */
#ifndef ANVIL_TESTUTIL_H
#define ANVIL_TESTUTIL_H

/* 1 in an AddressSanitizer or ThreadSanitizer build (make test-asan,
 * make test-tsan), where code runs 5 to 15 times slower: the longest tests
 * run the same paths with fewer requests and tokens there (the python
 * tests see ANVIL_TEST_SANITIZED=1, tests/CMakeLists.txt). */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define ANVIL_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define ANVIL_TEST_SANITIZED 1
#endif
#endif
#ifndef ANVIL_TEST_SANITIZED
#define ANVIL_TEST_SANITIZED 0
#endif

/* 1 under ThreadSanitizer alone (make test-tsan, the slowest tier of CI):
 * there the longest executor tests run smaller still, the paths and the
 * threads the same. */
#if defined(__SANITIZE_THREAD__)
#define ANVIL_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ANVIL_TEST_TSAN 1
#endif
#endif
#ifndef ANVIL_TEST_TSAN
#define ANVIL_TEST_TSAN 0
#endif

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "anvil/status.h"

/* The shared data folder (ANVIL_SHARED_DIR, else ../shared from the source). */
const char *anvil_test_shared_dir(void);

/* Writes shared_dir + "/" + rel into a static buffer and returns it. */
const char *anvil_test_shared_path(const char *rel);

/* The folder of model `model`: tests/data/models/<model> of the source tree
 * (ANVIL_SOURCE_DIR) where the repository has it (tiny-gpt2), else the
 * shared models/<model>. A static buffer. */
const char *anvil_test_model_dir(const char *model);

/* The folder of its Hugging Face goldens (cases.json, logits.safetensors):
 * the same tests/data/models/<model> folder, else the shared
 * golden/models/<model>. A static buffer. */
const char *anvil_test_golden_dir(const char *model);

/* A fresh temporary directory for this test, removed with what it holds
 * when the test program exits (ANVIL_TEST_KEEP_TMP=1 keeps it). */
const char *anvil_test_tmpdir(void);

/* A copy of the shared model folder `model` as the temporary folder `name`
 * (under anvil_test_tmpdir), its config.json with the keys of the JSON
 * object `patch` replaced (json_object_update), every other file a symbolic
 * link to the original. Its path goes into out[cap]; fails the test on error. */
void anvil_test_model_variant(const char *model, const char *name, const char *patch, char *out, size_t cap);

/* A copy of the shared model folder `model` (one model.safetensors) as the
 * temporary folder `name`, whose weights are perturbed deterministically:
 * element i of the k-th tensor (in the file's order) becomes
 * w * (1 + amplitude * sin(i + 7k)), in the tensor's own dtype (amplitude 0:
 * the same bytes). edit (may be NULL) then sees each tensor as it will be
 * written (its name, dtype, shape and bytes; it may change the shape of one
 * to fewer elements, or its bytes). The other files are links to the
 * original's; config.json is patched with `patch` (NULL or "{}": as is).
 * Its path goes into out[cap]; fails the test on error. */
struct anvil_st_tensor;
void anvil_test_perturbed_model(const char *model, const char *name, double amplitude, const char *patch,
                                void (*edit)(struct anvil_st_tensor *t, void *data), char *out, size_t cap);

/* Writes len bytes to path; fails the test on error. */
void anvil_test_write_file(const char *path, const void *data, size_t len);

/* Asserts st == want and that anvil_last_error() contains needle. */
#define assert_status_msg(st, want, needle) anvil_test_assert_status_msg((st), (want), (needle), __FILE__, __LINE__)
void anvil_test_assert_status_msg(anvil_status st, anvil_status want, const char *needle, const char *file, int line);

/* cmocka's skip(), counted, so that a program whose every case skipped
 * (a CUDA test without a GPU) can tell CTest: return
 * anvil_test_run_group(tests) from main: cmocka's result, or 77 (the
 * tests' SKIP_RETURN_CODE) when no case failed and every case skipped. */
extern int anvil_test_n_skipped;
#undef skip
#define skip() (anvil_test_n_skipped++, _skip(__FILE__, __LINE__))
#define anvil_test_run_group(tests) \
    anvil_test_group_result(cmocka_run_group_tests(tests, NULL, NULL), sizeof(tests) / sizeof((tests)[0]))
int anvil_test_group_result(int n_failed, size_t n_tests);

/* A deterministic xorshift generator for test inputs. */
uint64_t anvil_test_rand(uint64_t *state);
float anvil_test_randf(uint64_t *state); /* uniform in [-1, 1) */

#endif
