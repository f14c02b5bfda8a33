/* test_train_flags.c - the diffusers training flags that are features here:
 * learning-rate schedules (against hand-computed values of diffusers'
 * formulas), gradient accumulation (K micro-batches = one batch K times as
 * large), --real_prior's images.txt/caption.txt lists, --class-prompts
 * (class image i from line i, captioned), and the run-level wiring (the
 * scheduled lr in the log, the AdamW flags in the args). */
#include <unistd.h>

#include <cjson/cJSON.h>

#include "custom/class_images.h"
#include "custom/dataset.h"
#include "custom/lr_schedule.h"
#include "custom/train.h"
#include "custom/trainer_run.h"
#include "engine/optim.h"
#include "io/fsutil.h"
#include "io/image.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "test.h"

/* ---- learning-rate schedules ---- */

TEST(lr_schedule_formulas) {
  /* T = 10 steps, W = 2 warmup steps; values worked out by hand from
   * diffusers.optimization (LambdaLR factor of optimizer step s, 0-based) */
  struct { cd_lr_kind k; int s; double want; } c[] = {
      {CD_LR_CONSTANT, 0, 1}, {CD_LR_CONSTANT, 1, 1}, {CD_LR_CONSTANT, 9, 1}, /* warmup ignored, as diffusers */
      {CD_LR_CONSTANT_WARMUP, 0, 0}, {CD_LR_CONSTANT_WARMUP, 1, 0.5}, {CD_LR_CONSTANT_WARMUP, 2, 1}, {CD_LR_CONSTANT_WARMUP, 9, 1},
      {CD_LR_LINEAR, 0, 0}, {CD_LR_LINEAR, 1, 0.5}, {CD_LR_LINEAR, 2, 1}, {CD_LR_LINEAR, 6, 0.5}, {CD_LR_LINEAR, 9, 0.125},
      {CD_LR_LINEAR, 10, 0}, {CD_LR_LINEAR, 12, 0},
      {CD_LR_COSINE, 0, 0}, {CD_LR_COSINE, 1, 0.5}, {CD_LR_COSINE, 2, 1}, {CD_LR_COSINE, 4, 0.5 + 0.25 * 1.4142135623730951},
      {CD_LR_COSINE, 6, 0.5}, {CD_LR_COSINE, 8, 0.5 - 0.25 * 1.4142135623730951}, {CD_LR_COSINE, 10, 0}};
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    double f = cd_lr_factor(c[i].k, 2, 10, c[i].s);
    CHECKF(fabs(f - c[i].want) <= 1e-15, "%s step %d: %.17g, expected %.17g", cd_lr_name(c[i].k), c[i].s, f, c[i].want);
  }
  /* no warmup: linear starts at 1 and falls by 1/T; cosine starts at 1 */
  CHECK(cd_lr_factor(CD_LR_LINEAR, 0, 4, 0) == 1 && cd_lr_factor(CD_LR_LINEAR, 0, 4, 1) == 0.75 && cd_lr_factor(CD_LR_LINEAR, 0, 4, 3) == 0.25);
  CHECK(cd_lr_factor(CD_LR_COSINE, 0, 4, 0) == 1 && fabs(cd_lr_factor(CD_LR_COSINE, 0, 4, 2) - 0.5) < 1e-15);
  /* warmup >= T: max(1, T - W) keeps it finite */
  CHECK(cd_lr_factor(CD_LR_LINEAR, 5, 5, 5) == 0 && cd_lr_factor(CD_LR_COSINE, 5, 5, 4) == 0.8);
  cd_lr_kind k;
  CHECK(cd_lr_parse("cosine", &k) == 0 && k == CD_LR_COSINE);
  CHECK(cd_lr_parse("constant_with_warmup", &k) == 0 && k == CD_LR_CONSTANT_WARMUP);
  CHECK(cd_lr_parse("polynomial", &k) == -1 && strstr(cd_last_error(), "--lr_scheduler"));
}

