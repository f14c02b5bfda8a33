/* test_delta.c - what cdiff writes for a trained delta, key by key, against
 * what diffusers' Custom Diffusion writes and reads:
 *   pytorch_custom_diffusion_weights.safetensors:
 *     <layer>.processor.to_{k,v}_custom_diffusion.weight  F32 [C, ctx] for every attn2 layer
 *   <new1>.safetensors: {"<new1>": F32 [d]}
 * plus cdiff's own file and metadata, round trips through all three layouts
 * (cdiff, diffusers folder, the original repository's delta.ckpt), and a
 * delta applied to the wrong model family. */
#include <cjson/cJSON.h>

#include "custom/delta.h"
#include "custom/train.h"
#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "models/keymap.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "test.h"

/* A delta as training makes it (cd_trainer_to_delta), its weights and token
 * row moved off the base values so that mix-ups show. 1 = skip, 0 = ok, -1 = fail. */
static int make_delta(const char *name, cd_sd_model **mo, cd_delta **out) {
  char mp[1024];
  int g = test_golden_need(mp, sizeof mp, name);
  if (g) return g;
  /* the trainer gives its model the token: train on a model of its own, hand back a fresh one */
  cd_load_opts lo = {0};
  cd_sd_model *m = NULL;
  if (cd_sd_load(mp, &lo, &m) || cd_sd_load(mp, &lo, mo)) {
    snprintf(test_msg, sizeof test_msg, "%s: %s", name, cd_last_error());
    cd_sd_free(m);
    return -1;
  }
  cd_train_opts o;
  cd_train_opts_default(&o);
  o.prior = 0;
  o.res = 64;
  o.ntok = 1;
  cd_trainer t = {0};
  const char toks[1][32] = {"<new1>"}, inits[1][32] = {"ktn"};
  int rc = cd_sd_add_tokens(m, 1, (const char *[]){toks[0]}, (int[]){42170}, NULL, o.tok_id) || cd_trainer_init(&t, m, &o) ||
           cd_trainer_to_delta(&t, toks, inits, out);
  if (rc) snprintf(test_msg, sizeof test_msg, "%s: %s", name, cd_last_error());
  cd_trainer_free(&t);
  cd_sd_free(m);
  if (rc) return -1;
  cd_delta *d = *out;
  for (int i = 0; i < cd_weights_count(d->w); i++) {
    cd_weight *x = cd_weights_at(d->w, i);
    for (int64_t k = 0; k < cd_numel(x->ndim, x->ne); k++) x->data[k] += 0.01f * (float)((k + i) % 7 - 3);
  }
  for (int k = 0; k < d->d; k++) d->embeds[k] += 0.5f;
  d->args = cd_strdup("{\"max_train_steps\":250,\"modifier_token\":[\"<new1>\"]}");
  return 0;
}

#define MAKE(name, m, d) do { int r_ = make_delta(name, &m, &d); if (r_ < 0) cd_sd_free(m); GOLDEN_STATUS(r_); } while (0)

static int same_weights(const cd_delta *a, const cd_delta *b, const char *what) {
  if (cd_weights_count(a->w) != cd_weights_count(b->w)) {
    snprintf(test_msg, sizeof test_msg, "%s: %d weights vs %d", what, cd_weights_count(b->w), cd_weights_count(a->w));
    return -1;
  }
  for (int i = 0; i < cd_weights_count(a->w); i++) {
    cd_weight *x = cd_weights_at(a->w, i), *y = cd_weights_get(b->w, x->name);
    if (!y || y->ndim != x->ndim || memcmp(y->ne, x->ne, sizeof x->ne) || memcmp(x->data, y->data, cd_numel(x->ndim, x->ne) * 4)) {
      snprintf(test_msg, sizeof test_msg, "%s: weight %s missing or different", what, x->name);
      return -1;
    }
  }
  if (a->ntok != b->ntok || a->d != b->d || (a->ntok && memcmp(a->embeds, b->embeds, (size_t)a->ntok * a->d * 4))) {
    snprintf(test_msg, sizeof test_msg, "%s: token embeddings differ (%d tokens of %d vs %d of %d)", what, b->ntok, b->d, a->ntok, a->d);
    return -1;
  }
  for (int i = 0; i < a->ntok; i++)
    if (strcmp(a->tok[i], b->tok[i])) {
      snprintf(test_msg, sizeof test_msg, "%s: token %d is %s, expected %s", what, i, b->tok[i], a->tok[i]);
      return -1;
    }
  return 0;
}

