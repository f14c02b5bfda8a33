/* test_activation_ckpt.c - activation checkpointing on the trainer's graph
 * (text encoder + UNet + loss; cd_train_opts.grad_ckpt): the UNet's resnet
 * and transformer blocks are segments that backward runs again
 * (engine/graph.h). Recomputation runs the same kernels on the same inputs, so
 * the loss and every trainable gradient must equal the plain plan's bit for
 * bit, for Custom Diffusion's K/V and for full fine-tuning, on the golden tiny
 * SD 1.x and SD 2.x (v-prediction) UNets and on tools/gen_sd_random's tiny
 * SDXL (transformer depth 2, text_time conditioning, two encoders); and the
 * planned activations must at least halve. */
#include "custom/train.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "test.h"

enum { RES = 64, LAT = RES / 8, PX = 3 * RES * RES };

/* one instance and one class example (prior preservation) */
typedef struct {
  float pix[2][PX], mask[2][LAT * LAT], noise[2][4 * LAT * LAT], tid[2][6];
  int ids[2][77], ids2[2][77], ts[2];
} batch_data;

static void fill_batch(batch_data *d, int new_id) {
  cd_rng r;
  cd_rng_seed(&r, 4242);
  for (int e = 0; e < 2; e++) {
    for (int i = 0; i < PX; i++) d->pix[e][i] = (float)(cd_rng_uniform(&r) * 2 - 1);
    for (int i = 0; i < LAT * LAT; i++) d->mask[e][i] = e || i % 5 ? 1.0f : 0.0f;
    int n = 0;
    d->ids[e][n++] = 49406;
    for (int j = 0; j < 4; j++) d->ids[e][n++] = j == 1 && !e ? new_id : 320 + 97 * j + e;
    while (n < 77) d->ids[e][n++] = 49407;
    for (int i = 0; i < 77; i++) d->ids2[e][i] = i > 5 ? 0 : d->ids[e][i]; /* SDXL's second tokenizer pads with 0 after the end token */
    cd_rng_fill_normal(&r, d->noise[e], 4 * LAT * LAT);
    const float tid[6] = {RES, RES, e ? 0 : 8, e ? 0 : 16, RES, RES};
    memcpy(d->tid[e], tid, sizeof tid);
  }
  d->ts[0] = 250;
  d->ts[1] = 830;
}

typedef struct {
  cd_trainer t;
  float *grads; /* every parameter's gradient, concatenated */
  int64_t n;
  double loss, arena;
  int recomputed;
} run_result;

/* one forward + backward of a fresh trainer on m (which already has the token) */
static int run_once(cd_sd_model *m, const cd_train_opts *o, batch_data *bd, run_result *r) {
  memset(r, 0, sizeof *r);
  if (cd_trainer_init(&r->t, m, o)) return -1;
  cd_batch b = {.pixels = bd->pix[0], .mask = bd->mask[0], .ids = bd->ids[0], .noise = bd->noise[0], .timesteps = bd->ts,
                .ids2 = bd->ids2[0], .time_ids = bd->tid[0]};
  cd_step_report rep;
  if (cd_trainer_grad(&r->t, &b, &rep)) return -1;
  r->loss = rep.loss;
  r->arena = (double)cd_graph_arena_bytes(r->t.g);
  r->recomputed = cd_graph_recomputed(r->t.g);
  for (int i = 0; i < r->t.np; i++) r->n += r->t.p[i].n;
  r->grads = cd_malloc((size_t)r->n * sizeof(float));
  for (int i = 0, k = 0; i < r->t.np; k += (int)r->t.p[i].n, i++)
    if (cd_graph_get_grad(r->t.g, r->t.p[i].node, r->grads + k)) return -1;
  return 0;
}

static void run_free(run_result *r) {
  free(r->grads);
  cd_trainer_free(&r->t);
}

/* model: a golden folder, or "sdxl" for tools/gen_sd_random's tiny SDXL
 * (made here; no tokenizers, so the new token's row is left out) */
