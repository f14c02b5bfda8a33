/* test_models.c - text encoder, UNet and VAE against the diffusers/transformers
 * goldens (../shared/golden), for every model in both checkpoint layouts, with
 * the weights held in f32 and again in f16 and bf16 (--weights-dtype).
 * Tolerance: relative L2 error 1e-4 on forward passes (golden README) in f32.
 *
 * With 16-bit weights, each weight of 2+ dims is rounded to nearest: a
 * relative error uniform in [-u, u], u = 2^-11 for f16 (11-bit significand)
 * and 2^-8 for bf16 (8 bits), so of rms u/sqrt(3). A layer y = W x then sees
 * a relative perturbation of about u/sqrt(3) in its output (independent
 * errors over the sum: sqrt(sum_j (e_j w_j x_j)^2) ~ u/sqrt(3) |W x|), and the
 * L such layers of a graph perturb the result independently, so the errors
 * add in quadrature: u sqrt(L/3). A factor 4 covers the gain from a layer's
 * output to the final one (normalisations over few values in the tiny
 * models, softmax), giving tol = 1e-4 + 4 u sqrt(L/3), with L counted in the
 * graph under test (the ops that read a 16-bit weight). */
#include "models/sd_model.h"
#include "test.h"

#define TOL 1e-4

static const char *wdtype; /* --weights-dtype of the pass: NULL (the checkpoint's own: f32 here), "f16", "bf16" */
static double tol = TOL;   /* of the graph under test (set_tol) */

/* tol for graph g under the current weight type (see the top of the file) */
static int set_tol(const cd_graph *g) {
  tol = TOL;
  if (!wdtype) return 0;
  const double u = !strcmp(wdtype, "f16") ? 0x1p-11 : 0x1p-8;
  int L = 0;
  for (int i = 0; i < cd_graph_nnodes(g); i++) {
    const cd_node *x = cd_graph_node(g, i);
    for (int s = 0; s < x->nsrc; s++)
      if (x->src[s] && (x->src[s]->type == CD_TYPE_F16 || x->src[s]->type == CD_TYPE_BF16)) L++;
  }
  tol = TOL + 4 * u * sqrt(L / 3.0);
  if (!L) snprintf(test_msg, sizeof test_msg, "--weights-dtype %s: the graph reads no 16-bit weight", wdtype);
  return L ? 0 : -1;
}

typedef struct {
  const char *model; /* path relative to the golden dir */
  const char *golden;
} model_case;

static const model_case cases[] = {
    {"tiny-sd1", "golden_tiny-sd1.safetensors"},
    {"tiny-sd1_original.safetensors", "golden_tiny-sd1.safetensors"},
    {"small4-sd1", "golden_small4-sd1.safetensors"},
    {"small4-sd1_original.safetensors", "golden_small4-sd1.safetensors"},
    {"tiny-sd2", "golden_tiny-sd2.safetensors"},
    {"tiny-sd2_original.safetensors", "golden_tiny-sd2.safetensors"},
};
#define NCASES ((int)(sizeof cases / sizeof cases[0]))

/* one loaded case: the model, its golden tensors and the graph under test */
typedef struct {
  const char *model;
  cd_sd_model *m;
  cd_tensor_file *gf;
  cd_graph *g;
} run_case;

/* 1 when the golden folder is absent (skip), -1 (test_msg set) on a missing file or a load error */
static int open_case(const model_case *c, run_case *r) {
  char mp[1024], gp[1024];
  int g = test_golden_need(mp, sizeof mp, c->model);
  if (!g) g = test_golden_need(gp, sizeof gp, c->golden);
  if (g) return g;
  cd_load_opts o = {.weights_dtype = wdtype};
  if (cd_sd_load(mp, &o, &r->m)) {
    snprintf(test_msg, sizeof test_msg, "load %s: %s", c->model, cd_last_error());
    return -1;
  }
  if (cd_safetensors_open(gp, &r->gf)) {
    snprintf(test_msg, sizeof test_msg, "%s", cd_last_error());
    return -1;
  }
  r->model = c->model;
  r->g = cd_graph_new();
  return 0;
}

