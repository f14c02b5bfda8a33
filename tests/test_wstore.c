/* test_wstore.c - the weight store (engine/wstore.h) through a test backend
 * that wraps the CPU one and keeps its own "device" copies: it counts uploads
 * and bytes, so the test sees that a store is uploaded once as one block,
 * that graphs of different shapes share it, and that only the weights whose
 * version changed are uploaded again. */
#include "custom/delta.h"
#include "custom/train.h"
#include "diffusion/pipeline.h"
#include "engine/backend.h"
#include "engine/wstore.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "test.h"

static cd_backend counting;
static long uploads, upload_bytes;
/* every upload's destination, to tell weight uploads from graph inputs */
static struct up { const char *dst; size_t n; } *uplog;
static long nlog, caplog;

static void count_upload(const cd_kernel_ctx *ctx, void *dst, const void *host, size_t bytes) {
  uploads++;
  upload_bytes += (long)bytes;
  if (nlog == caplog) {
    caplog = caplog ? 2 * caplog : 4096;
    uplog = cd_realloc(uplog, (size_t)caplog * sizeof *uplog);
  }
  uplog[nlog++] = (struct up){dst, bytes};
  cd_backend_cpu()->upload(ctx, dst, host, bytes);
}

static const cd_backend *test_backend(void) {
  counting = *cd_backend_cpu();
  counting.name = "counting-cpu";
  counting.host_memory = 0; /* its own "device" copies */
  counting.upload = count_upload;
  return &counting;
}

/* y = linear(linear(x, w0, b0), w1) for x [rows, 8] */
static cd_node *mlp(cd_graph *g, cd_wstore *s, int rows, cd_node **x) {
  *x = cd_input(g, "x", 2, (int64_t[]){rows, 8});
  cd_node *h = cd_linear(g, *x, cd_wstore_param(g, s, 0), cd_wstore_param(g, s, 1));
  cd_node *y = cd_linear(g, h, cd_wstore_param(g, s, 2), NULL);
  cd_graph_output(g, y);
  return y;
}

/* the same network in double on the host values, row r */
static void ref_row(const float *w0, const float *b0, const uint16_t *w1, const float *x, double *y) {
  double h[6];
  for (int i = 0; i < 6; i++) {
    h[i] = b0[i];
    for (int k = 0; k < 8; k++) h[i] += (double)w0[i * 8 + k] * x[k];
  }
  for (int o = 0; o < 4; o++) {
    y[o] = 0;
    for (int i = 0; i < 6; i++) y[o] += (double)cd_f16_to_f32(w1[o * 6 + i]) * h[i];
  }
}

static int matches(const cd_graph *g, const cd_node *y, int rows, const float *w0, const float *b0, const uint16_t *w1, const float *x) {
  float out[5 * 4];
  if (cd_graph_get(g, y, out)) return 0;
  for (int r = 0; r < rows; r++) {
    double ref[4];
    ref_row(w0, b0, w1, x + r * 8, ref);
    for (int o = 0; o < 4; o++)
      if (fabs(out[r * 4 + o] - ref[o]) > 1e-5 * (1 + fabs(ref[o]))) return 0;
  }
  return 1;
}