/* ---- gradient accumulation ---- */

static void fill_example(int b, int inst, float *pix, float *mask, int *ids, float *noise, cd_rng *r) {
  for (int i = 0; i < 3 * 64 * 64; i++) pix[i] = (float)(cd_rng_uniform(r) * 2 - 1);
  for (int y = 0; y < 8; y++) /* instance masks differ per example (per-example normalisation matters) */
    for (int x = 0; x < 8; x++) mask[y * 8 + x] = !inst || (y > b && x > b && y < 7 && x < 7) ? 1.0f : 0.0f;
  static const int words[] = {320, 1125, 539, 2368, 1929, 530};
  ids[0] = 49406;
  int n = 1;
  for (int j = 0; j < 4 + b; j++) ids[n++] = j == 2 && inst ? 49408 : words[(j + b) % 6];
  ids[n++] = 49407;
  while (n < 77) ids[n++] = 49407;
  cd_rng_fill_normal(r, noise, 4 * 8 * 8);
}

/* Accumulating 2 micro-batches of 1 (with prior: 1 instance + 1 class
 * example each) equals one batch of 2, in the gradient that AdamW sees.
 *
 * Bound: both compute the same sum in float32, only grouped differently: the
 * batch's weight gradients reduce over both examples' positions inside one
 * kernel, the accumulation adds two per-example reductions and halves the
 * sum (exact: K = 2). The forward and input-gradient values of each example
 * are the same formulas too, so what differs is the rounding of reductions
 * of length at most n = 9 * 64 = 576 (a 3x3 convolution over 64 channels,
 * the longest in the tiny model; attention and linear layers are shorter),
 * each off by at most gamma_n = n u / (1 - n u) ~ 3.4e-5 relative (u =
 * 2^-24), through fewer than 30 such reductions in sequence on any path of
 * the tiny UNet and text encoder: 30 * 3.4e-5 ~ 1e-3. A missing 1/K or a
 * dropped micro-batch is an O(1) error. */
