/* test_train_e2e.c - whole training runs on the tiny SD 1.x model: class-image
 * generation and its resumption, checkpoints, bit-exact resume, the log, the
 * validation grid, NaN handling, the delta in the sampling path (alone and
 * with a second delta trained apart), and bad input through the API and the
 * cdiff binary. */
#include <sys/stat.h>
#include <unistd.h>

#include "custom/class_images.h"
#include "custom/delta.h"
#include "custom/train.h"
#include "custom/trainer_run.h"
#include "engine/optim.h"
#include "diffusion/pipeline.h"
#include "io/fsutil.h"
#include "io/image.h"
#include "io/tensor_file.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "test.h"

static char tmp[256], model[1024], images[512], classes[512], empty[512];
static int have_fixture; /* 1 ok, -1 golden missing, 0 not made yet */

static int write_images(const char *dir, int n) {
  if (cd_mkdir_p(dir)) return -1;
  cd_rng r;
  cd_rng_seed(&r, 1234);
  for (int i = 0; i < n; i++) {
    cd_image im = {.w = 64, .h = 64, .c = 3};
    im.px = cd_malloc(64 * 64 * 3);
    uint8_t base[3];
    for (int c = 0; c < 3; c++) base[c] = (uint8_t)(cd_rng_u64(&r) % 256);
    for (int p = 0; p < 64 * 64; p++) /* a random colour with a little per-pixel noise */
      for (int c = 0; c < 3; c++) im.px[p * 3 + c] = (uint8_t)(base[c] ^ (cd_rng_u64(&r) % 16));
    char path[1024];
    snprintf(path, sizeof path, "%s/img%d.png", dir, i);
    int rc = cd_image_save_png(path, &im, NULL, 0);
    cd_image_free(&im);
    if (rc) return -1;
  }
  return 0;
}

/* 0 = usable, 1 = skip (golden missing), -1 = failure (test_msg set) */
static int fixture(void) {
  if (have_fixture) return have_fixture > 0 ? 0 : test_golden_need(model, sizeof model, "tiny-sd1");
  int g = test_golden_need(model, sizeof model, "tiny-sd1");
  if (g) {
    have_fixture = -1;
    return g;
  }
  snprintf(tmp, sizeof tmp, "/tmp/cdiff_train_e2e_XXXXXX");
  if (!mkdtemp(tmp)) {
    snprintf(test_msg, sizeof test_msg, "mkdtemp failed");
    return -1;
  }
  snprintf(images, sizeof images, "%s/images", tmp);
  snprintf(classes, sizeof classes, "%s/classes", tmp);
  snprintf(empty, sizeof empty, "%s/empty", tmp);
  if (write_images(images, 3) || cd_mkdir_p(empty)) {
    snprintf(test_msg, sizeof test_msg, "%s", cd_last_error());
    return -1;
  }
  have_fixture = 1;
  return 0;
}

#define NEED_FIXTURE() GOLDEN_STATUS(fixture())

static void base_opts(cd_run_opts *o, const char *out) {
  cd_run_opts_default(o);
  o->model = model;
  o->images = images;
  o->prompt = "photo of a <new1> cat";
  o->class_prompt = "cat";
  o->class_images = classes;
  o->num_class_images = 2;
  o->class_steps = 3;
  o->steps = 4;
  o->batch = 1;
  o->lr = 1e-3f;
  o->res = 64;
  o->seed = 7;
  o->checkpoint_every = 2;
  o->quiet = 1;
  o->out = out;
}

/* every tensor of two safetensors files byte-identical, same names */
static int same_tensors(const char *a, const char *b) {
  cd_tensor_file *fa = NULL, *fb = NULL;
  int rc = -1;
  if (cd_tensor_file_open(a, &fa) || cd_tensor_file_open(b, &fb)) {
    snprintf(test_msg, sizeof test_msg, "%s", cd_last_error());
    goto done;
  }
  if (cd_tf_count(fa) != cd_tf_count(fb)) {
    snprintf(test_msg, sizeof test_msg, "%s has %d tensors, %s %d", a, cd_tf_count(fa), b, cd_tf_count(fb));
    goto done;
  }
  for (int i = 0; i < cd_tf_count(fa); i++) {
    const cd_tensor_info *x = cd_tf_at(fa, i), *y = cd_tf_find(fb, x->name);
    if (!y || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes)) {
      snprintf(test_msg, sizeof test_msg, "tensor %s differs between %s and %s", x->name, a, b);
      goto done;
    }
  }
  rc = 0;