static void close_case(run_case *r) {
  cd_graph_free(r->g);
  cd_tensor_file_close(r->gf);
  cd_sd_free(r->m);
}

/* Runs body on every case in turn; stops at the first failure or missing
 * golden. 0 all passed, 1 golden folder absent, -1 failed (test_msg set). */
static int for_each_case(int (*body)(run_case *r)) {
  for (int ci = 0; ci < NCASES; ci++) {
    run_case r = {0};
    int rc = open_case(&cases[ci], &r);
    if (rc == 0) rc = body(&r);
    close_case(&r);
    if (rc) return rc;
  }
  return 0;
}

#define RUN_CASES(body) GOLDEN_STATUS(for_each_case(body))

/* inside a case body: fail the case, keeping the first message */
#define TRY(e) do { if ((e) != 0) { if (!test_msg[0]) snprintf(test_msg, sizeof test_msg, "%s", cd_last_error()); \
    return -1; } } while (0)

/* compare node n (marked output) with golden tensor `name` */
static int cmp(const run_case *r, const cd_node *n, const char *name) {
  if (!n) {
    snprintf(test_msg, sizeof test_msg, "%s %s: graph has no such node", r->model, name);
    return -1;
  }
  int64_t k;
  float *ref = test_read_f32(r->gf, name, &k);
  if (!ref) return -1;
  if (k != n->n) {
    snprintf(test_msg, sizeof test_msg, "%s %s: %ld elements, golden %ld", r->model, name, (long)n->n, (long)k);
    free(ref);
    return -1;
  }
  double e = test_rel_err(n->data, ref, k);
  free(ref);
  if (getenv("CDIFF_TEST_VERBOSE")) printf("  %s %s %s: rel err %.3g (tol %.3g)\n", wdtype ? wdtype : "f32", r->model, name, e, tol);
  if (!(e <= tol)) {
    snprintf(test_msg, sizeof test_msg, "%s weights, %s %s: rel err %.3g > %.3g", wdtype ? wdtype : "f32", r->model, name, e, tol);
    return -1;
  }
  return 0;
}

/* compare the graph node called node_name with golden tensor prefix+node_name */
static int cmp_named(const run_case *r, const char *prefix, const char *node_name) {
  char gn[128];
  snprintf(gn, sizeof gn, "%s%s", prefix, node_name);
  return cmp(r, cd_graph_find(r->g, node_name), gn);
}

static void output_if_present(cd_graph *g, const char *name) {
  cd_node *n = cd_graph_find(g, name);
  if (n) cd_graph_output(g, n);
}

static int set_input(cd_node *x, const cd_tensor_file *gf, const char *name) {
  const cd_tensor_info *t = cd_tf_find(gf, name);
  if (!t || cd_tensor_numel(t) != x->n) {
    snprintf(test_msg, sizeof test_msg, "golden input %s missing or mis-sized", name);
    return -1;
  }
  if (t->dtype == CD_DT_I64) {
    int64_t *v = cd_malloc(x->n * sizeof(int64_t));
    int rc = cd_tf_read_i64(gf, t, v);
    for (int64_t i = 0; rc == 0 && i < x->n; i++) x->data[i] = (float)v[i];
    free(v);
    return rc;
  }
  return cd_tf_read_f32(gf, t, x->data);
}

static int text_encoder_case(run_case *r) {
  cd_graph *g = r->g;
  cd_node *hidden[32] = {0};
  cd_node *ids = cd_input(g, "ids", 2, (int64_t[]){3, 77});
  cd_node *out = cd_clip_build(g, &r->m->clip, ids, NULL, hidden);
  cd_graph_output(g, out);
  int L = r->m->clip.cfg.layers;
  for (int l = 0; l <= L; l++) cd_graph_output(g, hidden[l]);
  TRY(cd_graph_plan(g, NULL));
  if (set_tol(g)) return -1;
  TRY(set_input(ids, r->gf, "text.input_ids"));
  TRY(cd_graph_forward(g));
  TRY(cmp(r, out, "text.last_hidden_state"));
  int64_t k;
  float *hs = test_read_f32(r->gf, "text.hidden_states", &k); /* [L+1, 3, 77, d] */
  if (!hs) return -1;
  int64_t per = hidden[0]->n;
  for (int l = 0; l <= L; l++) {
    double e = test_rel_err(hidden[l]->data, hs + l * per, per);
    if (e > tol) {
      snprintf(test_msg, sizeof test_msg, "%s hidden_states[%d]: rel err %.3g", r->model, l, e);
      free(hs);
      return -1;
    }
  }
  free(hs);
  return 0;
}

