/* attention.c - fused multi-head scaled-dot-product attention (CPU),
 * flash-attention style: forward and backward never hold a [Tq, Tk] matrix.
 *
 *   q [B, Tq, H*D], k [B, Tk, H*D], v [B, Tk, H*D] -> y [B, Tq, H*D]
 *   head h uses channels [h*D, (h+1)*D) (PyTorch's view(B, T, H, D));
 *   y[b,i,h] = sum_j softmax_j(scale * q[b,i,h] . k[b,j,h]) v[b,j,h]
 *   causal (ip1): query i sees keys j <= i (CLIP's mask; Tq == Tk).
 *   aux [B, H, Tq] = log-sum-exp of each row of scaled scores (for backward).
 *
 * Forward: K is packed once per call, per head and per block of BK keys, as
 * K^T [D][BK], and V as [Tk][Dp] (Dp: D rounded up to the vector width), so
 * the block products read contiguous rows. One task per (b, h, block of BQ
 * queries) walks the key blocks with an online softmax (running max m and sum
 * l per row, output rescaled by exp(m_old - m_new)): a thread holds one
 * BQ x BK score block.
 *
 * Backward (flash-attention-2): with P = exp(S - lse) recomputed per block,
 *   Di = rowsum(dO * O), dV += P^T dO, dP = dO V^T, dS = P * (dP - Di),
 *   dK += scale dS^T Q, dQ += scale dS K.
 * Q (pre-scaled) and dO are packed per head as [Tq][Dp]. One task per
 * (b, h, key group g) owns the key blocks kb = g, g+G, ... and loops over the
 * query blocks, so its dK/dV rows are exclusive (thread-local BK x Dp
 * accumulators). dQ rows are shared by the groups: each group accumulates
 * into its own packed [B*H, Tq, Dp] partial, summed into q->grad at the end.
 * G is only as large as the thread count needs (about two tasks per thread),
 * so with B*H >= 4 threads there is a single partial.
 *
 * Memory: per thread, forward 2*BQ*Dp + BQ*BK + 4*BQ floats (41 KB for
 * D = 40), backward 2*D*BK + 3*BK*Dp + 2*BQ*BK floats (88 KB for D = 40);
 * shared, packed copies of the size of the inputs: forward K^T and V,
 * backward Q, dO, Di and the G partial dQ. No [T, T] buffer anywhere
 * (cd_cpu_attention_scratch_bytes() reports these sizes).
 *
 * Products are small register-blocked loops over GCC vector types (4 rows x
 * up to 4 vectors of accumulators, the output row contiguous).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "engine/cpu/cpu.h"

/* The products below are written as a * b + c and need fused multiply-adds
 * to reach peak: the Makefile's -ffp-contract=fast (-std=c11 alone turns
 * contraction off). */

#define BQ 64 /* queries per block */
#define BK 64 /* keys per block */

#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));

#define INLINE static inline __attribute__((always_inline))

INLINE vf vld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
INLINE void vst(float *p, vf v) { memcpy(p, &v, sizeof v); }
INLINE vf vsplat(float x) { return (vf){0} + x; }
/* m ? a : b with m a lane mask (-1 / 0) from a vector comparison */
INLINE vf vsel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
INLINE vf vmax(vf a, vf b) { return vsel(a > b, a, b); }
/* lanes i and i ^ w exchanged */
INLINE vf vswap(vf v, int w) {
  vi idx;
  for (int i = 0; i < VL; i++) idx[i] = i ^ w;
  return __builtin_shuffle(v, idx);
}
INLINE float hmax(vf v) {
#pragma GCC unroll 8
  for (int w = VL / 2; w; w >>= 1) v = vmax(v, vswap(v, w));
  return v[0];
}
INLINE float hsum(vf v) {
#pragma GCC unroll 8
  for (int w = VL / 2; w; w >>= 1) v = v + vswap(v, w);
  return v[0];
}

/* exp(x) for x <= ~88; 0 for x < -87 (incl. -inf). 2^n * p(r) with
 * n = round(x / ln2), r = x - n ln2 (two-part ln2), p degree-6 Taylor: ~1 ulp.
 * cd_vexpf (vecmath.h) on vf lanes, except that masked scores (-inf) must
 * give exactly 0 where cd_vexpf clamps to exp(-87). */