TEST(uploads_only_changed_weights) {
  const cd_backend *be = test_backend();
  /* the host values in one block at the store's layout (64-byte aligned, in
   * order), as the model loader keeps a component: the commit is one copy */
  static _Alignas(64) unsigned char host[320];
  float *w0 = (float *)host, *b0 = (float *)(host + 192), x[5 * 8];
  uint16_t *w1 = (uint16_t *)(host + 256); /* a 16-bit weight: the store keeps each weight's own type */
  test_fill_uniform(w0, 48, -1, 1, 1);
  test_fill_uniform(b0, 6, -1, 1, 2);
  test_fill_uniform(x, 40, -1, 1, 3);
  for (int i = 0; i < 24; i++) w1[i] = cd_f32_to_f16(0.1f * (float)(i % 7) - 0.3f);
  cd_wstore *s = cd_wstore_new(be);
  CHECK(cd_wstore_add(s, "l0.weight", CD_TYPE_F32, 2, (int64_t[]){6, 8}, w0) == 0);
  CHECK(cd_wstore_add(s, "l0.bias", CD_TYPE_F32, 1, (int64_t[]){6}, b0) == 1);
  CHECK(cd_wstore_add(s, "l1.weight", CD_TYPE_F16, 2, (int64_t[]){4, 6}, w1) == 2);
  CHECK(cd_wstore_add(s, "l0.bias", CD_TYPE_F32, 1, (int64_t[]){6}, b0) == -1);
  uploads = upload_bytes = 0;
  CHECK_OK(cd_wstore_commit(s));
  CHECKF(uploads == 1 && upload_bytes == 256 + 48 && cd_wstore_bytes(s) == 320, "commit: %ld uploads, %ld bytes, block %zu",
         uploads, upload_bytes, cd_wstore_bytes(s));

  /* two graphs of different shapes share the backend copies */
  cd_graph *g1 = cd_graph_new_on(be), *g2 = cd_graph_new_on(be);
  cd_node *x1, *x2, *y1 = mlp(g1, s, 2, &x1), *y2 = mlp(g2, s, 5, &x2);
  CHECK_OK(cd_graph_plan(g1, NULL));
  CHECK_OK(cd_graph_plan(g2, NULL));
  uploads = upload_bytes = 0;
  CHECK_OK(cd_graph_set_input(g1, x1, x));
  CHECK_OK(cd_graph_set_input(g2, x2, x));
  long inputs = uploads;
  CHECK_OK(cd_graph_forward(g1));
  CHECK_OK(cd_graph_forward(g2));
  CHECKF(uploads == inputs, "runs without changes uploaded %ld weights", uploads - inputs);
  CHECK(matches(g1, y1, 2, w0, b0, w1, x) && matches(g2, y2, 5, w0, b0, w1, x));

  /* a delta changes one weight's host values: only it goes up, once for both graphs */
  for (int i = 0; i < 6; i++) b0[i] += 0.5f;
  uint64_t v = cd_wstore_version(s, 1);
  cd_wstore_touch(s, 1, NULL);
  CHECK(cd_wstore_version(s, 1) == v + 1 && cd_wstore_version(s, 0) == 1);
  uploads = upload_bytes = 0;
  CHECK_OK(cd_graph_forward(g1));
  CHECK_OK(cd_graph_forward(g2));
  CHECKF(uploads == 1 && upload_bytes == 6 * (long)sizeof(float), "after touching l0.bias: %ld uploads, %ld bytes", uploads, upload_bytes);
  CHECK(matches(g1, y1, 2, w0, b0, w1, x) && matches(g2, y2, 5, w0, b0, w1, x));

  /* the backend changed a weight itself (an optimizer step): nothing to upload,
   * and the host gets the new values by download */
  float w0b[48];
  cd_wstore_touch_backend(s, 0);
  uploads = 0;
  CHECK_OK(cd_graph_forward(g1));
  CHECK(uploads == 0);
  CHECK_OK(cd_wstore_download(s, 0, w0b));
  CHECK(!memcmp(w0b, w0, 48 * sizeof(float)));

  /* a weight replaced by new host memory (a merge writing a fresh array) */
  static _Alignas(64) uint16_t w1b[24];
  for (int i = 0; i < 24; i++) w1b[i] = cd_f32_to_f16(-0.05f * (float)(i % 5));
  cd_wstore_touch(s, 2, w1b);
  uploads = upload_bytes = 0;
  CHECK_OK(cd_graph_forward(g2));
  CHECKF(uploads == 1 && upload_bytes == 24 * 2, "after replacing l1.weight: %ld uploads, %ld bytes", uploads, upload_bytes);
  CHECK(matches(g2, y2, 5, w0, b0, w1b, x));
  uploads = 0;
  CHECK_OK(cd_graph_forward(g1)); /* g1 reads the same copy: nothing more to upload */
  CHECK(uploads == 0 && matches(g1, y1, 2, w0, b0, w1b, x));

  cd_graph_free(g1);
  cd_graph_free(g2);
  /* a graph on another backend cannot take the store's weights */
  cd_graph *g3 = cd_graph_new();
  cd_node *xx;
  mlp(g3, s, 1, &xx);
  CHECK(cd_graph_plan(g3, NULL) == -1 && strstr(cd_last_error(), "another backend"));
  cd_graph_free(g3);
  cd_wstore_free(s);
}

