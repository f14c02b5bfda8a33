/* cpu.h - the CPU backend: its kernels (one op family per file in
 * src/engine/cpu/, forward and backward side by side) and its extras.
 *
 * Every op in the registry (ops.def) may have cd_cpu_<name>_fwd,
 * cd_cpu_<name>_bwd and cd_cpu_<name>_scratch; backend_cpu.c fills its table
 * from whichever of them exist. */
#ifndef CD_CPU_H
#define CD_CPU_H

#include <stddef.h>

#include "engine/backend.h"

#define CD_OP(E, nm, ns, fl, aux)                                   \
  void cd_cpu_##nm##_fwd(const cd_kernel_ctx *ctx, cd_node *n);     \
  void cd_cpu_##nm##_bwd(const cd_kernel_ctx *ctx, cd_node *n);     \
  size_t cd_cpu_##nm##_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd);
#include "engine/ops.def"
#undef CD_OP

/* optimizer ops (optim.c; backend.h describes them) */
void cd_cpu_sumsq(const cd_kernel_ctx *ctx, const float *x, int64_t n, double *acc);
void cd_cpu_adamw(const cd_kernel_ctx *ctx, const cd_adamw_args *a, float *w, const float *g, float *m, float *v, int64_t n);
int64_t cd_cpu_nonfinite(const cd_kernel_ctx *ctx, const float *x, int64_t n);
void cd_cpu_accumulate(const cd_kernel_ctx *ctx, float *acc, float *g, int64_t n, int k, int K);

/* Storage types (convert.c). cd_cpu_to_f32 widens elements [off, off+n) of
 * src (type t) into dst. A weight w [rows, rowlen] is walked in panels of
 * `per` rows (all rows at once when it is f32): cd_cpu_panels_get returns
 * rows [r0, r0+nr) as f32, pointing into w itself when it is f32, else
 * widened into the panel buffer (unless that panel is the one widened last,
 * so a weight that fits one panel is widened once per kernel call). */
void cd_cpu_to_f32(const void *src, cd_type t, int64_t off, int64_t n, float *dst);
extern size_t cd_cpu_panel_bytes; /* f32 bytes per panel (64 MiB); tests shrink it */
typedef struct {
  const cd_node *w;
  int64_t rows, rowlen, per, r0, nr;
  float *buf;
} cd_cpu_panels;
/* scratch bytes the panel buffer of w [rows, rowlen] takes (0 for f32):
 * what a kernel's scratch function adds for each cd_cpu_panels_init */
size_t cd_cpu_panels_scratch(const cd_node *w, int64_t rows, int64_t rowlen);
/* the panel buffer comes from the kernel's scratch sc (n: the kernel's node) */
void cd_cpu_panels_init(cd_cpu_panels *p, const cd_node *w, int64_t rows, int64_t rowlen, void *sc, const cd_node *n);
/* the panel buffer's bytes (unaligned), and an init over a caller's buffer */
size_t cd_cpu_panels_bytes(const cd_node *w, int64_t rows, int64_t rowlen);
void cd_cpu_panels_init_buf(cd_cpu_panels *p, const cd_node *w, int64_t rows, int64_t rowlen, float *buf);
const float *cd_cpu_panels_get(cd_cpu_panels *p, int64_t r0, int64_t nr);

/* Scratch: a kernel carves ctx->scratch (placed by the planner) in the same
 * order and sizes as its cd_cpu_<op>_scratch function added them up with
 * cd_cpu_align; every piece is 64-byte aligned. */
typedef struct {
  char *base;
  size_t size, used;
} cd_cpu_scratch;
static inline size_t cd_cpu_align(size_t bytes) { return (bytes + 63) & ~(size_t)63; }
static inline cd_cpu_scratch cd_cpu_scratch_of(const cd_kernel_ctx *ctx) {
  return (cd_cpu_scratch){(char *)ctx->scratch, ctx->scratch_bytes, 0};
}
/* the next `bytes` of scratch; aborts when the sizing function asked for
 * less (a bug in the kernel, never input-dependent) */
void *cd_cpu_take(cd_cpu_scratch *s, size_t bytes, const cd_node *n);

/* The CPU backend's per-graph state (ctx->state), set up when the graph is
 * planned: what used to be process-wide. */
typedef struct {
  size_t conv_band_bytes; /* col bytes per conv band: cd_cpu_conv_band_bytes at plan time */
  _Atomic int bad_ids;    /* EMBEDDING ids outside the table since plan or reset */
  double timer_t0;        /* CDIFF_PROFILE: start of the running kernel */
} cd_cpu_state;

/* Default col bytes per conv band (conv.c); tests and dev/ tools change it
 * before planning. */
extern size_t cd_cpu_conv_band_bytes;

/* EMBEDDING never crashes on an id outside [0, V + E) or one that is not an
 * integer: it writes a zero row and counts the id in the graph's CPU state
 * (thread-safe). Returns the number of such ids seen since the graph was
 * planned or the count reset, so callers that feed user token ids can check
 * it after a forward; 0 for a graph on another backend. */
int cd_cpu_embedding_bad_ids(const cd_graph *g);
void cd_cpu_embedding_reset_bad_ids(cd_graph *g);

/* ATTENTION scratch memory in bytes, for reports (bench): what = 0: one score
 * block; 1: forward per thread; 2: backward per thread; 3: forward shared
 * (packed K^T, V); 4: backward shared (packed Q, dO, Di, partial dQ) when q, k
 * and v all need gradients; 0 for anything else. */
size_t cd_cpu_attention_scratch_bytes(const cd_node *n, int what);

#endif