INLINE vf vexp(vf x) {
  vi under = x < vsplat(-87.0f);
  x = vsel(under, vsplat(-87.0f), x);
  vf t = x * 1.44269504088896341f;
  vf n = (t + 12582912.0f) - 12582912.0f; /* round to nearest */
  vf r = x - n * 0.693145751953125f;
  r = r - n * 1.42860682030941723e-6f;
  vf p = vsplat(1.0f / 720);
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return vsel(under, vsplat(0.0f), p * (vf)e);
}

/* C[4 rows][NC vectors] (+)= sum_{j<nj} A(r, j) * B[j][...], the register
 * tile; A(r, j) = A[r * ars + j * ajs], so A may be read transposed. */
INLINE void tile4(int NC, int nj, const float *A, int ars, int ajs, const float *B, int ldb,
                  float *C, int ldc, int acc) {
  vf c[4][4];
#pragma GCC unroll 4
  for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NC; v++) c[r][v] = acc ? vld(C + r * ldc + v * VL) : vsplat(0.0f);
  for (int j = 0; j < nj; j++) {
    vf b[4];
#pragma GCC unroll 4
    for (int v = 0; v < NC; v++) b[v] = vld(B + (size_t)j * ldb + v * VL);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
      float a = A[r * ars + j * ajs];
#pragma GCC unroll 4
      for (int v = 0; v < NC; v++) c[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NC; v++) vst(C + r * ldc + v * VL, c[r][v]);
}

/* C[m][ncols] (+)= A(m x nj) * B[nj][ncols]; ncols a multiple of VL. Rows go
 * 4 at a time, so A and C need round_up(m, 4) rows of storage (the extra
 * rows compute garbage that nobody reads). */
static void gemm_blk(int m, int nj, int ncols, const float *A, int ars, int ajs, const float *B,
                     int ldb, float *C, int ldc, int acc) {
  for (int i = 0; i < m; i += 4) {
    const float *a = A + (size_t)i * ars;
    float *c = C + (size_t)i * ldc;
    for (int v0 = 0; v0 < ncols; v0 += 4 * VL) {
      const int nv = (ncols - v0) / VL;
      if (nv >= 4) tile4(4, nj, a, ars, ajs, B + v0, ldb, c + v0, ldc, acc);
      else if (nv == 3) tile4(3, nj, a, ars, ajs, B + v0, ldb, c + v0, ldc, acc);
      else if (nv == 2) tile4(2, nj, a, ars, ajs, B + v0, ldb, c + v0, ldc, acc);
      else tile4(1, nj, a, ars, ajs, B + v0, ldb, c + v0, ldc, acc);
    }
  }
}

typedef struct {
  int B, Tq, Tk, H, D, Dp, causal;
  int nqb, nkb; /* query and key blocks per head */
  float scale;
  int64_t C; /* H * D: row stride of q, k, v, y */
} attn_shape;

static int shape_of(const cd_node *n, attn_shape *s) {
  const cd_node *q = n->src[0], *k = n->src[1];
  s->B = (int)q->ne[0];
  s->Tq = (int)q->ne[1];
  s->Tk = (int)k->ne[1];
  s->H = n->ip[0];
  s->causal = n->ip[1] != 0;
  s->scale = n->fp[0];
  s->C = q->ne[2];
  if (s->H <= 0 || s->C % s->H) return -1;
  s->D = (int)(s->C / s->H);
  s->Dp = (s->D + VL - 1) / VL * VL;
  s->nqb = (s->Tq + BQ - 1) / BQ;
  s->nkb = (s->Tk + BK - 1) / BK;
  return 0;
}

/* rows [r0, r0+nr) of head h of x [B, T, H*D] -> dst[r][d] (row stride ld)
 * times mul; with pad, dst rows [nr, npad) and columns [D, ld) are zeroed */
static void pack_rows(const float *x, const attn_shape *s, int T, int b, int h, int r0, int nr,
                      int npad, float mul, float *dst, int ld) {
  for (int r = 0; r < nr; r++) {
    const float *p = x + ((int64_t)b * T + r0 + r) * s->C + (int64_t)h * s->D;
    float *o = dst + (size_t)r * ld;
    for (int d = 0; d < s->D; d++) o[d] = mul * p[d];
    for (int d = s->D; d < ld; d++) o[d] = 0;
  }
  if (npad > nr) memset(dst + (size_t)nr * ld, 0, sizeof(float) * (size_t)(npad - nr) * ld);
}
/* the same rows transposed: dst[d][r] (row stride BK), columns r >= nr zeroed */
static void pack_rows_t(const float *x, const attn_shape *s, int T, int b, int h, int r0, int nr,
                        float *dst) {
  for (int r = 0; r < nr; r++) {
    const float *p = x + ((int64_t)b * T + r0 + r) * s->C + (int64_t)h * s->D;
    for (int d = 0; d < s->D; d++) dst[(size_t)d * BK + r] = p[d];
  }
  for (int d = 0; d < s->D; d++)
    for (int r = nr; r < BK; r++) dst[(size_t)d * BK + r] = 0;
}