TEST(grad_accum_equals_big_batch) {
  char mp[1024];
  NEED_GOLDEN(mp, "tiny-sd1");
  cd_sd_model *m = NULL;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(mp, &lo, &m));
  /* batch layout [i1, i2, c1, c2]; micro-batch k: [i_k, c_k] */
  const int64_t px = 3 * 64 * 64, hw = 64, per = 4 * 64;
  float pix[4][3 * 64 * 64], mask[4][64], noise[4][4 * 64];
  int ids[4][77], ts[4] = {120, 870, 400, 655};
  cd_rng r;
  cd_rng_seed(&r, 2024);
  for (int e = 0; e < 4; e++) fill_example(e % 2, e < 2, pix[e], mask[e], ids[e], noise[e], &r);
  cd_train_opts o;
  cd_train_opts_default(&o);
  o.res = 64;
  o.sample_latents = 0;
  o.ntok = 1;
  CHECK_OK(cd_sd_add_tokens(m, 1, (const char *[]){"<new1>"}, (int[]){42170}, NULL, o.tok_id));
  o.prior_weight = 0.7f;
  /* one batch of 2 */
  o.batch = 2;
  cd_trainer t;
  int rc = cd_trainer_init(&t, m, &o);
  if (rc) { cd_sd_free(m); FAILF("init: %s", cd_last_error()); }
  float *bp = cd_malloc(4 * px * sizeof(float)), *bm = cd_malloc(4 * hw * sizeof(float)), *bn = cd_malloc(4 * per * sizeof(float));
  int bi[4 * 77], bt[4];
  for (int e = 0; e < 4; e++) {
    memcpy(bp + e * px, pix[e], px * sizeof(float));
    memcpy(bm + e * hw, mask[e], hw * sizeof(float));
    memcpy(bn + e * per, noise[e], per * sizeof(float));
    memcpy(bi + e * 77, ids[e], sizeof ids[e]);
    bt[e] = ts[e];
  }
  cd_batch b = {.pixels = bp, .mask = bm, .ids = bi, .noise = bn, .timesteps = bt};
  cd_step_report big = {0};
  rc = cd_trainer_grad(&t, &b, &big);
  int np = t.np;
  int64_t ntot = 0;
  for (int i = 0; i < np; i++) ntot += t.p[i].n;
  float *g_big = cd_malloc(ntot * sizeof(float));
  for (int i = 0, off = 0; i < np; off += (int)t.p[i].n, i++) cd_optim_read(t.opt, i, CD_OPTIM_GRAD, g_big + off);
  cd_trainer_free(&t);
  /* two micro-batches of 1 */
  o.batch = 1;
  double loss = 0;
  float *g_acc = cd_malloc(ntot * sizeof(float));
  if (!rc) rc = cd_trainer_init(&t, m, &o);
  for (int k = 0; k < 2 && !rc; k++) {
    int e[2] = {k, 2 + k};
    for (int j = 0; j < 2; j++) {
      memcpy(bp + j * px, pix[e[j]], px * sizeof(float));
      memcpy(bm + j * hw, mask[e[j]], hw * sizeof(float));
      memcpy(bn + j * per, noise[e[j]], per * sizeof(float));
      memcpy(bi + j * 77, ids[e[j]], sizeof ids[0]);
      bt[j] = ts[e[j]];
    }
    cd_step_report rep;
    rc = cd_trainer_grad(&t, &b, &rep) || cd_trainer_accumulate(&t, k, 2);
    loss += rep.loss / 2;
  }
  if (!rc) {
    CHECK(t.np == np);
    for (int i = 0, off = 0; i < np; off += (int)t.p[i].n, i++) cd_optim_read(t.opt, i, CD_OPTIM_GRAD, g_acc + off);
  }
  cd_trainer_free(&t);
  cd_sd_free(m);
  free(bp), free(bm), free(bn);
  double e = rc ? 1 : test_rel_err(g_acc, g_big, ntot);
  /* the same check must catch a wrong scale: the plain sum is off by 100% */
  double gn = 0;
  for (int64_t i = 0; i < ntot; i++) gn += (double)g_big[i] * g_big[i];
  free(g_acc);
  free(g_big);
  CHECKF(rc == 0, "%s", cd_last_error());
  CHECKF(gn > 0, "the gradient is zero: the test would not see anything");
  CHECKF(e <= 1e-3, "accumulated vs batch gradient: rel err %.3g", e);
  CHECKF(fabs(loss - big.loss) <= 1e-5 * fabs(big.loss), "mean micro-batch loss %.9g vs batch loss %.9g", loss, big.loss);
  printf("  grad accumulation: rel err %.3g, loss %.9g vs %.9g\n", e, loss, big.loss);
}

/* ---- a run with the flags ---- */

static int write_png(const char *dir, const char *name, int seed) {
  cd_image im = {.w = 64, .h = 64, .c = 3, .px = cd_malloc(64 * 64 * 3)};
  cd_rng r;
  cd_rng_seed(&r, (uint64_t)seed);
  for (int i = 0; i < 64 * 64 * 3; i++) im.px[i] = (uint8_t)(cd_rng_u64(&r) % 256);
  char *p = cd_path_join(dir, name);
  int rc = cd_image_save_png(p, &im, NULL, 0);
  free(p);
  cd_image_free(&im);
  return rc;
}

static int write_text(const char *dir, const char *name, const char *text) {
  char *p = cd_path_join(dir, name);
  FILE *f = fopen(p, "wb");
  free(p);
  if (!f) return -1;
  fputs(text, f);
  return fclose(f);
}

