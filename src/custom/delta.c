/* delta.c - reading, checking, applying and writing Custom Diffusion deltas (see delta.h). */
#include "delta.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "custom/lowrank.h"
#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "models/keymap.h"
#include "models/token_table.h"

cd_delta *cd_delta_new(void) {
  cd_delta *d = cd_calloc(1, sizeof *d);
  d->w = cd_weights_new();
  return d;
}

void cd_delta_free(cd_delta *d) {
  if (!d) return;
  cd_weights_free(d->w);
  free(d->embeds);
  free(d->embeds2);
  free(d->args);
  free(d);
}

static int put_tensor(cd_delta *d, const cd_tensor_file *f, const cd_tensor_info *t, const char *name) {
  if (t->ndim < 1 || t->ndim > 4) return cd_set_error("%s: tensor %s has %d dimensions", cd_tf_path(f), t->name, t->ndim);
  int64_t n = cd_tensor_numel(t);
  float *x = cd_malloc((n ? n : 1) * sizeof(float));
  if (cd_tf_read_f32(f, t, x)) {
    free(x);
    return -1;
  }
  return cd_weights_put(d->w, name, t->ndim, t->shape, x);
}

/* e2/width2: the token's row in SDXL's second table (NULL/0 for one encoder); every token
 * of a delta has one or none */
static int add_token2(cd_delta *d, const char *tok, const char *init, const float *e, int width, const float *e2,
                      int width2, const char *src) {
  if (d->ntok >= CD_DELTA_MAX_TOKENS) return cd_set_error("%s: more than %d modifier tokens", src, CD_DELTA_MAX_TOKENS);
  if (d->d && d->d != width) return cd_set_error("%s: token %s has width %d, others %d", src, tok, width, d->d);
  if (d->ntok && (d->d2 != (e2 ? width2 : 0)))
    return cd_set_error("%s: token %s has a second-encoder row of width %d, others %d", src, tok, e2 ? width2 : 0, d->d2);
  if (strlen(tok) >= sizeof d->tok[0]) return cd_set_error("%s: token name too long", src);
  d->d = width;
  d->embeds = cd_realloc(d->embeds, (size_t)(d->ntok + 1) * width * sizeof(float));
  memcpy(d->embeds + (size_t)d->ntok * width, e, width * sizeof(float));
  if (e2) {
    d->d2 = width2;
    d->embeds2 = cd_realloc(d->embeds2, (size_t)(d->ntok + 1) * width2 * sizeof(float));
    memcpy(d->embeds2 + (size_t)d->ntok * width2, e2, width2 * sizeof(float));
  }
  snprintf(d->tok[d->ntok], sizeof d->tok[0], "%s", tok);
  snprintf(d->init[d->ntok], sizeof d->init[0], "%s", init ? init : "");
  d->ntok++;
  return 0;
}

static int add_token(cd_delta *d, const char *tok, const char *init, const float *e, int width, const char *src) {
  return add_token2(d, tok, init, e, width, NULL, 0, src);
}

/* ---- cdiff's own file ---- */
static int json_list(const char *txt, char out[][32], int cap, const char *what, const char *path) {
  if (!txt) return 0;
  cJSON *j = cJSON_Parse(txt);
  if (!j || !cJSON_IsArray(j)) {
    cJSON_Delete(j);
    return cd_set_error("%s: metadata '%s' is not a JSON list", path, what);
  }
  int n = 0;
  cJSON *it;
  cJSON_ArrayForEach(it, j) {
    if (!cJSON_IsString(it) || n >= cap) {
      cJSON_Delete(j);
      return cd_set_error("%s: metadata '%s' has a bad entry", path, what);
    }
    snprintf(out[n++], 32, "%s", it->valuestring);
  }
  cJSON_Delete(j);
  return n;
}