/* score (i, j) of a query block at q0 and a key block at k0 is visible when
 * j < jmax(i); only padding and, for causal, the diagonal blocks mask */
static int visible_keys(const attn_shape *s, int q0, int i, int k0, int nk) {
  int jmax = s->causal ? CD_MIN(nk, q0 + i - k0 + 1) : nk;
  return jmax < 0 ? 0 : jmax;
}

/* Number of key groups G of the backward (tasks = B * H * G). With dQ, each
 * group costs a packed [B*H, Tq, Dp] partial dQ, so G is just large enough
 * to give every thread about two tasks; without dQ, one group per key block. */
static int key_groups(const attn_shape *s, int need_dq, int nthreads) {
  const int bh = s->B * s->H;
  if (!need_dq) return s->nkb;
  int G = bh >= 4 * nthreads ? 1 : (2 * nthreads + bh - 1) / bh;
  return CD_MAX(1, CD_MIN(G, s->nkb));
}

static size_t fwd_thread_floats(const attn_shape *s) {
  return (size_t)BQ * s->Dp * 2 + (size_t)BQ * BK + 4 * BQ;
}
static size_t bwd_thread_floats(const attn_shape *s) {
  return (size_t)2 * s->D * BK + (size_t)3 * BK * s->Dp + (size_t)2 * BQ * BK;
}

/* see cpu.h */
size_t cd_cpu_attention_scratch_bytes(const cd_node *n, int what) {
  attn_shape s;
  if (shape_of(n, &s)) return 0;
  const size_t bh = (size_t)s.B * s.H, tkp = (size_t)s.nkb * BK, tqp = (size_t)s.nqb * BQ;
  switch (what) {
  case 0: return (size_t)BQ * BK * sizeof(float);
  case 1: return fwd_thread_floats(&s) * sizeof(float);
  case 2: return bwd_thread_floats(&s) * sizeof(float);
  case 3: return bh * tkp * (s.D + s.Dp) * sizeof(float);
  case 4: {
    const int G = key_groups(&s, 1, cd_threads());
    return bh * (tqp * s.Dp * (2 + G) + s.Tq) * sizeof(float);
  }
  default: return 0;
  }
}

/* The planner-placed scratch, in the order the kernels take it. Forward:
 * packed K^T and V, then one block buffer per thread. Backward: packed
 * scale*Q and dO, Di, the partial dQ when dq is wanted, then one block buffer
 * per thread. */
size_t cd_cpu_attention_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) {
  attn_shape s;
  if (shape_of(n, &s) || s.Tk == 0 || s.Tq == 0) return 0;
  const size_t bh = (size_t)s.B * s.H, tkp = (size_t)s.nkb * BK, tqp = (size_t)s.nqb * BQ, f = sizeof(float);
  const int nt = ctx->nthreads;
  if (!bwd)
    return cd_cpu_align(f * bh * tkp * s.D) + cd_cpu_align(f * bh * tkp * s.Dp) + nt * cd_cpu_align(f * fwd_thread_floats(&s));
  const cd_node *qn = n->src[0], *kn = n->src[1], *vn = n->src[2];
  if (!cd_wants_grad(qn) && !cd_wants_grad(kn) && !cd_wants_grad(vn)) return 0;
  const int G = key_groups(&s, cd_wants_grad(qn), nt);
  return 2 * cd_cpu_align(f * bh * tqp * s.Dp) + cd_cpu_align(f * bh * s.Tq) +
         (cd_wants_grad(qn) ? cd_cpu_align(f * G * bh * tqp * s.Dp) : 0) + nt * cd_cpu_align(f * bwd_thread_floats(&s));
}

/* ---------------- forward ---------------- */

