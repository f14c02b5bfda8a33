/* test_attention.c - fused multi-head attention (CD_OP_ATTENTION) against a
 * naive double-precision softmax(scale q k^T) v, forward and gradients. */
#include "test.h"

typedef struct {
  int B, Tq, Tk, H, D, causal;
  float scale;
} attn_ctx;

static cd_node *build_attn(cd_graph *g, cd_node **src, void *ctx) {
  attn_ctx *a = ctx;
  return cd_attention(g, src[0], src[1], src[2], a->H, a->causal, a->scale);
}

/* y[b,i,h*D+d] = sum_j softmax_j(scale q.k) v, materialising the score row */
static void ref_attn(double **src, double *out, void *ctx) {
  attn_ctx *a = ctx;
  const double *q = src[0], *k = src[1], *v = src[2];
  const int C = a->H * a->D;
  double *p = malloc(a->Tk * sizeof(double));
  for (int b = 0; b < a->B; b++)
    for (int h = 0; h < a->H; h++)
      for (int i = 0; i < a->Tq; i++) {
        const double *qi = q + ((size_t)b * a->Tq + i) * C + h * a->D;
        int nj = a->causal ? i + 1 : a->Tk;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < nj; j++) {
          const double *kj = k + ((size_t)b * a->Tk + j) * C + h * a->D;
          double s = 0;
          for (int d = 0; d < a->D; d++) s += qi[d] * kj[d];
          p[j] = s * a->scale;
          if (p[j] > mx) mx = p[j];
        }
        for (int j = 0; j < nj; j++) sum += p[j] = exp(p[j] - mx);
        double *yi = out + ((size_t)b * a->Tq + i) * C + h * a->D;
        for (int d = 0; d < a->D; d++) yi[d] = 0;
        for (int j = 0; j < nj; j++) {
          const double *vj = v + ((size_t)b * a->Tk + j) * C + h * a->D;
          for (int d = 0; d < a->D; d++) yi[d] += p[j] / sum * vj[d];
        }
      }
  free(p);
}

/* q, k scaled up so that the softmax is far from uniform */
static int init_attn(int i, float *x, int64_t n, void *ctx) {
  test_fill_uniform(x, n, i == 2 ? -1.0f : -2.0f, i == 2 ? 1.0f : 2.0f, 77 + i);
  return 0;
}

/* Forward error bound of float32 attention on this data (test.h's model,
 * worst case per output element, then relative L2 over the tensor):
 *   a score s = scale q.k is a sum of D products: |ds| <= gamma_D S, with S =
 *     scale sum_d |q_d k_d| (the largest over the rows); exp turns that into
 *     a relative error of the weight, plus 3 u (subtract, exp, divide);
 *   the normaliser and y = sum_j p_j v_j are sums of Tk terms: gamma_Tk each,
 *     relative to sum_j p_j |v_j|.
 * |dy| <= (gamma_D S + 3 u + 2 gamma_Tk) sum_j p_j |v_j|; the cancellation
 * ratio ||sum p |v| || / ||y|| is computed here in double from the same data. */
static double fwd_bound(const attn_ctx *a) {
  const int C = a->H * a->D;
  int64_t nq = (int64_t)a->B * a->Tq * C, nk = (int64_t)a->B * a->Tk * C;
  float *q = malloc(nq * sizeof(float)), *k = malloc(nk * sizeof(float)), *v = malloc(nk * sizeof(float));
  init_attn(0, q, nq, NULL);
  init_attn(1, k, nk, NULL);
  init_attn(2, v, nk, NULL);
  double *p = malloc(a->Tk * sizeof(double)), S = 0, num = 0, den = 0;
  for (int b = 0; b < a->B; b++)
    for (int h = 0; h < a->H; h++)
      for (int i = 0; i < a->Tq; i++) {
        const float *qi = q + ((size_t)b * a->Tq + i) * C + h * a->D;
        int nj = a->causal ? i + 1 : a->Tk;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < nj; j++) {
          const float *kj = k + ((size_t)b * a->Tk + j) * C + h * a->D;
          double s = 0, sa = 0;
          for (int d = 0; d < a->D; d++) s += (double)qi[d] * kj[d], sa += fabs((double)qi[d] * kj[d]);
          p[j] = s * a->scale;
          S = fmax(S, sa * a->scale);
          mx = fmax(mx, p[j]);
        }
        for (int j = 0; j < nj; j++) sum += p[j] = exp(p[j] - mx);
        for (int d = 0; d < a->D; d++) {
          double y = 0, ya = 0;
          for (int j = 0; j < nj; j++) {
            double vj = v[((size_t)b * a->Tk + j) * C + h * a->D + d];
            y += p[j] / sum * vj;
            ya += p[j] / sum * fabs(vj);
          }
          num += ya * ya;
          den += y * y;
        }
      }
  free(q); free(k); free(v); free(p);
  double b = (test_gamma(a->D) * S + 3 * TEST_U32 + 2 * test_gamma(a->Tk)) * sqrt(num / den);
  if (getenv("CDIFF_TEST_VERBOSE")) printf("  attention B%d Tq%d Tk%d D%d: forward bound %.3g\n", a->B, a->Tq, a->Tk, a->D, b);
  return b;
}