/* the host-memory store (the CPU): no copy at all, the node reads the host array */
TEST(cpu_store_is_the_host_values) {
  float w[6] = {1, 2, 3, 4, 5, 6}, x[3] = {1, 0, -1}, y[2];
  cd_wstore *s = cd_wstore_new(cd_backend_cpu());
  CHECK(cd_wstore_add(s, "w", CD_TYPE_F32, 2, (int64_t[]){2, 3}, w) == 0);
  CHECK_OK(cd_wstore_commit(s));
  CHECK(cd_wstore_bytes(s) == 0 && cd_wstore_ptr(s, 0) == (void *)w);
  cd_graph *g = cd_graph_new();
  cd_node *xi = cd_input(g, "x", 2, (int64_t[]){1, 3}), *yy = cd_linear(g, xi, cd_wstore_param(g, s, 0), NULL);
  cd_graph_output(g, yy);
  CHECK_OK(cd_graph_plan(g, NULL));
  CHECK_OK(cd_graph_set_input(g, xi, x));
  CHECK_OK(cd_graph_forward(g));
  CHECK_OK(cd_graph_get(g, yy, y));
  CHECK(y[0] == -2 && y[1] == -2);
  w[0] = 5; /* in place: the same memory */
  CHECK_OK(cd_graph_forward(g));
  CHECK_OK(cd_graph_get(g, yy, y));
  CHECK(y[0] == 2);
  cd_graph_free(g);
  cd_wstore_free(s);
}

/* a weight that changes shape (a token table grown) moves to an allocation of
 * its own; a graph built for the old shape refuses to run, a new one reads it */
TEST(grown_weight_moves) {
  const cd_backend *be = test_backend();
  static _Alignas(64) float tab[4 * 2] = {1, 2, 3, 4, 5, 6, 7, 8}, big[5 * 2] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  cd_wstore *s = cd_wstore_new(be);
  CHECK(cd_wstore_add(s, "emb", CD_TYPE_F32, 2, (int64_t[]){4, 2}, tab) == 0);
  CHECK_OK(cd_wstore_commit(s));
  cd_graph *g1 = cd_graph_new_on(be);
  cd_node *x1 = cd_input(g1, "x", 2, (int64_t[]){1, 2});
  cd_node *y1 = cd_linear(g1, x1, cd_wstore_param(g1, s, 0), NULL);
  cd_graph_output(g1, y1);
  CHECK_OK(cd_graph_plan(g1, NULL));
  CHECK_OK(cd_wstore_set(s, 0, CD_TYPE_F32, 2, (int64_t[]){5, 2}, big));
  uploads = 0;
  CHECK(cd_graph_forward(g1) == -1 && strstr(cd_last_error(), "changed type or shape"));
  cd_graph *g2 = cd_graph_new_on(be);
  cd_node *x2 = cd_input(g2, "x", 2, (int64_t[]){1, 2});
  cd_node *y2 = cd_linear(g2, x2, cd_wstore_param(g2, s, 0), NULL);
  cd_graph_output(g2, y2);
  CHECK_OK(cd_graph_plan(g2, NULL));
  CHECK(uploads == 1 && cd_wstore_bytes(s) > 64); /* once, for both graphs */
  float x[2] = {0, 1}, y[5];
  CHECK_OK(cd_graph_set_input(g2, x2, x));
  CHECK_OK(cd_graph_forward(g2));
  CHECK_OK(cd_graph_get(g2, y2, y));
  CHECK(y[0] == 2 && y[4] == 10);
  cd_graph_free(g1);
  cd_graph_free(g2);
  cd_wstore_free(s);
}