static const char *UNET_DBG[] = {"time_proj", "time_embedding", "conv_in", "mid_block", "conv_norm_out"};

static int unet_case(run_case *r) {
  cd_graph *g = r->g;
  const int64_t ctxd = r->m->unet.cfg.context_dim, L = r->m->unet.cfg.nlevels;
  cd_node *x = cd_input(g, "sample", 4, (int64_t[]){2, 4, 8, 8});
  cd_node *t = cd_input(g, "t", 1, (int64_t[]){2});
  cd_node *ctx = cd_input(g, "ctx", 3, (int64_t[]){2, 77, ctxd});
  cd_node *out = cd_unet_build(g, &r->m->unet, NULL, x, t, ctx);
  cd_graph_output(g, out);
  char nm[64];
  for (int i = 0; i < 5; i++) output_if_present(g, UNET_DBG[i]);
  for (int i = 0; i < L; i++) {
    snprintf(nm, sizeof nm, "down_blocks.%d", i);
    output_if_present(g, nm);
    snprintf(nm, sizeof nm, "up_blocks.%d", i);
    output_if_present(g, nm);
  }
  TRY(cd_graph_plan(g, NULL));
  if (set_tol(g)) return -1;
  TRY(set_input(x, r->gf, "unet.sample"));
  TRY(set_input(t, r->gf, "unet.timesteps"));
  TRY(set_input(ctx, r->gf, "unet.encoder_hidden_states"));
  TRY(cd_graph_forward(g));
  for (int i = 0; i < 5; i++) TRY(cmp_named(r, "unet.dbg.", UNET_DBG[i]));
  for (int i = 0; i < L; i++) {
    snprintf(nm, sizeof nm, "down_blocks.%d", i);
    TRY(cmp_named(r, "unet.dbg.", nm));
    snprintf(nm, sizeof nm, "up_blocks.%d", i);
    TRY(cmp_named(r, "unet.dbg.", nm));
  }
  TRY(cmp(r, out, "unet.out"));
  return 0;
}

static int vae_case(run_case *r) {
  cd_graph *g = r->g;
  cd_node *img = cd_input(g, "image", 4, (int64_t[]){1, 3, 64, 64});
  cd_node *mom = cd_vae_encode_build(g, &r->m->vae, img);
  cd_node *z = cd_input(g, "z", 4, (int64_t[]){1, 4, 8, 8});
  cd_node *dec = cd_vae_decode_build(g, &r->m->vae, z);
  cd_graph_output(g, mom);
  cd_graph_output(g, dec);
  output_if_present(g, "vae.enc.h");
  output_if_present(g, "vae.dec.post_quant_conv");
  TRY(cd_graph_plan(g, NULL));
  if (set_tol(g)) return -1;
  TRY(set_input(img, r->gf, "vae.image"));
  TRY(set_input(z, r->gf, "vae.dec.z"));
  TRY(cd_graph_forward(g));
  TRY(cmp_named(r, "", "vae.enc.h"));
  TRY(cmp(r, mom, "vae.enc.moments"));
  TRY(cmp_named(r, "", "vae.dec.post_quant_conv"));
  TRY(cmp(r, dec, "vae.dec.out"));
  return 0;
}

/* --clip-skip N: final_layer_norm(hidden_states[L-(N-1)]) (A1111's rule),
 * against the golden hidden states normalised here in double; the skipped
 * layers' weights are not reported as unknown keys. */