static int check(attn_ctx a, unsigned mask, const char *name) {
  const int C = a.H * a.D;
  op_check c = {
      .name = name,
      .nsrc = 3,
      .ndim = {3, 3, 3},
      .ne = {{a.B, a.Tq, C}, {a.B, a.Tk, C}, {a.B, a.Tk, C}},
      .trainable_mask = mask,
      .build = build_attn,
      .ref = ref_attn,
      .init = init_attn,
      .ctx = &a,
      .fwd_tol = fwd_bound(&a),
      /* the golden README's float32 gradient tolerance (its finite differences
       * are taken in double on the double reference, accurate to ~eps^2 = 1e-8) */
      .grad_tol = 1e-3,
      .max_fd = (int64_t)a.Tq * a.Tk > 2000 ? 24 : 48, /* the reference is O(T^2) per probe */
  };
  return test_check_op(&c);
}

/* test_msg is already set by test_check_op on failure */
#define CHECK_ATTN(...) do { if (check(__VA_ARGS__)) { test_failed_flag = 1; return; } } while (0)

#define ALL 7u
#define ONLY_Q 1u
#define ONLY_KV 6u

/* every subset of trainable {q, k, v} on odd sizes */
TEST(attn_small_all_subsets) {
  attn_ctx a = {.B = 2, .Tq = 7, .Tk = 5, .H = 3, .D = 4, .scale = 0.5f};
  for (unsigned m = 1; m <= 7; m++) {
    char nm[64];
    snprintf(nm, sizeof nm, "small mask %u", m);
    CHECK_ATTN(a, m, nm);
  }
}

TEST(attn_cross_attention) {
  /* Tq != Tk, Tk like CLIP's 77 (two key blocks, the second partial) */
  attn_ctx a = {.B = 1, .Tq = 10, .Tk = 77, .H = 2, .D = 8, .scale = 0.3f};
  CHECK_ATTN(a, ALL, "cross all");
  CHECK_ATTN(a, ONLY_KV, "cross kv");
  CHECK_ATTN(a, ONLY_Q, "cross q");
}

TEST(attn_causal) {
  attn_ctx a = {.B = 2, .Tq = 9, .Tk = 9, .H = 2, .D = 5, .causal = 1, .scale = 0.7f};
  for (unsigned m = 1; m <= 7; m++) {
    char nm[64];
    snprintf(nm, sizeof nm, "causal mask %u", m);
    CHECK_ATTN(a, m, nm);
  }
}

/* T > block size: several query and key blocks, the last ones partial */
TEST(attn_multi_block) {
  attn_ctx a = {.B = 1, .Tq = 150, .Tk = 150, .H = 2, .D = 6, .scale = 0.45f};
  CHECK_ATTN(a, ALL, "multi all");
  CHECK_ATTN(a, ONLY_KV, "multi kv");
  CHECK_ATTN(a, ONLY_Q, "multi q");
}