/* cd_param's array lives in the graph's own store: uploaded at plan time, and
 * again only after cd_graph_touch_param */
TEST(graph_own_params_upload_on_touch) {
  const cd_backend *be = test_backend();
  float w[4] = {1, 2, 3, 4}, x[2] = {1, 1}, y[2];
  cd_graph *g = cd_graph_new_on(be);
  cd_node *xi = cd_input(g, "x", 2, (int64_t[]){1, 2});
  cd_node *wp = cd_param(g, "w", w, 2, (int64_t[]){2, 2});
  cd_node *yy = cd_linear(g, xi, wp, NULL);
  cd_graph_output(g, yy);
  uploads = 0;
  CHECK_OK(cd_graph_plan(g, NULL));
  CHECK(uploads == 1);
  CHECK_OK(cd_graph_set_input(g, xi, x));
  uploads = 0;
  CHECK_OK(cd_graph_forward(g));
  CHECK_OK(cd_graph_get(g, yy, y));
  CHECK(uploads == 0 && y[0] == 3 && y[1] == 7);
  w[0] = 11; /* the backend has its own copy: not seen until touched */
  CHECK_OK(cd_graph_forward(g));
  CHECK_OK(cd_graph_get(g, yy, y));
  CHECK(y[0] == 3);
  CHECK_OK(cd_graph_touch_param(g, wp));
  CHECK(cd_graph_touch_param(g, xi) == -1);
  CHECK_OK(cd_graph_forward(g));
  CHECK_OK(cd_graph_get(g, yy, y));
  CHECK(uploads == 1 && y[0] == 13);
  cd_graph_free(g);
}

/* ---- a whole model on the counting backend ---- */

/* uploads since the last reset that covered weight i of w's store on the test backend */
static int weight_uploads(cd_weights *w, int i) {
  cd_wstore *s = cd_weights_store(w, &counting);
  const char *p = cd_wstore_ptr(s, i);
  const size_t b = cd_weight_bytes(cd_weights_at(w, i));
  int n = 0;
  for (long k = 0; k < nlog; k++) n += uplog[k].dst <= p && p + b <= uplog[k].dst + uplog[k].n;
  return n;
}

/* every weight of w uploaded `want` times since the reset, except those
 * `except` picks, uploaded `want_except` times; 0 or the first
 * that was not (in test_msg) */
static char umsg[512];
static int is_kv(const char *nm) { return strstr(nm, ".attn2.to_k.") || strstr(nm, ".attn2.to_v."); }
static int uploads_are(cd_weights *w, const char *what, int want, int (*except)(const char *), int want_except) {
  for (int i = 0; i < cd_weights_count(w); i++) {
    const char *nm = cd_weights_at(w, i)->name;
    int e = except && except(nm), n = weight_uploads(w, i);
    if (n != (e ? want_except : want)) {
      snprintf(umsg, sizeof umsg, "%s weight %s uploaded %d times, expected %d", what, nm, n, e ? want_except : want);
      return -1;
    }
  }
  return 0;
}

static int load_as(cd_sd_model **m, const char *name, const char *dtype) {
  char mp[1024];
  int g = test_golden_need(mp, sizeof mp, name);
  if (g) return g;
  cd_load_opts lo = {.weights_dtype = dtype};
  if (cd_sd_load(mp, &lo, m)) {
    snprintf(test_msg, sizeof test_msg, "%s: %s", name, cd_last_error());
    return -1;
  }
  return 0;
}
static int load_tiny(cd_sd_model **m) { return load_as(m, "tiny-sd1", NULL); }