/* saves d to the scratch folder's sub (path in dir) and opens its file `file` */
static int save_and_open(const cd_delta *d, const char *sub, const char *file, char *dir, size_t cap, cd_tensor_file **f) {
  char path[1200];
  snprintf(dir, cap, "%s", test_tmpdir(sub));
  snprintf(path, sizeof path, "%s/%s", dir, file);
  if (cd_delta_save(dir, d)) return -1;
  return cd_safetensors_open(path, f);
}

TEST(diffusers_keys_shapes_dtypes) {
  cd_sd_model *m = NULL;
  cd_delta *d = NULL;
  MAKE("tiny-sd1", m, d);
  char dir[512], path[700];
  cd_tensor_file *f = NULL;
  int rc = save_and_open(d, "sd1", CD_DIFFUSERS_DELTA_FILE, dir, sizeof dir, &f);
  char layers[32][96];
  int nl = cd_unet_attn2_layers(&m->unet.cfg, layers, 32);
  if (rc) { cd_delta_free(d); cd_sd_free(m); CHECK_OK(rc); }
  int bad = 0;
  char why[300] = "";
  if (nl != 11 || cd_tf_count(f) != 2 * nl) { bad = 1; snprintf(why, sizeof why, "%d layers, %d tensors", nl, cd_tf_count(f)); }
  for (int l = 0; l < nl && !bad; l++)
    for (int kv = 0; kv < 2 && !bad; kv++) {
      char key[200], base[200];
      snprintf(key, sizeof key, "%s.processor.to_%c_custom_diffusion.weight", layers[l], kv ? 'v' : 'k');
      snprintf(base, sizeof base, "%s.to_%c.weight", layers[l], kv ? 'v' : 'k');
      const cd_tensor_info *t = cd_tf_find(f, key);
      cd_weight *w = cd_weights_get(m->unet.w, base), *dw = cd_weights_get(d->w, base);
      if (!t || !w || !dw || t->dtype != CD_DT_F32 || t->ndim != 2 || t->shape[0] != w->ne[0] || t->shape[1] != 16 ||
          memcmp(t->data, dw->data, t->nbytes)) {
        bad = 1;
        snprintf(why, sizeof why, "%s missing, not F32 [%ld, 16] or not the delta's values", key, w ? (long)w->ne[0] : -1L);
      }
    }
  const char *fmt = cd_tf_meta(f, "format");
  if (!bad && (!fmt || strcmp(fmt, "pt"))) { bad = 1; snprintf(why, sizeof why, "metadata format is not pt"); }
  cd_tensor_file_close(f);
  /* <new1>.safetensors = {"<new1>": F32 [16]} */
  snprintf(path, sizeof path, "%s/<new1>.safetensors", dir);
  if (!bad && cd_safetensors_open(path, &f)) { bad = 1; snprintf(why, sizeof why, "%s", cd_last_error()); f = NULL; }
  if (f) {
    const cd_tensor_info *t = cd_tf_find(f, "<new1>");
    if (cd_tf_count(f) != 1 || !t || t->dtype != CD_DT_F32 || t->ndim != 1 || t->shape[0] != 16 || memcmp(t->data, d->embeds, 64)) {
      bad = 1;
      snprintf(why, sizeof why, "<new1>.safetensors is not {\"<new1>\": F32 [16]} with the row");
    }
    cd_tensor_file_close(f);
  }
  cd_delta_free(d);
  cd_sd_free(m);
  CHECKF(!bad, "%s", why);
}