static int load_cdiff(const cd_tensor_file *f, cd_delta *d) {
  const char *path = cd_tf_path(f), *v;
  snprintf(d->layout, sizeof d->layout, "cdiff");
  if ((v = cd_tf_meta(f, "family")))
    d->family = !strcmp(v, "sdxl") ? CD_FAMILY_SDXL : !strcmp(v, "sd2") ? CD_FAMILY_SD2 : !strcmp(v, "sd1") ? CD_FAMILY_SD1 : 0;
  if ((v = cd_tf_meta(f, "context_dim"))) d->ctx = atoi(v);
  if ((v = cd_tf_meta(f, "base_hash"))) snprintf(d->base_hash, sizeof d->base_hash, "%s", v);
  if ((v = cd_tf_meta(f, "train"))) snprintf(d->train, sizeof d->train, "%s", v);
  if ((v = cd_tf_meta(f, "lowrank"))) d->lowrank = atoi(v);
  if ((v = cd_tf_meta(f, "ratio"))) d->ratio = atof(v);
  if ((v = cd_tf_meta(f, "args"))) d->args = cd_strdup(v);
  char toks[CD_DELTA_MAX_TOKENS][32], inits[CD_DELTA_MAX_TOKENS][32];
  int nt = json_list(cd_tf_meta(f, "tokens"), toks, CD_DELTA_MAX_TOKENS, "tokens", path);
  if (nt < 0) return -1;
  int ni = json_list(cd_tf_meta(f, "initializers"), inits, CD_DELTA_MAX_TOKENS, "initializers", path);
  if (ni < 0) return -1;
  const cd_tensor_info *emb = cd_tf_find(f, "modifier_tokens");
  if (nt && (!emb || emb->ndim != 2 || emb->shape[0] != nt))
    return cd_set_error("%s: 'modifier_tokens' missing or not [%d, d] for the %d tokens in the metadata", path, nt, nt);
  const cd_tensor_info *emb2 = cd_tf_find(f, "modifier_tokens_2");
  if (emb2 && (emb2->ndim != 2 || emb2->shape[0] != nt))
    return cd_set_error("%s: 'modifier_tokens_2' is not [%d, d2] for the %d tokens in the metadata", path, nt, nt);
  if (d->family == CD_FAMILY_SDXL && nt && !emb2)
    return cd_set_error("%s: an SDXL delta with tokens needs 'modifier_tokens_2' (their text_encoder_2 rows)", path);
  if (nt) {
    int width = (int)emb->shape[1], width2 = emb2 ? (int)emb2->shape[1] : 0;
    float *e = cd_malloc((size_t)nt * width * sizeof(float)), *e2 = emb2 ? cd_malloc((size_t)nt * width2 * sizeof(float)) : NULL;
    int rc = cd_tf_read_f32(f, emb, e) || (emb2 && cd_tf_read_f32(f, emb2, e2)) ? -1 : 0;
    for (int i = 0; i < nt && !rc; i++)
      rc = add_token2(d, toks[i], i < ni ? inits[i] : "", e + (size_t)i * width, width,
                      e2 ? e2 + (size_t)i * width2 : NULL, width2, path);
    free(e);
    free(e2);
    if (rc) return -1;
  }
  for (int i = 0; i < cd_tf_count(f); i++) {
    const cd_tensor_info *t = cd_tf_at(f, i);
    if (!strcmp(t->name, "modifier_tokens") || !strcmp(t->name, "modifier_tokens_2")) continue;
    /* a full fine-tune (train = full) holds every UNet weight; Custom Diffusion only attn2 */
    if (!strstr(t->name, ".attn2.") && strcmp(d->train, "full"))
      return cd_set_error("%s: unexpected tensor '%s' (only attn2 weights and modifier_tokens, unless train = full)", path, t->name);
    if (put_tensor(d, f, t, t->name)) return -1;
  }
  return 0;
}

/* ---- diffusers' layout ---- */
/* UNet parameter suffix after ".attn2" <-> diffusers' processor key suffix */
static const struct { const char *ours, *diffusers; } SUFFIX_MAP[] = {
    {".to_k.weight", ".processor.to_k_custom_diffusion.weight"},
    {".to_v.weight", ".processor.to_v_custom_diffusion.weight"},
    {".to_q.weight", ".processor.to_q_custom_diffusion.weight"},
    {".to_out.0.weight", ".processor.to_out_custom_diffusion.0.weight"},
    {".to_out.0.bias", ".processor.to_out_custom_diffusion.0.bias"}};
#define NSUFFIX (sizeof SUFFIX_MAP / sizeof SUFFIX_MAP[0])

static int diffusers_name(const char *key, char *out, size_t cap) {
  for (size_t i = 0; i < NSUFFIX; i++) {
    const char *p = strstr(key, SUFFIX_MAP[i].diffusers);
    if (p && p[strlen(SUFFIX_MAP[i].diffusers)] == 0) {
      snprintf(out, cap, "%.*s%s", (int)(p - key), key, SUFFIX_MAP[i].ours);
      return 0;
    }
  }
  return -1;
}

static int load_diffusers_weights(const cd_tensor_file *f, cd_delta *d) {
  snprintf(d->layout, sizeof d->layout, "diffusers");
  int kv = 0;
  for (int i = 0; i < cd_tf_count(f); i++) {
    const cd_tensor_info *t = cd_tf_at(f, i);
    char name[256];
    if (diffusers_name(t->name, name, sizeof name))
      return cd_set_error("%s: unexpected key '%s' in a Custom Diffusion weights file", cd_tf_path(f), t->name);
    if (put_tensor(d, f, t, name)) return -1;
    if (strstr(name, ".to_k.weight")) kv++;
  }
  if (!kv) return cd_set_error("%s: no to_k_custom_diffusion weights", cd_tf_path(f));
  snprintf(d->train, sizeof d->train, cd_weights_count(d->w) > 2 * kv ? "crossattn" : "crossattn_kv");
  return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int one_row(const cd_tensor_info *t) { return t->ndim == 1 || (t->ndim == 2 && t->shape[0] == 1); }

/* <newN>.safetensors / .bin files beside the weights: {"<newN>": [d]}, SDXL {"clip_l", "clip_g"} */
static int load_token_files(const char *dir, cd_delta *d) {
  DIR *dp = opendir(dir);
  if (!dp) return cd_set_error("cannot read folder %s", dir);
  char *names[256];
  int n = 0;
  struct dirent *e;
  while ((e = readdir(dp)) && n < 256) {
    const char *s = e->d_name;
    size_t L = strlen(s);
    if (!strcmp(s, CD_DIFFUSERS_DELTA_FILE) || !strcmp(s, "pytorch_custom_diffusion_weights.bin") || !strcmp(s, CD_DELTA_FILE)) continue;
    if ((L > 12 && !strcmp(s + L - 12, ".safetensors")) || (L > 4 && !strcmp(s + L - 4, ".bin"))) names[n++] = cd_strdup(s);
  }
  closedir(dp);
  qsort(names, n, sizeof *names, cmp_str);
  int rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    char path[2048];
    snprintf(path, sizeof path, "%.1500s/%.500s", dir, names[i]);
    cd_tensor_file *f;
    if (cd_tensor_file_open(path, &f)) { rc = -1; break; }
    const cd_tensor_info *t = cd_tf_count(f) == 1 ? cd_tf_at(f, 0) : NULL;
    const cd_tensor_info *tl = cd_tf_find(f, "clip_l"), *tg = cd_tf_find(f, "clip_g");
    if (t && one_row(t)) {
      int width = (int)t->shape[t->ndim - 1];
      float *x = cd_malloc(width * sizeof(float));
      rc = cd_tf_read_f32(f, t, x) || add_token(d, t->name, "", x, width, path) ? -1 : 0;
      free(x);
    } else if (cd_tf_count(f) == 2 && tl && tg && one_row(tl) && one_row(tg)) { /* SDXL: the stem is the token */
      char tok[32];
      size_t L = strlen(names[i]), stem = cd_ends_with(names[i], ".safetensors") ? L - 12 : L - 4;
      snprintf(tok, sizeof tok, "%.*s", (int)stem, names[i]);
      int w1 = (int)tl->shape[tl->ndim - 1], w2 = (int)tg->shape[tg->ndim - 1];
      float *x = cd_malloc(w1 * sizeof(float)), *y = cd_malloc(w2 * sizeof(float));
      rc = cd_tf_read_f32(f, tl, x) || cd_tf_read_f32(f, tg, y) || add_token2(d, tok, "", x, w1, y, w2, path) ? -1 : 0;
      free(x);
      free(y);
    }
    cd_tensor_file_close(f);
  }
  for (int i = 0; i < n; i++) free(names[i]);
  return rc;
}