done:
  cd_tensor_file_close(fa);
  cd_tensor_file_close(fb);
  return rc;
}

/* --concepts with two concepts, batch 2: both tokens train (their rows leave
 * the initializer rows ktn/pll) and the delta carries both */
TEST(multi_concept_every_token_trains) {
  NEED_FIXTURE();
  char imgs2[600], cjson[600], out[600], cls2[600];
  snprintf(imgs2, sizeof imgs2, "%s/images2", tmp);
  snprintf(cls2, sizeof cls2, "%s/classes2", tmp);
  snprintf(cjson, sizeof cjson, "%s/concepts.json", tmp);
  snprintf(out, sizeof out, "%s/multi", tmp);
  CHECK_OK(write_images(imgs2, 2));
  FILE *f = fopen(cjson, "w");
  CHECK(f != NULL);
  fprintf(f, "[{\"instance_prompt\": \"photo of a <new1> cat\", \"class_prompt\": \"cat\", \"instance_data_dir\": \"%s\", \"class_data_dir\": \"%s\"},\n"
             " {\"instance_prompt\": \"a <new2> pot\", \"class_prompt\": \"pot\", \"instance_data_dir\": \"%s\", \"class_data_dir\": \"%s\"}]\n",
          images, classes, imgs2, cls2);
  fclose(f);
  cd_run_opts o;
  base_opts(&o, out);
  o.images = o.prompt = o.class_prompt = o.class_images = NULL;
  o.concepts = cjson;
  o.batch = 2;
  o.steps = 2;
  CHECK_OK(cd_train_run(&o));
  cd_sd_model *m;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(model, &lo, &m));
  cd_delta *d = NULL;
  int rc = cd_delta_load(out, m, &d);
  int ok = !rc && d->ntok == 2 && !strcmp(d->tok[0], "<new1>") && !strcmp(d->tok[1], "<new2>") &&
           !strcmp(d->init[0], "ktn") && !strcmp(d->init[1], "pll");
  cd_weight *tab = cd_weights_get(m->clip.w, "text_model.embeddings.token_embedding.weight");
  int moved[2] = {0, 0};
  for (int t = 0; ok && t < 2; t++) {
    const float *row = tab->data + (size_t)(t ? 47629 : 42170) * d->d;
    for (int k = 0; k < d->d; k++) moved[t] |= d->embeds[t * d->d + k] != row[k];
  }
  cd_delta_free(d);
  cd_sd_free(m);
  CHECKF(rc == 0, "%s", cd_last_error());
  CHECK(ok);
  CHECKF(moved[0] && moved[1], "token rows trained: <new1> %d, <new2> %d", moved[0], moved[1]);
}

TEST(class_images_generate_and_resume) {
  NEED_FIXTURE();
  cd_sd_model *m = NULL;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(model, &lo, &m));
  cd_class_gen_opts g;
  cd_class_gen_opts_default(&g);
  g.prompt = "cat";
  g.dir = classes;
  g.n = 1;
  g.steps = 3;
  g.res = 64;
  g.seed = 7;
  g.quiet = 1;
  int made = -1;
  int rc = cd_class_images_ensure(m, &g, &made);
  char *first = NULL, *again = NULL;
  size_t n1 = 0, n2 = 0;
  char prompt[64] = "";
  if (!rc) rc = cd_read_file(test_path_in(classes, "class_00000.png"), &first, &n1);
  int made1 = made;
  /* an "interrupted" generation: 1 of 2 exist; only the missing one is made */
  g.n = 2;
  if (!rc) rc = cd_class_images_ensure(m, &g, &made);
  int made2 = made;
  if (!rc) rc = cd_read_file(test_path_in(classes, "class_00000.png"), &again, &n2);
  if (!rc) rc = cd_class_images_ensure(m, &g, &made);
  int text = rc ? -1 : cd_png_read_text(test_path_in(classes, "class_00001.png"), "prompt", prompt, sizeof prompt);
  cd_image im = {0};
  if (!rc) rc = cd_image_load(test_path_in(classes, "class_00001.png"), &im);
  cd_sd_free(m);
  int same = first && again && n1 == n2 && !memcmp(first, again, n1);
  free(first);
  free(again);
  CHECK_OK(rc);
  CHECKF(made1 == 1 && made2 == 1 && made == 0, "generated %d, %d, %d (want 1, 1, 0)", made1, made2, made);
  CHECK(same);
  CHECKF(text == 0 && !strcmp(prompt, "cat"), "prompt metadata '%s' (%d)", prompt, text);
  CHECKF(im.w == 64 && im.h == 64, "class image is %dx%d", im.w, im.h);
  cd_image_free(&im);
}

