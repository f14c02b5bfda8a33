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

/* Residual MLP blocks, each one checkpoint segment, wide inside and narrow
 * between: h += W2_k gelu(W1_k layer_norm(h; gamma_k)) for K blocks, then
 * y = h + (h after block 1) (a value of one segment read after another's
 * backward) and mse(y, target). Trainable: W1_0 (so gradients cross every
 * block), gamma_3 (saved norm statistics must be recomputed) and W2_{K-1}. */
enum { RB_K = 8, RB_B = 16, RB_D = 8, RB_H = 64 };
typedef struct {
  cd_graph *g;
  cd_node *x, *target, *loss, *y, *train[3];
  float w1[RB_K][RB_H * RB_D], w2[RB_K][RB_D * RB_H], gam[RB_K][RB_D];
} resblocks;

static void rb_build(resblocks *r, int marks) {
  r->g = cd_graph_new();
  r->x = cd_input(r->g, "x", 2, (int64_t[]){RB_B, RB_D});
  r->target = cd_input(r->g, "target", 2, (int64_t[]){RB_B, RB_D});
  cd_node *h = r->x, *skip = NULL;
  for (int k = 0; k < RB_K; k++) {
    test_fill_uniform(r->w1[k], RB_H * RB_D, -0.6f, 0.6f, 300 + k);
    test_fill_uniform(r->w2[k], RB_D * RB_H, -0.2f, 0.2f, 400 + k);
    test_fill_uniform(r->gam[k], RB_D, 0.5f, 1.5f, 500 + k);
    if (marks) cd_graph_checkpoint_begin(r->g);
    cd_node *w1 = cd_param(r->g, "w1", r->w1[k], 2, (int64_t[]){RB_H, RB_D});
    cd_node *w2 = cd_param(r->g, "w2", r->w2[k], 2, (int64_t[]){RB_D, RB_H});
    cd_node *gm = cd_param(r->g, "gamma", r->gam[k], 1, (int64_t[]){RB_D});
    if (k == 0) cd_set_trainable(r->train[0] = w1);
    if (k == 3) cd_set_trainable(r->train[1] = gm);
    if (k == RB_K - 1) cd_set_trainable(r->train[2] = w2);
    cd_node *a = cd_gelu(r->g, cd_linear(r->g, cd_layer_norm(r->g, h, gm, NULL, 1e-5f), w1, NULL));
    h = cd_add(r->g, h, cd_linear(r->g, a, w2, NULL));
    if (marks) cd_graph_checkpoint_end(r->g);
    if (k == 1) skip = h;
  }
  r->y = cd_add(r->g, h, skip);
  r->loss = cd_mse(r->g, r->y, r->target, NULL);
  cd_graph_output(r->g, r->loss);
}

/* loss and the three gradients after one forward + backward */
static int rb_run(resblocks *r, float *out) {
  test_fill_uniform(r->x->data, r->x->n, -1, 1, 17);
  test_fill_uniform(r->target->data, r->target->n, -1, 1, 18);
  if (cd_graph_forward(r->g) || cd_graph_backward(r->g)) return -1;
  out[0] = r->loss->data[0];
  size_t k = 1;
  for (int i = 0; i < 3; i++) {
    if (cd_graph_get_grad(r->g, r->train[i], out + k)) return -1;
    k += r->train[i]->n;
  }
  return 0;
}

/* Checkpointing recomputes values with the same kernels on the same inputs,
 * so the loss and every gradient must equal the plain plan's bit for bit (run
 * twice: the schedule re-zeroes correctly), also without buffer reuse. Memory:
 * the plain plan keeps each block's [B, H] linear and gelu outputs (and [B, D]
 * norm) for backward, K * 2 * B * H floats = 64 KiB; the checkpointed one keeps
 * the K block inputs ([B, D], 4 KiB) and one block's intermediates, so it must
 * use well under half. */
TEST(checkpointing_same_gradients_less_memory) {
  static resblocks plain, ck, ck_nr, unmarked;
  rb_build(&plain, 1);
  rb_build(&ck, 1);
  rb_build(&ck_nr, 1);
  rb_build(&unmarked, 0);
  cd_plan_opts p0 = {.training = 1, .loss = plain.loss}, p1 = {.training = 1, .loss = ck.loss, .checkpoint = 1};
  cd_plan_opts p2 = {.training = 1, .loss = ck_nr.loss, .checkpoint = 1, .no_reuse = 1};
  cd_plan_opts p3 = {.training = 1, .loss = unmarked.loss, .checkpoint = 1};
  CHECK_OK(cd_graph_plan(plain.g, &p0));
  CHECK_OK(cd_graph_plan(ck.g, &p1));
  CHECK_OK(cd_graph_plan(ck_nr.g, &p2));
  CHECK_OK(cd_graph_plan(unmarked.g, &p3));
  CHECK(cd_graph_recomputed(plain.g) == 0);
  CHECK(cd_graph_recomputed(unmarked.g) == 0); /* no marks: nothing to recompute */
  CHECK(cd_graph_arena_bytes(unmarked.g) == cd_graph_arena_bytes(plain.g)); /* marks alone change nothing */
  /* every block's layer norm, linear, gelu, linear (the last block's output add is kept for the loss) */
  CHECKF(cd_graph_recomputed(ck.g) >= 4 * RB_K, "recomputed %d", cd_graph_recomputed(ck.g));
  CHECKF(2 * cd_graph_arena_bytes(ck.g) < cd_graph_arena_bytes(plain.g), "arena %zu checkpointed vs %zu",
         cd_graph_arena_bytes(ck.g), cd_graph_arena_bytes(plain.g));
  enum { NOUT = 1 + RB_H * RB_D + RB_D + RB_D * RB_H };
  static float a[NOUT], b[NOUT], c[NOUT];
  for (int rep = 0; rep < 2; rep++) {
    CHECK_OK(rb_run(&plain, a));
    CHECK_OK(rb_run(&ck, b));
    CHECK_OK(rb_run(&ck_nr, c));
    CHECK(a[0] > 0);
    CHECK(!memcmp(a, b, sizeof a));
    CHECK(!memcmp(a, c, sizeof a));
  }
  double gn = 0;
  for (int i = 1; i < NOUT; i++) gn += fabs(a[i]);
  CHECK(gn > 0);
  cd_graph_free(plain.g);
  cd_graph_free(ck.g);
  cd_graph_free(ck_nr.g);
  cd_graph_free(unmarked.g);
}

/* an inference plan ignores checkpointing: same arena, same values */
TEST(checkpointing_ignored_without_training) {
  static resblocks a, b;
  rb_build(&a, 1);
  rb_build(&b, 1);
  cd_graph_output(a.g, a.y);
  cd_graph_output(b.g, b.y);
  cd_plan_opts pb = {.checkpoint = 1};
  CHECK_OK(cd_graph_plan(a.g, NULL));
  CHECK_OK(cd_graph_plan(b.g, &pb));
  CHECK(cd_graph_arena_bytes(a.g) == cd_graph_arena_bytes(b.g));
  CHECK(cd_graph_recomputed(b.g) == 0);
  cd_graph_free(a.g);
  cd_graph_free(b.g);
}

int main(void) {
  RUN(planner_reuses_buffers_inference);
  RUN(planned_equals_unplanned);
  RUN(gradients_only_where_needed);
  RUN(chain_gradient_matches_finite_differences);
  RUN(build_error_is_reported_not_fatal);
  RUN(backward_without_training_plan_fails);
  RUN(checkpointing_same_gradients_less_memory);
  RUN(checkpointing_ignored_without_training);
  return test_summary();
}