/* ---- the original repository's delta.ckpt ---- */
static int load_original(const cd_tensor_file *f, const cd_sd_model *m, cd_delta *d) {
  snprintf(d->layout, sizeof d->layout, "original");
  if (!m) return cd_set_error("%s: an original-layout delta needs the model to map its keys", cd_tf_path(f));
  cd_keymap km = {0};
  if (cd_keymap_unet(&km, &m->unet.cfg)) return -1;
  int rc = 0, kv = 0;
  const char *pre = "model.diffusion_model.";
  for (int i = 0; i < cd_tf_count(f) && !rc; i++) {
    const cd_tensor_info *t = cd_tf_at(f, i);
    if (!strcmp(t->name, "embed")) {
      if (t->ndim != 2) { rc = cd_set_error("%s: 'embed' must be [n, d]", cd_tf_path(f)); break; }
      int nt = (int)t->shape[0], width = (int)t->shape[1];
      float *e = cd_malloc((size_t)(nt ? nt : 1) * width * sizeof(float));
      rc = cd_tf_read_f32(f, t, e);
      for (int k = 0; k < nt && !rc; k++) {
        char tok[32];
        snprintf(tok, sizeof tok, "<new%d>", k + 1);
        rc = add_token(d, tok, "", e + (size_t)k * width, width, cd_tf_path(f));
      }
      free(e);
      continue;
    }
    if (strncmp(t->name, pre, strlen(pre))) { rc = cd_set_error("%s: unexpected key '%s'", cd_tf_path(f), t->name); break; }
    cd_km_result r;
    if (cd_keymap_map(&km, t->name + strlen(pre), &r) != CD_KM_COPY || !strstr(r.dst[0], ".attn2."))
      { rc = cd_set_error("%s: key '%s' is not a cross-attention weight of this model", cd_tf_path(f), t->name); break; }
    rc = put_tensor(d, f, t, r.dst[0]);
    if (strstr(r.dst[0], ".to_k.")) kv++;
  }
  cd_keymap_free(&km);
  if (!rc && !kv) rc = cd_set_error("%s: no cross-attention weights in this delta", cd_tf_path(f));
  snprintf(d->train, sizeof d->train, cd_weights_count(d->w) > 2 * kv ? "crossattn" : "crossattn_kv");
  return rc;
}

/* ---- the original repository's diffusers-based delta.bin (its SD and SDXL scripts) ----
 * {'unet': {<diffusers parameter>: W, or {'u': U, 'v': V} after its compress.py (W = W0 + U V)},
 *  'modifier_token': {<tok>: row} (SD) or {<tok>: [row, row_2]} (SDXL: one per encoder)},
 * flattened by the reader to unet.<param>[.u|.v] and modifier_token.<tok>[.0|.1]. */
static int any_prefix(const cd_tensor_file *f, const char *pre) {
  for (int i = 0; i < cd_tf_count(f); i++)
    if (!strncmp(cd_tf_at(f, i)->name, pre, strlen(pre))) return 1;
  return 0;
}

