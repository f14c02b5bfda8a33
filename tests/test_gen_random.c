/* test_gen_random.c - tools/gen_sd_random writes loadable checkpoints of the
 * SD architectures in both layouts: same weights (same hash) either way, for
 * SD 1.x, SD 2.x and SDXL, and the UNet runs. (--tiny: small widths, same
 * structure.) The real shapes' parameter counts are the published ones. */
#include <sys/wait.h>

#include "diffusion/mem_estimate.h"
#include "io/fsutil.h"
#include "models/sd_model.h"
#include "test.h"

static void family_case(const char *family) {
  const char *gen = test_build_path("tools/gen_sd_random");
  if (access(gen, X_OK)) FAILF("%s was not built", gen);
  char dir[256], cmd[1024], folder[300], single[300];
  snprintf(dir, sizeof dir, "%s", test_tmpdir(family));
  if (cd_mkdir_p(dir)) FAILF("%s", cd_last_error());
  snprintf(folder, sizeof folder, "%s/model", dir);
  snprintf(single, sizeof single, "%s/model.safetensors", dir);
  snprintf(cmd, sizeof cmd, "'%s' --tiny --family %s --seed 3 --out %s --single-file %s >/dev/null 2>&1",
           gen, family, folder, single);
  int st = system(cmd);
  cd_sd_model *a = NULL, *b = NULL;
  cd_load_opts lo = {0};
  int ok = st == 0 && !cd_sd_load(folder, &lo, &a) && !cd_sd_load(single, &lo, &b);
  char err[512];
  snprintf(err, sizeof err, "%s", ok ? "" : cd_last_error());
  int same = ok && !strcmp(a->hash, b->hash) && a->family == b->family && a->sched.pred == b->sched.pred;
  int fam = ok && a->family == (!strcmp(family, "sd2") ? CD_FAMILY_SD2 : CD_FAMILY_SD1);
  /* one UNet evaluation is finite */
  int finite = 0;
  if (ok) {
    cd_graph *g = cd_graph_new();
    cd_node *x = cd_input(g, "x", 4, (int64_t[]){1, 4, 8, 8}), *t = cd_input(g, "t", 1, (int64_t[]){1});
    cd_node *c = cd_input(g, "c", 3, (int64_t[]){1, 77, b->unet.cfg.context_dim});
    cd_node *y = cd_unet_build(g, &b->unet, NULL, x, t, c);
    cd_graph_output(g, y);
    if (!cd_graph_plan(g, NULL)) {
      test_fill_uniform(x->data, x->n, -1, 1, 1);
      test_fill_uniform(c->data, c->n, -1, 1, 2);
      t->data[0] = 500;
      finite = !cd_graph_forward(g);
      for (int64_t i = 0; finite && i < y->n; i++) finite = isfinite(y->data[i]);
    }
    cd_graph_free(g);
  }
  cd_sd_free(a);
  cd_sd_free(b);
  test_rmtree(dir);
  CHECKF(ok, "generate/load %s: %s", family, err);
  CHECK(same);
  CHECK(fam);
  CHECK(finite);
}

TEST(sd1_both_layouts) { family_case("sd1"); }
TEST(sd2_both_layouts) { family_case("sd2"); }

/* one SDXL UNet evaluation with added conditioning into y (n floats); 0 ok */
static int sdxl_eval(cd_sd_model *m, const float *ids, float *y, int64_t n) {
  const cd_unet_config *c = &m->unet.cfg;
  cd_graph *g = cd_graph_new();
  cd_node *x = cd_input(g, "x", 4, (int64_t[]){2, 4, 8, 6}), *t = cd_input(g, "t", 1, (int64_t[]){2});
  cd_node *ctx = cd_input(g, "c", 3, (int64_t[]){2, 7, c->context_dim});
  cd_node *te = cd_input(g, "text_embeds", 2, (int64_t[]){2, c->add_text_dim});
  cd_node *ti = cd_input(g, "time_ids", 2, (int64_t[]){2, c->add_time_ids});
  cd_unet_added add = {te, ti};
  cd_node *out = cd_unet_build_cond(g, &m->unet, NULL, x, t, ctx, &add);
  cd_graph_output(g, out);
  int rc = cd_graph_plan(g, NULL);
  if (!rc && out->n != n) rc = cd_set_error("output has %ld values, expected %ld", (long)out->n, (long)n);
  float *buf = cd_malloc(4096 * sizeof(float));
  const float tv[2] = {500, 31};
  cd_node *in[3] = {x, ctx, te};
  for (int i = 0; i < 3 && !rc; i++) {
    if (in[i]->n > 4096) { rc = cd_set_error("input too large"); break; }
    test_fill_uniform(buf, (size_t)in[i]->n, -1, 1, 10 + i);
    rc = cd_graph_set_input(g, in[i], buf);
  }
  if (!rc) rc = cd_graph_set_input(g, t, tv);
  if (!rc) rc = cd_graph_set_input(g, ti, ids);
  if (!rc) rc = cd_graph_forward(g);
  if (!rc) rc = cd_graph_get(g, out, y);
  free(buf);
  cd_graph_free(g);
  return rc;
}

