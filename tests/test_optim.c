/* test_optim.c - the optimizer inside the engine (engine/optim.h): the global
 * gradient norm over several parameters, clipping, the AdamW update against
 * a double-precision reference of the formula, the finite checks, and the
 * host copies of the backend state. The bit-exact comparison with the former
 * host implementation on the golden training steps is in test_train_golden. */
#include "engine/optim.h"
#include "test.h"

/* loss = sum(w0 * x0) + sum(w1 * x1): the gradient of w_i is x_i */
typedef struct {
  cd_graph *g;
  cd_node *x[2], *w[2];
  float wd[2][6];
  cd_optim *o;
} fix;

static int fix_init(fix *f, float gscale) {
  memset(f, 0, sizeof *f);
  f->g = cd_graph_new();
  const int64_t ne[2][2] = {{2, 3}, {6, 1}};
  cd_node *loss = NULL;
  for (int i = 0; i < 2; i++) {
    test_fill_uniform(f->wd[i], 6, -1, 1, 10 + i);
    f->w[i] = cd_param(f->g, i ? "w1" : "w0", f->wd[i], 2, ne[i]);
    cd_set_trainable(f->w[i]);
    f->x[i] = cd_input(f->g, i ? "x1" : "x0", 2, ne[i]);
    cd_node *s = cd_sum(f->g, cd_mul(f->g, f->w[i], f->x[i]));
    loss = loss ? cd_add(f->g, loss, s) : s;
  }
  cd_graph_output(f->g, loss);
  cd_plan_opts po = {.training = 1, .loss = loss};
  if (cd_graph_plan(f->g, &po)) return -1;
  for (int i = 0; i < 2; i++) {
    test_fill_uniform(f->x[i]->data, 6, -gscale, gscale, 20 + i);
    f->x[i]->data[i] = gscale; /* a gradient of the full scale in each */
  }
  f->o = cd_optim_new(f->g);
  for (int i = 0; i < 2; i++)
    if (cd_optim_add(f->o, f->w[i])) return -1;
  return cd_graph_forward(f->g) || cd_graph_backward(f->g) ? -1 : 0;
}

static void fix_free(fix *f) {
  cd_optim_free(f->o);
  cd_graph_free(f->g);
}

static const cd_adamw_opts HP = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 1e-2f, .max_grad_norm = 1.0f};

/* Three steps with the same gradient, against the formula in double with the
 * moments and values rounded to float where the op stores them: the two
 * differ only by the op's own float rounding of the result (half an ulp), so
 * 2^-23 relative (+ an absolute 1e-30 for zeros) bounds the difference. */
