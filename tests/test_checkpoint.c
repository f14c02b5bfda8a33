/* test_checkpoint.c - loading SD 1.x/2.x pipelines: diffusers folders and single-file
 * original checkpoints give the same configs and bit-identical weights; errors. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "models/keymap.h"
#include "models/sd_info.h"
#include "models/sd_model.h"
#include "test.h"

/* ---------------------------------------------------------------- helpers */

/* a fresh folder under the test's scratch folder */
static char *mktmp(char *buf, size_t cap) {
  static int k;
  char sub[16];
  snprintf(sub, sizeof sub, "d%d", k++);
  snprintf(buf, cap, "%s", test_tmpdir(sub));
  return cd_mkdir_p(buf) ? NULL : buf;
}

/* golden model rel; NULL with test_msg set when it is missing or does not load
 * (callers made sure the golden folder is there) */
static cd_sd_model *load(const char *rel) {
  char p[1024];
  if (test_golden_need(p, sizeof p, rel)) return NULL;
  cd_sd_model *m = NULL;
  if (cd_sd_load(p, NULL, &m)) {
    fprintf(stderr, "load %s: %s\n", p, cd_last_error());
    snprintf(test_msg, sizeof test_msg, "load %s: %s", p, cd_last_error());
    return NULL;
  }
  return m;
}

/* every weight of a equals b's: same names, shapes and bits; 0 if equal */
static int same_weights(const cd_weights *a, const cd_weights *b, char *why, size_t cap) {
  if (!a || !b) { snprintf(why, cap, "component missing"); return -1; }
  if (cd_weights_count(a) != cd_weights_count(b)) {
    snprintf(why, cap, "%d vs %d weights", cd_weights_count(a), cd_weights_count(b));
    return -1;
  }
  for (int i = 0; i < cd_weights_count(a); i++) {
    const cd_weight *x = cd_weights_at(a, i), *y = cd_weights_get(b, x->name);
    if (!y) { snprintf(why, cap, "%s missing", x->name); return -1; }
    if (x->ndim != y->ndim) { snprintf(why, cap, "%s: ndim %d vs %d", x->name, x->ndim, y->ndim); return -1; }
    int64_t n = 1;
    for (int d = 0; d < x->ndim; d++) {
      if (x->ne[d] != y->ne[d]) { snprintf(why, cap, "%s: dim %d differs", x->name, d); return -1; }
      n *= x->ne[d];
    }
    if (memcmp(x->data, y->data, (size_t)n * sizeof(float))) {
      snprintf(why, cap, "%s: values differ", x->name);
      return -1;
    }
  }
  return 0;
}

/* all tensors of a file as writer records (data points into the open file) */
static cd_tensor_out *file_records(const cd_tensor_file *f, int extra) {
  int n = cd_tf_count(f);
  cd_tensor_out *o = cd_calloc((size_t)(n + extra), sizeof *o);
  for (int i = 0; i < n; i++) {
    const cd_tensor_info *t = cd_tf_at(f, i);
    o[i].name = t->name;
    o[i].dtype = t->dtype;
    o[i].ndim = t->ndim;
    memcpy(o[i].shape, t->shape, sizeof o[i].shape);
    o[i].data = t->data;
  }
  return o;
}

static int err_has(const char *s) { return strstr(cd_last_error(), s) != NULL; }

/* ---------------------------------------------------------------- keymap */