TEST(resume_is_bit_exact) {
  NEED_FIXTURE();
  char a[600], b[600];
  snprintf(a, sizeof a, "%s/run_a", tmp);
  snprintf(b, sizeof b, "%s/run_b", tmp);
  cd_run_opts o;
  base_opts(&o, a); /* 4 steps in one go, with a validation grid at step 2 */
  o.validate_every = 2;
  o.validation_prompt = "a <new1> cat";
  CHECK_OK(cd_train_run(&o));
  base_opts(&o, b); /* 2 steps, then resume to 4 */
  o.steps = 2;
  CHECK_OK(cd_train_run(&o));
  CHECKF(test_count_lines(test_path_in(b, "log.jsonl")) == 2, "log after 2 steps has %d lines", test_count_lines(test_path_in(b, "log.jsonl")));
  /* resumed into another folder: only steps 3 and 4 run there */
  char c[600];
  snprintf(c, sizeof c, "%s/run_c", tmp);
  base_opts(&o, c);
  o.resume = test_path_in(b, "checkpoint-2");
  CHECK_OK(cd_train_run(&o));
  if (same_tensors(test_path_in(a, CD_DELTA_FILE), test_path_in(c, CD_DELTA_FILE))) { test_failed_flag = 1; return; }
  char *lc;
  size_t nc;
  CHECK_OK(cd_read_file(test_path_in(c, "log.jsonl"), &lc, &nc));
  int c_ok = !strncmp(lc, "{\"step\": 3,", 11) && strstr(lc, "\n{\"step\": 4,") && test_count_lines(test_path_in(c, "log.jsonl")) == 2;
  free(lc);
  CHECKF(c_ok, "the run resumed into %s did not train exactly steps 3 and 4", c);
  /* resumed in place */
  base_opts(&o, b);
  o.resume = b;
  CHECK_OK(cd_train_run(&o));
  if (same_tensors(test_path_in(a, CD_DELTA_FILE), test_path_in(b, CD_DELTA_FILE))) { test_failed_flag = 1; return; }
  if (same_tensors(test_path_in(a, "checkpoint-4/state.safetensors"), test_path_in(b, "checkpoint-4/state.safetensors"))) { test_failed_flag = 1; return; }
  /* the logs agree line for line (so do the losses: same batches, same noise) */
  char *la, *lb;
  size_t na, nb;
  CHECK_OK(cd_read_file(test_path_in(a, "log.jsonl"), &la, &na));
  CHECK_OK(cd_read_file(test_path_in(b, "log.jsonl"), &lb, &nb));
  int same = na == nb && !memcmp(la, lb, na), lines = 0;
  for (size_t i = 0; i < na; i++) lines += la[i] == '\n';
  int keys = strstr(la, "\"step\": 4") && strstr(la, "\"loss_instance\"") && strstr(la, "\"loss_prior\"") && strstr(la, "\"grad_norm\"") &&
             strstr(la, "\"lr\": 0.002");
  free(la);
  free(lb);
  CHECKF(same, "log.jsonl of the resumed run differs");
  CHECKF(lines == 4 && keys, "log.jsonl: %d lines / keys missing", lines);
  /* checkpoint state: step and args */
  cd_tensor_file *f;
  CHECK_OK(cd_safetensors_open(test_path_in(a, "checkpoint-4/state.safetensors"), &f));
  const char *st = cd_tf_meta(f, "step"), *args = cd_tf_meta(f, "args");
  int ok = st && !strcmp(st, "4") && args && strstr(args, "\"initializer_token\":[\"ktn\"]") && cd_tf_find(f, "adam_m/token_embedding.extra");
  cd_tensor_file_close(f);
  CHECKF(ok, "checkpoint metadata/tensors wrong");
  /* the final delta carries the args; the validation grid exists */
  CHECK_OK(cd_safetensors_open(test_path_in(a, CD_DELTA_FILE), &f));
  args = cd_tf_meta(f, "args");
  ok = args && strstr(args, "\"modifier_token\":[\"<new1>\"]") && strstr(args, "\"max_train_steps\":4");
  cd_tensor_file_close(f);
  CHECKF(ok, "delta args metadata missing");
  cd_image im;
  CHECK_OK(cd_image_load(test_path_in(a, "validation/step_000002.png"), &im));
  CHECKF(im.w == 128 && im.h == 64, "validation grid %dx%d", im.w, im.h);
  cd_image_free(&im);
  CHECK(cd_file_exists(test_path_in(a, "<new1>.safetensors")) && cd_file_exists(test_path_in(a, CD_DIFFUSERS_DELTA_FILE)));
  /* a resume with other settings is refused, naming the setting */
  base_opts(&o, b);
  o.resume = b;
  o.batch = 2;
  CHECK(cd_train_run(&o) != 0);
  CHECKF(strstr(cd_last_error(), "train_batch_size"), "error: %s", cd_last_error());
}

