/* test_models.c - text encoder, UNet and VAE against the diffusers/transformers
 * goldens (../shared/golden), for every model in both checkpoint layouts.
 * Tolerance: relative L2 error 1e-4 on forward passes (golden README). */
#include "models/sd_model.h"
#include "test.h"

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

static int open_case(const model_case *c, cd_sd_model **m, cd_tensor_file **gf) {
  char mp[1024], gp[1024];
  if (test_golden_path(mp, sizeof mp, c->model) || test_golden_path(gp, sizeof gp, c->golden)) return 1;
  cd_load_opts o = {0};
  if (cd_sd_load(mp, &o, m)) {
    snprintf(test_msg, sizeof test_msg, "load %s: %s", c->model, cd_last_error());
    return -1;
  }
  if (cd_safetensors_open(gp, gf)) {
    snprintf(test_msg, sizeof test_msg, "%s", cd_last_error());
    cd_sd_free(*m);
    return -1;
  }
  return 0;
}

/* compare node (marked output) with golden tensor */
static int cmp(cd_node *n, const cd_tensor_file *gf, const char *name, double tol, const char *model) {
  int64_t k;
  float *ref = test_read_f32(gf, name, &k);
  if (!ref) return -1;
  if (k != n->n) {
    snprintf(test_msg, sizeof test_msg, "%s %s: %ld elements, golden %ld", model, name, (long)n->n, (long)k);
    free(ref);
    return -1;
  }
  double e = test_rel_err(n->data, ref, k);
  free(ref);
  if (!(e <= tol)) {
    snprintf(test_msg, sizeof test_msg, "%s %s: rel err %.3g > %.3g", model, name, e, tol);
    return -1;
  }
  return 0;
}

static int set_input(cd_node *x, const cd_tensor_file *gf, const char *name) {
  const cd_tensor_info *t = cd_tf_find(gf, name);
  if (!t || cd_tensor_numel(t) != x->n) {
    snprintf(test_msg, sizeof test_msg, "golden input %s missing or mis-sized", name);
    return -1;
  }
  if (t->dtype == CD_DT_I64) {
    int64_t *v = cd_malloc(x->n * sizeof(int64_t));
    cd_tf_read_i64(gf, t, v);
    for (int64_t i = 0; i < x->n; i++) x->data[i] = (float)v[i];
    free(v);
    return 0;
  }
  return cd_tf_read_f32(gf, t, x->data);
}

#define TRY(e) do { if ((e) != 0) { if (!test_msg[0]) snprintf(test_msg, sizeof test_msg, "%s", cd_last_error()); goto fail; } } while (0)

TEST(text_encoder_matches_golden) {
  for (int ci = 0; ci < NCASES; ci++) {
    cd_sd_model *m = NULL;
    cd_tensor_file *gf = NULL;
    int r = open_case(&cases[ci], &m, &gf);
    if (r > 0) SKIP("golden folder not found");
    if (r < 0) { test_failed_flag = 1; return; }
    cd_graph *g = cd_graph_new();
    cd_node *hidden[32] = {0};
    cd_node *ids = cd_input(g, "ids", 2, (int64_t[]){3, 77});
    cd_node *out = cd_clip_build(g, &m->clip, ids, NULL, hidden);
    cd_graph_output(g, out);
    int L = m->clip.cfg.layers;
    for (int l = 0; l <= L; l++) cd_graph_output(g, hidden[l]);
    TRY(cd_graph_plan(g, NULL));
    TRY(set_input(ids, gf, "text.input_ids"));
    TRY(cd_graph_forward(g));
    TRY(cmp(out, gf, "text.last_hidden_state", 1e-4, cases[ci].model));
    {
      int64_t k;
      float *hs = test_read_f32(gf, "text.hidden_states", &k); /* [L+1, 3, 77, d] */
      if (!hs) goto fail;
      int64_t per = hidden[0]->n;
      for (int l = 0; l <= L; l++) {
        double e = test_rel_err(hidden[l]->data, hs + l * per, per);
        if (e > 1e-4) {
          snprintf(test_msg, sizeof test_msg, "%s hidden_states[%d]: rel err %.3g", cases[ci].model, l, e);
          free(hs);
          goto fail;
        }
      }
      free(hs);
    }
    cd_graph_free(g);
    cd_tensor_file_close(gf);
    cd_sd_free(m);
    continue;
  fail:
    test_failed_flag = 1;
    cd_graph_free(g);
    cd_tensor_file_close(gf);
    cd_sd_free(m);
    return;
  }
}