TEST(keymap_unet_sd15_topology) {
  cd_unet_config c = {0};
  c.nlevels = 4;
  c.layers_per_block = 2;
  for (int i = 0; i < 3; i++) c.down_attn[i] = c.up_attn[i + 1] = 1;
  c.mid_attn = 1;
  cd_keymap km;
  CHECK_OK(cd_keymap_unet(&km, &c));
  static const char *const cases[][2] = {
      {"input_blocks.0.0.weight", "conv_in.weight"},
      {"time_embed.2.bias", "time_embedding.linear_2.bias"},
      {"input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"},
      {"input_blocks.2.1.proj_in.weight", "down_blocks.0.attentions.1.proj_in.weight"},
      {"input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"},
      {"input_blocks.4.0.skip_connection.bias", "down_blocks.1.resnets.0.conv_shortcut.bias"},
      {"input_blocks.11.0.emb_layers.1.weight", "down_blocks.3.resnets.1.time_emb_proj.weight"},
      {"middle_block.1.transformer_blocks.0.attn2.to_k.weight",
       "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"},
      {"middle_block.2.out_layers.3.weight", "mid_block.resnets.1.conv2.weight"},
      {"output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"},
      {"output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"},
      {"output_blocks.5.1.norm.weight", "up_blocks.1.attentions.2.norm.weight"},
      {"output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
       "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight"},
      {"out.0.weight", "conv_norm_out.weight"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    cd_km_result r;
    cd_km_op op = cd_keymap_map(&km, cases[i][0], &r);
    if (op != CD_KM_COPY || strcmp(r.dst[0], cases[i][1])) {
      cd_keymap_free(&km);
      FAILF("%s -> op %d %s (expected %s)", cases[i][0], op, r.dst[0], cases[i][1]);
    }
  }
  static const char *const bad[] = {"input_blocks.12.0.in_layers.0.weight",
                                    "output_blocks.1.1.proj_in.weight", /* level 0 has no attention */
                                    "input_blocks.1.0.in_layers.1.weight",
                                    "input_blocks.1.1.transformer_blocks.1.norm1.weight",
                                    "output_blocks.11.2.conv.weight", "label_emb.0.0.weight"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    cd_km_result r;
    if (cd_keymap_map(&km, bad[i], &r) != CD_KM_UNKNOWN) {
      cd_keymap_free(&km);
      FAILF("%s should be unknown, got %s", bad[i], r.dst[0]);
    }
  }
  cd_keymap_free(&km);
}

TEST(keymap_vae_and_openclip) {
  cd_vae_config v = {0};
  v.nlevels = 4;
  v.layers_per_block = 2;
  cd_keymap km;
  cd_km_result r;
  CHECK_OK(cd_keymap_vae(&km, &v));
  CHECK(cd_keymap_map(&km, "decoder.up.3.block.2.nin_shortcut.weight", &r) == CD_KM_COPY &&
        !strcmp(r.dst[0], "decoder.up_blocks.0.resnets.2.conv_shortcut.weight"));
  CHECK(cd_keymap_map(&km, "decoder.up.1.upsample.conv.weight", &r) == CD_KM_COPY &&
        !strcmp(r.dst[0], "decoder.up_blocks.2.upsamplers.0.conv.weight"));
  CHECK(cd_keymap_map(&km, "decoder.up.0.upsample.conv.weight", &r) == CD_KM_UNKNOWN);
  CHECK(cd_keymap_map(&km, "encoder.mid.attn_1.proj_out.weight", &r) == CD_KM_SQUEEZE &&
        !strcmp(r.dst[0], "encoder.mid_block.attentions.0.to_out.0.weight"));
  CHECK(cd_keymap_map(&km, "encoder.mid.attn_1.q.bias", &r) == CD_KM_COPY &&
        !strcmp(r.dst[0], "encoder.mid_block.attentions.0.to_q.bias"));
  CHECK(cd_keymap_map(&km, "decoder.norm_out.bias", &r) == CD_KM_COPY &&
        !strcmp(r.dst[0], "decoder.conv_norm_out.bias"));
  CHECK(cd_keymap_map(&km, "encoder.down.3.downsample.conv.weight", &r) == CD_KM_UNKNOWN);
  cd_keymap_free(&km);

  cd_clip_config c = {0};
  c.layers = 23;
  CHECK_OK(cd_keymap_clip(&km, &c, 1, 24));
  CHECK(cd_keymap_map(&km, "model.transformer.resblocks.22.attn.in_proj_weight", &r) == CD_KM_SPLIT3 &&
        r.n == 3 && !strcmp(r.dst[1], "text_model.encoder.layers.22.self_attn.k_proj.weight"));
  CHECK(cd_keymap_map(&km, "model.transformer.resblocks.23.attn.in_proj_weight", &r) == CD_KM_IGNORE);
  CHECK(cd_keymap_map(&km, "model.transformer.resblocks.24.ln_1.weight", &r) == CD_KM_UNKNOWN);
  CHECK(cd_keymap_map(&km, "model.positional_embedding", &r) == CD_KM_COPY &&
        !strcmp(r.dst[0], "text_model.embeddings.position_embedding.weight"));
  CHECK(cd_keymap_map(&km, "model.transformer.resblocks.0.mlp.c_proj.bias", &r) == CD_KM_COPY &&
        !strcmp(r.dst[0], "text_model.encoder.layers.0.mlp.fc2.bias"));
  CHECK(cd_keymap_map(&km, "model.logit_scale", &r) == CD_KM_IGNORE);
  cd_keymap_free(&km);
  c.layers = 12;
  CHECK_OK(cd_keymap_clip(&km, &c, 0, 12));
  CHECK(cd_keymap_map(&km, "transformer.text_model.encoder.layers.11.self_attn.out_proj.weight", &r) ==
            CD_KM_COPY && !strcmp(r.dst[0], "text_model.encoder.layers.11.self_attn.out_proj.weight"));
  CHECK(cd_keymap_map(&km, "transformer.embeddings.token_embedding.weight", &r) == CD_KM_COPY &&
        !strcmp(r.dst[0], "text_model.embeddings.token_embedding.weight"));
  CHECK(cd_keymap_map(&km, "transformer.text_model.embeddings.position_ids", &r) == CD_KM_IGNORE);
  CHECK(cd_keymap_map(&km, "transformer.text_model.encoder.layers.12.mlp.fc1.weight", &r) == CD_KM_UNKNOWN);
  cd_keymap_free(&km);
}

/* ---------------------------------------------------------------- folders */

TEST(tiny_sd1_folder) {
  char p[1024];
  NEED_GOLDEN(p, "tiny-sd1/model_index.json");
  cd_sd_model *m = load("tiny-sd1");
  CHECK(m);
  const cd_unet_config *u = &m->unet.cfg;
  int ok = m->family == CD_FAMILY_SD1 && !strcmp(m->layout, "diffusers") && u->nlevels == 3 &&
           u->block_out[0] == 32 && u->block_out[1] == 64 && u->block_out[2] == 64 &&
           u->heads[0] == 4 && u->heads[2] == 4 && !u->linear_proj && u->norm_groups == 8 &&
           u->context_dim == 16 && u->layers_per_block == 2 && u->down_attn[0] && u->down_attn[1] &&
           !u->down_attn[2] && !u->up_attn[0] && u->up_attn[1] && u->up_attn[2] && u->mid_attn &&
           u->in_channels == 4 && u->out_channels == 4 && u->flip_sin_to_cos && u->freq_shift == 0 &&
           fabsf(u->norm_eps - 1e-5f) < 1e-12f;
  ok = ok && m->vae.cfg.nlevels == 4 && m->vae.cfg.block_out[0] == 16 && m->vae.cfg.norm_groups == 8 &&
       m->vae.cfg.latent_channels == 4 && fabsf(m->vae.cfg.scaling_factor - 0.18215f) < 1e-7f;
  ok = ok && m->clip.cfg.width == 16 && m->clip.cfg.layers == 2 && m->clip.cfg.heads == 2 &&
       m->clip.cfg.mlp == 32 && m->clip.cfg.quick_gelu && m->clip.cfg.vocab == 49408 &&
       m->clip.cfg.max_pos == 77 && m->clip.cfg.pad_id == 49407;
  ok = ok && m->sched.pred == CD_PRED_EPS && m->sched.steps_offset == 1 && !m->sched.set_alpha_to_one;
  ok = ok && cd_sd_params(m->unet.w) == 2147044 && cd_sd_params(m->vae.w) == 437847 &&
       cd_sd_params(m->clip.w) == 796240;
  ok = ok && !strcmp(m->dtype[0], "float32") && !strcmp(m->dtype[1], "float32") && strlen(m->hash) == 16;
  ok = ok && m->tok && cd_tokenizer_pad(m->tok) == 49407;
  if (!ok) {
    cd_sd_info(m, stderr);
    cd_sd_free(m);
    FAILF("tiny-sd1 config/params mismatch (summary above)");
  }
  /* the summary */
  char *buf = NULL;
  size_t len = 0;
  FILE *fp = open_memstream(&buf, &len);
  int rc = cd_sd_info(m, fp);
  fclose(fp);
  int has = rc == 0 && strstr(buf, "2,147,044") && strstr(buf, "437,847") && strstr(buf, "796,240") &&
            strstr(buf, m->hash) && strstr(buf, "SD 1.x") && strstr(buf, "epsilon");
  free(buf);
  cd_sd_free(m);
  CHECK(has);
}

TEST(tiny_sd2_folder) {
  char p[1024];
  NEED_GOLDEN(p, "tiny-sd2/model_index.json");
  cd_sd_model *m = load("tiny-sd2");
  CHECK(m);
  const cd_unet_config *u = &m->unet.cfg;
  int ok = m->family == CD_FAMILY_SD2 && u->heads[0] == 2 && u->heads[1] == 4 && u->heads[2] == 4 &&
           u->linear_proj && u->context_dim == 24 && u->norm_groups == 8 && m->sched.pred == CD_PRED_V &&
           m->clip.cfg.width == 24 && !m->clip.cfg.quick_gelu && m->clip.cfg.pad_id == 0 &&
           cd_sd_params(m->unet.w) == 2155748 && cd_sd_params(m->vae.w) == 437847 &&
           cd_sd_params(m->clip.w) == 1197432 && m->tok && cd_tokenizer_pad(m->tok) == 0;
  if (!ok) cd_sd_info(m, stderr);
  cd_sd_free(m);
  CHECK(ok);
}

TEST(small4_folder) {
  char p[1024];
  NEED_GOLDEN(p, "small4-sd1/model_index.json");
  cd_sd_model *m = load("small4-sd1");
  CHECK(m);
  const cd_unet_config *u = &m->unet.cfg;
  int ok = m->family == CD_FAMILY_SD1 && u->nlevels == 4 && u->norm_groups == 32 && u->heads[0] == 8 &&
           u->heads[3] == 8 && u->down_attn[2] && !u->down_attn[3] && !u->up_attn[0] && u->up_attn[3] &&
           u->context_dim == 16 && m->vae.cfg.norm_groups == 32 && m->vae.cfg.block_out[3] == 64 &&
           m->clip.cfg.layers == 3;
  if (!ok) cd_sd_info(m, stderr);
  cd_sd_free(m);
  CHECK(ok);
}

/* ---------------------------------------------------------------- single file == folder */

static void single_vs_folder(const char *folder, const char *file) {
  char p[1024];
  NEED_GOLDEN(p, file);
  cd_sd_model *a = load(folder), *b = load(file);
  char why[256] = "";
  int ok = a && b;
  if (ok && memcmp(&a->unet.cfg, &b->unet.cfg, sizeof a->unet.cfg)) { ok = 0; snprintf(why, sizeof why, "unet config"); }
  if (ok && memcmp(&a->vae.cfg, &b->vae.cfg, sizeof a->vae.cfg)) { ok = 0; snprintf(why, sizeof why, "vae config"); }
  if (ok && memcmp(&a->clip.cfg, &b->clip.cfg, sizeof a->clip.cfg)) { ok = 0; snprintf(why, sizeof why, "text config"); }
  if (ok && (a->family != b->family || a->sched.pred != b->sched.pred)) { ok = 0; snprintf(why, sizeof why, "family/prediction"); }
  if (ok && same_weights(a->unet.w, b->unet.w, why, sizeof why)) ok = 0;
  if (ok && same_weights(a->vae.w, b->vae.w, why, sizeof why)) ok = 0;
  if (ok && same_weights(a->clip.w, b->clip.w, why, sizeof why)) ok = 0;
  if (ok && strcmp(a->hash, b->hash)) { ok = 0; snprintf(why, sizeof why, "hash %s vs %s", a->hash, b->hash); }
  if (ok && strcmp(b->layout, "single-file safetensors")) { ok = 0; snprintf(why, sizeof why, "layout %s", b->layout); }
  /* the tokenizer comes from bpe_simple_vocab_16e6.txt.gz beside the file; pad by family */
  if (ok && (!b->tok || cd_tokenizer_pad(b->tok) != (b->family == CD_FAMILY_SD2 ? 0 : 49407))) {
    ok = 0;
    snprintf(why, sizeof why, "tokenizer");
  }
  if (!ok && a && b) { cd_sd_info(a, stderr); cd_sd_info(b, stderr); }
  cd_sd_free(a);
  cd_sd_free(b);
  CHECKF(ok, "%s vs %s: %s", folder, file, why);
}

TEST(tiny_sd1_single_file) { single_vs_folder("tiny-sd1", "tiny-sd1_original.safetensors"); }
TEST(tiny_sd2_single_file) { single_vs_folder("tiny-sd2", "tiny-sd2_original.safetensors"); }
TEST(small4_single_file) { single_vs_folder("small4-sd1", "small4-sd1_original.safetensors"); }

/* the same tensors written as a torch .ckpt load the same */
TEST(ckpt_equals_safetensors) {
  char p[1024], tmp[64], out[1200];
  NEED_GOLDEN(p, "tiny-sd2_original.safetensors");
  CHECK(mktmp(tmp, sizeof tmp));
  cd_tensor_file *f;
  CHECK_OK(cd_tensor_file_open(p, &f));
  cd_tensor_out *o = file_records(f, 0);
  snprintf(out, sizeof out, "%s/m.ckpt", tmp);
  int wrc = cd_ckpt_write(out, o, cd_tf_count(f));
  free(o);
  cd_tensor_file_close(f);
  if (wrc) { test_rmtree(tmp); FAILF("ckpt write: %s", cd_last_error()); }
  /* the yaml travels with it (v-prediction, 8 groups, head width 16) */
  char yin[1024], yout[1200];
  char rel[1024];
  NEED_GOLDEN(rel, "tiny-sd2_original.yaml");
  CHECK(realpath(rel, yin));
  snprintf(yout, sizeof yout, "%s/m.yaml", tmp);
  CHECK(symlink(yin, yout) == 0);
  cd_load_opts lo = {0};
  lo.vocab = NULL;
  cd_sd_model *a = load("tiny-sd2_original.safetensors"), *b = NULL;
  int rc = cd_sd_load(out, &lo, &b);
  char why[256] = "";
  int ok = rc == 0 && a && !strcmp(b->layout, "single-file ckpt") && !strcmp(a->hash, b->hash) &&
           b->sched.pred == CD_PRED_V && !same_weights(a->unet.w, b->unet.w, why, sizeof why) &&
           !same_weights(a->clip.w, b->clip.w, why, sizeof why);
  if (rc) snprintf(why, sizeof why, "%s", cd_last_error());
  cd_sd_free(a);
  cd_sd_free(b);
  test_rmtree(tmp);
  CHECKF(ok, "%s", why);
}

/* ---------------------------------------------------------------- options */

TEST(options_skip_and_prediction) {
  char p[1024];
  NEED_GOLDEN(p, "tiny-sd1_original.safetensors");
  cd_load_opts o = {0};
  o.no_vae = 1;
  o.no_text = 1;
  o.prediction = "v";
  cd_sd_model *m = NULL;
  CHECK_OK(cd_sd_load(p, &o, &m));
  int ok = m->unet.w && !m->vae.w && !m->clip.w && m->sched.pred == CD_PRED_V &&
           m->family == CD_FAMILY_SD1 && cd_sd_params(m->unet.w) == 2147044;
  cd_sd_free(m);
  CHECK(ok);
  o.prediction = "x";
  CHECK(cd_sd_load(p, &o, &m) != 0 && m == NULL);
}

/* no vocabulary anywhere -> m->tok NULL (commands needing it ask for --vocab) */
TEST(single_file_without_vocab) {
  char rel[1024], p[PATH_MAX], tmp[64], link[1200], voc[1024];
  NEED_GOLDEN(rel, "tiny-sd1_original.safetensors");
  NEED_GOLDEN(voc, "bpe_simple_vocab_16e6.txt.gz");
  CHECK(realpath(rel, p));
  CHECK(mktmp(tmp, sizeof tmp));
  snprintf(link, sizeof link, "%s/model.safetensors", tmp);
  CHECK(symlink(p, link) == 0);
  char *saved = getenv("CDIFF_VOCAB") ? cd_strdup(getenv("CDIFF_VOCAB")) : NULL;
  unsetenv("CDIFF_VOCAB");
  cd_sd_model *m = NULL;
  /* no yaml either: the LDM defaults (32 groups, SD 1.x's 8 heads) are assumed; the VAE's
   * 16-channel level cannot have 32 groups, so only the UNet and text encoder are loaded */
  cd_load_opts o = {0};
  o.no_vae = 1;
  int rc = cd_sd_load(link, &o, &m);
  int ok = rc == 0 && m->tok == NULL && m->unet.cfg.norm_groups == 32 && m->unet.cfg.heads[0] == 8;
  cd_sd_free(m);
  /* an explicit vocabulary */
  if (ok) {
    o.vocab = voc;
    rc = cd_sd_load(link, &o, &m);
    ok = rc == 0 && m->tok && cd_tokenizer_pad(m->tok) == 49407;
    cd_sd_free(m);
  }
  if (saved) { setenv("CDIFF_VOCAB", saved, 1); free(saved); }
  test_rmtree(tmp);
  CHECKF(ok, "rc %d: %s", rc, rc ? cd_last_error() : "");
}

/* ---------------------------------------------------------------- errors */

TEST(error_truncated) {
  char p[1024], tmp[64], out[1200];
  NEED_GOLDEN(p, "tiny-sd1_original.safetensors");
  char *data;
  size_t n;
  CHECK_OK(cd_read_file(p, &data, &n));
  CHECK(mktmp(tmp, sizeof tmp));
  snprintf(out, sizeof out, "%s/trunc.safetensors", tmp);
  int wrc = cd_write_file_atomic(out, data, n / 2);
  free(data);
  cd_sd_model *m = (cd_sd_model *)1;
  int rc = wrc ? 0 : cd_sd_load(out, NULL, &m);
  test_rmtree(tmp);
  CHECK(wrc == 0);
  CHECK(rc != 0 && m == NULL && err_has("trunc.safetensors"));
}

static int write_small(const char *path, const char *const *names, int n) {
  static float z[4 * 4 * 3 * 3];
  cd_tensor_out *o = cd_calloc((size_t)n, sizeof *o);
  for (int i = 0; i < n; i++) {
    o[i].name = names[i];
    o[i].dtype = CD_DT_F32;
    o[i].ndim = 4;
    o[i].shape[0] = o[i].shape[1] = 4;
    o[i].shape[2] = o[i].shape[3] = 3;
    o[i].data = z;
  }
  int rc = cd_safetensors_write(path, o, n, NULL, 0);
  free(o);
  return rc;
}

TEST(error_vae_only_and_sdxl) {
  char tmp[64], a[1200], b[1200];
  CHECK(mktmp(tmp, sizeof tmp));
  snprintf(a, sizeof a, "%s/vae.safetensors", tmp);
  snprintf(b, sizeof b, "%s/xl.safetensors", tmp);
  static const char *const vae[] = {"first_stage_model.encoder.conv_in.weight",
                                    "first_stage_model.decoder.conv_out.weight"};
  static const char *const xl[] = {"model.diffusion_model.input_blocks.0.0.weight",
                                   "conditioner.embedders.0.transformer.text_model.x.weight"};
  int w1 = write_small(a, vae, 2), w2 = write_small(b, xl, 2);
  cd_sd_model *m = NULL;
  int r1 = w1 ? 0 : cd_sd_load(a, NULL, &m);
  int e1 = err_has("does not look like a Stable Diffusion checkpoint") && err_has("vae.safetensors");
  int r2 = w2 ? 0 : cd_sd_load(b, NULL, &m);
  int e2 = err_has("SDXL needs both text encoders");
  test_rmtree(tmp);
  CHECK(w1 == 0 && w2 == 0);
  CHECK(r1 != 0 && e1);
  CHECK(r2 != 0 && e2);
}

/* label_emb beside an SD 2.x OpenCLIP encoder is SD 2.x unCLIP, not SDXL: refused by name */
TEST(error_unclip_is_not_sdxl) {
  char tmp[64], a[1200];
  CHECK(mktmp(tmp, sizeof tmp));
  snprintf(a, sizeof a, "%s/unclip.safetensors", tmp);
  static const char *const k[] = {"model.diffusion_model.input_blocks.0.0.weight",
                                  "model.diffusion_model.label_emb.0.0.weight",
                                  "cond_stage_model.model.transformer.resblocks.0.ln_1.weight",
                                  "first_stage_model.encoder.conv_in.weight"};
  int w = write_small(a, k, 4);
  cd_sd_model *m = NULL;
  int r = w ? 0 : cd_sd_load(a, NULL, &m);
  int e = err_has("unCLIP") && err_has("unclip.safetensors");
  cd_sd_free(m);
  test_rmtree(tmp);
  CHECK(w == 0);
  CHECK(r != 0 && e);
}

TEST(error_folder_and_random_ckpt) {
  char tmp[64], f[1200];
  CHECK(mktmp(tmp, sizeof tmp));
  cd_sd_model *m = NULL;
  int r1 = cd_sd_load(tmp, NULL, &m);
  int e1 = err_has("model_index.json");
  snprintf(f, sizeof f, "%s/random.ckpt", tmp);
  unsigned char junk[4096];
  cd_rng rng;
  cd_rng_seed(&rng, 7);
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)cd_rng_u64(&rng);
  int w = cd_write_file_atomic(f, junk, sizeof junk);
  int r2 = w ? 0 : cd_sd_load(f, NULL, &m);
  int e2 = err_has("random.ckpt");
  /* a missing path */
  int r3 = cd_sd_load("/nonexistent/cdiff/model.safetensors", NULL, &m);
  test_rmtree(tmp);
  CHECK(r1 != 0 && e1);
  CHECK(w == 0 && r2 != 0 && e2);
  CHECK(r3 != 0 && m == NULL);
}

