/* elementwise.c - ADD and MUL with broadcasting, SCALE, PERMUTE, CONCAT.
 *
 * Broadcasting (ADD, MUL): a has the output shape; b's dims align to the right
 * of a's, missing leading dims count as 1 and each of b's dims equals a's or
 * is 1. We walk a in rows of its last dim; each row maps to one offset in b,
 * and within the row b advances by 1 (same last dim) or 0 (broadcast).
 * Backward reduces dy over the broadcast dims into b's gradient.
 */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/common.h"
#include "engine/cpu/cpu.h"

#define PAR_MIN 32768 /* below this many elements threads cost more than they save */

/* bs[i]: b's element stride along a's dim i (0 where b broadcasts) */
static void bcast_strides(const cd_node *a, const cd_node *b, int64_t bs[CD_MAX_DIMS]) {
  const int off = a->ndim - b->ndim;
  int64_t st = 1;
  for (int i = a->ndim - 1; i >= 0; i--) {
    const int j = i - off;
    bs[i] = (j < 0 || b->ne[j] == 1) ? 0 : st;
    if (j >= 0) st *= b->ne[j];
  }
}

/* offset in b of a's row r (row = all of a's dims but the last) */
static int64_t bcast_row(const cd_node *a, const int64_t *bs, int64_t r) {
  int64_t off = 0;
  for (int i = a->ndim - 2; i >= 0; i--) {
    off += (r % a->ne[i]) * bs[i];
    r /= a->ne[i];
  }
  return off;
}

static void binary_fwd(cd_node *n, int mul) {
  const cd_node *a = n->src[0], *b = n->src[1];
  float *y = n->data;
  const float *ad = a->data, *bd = b->data;
  if (b->n == a->n) { /* same shape: no broadcasting */
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
    for (int64_t i = 0; i < n->n; i++) y[i] = mul ? ad[i] * bd[i] : ad[i] + bd[i];
    return;
  }
  int64_t bs[CD_MAX_DIMS];
  bcast_strides(a, b, bs);
  const int64_t L = a->ne[a->ndim - 1];
  if (L <= 0) return;
  const int64_t rows = a->n / L, bl = bs[a->ndim - 1];
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *ar = ad + r * L, *br = bd + bcast_row(a, bs, r);
    float *yr = y + r * L;
    if (bl) {
      if (mul) for (int64_t j = 0; j < L; j++) yr[j] = ar[j] * br[j];
      else for (int64_t j = 0; j < L; j++) yr[j] = ar[j] + br[j];
    } else {
      const float bv = br[0];
      if (mul) for (int64_t j = 0; j < L; j++) yr[j] = ar[j] * bv;
      else for (int64_t j = 0; j < L; j++) yr[j] = ar[j] + bv;
    }
  }
}

/* threads of the broadcast reduction into b's gradient: per-thread double
 * partials, capped at 128 MiB */
static int partial_threads(const cd_kernel_ctx *ctx, const cd_node *n, const cd_node *b) {
  int nt = 1;
#ifdef _OPENMP
  if (n->n > PAR_MIN) nt = ctx->nthreads;
  while (nt > 1 && (int64_t)nt * b->n > (1 << 24)) nt /= 2;
#endif
  return nt;
}

/* scratch: the partials of a broadcast b's gradient (backward only) */
static size_t binary_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) {
  const cd_node *a = n->src[0], *b = n->src[1];
  if (!bwd || !cd_wants_grad(b) || b->n == a->n || a->ne[a->ndim - 1] <= 0) return 0;
  return cd_cpu_align((size_t)partial_threads(ctx, n, b) * b->n * sizeof(double));
}
size_t cd_cpu_add_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) { return binary_scratch(ctx, n, bwd); }
size_t cd_cpu_mul_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) { return binary_scratch(ctx, n, bwd); }