TEST(cdiff_file_and_metadata) {
  cd_sd_model *m = NULL;
  cd_delta *d = NULL;
  MAKE("tiny-sd1", m, d);
  char dir[512];
  cd_tensor_file *f = NULL;
  int rc = save_and_open(d, "sd1_meta", CD_DELTA_FILE, dir, sizeof dir, &f);
  if (rc) { cd_delta_free(d); cd_sd_free(m); CHECK_OK(rc); }
  struct { const char *k, *v; } want[] = {{"format", "cdiff-delta"}, {"version", "1"}, {"family", "sd1"}, {"context_dim", "16"},
                                          {"text_width", "16"}, {"tokens", "[\"<new1>\"]"}, {"initializers", "[\"ktn\"]"},
                                          {"train", "crossattn_kv"}, {"base_hash", m->hash}, {"lowrank", "0"},
                                          {"args", "{\"max_train_steps\":250,\"modifier_token\":[\"<new1>\"]}"}};
  char why[300] = "";
  for (size_t i = 0; i < sizeof want / sizeof want[0] && !why[0]; i++) {
    const char *v = cd_tf_meta(f, want[i].k);
    if (!v || strcmp(v, want[i].v)) snprintf(why, sizeof why, "metadata %s = %s, expected %s", want[i].k, v ? v : "(absent)", want[i].v);
  }
  const cd_tensor_info *e = cd_tf_find(f, "modifier_tokens");
  if (!why[0] && (!e || e->dtype != CD_DT_F32 || e->ndim != 2 || e->shape[0] != 1 || e->shape[1] != 16))
    snprintf(why, sizeof why, "modifier_tokens is not F32 [1, 16]");
  if (!why[0] && cd_tf_count(f) != cd_weights_count(d->w) + 1) snprintf(why, sizeof why, "%d tensors", cd_tf_count(f));
  for (int i = 0; i < cd_weights_count(d->w) && !why[0]; i++) {
    cd_weight *x = cd_weights_at(d->w, i);
    const cd_tensor_info *t = cd_tf_find(f, x->name);
    if (!t || t->dtype != CD_DT_F32 || !strstr(x->name, ".attn2.to_")) snprintf(why, sizeof why, "tensor %s missing or not F32", x->name);
  }
  cd_tensor_file_close(f);
  cd_delta_free(d);
  cd_sd_free(m);
  CHECKF(!why[0], "%s", why);
}

TEST(round_trips) {
  cd_sd_model *m = NULL;
  cd_delta *d = NULL;
  MAKE("tiny-sd1", m, d);
  char dir[512], path[700];
  snprintf(dir, sizeof dir, "%s", test_tmpdir("sd1_rt"));
  cd_delta *a = NULL, *b = NULL;
  int rc = cd_delta_save(dir, d);
  if (!rc) rc = cd_delta_load(dir, m, &a); /* the folder: cdiff's file wins */
  snprintf(path, sizeof path, "%s/%s", dir, CD_DIFFUSERS_DELTA_FILE);
  if (!rc) rc = cd_delta_load(path, m, &b); /* diffusers' weights + <new1>.safetensors beside them */
  int ra = rc ? -1 : same_weights(d, a, "cdiff layout");
  int rb = rc || ra ? -1 : same_weights(d, b, "diffusers layout");
  int la = a && !strcmp(a->layout, "cdiff") && a->family == CD_FAMILY_SD1 && !strcmp(a->init[0], "ktn") && a->args &&
           !strcmp(a->args, d->args) && !strcmp(a->base_hash, m->hash);
  int lb = b && !strcmp(b->layout, "diffusers") && !strcmp(b->train, "crossattn_kv");
  /* a loaded delta applies: the model's K/V weights and the new row become the delta's */
  int applied = 0;
  if (!rc && !ra && !rb && !cd_delta_resolve(b, m) && !cd_delta_apply(m, b)) {
    cd_weight *x = cd_weights_at(d->w, 0), *y = cd_weights_get(m->unet.w, x->name);
    cd_weight *tab = cd_weights_get(m->clip.w, "text_model.embeddings.token_embedding.weight");
    applied = y && !memcmp(x->data, y->data, cd_numel(x->ndim, x->ne) * 4) && tab->ne[0] == 49409 &&
              !memcmp(tab->data + (size_t)49408 * 16, d->embeds, 64) && cd_tokenizer_lookup(m->tok, "<new1>") == 49408;
  }
  cd_delta_free(a);
  cd_delta_free(b);
  cd_delta_free(d);
  cd_sd_free(m);
  CHECK_OK(rc);
  if (ra || rb) { test_failed_flag = 1; return; }
  CHECKF(la && lb, "layout/metadata after loading: cdiff %d diffusers %d", la, lb);
  CHECKF(applied, "the loaded diffusers-layout delta did not apply its weights and token");
}