/* a copy of a real checkpoint with one tensor replaced or added */
static int rewrite_with(const char *rel, const char *tmp, const char *replace, const cd_tensor_out *t,
                        char *out, size_t cap) {
  char p[1024];
  if (test_golden_need(p, sizeof p, rel)) return -1;
  cd_tensor_file *f;
  if (cd_tensor_file_open(p, &f)) return -1;
  cd_tensor_out *o = file_records(f, 1);
  int n = cd_tf_count(f), found = 0;
  for (int i = 0; i < n && replace; i++)
    if (!strcmp(o[i].name, replace)) { o[i] = *t; found = 1; }
  if (!found) o[n++] = *t;
  snprintf(out, cap, "%s/edited.safetensors", tmp);
  /* its .yaml beside it (8 groups, heads) */
  char yrel[1024], yabs[PATH_MAX], ylink[1200];
  snprintf(yrel, sizeof yrel, "%.*s.yaml", (int)(strlen(p) - strlen(".safetensors")), p);
  snprintf(ylink, sizeof ylink, "%s/edited.yaml", tmp);
  remove(ylink);
  if (realpath(yrel, yabs) && symlink(yabs, ylink)) return -1;
  int rc = cd_safetensors_write(out, o, n, NULL, 0);
  free(o);
  cd_tensor_file_close(f);
  return rc;
}