/* tiny SDXL: the diffusers folder and the SGM single file load with equal
 * hashes and configs; the UNet (with the text_time conditioning) is finite,
 * deterministic (two runs, same bits) and reads the time ids. */
TEST(sdxl_both_layouts) {
  const char *gen = test_build_path("tools/gen_sd_random");
  if (access(gen, X_OK)) FAILF("%s was not built", gen);
  char dir[256], cmd[1024], folder[300], single[300];
  snprintf(dir, sizeof dir, "%s", test_tmpdir("sdxl"));
  if (cd_mkdir_p(dir)) FAILF("%s", cd_last_error());
  snprintf(folder, sizeof folder, "%s/model", dir);
  snprintf(single, sizeof single, "%s/model.safetensors", dir);
  snprintf(cmd, sizeof cmd, "'%s' --tiny --family sdxl --seed 5 --out %s --single-file %s >/dev/null 2>&1", gen,
           folder, single);
  int st = system(cmd);
  cd_sd_model *a = NULL, *b = NULL;
  cd_load_opts lo = {0}; /* everything: the hash covers both text encoders and the UNet */
  int ok = st == 0 && !cd_sd_load(folder, &lo, &a) && !cd_sd_load(single, &lo, &b);
  char err[512];
  snprintf(err, sizeof err, "%s", ok ? "" : cd_last_error());
  int same = 0, cfg = 0, det = 0, finite = 0, reads_ids = 0, mem = 0;
  if (ok) {
    cd_mem_plan mp; /* the sampling memory estimate plans the UNet with its added inputs */
    mem = !cd_sample_mem_plan(a, 1, 2, 128, 128, 0, 0, &mp) && mp.unet > 0;
    same = !strcmp(a->hash, b->hash) && a->family == CD_FAMILY_SDXL && b->family == CD_FAMILY_SDXL && a->clip.w &&
           a->clip2.w && b->clip2.w && cd_weights_numel(a->clip2.w) == cd_weights_numel(b->clip2.w) &&
           cd_weights_numel(a->unet.w) == cd_weights_numel(b->unet.w) && cd_weights_numel(a->vae.w) == cd_weights_numel(b->vae.w);
    const cd_unet_config *u = &a->unet.cfg, *v = &b->unet.cfg;
    cfg = u->nlevels == 3 && !u->down_attn[0] && u->down_attn[1] && u->down_attn[2] && u->up_attn[0] &&
          u->up_attn[1] && !u->up_attn[2] && cd_unet_depth(u, 1) == 1 && cd_unet_depth(u, 2) == 2 &&
          cd_unet_mid_depth(u) == 2 && u->add_time_dim == 8 && u->add_text_dim == 48 && u->add_time_ids == 6 &&
          u->context_dim == 192 && u->linear_proj && a->vae.cfg.scaling_factor == 0.13025f;
    cfg = cfg && v->nlevels == u->nlevels && v->context_dim == u->context_dim && v->add_time_dim == u->add_time_dim &&
          v->add_text_dim == u->add_text_dim && v->mid_depth == u->mid_depth && v->heads[2] == u->heads[2] &&
          !memcmp(v->depth, u->depth, sizeof u->depth) && b->vae.cfg.scaling_factor == a->vae.cfg.scaling_factor &&
          v->sample_size == 128 && u->sample_size == 16;
    const int64_t n = 2 * 4 * 8 * 6;
    float *y1 = cd_malloc(3 * n * sizeof(float)), *y2 = y1 + n, *y3 = y2 + n;
    const float ids[12] = {1024, 1024, 0, 0, 1024, 1024, 768, 512, 64, 32, 768, 512};
    float ids2[12];
    memcpy(ids2, ids, sizeof ids);
    ids2[6] = 900; /* the second sample's original height */
    if (!sdxl_eval(b, ids, y1, n) && !sdxl_eval(b, ids, y2, n) && !sdxl_eval(b, ids2, y3, n)) {
      finite = 1;
      for (int64_t i = 0; i < n; i++) finite &= isfinite(y1[i]);
      det = !memcmp(y1, y2, n * sizeof(float));
      double d0 = 0, d1 = 0; /* sample 0 keeps its ids, sample 1 changes */
      for (int64_t i = 0; i < n / 2; i++) d0 += fabs(y3[i] - y1[i]);
      for (int64_t i = n / 2; i < n; i++) d1 += fabs(y3[i] - y1[i]);
      reads_ids = d0 == 0 && d1 > 0;
    } else {
      snprintf(err, sizeof err, "%s", cd_last_error());
    }
    free(y1);
  }
  cd_sd_free(a);
  cd_sd_free(b);
  test_rmtree(dir);
  CHECKF(ok, "generate/load sdxl: %s", err);
  CHECK(same);
  CHECK(cfg);
  CHECKF(finite, "unet: %s", err);
  CHECK(det);
  CHECK(reads_ids);
  CHECK(mem);
}