static void check_steps(float gscale, int expect_clip) {
  fix f;
  if (fix_init(&f, gscale)) { fix_free(&f); FAILF("setup: %s", cd_last_error()); }
  double norm = 0;
  for (int i = 0; i < 2; i++)
    for (int k = 0; k < 6; k++) norm += (double)f.x[i]->data[k] * f.x[i]->data[k];
  norm = sqrt(norm);
  double coef = HP.max_grad_norm / (norm + 1e-6);
  if (coef > 1) coef = 1;
  CHECKF((coef < 1) == expect_clip, "setup: coef %g", coef);
  float w[2][6], m[2][6] = {{0}}, v[2][6] = {{0}};
  memcpy(w, f.wd, sizeof w);
  for (int t = 1; t <= 3; t++) {
    cd_optim_report r;
    if (cd_optim_adamw_step(f.o, &HP, &r)) { fix_free(&f); FAILF("step: %s", cd_last_error()); }
    CHECKF(fabs(r.grad_norm - norm) <= 1e-15 * norm, "norm %.17g vs %.17g", r.grad_norm, norm);
    CHECKF(fabs(r.clip_coef - coef) <= 1e-15, "coef %.17g vs %.17g", r.clip_coef, coef);
    CHECK(r.nonfinite == 0 && cd_optim_steps(f.o) == t);
    for (int i = 0; i < 2; i++) {
      float got[6], gm[6], gv[6];
      CHECK_OK(cd_optim_read(f.o, i, CD_OPTIM_VALUE, got));
      CHECK_OK(cd_optim_read(f.o, i, CD_OPTIM_M, gm));
      CHECK_OK(cd_optim_read(f.o, i, CD_OPTIM_V, gv));
      for (int k = 0; k < 6; k++) {
        double g = (double)f.x[i]->data[k] * coef, lr = HP.lr;
        m[i][k] = (float)(HP.beta1 * (double)m[i][k] + (1 - (double)HP.beta1) * g);
        v[i][k] = (float)(HP.beta2 * (double)v[i][k] + (1 - (double)HP.beta2) * g * g);
        double mh = m[i][k] / (1 - pow(HP.beta1, t)), vh = v[i][k] / (1 - pow(HP.beta2, t));
        w[i][k] = (float)(w[i][k] * (1 - lr * HP.weight_decay) - lr * mh / (sqrt(vh) + HP.eps));
        const float ref[3] = {w[i][k], m[i][k], v[i][k]}, out[3] = {got[k], gm[k], gv[k]};
        for (int q = 0; q < 3; q++)
          CHECKF(fabsf(out[q] - ref[q]) <= 0x1p-23f * fabsf(ref[q]) + 1e-30f, "step %d w%d[%d] %s: %.9g vs %.9g", t, i, k,
                 q == 0 ? "value" : q == 1 ? "m" : "v", out[q], ref[q]);
      }
    }
  }
  fix_free(&f);
}

TEST(adamw_unclipped) { check_steps(0.05f, 0); }
TEST(adamw_clipped_global_norm) { check_steps(3.0f, 1); }

TEST(no_clipping_when_max_norm_is_zero) {
  fix f;
  if (fix_init(&f, 3.0f)) { fix_free(&f); FAILF("setup: %s", cd_last_error()); }
  cd_adamw_opts hp = HP;
  hp.max_grad_norm = 0;
  cd_optim_report r;
  CHECK_OK(cd_optim_adamw_step(f.o, &hp, &r));
  CHECK(r.clip_coef == 1 && r.grad_norm > 3);
  fix_free(&f);
}

TEST(nonfinite_gradient_changes_nothing) {
  fix f;
  if (fix_init(&f, 0.5f)) { fix_free(&f); FAILF("setup: %s", cd_last_error()); }
  CHECK_OK(cd_optim_adamw_step(f.o, &HP, NULL));
  float before[2][3][6];
  for (int i = 0; i < 2; i++)
    for (int q = 0; q < 3; q++) CHECK_OK(cd_optim_read(f.o, i, (cd_optim_what[]){CD_OPTIM_VALUE, CD_OPTIM_M, CD_OPTIM_V}[q], before[i][q]));
  f.x[1]->data[4] = NAN;
  CHECK_OK(cd_graph_forward(f.g));
  CHECK_OK(cd_graph_backward(f.g));
  cd_optim_report r;
  CHECK(cd_optim_adamw_step(f.o, &HP, &r) == -1);
  CHECKF(strstr(cd_last_error(), "gradient is not finite at step 2"), "message: %s", cd_last_error());
  CHECK(!isfinite(r.grad_norm) && cd_optim_steps(f.o) == 1);
  for (int i = 0; i < 2; i++)
    for (int q = 0; q < 3; q++) {
      float now[6];
      CHECK_OK(cd_optim_read(f.o, i, (cd_optim_what[]){CD_OPTIM_VALUE, CD_OPTIM_M, CD_OPTIM_V}[q], now));
      CHECK(!memcmp(now, before[i][q], sizeof now));
    }
  fix_free(&f);
}

/* At step 1 AdamW moves every value by lr against the sign of its gradient:
 * values at -3e38 sign(g) and lr 3e38 land at -6e38 sign(g), beyond float. */