/* the loader keeps each component in one host block at the store's layout,
 * in every storage type and both layouts: a device store is one copy */
TEST(loaded_component_is_one_upload) {
  const char *names[2] = {"tiny-sd1", "tiny-sd1_original.safetensors"}, *dt[3] = {NULL, "f16", "bf16"};
  for (int f = 0; f < 2; f++)
    for (int k = 0; k < 3; k++) {
      cd_sd_model *m = NULL;
      GOLDEN_STATUS(load_as(&m, names[f], dt[k]));
      cd_weights *ws[3] = {m->clip.w, m->unet.w, m->vae.w};
      for (int c = 0; c < 3; c++) {
        nlog = 0;
        cd_wstore *s = cd_weights_store(ws[c], test_backend());
        CHECKF(s && nlog == 1 && uplog[0].n == cd_weights_block_bytes(ws[c]) && uplog[0].n >= cd_weights_bytes(ws[c]) &&
                   uplog[0].n < cd_weights_bytes(ws[c]) + 64 * (size_t)cd_weights_count(ws[c]),
               "%s %s component %d: %ld uploads, first %zu bytes, weights %zu bytes", names[f], dt[k] ? dt[k] : "own", c, nlog,
               nlog ? uplog[0].n : 0, cd_weights_bytes(ws[c]));
      }
      cd_sd_free(m);
    }
}

static int sample(cd_sd_model *m, float *lat) {
  cd_gen_opts o = {.prompt = "a red square", .negative = "", .cfg = 3.0f, .width = 64, .height = 64, .n = 1, .quiet = 1};
  o.s.kind = CD_SAMPLER_EULER;
  o.s.steps = 2;
  o.s.seed = 7;
  return cd_generate_latents(m, &o, lat);
}

/* (a) sampling twice uploads each weight once; (d) prompt encodings of two
 * batch sizes and decode tiles of two shapes read one copy; (b) a delta
 * re-uploads exactly the K/V weights it changes, and the samples equal the
 * CPU's, which reads the host arrays */