TEST(real_prior_lists) {
  const char *dir = test_tmpdir("real");
  char sub[600];
  snprintf(sub, sizeof sub, "%s/images", dir);
  CHECK_OK(cd_mkdir_p(sub));
  CHECK_OK(write_png(sub, "0.jpg", 1));
  CHECK_OK(write_png(sub, "1.jpg", 2));
  char abs1[700], lines[2000];
  snprintf(abs1, sizeof abs1, "%s/images/1.jpg", dir);
  snprintf(lines, sizeof lines, "images/0.jpg\r\n%s\n\n", abs1); /* relative to the folder, absolute; CRLF; trailing blank */
  CHECK(write_text(dir, "images.txt", lines) == 0);
  CHECK(write_text(dir, "caption.txt", "a cat on a sofa\n  a grey cat  \n") == 0);
  cd_item_list l;
  int rc = cd_list_file_images(dir, &l);
  CHECKF(rc == 0, "%s", cd_last_error());
  int ok = l.n == 2 && strstr(l.items[0].path, "images/0.jpg") && !strcmp(l.items[1].path, abs1) &&
           !strcmp(l.items[0].caption, "a cat on a sofa") && !strcmp(l.items[1].caption, "a grey cat");
  cd_item_list_free(&l);
  CHECK(ok);
  CHECK(write_text(dir, "caption.txt", "only one\n") == 0);
  CHECK(cd_list_file_images(dir, &l) == -1 && strstr(cd_last_error(), "2 images but") && strstr(cd_last_error(), "1 captions"));
  CHECK(write_text(dir, "caption.txt", "a\nb\n") == 0);
  CHECK(write_text(dir, "images.txt", "images/0.jpg\nimages/missing.jpg\n") == 0);
  CHECK(cd_list_file_images(dir, &l) == -1 && strstr(cd_last_error(), "line 2") && strstr(cd_last_error(), "missing.jpg"));
  unlink(abs1);
  CHECK(cd_list_file_images(test_tmpdir("nothing"), &l) == -1 && strstr(cd_last_error(), "images.txt"));
}

/* --class-prompts: generated class image i comes from line i (cycling,
 * blank and '#' lines skipped, trimmed) with that line beside it as its
 * caption, byte for byte the image a one-prompt generation makes with the
 * same seed; the list is recorded in the delta's args; bad lists are refused
 * naming the flag. On the shipped world model (part of the repository). */