static int load_repo_bin(const cd_tensor_file *f, cd_delta *d) {
  const char *path = cd_tf_path(f);
  snprintf(d->layout, sizeof d->layout, "original");
  struct { char tok[32]; const cd_tensor_info *row[2]; } tk[CD_DELTA_MAX_TOKENS];
  int nt = 0, kv = 0, pair = -1, rc = 0;
  for (int i = 0; i < cd_tf_count(f) && !rc; i++) {
    const cd_tensor_info *t = cd_tf_at(f, i);
    const char *k = t->name;
    if (!strncmp(k, "unet.", 5)) {
      char name[300];
      size_t L = strlen(k + 5);
      int lr = cd_ends_with(k, ".u") ? 1 : cd_ends_with(k, ".v") ? 2 : 0;
      snprintf(name, sizeof name, "%.*s%s", (int)(lr ? L - 2 : L), k + 5, lr == 1 ? ".lr_us" : lr == 2 ? ".lr_vt" : "");
      if (!strstr(name, ".attn2.")) { rc = cd_set_error("%s: '%s' is not a cross-attention weight", path, k); break; }
      if (lr) d->lowrank = 1;
      rc = put_tensor(d, f, t, name);
      if (strstr(name, ".to_k.weight")) kv++;
    } else if (!strncmp(k, "modifier_token.", 15)) {
      const char *r = k + 15;
      size_t L = strlen(r);
      int part = L > 2 && (cd_ends_with(r, ".0") || cd_ends_with(r, ".1")) ? r[L - 1] - '0' : -1;
      char tok[32];
      if (L - (part >= 0 ? 2 : 0) >= sizeof tok) { rc = cd_set_error("%s: token name too long in '%s'", path, k); break; }
      snprintf(tok, sizeof tok, "%.*s", (int)(L - (part >= 0 ? 2 : 0)), r);
      int j = 0;
      while (j < nt && strcmp(tk[j].tok, tok)) j++;
      if (j == nt) {
        if (nt == CD_DELTA_MAX_TOKENS) { rc = cd_set_error("%s: more than %d modifier tokens", path, CD_DELTA_MAX_TOKENS); break; }
        memset(&tk[nt], 0, sizeof tk[nt]);
        snprintf(tk[nt++].tok, sizeof tk[0].tok, "%s", tok);
      }
      if (pair >= 0 && pair != (part >= 0)) { rc = cd_set_error("%s: tokens with one and with two rows mixed", path); break; }
      pair = part >= 0;
      if (!one_row(t)) { rc = cd_set_error("%s: '%s' is not one embedding row", path, k); break; }
      tk[j].row[part > 0 ? 1 : 0] = t;
    } else {
      rc = cd_set_error("%s: unexpected key '%s' in a Custom Diffusion delta.bin (a fine-tuned text encoder is not "
                        "supported; expected unet.* and modifier_token.*)", path, k);
    }
  }
  for (int j = 0; j < nt && !rc; j++) {
    const cd_tensor_info *a = tk[j].row[0], *b = tk[j].row[1];
    if (!a || (pair && !b)) { rc = cd_set_error("%s: token %s lacks a row", path, tk[j].tok); break; }
    int w1 = (int)a->shape[a->ndim - 1], w2 = b ? (int)b->shape[b->ndim - 1] : 0;
    float *x = cd_malloc(sizeof(float) * w1), *y = b ? cd_malloc(sizeof(float) * w2) : NULL;
    rc = cd_tf_read_f32(f, a, x) || (b && cd_tf_read_f32(f, b, y)) || add_token2(d, tk[j].tok, "", x, w1, y, w2, path) ? -1 : 0;
    free(x);
    free(y);
  }
  if (!rc && !kv) rc = cd_set_error("%s: no cross-attention weights in this delta", path);
  if (!rc) snprintf(d->train, sizeof d->train, cd_weights_count(d->w) > 2 * kv ? "crossattn" : "crossattn_kv");
  return rc;
}

static int load_file(const char *path, const cd_sd_model *m, cd_delta *d) {
  cd_tensor_file *f;
  if (cd_tensor_file_open(path, &f)) return -1;
  int rc;
  const char *fmt = cd_tf_meta(f, "format");
  if (fmt && !strcmp(fmt, "cdiff-delta")) rc = load_cdiff(f, d);
  else if (cd_tf_find(f, "embed") || (cd_tf_count(f) > 0 && !strncmp(cd_tf_at(f, 0)->name, "model.diffusion_model.", 22)))
    rc = load_original(f, m, d);
  else if (any_prefix(f, "unet.") || any_prefix(f, "modifier_token."))
    rc = load_repo_bin(f, d);
  else if (cd_tf_count(f) > 0 && strstr(cd_tf_at(f, 0)->name, "_custom_diffusion")) {
    rc = load_diffusers_weights(f, d);
    if (!rc) { /* token files live beside the weights */
      char dir[2048];
      snprintf(dir, sizeof dir, "%s", path);
      char *sl = strrchr(dir, '/');
      if (sl) *sl = 0; else snprintf(dir, sizeof dir, ".");
      rc = load_token_files(dir, d);
    }
  } else
    rc = cd_set_error("%s: not a Custom Diffusion delta (no cdiff metadata, custom_diffusion keys or model.diffusion_model keys)", path);
  cd_tensor_file_close(f);
  return rc;
}

int cd_delta_load(const char *path, const cd_sd_model *m, cd_delta **out) {
  cd_delta *d = cd_delta_new();
  char p[2048];
  int rc;
  if (cd_is_dir(path)) {
    static const char *cands[] = {CD_DELTA_FILE, CD_DIFFUSERS_DELTA_FILE, "pytorch_custom_diffusion_weights.bin", "delta.ckpt", "delta.bin"};
    rc = cd_set_error("%s: no %s, %s, delta.ckpt or delta.bin in this folder", path, CD_DELTA_FILE, CD_DIFFUSERS_DELTA_FILE);
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
      snprintf(p, sizeof p, "%s/%s", path, cands[i]);
      if (cd_file_exists(p)) {
        cd_clear_error();
        rc = load_file(p, m, d);
        break;
      }
    }
  } else if (!cd_file_exists(path)) {
    rc = cd_set_error("delta %s does not exist", path);
  } else {
    rc = load_file(path, m, d);
  }
  if (rc) {
    cd_delta_free(d);
    return -1;
  }
  *out = d;
  return 0;
}