TEST(error_unknown_key_and_bad_shapes) {
  char p[1024], tmp[64], out[1200];
  NEED_GOLDEN(p, "tiny-sd1_original.safetensors");
  CHECK(mktmp(tmp, sizeof tmp));
  static float z[64 * 48]; /* room for the largest replacement below */
  cd_tensor_out t = {"model.diffusion_model.input_blocks.1.0.extra.weight", CD_DT_F32, 1, {32}, z};
  cd_sd_model *m = NULL;
  int ok1 = rewrite_with("tiny-sd1_original.safetensors", tmp, NULL, &t, out, sizeof out) == 0 &&
            cd_sd_load(out, NULL, &m) != 0 && err_has("input_blocks.1.0.extra.weight");
  /* one cross-attention layer with another context width */
  cd_tensor_out k = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                     CD_DT_F32, 2, {32, 8}, z};
  int ok2 = rewrite_with("tiny-sd1_original.safetensors", tmp, k.name, &k, out, sizeof out) == 0 &&
            cd_sd_load(out, NULL, &m) != 0 && err_has("attn2.to_k.weight");
  /* OpenCLIP in_proj_weight not [3d, d] */
  cd_tensor_out q = {"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", CD_DT_F32, 2,
                     {48, 24}, z};
  int ok3 = rewrite_with("tiny-sd2_original.safetensors", tmp, q.name, &q, out, sizeof out) == 0 &&
            cd_sd_load(out, NULL, &m) != 0 && err_has("in_proj_weight");
  /* a UNet level whose resnet input does not match the previous level */
  cd_tensor_out r = {"model.diffusion_model.input_blocks.4.0.in_layers.2.weight", CD_DT_F32, 4,
                     {64, 48, 1, 1}, z};
  int ok4 = rewrite_with("tiny-sd1_original.safetensors", tmp, r.name, &r, out, sizeof out) == 0 &&
            cd_sd_load(out, NULL, &m) != 0 && err_has("input_blocks.4.0");
  const char *last = cd_last_error();
  char msg[512];
  snprintf(msg, sizeof msg, "%s", last);
  test_rmtree(tmp);
  CHECKF(ok1 && ok2 && ok3 && ok4, "%d %d %d %d (last error: %s)", ok1, ok2, ok3, ok4, msg);
}