static int gen(cd_sd_model *m, const char *prompt, float *lat) {
  cd_gen_opts g = {.prompt = prompt, .negative = "", .cfg = 6, .width = 64, .height = 64, .n = 1, .quiet = 1};
  g.s.kind = CD_SAMPLER_DDIM;
  g.s.steps = 4;
  g.s.seed = 3;
  return cd_generate_latents(m, &g, lat);
}

TEST(delta_changes_samples_and_deltas_combine) {
  NEED_FIXTURE();
  char a[600], d[600];
  snprintf(a, sizeof a, "%s/run_a", tmp);
  snprintf(d, sizeof d, "%s/run_d", tmp);
  if (!cd_file_exists(test_path_in(a, CD_DELTA_FILE))) SKIP("run_a missing (resume_is_bit_exact failed)");
  cd_run_opts o;
  base_opts(&o, d); /* a second concept trained apart, with its own token */
  o.modifier_tokens = "<new2>";
  o.initializers = "pll";
  o.prompt = "a <new2> dog";
  o.class_prompt = "dog";
  o.class_images = NULL; /* generated into OUT/class_images/0 */
  o.steps = 2;
  o.checkpoint_every = 0;
  CHECK_OK(cd_train_run(&o));
  CHECK(cd_file_exists(test_path_in(d, "class_images/0/class_00001.png")));
  CHECK(!cd_file_exists(test_path_in(d, "checkpoint-2")) && !cd_file_exists(test_path_in(d, "latest")));
  cd_load_opts lo = {0};
  cd_sd_model *m = NULL;
  float base[256], tuned[256], both[256], tok[256];
  CHECK_OK(cd_sd_load(model, &lo, &m));
  /* the base model has no <new1>: a prompt using it is refused, naming it */
  int refused = gen(m, "photo of a <new1> cat", base) == -1 && strstr(cd_last_error(), "<new1>");
  int rc = gen(m, "photo of a cat", base);
  if (!rc) rc = cd_delta_apply_path(m, a);
  if (!rc) rc = gen(m, "photo of a cat", tuned); /* the K/V weights changed */
  if (!rc) rc = gen(m, "photo of a <new1> cat", tok);
  if (!rc) rc = cd_delta_apply_path(m, d);
  int id1 = m->tok ? cd_tokenizer_lookup(m->tok, "<new1>") : -1, id2 = m->tok ? cd_tokenizer_lookup(m->tok, "<new2>") : -1;
  if (!rc) rc = gen(m, "photo of a <new1> cat and a <new2> dog", both);
  cd_sd_free(m);
  CHECK_OK(rc);
  double diff = 0;
  for (int i = 0; i < 256; i++) diff += fabs(tuned[i] - base[i]);
  /* that the change is what training should make is training_descends' job;
   * here: the applied delta reaches the sampler (any change is 0 vs >= 1 ulp) */
  CHECKF(diff > 0, "the delta does not change the latents (sum |diff| %g)", diff);
  CHECKF(id1 == 49408 && id2 == 49409, "token ids %d %d", id1, id2);
  CHECK(refused);
  double dt = 0;
  for (int i = 0; i < 256; i++) dt += fabs(tok[i] - tuned[i]);
  CHECKF(dt > 0, "<new1> in the prompt changes nothing (sum |diff| %g)", dt);
  for (int i = 0; i < 256; i++) CHECK(isfinite(both[i]));
}