TEST(attn_multi_block_causal) {
  /* CLIP-like 77 tokens and a 150-token case crossing two block borders */
  attn_ctx a = {.B = 1, .Tq = 77, .Tk = 77, .H = 2, .D = 4, .causal = 1, .scale = 0.6f};
  CHECK_ATTN(a, ALL, "causal77 all");
  a.Tq = a.Tk = 150;
  CHECK_ATTN(a, ALL, "causal150 all");
  CHECK_ATTN(a, ONLY_KV, "causal150 kv");
  CHECK_ATTN(a, ONLY_Q, "causal150 q");
}

/* SD head widths: D = 40 (padded vector tile) and D = 80 (4 + 1 vectors) */
TEST(attn_sd_head_dims) {
  attn_ctx a = {.B = 2, .Tq = 70, .Tk = 66, .H = 2, .D = 40, .scale = 1.0f / sqrtf(40.0f)};
  CHECK_ATTN(a, ALL, "d40 all");
  a = (attn_ctx){.B = 1, .Tq = 65, .Tk = 20, .H = 1, .D = 80, .scale = 0.2f};
  CHECK_ATTN(a, ALL, "d80 all");
  a = (attn_ctx){.B = 1, .Tq = 33, .Tk = 70, .H = 2, .D = 64, .scale = 0.125f};
  CHECK_ATTN(a, ONLY_KV, "d64 kv");
}

/* large T forward only: 1024 tokens, 16 x 16 blocks per head */
TEST(attn_large_forward) {
  attn_ctx a = {.B = 1, .Tq = 1024, .Tk = 1024, .H = 2, .D = 8, .scale = 1.0f / sqrtf(8.0f)};
  CHECK_ATTN(a, 0, "large fwd");
  a.causal = 1;
  CHECK_ATTN(a, 0, "large causal fwd");
}

/* forward saves lse [B, H, Tq]; a huge score gap must not overflow */
TEST(attn_lse_and_stability) {
  const int B = 1, T = 3, H = 1, D = 2;
  float q[6] = {100, 0, 0, 0, -50, 50}, k[6] = {1, 0, 0, 1, -1, -1}, v[6] = {1, 2, 3, 4, 5, 6};
  cd_graph *g = cd_graph_new();
  int64_t ne[3] = {B, T, H * D};
  cd_node *qn = cd_param(g, "q", q, 3, ne), *kn = cd_param(g, "k", k, 3, ne), *vn = cd_param(g, "v", v, 3, ne);
  cd_node *y = cd_attention(g, qn, kn, vn, H, 0, 1.0f);
  cd_graph_output(g, y);
  cd_plan_opts po = {0};
  if (cd_graph_plan(g, &po) || cd_graph_forward(g)) {
    cd_graph_free(g);
    FAILF("%s", cd_last_error());
  }
  /* row 0: scores 100, 0, -100 -> y = v0; lse = 100 + log(1 + e^-100 + e^-200) */
  /* a weighted sum of 3 values |v| <= 6 with weights from exp/divide: gamma_3 6 + 3 u 6;
   * lse = max + log(sum): a few roundings of its size (100 and log 3) */
  const double ty = (test_gamma(3) + 3 * TEST_U32) * 6, tl0 = 4 * TEST_U32 * 100, tl1 = 4 * TEST_U32 * 3;
  int ok = fabsf(y->data[0] - 1) <= ty && fabsf(y->data[1] - 2) <= ty;
  /* row 1: all scores 0 -> mean of v, lse = log 3 */
  ok = ok && fabsf(y->data[2] - 3) <= ty && fabsf(y->data[3] - 4) <= ty;
  int lse_ok = y->aux && fabsf(y->aux[0] - 100) <= tl0 && fabs(y->aux[1] - log(3.0)) <= tl1;
  int finite = 1;
  for (int i = 0; i < 6; i++) finite &= isfinite(y->data[i]);
  cd_graph_free(g);
  CHECK(ok);
  CHECK(lse_ok);
  CHECK(finite);
}

int main(void) {
  RUN(attn_small_all_subsets);
  RUN(attn_cross_attention);
  RUN(attn_causal);
  RUN(attn_multi_block);
  RUN(attn_multi_block_causal);
  RUN(attn_sd_head_dims);
  RUN(attn_large_forward);
  RUN(attn_lse_and_stability);
  return test_summary();
}