int cd_delta_resolve(cd_delta *d, const cd_sd_model *m) {
  if (d->family && d->family != m->family)
    return cd_set_error("delta was trained on an %s model but %s is %s", cd_family_name((cd_family)d->family), m->path,
                        cd_family_name(m->family));
  if (d->ntok && d->d != m->clip.cfg.width)
    return cd_set_error("delta token embeddings have width %d but the text encoder of %s has width %d (a delta for another model family)",
                        d->d, m->path, m->clip.cfg.width);
  if (d->ntok && m->family == CD_FAMILY_SDXL && d->d2 != m->clip2.cfg.width)
    return cd_set_error("delta token embeddings have %s width %d but text_encoder_2 of %s has width %d (SDXL deltas carry "
                        "each token's row for both encoders)", d->d2 ? "second-encoder" : "no second-encoder row, ", d->d2,
                        m->path, m->clip2.cfg.width);
  if (d->ntok && m->family != CD_FAMILY_SDXL && d->d2)
    return cd_set_error("delta has second-encoder token rows (SDXL) but %s is %s", m->path, cd_family_name(m->family));
  int n = cd_weights_count(d->w);
  for (int i = 0; i < n; i++) {
    cd_weight *x = cd_weights_at(d->w, i);
    size_t L = strlen(x->name);
    if (cd_ends_with(x->name, ".lr_vt")) continue;
    char base[256];
    int lr = cd_ends_with(x->name, ".lr_us");
    snprintf(base, sizeof base, "%.*s", (int)(lr ? L - 6 : L), x->name);
    const cd_weights *src = m->unet_orig && cd_weights_get(m->unet_orig, base) ? m->unet_orig : m->unet.w;
    cd_weight *b = cd_weights_get(src, base);
    if (!b) return cd_set_error("delta weight '%s' does not exist in the UNet of %s", base, m->path);
    if (!lr) {
      int ok = b->ndim == x->ndim;
      for (int k = 0; ok && k < x->ndim; k++) ok = b->ne[k] == x->ne[k];
      if (!ok)
        return cd_set_error("delta weight '%s' has shape [%ld,%ld] but the model's is [%ld,%ld] (a delta for another base model or context width)",
                            base, (long)x->ne[0], (long)x->ne[1], (long)b->ne[0], (long)b->ne[1]);
      continue;
    }
    char vtn[272];
    snprintf(vtn, sizeof vtn, "%s.lr_vt", base);
    cd_weight *vt = cd_weights_get(d->w, vtn);
    if (!vt || x->ndim != 2 || vt->ndim != 2 || x->ne[1] != vt->ne[0] || b->ndim != 2 || x->ne[0] != b->ne[0] || vt->ne[1] != b->ne[1])
      return cd_set_error("delta low-rank factors of '%s' are missing or do not fit the model's [%ld,%ld] weight", base,
                          (long)b->ne[0], (long)(b->ndim > 1 ? b->ne[1] : 1));
    float *W = cd_malloc(b->ne[0] * b->ne[1] * sizeof(float));
    memcpy(W, cd_weight_f32(b), b->ne[0] * b->ne[1] * sizeof(float));
    cd_lowrank_apply(x->data, vt->data, (int)b->ne[0], (int)b->ne[1], (int)x->ne[1], W);
    if (cd_weights_put(d->w, base, 2, b->ne, W)) return -1;
  }
  /* drop the factors now that full weights exist: rebuild the store without them */
  if (d->lowrank) {
    cd_weights *nw = cd_weights_new();
    for (int i = 0; i < cd_weights_count(d->w); i++) {
      cd_weight *x = cd_weights_at(d->w, i);
      if (cd_ends_with(x->name, ".lr_us") || cd_ends_with(x->name, ".lr_vt")) continue;
      float *c = cd_malloc(cd_numel(x->ndim, x->ne) * sizeof(float));
      memcpy(c, x->data, cd_numel(x->ndim, x->ne) * sizeof(float));
      cd_weights_put(nw, x->name, x->ndim, x->ne, c);
    }
    cd_weights_free(d->w);
    d->w = nw;
    d->lowrank = 0;
  }
  for (int i = 0; i < cd_weights_count(d->w); i++) { /* context width = columns of a to_k weight */
    cd_weight *x = cd_weights_at(d->w, i);
    if (strstr(x->name, ".to_k.weight") && x->ndim == 2) {
      d->ctx = (int)x->ne[1];
      break;
    }
  }
  return 0;
}

int cd_delta_apply(cd_sd_model *m, const cd_delta *d) {
  if (!m->unet_orig) m->unet_orig = cd_weights_new();
  /* tokens first: a clash leaves the model untouched */
  if (d->ntok && !m->tok) return cd_set_error("the delta adds tokens but %s has no tokenizer (pass --vocab)", m->path);
  for (int i = 0; i < d->ntok; i++)
    if (cd_tokenizer_lookup(m->tok, d->tok[i]) >= 0)
      return cd_set_error("token %s is already defined (by the vocabulary or an earlier delta): train concepts with distinct --modifier-token names or use cdiff merge", d->tok[i]);
  for (int i = 0; i < cd_weights_count(d->w); i++) {
    cd_weight *x = cd_weights_at(d->w, i);
    cd_weight *b = cd_weights_get(m->unet.w, x->name);
    if (!b || cd_numel(b->ndim, b->ne) != cd_numel(x->ndim, x->ne)) return cd_set_error("delta weight '%s' does not fit the model", x->name);
    int64_t n = cd_numel(x->ndim, x->ne);
    cd_weight_f32(b); /* a delta's weights are f32: so is the weight it replaces */
    cd_weight *o = cd_weights_get(m->unet_orig, x->name);
    if (!o) { /* first delta on this weight: keep the base, take the delta's values */
      float *c = cd_malloc(n * sizeof(float));
      memcpy(c, b->data, n * sizeof(float));
      cd_weights_put(m->unet_orig, x->name, b->ndim, b->ne, c);
      memcpy(b->data, x->data, n * sizeof(float));
    } else { /* later deltas add their change relative to the base */
      for (int64_t k = 0; k < n; k++) b->data[k] += x->data[k] - o->data[k];
    }
    if (cd_weight_changed(b)) return -1; /* the backend copies re-upload this weight only */
  }
  if (d->ntok) {
    const char *toks[CD_DELTA_MAX_TOKENS];
    for (int i = 0; i < d->ntok; i++) toks[i] = d->tok[i];
    const float *rows[CD_SD_MAX_TEXT] = {d->embeds, d->embeds2}; /* SDXL: both tables */
    if (cd_sd_add_tokens_rows(m, d->ntok, toks, NULL, rows, NULL)) return -1;
  }
  m->ndeltas++;
  return 0;
}