/* loss of the trainer's current parameters on batch b; gradients in the optimizer */
static int loss_at(cd_trainer *t, const cd_batch *b, double *loss) {
  cd_step_report r;
  if (cd_trainer_grad(t, b, &r)) return -1;
  *loss = r.loss;
  return 0;
}

/* What training is for: on its own examples (the three instance images and
 * the run's prompt, fixed noise, timesteps across the schedule) the loss at
 * the trained delta's weights is below the loss at the start (base K/V, the
 * new row at its initializer's), and the K/V moved against the gradient at
 * the start: <W_trained - W_base, dL/dW> < 0. Four AdamW steps of lr 1e-3 move
 * every weight by up to 4e-3, a first-order loss change of ~1e-3 relative,
 * far above float32 rounding (~1e-6 of the loss). */
TEST(training_descends) {
  NEED_FIXTURE();
  char a[600];
  snprintf(a, sizeof a, "%s/run_a", tmp);
  if (!cd_file_exists(test_path_in(a, CD_DELTA_FILE))) FAILF("run_a missing (resume_is_bit_exact failed)");
  cd_load_opts lo = {0};
  cd_sd_model *m0 = NULL, *m1 = NULL;
  cd_delta *d = NULL;
  cd_trainer t = {0};
  int inited = 0, rc = cd_sd_load(model, &lo, &m0) || cd_sd_load(model, &lo, &m1) || cd_delta_load(a, m1, &d) ||
                       cd_delta_apply_path(m1, a);
  enum { B = 3, R = 64, L = R / 8 };
  static float pix[B * 3 * R * R], mask[B * L * L], noise[B * 4 * L * L];
  int ids[B * 77], ts[B] = {150, 500, 850};
  for (int i = 0; !rc && i < B; i++) {
    char p[1200];
    snprintf(p, sizeof p, "%s/img%d.png", images, i);
    cd_image im = {0};
    rc = cd_image_load(p, &im) || im.w != R || im.h != R || im.c != 3 ||
         cd_prompt_ids(m1, "photo of a <new1> cat", ids + i * 77); /* the run's prompt; m1 knows <new1> */
    for (int k = 0; !rc && k < R * R; k++)
      for (int c = 0; c < 3; c++) pix[(i * 3 + c) * R * R + k] = im.px[k * 3 + c] / 127.5f - 1;
    cd_image_free(&im);
  }
  for (int k = 0; k < B * L * L; k++) mask[k] = 1;
  cd_seed_noise(21, 0, noise, B * 4 * L * L);
  cd_batch b = {.pixels = pix, .mask = mask, .ids = ids, .noise = noise, .timesteps = ts};
  cd_train_opts to;
  cd_train_opts_default(&to);
  to.batch = B;
  to.prior = 0;
  to.res = R;
  to.sample_latents = 0;
  to.ntok = 1;
  if (!rc) { /* the row the run started from: its initializer, as the run looks it up */
    char wf[40];
    snprintf(wf, sizeof wf, "%s</w>", d->init[0]);
    int init = cd_tokenizer_lookup(m0->tok, d->init[0]);
    if (init < 0) init = cd_tokenizer_lookup(m0->tok, wf);
    if (init < 0) rc = cd_set_error("initializer %s not in the vocabulary", d->init[0]);
    else rc = cd_sd_add_tokens(m0, 1, (const char *[]){d->tok[0]}, &init, NULL, to.tok_id);
  }
  if (!rc) rc = cd_trainer_init(&t, m0, &to), inited = !rc;
  double l0 = 0, l1 = 0, dot = 0, gn = 0, dn = 0;
  int nkv = 0;
  if (!rc) rc = loss_at(&t, &b, &l0);
  for (int i = 0; !rc && i < t.np; i++) { /* inner products at the start, then the trained values in */
    int64_t n = t.p[i].n;
    float *g = cd_malloc(n * sizeof(float)), *w0 = cd_malloc(n * sizeof(float)), *w1 = NULL;
    rc = cd_optim_read(t.opt, i, CD_OPTIM_GRAD, g) || cd_optim_read(t.opt, i, CD_OPTIM_VALUE, w0);
    if (!strcmp(t.p[i].name, "token_embedding.extra")) w1 = d->embeds;
    else {
      cd_weight *x = cd_weights_get(m1->unet.w, t.p[i].name);
      w1 = x ? x->data : NULL;
      nkv += x != NULL;
    }
    if (!w1) rc = cd_set_error("%s: not in the trained model", t.p[i].name);
    for (int64_t k = 0; !rc && k < n && w1 != d->embeds; k++) {
      dot += (double)(w1[k] - w0[k]) * g[k];
      gn += (double)g[k] * g[k];
      dn += (double)(w1[k] - w0[k]) * (w1[k] - w0[k]);
    }
    if (!rc) rc = cd_optim_write(t.opt, i, CD_OPTIM_VALUE, w1);
    free(g);
    free(w0);
  }
  if (!rc) rc = loss_at(&t, &b, &l1);
  char err[512];
  snprintf(err, sizeof err, "%s", rc ? cd_last_error() : "");
  if (inited) cd_trainer_free(&t);
  cd_delta_free(d);
  cd_sd_free(m0);
  cd_sd_free(m1);
  CHECKF(rc == 0, "%s", err);
  double cosv = dot / sqrt(gn * dn);
  printf("  loss on the training examples: start %.6f, trained %.6f; cos(K/V change, gradient) %.3f over %d K/V tensors\n", l0, l1,
         cosv, nkv);
  CHECKF(nkv > 0 && dn > 0, "the trained K/V equal the base ones");
  CHECKF(cosv < 0, "the K/V moved along the gradient (cos %.3g), not against it", cosv);
  CHECKF(l1 < l0, "training did not lower the loss on its examples: %.6g -> %.6g", l0, l1);
}