/* diffusers' older PyTorch files: pytorch_custom_diffusion_weights.bin and
 * <new1>.bin (torch zip pickles), read through the restricted unpickler */
TEST(diffusers_bin_layout_loads) {
  cd_sd_model *m = NULL;
  cd_delta *d = NULL;
  MAKE("tiny-sd1", m, d);
  char dir[512], st_dir[512], path[700];
  snprintf(st_dir, sizeof st_dir, "%s", test_tmpdir("sd1_st"));
  snprintf(dir, sizeof dir, "%s", test_tmpdir("sd1_bin"));
  int rc = cd_delta_save(st_dir, d) || cd_mkdir_p(dir);
  cd_tensor_file *f = NULL;
  snprintf(path, sizeof path, "%s/%s", st_dir, CD_DIFFUSERS_DELTA_FILE);
  if (!rc) rc = cd_safetensors_open(path, &f);
  if (!rc) { /* same tensors, torch format */
    int n = cd_tf_count(f);
    cd_tensor_out *t = cd_calloc(n, sizeof *t);
    for (int i = 0; i < n; i++) {
      const cd_tensor_info *x = cd_tf_at(f, i);
      t[i] = (cd_tensor_out){.name = x->name, .dtype = x->dtype, .ndim = x->ndim, .data = x->data};
      memcpy(t[i].shape, x->shape, sizeof t[i].shape);
    }
    snprintf(path, sizeof path, "%s/pytorch_custom_diffusion_weights.bin", dir);
    rc = cd_ckpt_write(path, t, n);
    free(t);
    cd_tensor_out e = {.name = "<new1>", .dtype = CD_DT_F32, .ndim = 1, .shape = {d->d}, .data = d->embeds};
    snprintf(path, sizeof path, "%s/<new1>.bin", dir);
    if (!rc) rc = cd_ckpt_write(path, &e, 1);
  }
  cd_tensor_file_close(f);
  cd_delta *b = NULL;
  if (!rc) rc = cd_delta_load(dir, m, &b);
  int same = rc ? -1 : same_weights(d, b, "diffusers .bin layout");
  int layout = b && !strcmp(b->layout, "diffusers");
  cd_delta_free(b);
  cd_delta_free(d);
  cd_sd_free(m);
  CHECK_OK(rc);
  if (same) { test_failed_flag = 1; return; }
  CHECK(layout);
}

/* The original layout's name of a diffusers UNet parameter: the keymap's
 * module rule whose diffusers prefix matches, checked by mapping it back. */
static int original_name(const cd_keymap *km, const char *dname, char *out, size_t cap) {
  const cd_km_rule *best = NULL;
  for (int i = 0; i < km->n; i++) {
    const cd_km_rule *r = &km->r[i];
    size_t L = strlen(r->dst);
    if (!r->exact && L && !strncmp(dname, r->dst, L) && (!best || L > strlen(best->dst))) best = r;
  }
  if (!best) return -1;
  snprintf(out, cap, "%s%s", best->src, dname + strlen(best->dst));
  cd_km_result res;
  return cd_keymap_map(km, out, &res) == CD_KM_COPY && !strcmp(res.dst[0], dname) ? 0 : -1;
}

