/* test.h - a tiny test harness. Each tests/test_*.c is one binary:
 *
 *   TEST(conv_forward) { ... CHECK(x == y); CHECK_REL(a, b, n, 1e-4); }
 *   int main(void) { RUN(conv_forward); return test_summary(); }
 *
 * Lines "PASS name", "FAIL name: why", "SKIP name: why" are counted by tests/run.sh.
 */
#ifndef CD_TEST_H
#define CD_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "engine/graph.h"

extern int test_failed_flag, test_skipped_flag;
extern char test_msg[1024];

#define TEST(name) static void name(void)
#define RUN(name) test_run(#name, name)
#define FAILF(...) do { snprintf(test_msg, sizeof test_msg, __VA_ARGS__); test_failed_flag = 1; return; } while (0)
#define CHECK(c) do { if (!(c)) FAILF("%s:%d: %s", __FILE__, __LINE__, #c); } while (0)
#define CHECKF(c, ...) do { if (!(c)) { int k_ = snprintf(test_msg, sizeof test_msg, "%s:%d: ", __FILE__, __LINE__); \
    snprintf(test_msg + k_, sizeof test_msg - k_, __VA_ARGS__); test_failed_flag = 1; return; } } while (0)
/* CHECK_OK: a cdiff call returning 0/-1 */
#define CHECK_OK(e) do { if ((e) != 0) FAILF("%s:%d: %s failed: %s", __FILE__, __LINE__, #e, cd_last_error()); } while (0)
/* relative L2 error of float arrays a (result) vs ref */
#define CHECK_REL(a, ref, n, tol) do { double e_ = test_rel_err((a), (ref), (n)); \
    if (!(e_ <= (tol))) FAILF("%s:%d: rel err %.3g > %.3g (%s vs %s)", __FILE__, __LINE__, e_, (double)(tol), #a, #ref); } while (0)
#define SKIP(...) do { snprintf(test_msg, sizeof test_msg, __VA_ARGS__); test_skipped_flag = 1; return; } while (0)

/* 1 in the ASan/UBSan build (make SAN=1, the second pass of make check). There
 * a few long tests run a reduced size (fewer steps, images, fault events) that
 * still takes every code path of the full one: memory errors and UB show on
 * small inputs too, and the optimised pass checks the full numbers. */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_SANITIZED 1
#else
#define TEST_SANITIZED 0
#endif

/* ---- float32 error model: where every tolerance comes from ----
 * u = 2^-24 is float32's unit roundoff. A sum or dot product of K terms,
 * in any order (Higham, Accuracy and Stability of Numerical Algorithms, 3.1):
 *   worst:   |computed - exact| <= gamma_K * sum|terms|,   gamma_K = K u / (1 - K u)
 *   typical: ~ sqrt(K) u * sum|terms| (roundings behave like independent noise)
 * sum|terms| / |sum| is the condition number; for random-sign data it is
 * ~ sqrt(K), for data of one sign 1. Two float32 evaluations that differ only in
 * order (OpenBLAS's Haswell vs SkylakeX kernels, AVX2 vs AVX-512 widths in our
 * own kernels, blocking that depends on the batch size, a thread split) differ
 * by up to the sum of their two errors. Along a chain of reductions the
 * per-step relative errors add (first order). A relative L2 error over a whole
 * tensor averages many entries and follows the typical bound; a maximum over
 * entries, or a tensor of a few entries, needs the worst case. Elementwise code
 * does not reorder anything: its result is a few roundings of u per operation
 * on every machine. Tolerances are such a bound times a stated margin, never a
 * value read off one machine's output. */
#define TEST_U32 5.9604644775390625e-08 /* 2^-24 */
static inline double test_gamma(double K) { return K * TEST_U32 / (1 - K * TEST_U32); }
static inline double test_typical(double K) { return sqrt(K) * TEST_U32; }

void test_run(const char *name, void (*fn)(void));
int test_summary(void);

double test_rel_err(const float *a, const float *ref, size_t n);
double test_rel_err_d(const double *a, const double *ref, size_t n);
void test_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed);
/* Reference data lives in ../shared/golden (or $CDIFF_GOLDEN). Without the
 * folder a test that needs it SKIPs, unless CDIFF_REQUIRE_GOLDEN=1 (CI) or
 * CDIFF_GOLDEN names a folder that is not there: then it FAILs. A folder
 * that exists but lacks the file is incomplete: always a FAIL. */