TEST(overflowing_update_is_counted) {
  fix f;
  if (fix_init(&f, 0.5f)) { fix_free(&f); FAILF("setup: %s", cd_last_error()); }
  cd_adamw_opts hp = HP;
  hp.lr = 3e38f;
  hp.weight_decay = 0;
  for (int i = 0; i < 2; i++) {
    float big[6];
    for (int k = 0; k < 6; k++) big[k] = -copysignf(3e38f, f.x[i]->data[k]);
    CHECK_OK(cd_optim_write(f.o, i, CD_OPTIM_VALUE, big));
  }
  cd_optim_report r;
  CHECK_OK(cd_optim_adamw_step(f.o, &hp, &r));
  CHECKF(r.nonfinite == 12, "%lld non-finite", (long long)r.nonfinite);
  fix_free(&f);
}

TEST(state_round_trip_and_bad_use) {
  fix f;
  if (fix_init(&f, 0.5f)) { fix_free(&f); FAILF("setup: %s", cd_last_error()); }
  float a[6] = {1, 2, 3, 4, 5, 6}, b[6];
  CHECK_OK(cd_optim_write(f.o, 1, CD_OPTIM_M, a));
  CHECK_OK(cd_optim_read(f.o, 1, CD_OPTIM_M, b));
  CHECK(!memcmp(a, b, sizeof a));
  CHECK_OK(cd_optim_read(f.o, 0, CD_OPTIM_GRAD, b));
  CHECK(!memcmp(b, f.x[0]->data, sizeof b));
  CHECK(cd_optim_read(f.o, 2, CD_OPTIM_VALUE, b) == -1);
  CHECK(cd_optim_add(f.o, f.x[0]) == -1 && strstr(cd_last_error(), "x0 is not a trainable parameter"));
  cd_optim_set_steps(f.o, 41);
  CHECK_OK(cd_optim_adamw_step(f.o, &HP, NULL));
  CHECK(cd_optim_steps(f.o) == 42 && cd_optim_count(f.o) == 2 && cd_optim_param(f.o, 1) == f.w[1]);
  fix_free(&f);
}

/* K micro-batches: the gradient AdamW sees is (g0 + g1 + g2) / 3, summed in
 * micro-batch order in float as the host trainer did (exact comparison) */
TEST(accumulate_means_micro_batches) {
  fix f;
  if (fix_init(&f, 0.5f)) { fix_free(&f); FAILF("setup: %s", cd_last_error()); }
  float want[2][6];
  for (int k = 0; k < 3; k++) {
    for (int i = 0; i < 2; i++) {
      test_fill_uniform(f.x[i]->data, 6, -1, 1, 50 + 10 * k + i);
      for (int j = 0; j < 6; j++) want[i][j] = k ? want[i][j] + f.x[i]->data[j] : f.x[i]->data[j];
    }
    CHECK_OK(cd_graph_forward(f.g));
    CHECK_OK(cd_graph_backward(f.g));
    CHECK_OK(cd_optim_accumulate(f.o, k, 3));
  }
  for (int i = 0; i < 2; i++) {
    float g[6];
    CHECK_OK(cd_optim_read(f.o, i, CD_OPTIM_GRAD, g));
    for (int j = 0; j < 6; j++) CHECKF(g[j] == want[i][j] / 3.0f, "w%d[%d]: %.9g vs %.9g", i, j, g[j], want[i][j] / 3.0f);
  }
  CHECK(cd_optim_accumulate(f.o, 3, 3) == -1 && cd_optim_accumulate(f.o, 0, 1) == 0);
  fix_free(&f);
}

int main(void) {
  RUN(accumulate_means_micro_batches);
  RUN(adamw_unclipped);
  RUN(adamw_clipped_global_norm);
  RUN(no_clipping_when_max_norm_is_zero);
  RUN(nonfinite_gradient_changes_nothing);
  RUN(overflowing_update_is_counted);
  RUN(state_round_trip_and_bad_use);
  return test_summary();
}