/* ---------------------------------------------------------------- fp16 */

static int link_into(const char *src_dir, const char *dst_dir, const char *name) {
  char a[2 * PATH_MAX], b[2 * PATH_MAX];
  if (snprintf(a, sizeof a, "%s/%s", src_dir, name) >= (int)sizeof a ||
      snprintf(b, sizeof b, "%s/%s", dst_dir, name) >= (int)sizeof b)
    return -1;
  return symlink(a, b);
}

TEST(fp16_unet_folder) {
  char src[1024], tmp[64], path[1200];
  NEED_GOLDEN(src, "tiny-sd1/model_index.json");
  CHECK(test_golden_path(src, sizeof src, "tiny-sd1") == 0);
  char abs[1024];
  CHECK(realpath(src, abs));
  CHECK(mktmp(tmp, sizeof tmp));
  int ok = 1;
  static const char *const parts[] = {"model_index.json", "text_encoder", "vae", "tokenizer", "scheduler"};
  for (int i = 0; i < 5; i++) ok &= link_into(abs, tmp, parts[i]) == 0;
  snprintf(path, sizeof path, "%s/unet", tmp);
  ok &= mkdir(path, 0777) == 0;
  char usrc[1100];
  snprintf(usrc, sizeof usrc, "%s/unet", abs);
  ok &= link_into(usrc, path, "config.json") == 0;
  /* fp16 copy of the UNet weights */
  cd_tensor_file *f = NULL;
  snprintf(usrc, sizeof usrc, "%s/unet/diffusion_pytorch_model.safetensors", abs);
  ok &= cd_tensor_file_open(usrc, &f) == 0;
  if (ok) {
    int n = cd_tf_count(f);
    cd_tensor_out *o = file_records(f, 0);
    for (int i = 0; i < n; i++) {
      const cd_tensor_info *t = cd_tf_at(f, i);
      int64_t ne = cd_tensor_numel(t);
      float *x = cd_malloc((size_t)ne * sizeof(float));
      uint16_t *h = cd_malloc((size_t)ne * sizeof(uint16_t));
      cd_tf_read_f32(f, t, x);
      for (int64_t j = 0; j < ne; j++) h[j] = cd_f32_to_f16(x[j]);
      free(x);
      o[i].dtype = CD_DT_F16;
      o[i].data = h;
    }
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.fp16.safetensors", tmp);
    ok &= cd_safetensors_write(path, o, n, NULL, 0) == 0;
    for (int i = 0; i < n; i++) free((void *)o[i].data);
    free(o);
  }
  cd_tensor_file_close(f);
  cd_sd_model *a = load("tiny-sd1"), *b = NULL;
  if (ok && cd_sd_load(tmp, NULL, &b)) {
    fprintf(stderr, "fp16 load: %s\n", cd_last_error());
    ok = 0;
  }
  double maxrel = 0;
  int exact = 1;
  if (ok && a) {
    ok = !strcmp(b->dtype[1], "float16") && !strcmp(b->dtype[2], "float32") &&
         cd_weights_count(a->unet.w) == cd_weights_count(b->unet.w) && strcmp(a->hash, b->hash);
    for (int i = 0; ok && i < cd_weights_count(a->unet.w); i++) {
      cd_weight *x = cd_weights_at(a->unet.w, i), *y = cd_weights_get(b->unet.w, x->name);
      if (!y) { ok = 0; break; }
      /* the checkpoint's own dtype stays in memory for weights of 2+ dims */
      if (y->type != (y->ndim >= 2 ? CD_TYPE_F16 : CD_TYPE_F32)) { ok = 0; break; }
      const float *yv = cd_weight_f32(y);
      int64_t ne = 1;
      for (int d = 0; d < x->ndim; d++) ne *= x->ne[d];
      for (int64_t j = 0; j < ne; j++) {
        double e = fabs((double)x->data[j] - yv[j]);
        if (e > fabs(x->data[j]) * (1.0 / 2048) + 6e-8) ok = 0; /* half an fp16 ulp, or subnormal step */
        if (x->data[j] != 0) maxrel = fmax(maxrel, e / fabs(x->data[j]));
        if (yv[j] != cd_f16_to_f32(cd_f32_to_f16(x->data[j]))) exact = 0;
      }
    }
  } else {
    ok = 0;
  }
  cd_sd_free(a);
  cd_sd_free(b);
  test_rmtree(tmp);
  CHECKF(ok && exact, "fp16 weights differ (max rel %.3g, exact round trip %d)", maxrel, exact);
}

