/* test_dtypes.c - storage types (graph.h, cd_type): LINEAR and CONV2D with
 * f16/bf16 weights widened in panels, EMBEDDING with a 16-bit table and i32
 * ids, CAST inserted in front of ops that read f32 only, and the weight store's
 * narrowing. Widening f16/bf16 to f32 is exact, so an op on a 16-bit weight
 * must give what the same op gives on an f32 weight holding the widened
 * values; only the order of float32 sums may differ (panels split the sum
 * over output channels in the dx products), so the bound is float32's:
 * relative L2 1e-5 (~ sqrt(K) * 2^-24 for K <= 1152 with margin). */
#include "engine/cpu/cpu.h"
#include "models/weights.h"
#include "test.h"

#define TOL 1e-5

static uint16_t narrow1(float x, cd_type t) { return t == CD_TYPE_F16 ? cd_f32_to_f16(x) : cd_f32_to_bf16(x); }
static float widen1(uint16_t h, cd_type t) { return t == CD_TYPE_F16 ? cd_f16_to_f32(h) : cd_bf16_to_f32(h); }

/* random weights w[n] in [-1, 1] as 16-bit h[n] and their exact f32 values wf[n] */
static void make_weight(int64_t n, cd_type t, uint64_t seed, uint16_t **h, float **wf) {
  *h = cd_malloc(n * sizeof(uint16_t));
  *wf = cd_malloc(n * sizeof(float));
  float *tmp = cd_malloc(n * sizeof(float));
  test_fill_uniform(tmp, n, -1, 1, seed);
  for (int64_t i = 0; i < n; i++) {
    (*h)[i] = narrow1(tmp[i], t);
    (*wf)[i] = widen1((*h)[i], t);
  }
  free(tmp);
}

/* y = op(x, w) forward and dx backward (loss = sum(y * r)), with w stored as
 * `t` (16-bit) or as the widened f32 values; returns y and dx. */
typedef struct {
  int conv; /* 0 linear, 1 conv2d */
  int64_t xs[4], ws[4];
  int xnd, wnd, stride, pad;
} op_case;

static int run_case(const op_case *c, cd_type t, const uint16_t *h, const float *wf, const float *x, float **y, float **dx, int64_t *ny,
                    int64_t *nx) {
  cd_graph *g = cd_graph_new();
  cd_node *xn = cd_param(g, "x", (float *)x, c->xnd, c->xs);
  cd_set_trainable(xn);
  cd_node *wn = t == CD_TYPE_F32 ? cd_param(g, "w", (float *)wf, c->wnd, c->ws) : cd_param_typed(g, "w", (void *)h, t, c->wnd, c->ws);
  cd_node *b = cd_input(g, "b", 1, (int64_t[]){c->ws[0]});
  cd_node *yn = c->conv ? cd_conv2d(g, xn, wn, b, c->stride, c->pad) : cd_linear(g, xn, wn, b);
  cd_node *r = cd_input(g, "r", yn->ndim, yn->ne);
  cd_node *loss = cd_sum(g, cd_mul(g, yn, r));
  cd_graph_output(g, yn);
  cd_plan_opts po = {.training = 1, .loss = loss};
  int rc = cd_graph_plan(g, &po);
  if (!rc) {
    test_fill_uniform(b->data, b->n, -1, 1, 5);
    test_fill_uniform(r->data, r->n, -1, 1, 6);
    rc = cd_graph_forward(g) || cd_graph_backward(g);
  }
  if (!rc) {
    *ny = yn->n;
    *nx = xn->n;
    *y = cd_malloc(yn->n * sizeof(float));
    *dx = cd_malloc(xn->n * sizeof(float));
    memcpy(*y, yn->data, yn->n * sizeof(float));
    memcpy(*dx, xn->grad, xn->n * sizeof(float));
  }
  cd_graph_free(g);
  return rc;
}

/* every case with f16 and bf16 weights, one panel and many (panel bytes shrunk
 * so that panels end mid-weight) */
static void check_cases(const op_case *cases, int n) {
  size_t saved = cd_cpu_panel_bytes;
  const size_t budgets[] = {saved, 4096, 700};
  for (int ci = 0; ci < n; ci++)
    for (int ti = 0; ti < 2; ti++)
      for (int bi = 0; bi < 3; bi++) {
        const op_case *c = &cases[ci];
        cd_type t = ti ? CD_TYPE_BF16 : CD_TYPE_F16;
        int64_t nw = cd_numel(c->wnd, c->ws), nxe = cd_numel(c->xnd, c->xs), ny, nx;
        uint16_t *h;
        float *wf, *x = cd_malloc(nxe * sizeof(float)), *y0 = NULL, *d0 = NULL, *y1 = NULL, *d1 = NULL;
        make_weight(nw, t, 100 + ci, &h, &wf);
        test_fill_uniform(x, nxe, -1, 1, 7 + ci);
        cd_cpu_panel_bytes = budgets[bi];
        int bad = run_case(c, CD_TYPE_F32, h, wf, x, &y0, &d0, &ny, &nx) || run_case(c, t, h, wf, x, &y1, &d1, &ny, &nx);
        cd_cpu_panel_bytes = saved;
        double ey = bad ? 1 : test_rel_err(y1, y0, ny), ed = bad ? 1 : test_rel_err(d1, d0, nx);
        free(h); free(wf); free(x); free(y0); free(d0); free(y1); free(d1);
        CHECKF(!bad, "case %d %s: %s", ci, cd_type_name(t), cd_last_error());
        CHECKF(ey <= TOL && ed <= TOL, "case %d %s panel %zu B: y rel %.3g, dx rel %.3g", ci, cd_type_name(t), budgets[bi], ey, ed);
      }
}