TEST(model_weights_upload_once) {
  cd_sd_model *m = NULL;
  GOLDEN_STATUS(load_tiny(&m));
  cd_backend_set_default(test_backend());
  nlog = 0;
  float lat[2][4 * 8 * 8], ref[4 * 8 * 8];
  CHECK_OK(sample(m, lat[0]));
  CHECK_OK(sample(m, lat[1]));
  CHECK(!memcmp(lat[0], lat[1], sizeof lat[0]));
  CHECKF(uploads_are(m->clip.w, "text encoder", 1, NULL, 0) == 0, "%s", umsg);
  CHECKF(uploads_are(m->unet.w, "UNet", 1, NULL, 0) == 0, "%s", umsg);

  const char *pr[2] = {"a", "a blue circle"};
  float *enc = cd_malloc(2 * 77 * (size_t)m->clip.cfg.width * sizeof(float));
  CHECK_OK(cd_encode_prompts(m, pr, 1, enc));
  CHECK_OK(cd_encode_prompts(m, pr, 2, enc));
  free(enc);
  float *img = cd_malloc(3 * 64 * 64 * sizeof(float));
  CHECK_OK(cd_decode_latents(m, lat[0], 1, 8, 8, 0, img));
  CHECK_OK(cd_decode_latents(m, lat[0], 1, 8, 8, 4, img)); /* tiles of 4x4 latents */
  CHECKF(uploads_are(m->clip.w, "text encoder", 1, NULL, 0) == 0, "%s", umsg);
  CHECKF(uploads_are(m->vae.w, "VAE", 1, NULL, 0) == 0, "%s", umsg);
  /* two decode graphs of different shapes: their parameter nodes are one copy */
  cd_graph *g1 = cd_graph_new(), *g2 = cd_graph_new();
  cd_vae_decode_build(g1, &m->vae, cd_input(g1, "z", 4, (int64_t[]){1, 4, 8, 8}));
  cd_vae_decode_build(g2, &m->vae, cd_input(g2, "z", 4, (int64_t[]){1, 4, 4, 6}));
  CHECK_OK(cd_graph_plan(g1, NULL));
  CHECK_OK(cd_graph_plan(g2, NULL));
  cd_node *c1 = cd_graph_find(g1, "decoder.conv_in.weight"), *c2 = cd_graph_find(g2, "decoder.conv_in.weight");
  CHECK(c1 && c2 && c1->data == c2->data && c1->data == cd_wstore_ptr(cd_weights_store(m->vae.w, &counting), cd_weights_get(m->vae.w, "decoder.conv_in.weight")->index));
  cd_graph_free(g1);
  cd_graph_free(g2);

  /* (b) a delta of every attn2 K/V weight, moved off the base values */
  cd_delta *d = cd_delta_new();
  int nkv = 0;
  for (int i = 0; i < cd_weights_count(m->unet.w); i++) {
    cd_weight *x = cd_weights_at(m->unet.w, i);
    if (!is_kv(x->name)) continue;
    int64_t n = cd_numel(x->ndim, x->ne);
    float *v = cd_malloc((size_t)n * sizeof(float));
    memcpy(v, cd_weight_f32(x), (size_t)n * sizeof(float));
    for (int64_t k = 0; k < n; k++) v[k] += 0.05f * (float)(k % 5 - 2);
    CHECK_OK(cd_weights_put(d->w, x->name, x->ndim, x->ne, v));
    nkv++;
  }
  CHECK(nkv >= 2);
  CHECK_OK(cd_delta_apply(m, d));
  cd_delta_free(d);
  nlog = 0;
  CHECK_OK(sample(m, lat[0]));
  CHECKF(uploads_are(m->unet.w, "UNet", 0, is_kv, 1) == 0, "%s", umsg);
  CHECKF(uploads_are(m->clip.w, "text encoder", 0, NULL, 0) == 0, "%s", umsg);
  CHECK(memcmp(lat[0], lat[1], sizeof lat[0])); /* the delta changed the sample */
  cd_backend_set_default(NULL);
  CHECK_OK(sample(m, ref));
  CHECK(!memcmp(lat[0], ref, sizeof ref)); /* the backend copy holds what the host holds */
  free(img);
  cd_sd_free(m);
}

/* (c) training: the K/V master weights are the store's copy, so a step
 * after the first uploads no weight; the host reads them back on demand and
 * they equal a CPU run's bit for bit */
static int train2(cd_sd_model *m, float *kv, int64_t *nkv, long *later_uploads) {
  cd_train_opts o;
  cd_train_opts_default(&o);
  o.prior = 0;
  o.res = 64;
  o.lr = 1e-3f;
  o.ntok = 1; /* its row is a part of the token table's store entry, trained in place */
  cd_trainer t = {0};
  if (cd_sd_add_tokens(m, 1, (const char *[]){"<new1>"}, (int[]){42170}, NULL, o.tok_id) || cd_trainer_init(&t, m, &o)) return -1;
  float *px = cd_malloc(3 * 64 * 64 * sizeof(float)), mask[64], noise[4 * 64];
  int ids[77], ts[1] = {500};
  test_fill_uniform(px, 3 * 64 * 64, -1, 1, 11);
  test_fill_uniform(noise, 4 * 64, -1, 1, 12);
  for (int i = 0; i < 64; i++) mask[i] = 1;
  int rc = cd_prompt_ids(m, "a <new1> square", ids);
  cd_batch b = {.pixels = px, .mask = mask, .ids = ids, .noise = noise, .timesteps = ts};
  cd_step_report r;
  for (int s = 0; s < 2 && !rc; s++) {
    if (s == 1) nlog = 0;
    rc = cd_trainer_step(&t, &b, &r);
  }
  *later_uploads = 0;
  cd_weights *ws[3] = {m->clip.w, m->unet.w, m->vae.w};
  for (int c = 0; c < 3; c++)
    for (int i = 0; cd_backend_default() == &counting && i < cd_weights_count(ws[c]); i++) *later_uploads += weight_uploads(ws[c], i);
  *nkv = 0;
  if (!rc) { /* the trained row, read on the host: downloaded from the store's copy */
    cd_weight *e = cd_weights_get(m->clip.w, CD_TOKEN_TABLE);
    cd_weight_row_f32(e, e->ne[0] - 1, kv);
    *nkv = e->ne[1];
  }
  for (int i = 0; i < cd_weights_count(m->unet.w) && !rc; i++) { /* after the trainer: host reads pull */
    cd_weight *x = cd_weights_at(m->unet.w, i);
    if (!strstr(x->name, ".attn2.to_k.")) continue;
    int64_t n = cd_numel(x->ndim, x->ne);
    memcpy(kv + *nkv, cd_weight_f32(x), (size_t)n * sizeof(float));
    *nkv += n;
  }
  cd_trainer_free(&t);
  free(px);
  return rc;
}