TEST(nan_loss_stops_and_keeps_checkpoint) {
  NEED_FIXTURE();
  char n[600];
  snprintf(n, sizeof n, "%s/run_nan", tmp);
  cd_run_opts o;
  base_opts(&o, n);
  o.lr = 1e30f;
  o.scale_lr = 0;
  o.checkpoint_every = 1;
  o.steps = 6;
  CHECK(cd_train_run(&o) != 0);
  const char *e = cd_last_error();
  CHECKF(strstr(e, "loss") && strstr(e, "checkpoint"), "error: %s", e);
  CHECK(!cd_file_exists(test_path_in(n, CD_DELTA_FILE)));
  char *latest = NULL, ck[700];
  size_t nl;
  CHECK_OK(cd_read_file(test_path_in(n, "latest"), &latest, &nl));
  snprintf(ck, sizeof ck, "%.*s/state.safetensors", (int)strcspn(latest, "\n"), latest);
  free(latest);
  cd_tensor_file *f;
  CHECK_OK(cd_safetensors_open(test_path_in(n, ck), &f));
  const char *st = cd_tf_meta(f, "step");
  int step = st ? atoi(st) : -1;
  /* the checkpoint holds finite values of the last good step */
  int finite = 1;
  for (int i = 0; i < cd_tf_count(f); i++) {
    const cd_tensor_info *t = cd_tf_at(f, i);
    float *x = cd_malloc(t->nbytes + 4);
    cd_tf_read_f32(f, t, x);
    for (int64_t k = 0; k < cd_tensor_numel(t); k++) finite &= isfinite(x[k]) != 0;
    free(x);
  }
  cd_tensor_file_close(f);
  CHECKF(step >= 1 && step < 6 && strstr(e, "step"), "checkpoint step %d, error %s", step, e);
  CHECK(finite);
}