TEST(linear_16bit_weights) {
  const op_case cases[] = {
      {0, {5, 37}, {29, 37}, 2, 2, 0, 0},
      {0, {2, 3, 64}, {130, 64}, 3, 2, 0, 0},
  };
  check_cases(cases, 2);
}

TEST(conv2d_16bit_weights) {
  const op_case cases[] = {
      {1, {2, 6, 9, 7}, {11, 6, 3, 3}, 4, 4, 1, 1},  /* banded im2col */
      {1, {1, 8, 6, 6}, {13, 8, 1, 1}, 4, 4, 1, 0},  /* direct 1x1 */
      {1, {2, 4, 9, 9}, {7, 4, 3, 3}, 4, 4, 2, 1},   /* strided */
  };
  check_cases(cases, 3);
}

/* a 16-bit table and i32 ids read the same rows as an f32 table and float
 * ids; ids past V read the f32 extra rows; 49408 survives as an i32 id */
TEST(embedding_16bit_table_i32_ids) {
  const int64_t V = 49409, D = 3, E = 2;
  for (int ti = 0; ti < 2; ti++) {
    cd_type t = ti ? CD_TYPE_BF16 : CD_TYPE_F16;
    uint16_t *h;
    float *wf, extra[6] = {1, 2, 3, 4, 5, 6};
    make_weight(V * D, t, 9, &h, &wf);
    cd_graph *g = cd_graph_new();
    cd_node *ids = cd_input_typed(g, "ids", CD_TYPE_I32, 1, (int64_t[]){5});
    cd_node *tab = cd_param_typed(g, "table", h, t, 2, (int64_t[]){V, D});
    cd_node *ex = cd_param(g, "extra", extra, 2, (int64_t[]){E, D});
    cd_node *y = cd_embedding(g, ids, tab, ex);
    cd_graph_output(g, y);
    int rc = cd_graph_plan(g, NULL);
    const int32_t want[5] = {49408, 0, 49409, 49410, 123};
    if (!rc) {
      memcpy(ids->data, want, sizeof want);
      rc = cd_graph_forward(g);
    }
    int ok = !rc;
    for (int i = 0; ok && i < 5; i++)
      for (int j = 0; j < D; j++) {
        float ref = want[i] < V ? wf[want[i] * D + j] : extra[(want[i] - V) * D + j];
        ok = y->data[i * D + j] == ref;
      }
    cd_graph_free(g);
    free(h);
    free(wf);
    CHECKF(ok, "%s table: rows differ (%s)", cd_type_name(t), rc ? cd_last_error() : "values");
  }
}

/* an op that reads f32 only gets a CAST in front of a 16-bit source, placed
 * before it in the graph order */
TEST(cast_inserted_for_other_ops) {
  uint16_t h[6];
  float wf[6], xv[6];
  test_fill_uniform(xv, 6, -1, 1, 3);
  for (int i = 0; i < 6; i++) {
    h[i] = cd_f32_to_f16(0.1f * (float)i - 0.2f);
    wf[i] = cd_f16_to_f32(h[i]);
  }
  cd_graph *g = cd_graph_new();
  cd_node *x = cd_input(g, "x", 2, (int64_t[]){2, 3});
  cd_node *p = cd_param_typed(g, "pos", h, CD_TYPE_F16, 2, (int64_t[]){2, 3});
  cd_node *y = cd_add(g, x, p);
  cd_graph_output(g, y);
  CHECK_OK(cd_graph_plan(g, NULL));
  CHECK(y->src[1]->op == CD_OP_CAST && y->src[1]->src[0] == p && y->src[1]->id < y->id && y->src[1]->type == CD_TYPE_F32);
  memcpy(x->data, xv, sizeof xv);
  CHECK_OK(cd_graph_forward(g));
  for (int i = 0; i < 6; i++) CHECKF(y->data[i] == xv[i] + wf[i], "element %d: %g vs %g", i, y->data[i], xv[i] + wf[i]);
  cd_graph_free(g);
}