TEST(training_uploads_nothing_after_the_first_step) {
  cd_sd_model *m = NULL, *m2 = NULL;
  GOLDEN_STATUS(load_tiny(&m));
  int64_t total = cd_weights_numel(m->unet.w) + 4096, n1 = 0, n2 = 0;
  float *kv = cd_malloc((size_t)total * sizeof(float)), *kv2 = cd_malloc((size_t)total * sizeof(float));
  long later = -1, later2;
  cd_backend_set_default(test_backend());
  CHECK_OK(train2(m, kv, &n1, &later));
  CHECKF(later == 0, "training step 2 uploaded %ld weights", later);
  cd_backend_set_default(NULL);
  CHECK(load_tiny(&m2) == 0);
  CHECK_OK(train2(m2, kv2, &n2, &later2));
  CHECK(n1 == n2 && n1 > 0 && !memcmp(kv, kv2, (size_t)n1 * sizeof(float)));
  /* training moved them: compare with the base model's */
  cd_sd_model *m3 = NULL;
  CHECK(load_tiny(&m3) == 0);
  cd_weight *e3 = cd_weights_get(m3->clip.w, CD_TOKEN_TABLE);
  float init[1024];
  CHECK(e3->ne[1] <= 1024);
  cd_weight_row_f32(e3, 42170, init);
  int64_t off = e3->ne[1], moved = 0, rmoved = 0;
  for (int64_t k = 0; k < off; k++) rmoved += init[k] != kv[k];
  CHECKF(rmoved > off / 2, "%ld of %ld values of the new token's row moved", (long)rmoved, (long)off);
  for (int i = 0; i < cd_weights_count(m3->unet.w); i++) {
    cd_weight *x = cd_weights_at(m3->unet.w, i);
    if (!strstr(x->name, ".attn2.to_k.")) continue;
    const float *v = cd_weight_f32(x);
    for (int64_t k = 0; k < cd_numel(x->ndim, x->ne); k++) moved += v[k] != kv[off + k];
    off += cd_numel(x->ndim, x->ne);
  }
  CHECKF(off == n1 && moved > n1 / 2, "%ld of %ld K values moved", (long)moved, (long)n1);
  cd_sd_free(m3);
  free(kv);
  free(kv2);
  cd_sd_free(m);
  cd_sd_free(m2);
}

int main(void) {
  test_pin_threads(); /* bit-for-bit comparisons of two runs (test.h) */
  RUN(uploads_only_changed_weights);
  RUN(cpu_store_is_the_host_values);
  RUN(grown_weight_moves);
  RUN(graph_own_params_upload_on_touch);
  RUN(loaded_component_is_one_upload);
  RUN(model_weights_upload_once);
  RUN(training_uploads_nothing_after_the_first_step);
  free(uplog);
  return test_summary();
}
