/* backend_cpu.c - the CPU backend's table, filled from the op registry.
 * Kernels are weak references so that a missing one is reported by
 * cd_graph_plan ("no forward kernel for ...") rather than failing the link,
 * and an op without a backward or a scratch function simply leaves its slot
 * NULL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "engine/cpu/cpu.h"

#define CD_OP(E, nm, ns, fl, aux)                                                       \
  __attribute__((weak)) void cd_cpu_##nm##_fwd(const cd_kernel_ctx *ctx, cd_node *n); \
  __attribute__((weak)) void cd_cpu_##nm##_bwd(const cd_kernel_ctx *ctx, cd_node *n); \
  __attribute__((weak)) size_t cd_cpu_##nm##_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd);
#include "engine/ops.def"
#undef CD_OP

void *cd_cpu_take(cd_cpu_scratch *s, size_t bytes, const cd_node *n) {
  const size_t b = cd_cpu_align(bytes);
  if (!s->base || s->used + b > s->size) {
    fprintf(stderr, "cdiff: internal error: %s '%s' needs %zu more scratch bytes than it reported (%zu of %zu used)\n",
            cd_op_name(n->op), n->name, b, s->used, s->size);
    abort();
  }
  void *p = s->base + s->used;
  s->used += b;
  return p;
}

static void *cpu_alloc(size_t n) { return cd_aligned_alloc(n); }
static void cpu_free(void *p) { cd_aligned_free(p); }
static void cpu_zero(const cd_kernel_ctx *ctx, void *p, size_t n) { memset(p, 0, n); }
static void cpu_copy(const cd_kernel_ctx *ctx, void *dst, const void *src, size_t n) {
  if (n) memcpy(dst, src, n);
}
static int cpu_ctx_init(cd_kernel_ctx *ctx) {
  ctx->nthreads = cd_threads();
  cd_cpu_state *s = cd_calloc(1, sizeof *s);
  s->conv_band_bytes = cd_cpu_conv_band_bytes;
  ctx->state = s;
  return 0;
}
static void cpu_ctx_free(cd_kernel_ctx *ctx) {
  free(ctx->state);
  ctx->state = NULL;
}
static void cpu_timer_begin(const cd_kernel_ctx *ctx) { ((cd_cpu_state *)ctx->state)->timer_t0 = cd_time(); }
static void cpu_timer_end(const cd_kernel_ctx *ctx, double *acc) { *acc += cd_time() - ((cd_cpu_state *)ctx->state)->timer_t0; }
static void cpu_timer_flush(const cd_kernel_ctx *ctx) {}

static const cd_backend cpu = {
    .name = "cpu",
    .host_memory = 1,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .upload = cpu_copy,
    .download = cpu_copy,
    .ctx_init = cpu_ctx_init,
    .ctx_free = cpu_ctx_free,
    .timer_begin = cpu_timer_begin,
    .timer_end = cpu_timer_end,
    .sumsq = cd_cpu_sumsq,
    .adamw = cd_cpu_adamw,
    .nonfinite = cd_cpu_nonfinite,
    .accumulate = cd_cpu_accumulate,
    .timer_flush = cpu_timer_flush,
#define CD_OP(E, nm, ns, fl, aux) [CD_OP_##E] = cd_cpu_##nm##_fwd,
    .forward = {
#include "engine/ops.def"
    },
#undef CD_OP
#define CD_OP(E, nm, ns, fl, aux) [CD_OP_##E] = cd_cpu_##nm##_bwd,
    .backward = {
#include "engine/ops.def"
    },
#undef CD_OP
#define CD_OP(E, nm, ns, fl, aux) [CD_OP_##E] = cd_cpu_##nm##_scratch,
    .scratch = {
#include "engine/ops.def"
    },
#undef CD_OP
};

const cd_backend *cd_backend_cpu(void) { return &cpu; }