/* transformers 5 text encoders (no "text_model." prefix, a position_ids buffer) and old
 * diffusers VAEs (mid attention query/key/value/proj_attn as 1x1 convs) load the same */
static int rewrite_component(const char *abs, const char *tmp, const char *comp, const char *file,
                             int vae) {
  char src[2 * PATH_MAX], dst[2 * PATH_MAX];
  snprintf(dst, sizeof dst, "%s/%s", tmp, comp);
  if (mkdir(dst, 0777)) return -1;
  snprintf(src, sizeof src, "%s/%s", abs, comp);
  if (link_into(src, dst, "config.json")) return -1;
  snprintf(src, sizeof src, "%s/%s/%s", abs, comp, file);
  cd_tensor_file *f;
  if (cd_tensor_file_open(src, &f)) return -1;
  int n = cd_tf_count(f);
  cd_tensor_out *o = file_records(f, 1);
  char(*names)[160] = cd_calloc((size_t)n, sizeof *names);
  static const int64_t pos_ids[77] = {0};
  for (int i = 0; i < n; i++) {
    const char *k = o[i].name;
    if (!vae) {
      snprintf(names[i], sizeof names[i], "%s", k + strlen("text_model."));
    } else {
      static const char *const from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
      static const char *const to[] = {".query.", ".key.", ".value.", ".proj_attn."};
      snprintf(names[i], sizeof names[i], "%s", k);
      for (int j = 0; j < 4; j++) {
        const char *p = strstr(k, from[j]);
        if (p && strstr(k, "mid_block.attentions.0.")) {
          snprintf(names[i], sizeof names[i], "%.*s%s%s", (int)(p - k), k, to[j], p + strlen(from[j]));
          if (o[i].ndim == 2) o[i].ndim = 4, o[i].shape[2] = o[i].shape[3] = 1;
        }
      }
    }
    o[i].name = names[i];
  }
  if (!vae) {
    cd_tensor_out t = {"text_model.embeddings.position_ids", CD_DT_I64, 2, {1, 77}, pos_ids};
    o[n++] = t;
  }
  snprintf(dst, sizeof dst, "%s/%s/%s", tmp, comp, file);
  int rc = cd_safetensors_write(dst, o, n, NULL, 0);
  free(names);
  free(o);
  cd_tensor_file_close(f);
  return rc;
}