static void attn_forward(const cd_kernel_ctx *ctx, const cd_node *n, const float *q, const float *k, const float *v,
                         float *y, float *lse, const attn_shape *s) {
  const int Dp = s->Dp, D = s->D, H = s->H, nqb = s->nqb, nkb = s->nkb;
  const int64_t bh = (int64_t)s->B * H, tkp = (int64_t)nkb * BK;
  const int nt = ctx->nthreads;
  cd_cpu_scratch sc = cd_cpu_scratch_of(ctx);
  float *Kp = cd_cpu_take(&sc, sizeof(float) * bh * tkp * D, n);  /* [bh][kb][D][BK] */
  float *Vp = cd_cpu_take(&sc, sizeof(float) * bh * tkp * Dp, n); /* [bh][Tkp][Dp] */
  const size_t nbuf = fwd_thread_floats(s);
  float *bufs = cd_cpu_take(&sc, nt * cd_cpu_align(nbuf * sizeof(float)), n);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < bh * nkb; t++) {
    const int kb = (int)(t % nkb), h = (int)(t / nkb % H), b = (int)(t / nkb / H);
    const int k0 = kb * BK, nk = CD_MIN(BK, s->Tk - k0);
    pack_rows_t(k, s, s->Tk, b, h, k0, nk, Kp + (size_t)t * D * BK);
    pack_rows(v, s, s->Tk, b, h, k0, nk, BK, 1.0f, Vp + (size_t)t * BK * Dp, Dp);
  }

  const int64_t ntask = bh * nqb;
#pragma omp parallel num_threads(nt)
  {
    float *buf = (float *)((char *)bufs + omp_get_thread_num() * cd_cpu_align(nbuf * sizeof(float)));
    memset(buf, 0, nbuf * sizeof(float));
    float *Qs = buf;              /* [BQ][Dp] scale * q */
    float *O = Qs + BQ * Dp;      /* [BQ][Dp] unnormalised output */
    float *S = O + BQ * Dp;       /* [BQ][BK] scores, then probabilities */
    float *m = S + BQ * BK, *l = m + BQ; /* running max and sum per row */
    float *bm = l + BQ, *alpha = bm + BQ; /* block max (then max used), rescale */
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < ntask; t++) {
      const int qb = (int)(t % nqb);
      const int64_t hb = t / nqb; /* b * H + h */
      const int h = (int)(hb % H), b = (int)(hb / H);
      const int q0 = qb * BQ, nq = CD_MIN(BQ, s->Tq - q0);
      pack_rows(q, s, s->Tq, b, h, q0, nq, 0, s->scale, Qs, Dp);
      memset(O, 0, sizeof(float) * BQ * Dp);
      for (int i = 0; i < BQ; i++) m[i] = -INFINITY, l[i] = 0;
      const int kend = s->causal ? CD_MIN(s->Tk, q0 + nq) : s->Tk;
      for (int k0 = 0; k0 < kend; k0 += BK) {
        const int nk = CD_MIN(BK, kend - k0);
        const float *Kt = Kp + ((size_t)hb * nkb + k0 / BK) * D * BK;
        const float *V = Vp + ((size_t)hb * tkp + k0) * Dp;
        gemm_blk(nq, D, BK, Qs, Dp, 1, Kt, BK, S, BK, 0);
        if (nk < BK || (s->causal && k0 + nk - 1 > q0))
          for (int i = 0; i < nq; i++)
            for (int j = visible_keys(s, q0, i, k0, nk); j < BK; j++) S[i * BK + j] = -INFINITY;
        /* online softmax, in branch-free passes so rows overlap:
         * block row max; new running max and rescale factor (VL rows at a
         * time); then probabilities, row sums and output rescaling */
        for (int i = 0; i < nq; i++) {
          vf mx = vld(S + i * BK);
          for (int c = VL; c < BK; c += VL) mx = vmax(mx, vld(S + i * BK + c));
          bm[i] = hmax(mx);
        }
        for (int i = 0; i < BQ; i += VL) {
          const vf mold = vld(m + i), mnew = vmax(mold, vld(bm + i));
          /* a row with nothing visible yet keeps m = -inf: subtract 0 so
           * that its p and alpha are exp(-inf) = 0, not NaN */
          const vf msub = vsel(mnew == vsplat(-INFINITY), vsplat(0.0f), mnew);
          vst(alpha + i, vexp(mold - msub));
          vst(m + i, mnew);
          vst(bm + i, msub);
        }
        for (int i = 0; i < nq; i++) {
          float *srow = S + i * BK, *orow = O + i * Dp;
          const float ms = bm[i], al = alpha[i];
          vf sum = vsplat(0.0f);
          for (int c = 0; c < BK; c += VL) {
            vf p = vexp(vld(srow + c) - ms);
            vst(srow + c, p);
            sum += p;
          }
          l[i] = l[i] * al + hsum(sum);
          for (int c = 0; c < Dp; c += VL) vst(orow + c, vld(orow + c) * al);
        }
        gemm_blk(nq, nk, Dp, S, BK, 1, V, Dp, O, Dp, 1);
      }
      for (int i = 0; i < nq; i++) {
        float *dst = y + ((int64_t)b * s->Tq + q0 + i) * s->C + (int64_t)h * D;
        const float inv = 1.0f / l[i];
        for (int d = 0; d < D; d++) dst[d] = O[i * Dp + d] * inv;
        if (lse) lse[hb * s->Tq + q0 + i] = m[i] + logf(l[i]);
      }
    }
  }
}