TEST(original_layout_loads) {
  cd_sd_model *m = NULL;
  cd_delta *d = NULL;
  MAKE("tiny-sd1", m, d);
  cd_keymap km = {0};
  int rc = cd_keymap_unet(&km, &m->unet.cfg);
  int n = cd_weights_count(d->w);
  cd_tensor_out *t = cd_calloc(n + 1, sizeof *t);
  char(*names)[256] = cd_calloc(n + 1, 256);
  char why[300] = "";
  for (int i = 0; i < n && !rc; i++) {
    cd_weight *x = cd_weights_at(d->w, i);
    char orig[200];
    if (original_name(&km, x->name, orig, sizeof orig)) {
      snprintf(why, sizeof why, "no original name for %s", x->name);
      rc = -1;
      break;
    }
    snprintf(names[i], 256, "model.diffusion_model.%s", orig);
    t[i] = (cd_tensor_out){.name = names[i], .dtype = CD_DT_F32, .ndim = 2, .shape = {x->ne[0], x->ne[1]}, .data = x->data};
  }
  /* tiny-sd1's first cross-attention is input_blocks.1.1, as in SD 1.x */
  if (!rc && !strstr(names[0], "input_blocks.1.1.transformer_blocks.0.attn2.to_") && !strstr(names[0], "middle_block") &&
      !strstr(names[0], "output_blocks"))
    snprintf(why, sizeof why, "unexpected original name %s", names[0]);
  if (getenv("CDIFF_TEST_VERBOSE") && !rc) printf("  %s\n  %s\n", names[0], names[n - 1]);
  t[n] = (cd_tensor_out){.name = "embed", .dtype = CD_DT_F32, .ndim = 2, .shape = {1, 16}, .data = d->embeds};
  char path[600];
  snprintf(path, sizeof path, "%s", test_tmpdir("delta.ckpt"));
  if (!rc) rc = cd_ckpt_write(path, t, n + 1);
  cd_delta *o = NULL;
  if (!rc) rc = cd_delta_load(path, m, &o);
  int same = !rc ? same_weights(d, o, "original layout") : -1;
  int lay = o && !strcmp(o->layout, "original");
  cd_delta_free(o);
  cd_keymap_free(&km);
  free(t);
  free(names);
  cd_delta_free(d);
  cd_sd_free(m);
  CHECKF(!why[0], "%s", why);
  CHECK_OK(rc);
  if (same) { test_failed_flag = 1; return; }
  CHECK(lay);
}

TEST(wrong_family_is_refused) {
  cd_sd_model *m1 = NULL, *m2 = NULL;
  cd_delta *d1 = NULL, *d2 = NULL;
  MAKE("tiny-sd1", m1, d1);
  int r2 = make_delta("tiny-sd2", &m2, &d2);
  if (r2) { cd_delta_free(d1); cd_sd_free(m1); cd_sd_free(m2); GOLDEN_STATUS(r2); }
  char dir1[512], dir2[512];
  snprintf(dir1, sizeof dir1, "%s", test_tmpdir("fam_sd1"));
  snprintf(dir2, sizeof dir2, "%s", test_tmpdir("fam_sd2"));
  int rc = cd_delta_save(dir1, d1) || cd_delta_save(dir2, d2) ? -1 : 0;
  char e1[512] = "", e2[512] = "", e3[512] = "";
  int a1 = rc ? 0 : cd_delta_apply_path(m1, dir2); /* a tiny-sd2 delta on tiny-sd1 */
  snprintf(e1, sizeof e1, "%s", cd_last_error());
  int a2 = rc ? 0 : cd_delta_apply_path(m2, dir1);
  snprintf(e2, sizeof e2, "%s", cd_last_error());
  /* diffusers' file carries no family: the K/V shapes (context 16 vs 24) give it away */
  char p[700];
  snprintf(p, sizeof p, "%s/%s", dir2, CD_DIFFUSERS_DELTA_FILE);
  int a3 = rc ? 0 : cd_delta_apply_path(m1, p);
  snprintf(e3, sizeof e3, "%s", cd_last_error());
  if (getenv("CDIFF_TEST_VERBOSE")) printf("  %s\n  %s\n  %s\n", e1, e2, e3);
  int untouched = m1->ndeltas == 0 && cd_tokenizer_lookup(m1->tok, "<new1>") < 0;
  cd_delta_free(d1);
  cd_delta_free(d2);
  cd_sd_free(m1);
  cd_sd_free(m2);
  CHECK_OK(rc);
  CHECKF(a1 && strstr(e1, "SD 2") && strstr(e1, "SD 1"), "sd2 delta on sd1: %d '%s'", a1, e1);
  CHECKF(a2 && strstr(e2, "SD 1") && strstr(e2, "SD 2"), "sd1 delta on sd2: %d '%s'", a2, e2);
  CHECKF(a3 && (strstr(e3, "width") || strstr(e3, "shape")), "diffusers sd2 delta on sd1: %d '%s'", a3, e3);
  CHECK(untouched);
}

int main(void) {
  RUN(diffusers_keys_shapes_dtypes);
  RUN(cdiff_file_and_metadata);
  RUN(round_trips);
  RUN(diffusers_bin_layout_loads);
  RUN(original_layout_loads);
  RUN(wrong_family_is_refused);
  test_tmp_cleanup();
  return test_summary();
}