TEST(class_prompts_list) {
  const char *model = "models/cdiff-world";
  if (!cd_file_exists("models/cdiff-world/model_index.json")) FAILF("%s is missing (it is part of the repository)", model);
  const char *inst = test_tmpdir("cp_inst"), *out = test_tmpdir("cp_out"), *list = test_tmpdir("cp_list.txt");
  CHECK_OK(cd_mkdir_p(inst));
  CHECK_OK(write_png(inst, "a.png", 7));
  static const char *const p1 = "a big toy in red on a blue background", *p2 = "a small yellow toy on a green striped background";
  FILE *f = fopen(list, "w");
  CHECK(f);
  fprintf(f, "# class prompts\n\n  %s \r\n\n%s\n", p1, p2);
  CHECK(!fclose(f));
  cd_run_opts o;
  cd_run_opts_default(&o);
  o.model = model;
  o.images = inst;
  o.prompt = "photo of a <new1> toy";
  o.class_prompts = list;
  o.num_class_images = 3;
  o.class_steps = 2;
  o.steps = 1;
  o.res = 64;
  o.seed = 5;
  o.out = out;
  o.quiet = 1;
  int rc = cd_train_run(&o);
  CHECKF(rc == 0, "%s", cd_last_error());
  const char *want[3] = {p1, p2, p1};
  for (int i = 0; i < 3; i++) {
    char cp[1024], *txt;
    size_t n;
    snprintf(cp, sizeof cp, "%s/class_images/0/class_%05d.txt", out, i);
    CHECK_OK(cd_read_file(cp, &txt, &n));
    int ok = n == strlen(want[i]) + 1 && !memcmp(txt, want[i], n - 1) && txt[n - 1] == '\n';
    free(txt);
    CHECKF(ok, "%s is not \"%s\\n\"", cp, want[i]);
  }
  /* image 1 is the second prompt's image of seed 5 + 1 */
  cd_load_opts lo = {0};
  cd_sd_model *m = NULL;
  CHECK_OK(cd_sd_load(model, &lo, &m));
  cd_class_gen_opts g;
  cd_class_gen_opts_default(&g);
  g.prompt = p2;
  g.dir = test_tmpdir("cp_one");
  g.n = 2;
  g.steps = 2;
  g.res = 64;
  g.seed = 5;
  g.quiet = 1;
  rc = cd_class_images_ensure(m, &g, NULL);
  cd_sd_free(m);
  CHECKF(rc == 0, "%s", cd_last_error());
  char a[1024], b[1024];
  snprintf(a, sizeof a, "%s/class_images/0/class_00001.png", out);
  snprintf(b, sizeof b, "%s/class_00001.png", g.dir);
  CHECK(test_same_file(a, b));
  char c0[1024];
  snprintf(c0, sizeof c0, "%s/class_00000.txt", g.dir);
  CHECK(!cd_file_exists(c0)); /* one class prompt: no caption files */
  /* the list is in the delta's args */
  char dp[1024], *txt;
  size_t n;
  snprintf(dp, sizeof dp, "%s/cdiff_delta.safetensors", out);
  CHECK_OK(cd_read_file(dp, &txt, &n));
  static const char key[] = "\\\"class_prompts\\\":[\\\"a big toy in red";
  int has = n > 8 && memmem(txt + 8, n - 8, key, strlen(key)) != NULL;
  free(txt);
  CHECK(has);
  /* refused: with --concepts, with --real_prior, an empty list, a missing file */
  cd_run_opts bad = o;
  bad.images = bad.prompt = NULL;
  bad.concepts = "c.json";
  CHECK(cd_run_opts_check(&bad) == -1 && strstr(cd_last_error(), "--class-prompts"));
  bad = o;
  bad.real_prior = 1;
  CHECK(cd_run_opts_check(&bad) == -1 && strstr(cd_last_error(), "--class-prompts"));
  bad = o;
  bad.class_prompts = NULL;
  CHECK(cd_run_opts_check(&bad) == -1 && strstr(cd_last_error(), "--class-prompt"));
  const char *empty = test_tmpdir("cp_empty.txt");
  f = fopen(empty, "w");
  CHECK(f);
  fputs("# nothing\n\n   \n", f);
  CHECK(!fclose(f));
  bad = o;
  bad.class_prompts = empty;
  bad.out = test_tmpdir("cp_out2");
  CHECK(cd_train_run(&bad) == -1 && strstr(cd_last_error(), "--class-prompts") && strstr(cd_last_error(), "no prompts"));
  bad.class_prompts = test_tmpdir("cp_missing.txt");
  CHECK(cd_train_run(&bad) == -1 && strstr(cd_last_error(), "--class-prompts"));
}

/* a 4-step run with a linear schedule and 2 warmup steps, accumulation,
 * real-prior class images and non-default AdamW settings: the log's lr
 * follows base * f(s), and the args record the flags */