void cd_cpu_attention_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  attn_shape s;
  if (shape_of(n, &s)) return; /* the builder rejects such shapes */
  if (s.Tk == 0 || s.Tq == 0) {
    memset(n->data, 0, cd_nbytes(n));
    return;
  }
  attn_forward(ctx, n, n->src[0]->data, n->src[1]->data, n->src[2]->data, n->data,
               n->aux && n->naux >= (int64_t)s.B * s.H * s.Tq ? n->aux : NULL, &s);
}

/* ---------------- backward ---------------- */

void cd_cpu_attention_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  attn_shape s;
  if (shape_of(n, &s) || s.Tk == 0 || s.Tq == 0) return;
  cd_node *qn = n->src[0], *kn = n->src[1], *vn = n->src[2];
  float *dq = qn->grad, *dk = kn->grad, *dv = vn->grad;
  if (!dq && !dk && !dv) return;
  const float *q = qn->data, *k = kn->data, *v = vn->data, *o = n->data, *dO = n->grad;
  const int H = s.H, D = s.D, Dp = s.Dp, Tq = s.Tq, Tk = s.Tk, nqb = s.nqb, nkb = s.nkb;
  const int64_t bh = (int64_t)s.B * H, tqp = (int64_t)nqb * BQ;
  const int nt = ctx->nthreads;

  /* log-sum-exp from forward: the registry sizes aux for every attention node,
   * and the plan keeps it until this backward */
  const float *lse = n->aux;
  if (!lse || n->naux < bh * Tq) {
    fprintf(stderr, "cdiff: internal error: attention '%s' backward without its forward's log-sum-exp\n", n->name);
    abort();
  }

  /* packed scale * Q and dO [bh][Tqp][Dp]; Di = rowsum(dO * O) [bh][Tq] */
  cd_cpu_scratch sc = cd_cpu_scratch_of(ctx);
  float *Qp = cd_cpu_take(&sc, sizeof(float) * bh * tqp * Dp, n);
  float *dOp = cd_cpu_take(&sc, sizeof(float) * bh * tqp * Dp, n);
  float *Di = cd_cpu_take(&sc, sizeof(float) * bh * Tq, n);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < bh * nqb; t++) {
    const int qb = (int)(t % nqb), h = (int)(t / nqb % H), b = (int)(t / nqb / H);
    const int q0 = qb * BQ, nq = CD_MIN(BQ, Tq - q0);
    pack_rows(q, &s, Tq, b, h, q0, nq, BQ, s.scale, Qp + (size_t)t * BQ * Dp, Dp);
    pack_rows(dO, &s, Tq, b, h, q0, nq, BQ, 1.0f, dOp + (size_t)t * BQ * Dp, Dp);
    for (int i = 0; i < nq; i++) {
      const int64_t off = ((int64_t)b * Tq + q0 + i) * s.C + (int64_t)h * D;
      float acc = 0;
      for (int d = 0; d < D; d++) acc += dO[off + d] * o[off + d];
      Di[(t / nqb) * Tq + q0 + i] = acc;
    }
  }

  const int G = key_groups(&s, dq != NULL, nt);
  /* per-group partial dQ / scale, packed like Qp: [G][bh][Tqp][Dp] */
  const size_t nqp = (size_t)bh * tqp * Dp;
  float *dQp = NULL;
  if (dq) {
    dQp = cd_cpu_take(&sc, sizeof(float) * G * nqp, n);
    memset(dQp, 0, sizeof(float) * G * nqp);
  }
  const size_t nbuf = bwd_thread_floats(&s);
  float *bufs = cd_cpu_take(&sc, nt * cd_cpu_align(nbuf * sizeof(float)), n);

  const int64_t ntask = bh * G;
