/* test_graph.c - the planner and executor: buffer reuse, planned == unplanned,
 * gradients only where asked, build errors reported instead of crashing. */
#include "test.h"

/* A deep chain with a trainable weight in the middle:
 * x -> [linear(w0) -> silu] x 6 -> linear(w_train) -> [silu -> linear(w)] x 6 -> mse(target) */
typedef struct {
  cd_graph *g;
  cd_node *x, *target, *loss, *wt, *frozen_mid, *early;
  float *w[13];
} chain;

static void chain_build(chain *c, int trainable_early) {
  const int B = 3, D = 17;
  c->g = cd_graph_new();
  int64_t xs[2] = {B, D}, ws[2] = {D, D};
  c->x = cd_input(c->g, "x", 2, xs);
  c->target = cd_input(c->g, "target", 2, xs);
  cd_node *h = c->x;
  for (int i = 0; i < 13; i++) {
    c->w[i] = cd_malloc(D * D * sizeof(float));
    test_fill_uniform(c->w[i], D * D, -0.8f, 0.8f, 100 + i);
    cd_node *w = cd_param(c->g, "w", c->w[i], 2, ws);
    if (i == 6 || (trainable_early && i == 1)) cd_set_trainable(w);
    if (i == 6) c->wt = w;
    h = cd_linear(c->g, h, w, NULL);
    if (i == 2) c->early = h;
    if (i == 9) c->frozen_mid = w;
    h = cd_silu(c->g, h);
  }
  c->loss = cd_mse(c->g, h, c->target, NULL);
  cd_graph_output(c->g, c->loss);
}
static void chain_free(chain *c) {
  cd_graph_free(c->g);
  for (int i = 0; i < 13; i++) free(c->w[i]);
}
static void chain_inputs(chain *c) {
  test_fill_uniform(c->x->data, c->x->n, -1, 1, 7);
  test_fill_uniform(c->target->data, c->target->n, -1, 1, 8);
}

/* builds the chain (only w_train trainable), plans it for training and runs one forward + backward pass */
static int chain_train_step(chain *c) {
  chain_build(c, 0);
  cd_plan_opts po = {.training = 1, .loss = c->loss};
  if (cd_graph_plan(c->g, &po)) return -1;
  chain_inputs(c);
  return cd_graph_forward(c->g) || cd_graph_backward(c->g) ? -1 : 0;
}

TEST(planner_reuses_buffers_inference) {
  chain c;
  chain_build(&c, 0);
  CHECK_OK(cd_graph_plan(c.g, NULL));
  CHECKF(cd_graph_arena_bytes(c.g) * 4 < cd_graph_naive_bytes(c.g), "arena %zu vs naive %zu",
         cd_graph_arena_bytes(c.g), cd_graph_naive_bytes(c.g));
  chain_free(&c);
}

TEST(planned_equals_unplanned) {
  chain a, b;
  chain_build(&a, 1);
  chain_build(&b, 1);
  cd_plan_opts pa = {.training = 1, .loss = a.loss}, pb = {.training = 1, .loss = b.loss, .no_reuse = 1};
  CHECK_OK(cd_graph_plan(a.g, &pa));
  CHECK_OK(cd_graph_plan(b.g, &pb));
  CHECK(cd_graph_arena_bytes(a.g) < cd_graph_arena_bytes(b.g));
  for (int rep = 0; rep < 2; rep++) { /* run twice: buffers are re-zeroed correctly */
    chain_inputs(&a);
    chain_inputs(&b);
    CHECK_OK(cd_graph_forward(a.g));
    CHECK_OK(cd_graph_forward(b.g));
    CHECK_OK(cd_graph_backward(a.g));
    CHECK_OK(cd_graph_backward(b.g));
    CHECK(a.loss->data[0] == b.loss->data[0]);
    CHECK(!memcmp(a.wt->grad, b.wt->grad, cd_nbytes(a.wt)));
  }
  CHECK(a.loss->data[0] > 0);
  double gn = 0;
  for (int i = 0; i < a.wt->n; i++) gn += fabs(a.wt->grad[i]);
  CHECK(gn > 0);
  chain_free(&a);
  chain_free(&b);
}