static void binary_bwd(const cd_kernel_ctx *ctx, cd_node *n, int mul) {
  const cd_node *a = n->src[0], *b = n->src[1];
  const float *dy = n->grad, *ad = a->data, *bd = b->data;
  int64_t bs[CD_MAX_DIMS];
  bcast_strides(a, b, bs);
  const int64_t L = a->ne[a->ndim - 1];
  if (L <= 0) return;
  const int64_t rows = a->n / L, bl = b->n == a->n ? 1 : bs[a->ndim - 1];
  /* a and b may be the same node (x * x): the two passes run one after the other */
  if (a->grad) {
    float *ga = a->grad;
    if (!mul) {
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
      for (int64_t i = 0; i < n->n; i++) ga[i] += dy[i];
    } else {
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
      for (int64_t r = 0; r < rows; r++) {
        const float *br = bd + (b->n == a->n ? r * L : bcast_row(a, bs, r));
        for (int64_t j = 0; j < L; j++) ga[r * L + j] += dy[r * L + j] * br[j * bl];
      }
    }
  }
  if (!b->grad) return;
  float *gb = b->grad;
  if (b->n == a->n) {
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
    for (int64_t i = 0; i < n->n; i++) gb[i] += mul ? dy[i] * ad[i] : dy[i];
    return;
  }
  /* many rows reduce into the same b elements: per-thread double partials
   * (b is small here: a bias or a per-channel vector), then a serial sum */
  const int nt = partial_threads(ctx, n, b);
  cd_cpu_scratch sc = cd_cpu_scratch_of(ctx);
  double *part = cd_cpu_take(&sc, (size_t)nt * b->n * sizeof(double), n);
  memset(part, 0, (size_t)nt * b->n * sizeof(double));
#pragma omp parallel num_threads(nt)
  {
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    double *p = part + (size_t)t * b->n;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      double *pr = p + bcast_row(a, bs, r);
      const float *dr = dy + r * L, *ar = ad + r * L;
      if (bl) {
        if (mul) for (int64_t j = 0; j < L; j++) pr[j] += (double)dr[j] * ar[j];
        else for (int64_t j = 0; j < L; j++) pr[j] += dr[j];
      } else {
        double s = 0;
        if (mul) for (int64_t j = 0; j < L; j++) s += (double)dr[j] * ar[j];
        else for (int64_t j = 0; j < L; j++) s += dr[j];
        pr[0] += s;
      }
    }
  }
  for (int64_t k = 0; k < b->n; k++) {
    double s = 0;
    for (int t = 0; t < nt; t++) s += part[(size_t)t * b->n + k];
    gb[k] += (float)s;
  }
}

void cd_cpu_add_fwd(const cd_kernel_ctx *ctx, cd_node *n) { binary_fwd(n, 0); }
void cd_cpu_add_bwd(const cd_kernel_ctx *ctx, cd_node *n) { binary_bwd(ctx, n, 0); }
void cd_cpu_mul_fwd(const cd_kernel_ctx *ctx, cd_node *n) { binary_fwd(n, 1); }
void cd_cpu_mul_bwd(const cd_kernel_ctx *ctx, cd_node *n) { binary_bwd(ctx, n, 1); }

/* ---- SCALE: y = fp0 * x ---- */
void cd_cpu_scale_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const float s = n->fp[0], *x = n->src[0]->data;
  float *y = n->data;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t i = 0; i < n->n; i++) y[i] = s * x[i];
}
void cd_cpu_scale_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  float *dx = n->src[0]->grad;
  if (!dx) return;
  const float s = n->fp[0], *dy = n->grad;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t i = 0; i < n->n; i++) dx[i] += s * dy[i];
}

/* ---- PERMUTE: output dim i is input dim ip[i] ----
 * Both directions are a gather walking the destination contiguously in rows
 * of its last dim: forward reads x with x's stride for each output dim;
 * backward walks dx and reads dy through the inverse permutation (scattered
 * writes would be several times slower for transposes). */