TEST(folder_legacy_names) {
  char rel[1024], abs[PATH_MAX], tmp[64];
  NEED_GOLDEN(rel, "tiny-sd2/model_index.json");
  CHECK(test_golden_path(rel, sizeof rel, "tiny-sd2") == 0 && realpath(rel, abs));
  CHECK(mktmp(tmp, sizeof tmp));
  int ok = 1;
  static const char *const parts[] = {"model_index.json", "unet", "tokenizer", "scheduler"};
  for (int i = 0; i < 4; i++) ok &= link_into(abs, tmp, parts[i]) == 0;
  ok = ok && rewrite_component(abs, tmp, "text_encoder", "model.safetensors", 0) == 0 &&
       rewrite_component(abs, tmp, "vae", "diffusion_pytorch_model.safetensors", 1) == 0;
  cd_sd_model *a = load("tiny-sd2"), *b = NULL;
  char why[256] = "setup failed";
  if (ok && cd_sd_load(tmp, NULL, &b)) { ok = 0; snprintf(why, sizeof why, "%s", cd_last_error()); }
  ok = ok && a && !same_weights(a->clip.w, b->clip.w, why, sizeof why) &&
       !same_weights(a->vae.w, b->vae.w, why, sizeof why) && !strcmp(a->hash, b->hash);
  cd_sd_free(a);
  cd_sd_free(b);
  test_rmtree(tmp);
  CHECKF(ok, "%s", why);
}

int main(void) {
  RUN(keymap_unet_sd15_topology);
  RUN(keymap_vae_and_openclip);
  RUN(tiny_sd1_folder);
  RUN(tiny_sd2_folder);
  RUN(small4_folder);
  RUN(tiny_sd1_single_file);
  RUN(tiny_sd2_single_file);
  RUN(small4_single_file);
  RUN(ckpt_equals_safetensors);
  RUN(options_skip_and_prediction);
  RUN(single_file_without_vocab);
  RUN(error_truncated);
  RUN(error_vae_only_and_sdxl);
  RUN(error_unclip_is_not_sdxl);
  RUN(error_folder_and_random_ckpt);
  RUN(error_unknown_key_and_bad_shapes);
  RUN(fp16_unet_folder);
  RUN(folder_legacy_names);
  test_tmp_cleanup();
  return test_summary();
}