TEST(gradients_only_where_needed) {
  chain c;
  CHECK_OK(chain_train_step(&c));
  CHECK(c.wt->grad != NULL);
  CHECK(c.frozen_mid->grad == NULL); /* frozen weight: no gradient buffer, no work */
  CHECK(c.early->grad == NULL);      /* before the first trainable: nothing flows */
  CHECK(c.x->grad == NULL);
  chain_free(&c);
}

/* The chain's loss in double: h = silu(h W_i^T) for the 13 layers, mean of (h - target)^2 */
static double chain_loss_ref(float *const *w, const double *w6) {
  enum { B = 3, D = 17 };
  float x[B * D], t[B * D];
  test_fill_uniform(x, B * D, -1, 1, 7); /* chain_inputs' data */
  test_fill_uniform(t, B * D, -1, 1, 8);
  double h[B * D], z[B * D];
  for (int k = 0; k < B * D; k++) h[k] = x[k];
  for (int i = 0; i < 13; i++) {
    for (int b = 0; b < B; b++)
      for (int o = 0; o < D; o++) {
        double s = 0;
        for (int k = 0; k < D; k++) s += h[b * D + k] * (i == 6 ? w6[o * D + k] : (double)w[i][o * D + k]);
        z[b * D + o] = s / (1 + exp(-s));
      }
    memcpy(h, z, sizeof h);
  }
  double l = 0;
  for (int k = 0; k < B * D; k++) l += (h[k] - t[k]) * (h[k] - t[k]);
  return l / (B * D);
}

/* the planner wires gradients through 6 frozen layers to the trainable one:
 * the float32 gradient against central differences of the double reference
 * (step 1e-4: truncation ~1e-8 relative), within the golden README's float32
 * gradient tolerance 1e-3 */
TEST(chain_gradient_matches_finite_differences) {
  chain c;
  CHECK_OK(chain_train_step(&c));
  float gw[17 * 17]; /* a gradient lasts until the next forward: copy it */
  CHECK_OK(cd_graph_get_grad(c.g, c.wt, gw));
  double w6[17 * 17], num = 0, den = 0;
  for (int j = 0; j < 17 * 17; j++) w6[j] = c.w[6][j];
  const double h = 1e-4;
  for (int j = 0; j < 17 * 17; j += 13) {
    double w0 = w6[j];
    w6[j] = w0 + h;
    double lp = chain_loss_ref(c.w, w6);
    w6[j] = w0 - h;
    double lm = chain_loss_ref(c.w, w6);
    w6[j] = w0;
    double fd = (lp - lm) / (2 * h);
    num += (fd - gw[j]) * (fd - gw[j]);
    den += fd * fd;
  }
  chain_free(&c);
  CHECKF(sqrt(num / den) <= 1e-3, "rel err %g", sqrt(num / den));
}

TEST(build_error_is_reported_not_fatal) {
  cd_graph *g = cd_graph_new();
  int64_t a[2] = {2, 3}, b[2] = {4, 5};
  float wd[20] = {0};
  cd_node *x = cd_input(g, "x", 2, a);
  cd_node *w = cd_param(g, "proj.weight", wd, 2, b);
  cd_node *y = cd_linear(g, x, w, NULL);
  cd_silu(g, y);
  CHECK(cd_graph_plan(g, NULL) == -1);
  CHECKF(strstr(cd_last_error(), "linear") && strstr(cd_last_error(), "proj.weight"), "message: %s", cd_last_error());
  cd_graph_free(g);
}

TEST(backward_without_training_plan_fails) {
  chain c;
  chain_build(&c, 0);
  CHECK_OK(cd_graph_plan(c.g, NULL));
  CHECK(cd_graph_backward(c.g) == -1);
  chain_free(&c);
}

int main(void) {
  RUN(planner_reuses_buffers_inference);
  RUN(planned_equals_unplanned);
  RUN(gradients_only_where_needed);
  RUN(chain_gradient_matches_finite_differences);
  RUN(build_error_is_reported_not_fatal);
  RUN(backward_without_training_plan_fails);
  return test_summary();
}