int cd_delta_check_base(const cd_delta *d, const cd_sd_model *m, const char *what) {
  if (!d->base_hash[0] || !m->hash[0] || !strcmp(d->base_hash, m->hash)) return 0;
  cd_warn("%s was trained on a model with hash %s, but %s has hash %s: results will differ from what was trained", what,
          d->base_hash, m->path, m->hash);
  return 1;
}

int cd_delta_apply_path(cd_sd_model *m, const char *path) {
  cd_delta *d;
  if (cd_delta_load(path, m, &d)) return -1;
  char what[1100];
  snprintf(what, sizeof what, "delta %s", path);
  cd_delta_check_base(d, m, what);
  int rc = cd_delta_resolve(d, m) || cd_delta_apply(m, d) ? -1 : 0;
  cd_delta_free(d);
  return rc;
}

/* ---- writing ---- */
static char *json_of(const char (*v)[32], int n) {
  cJSON *a = cJSON_CreateArray();
  for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(v[i]));
  char *s = cJSON_PrintUnformatted(a);
  cJSON_Delete(a);
  return s;
}

/* ---- saving: the files of a delta appear as a set ----
 * Every file is first written in full under a temporary name beside its final
 * one (NAME.tmp.PID, fsynced). Only when all are written are they renamed, the
 * files an entry point reads before that entry point: the earlier delta's
 * diffusers weights file is removed (its reader takes the token files beside
 * it, which are about to change), token files and a full fine-tune's UNet are
 * renamed, then the new diffusers weights file, and cdiff_delta.safetensors,
 * the primary file (the whole delta in one file, what cd_delta_load picks
 * first), last. A failure or a kill before the renames leaves the earlier
 * delta as it was (a killed save's temporary files are removed by the next
 * save); during them every entry point present reads one whole delta, and the
 * primary file is the earlier delta's until the new one is complete. */
#define DIFFUSERS_BIN "pytorch_custom_diffusion_weights.bin"
enum { STAGE_PARTS, STAGE_DIFFUSERS, STAGE_PRIMARY, NSTAGES };
#define MAX_STAGED (CD_DELTA_MAX_TOKENS + 3)

typedef struct {
  char tmp[MAX_STAGED][2100], final[MAX_STAGED][2048];
  int stage[MAX_STAGED], n;
} staged_files;

/* the temporary path to write dir/name to, recorded for the renames */
static const char *stage_file(staged_files *sf, const char *dir, const char *name, int stage) {
  if (sf->n == MAX_STAGED) {
    cd_set_error("%s: more than %d delta files", dir, MAX_STAGED);
    return NULL;
  }
  const int i = sf->n++;
  snprintf(sf->final[i], sizeof sf->final[i], "%s/%s", dir, name);
  snprintf(sf->tmp[i], sizeof sf->tmp[i], "%s/%s.tmp.%ld", dir, name, (long)getpid());
  sf->stage[i] = stage;
  return sf->tmp[i];
}

static void staged_abort(const staged_files *sf) {
  char keep[1024];
  snprintf(keep, sizeof keep, "%s", cd_last_error()); /* the error that made us give up stays the one reported */
  for (int i = 0; i < sf->n; i++) remove(sf->tmp[i]);
  cd_set_error("%s", keep);
}

static int staged_commit(const staged_files *sf, const char *dir) {
  int parts = 0;
  for (int i = 0; i < sf->n; i++) parts |= sf->stage[i] == STAGE_PARTS;
  static const char *const entries[] = {CD_DIFFUSERS_DELTA_FILE, DIFFUSERS_BIN}; /* readers of the token files */
  for (size_t k = 0; parts && k < sizeof entries / sizeof entries[0]; k++) {
    char *p = cd_path_join(dir, entries[k]);
    int bad = remove(p) != 0 && errno != ENOENT;
    if (bad) cd_set_error("cannot remove %s of the earlier delta: %s", p, strerror(errno));
    free(p);
    if (bad) {
      staged_abort(sf);
      return -1;
    }
  }
  for (int st = 0; st < NSTAGES; st++)
    for (int i = 0; i < sf->n; i++)
      if (sf->stage[i] == st && rename(sf->tmp[i], sf->final[i]) != 0) {
        cd_set_error("cannot rename %s to %s: %s", sf->tmp[i], sf->final[i], strerror(errno));
        staged_abort(sf);
        return -1;
      }
  return cd_fsync_dir(dir);
}

/* 1 for the base of a NAME.tmp.PID leftover of a delta save: a delta file's
 * name, perhaps itself with a ".tmp.PID" (the safetensors writer's own
 * temporary name for the staged file) */
static int delta_file_name(const char *name) {
  char base[512];
  snprintf(base, sizeof base, "%s", name);
  for (char *t; (t = strstr(base, ".tmp.")) != NULL && t[5] && strspn(t + 5, "0123456789") == strlen(t + 5);) *t = 0;
  return cd_ends_with(base, ".safetensors") || cd_ends_with(base, ".bin") || cd_ends_with(base, ".ckpt");
}