#pragma omp parallel num_threads(nt)
  {
    float *buf = (float *)((char *)bufs + omp_get_thread_num() * cd_cpu_align(nbuf * sizeof(float)));
    memset(buf, 0, nbuf * sizeof(float));
    float *Kt = buf;             /* [D][BK] */
    float *Vt = Kt + D * BK;     /* [D][BK] */
    float *Kb = Vt + D * BK;     /* [BK][Dp] */
    float *dKa = Kb + BK * Dp;   /* [BK][Dp] dK accumulator */
    float *dVa = dKa + BK * Dp;  /* [BK][Dp] dV accumulator */
    float *P = dVa + BK * Dp;    /* [BQ][BK] */
    float *dS = P + BQ * BK;     /* [BQ][BK] dP, then dS */
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < ntask; t++) {
      const int g = (int)(t % G);
      const int64_t hb = t / G;
      const int h = (int)(hb % H), b = (int)(hb / H);
      float *dQg = dQp ? dQp + g * nqp + (size_t)hb * tqp * Dp : NULL;
      for (int kb = g; kb < nkb; kb += G) {
        const int k0 = kb * BK, nk = CD_MIN(BK, Tk - k0);
        pack_rows_t(k, &s, Tk, b, h, k0, nk, Kt);
        if (dk || dq) pack_rows_t(v, &s, Tk, b, h, k0, nk, Vt);
        if (dq) pack_rows(k, &s, Tk, b, h, k0, nk, BK, 1.0f, Kb, Dp);
        memset(dKa, 0, sizeof(float) * BK * Dp);
        memset(dVa, 0, sizeof(float) * BK * Dp);
        /* causal: queries before k0 see none of these keys */
        for (int q0 = s.causal ? k0 / BQ * BQ : 0; q0 < Tq; q0 += BQ) {
          const int nq = CD_MIN(BQ, Tq - q0);
          const float *Qs = Qp + ((size_t)hb * tqp + q0) * Dp, *dOb = dOp + ((size_t)hb * tqp + q0) * Dp;
          const float *lrow = lse + hb * Tq + q0, *drow = Di + hb * Tq + q0;
          /* P = exp(S - lse), invisible entries 0 */
          gemm_blk(nq, D, BK, Qs, Dp, 1, Kt, BK, P, BK, 0);
          for (int i = 0; i < nq; i++)
            for (int c = 0; c < BK; c += VL) vst(P + i * BK + c, vexp(vld(P + i * BK + c) - lrow[i]));
          if (nk < BK || (s.causal && k0 + nk - 1 > q0))
            for (int i = 0; i < nq; i++)
              for (int j = visible_keys(&s, q0, i, k0, nk); j < BK; j++) P[i * BK + j] = 0;
          if (dv) /* dV += P^T dO */
            gemm_blk(nk, nq, Dp, P, 1, BK, dOb, Dp, dVa, Dp, 1);
          if (!dk && !dq) continue;
          /* dS = P * (dO V^T - Di) */
          gemm_blk(nq, D, BK, dOb, Dp, 1, Vt, BK, dS, BK, 0);
          for (int i = 0; i < nq; i++) {
            const vf di = vsplat(drow[i]);
            for (int c = 0; c < BK; c += VL)
              vst(dS + i * BK + c, vld(P + i * BK + c) * (vld(dS + i * BK + c) - di));
          }
          if (dk) /* dK += dS^T (scale Q) */
            gemm_blk(nk, nq, Dp, dS, 1, BK, Qs, Dp, dKa, Dp, 1);
          if (dq) /* dQ / scale += dS K */
            gemm_blk(nq, nk, Dp, dS, BK, 1, Kb, Dp, dQg + (size_t)q0 * Dp, Dp, 1);
        }
        for (int j = 0; j < nk; j++) {
          const int64_t off = ((int64_t)b * Tk + k0 + j) * s.C + (int64_t)h * D;
          if (dk)
            for (int d = 0; d < D; d++) dk[off + d] += dKa[j * Dp + d];
          if (dv)
            for (int d = 0; d < D; d++) dv[off + d] += dVa[j * Dp + d];
        }
      }
    }
  }

  if (dq) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < bh * Tq; r++) { /* r = (b * H + h) * Tq + i */
      const int i = (int)(r % Tq), h = (int)(r / Tq % H), b = (int)(r / Tq / H);
      float *dst = dq + ((int64_t)b * Tq + i) * s.C + (int64_t)h * D;
      const float *src = dQp + ((size_t)(r / Tq) * tqp + i) * Dp;
      for (int d = 0; d < D; d++) {
        float acc = 0;
        for (int g = 0; g < G; g++) acc += src[g * nqp + d];
        dst[d] += s.scale * acc;
      }
    }
  }
}