static int clip_skip_case(run_case *r) {
  cd_clip *c = &r->m->clip;
  const int L = c->cfg.layers;
  const int64_t d = c->cfg.width;
  if (cd_clip_set_skip(c, 0) == 0 || cd_clip_set_skip(c, L + 1) == 0 || !strstr(cd_last_error(), "--clip-skip")) {
    snprintf(test_msg, sizeof test_msg, "%s: --clip-skip 0 / %d accepted or error unnamed", r->model, L + 1);
    return -1;
  }
  int64_t k;
  float *hs = test_read_f32(r->gf, "text.hidden_states", &k); /* [L+1, 3, 77, d] */
  if (!hs) return -1;
  const cd_weight *gw = cd_weights_get(c->w, "text_model.final_layer_norm.weight");
  const cd_weight *gb = cd_weights_get(c->w, "text_model.final_layer_norm.bias");
  int rc = 0;
  for (int N = 2; N <= L && rc == 0; N++) {
    cd_graph *g = cd_graph_new();
    cd_node *ids = cd_input(g, "ids", 2, (int64_t[]){3, 77});
    TRY(cd_clip_set_skip(c, N));
    cd_weights_clear_used(c->w);
    cd_node *out = cd_clip_build(g, c, ids, NULL, NULL);
    cd_graph_output(g, out);
    if (cd_graph_plan(g, NULL) || cd_weights_check_unused(c->w, "text encoder", r->model) ||
        set_input(ids, r->gf, "text.input_ids") || cd_graph_forward(g) || !gw || !gb) {
      if (!test_msg[0]) snprintf(test_msg, sizeof test_msg, "%s clip skip %d: %s", r->model, N, cd_last_error());
      cd_graph_free(g);
      rc = -1;
      break;
    }
    const float *h = hs + (int64_t)(L - (N - 1)) * 3 * 77 * d;
    float *ref = cd_malloc(3 * 77 * d * sizeof(float));
    for (int64_t row = 0; row < 3 * 77; row++) {
      double mu = 0, var = 0;
      for (int64_t j = 0; j < d; j++) mu += h[row * d + j];
      mu /= d;
      for (int64_t j = 0; j < d; j++) var += (h[row * d + j] - mu) * (h[row * d + j] - mu);
      var /= d;
      for (int64_t j = 0; j < d; j++)
        ref[row * d + j] = (float)((h[row * d + j] - mu) / sqrt(var + 1e-5) * gw->data[j] + gb->data[j]);
    }
    double e = test_rel_err(out->data, ref, out->n);
    free(ref);
    cd_graph_free(g);
    if (!(e <= TOL)) {
      snprintf(test_msg, sizeof test_msg, "%s clip skip %d: rel err %.3g", r->model, N, e);
      rc = -1;
    }
  }
  free(hs);
  TRY(cd_clip_set_skip(c, 1));
  return rc;
}

TEST(text_encoder_matches_golden) { RUN_CASES(text_encoder_case); }
TEST(clip_skip_matches_golden) { RUN_CASES(clip_skip_case); }
TEST(unet_matches_golden) { RUN_CASES(unet_case); }
TEST(vae_matches_golden) { RUN_CASES(vae_case); }

/* every model and component again with its weights held in 16 bits */
static void in_dtype(const char *dt, int (*body)(run_case *r)) {
  wdtype = dt;
  int r_ = for_each_case(body);
  wdtype = NULL;
  if (r_ > 0) SKIP("golden folder not found");
  if (r_ < 0) test_failed_flag = 1;
}
TEST(text_encoder_f16_weights) { in_dtype("f16", text_encoder_case); }
TEST(unet_f16_weights) { in_dtype("f16", unet_case); }
TEST(vae_f16_weights) { in_dtype("f16", vae_case); }
TEST(text_encoder_bf16_weights) { in_dtype("bf16", text_encoder_case); }
TEST(unet_bf16_weights) { in_dtype("bf16", unet_case); }
TEST(vae_bf16_weights) { in_dtype("bf16", vae_case); }

int main(void) {
  RUN(text_encoder_matches_golden);
  RUN(clip_skip_matches_golden);
  RUN(unet_matches_golden);
  RUN(vae_matches_golden);
  RUN(text_encoder_f16_weights);
  RUN(unet_f16_weights);
  RUN(vae_f16_weights);
  RUN(text_encoder_bf16_weights);
  RUN(unet_bf16_weights);
  RUN(vae_bf16_weights);
  return test_summary();
}