/* a wrong SDXL unet/config.json is refused with an error naming the file and the field */
TEST(sdxl_bad_config_is_refused) {
  const char *gen = test_build_path("tools/gen_sd_random");
  if (access(gen, X_OK)) FAILF("%s was not built", gen);
  char dir[256], cmd[1024], folder[300], cfgp[400];
  snprintf(dir, sizeof dir, "%s", test_tmpdir("sdxlbad"));
  if (cd_mkdir_p(dir)) FAILF("%s", cd_last_error());
  snprintf(folder, sizeof folder, "%s/model", dir);
  snprintf(cfgp, sizeof cfgp, "%s/unet/config.json", folder);
  snprintf(cmd, sizeof cmd, "'%s' --tiny --family sdxl --out %s >/dev/null 2>&1", gen, folder);
  int st = system(cmd);
  char *txt = NULL;
  size_t n = 0;
  int rd = st == 0 ? cd_read_file(cfgp, &txt, &n) : -1;
  static const char *const from[3] = {"\"text_time\"", "\"transformer_layers_per_block\": [1, 1, 2]",
                                      "\"addition_time_embed_dim\": 8"};
  static const char *const to[3] = {"\"image\"", "\"transformer_layers_per_block\": [1, 2]",
                                    "\"addition_time_embed_dim\": 7"};
  static const char *const want[3] = {"addition_embed_type \"image\"", "\"transformer_layers_per_block\" has 2 entries",
                                      "addition_time_embed_dim 7"};
  char msg[600] = "";
  for (int k = 0; k < 3 && rd == 0 && !msg[0]; k++) {
    const char *p = strstr(txt, from[k]);
    if (!p) { snprintf(msg, sizeof msg, "%s not in the generated config", from[k]); break; }
    char *mod = cd_malloc(n + 64);
    snprintf(mod, n + 64, "%.*s%s%s", (int)(p - txt), txt, to[k], p + strlen(from[k]));
    cd_sd_model *m = NULL;
    cd_load_opts lo = {.no_text = 1};
    int w = cd_write_file_atomic(cfgp, mod, strlen(mod));
    int rc = w ? 0 : cd_sd_load(folder, &lo, &m);
    const char *e = cd_last_error();
    if (w) snprintf(msg, sizeof msg, "write %s: %s", cfgp, e);
    else if (!rc) snprintf(msg, sizeof msg, "a config with %s loaded", to[k]);
    else if (!strstr(e, want[k]) || !strstr(e, "unet/config.json")) snprintf(msg, sizeof msg, "error: %s", e);
    cd_sd_free(m);
    free(mod);
  }
  free(txt);
  test_rmtree(dir);
  CHECKF(st == 0 && rd == 0, "generating the tiny SDXL failed");
  CHECKF(!msg[0], "%s", msg);
}

/* The real SDXL base shapes give the published parameter counts: UNet
 * 2,567,463,684 (diffusers' UNet2DConditionModel of stabilityai/stable-
 * diffusion-xl-base-1.0), CLIPTextModel 123,060,480, CLIPTextModelWithProjection
 * 694,659,840, AutoencoderKL 83,653,863. Counted from the generator's shape
 * tables, which the tiny case above loads through the loader and the UNet builder. */
TEST(sdxl_real_counts) {
  const char *gen = test_build_path("tools/gen_sd_random");
  if (access(gen, X_OK)) FAILF("%s was not built", gen);
  char cmd[512], out[512];
  snprintf(cmd, sizeof cmd, "'%s' --family sdxl --count", gen);
  int st = test_run_cmd(cmd, out, sizeof out);
  CHECKF(st == 0, "%s: status %d", cmd, st);
  CHECKF(strstr(out, "unet 2567463684,") && strstr(out, "vae 83653863,") && strstr(out, "text_encoder 123060480,") &&
             strstr(out, "text_encoder_2 694659840"),
         "counts: %s", out);
}

int main(void) {
  test_pin_threads(); /* bit-for-bit comparisons of two runs (test.h) */
  RUN(sd1_both_layouts);
  RUN(sd2_both_layouts);
  RUN(sdxl_both_layouts);
  RUN(sdxl_bad_config_is_refused);
  RUN(sdxl_real_counts);
  test_tmp_cleanup();
  return test_summary();
}