static void gather(float *dst, const float *src, int nd, const int64_t *ne, const int64_t *sst, int acc) {
  const int64_t L = ne[nd - 1], rows = cd_numel(nd, ne) / L, sl = sst[nd - 1];
#pragma omp parallel for schedule(static) if (rows * L > PAR_MIN)
  for (int64_t r = 0; r < rows; r++) {
    int64_t off = 0, q = r;
    for (int i = nd - 2; i >= 0; i--) { off += (q % ne[i]) * sst[i]; q /= ne[i]; }
    const float *sr = src + off;
    float *dr = dst + r * L;
    if (acc) for (int64_t j = 0; j < L; j++) dr[j] += sr[j * sl];
    else for (int64_t j = 0; j < L; j++) dr[j] = sr[j * sl];
  }
}

/* contiguous strides of a shape; 0 if the permutation is unusable */
static int perm_check(const cd_node *n, int64_t xst[CD_MAX_DIMS], int64_t yst[CD_MAX_DIMS]) {
  const cd_node *x = n->src[0];
  const int nd = x->ndim;
  if (nd != n->ndim || nd < 1 || nd > CD_MAX_DIMS || n->n <= 0) return 0;
  xst[nd - 1] = yst[nd - 1] = 1;
  for (int d = nd - 2; d >= 0; d--) { xst[d] = xst[d + 1] * x->ne[d + 1]; yst[d] = yst[d + 1] * n->ne[d + 1]; }
  for (int i = 0; i < nd; i++)
    if (n->ip[i] < 0 || n->ip[i] >= nd) return 0;
  return 1;
}

void cd_cpu_permute_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  int64_t xst[CD_MAX_DIMS], yst[CD_MAX_DIMS], sst[CD_MAX_DIMS];
  if (!perm_check(n, xst, yst)) return;
  for (int i = 0; i < n->ndim; i++) sst[i] = xst[n->ip[i]];
  gather(n->data, n->src[0]->data, n->ndim, n->ne, sst, 0);
}

void cd_cpu_permute_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0];
  int64_t xst[CD_MAX_DIMS], yst[CD_MAX_DIMS], sst[CD_MAX_DIMS];
  if (!x->grad || !perm_check(n, xst, yst)) return;
  for (int i = 0; i < n->ndim; i++) sst[n->ip[i]] = yst[i]; /* input dim ip[i] is output dim i */
  gather(x->grad, n->grad, x->ndim, x->ne, sst, 1);
}

/* ---- CONCAT along dim ip0: per outer index, a's block then b's block ---- */
static int concat_dims(const cd_node *n, int64_t *outer, int64_t *ia, int64_t *ib) {
  const int d = n->ip[0];
  if (d < 0 || d >= n->ndim) return 0;
  int64_t o = 1;
  for (int i = 0; i < d; i++) o *= n->ne[i];
  if (o <= 0) return 0;
  *outer = o;
  *ia = n->src[0]->n / o;
  *ib = n->src[1]->n / o;
  return 1;
}

void cd_cpu_concat_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  int64_t outer, ia, ib;
  if (!concat_dims(n, &outer, &ia, &ib)) return;
  const float *a = n->src[0]->data, *b = n->src[1]->data;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t o = 0; o < outer; o++) {
    float *y = n->data + o * (ia + ib);
    memcpy(y, a + o * ia, ia * sizeof(float));
    memcpy(y + ia, b + o * ib, ib * sizeof(float));
  }
}

void cd_cpu_concat_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  int64_t outer, ia, ib;
  if (!concat_dims(n, &outer, &ia, &ib)) return;
  float *ga = n->src[0]->grad, *gb = n->src[1]->grad;
  const float *dy = n->grad;
  /* a and b may be the same node: keep the two accumulations sequential */
  if (ga) {
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
    for (int64_t o = 0; o < outer; o++)
      for (int64_t j = 0; j < ia; j++) ga[o * ia + j] += dy[o * (ia + ib) + j];
  }
  if (gb) {
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
    for (int64_t o = 0; o < outer; o++)
      for (int64_t j = 0; j < ib; j++) gb[o * ib + j] += dy[o * (ia + ib) + ia + j];
  }
}