static int save_cdiff(const char *path, const cd_delta *d) {
  int n = cd_weights_count(d->w);
  cd_tensor_out *t = cd_calloc(n + 2, sizeof *t);
  int k = 0;
  for (int i = 0; i < n; i++) {
    cd_weight *x = cd_weights_at(d->w, i);
    t[k] = (cd_tensor_out){.name = x->name, .dtype = CD_DT_F32, .ndim = x->ndim, .data = x->data};
    for (int j = 0; j < x->ndim; j++) t[k].shape[j] = x->ne[j];
    k++;
  }
  if (d->ntok) t[k++] = (cd_tensor_out){.name = "modifier_tokens", .dtype = CD_DT_F32, .ndim = 2, .shape = {d->ntok, d->d}, .data = d->embeds};
  if (d->ntok && d->embeds2)
    t[k++] = (cd_tensor_out){.name = "modifier_tokens_2", .dtype = CD_DT_F32, .ndim = 2, .shape = {d->ntok, d->d2}, .data = d->embeds2};
  char *toks = json_of(d->tok, d->ntok), *inits = json_of(d->init, d->ntok);
  char ctx[16], width[16], width2[16], lr[4], ratio[32];
  snprintf(ctx, sizeof ctx, "%d", d->ctx);
  snprintf(width, sizeof width, "%d", d->d);
  snprintf(width2, sizeof width2, "%d", d->d2);
  snprintf(lr, sizeof lr, "%d", d->lowrank);
  snprintf(ratio, sizeof ratio, "%g", d->ratio);
  const char *fam = d->family == CD_FAMILY_SDXL ? "sdxl" : d->family == CD_FAMILY_SD2 ? "sd2" : d->family == CD_FAMILY_SD1 ? "sd1" : "";
  const char *meta[] = {"format", "cdiff-delta", "version", "1", "family", fam,
                        "context_dim", ctx, "text_width", width, "text_width_2", width2, "tokens", toks, "initializers", inits,
                        "train", d->train[0] ? d->train : "crossattn_kv", "base_hash", d->base_hash, "lowrank", lr, "ratio", ratio,
                        "args", d->args ? d->args : "{}"};
  int rc = cd_safetensors_write(path, t, k, meta, (int)(sizeof meta / sizeof meta[0]) / 2);
  free(toks);
  free(inits);
  free(t);
  return rc;
}

/* A full fine-tune's UNet as diffusers keeps it: DIR/unet/diffusion_pytorch_model.safetensors
 * (our names are diffusers' state-dict keys), for pipe.unet.load_state_dict. */
#define DIFFUSERS_UNET_FILE "unet/diffusion_pytorch_model.safetensors"

static int is_full(const cd_delta *d) { return !strcmp(d->train, "full"); }

static int save_diffusers_unet(const char *dir, const cd_delta *d, staged_files *sf) {
  int n = cd_weights_count(d->w);
  cd_tensor_out *t = cd_calloc(n ? n : 1, sizeof *t);
  for (int i = 0; i < n; i++) {
    cd_weight *x = cd_weights_at(d->w, i);
    t[i] = (cd_tensor_out){.name = x->name, .dtype = CD_DT_F32, .ndim = x->ndim, .data = x->data};
    for (int j = 0; j < x->ndim; j++) t[i].shape[j] = x->ne[j];
  }
  char *sub = cd_path_join(dir, "unet");
  const char *meta[] = {"format", "pt"}, *path = stage_file(sf, dir, DIFFUSERS_UNET_FILE, STAGE_PARTS);
  int rc = !path || cd_mkdir_p(sub) || cd_safetensors_write(path, t, n, meta, 1) || cd_fsync_dir(sub) ? -1 : 0;
  free(sub);
  free(t);
  return rc;
}

static int save_diffusers(const char *dir, const cd_delta *d, staged_files *sf) {
  int n = cd_weights_count(d->w);
  if (is_full(d) && save_diffusers_unet(dir, d, sf)) return -1;
  if (is_full(d) || !n) n = 0; /* no Custom Diffusion weights file: only the token files (Textual Inversion's format) */
  cd_tensor_out *t = cd_calloc(n ? n : 1, sizeof *t);
  char (*names)[256] = cd_calloc(n ? n : 1, 256);
  int k = 0, rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    cd_weight *x = cd_weights_at(d->w, i);
    const char *a = strstr(x->name, ".attn2");
    int found = 0;
    for (size_t j = 0; a && j < NSUFFIX; j++)
      if (!strcmp(a + 6, SUFFIX_MAP[j].ours)) {
        snprintf(names[k], 256, "%.*s%s", (int)(a + 6 - x->name), x->name, SUFFIX_MAP[j].diffusers);
        found = 1;
      }
    if (!found) { rc = cd_set_error("cannot express '%s' in diffusers' Custom Diffusion layout", x->name); break; }
    t[k] = (cd_tensor_out){.name = names[k], .dtype = CD_DT_F32, .ndim = x->ndim, .data = x->data};
    for (int j = 0; j < x->ndim; j++) t[k].shape[j] = x->ne[j];
    k++;
  }
  char name[64];
  const char *meta[] = {"format", "pt"}, *path;
  if (!rc && k) {
    path = stage_file(sf, dir, CD_DIFFUSERS_DELTA_FILE, STAGE_DIFFUSERS);
    rc = !path || cd_safetensors_write(path, t, k, meta, 1) ? -1 : 0;
  }
  for (int i = 0; i < d->ntok && !rc; i++) {
    cd_tensor_out e[2] = {{.name = d->tok[i], .dtype = CD_DT_F32, .ndim = 1, .shape = {d->d}, .data = d->embeds + (size_t)i * d->d}};
    int ne = 1;
    if (d->embeds2) { /* SDXL: one row per encoder, under the names SDXL embedding files use */
      e[0] = (cd_tensor_out){.name = "clip_l", .dtype = CD_DT_F32, .ndim = 2, .shape = {1, d->d}, .data = d->embeds + (size_t)i * d->d};
      e[1] = (cd_tensor_out){.name = "clip_g", .dtype = CD_DT_F32, .ndim = 2, .shape = {1, d->d2}, .data = d->embeds2 + (size_t)i * d->d2};
      ne = 2;
    }
    snprintf(name, sizeof name, "%s.safetensors", d->tok[i]);
    path = stage_file(sf, dir, name, STAGE_PARTS);
    rc = !path || cd_safetensors_write(path, e, ne, meta, 1) ? -1 : 0;
  }
  free(t);
  free(names);
  return rc;
}