static void same_gradients(const char *model, int mode) {
  char mp[1024];
  const int xl = !strcmp(model, "sdxl");
  if (xl) {
    char cmd[2400];
    snprintf(mp, sizeof mp, "%s/xl", test_tmpdir("ckxl"));
    snprintf(cmd, sizeof cmd, "'%s' --tiny --family sdxl --seed 5 --out '%s' >/dev/null 2>&1", test_build_path("tools/gen_sd_random"), mp);
    CHECKF(system(cmd) == 0, "%s failed", cmd);
  } else {
    NEED_GOLDEN(mp, model);
  }
  cd_sd_model *m = NULL;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(mp, &lo, &m));
  cd_train_opts o;
  cd_train_opts_default(&o);
  o.res = RES;
  o.train = mode;
  o.sample_latents = 0;
  o.ntok = !xl;
  static batch_data bd;
  int ok = xl || !cd_sd_add_tokens(m, 1, (const char *[]){"<new1>"}, (int[]){42170}, NULL, o.tok_id);
  fill_batch(&bd, xl ? 42170 : o.tok_id[0]);
  run_result a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  ok = ok && !run_once(m, &o, &bd, &a);
  o.grad_ckpt = 1;
  ok = ok && !run_once(m, &o, &bd, &b);
  if (!ok) snprintf(test_msg, sizeof test_msg, "%s %s: %s", model, cd_train_mode_name(mode), cd_last_error());
  const int same = ok && a.n == b.n && a.n > 0 && a.loss == b.loss && !memcmp(a.grads, b.grads, (size_t)a.n * sizeof(float));
  double gsum = 0;
  for (int64_t i = 0; ok && i < a.n; i++) gsum += fabs(a.grads[i]);
  fprintf(stderr, "  %s %s: loss %.6f, %ld gradients, arena %.2f MiB plain, %.2f MiB checkpointed (%d kernels again)\n",
          model, cd_train_mode_name(mode), a.loss, (long)a.n, a.arena / 1048576, b.arena / 1048576, b.recomputed);
  const int rec0 = a.recomputed;
  /* activations: the arena less the parameter gradients (which both keep) */
  const double arena_a = a.arena - 4.0 * a.n, arena_b = b.arena - 4.0 * b.n;
  const int recomputed = b.recomputed;
  run_free(&a);
  run_free(&b);
  cd_sd_free(m);
  if (!ok) {
    test_failed_flag = 1;
    return;
  }
  CHECK(rec0 == 0 && recomputed > 0);
  CHECK(same);
  CHECK(gsum > 0);
  /* each block keeps ~6-10 tensors of its input's size for backward; the
   * checkpointed plan keeps its input and one block's intermediates */
  CHECKF(arena_b < 0.5 * arena_a, "arena %.0f checkpointed vs %.0f plain", arena_b, arena_a);
}

TEST(tiny_sd1_kv) { same_gradients("tiny-sd1", CD_TRAIN_KV); }
TEST(tiny_sd1_full) { same_gradients("tiny-sd1", CD_TRAIN_FULL); }
TEST(tiny_sd2_kv) { same_gradients("tiny-sd2", CD_TRAIN_KV); }
TEST(small4_sd1_crossattn) { same_gradients("small4-sd1", CD_TRAIN_CROSSATTN); }
TEST(tiny_sdxl_kv) { same_gradients("sdxl", CD_TRAIN_KV); }

int main(void) {
  test_pin_threads(); /* gradients with and without checkpointing are compared bit for bit (test.h) */
  RUN(tiny_sd1_kv);
  RUN(tiny_sd1_full);
  RUN(tiny_sd2_kv);
  RUN(small4_sd1_crossattn);
  RUN(tiny_sdxl_kv);
  test_tmp_cleanup(); /* the tiny SDXL it generated (27 MB) */
  return test_summary();
}