int test_golden_required(void);
const char *test_golden_dir(void); /* NULL when absent */
/* dir/rel into out: 0 ready; 1 skip; -1 fail (test_msg says why for both) */
int test_golden_need(char *out, size_t cap, const char *rel);
/* plain query, no policy: 0 when dir/rel exists (in out), -1 otherwise */
int test_golden_path(char *out, size_t cap, const char *rel);
/* runs cmd through the shell (popen); its stdout, up to cap-1 bytes, in out
 * (NUL-terminated; append 2>&1 to cmd for stderr too). Returns the exit
 * status, or -1 when it could not run or did not exit normally. */
int test_run_cmd(const char *cmd, char *out, size_t cap);
/* a scratch folder per process, /tmp/cdiff_<program>_XXXXXX, made on first
 * use; returns "<folder>/<sub>" in one of 8 rotating buffers (a path under
 * /nonexistent when the folder cannot be made, so writes fail cleanly).
 * test_tmp_cleanup() removes the folder, if one was made. */
const char *test_tmpdir(const char *sub);
void test_tmp_cleanup(void);
/* rm -rf dir; 0 ok, -1 (message on stderr) when that failed */
int test_rmtree(const char *dir);
/* n 64x64 RGB PNGs of uniform noise from seed (dir/img0.png ...), making dir;
 * stand-in training photos for the CLI tests. 0 ok, -1 on a write error. */
int test_write_noise_images(const char *dir, int n, uint64_t seed);
/* Bit-for-bit comparisons of two runs (the same computation twice, a resumed
 * run against an uninterrupted one, a CLI run against the library) need the
 * same bits every time, which threaded OpenBLAS does not promise: the text
 * encoder's output once differed between two runs on a loaded machine with its
 * Haswell kernel. Test programs that make such comparisons call this first in
 * main(): CDIFF_THREADS=1 for this process (before its first graph) and for
 * the cdiff tool it runs. */
void test_pin_threads(void);
/* "dir/name" in one of 8 rotating buffers (several may be used in one call) */
const char *test_path_in(const char *dir, const char *name);
/* 1 when both files exist with the same bytes */
int test_same_file(const char *a, const char *b);
/* newlines in a file (a log.jsonl's records), -1 when it cannot be read */
int test_count_lines(const char *path);
/* returns from the test unless golden file rel is there (its path in buf) */
#define NEED_GOLDEN(buf, rel) do { int g_ = test_golden_need(buf, sizeof buf, rel); \
    if (g_ > 0) { test_skipped_flag = 1; return; } if (g_ < 0) { test_failed_flag = 1; return; } } while (0)
/* the same for a helper's status: 1 skip, -1 fail, with test_msg already set */
#define GOLDEN_STATUS(r) do { int s_ = (r); if (s_ > 0) { test_skipped_flag = 1; return; } \
    if (s_ < 0) { test_failed_flag = 1; return; } } while (0)
/* the cdiff tool of the build this test belongs to (<build>/tests/test_x ->
 * <build>/cdiff, so the sanitized tests run the sanitized tool); $CDIFF_BIN
 * overrides. Absolute path. */
const char *test_cdiff_bin(void);
/* "<build>/rel" for the build this test belongs to (tools/gen_sd_random, ...) */
const char *test_build_path(const char *rel);

/* ---- op checking: forward against a double reference, backward against
 * central finite differences of that reference, in double precision. ----
 * build(): makes the op from the leaves (src[i] are params; those in
 *          trainable_mask are trainable), returns its output node.
 * ref():   computes the op's output in double from double inputs.
 * init():  optional; returns -1 to take the default fill (uniform [-1, 1]),
 *          0 after filling leaf i itself, 1 after filling it when the leaf
 *          must not be perturbed by finite differences (ids, masks).
 * The loss is sum(r * y) for fixed random r. Up to max_fd elements per leaf
 * are checked by finite differences. */
typedef struct {
  const char *name;
  int nsrc;
  int ndim[4];
  int64_t ne[4][4];
  unsigned trainable_mask;
  cd_node *(*build)(cd_graph *g, cd_node **src, void *ctx);
  void (*ref)(double **src, double *out, void *ctx);
  int (*init)(int i, float *data, int64_t n, void *ctx);
  void *ctx;
  double fwd_tol;  /* default 1e-5 */
  double grad_tol; /* default 1e-3, relative L2 over the checked elements */
  double fd_eps;   /* default 1e-4 */
  int max_fd;      /* default 64 */
} op_check;
/* returns 0 if fine, else -1 with test_msg set */
int test_check_op(const op_check *c);
#define CHECK_OP(c) do { if (test_check_op(c)) { test_failed_flag = 1; return; } } while (0)


/* ---- golden tensors ---- */
#include "io/tensor_file.h"
/* whole tensor as fp32 (cd_malloc'd), numel in *n; NULL + test_msg if missing */
float *test_read_f32(const cd_tensor_file *f, const char *name, int64_t *n);

#endif