int cd_delta_write_cdiff(const char *path, const cd_delta *d) { return save_cdiff(path, d); }

static const char *const layout_files[] = {CD_DELTA_FILE, CD_DIFFUSERS_DELTA_FILE, DIFFUSERS_BIN, "delta.ckpt"};

int cd_delta_dir_has_delta(const char *dir) {
  for (size_t i = 0; i < sizeof layout_files / sizeof layout_files[0]; i++) {
    char *p = cd_path_join(dir, layout_files[i]);
    int e = cd_file_exists(p);
    free(p);
    if (e) return 1;
  }
  return 0;
}

/* A token file of diffusers' layout: NAME.safetensors or NAME.bin holding one
 * 1-D (or [1, d]) tensor named NAME, or (SDXL) a <NAME>.safetensors holding exactly
 * clip_l and clip_g rows. Only such files are ever removed. */
static int is_token_file(const char *path, const char *fname) {
  size_t L = strlen(fname), stem = cd_ends_with(fname, ".safetensors") ? L - 12 : cd_ends_with(fname, ".bin") ? L - 4 : 0;
  if (!stem) return 0;
  cd_tensor_file *f;
  if (cd_tensor_file_open(path, &f)) {
    cd_clear_error();
    return 0;
  }
  const cd_tensor_info *t = cd_tf_count(f) == 1 ? cd_tf_at(f, 0) : NULL;
  const cd_tensor_info *tl = cd_tf_find(f, "clip_l"), *tg = cd_tf_find(f, "clip_g");
  int yes = (t && one_row(t) && strlen(t->name) == stem && !strncmp(t->name, fname, stem)) ||
            (cd_tf_count(f) == 2 && tl && tg && one_row(tl) && one_row(tg) && !strncmp(fname, "<", 1));
  cd_tensor_file_close(f);
  return yes;
}

static int remove_file(const char *dir, const char *name) {
  char *p = cd_path_join(dir, name);
  int rc = remove(p) != 0 && errno != ENOENT ? cd_set_error("cannot remove stale %s: %s", p, strerror(errno)) : 0;
  free(p);
  return rc;
}

/* After a save: removes what an earlier delta left in dir and the new one does
 * not agree with (other layouts, token files of other tokens), so the folder
 * holds one delta whichever file a reader picks. d NULL: removes every delta
 * file. */
static int remove_stale(const char *dir, const cd_delta *d) {
  if (!d && remove_file(dir, CD_DELTA_FILE)) return -1;
  const int cd_file = d && !d->lowrank && !is_full(d) && cd_weights_count(d->w) > 0; /* save_diffusers wrote it */
  if ((!cd_file && remove_file(dir, CD_DIFFUSERS_DELTA_FILE)) || remove_file(dir, DIFFUSERS_BIN) || remove_file(dir, "delta.ckpt"))
    return -1;
  if ((!d || d->lowrank || !is_full(d)) && remove_file(dir, DIFFUSERS_UNET_FILE)) return -1;
  DIR *dp = opendir(dir);
  if (!dp) return cd_set_error("cannot read folder %s: %s", dir, strerror(errno));
  int rc = 0;
  struct dirent *e;
  while (!rc && (e = readdir(dp))) {
    const char *s = e->d_name;
    if (!strcmp(s, CD_DELTA_FILE) || !strcmp(s, CD_DIFFUSERS_DELTA_FILE)) continue;
    int written = 0; /* <tok>.safetensors of a full delta */
    for (int i = 0; d && i < d->ntok && !d->lowrank; i++)
      written |= cd_ends_with(s, ".safetensors") && strlen(s) == strlen(d->tok[i]) + 12 && !strncmp(s, d->tok[i], strlen(d->tok[i]));
    if (written) continue;
    char *p = cd_path_join(dir, s);
    if (is_token_file(p, s) && remove(p) != 0) rc = cd_set_error("cannot remove stale %s: %s", p, strerror(errno));
    free(p);
  }
  closedir(dp);
  return rc;
}

int cd_delta_remove(const char *dir) { return cd_is_dir(dir) ? remove_stale(dir, NULL) : 0; }

int cd_delta_save(const char *dir, const cd_delta *d) {
  if (cd_mkdir_p(dir) || cd_remove_stale_tmp(dir, 1, delta_file_name) < 0) return -1;
  staged_files *sf = cd_calloc(1, sizeof *sf);
  const char *path;
  int rc = (!d->lowrank && save_diffusers(dir, d, sf)) || !(path = stage_file(sf, dir, CD_DELTA_FILE, STAGE_PRIMARY)) ||
                   save_cdiff(path, d)
               ? -1
               : 0;
  if (rc) staged_abort(sf);
  else rc = staged_commit(sf, dir);
  free(sf);
  return rc ? -1 : remove_stale(dir, d);
}

size_t cd_delta_bytes(const cd_delta *d) {
  size_t b = (size_t)d->ntok * (d->d + d->d2) * 4;
  for (int i = 0; i < cd_weights_count(d->w); i++) {
    cd_weight *x = cd_weights_at(d->w, i);
    b += cd_numel(x->ndim, x->ne) * 4;
  }
  return b;
}