TEST(unet_matches_golden) {
  static const char *dbg[] = {"time_proj", "time_embedding", "conv_in", "mid_block", "conv_norm_out"};
  for (int ci = 0; ci < NCASES; ci++) {
    cd_sd_model *m = NULL;
    cd_tensor_file *gf = NULL;
    int r = open_case(&cases[ci], &m, &gf);
    if (r > 0) SKIP("golden folder not found");
    if (r < 0) { test_failed_flag = 1; return; }
    cd_graph *g = cd_graph_new();
    const int64_t ctxd = m->unet.cfg.context_dim, L = m->unet.cfg.nlevels;
    cd_node *x = cd_input(g, "sample", 4, (int64_t[]){2, 4, 8, 8});
    cd_node *t = cd_input(g, "t", 1, (int64_t[]){2});
    cd_node *ctx = cd_input(g, "ctx", 3, (int64_t[]){2, 77, ctxd});
    cd_node *out = cd_unet_build(g, &m->unet, x, t, ctx);
    cd_graph_output(g, out);
    for (int i = 0; i < 5; i++) {
      cd_node *n = cd_graph_find(g, dbg[i]);
      if (n) cd_graph_output(g, n);
    }
    char nm[64], gn[96];
    for (int i = 0; i < L; i++) {
      snprintf(nm, sizeof nm, "down_blocks.%d", i);
      cd_node *n = cd_graph_find(g, nm);
      if (n) cd_graph_output(g, n);
      snprintf(nm, sizeof nm, "up_blocks.%d", i);
      if ((n = cd_graph_find(g, nm))) cd_graph_output(g, n);
    }
    TRY(cd_graph_plan(g, NULL));
    TRY(set_input(x, gf, "unet.sample"));
    TRY(set_input(t, gf, "unet.timesteps"));
    TRY(set_input(ctx, gf, "unet.encoder_hidden_states"));
    TRY(cd_graph_forward(g));
    for (int i = 0; i < 5; i++) {
      snprintf(gn, sizeof gn, "unet.dbg.%s", dbg[i]);
      TRY(cmp(cd_graph_find(g, dbg[i]), gf, gn, 1e-4, cases[ci].model));
    }
    for (int i = 0; i < L; i++) {
      snprintf(nm, sizeof nm, "down_blocks.%d", i);
      snprintf(gn, sizeof gn, "unet.dbg.%s", nm);
      TRY(cmp(cd_graph_find(g, nm), gf, gn, 1e-4, cases[ci].model));
      snprintf(nm, sizeof nm, "up_blocks.%d", i);
      snprintf(gn, sizeof gn, "unet.dbg.%s", nm);
      TRY(cmp(cd_graph_find(g, nm), gf, gn, 1e-4, cases[ci].model));
    }
    TRY(cmp(out, gf, "unet.out", 1e-4, cases[ci].model));
    cd_graph_free(g);
    cd_tensor_file_close(gf);
    cd_sd_free(m);
    continue;
  fail:
    test_failed_flag = 1;
    cd_graph_free(g);
    cd_tensor_file_close(gf);
    cd_sd_free(m);
    return;
  }
}

TEST(vae_matches_golden) {
  for (int ci = 0; ci < NCASES; ci++) {
    cd_sd_model *m = NULL;
    cd_tensor_file *gf = NULL;
    int r = open_case(&cases[ci], &m, &gf);
    if (r > 0) SKIP("golden folder not found");
    if (r < 0) { test_failed_flag = 1; return; }
    cd_graph *g = cd_graph_new();
    cd_node *img = cd_input(g, "image", 4, (int64_t[]){1, 3, 64, 64});
    cd_node *mom = cd_vae_encode_build(g, &m->vae, img);
    cd_node *z = cd_input(g, "z", 4, (int64_t[]){1, 4, 8, 8});
    cd_node *dec = cd_vae_decode_build(g, &m->vae, z);
    cd_graph_output(g, mom);
    cd_graph_output(g, dec);
    cd_graph_output(g, cd_graph_find(g, "vae.enc.h"));
    cd_graph_output(g, cd_graph_find(g, "vae.dec.post_quant_conv"));
    TRY(cd_graph_plan(g, NULL));
    TRY(set_input(img, gf, "vae.image"));
    TRY(set_input(z, gf, "vae.dec.z"));
    TRY(cd_graph_forward(g));
    TRY(cmp(cd_graph_find(g, "vae.enc.h"), gf, "vae.enc.h", 1e-4, cases[ci].model));
    TRY(cmp(mom, gf, "vae.enc.moments", 1e-4, cases[ci].model));
    TRY(cmp(cd_graph_find(g, "vae.dec.post_quant_conv"), gf, "vae.dec.post_quant_conv", 1e-4, cases[ci].model));
    TRY(cmp(dec, gf, "vae.dec.out", 1e-4, cases[ci].model));
    cd_graph_free(g);
    cd_tensor_file_close(gf);
    cd_sd_free(m);
    continue;
  fail:
    test_failed_flag = 1;
    cd_graph_free(g);
    cd_tensor_file_close(gf);
    cd_sd_free(m);
    return;
  }
}

int main(void) {
  RUN(text_encoder_matches_golden);
  RUN(unet_matches_golden);
  RUN(vae_matches_golden);
  return test_summary();
}