TEST(bad_input_api) {
  NEED_FIXTURE();
  char out[600];
  snprintf(out, sizeof out, "%s/run_bad", tmp);
  struct { const char *what, *want; } cases[] = {
      {"empty", "empty"}, {"prompt", "--prompt must contain <new1>"}, {"init", "qqxqzzq"}, {"res", "--resolution"},
      {"missing", "nonexistent_dir"}, {"token", "<new9>"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cd_run_opts o;
    base_opts(&o, out);
    char missing[600];
    snprintf(missing, sizeof missing, "%s/nonexistent_dir", tmp);
    if (!strcmp(cases[i].what, "empty")) o.images = empty;
    if (!strcmp(cases[i].what, "prompt")) o.prompt = "photo of a cat";
    if (!strcmp(cases[i].what, "init")) o.initializers = "qqxqzzq";
    if (!strcmp(cases[i].what, "res")) o.res = 100;
    if (!strcmp(cases[i].what, "missing")) o.images = missing;
    if (!strcmp(cases[i].what, "token")) o.modifier_tokens = "<new1>,<new9>"; /* <new9> is in no prompt */
    CHECKF(cd_train_run(&o) != 0, "case %s succeeded", cases[i].what);
    CHECKF(strstr(cd_last_error(), cases[i].want), "case %s: error '%s' does not mention '%s'", cases[i].what, cd_last_error(), cases[i].want);
  }
}

/* runs cdiff train (test_cdiff_bin) with extra flags; returns the exit status, output in buf */
static int run_cli(const char *bin, const char *extra, char *buf, size_t cap) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "CDIFF_QUIET=1 '%s' train --model '%s' --images '%s' --prompt 'photo of a <new1> cat' --class-prompt cat "
           "--class-images '%s' --num-class-images 2 --class-steps 3 --resolution 64 --steps 1 --out '%s/cli' %s 2>&1",
           bin, model, images, classes, tmp, extra);
  return test_run_cmd(cmd, buf, cap);
}

TEST(bad_input_cli) {
  NEED_FIXTURE();
  const char *bin = test_cdiff_bin();
  if (access(bin, X_OK)) FAILF("%s not built", bin);
  char extra[1200], out[8192];
  struct { const char *flags, *want; } cases[] = {
      {"--images '%s'", "empty"},
      {"--prompt 'photo of a cat'", "--prompt must contain <new1>"},
      {"--initializer-token qqxqzzq", "qqxqzzq"},
      {"--resolution 100", "--resolution"},
      {"--bogus-flag 1", "--bogus-flag"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(extra, sizeof extra, cases[i].flags, empty);
    int st = run_cli(bin, extra, out, sizeof out);
    CHECKF(st != 0, "cdiff train %s exited 0", extra);
    CHECKF(strstr(out, cases[i].want), "cdiff train %s: output '%s' does not mention '%s'", extra, out, cases[i].want);
  }
  /* and a good run through the binary */
  snprintf(extra, sizeof extra, "--no-prior");
  int st = run_cli(bin, extra, out, sizeof out);
  CHECKF(st == 0, "cdiff train --no-prior failed: %s", out);
}

int main(void) {
  test_pin_threads(); /* bit-for-bit comparisons of two runs (test.h) */
  RUN(class_images_generate_and_resume);
  RUN(multi_concept_every_token_trains);
  RUN(resume_is_bit_exact);
  RUN(delta_changes_samples_and_deltas_combine);
  RUN(training_descends);
  RUN(nan_loss_stops_and_keeps_checkpoint);
  RUN(bad_input_api);
  RUN(bad_input_cli);
  if (have_fixture > 0 && !getenv("CDIFF_KEEP_TMP")) test_rmtree(tmp);
  return test_summary();
}