TEST(trainable_must_be_f32) {
  uint16_t h[4] = {0};
  cd_graph *g = cd_graph_new();
  cd_node *x = cd_input(g, "x", 2, (int64_t[]){1, 2});
  cd_node *w = cd_param_typed(g, "proj.weight", h, CD_TYPE_BF16, 2, (int64_t[]){2, 2});
  cd_set_trainable(w);
  cd_node *loss = cd_sum(g, cd_linear(g, x, w, NULL));
  cd_plan_opts po = {.training = 1, .loss = loss};
  CHECK(cd_graph_plan(g, &po) == -1);
  CHECKF(strstr(cd_last_error(), "proj.weight is bf16"), "message: %s", cd_last_error());
  cd_graph_free(g);
}

/* narrowing rounds to nearest even, keeps 1-D weights f32, widening restores
 * exactly what was stored; bytes follow the storage */
TEST(weight_store_narrow_widen) {
  cd_weights *ws = cd_weights_new();
  float *a = cd_malloc(6 * sizeof(float)), *b = cd_malloc(3 * sizeof(float));
  const float av[6] = {1.0f, 1.0f + 0x1p-11f, 1.0f + 0x1p-10f + 0x1p-11f, -3.14159f, 65504.0f, 1e-8f};
  memcpy(a, av, sizeof av);
  test_fill_uniform(b, 3, -1, 1, 2);
  CHECK_OK(cd_weights_put(ws, "w", 2, (int64_t[]){2, 3}, a));
  CHECK_OK(cd_weights_put(ws, "bias", 1, (int64_t[]){3}, b));
  CHECK(cd_weights_bytes(ws) == 9 * sizeof(float));
  for (int i = 0; i < 2; i++) cd_weight_narrow(cd_weights_at(ws, i), CD_TYPE_F16);
  cd_weight *w = cd_weights_get(ws, "w"), *bias = cd_weights_get(ws, "bias");
  CHECK(w->type == CD_TYPE_F16 && !w->data && bias->type == CD_TYPE_F32);
  CHECK(cd_weights_bytes(ws) == 6 * 2 + 3 * sizeof(float));
  float row[3];
  cd_weight_row_f32(w, 0, row);
  /* ties to even: 1+2^-11 -> 1, 1+2^-10+2^-11 -> 1+2^-9 */
  CHECKF(row[0] == 1.0f && row[1] == 1.0f && row[2] == 1.0f + 0x1p-9f, "row 0: %.9g %.9g %.9g", row[0], row[1], row[2]);
  const float *f = cd_weight_f32(w);
  CHECK(w->type == CD_TYPE_F32 && !w->h16 && f[4] == 65504.0f && fabsf(f[3] - -3.14159f) <= 0x1p-11f * 3.14159f);
  CHECK(f[5] == cd_f16_to_f32(cd_f32_to_f16(1e-8f)));
  cd_weights_free(ws);
}

/* Widening is exact whatever the path: a region past the streaming size
 * (non-temporal stores, 26 MB here), with a tail that is not a multiple of
 * the vector width, at an aligned and an unaligned destination and a source
 * offset, holds the scalar conversion of every bit pattern (NaN for NaN). */
TEST(widen_large_streams) {
  const int64_t n = ((int64_t)26 << 20) / 4 + 5, off = 3;
  uint16_t *h = cd_malloc((n + off) * sizeof(uint16_t));
  for (int64_t i = 0; i < n + off; i++) h[i] = (uint16_t)(i * 40503u >> 3); /* every 16-bit pattern, infinities and NaNs included */
  float *buf = cd_aligned_alloc((n + 8) * sizeof(float)), *want = cd_malloc(n * sizeof(float));
  int bad = 0;
  const cd_type ts[2] = {CD_TYPE_F16, CD_TYPE_BF16};
  for (int k = 0; k < 2 && !bad; k++) {
    for (int64_t i = 0; i < n; i++) want[i] = widen1(h[off + i], ts[k]);
    for (int shift = 0; shift < 2 && !bad; shift++) { /* dst aligned (streams), then one float off (normal stores) */
      memset(buf, 0, (n + 8) * sizeof(float));
      cd_cpu_to_f32(h, ts[k], off, n, buf + shift);
      for (int64_t i = 0; i < n && !bad; i++) /* NaN payloads may differ between the scalar and F16C conversions */
        bad = isnan(want[i]) ? !isnan(buf[shift + i]) : memcmp(buf + shift + i, want + i, sizeof(float)) != 0;
      if (bad) snprintf(test_msg, sizeof test_msg, "%s widening of %ld values (dst offset %d) differs from the scalar one", cd_type_name(ts[k]), (long)n, shift);
    }
  }
  free(h);
  cd_aligned_free(buf);
  free(want);
  if (bad) test_failed_flag = 1;
}

int main(void) {
  RUN(linear_16bit_weights);
  RUN(conv2d_16bit_weights);
  RUN(embedding_16bit_table_i32_ids);
  RUN(cast_inserted_for_other_ops);
  RUN(trainable_must_be_f32);
  RUN(weight_store_narrow_widen);
  RUN(widen_large_streams);
  return test_summary();
}