TEST(run_with_diffusers_flags) {
  char mp[1024];
  NEED_GOLDEN(mp, "tiny-sd1");
  const char *inst = test_tmpdir("inst"), *cls = test_tmpdir("cls"), *out = test_tmpdir("out");
  CHECK_OK(cd_mkdir_p(inst));
  CHECK_OK(cd_mkdir_p(cls));
  CHECK_OK(write_png(inst, "a.png", 3));
  CHECK_OK(write_png(inst, "b.png", 4));
  CHECK_OK(write_png(cls, "c0.png", 5));
  CHECK_OK(write_png(cls, "c1.png", 6));
  CHECK(write_text(cls, "images.txt", "c0.png\nc1.png\n") == 0);
  CHECK(write_text(cls, "caption.txt", "a cat\na sleeping cat\n") == 0);
  cd_run_opts o;
  cd_run_opts_default(&o);
  o.model = mp;
  o.images = inst;
  o.prompt = "photo of a <new1> cat";
  o.class_images = cls;
  o.real_prior = 1;
  o.num_class_images = 2;
  o.steps = 4;
  o.lr = 1e-3f;
  o.scale_lr = 0;
  o.res = 64;
  o.grad_accum = 2;
  o.lr_scheduler = "linear";
  o.lr_warmup_steps = 2;
  o.adam_beta1 = 0.8f;
  o.adam_weight_decay = 0.05f;
  o.max_grad_norm = 0.5f;
  o.center_crop = 1;
  o.validate_every = 4;
  o.validation_prompt = "a <new1> cat";
  o.num_validation_images = 3;
  o.out = out;
  o.quiet = 1;
  int rc = cd_train_run(&o);
  CHECKF(rc == 0, "%s", cd_last_error());
  char *log;
  size_t n;
  char lp[700];
  snprintf(lp, sizeof lp, "%s/log.jsonl", out);
  CHECK_OK(cd_read_file(lp, &log, &n));
  const double want[4] = {0, 0.5e-3, 1e-3, 0.5e-3}; /* linear, W 2, T 4: 0, 1/2, (4-2)/2, (4-3)/2 */
  int line = 0, ok = 1;
  char why[300] = "";
  for (char *p = log; p && *p && ok; line++) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = 0;
    cJSON *j = cJSON_Parse(p);
    const cJSON *lr = cJSON_GetObjectItem(j, "lr");
    ok = line < 4 && cJSON_IsNumber(lr) && fabs(lr->valuedouble - want[line]) <= 1e-6 * want[line];
    if (!ok) snprintf(why, sizeof why, "line %d: %s", line + 1, p);
    cJSON_Delete(j);
    p = nl ? nl + 1 : NULL;
  }
  free(log);
  CHECKF(ok && line == 4, "%s (%d lines)", why, line);
  /* the args in the delta's metadata record the flags */
  char dp[700], *txt;
  snprintf(dp, sizeof dp, "%s/cdiff_delta.safetensors", out);
  CHECK_OK(cd_read_file(dp, &txt, &n));
  /* the header (JSON, after an 8-byte length) holds args as an escaped JSON string */
  static const char *const keys[] = {"\\\"gradient_accumulation_steps\\\":2,", "\\\"lr_scheduler\\\":\\\"linear\\\"",
                                     "\\\"adam_beta1\\\":0.8", "\\\"adam_weight_decay\\\":0.05", "\\\"max_grad_norm\\\":0.5",
                                     "\\\"real_prior\\\":true", "\\\"center_crop\\\":true", "\\\"lr_warmup_steps\\\":2,"};
  int has = n > 8;
  for (size_t i = 0; i < sizeof keys / sizeof keys[0] && has; i++) has = memmem(txt + 8, n - 8, keys[i], strlen(keys[i])) != NULL;
  const char *a = n > 8 ? memmem(txt + 8, n - 8, "gradient_accumulation", 21) : NULL;
  if (!has) snprintf(why, sizeof why, "%.250s", a ? a : "(no gradient_accumulation_steps in the delta's metadata)");
  free(txt);
  CHECKF(has, "args: %s", why);
  /* --num_validation_images 3: the grid is 3 images wide */
  char vp[700];
  snprintf(vp, sizeof vp, "%s/validation/step_000004.png", out);
  cd_image grid;
  CHECK_OK(cd_image_load(vp, &grid));
  int w = grid.w, h = grid.h;
  cd_image_free(&grid);
  CHECKF(w == 3 * 64 && h == 64, "validation grid %dx%d", w, h);
}

int main(void) {
  RUN(lr_schedule_formulas);
  RUN(grad_accum_equals_big_batch);
  RUN(real_prior_lists);
  RUN(class_prompts_list);
  RUN(run_with_diffusers_flags);
  test_tmp_cleanup();
  return test_summary();
}
