/* checkpoint.c - loads a Stable Diffusion 1.x/2.x pipeline (sd_model.h) from a
 * diffusers folder or a single-file original (LDM) checkpoint into fp32
 * weight stores with diffusers names.
 *
 * Single files carry no config: the architecture is read from key names and
 * shapes (levels, channels, attention levels, context width, linear or conv
 * projections, text width/layers), completed by a same-named .yaml beside the
 * file when present (GroupNorm groups, heads, parameterization, betas).
 *
 * Family rule: SD 2.x when the text encoder is OpenCLIP (exact GELU, the
 * cond_stage_model.model.* naming of single files / hidden_act "gelu" in a
 * folder); otherwise SD 1.x. Without a text encoder (no_text), linear
 * transformer projections mean SD 2.x. SDXL: a UNet with the text_time added
 * conditioning (addition_embed_type in unet/config.json, SGM's label_emb.0.*
 * in a single file), transformer depths per level read from the config or
 * counted from the keys, VAE scaling factor 0.13025 unless a config says.
 *
 * The model hash is SHA-256 over the loaded fp32 weights: for every tensor in
 * sorted "component.name" order, its name, its shape "(a, b, ...)" and the
 * SHA-256 of its fp32 bytes (per-tensor digests computed in parallel, no
 * copy). A folder and the single file converted from it hash the same.
 */
#define CD_TENSOR_FILE_INTERNAL /* for release_pages(): the file's mapping bounds */
#include "models/sd_model.h"

#include <ctype.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/common.h"
#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "models/keymap.h"
#include "models/sd_info.h"

enum { C_TEXT = 0, C_UNET = 1, C_VAE = 2, C_TEXT2 = 3 }; /* indexes of m->dtype */

/* ------------------------------------------------------------------ helpers */


static int starts_with(const char *s, const char *pre) { return !strncmp(s, pre, strlen(pre)); }

static const char *dtype_label(cd_dtype d) {
  switch (d) {
  case CD_DT_F32: return "float32";
  case CD_DT_F16: return "float16";
  case CD_DT_BF16: return "bfloat16";
  case CD_DT_F64: return "float64";
  default: return "int";
  }
}

static int is_float(cd_dtype d) {
  return d == CD_DT_F32 || d == CD_DT_F16 || d == CD_DT_BF16 || d == CD_DT_F64;
}

/* stored dtypes seen in one component -> "float16", or "mixed" */
typedef struct {
  int64_t n[CD_DT_COUNT];
  int want; /* storage type asked for (cd_type), or -1: each tensor's own (f16/bf16 stay, others f32) */
  float *scratch; /* one f32 buffer for the tensors being converted, as large as the largest */
  size_t scap;
} dtally;

static float *scratch_f32(dtally *t, int64_t n) {
  const size_t b = (size_t)(n ? n : 1) * sizeof(float);
  if (b > t->scap) {
    free(t->scratch);
    t->scratch = cd_malloc(b);
    t->scap = b;
  }
  return t->scratch;
}

static int want_type(const cd_load_opts *o) {
  cd_type t;
  return o->weights_dtype && !cd_type_parse(o->weights_dtype, &t) ? (int)t : -1;
}

/* Storage of a tensor of dtype dt: the type asked for, else the checkpoint's
 * own 16-bit type, else f32; 1-D weights (biases, norms) are always f32. */
static cd_type storage_type(cd_dtype dt, int ndim, const dtally *tally) {
  cd_type t = tally->want >= 0 ? (cd_type)tally->want : dt == CD_DT_F16 ? CD_TYPE_F16 : dt == CD_DT_BF16 ? CD_TYPE_BF16 : CD_TYPE_F32;
  return ndim < 2 ? CD_TYPE_F32 : t;
}

/* Stores f32 values as `name` in the storage type, at the next place of the
 * component's host block. The model hash covers the values as loaded, so a
 * narrowed weight keeps the digest of its f32 values (the hash does not
 * depend on --weights-dtype). */
static int store_values(cd_weights *w, const char *name, int ndim, const int64_t *ne, cd_type t, const float *src) {
  uint64_t dg[4];
  if (t != CD_TYPE_F32) dg[0] = cd_hash64(src, (size_t)cd_numel(ndim, ne) * sizeof(float), dg + 1);
  if (cd_weights_put_f32_as(w, name, ndim, ne, t, src)) return -1;
  cd_weight *x = cd_weights_get(w, name);
  if (t != CD_TYPE_F32 && x->type != CD_TYPE_F32) {
    memcpy(x->digest, dg, sizeof dg);
    x->has_digest = 1;
  }
  return 0;
}

/* Host address space for a component's weights, at most their f32 size (+
 * alignment): only the pages written become resident, the rest is released
 * when the component is loaded (cd_weights_seal). */
static void reserve_for(cd_weights *w, const cd_tensor_file *f, const char *prefix) {
  size_t bytes = 0, pl = strlen(prefix);
  for (int i = 0; i < cd_tf_count(f); i++) {
    const cd_tensor_info *t = cd_tf_at(f, i);
    if (!strncmp(t->name, prefix, pl)) bytes += (size_t)cd_tensor_numel(t) * sizeof(float) + 3 * 64;
  }
  cd_weights_reserve(w, bytes);
}

static void dtally_label(const dtally *t, char out[16]) {
  int found = -1, kinds = 0;
  for (int i = 0; i < CD_DT_COUNT; i++)
    if (t->n[i]) { found = i; kinds++; }
  snprintf(out, 16, "%s", kinds == 0 ? "none" : kinds == 1 ? dtype_label((cd_dtype)found) : "mixed");
}

static void shape_str(const int64_t *ne, int ndim, char *buf, size_t cap) {
  size_t k = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < ndim && k < cap; i++)
    k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)ne[i]);
  if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* After a tensor is converted, its pages of the read-only file mapping are dropped from
 * this process (they stay in the page cache), so a large checkpoint is not held twice:
 * once as mapped file pages and once as fp32 weights. Heap-backed data (deflated zip
 * entries) is left alone. */
static void release_pages(const cd_tensor_file *f, const cd_tensor_info *t) {
  const char *lo = f->map, *d = t->data;
  if (!lo || !d || d < lo || d + t->nbytes > lo + f->map_len) return;
  uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t a = ((uintptr_t)d + pg - 1) / pg * pg, b = ((uintptr_t)d + t->nbytes) / pg * pg;
  if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* Reads tensor t as fp32 and stores it as `name` with the given shape (same
 * numel): straight into the component's block when it stays f32, else
 * through the component's scratch (freed once, after the component: no
 * freed buffers left resident between the weights). */
static int put_f32(cd_weights *w, const cd_tensor_file *f, const cd_tensor_info *t, const char *name,
                   int ndim, const int64_t *ne, dtally *tally) {
  if (!is_float(t->dtype))
    return cd_set_error("%s: tensor %s has dtype %s, expected a float tensor", cd_tf_path(f),
                        t->name, cd_dtype_name(t->dtype));
  if (cd_weights_get(w, name))
    return cd_set_error("%s: two keys map to the weight %s (the second is %s)", cd_tf_path(f), name,
                        t->name);
  int64_t n = cd_tensor_numel(t);
  const cd_type st = storage_type(t->dtype, ndim, tally);
  float *d = st == CD_TYPE_F32 ? cd_weights_alloc(w, (size_t)n * sizeof(float)) : scratch_f32(tally, n);
  int rc = cd_tf_read_f32(f, t, d);
  release_pages(f, t);
  tally->n[t->dtype]++;
  if (st == CD_TYPE_F32) { /* the weight takes d (a read error frees it with the component) */
    if (cd_weights_put(w, name, ndim, ne, d)) return -1;
    return rc;
  }
  return rc ? -1 : store_values(w, name, ndim, ne, st, d);
}

/* ------------------------------------------------------------- tiny YAML reader */

/* Value of "key:" in an LDM yaml, searched inside the indented block that follows
 * the line "section:" (section NULL: anywhere). Comments and quotes are removed.
 * Returns 1 when found. This is not a YAML parser: LDM configs are simple maps. */
static int yaml_get(const char *y, const char *section, const char *key, char *out, size_t cap) {
  if (!y) return 0;
  int inside = section == NULL, sec_indent = -1;
  size_t klen = strlen(key), slen = section ? strlen(section) : 0;
  for (const char *p = y; *p;) {
    const char *e = strchr(p, '\n');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    int ind = 0;
    while (ind < (int)len && (p[ind] == ' ' || p[ind] == '\t')) ind++;
    const char *s = p + ind;
    size_t sl = len - ind;
    int blank = sl == 0 || *s == '#' || *s == '\r';
    if (section && !blank) {
      if (inside && ind <= sec_indent) inside = 0;
      if (!inside && sl > slen && !strncmp(s, section, slen) && s[slen] == ':') {
        inside = 1;
        sec_indent = ind;
      }
    }
    if (inside && !blank && sl > klen && !strncmp(s, key, klen) && s[klen] == ':') {
      const char *v = s + klen + 1, *end = p + len;
      const char *h = memchr(v, '#', (size_t)(end - v));
      if (h) end = h;
      while (v < end && isspace((unsigned char)*v)) v++;
      while (end > v && isspace((unsigned char)end[-1])) end--;
      if (end - v >= 2 && (*v == '"' || *v == '\'') && end[-1] == *v) { v++; end--; }
      snprintf(out, cap, "%.*s", (int)(end - v), v);
      return 1;
    }
    p = e ? e + 1 : p + len;
  }
  return 0;
}

static int yaml_int(const char *y, const char *section, const char *key, int *v) {
  char b[64];
  char *end;
  if (!yaml_get(y, section, key, b, sizeof b)) return 0;
  long x = strtol(b, &end, 10);
  if (end == b || *end) return 0;
  *v = (int)x;
  return 1;
}

static int yaml_double(const char *y, const char *section, const char *key, double *v) {
  char b[64];
  char *end;
  if (!yaml_get(y, section, key, b, sizeof b)) return 0;
  double x = strtod(b, &end);
  if (end == b || *end) return 0;
  *v = x;
  return 1;
}

/* "N heads" written in the text of a yaml section (LDM text-encoder configs have no
 * heads key; the cdiff tiny test configs state it in a comment). 0 if absent. */
static int yaml_heads_phrase(const char *y, const char *section) {
  if (!y) return 0;
  const char *s = strstr(y, section);
  if (!s) return 0;
  s += strlen(section);
  const char *end = strstr(s, "_config:"); /* the next LDM section */
  for (const char *p = strstr(s, " heads"); p && (!end || p < end); p = strstr(p + 1, " heads")) {
    const char *q = p;
    while (q > s && isdigit((unsigned char)q[-1])) q--;
    if (q < p) return atoi(q);
  }
  return 0;
}

/* ------------------------------------------------------------ JSON configs */

static int json_load(const char *path, cJSON **out) {
  char *txt;
  size_t n;
  *out = NULL;
  if (cd_read_file(path, &txt, &n)) return -1;
  cJSON *j = cJSON_Parse(txt);
  free(txt);
  if (!j || !cJSON_IsObject(j)) {
    cJSON_Delete(j);
    return cd_set_error("%s: not a JSON object", path);
  }
  *out = j;
  return 0;
}

static const cJSON *jget(const cJSON *o, const char *k) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
  return it && !cJSON_IsNull(it) ? it : NULL;
}

/* integer field; def when absent; error when present but not an integer */
static int jint(const cJSON *o, const char *k, int def, const char *file, int *v) {
  const cJSON *it = jget(o, k);
  if (!it) { *v = def; return 0; }
  if (cJSON_IsBool(it)) { *v = cJSON_IsTrue(it); return 0; }
  if (!cJSON_IsNumber(it) || it->valuedouble != (double)(int)it->valuedouble)
    return cd_set_error("%s: \"%s\" must be an integer", file, k);
  *v = (int)it->valuedouble;
  return 0;
}

static int jdouble(const cJSON *o, const char *k, double def, const char *file, double *v) {
  const cJSON *it = jget(o, k);
  if (!it) { *v = def; return 0; }
  if (!cJSON_IsNumber(it)) return cd_set_error("%s: \"%s\" must be a number", file, k);
  *v = it->valuedouble;
  return 0;
}

/* int list (or one int repeated n times when rep > 0) into v[cap]; *n gets the count */
static int jints(const cJSON *o, const char *k, const char *file, int *v, int cap, int *n, int rep) {
  const cJSON *it = jget(o, k);
  if (!it) return cd_set_error("%s: missing \"%s\"", file, k);
  if (cJSON_IsNumber(it) && rep > 0) {
    for (int i = 0; i < rep; i++) v[i] = (int)it->valuedouble;
    *n = rep;
    return 0;
  }
  if (!cJSON_IsArray(it)) return cd_set_error("%s: \"%s\" must be a list of integers", file, k);
  int m = cJSON_GetArraySize(it);
  if (m < 1 || m > cap) return cd_set_error("%s: \"%s\" has %d entries (1 to %d supported)", file, k, m, cap);
  for (int i = 0; i < m; i++) {
    const cJSON *e = cJSON_GetArrayItem(it, i);
    if (!cJSON_IsNumber(e) || e->valuedouble < 1 || e->valuedouble != (double)(int)e->valuedouble)
      return cd_set_error("%s: \"%s\"[%d] must be a positive integer", file, k, i);
    v[i] = (int)e->valuedouble;
  }
  *n = m;
  return 0;
}

static int unet_config_from_json(const cJSON *j, const char *file, cd_unet_config *c) {
  memset(c, 0, sizeof *c);
  const cJSON *it;
  if ((it = jget(j, "_class_name")) && cJSON_IsString(it) &&
      strcmp(it->valuestring, "UNet2DConditionModel"))
    return cd_set_error("%s: _class_name \"%s\" is not supported (expected UNet2DConditionModel)",
                        file, it->valuestring);
  static const char *const unsupported[] = {"class_embed_type", "time_cond_proj_dim",
                                            "encoder_hid_dim", "num_class_embeds",
                                            "reverse_transformer_layers_per_block", "time_embedding_dim",
                                            "time_embedding_act_fn"};
  for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
    if (jget(j, unsupported[i]))
      return cd_set_error("%s: \"%s\" is set: this UNet variant is not supported", file, unsupported[i]);
  if ((it = jget(j, "resnet_time_scale_shift")) && cJSON_IsString(it) &&
      strcmp(it->valuestring, "default"))
    return cd_set_error("%s: resnet_time_scale_shift \"%s\" is not supported", file, it->valuestring);
  if (jint(j, "in_channels", 4, file, &c->in_channels) ||
      jint(j, "out_channels", 4, file, &c->out_channels) ||
      jints(j, "block_out_channels", file, c->block_out, CD_UNET_MAX_LEVELS, &c->nlevels, 0) ||
      jint(j, "layers_per_block", 2, file, &c->layers_per_block) ||
      jint(j, "cross_attention_dim", 768, file, &c->context_dim) ||
      jint(j, "use_linear_projection", 0, file, &c->linear_proj) ||
      jint(j, "norm_num_groups", 32, file, &c->norm_groups) ||
      jint(j, "flip_sin_to_cos", 1, file, &c->flip_sin_to_cos) ||
      jint(j, "sample_size", 64, file, &c->sample_size))
    return -1;
  double eps = 1e-5, shift = 0;
  if (jdouble(j, "norm_eps", 1e-5, file, &eps) || jdouble(j, "freq_shift", 0, file, &shift)) return -1;
  c->norm_eps = (float)eps;
  c->freq_shift = (float)shift;
  int n = c->nlevels, m;
  /* transformer_layers_per_block: one int or one per level (SDXL [1, 2, 10]); the mid
   * block takes the last level's, up level i the depth of down level n-1-i (diffusers) */
  if (!jget(j, "transformer_layers_per_block")) {
    for (int i = 0; i < n; i++) c->depth[i] = 1;
  } else {
    if (jints(j, "transformer_layers_per_block", file, c->depth, CD_UNET_MAX_LEVELS, &m, n)) return -1;
    if (m != n) return cd_set_error("%s: \"transformer_layers_per_block\" has %d entries for %d levels", file, m, n);
  }
  c->mid_depth = c->depth[n - 1];
  if ((it = jget(j, "addition_embed_type"))) {
    /* SDXL's text_time: pooled text embedding + add_time_ids numbers, each Fourier-embedded
     * addition_time_embed_dim wide; projection_class_embeddings_input_dim is their total */
    if (!cJSON_IsString(it) || strcmp(it->valuestring, "text_time"))
      return cd_set_error("%s: addition_embed_type %s%s%s is not supported (only \"text_time\", SDXL)", file,
                          cJSON_IsString(it) ? "\"" : "", cJSON_IsString(it) ? it->valuestring : "(not a string)",
                          cJSON_IsString(it) ? "\"" : "");
    int in = 0;
    if (jint(j, "addition_time_embed_dim", 0, file, &c->add_time_dim) ||
        jint(j, "projection_class_embeddings_input_dim", 0, file, &in))
      return -1;
    c->add_time_ids = CD_SDXL_TIME_IDS;
    c->add_text_dim = in - c->add_time_ids * c->add_time_dim;
    if (c->add_time_dim < 2 || c->add_time_dim % 2 || c->add_text_dim < 1)
      return cd_set_error("%s: addition_time_embed_dim %d (even, >= 2) and projection_class_embeddings_input_dim "
                          "%d (pooled width + %d x that) do not describe SDXL's text_time conditioning",
                          file, c->add_time_dim, in, CD_SDXL_TIME_IDS);
  }
  /* attention_head_dim is the number of heads (diffusers' misnomer); num_attention_heads wins */
  const char *hk = jget(j, "num_attention_heads") ? "num_attention_heads" : "attention_head_dim";
  if (jints(j, hk, file, c->heads, CD_UNET_MAX_LEVELS, &m, n)) return -1;
  if (m != n) return cd_set_error("%s: \"%s\" has %d entries for %d levels", file, hk, m, n);
  static const char *const bt[2] = {"down_block_types", "up_block_types"};
  for (int b = 0; b < 2; b++) {
    it = jget(j, bt[b]);
    if (!it || !cJSON_IsArray(it) || cJSON_GetArraySize(it) != n)
      return cd_set_error("%s: \"%s\" must be a list of %d block types", file, bt[b], n);
    for (int i = 0; i < n; i++) {
      const cJSON *e = cJSON_GetArrayItem(it, i);
      const char *s = cJSON_IsString(e) ? e->valuestring : "";
      const char *attn = b ? "CrossAttnUpBlock2D" : "CrossAttnDownBlock2D";
      const char *plain = b ? "UpBlock2D" : "DownBlock2D";
      if (strcmp(s, attn) && strcmp(s, plain))
        return cd_set_error("%s: %s[%d] \"%s\" is not supported (expected %s or %s)", file, bt[b], i,
                            s, attn, plain);
      (b ? c->up_attn : c->down_attn)[i] = !strcmp(s, attn);
    }
  }
  it = jget(j, "mid_block_type");
  const char *mid = it && cJSON_IsString(it) ? it->valuestring : "UNetMidBlock2DCrossAttn";
  if (strcmp(mid, "UNetMidBlock2DCrossAttn"))
    return cd_set_error("%s: mid_block_type \"%s\" is not supported", file, mid);
  c->mid_attn = 1;
  if (c->layers_per_block < 1 || c->norm_groups < 1 || c->context_dim < 1)
    return cd_set_error("%s: layers_per_block, norm_num_groups and cross_attention_dim must be positive", file);
  return 0;
}

static int vae_config_from_json(const cJSON *j, const char *file, cd_vae_config *c) {
  memset(c, 0, sizeof *c);
  double sf = 0.18215;
  if (jint(j, "in_channels", 3, file, &c->in_channels) ||
      jint(j, "out_channels", 3, file, &c->out_channels) ||
      jint(j, "latent_channels", 4, file, &c->latent_channels) ||
      jints(j, "block_out_channels", file, c->block_out, CD_VAE_MAX_LEVELS, &c->nlevels, 0) ||
      jint(j, "layers_per_block", 2, file, &c->layers_per_block) ||
      jint(j, "norm_num_groups", 32, file, &c->norm_groups) ||
      jdouble(j, "scaling_factor", 0.18215, file, &sf))
    return -1;
  c->scaling_factor = (float)sf;
  if (c->layers_per_block < 1 || c->norm_groups < 1 || c->latent_channels < 1)
    return cd_set_error("%s: layers_per_block, norm_num_groups and latent_channels must be positive", file);
  return 0;
}

static int clip_config_from_json(const cJSON *j, const char *file, cd_clip_config *c) {
  memset(c, 0, sizeof *c);
  const cJSON *tc = jget(j, "text_config"); /* a full CLIPModel config */
  if (tc && cJSON_IsObject(tc)) j = tc;
  if (jint(j, "vocab_size", 49408, file, &c->vocab) || jint(j, "hidden_size", 768, file, &c->width) ||
      jint(j, "num_hidden_layers", 12, file, &c->layers) ||
      jint(j, "num_attention_heads", 12, file, &c->heads) ||
      jint(j, "intermediate_size", 3072, file, &c->mlp) ||
      jint(j, "max_position_embeddings", CD_TOK_MAX_LEN, file, &c->max_pos))
    return -1;
  const cJSON *a = jget(j, "hidden_act");
  const char *act = a && cJSON_IsString(a) ? a->valuestring : "quick_gelu";
  if (!strcmp(act, "quick_gelu")) c->quick_gelu = 1;
  else if (!strcmp(act, "gelu")) c->quick_gelu = 0;
  else return cd_set_error("%s: hidden_act \"%s\" is not supported (quick_gelu or gelu)", file, act);
  if (c->width < 1 || c->layers < 1 || c->heads < 1 || c->width % c->heads)
    return cd_set_error("%s: bad text encoder shape (hidden_size %d, %d layers, %d heads)", file,
                        c->width, c->layers, c->heads);
  /* transformers pools at ids.argmax() for the legacy eos_token_id 2 (SDXL's configs), else
   * at the first eos_token_id */
  int eos;
  if (jint(j, "eos_token_id", 2, file, &eos)) return -1;
  c->pool_id = eos == 2 ? 0 : eos;
  return 0;
}

/* ------------------------------------------------------------ diffusers folder */

static int find_weights(const char *dir, char **out) {
  static const char *const names[] = {
      "diffusion_pytorch_model.safetensors", "model.safetensors",
      "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
      "diffusion_pytorch_model.bin", "pytorch_model.bin",
      "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    char *p = cd_path_join(dir, names[i]);
    if (cd_file_exists(p)) { *out = p; return 0; }
    free(p);
  }
  *out = NULL;
  return cd_set_error("%s: no weights file (looked for diffusion_pytorch_model[.fp16].safetensors, "
                      "model[.fp16].safetensors and the .bin equivalents)", dir);
}

/* Older diffusers VAEs name the mid attention query/key/value/proj_attn (with 1x1 conv
 * shapes in some conversions): renamed to to_q/to_k/to_v/to_out.0 as diffusers does. */
static int vae_legacy_name(const char *key, char *out, size_t cap) {
  static const char *const from[] = {".query.", ".key.", ".value.", ".proj_attn."};
  static const char *const to[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
  if (!strstr(key, "mid_block.attentions.0.")) return 0;
  for (int i = 0; i < 4; i++) {
    const char *p = strstr(key, from[i]);
    if (p) {
      snprintf(out, cap, "%.*s%s%s", (int)(p - key), key, to[i], p + strlen(from[i]));
      return 1;
    }
  }
  return 0;
}

static int load_folder_weights(const char *file, int comp, cd_weights *w, char dtype[16], const cd_load_opts *o) {
  cd_tensor_file *f;
  if (cd_tensor_file_open(file, &f)) return -1;
  dtally tally = {{0}, want_type(o)};
  int rc = 0;
  reserve_for(w, f, "");
  for (int i = 0; i < cd_tf_count(f) && !rc; i++) {
    const cd_tensor_info *t = cd_tf_at(f, i);
    const char *name = t->name;
    char buf[CD_KM_NAME];
    int ndim = t->ndim;
    int64_t ne[CD_TF_MAX_DIMS];
    memcpy(ne, t->shape, sizeof ne);
    if (comp == C_TEXT || comp == C_TEXT2) {
      /* buffers / CLIPTextModelWithProjection extras; SDXL's second encoder keeps its projection */
      if (cd_ends_with(name, "position_ids") || !strcmp(name, "logit_scale") ||
          (comp == C_TEXT && starts_with(name, "text_projection.")))
        continue;
      if (!starts_with(name, "text_model.") && !starts_with(name, "text_projection.")) {
        /* transformers 5 saves without the prefix */
        snprintf(buf, sizeof buf, "text_model.%s", name);
        name = buf;
      }
    } else if (comp == C_VAE && vae_legacy_name(name, buf, sizeof buf)) {
      name = buf;
    }
    if (comp == C_VAE && strstr(name, "mid_block.attentions.0.to_") && ndim == 4 && ne[2] == 1 &&
        ne[3] == 1)
      ndim = 2; /* 1x1 conv attention weights -> linear */
    if (ndim > 4) {
      rc = cd_set_error("%s: tensor %s has %d dimensions", file, t->name, t->ndim);
      break;
    }
    rc = put_f32(w, f, t, name, ndim, ne, &tally);
  }
  free(tally.scratch);
  cd_weights_seal(w);
  cd_tensor_file_close(f);
  dtally_label(&tally, dtype);
  if (!rc && cd_weights_count(w) == 0) rc = cd_set_error("%s: no tensors", file);
  return rc;
}

/* The projection of SDXL's second encoder is a [proj, width] Linear without bias. */
static int check_projection(cd_clip *t, const char *where) {
  const cd_weight *x = cd_weights_get(t->w, "text_projection.weight");
  if (!x) return cd_set_error("%s: SDXL's second text encoder has no text_projection.weight", where);
  if (x->ndim != 2 || x->ne[1] != t->cfg.width)
    return cd_set_error("%s: text_projection.weight must be [proj, %d]", where, t->cfg.width);
  t->cfg.proj = (int)x->ne[0];
  return 0;
}

/* SDXL: text_encoder_2/ (CLIPTextModelWithProjection). Its presence in model_index.json
 * or on disk makes the family SDXL; its weights load unless no_text. */
static int load_folder_text2(const char *dir, const cJSON *idx, const cd_load_opts *o, cd_sd_model *m) {
  char *cf = cd_path_join(dir, "text_encoder_2/config.json"), *sd = cd_path_join(dir, "text_encoder_2");
  char *file = NULL;
  cJSON *j = NULL;
  int rc = -1;
  /* listed as ["transformers", "CLIPTextModelWithProjection"]; [null, null] means none */
  const cJSON *e = jget(idx, "text_encoder_2");
  int listed = e && (!cJSON_IsArray(e) || cJSON_IsString(cJSON_GetArrayItem(e, 0)));
  if (!listed && !cd_file_exists(cf)) {
    rc = m->family == CD_FAMILY_SDXL && !o->no_text
             ? cd_set_error("%s: an SDXL UNet (text_time conditioning) needs text_encoder_2/ beside text_encoder/", dir)
             : 0;
    if (m->family == CD_FAMILY_SDXL) m->force_zeros_empty = 1;
    goto done;
  }
  m->family = CD_FAMILY_SDXL;
  m->clip.cfg.pad_id = 49407;
  const cJSON *fz = jget(idx, "force_zeros_for_empty_prompt");
  m->force_zeros_empty = fz ? cJSON_IsTrue(fz) : 1;
  if (o->no_text) { rc = 0; goto done; }
  if (!cd_file_exists(cf)) { cd_set_error("%s: missing text_encoder_2/config.json (SDXL)", dir); goto done; }
  if (json_load(cf, &j) || clip_config_from_json(j, cf, &m->clip2.cfg)) goto done;
  m->clip2.cfg.pad_id = 0;
  if (find_weights(sd, &file)) goto done;
  m->clip2.w = cd_weights_new();
  if (load_folder_weights(file, C_TEXT2, m->clip2.w, m->dtype[C_TEXT2], o) ||
      check_projection(&m->clip2, file))
    goto done;
  rc = 0;
done:
  cJSON_Delete(j);
  free(cf);
  free(sd);
  free(file);
  return rc;
}

static int load_folder(const char *dir, const cd_load_opts *o, cd_sd_model *m) {
  char *p = cd_path_join(dir, "model_index.json");
  cJSON *idx = NULL, *jt = NULL, *ju = NULL, *jv = NULL;
  char *files[3] = {NULL, NULL, NULL};
  int rc = -1;
  if (!cd_file_exists(p)) {
    cd_set_error("%s: not a diffusers folder (no model_index.json)", dir);
    goto done;
  }
  if (json_load(p, &idx)) goto done;
  snprintf(m->layout, sizeof m->layout, "diffusers");
  static const char *const sub[3] = {"text_encoder", "unet", "vae"};
  static const char *const cfgname[3] = {"text_encoder/config.json", "unet/config.json",
                                         "vae/config.json"};
  cJSON **js[3] = {&jt, &ju, &jv};
  for (int c = 0; c < 3; c++) {
    int skip = (c == C_TEXT && o->no_text) || (c == C_UNET && o->no_unet) || (c == C_VAE && o->no_vae);
    char *cf = cd_path_join(dir, cfgname[c]);
    int have = cd_file_exists(cf);
    if (have && json_load(cf, js[c])) { free(cf); goto done; }
    if (!have && !skip) {
      cd_set_error("%s: missing %s", dir, cfgname[c]);
      free(cf);
      goto done;
    }
    free(cf);
  }
  char *cf;
  if (ju) {
    cf = cd_path_join(dir, cfgname[C_UNET]);
    int e = unet_config_from_json(ju, cf, &m->unet.cfg);
    free(cf);
    if (e) goto done;
  }
  if (jv) {
    cf = cd_path_join(dir, cfgname[C_VAE]);
    int e = vae_config_from_json(jv, cf, &m->vae.cfg);
    free(cf);
    if (e) goto done;
  }
  if (jt) {
    cf = cd_path_join(dir, cfgname[C_TEXT]);
    int e = clip_config_from_json(jt, cf, &m->clip.cfg);
    free(cf);
    if (e) goto done;
    m->family = m->clip.cfg.quick_gelu ? CD_FAMILY_SD1 : CD_FAMILY_SD2;
  } else {
    m->family = m->unet.cfg.linear_proj ? CD_FAMILY_SD2 : CD_FAMILY_SD1;
  }
  if (m->unet.cfg.add_time_dim > 0) m->family = CD_FAMILY_SDXL; /* unet: addition_embed_type text_time */
  m->clip.cfg.pad_id = m->family == CD_FAMILY_SD2 ? 0 : 49407;

  /* scheduler: missing config -> SD defaults */
  cd_sched_config_default(&m->sched);
  cf = cd_path_join(dir, "scheduler/scheduler_config.json");
  if (cd_file_exists(cf)) {
    char *txt;
    size_t n;
    if (cd_read_file(cf, &txt, &n)) { free(cf); goto done; }
    int e = cd_sched_config_from_json(&m->sched, txt, cf, NULL);
    free(txt);
    if (e) { free(cf); goto done; }
  } else {
    cd_warn("%s not found: using the SD defaults (epsilon prediction)", cf);
  }
  free(cf);

  cd_weights **ws[3] = {&m->clip.w, &m->unet.w, &m->vae.w};
  for (int c = 0; c < 3; c++) {
    int skip = (c == C_TEXT && o->no_text) || (c == C_UNET && o->no_unet) || (c == C_VAE && o->no_vae);
    if (skip) continue;
    char *sd = cd_path_join(dir, sub[c]);
    int e = find_weights(sd, &files[c]);
    free(sd);
    if (e) goto done;
    *ws[c] = cd_weights_new();
    if (load_folder_weights(files[c], c, *ws[c], m->dtype[c], o)) goto done;
  }
  if (load_folder_text2(dir, idx, o, m)) goto done;
  rc = 0;
done:
  free(p);
  for (int c = 0; c < 3; c++) free(files[c]);
  cJSON_Delete(idx);
  cJSON_Delete(jt);
  cJSON_Delete(ju);
  cJSON_Delete(jv);
  return rc;
}

/* ------------------------------------------------------------ single file */

typedef struct {
  const cd_tensor_file *f;
  const char *path;
  char root[32]; /* "" or "state_dict." before the model prefixes */
} sfile;

/* key = root + pre + printf(fmt, ap) */
static void sf_vkey(const sfile *s, char *key, size_t cap, const char *pre, const char *fmt, va_list ap) {
  int k = snprintf(key, cap, "%s%s", s->root, pre);
  vsnprintf(key + k, cap - (size_t)k, fmt, ap);
}

/* tensor root + pre + printf(fmt) or NULL */
static const cd_tensor_info *sf_find(const sfile *s, const char *pre, const char *fmt, ...)
    CD_PRINTF(3, 4);
static const cd_tensor_info *sf_find(const sfile *s, const char *pre, const char *fmt, ...) {
  char key[512];
  va_list ap;
  va_start(ap, fmt);
  sf_vkey(s, key, sizeof key, pre, fmt, ap);
  va_end(ap);
  return cd_tf_find(s->f, key);
}

/* like sf_find, but the tensor must exist with ndim dimensions */
static int sf_need(const sfile *s, const cd_tensor_info **out, int ndim, const char *pre,
                   const char *fmt, ...) CD_PRINTF(5, 6);
static int sf_need(const sfile *s, const cd_tensor_info **out, int ndim, const char *pre,
                   const char *fmt, ...) {
  char key[512];
  va_list ap;
  va_start(ap, fmt);
  sf_vkey(s, key, sizeof key, pre, fmt, ap);
  va_end(ap);
  const cd_tensor_info *t = cd_tf_find(s->f, key);
  if (!t) return cd_set_error("%s: missing key %s", s->path, key);
  if (t->ndim != ndim) {
    char sh[96];
    shape_str(t->shape, t->ndim, sh, sizeof sh);
    return cd_set_error("%s: %s has shape %s, expected %d dimensions", s->path, key, sh, ndim);
  }
  *out = t;
  return 0;
}

/* highest N in keys root+pre+"N." (-1 if none) */
static int sf_max_index(const sfile *s, const char *pre) {
  char full[256];
  snprintf(full, sizeof full, "%s%s", s->root, pre);
  size_t n = strlen(full);
  int best = -1;
  for (int i = 0; i < cd_tf_count(s->f); i++) {
    const char *k = cd_tf_at(s->f, i)->name;
    if (strncmp(k, full, n) || !isdigit((unsigned char)k[n])) continue;
    int v = atoi(k + n);
    if (v > best) best = v;
  }
  return best;
}

#define UP "model.diffusion_model."
#define VP "first_stage_model."
#define TP "cond_stage_model."
#define XP0 "conditioner.embedders.0." /* SDXL text encoders */
#define XP1 "conditioner.embedders.1."

static int detect_unet(const sfile *s, const char *yaml, cd_family fam, cd_unet_config *c) {
  memset(c, 0, sizeof *c);
  const cd_tensor_info *t;
  if (sf_need(s, &t, 4, UP, "input_blocks.0.0.weight")) return -1;
  int64_t c0 = t->shape[0];
  c->in_channels = (int)t->shape[1];
  int K = sf_max_index(s, UP "input_blocks."), L = -1;
  for (int k = 1; k <= K && L < 0; k++)
    if (sf_find(s, UP, "input_blocks.%d.0.op.weight", k)) L = k - 1;
  if (L < 0) L = K; /* one level: no downsampler */
  if (L < 1 || (K + 1) % (L + 1))
    return cd_set_error("%s: cannot infer the UNet levels from input_blocks.0-%d", s->path, K);
  c->nlevels = (K + 1) / (L + 1);
  c->layers_per_block = L;
  if (c->nlevels > CD_UNET_MAX_LEVELS)
    return cd_set_error("%s: %d UNet levels (at most %d supported)", s->path, c->nlevels, CD_UNET_MAX_LEVELS);
  int n = c->nlevels, nout = sf_max_index(s, UP "output_blocks.") + 1;
  if (nout != n * (L + 1))
    return cd_set_error("%s: %d output_blocks for %d levels of %d input blocks (expected %d)", s->path,
                        nout, n, L, n * (L + 1));
  int64_t prev = c0;
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < L; j++) {
      int k = 1 + i * (L + 1) + j;
      const cd_tensor_info *w1, *w2;
      if (sf_need(s, &w1, 4, UP, "input_blocks.%d.0.in_layers.2.weight", k) ||
          sf_need(s, &w2, 4, UP, "input_blocks.%d.0.out_layers.3.weight", k))
        return -1;
      if (j == 0) c->block_out[i] = (int)w1->shape[0];
      if (w1->shape[1] != prev || w1->shape[0] != c->block_out[i] || w2->shape[0] != c->block_out[i])
        return cd_set_error("%s: input_blocks.%d.0 has %lld -> %lld channels, inconsistent with level %d "
                            "(%lld -> %d)", s->path, k, (long long)w1->shape[1],
                            (long long)w1->shape[0], i, (long long)prev, c->block_out[i]);
      prev = c->block_out[i];
    }
    c->down_attn[i] = sf_find(s, UP, "input_blocks.%d.1.proj_in.weight", 1 + i * (L + 1)) != NULL;
    c->up_attn[i] = sf_find(s, UP, "output_blocks.%d.1.proj_in.weight", i * (L + 1)) != NULL;
  }
  c->mid_attn = sf_find(s, UP, "middle_block.1.proj_in.weight") != NULL;
  /* transformer depth per level (SDXL 1/2/10): blocks transformer_blocks.0..N-1 of every
   * SpatialTransformer of the level, down and up alike */
  for (int i = 0; i < n; i++) {
    c->depth[i] = 0;
    for (int b = 0; b < 2 * L + 1; b++) {
      int down = b < L, k = down ? 1 + i * (L + 1) + b : (n - 1 - i) * (L + 1) + (b - L);
      char pre[96];
      snprintf(pre, sizeof pre, UP "%s_blocks.%d.1.transformer_blocks.", down ? "input" : "output", k);
      if (!(down ? c->down_attn[i] : c->up_attn[n - 1 - i])) continue;
      int d = sf_max_index(s, pre) + 1;
      if (d < 1) return cd_set_error("%s: %s%s0.* is missing", s->path, s->root, pre);
      if (c->depth[i] && d != c->depth[i])
        return cd_set_error("%s: level %d has transformers of depth %d and %d (%s%s*)", s->path, i, c->depth[i], d,
                            s->root, pre);
      c->depth[i] = d;
    }
    if (!c->depth[i]) c->depth[i] = 1;
  }
  c->mid_depth = c->mid_attn ? sf_max_index(s, UP "middle_block.1.transformer_blocks.") + 1 : 1;
  if (c->mid_depth < 1) return cd_set_error("%s: middle_block.1 has no transformer_blocks", s->path);
  /* SGM's label_emb.0 = Linear(adm_in, tdim), SiLU, Linear(tdim, tdim): SDXL's text_time
   * conditioning, adm_in = pooled width + 6 x the embedders' outdim (256 unless the yaml says) */
  if ((t = sf_find(s, UP, "label_emb.0.0.weight"))) {
    if (t->ndim != 2) return cd_set_error("%s: " UP "label_emb.0.0.weight must be 2-D", s->path);
    c->add_time_dim = 256;
    yaml_int(yaml, NULL, "outdim", &c->add_time_dim);
    c->add_time_ids = CD_SDXL_TIME_IDS;
    c->add_text_dim = (int)t->shape[1] - c->add_time_ids * c->add_time_dim;
    if (c->add_time_dim < 2 || c->add_time_dim % 2 || c->add_text_dim < 1)
      return cd_set_error("%s: label_emb.0.0 takes %lld inputs: not a pooled text embedding plus %d time ids of "
                          "width %d (SDXL)", s->path, (long long)t->shape[1], CD_SDXL_TIME_IDS, c->add_time_dim);
  }
  if (sf_need(s, &t, 4, UP, "out.2.weight")) return -1;
  c->out_channels = (int)t->shape[0];
  if (t->shape[1] != c0)
    return cd_set_error("%s: out.2.weight takes %lld channels, conv_in makes %lld", s->path,
                        (long long)t->shape[1], (long long)c0);
  if (sf_need(s, &t, 2, UP, "time_embed.0.weight")) return -1;
  if (t->shape[1] != c0)
    return cd_set_error("%s: time_embed.0.weight takes %lld channels, expected model_channels %lld",
                        s->path, (long long)t->shape[1], (long long)c0);
  /* context width and projection kind, checked on every transformer */
  c->context_dim = 0;
  int proj_nd = 0;
  const char *ctx_key = "";
  size_t rl = strlen(s->root);
  for (int i = 0; i < cd_tf_count(s->f); i++) {
    const cd_tensor_info *x = cd_tf_at(s->f, i);
    if (strncmp(x->name + rl, UP, strlen(UP)) || strncmp(x->name, s->root, rl)) continue;
    if (cd_ends_with(x->name, ".attn2.to_k.weight") || cd_ends_with(x->name, ".attn2.to_v.weight")) {
      if (x->ndim != 2 || (c->context_dim && x->shape[1] != c->context_dim))
        return cd_set_error("%s: cross-attention context widths disagree: %s takes %lld, %s takes %d",
                            s->path, x->name, x->ndim == 2 ? (long long)x->shape[1] : -1LL,
                            ctx_key, c->context_dim);
      c->context_dim = (int)x->shape[1];
      ctx_key = x->name;
    } else if (cd_ends_with(x->name, ".proj_in.weight") || cd_ends_with(x->name, ".proj_out.weight")) {
      if ((x->ndim != 2 && x->ndim != 4) || (proj_nd && x->ndim != proj_nd))
        return cd_set_error("%s: %s mixes linear and 1x1-conv transformer projections", s->path, x->name);
      proj_nd = x->ndim;
    }
  }
  if (!c->context_dim) return cd_set_error("%s: no cross-attention layers (attn2.to_k) in the UNet", s->path);
  c->linear_proj = proj_nd == 2;
  c->norm_groups = 32;
  yaml_int(yaml, NULL, "norm_num_groups", &c->norm_groups);
  c->norm_eps = 1e-5f;
  c->flip_sin_to_cos = 1;
  c->freq_shift = 0;
  /* heads: num_head_channels (SD 2.x style) or num_heads (SD 1.x style) from the yaml,
   * else SD 2.x head width 64, SD 1.x 8 heads */
  int hc = 0, nh = 0;
  /* LDM's unet_config, SGM's network_config */
  if (!yaml_int(yaml, "unet_config", "num_head_channels", &hc)) yaml_int(yaml, "network_config", "num_head_channels", &hc);
  if (!yaml_int(yaml, "unet_config", "num_heads", &nh)) yaml_int(yaml, "network_config", "num_heads", &nh);
  if (hc <= 0 && nh <= 0) {
    if (fam == CD_FAMILY_SD2 || fam == CD_FAMILY_SDXL || c->add_time_dim > 0) hc = 64;
    else nh = 8;
  }
  for (int i = 0; i < n; i++) {
    int ch = c->block_out[i];
    int h = hc > 0 ? ch / hc : nh;
    int needs = c->down_attn[i] || c->up_attn[n - 1 - i] || (i == n - 1 && c->mid_attn);
    if (needs && (h < 1 || ch % h || (hc > 0 && ch % hc)))
      return cd_set_error("%s: level %d has %d channels, not divisible into %s %d", s->path, i, ch,
                          hc > 0 ? "heads of width" : "heads:", hc > 0 ? hc : nh);
    c->heads[i] = h > 0 ? h : 1;
    if (ch % c->norm_groups)
      return cd_set_error("%s: level %d has %d channels, not divisible into %d GroupNorm groups%s",
                          s->path, i, ch, c->norm_groups,
                          yaml ? "" : " (set norm_num_groups in a .yaml beside the checkpoint)");
  }
  return 0;
}

static int detect_vae(const sfile *s, const char *yaml, cd_vae_config *c) {
  memset(c, 0, sizeof *c);
  const cd_tensor_info *t;
  if (sf_need(s, &t, 4, VP, "encoder.conv_in.weight")) return -1;
  c->in_channels = (int)t->shape[1];
  int64_t prev = t->shape[0];
  c->nlevels = sf_max_index(s, VP "encoder.down.") + 1;
  c->layers_per_block = sf_max_index(s, VP "encoder.down.0.block.") + 1;
  int n = c->nlevels, L = c->layers_per_block;
  if (n < 1 || n > CD_VAE_MAX_LEVELS || L < 1)
    return cd_set_error("%s: cannot infer the VAE levels (%d levels, %d blocks)", s->path, n, L);
  if (sf_max_index(s, VP "decoder.up.") + 1 != n)
    return cd_set_error("%s: the VAE decoder has %d up levels, the encoder %d", s->path,
                        sf_max_index(s, VP "decoder.up.") + 1, n);
  for (int i = 0; i < n; i++) {
    const cd_tensor_info *w;
    for (int j = 0; j < L; j++) {
      if (sf_need(s, &w, 4, VP, "encoder.down.%d.block.%d.conv1.weight", i, j)) return -1;
      if (j == 0) c->block_out[i] = (int)w->shape[0];
      if (w->shape[1] != prev || w->shape[0] != c->block_out[i])
        return cd_set_error("%s: encoder.down.%d.block.%d.conv1 has %lld -> %lld channels, expected %lld -> %d",
                            s->path, i, j, (long long)w->shape[1], (long long)w->shape[0],
                            (long long)prev, c->block_out[i]);
      prev = w->shape[0];
    }
    if (sf_max_index(s, VP "decoder.up.0.block.") != L)
      return cd_set_error("%s: decoder up levels need %d blocks", s->path, L + 1);
  }
  if (sf_need(s, &t, 4, VP, "post_quant_conv.weight")) return -1;
  c->latent_channels = (int)t->shape[0];
  if (sf_need(s, &t, 4, VP, "encoder.conv_out.weight")) return -1;
  if (t->shape[0] != 2 * c->latent_channels)
    return cd_set_error("%s: encoder.conv_out makes %lld channels, expected 2 x latent %d", s->path,
                        (long long)t->shape[0], c->latent_channels);
  if (sf_need(s, &t, 4, VP, "decoder.conv_out.weight")) return -1;
  c->out_channels = (int)t->shape[0];
  c->norm_groups = 32;
  yaml_int(yaml, NULL, "norm_num_groups", &c->norm_groups);
  double sf = 0.18215;
  yaml_double(yaml, NULL, "scale_factor", &sf);
  c->scaling_factor = (float)sf;
  for (int i = 0; i < n; i++)
    if (c->block_out[i] % c->norm_groups)
      return cd_set_error("%s: VAE level %d has %d channels, not divisible into %d GroupNorm groups",
                          s->path, i, c->block_out[i], c->norm_groups);
  return 0;
}

/* openclip: 1 for cond_stage_model.model.* (SD 2.x). *stored: blocks in the file.
 * tp: the encoder's key prefix (TP, or SDXL's conditioner.embedders.N.). sdxl: every
 * block is kept (cd_clip_build_sdxl takes the penultimate one) and an OpenCLIP
 * encoder's model.text_projection [width, proj] is its pooled projection. */
static int detect_clip(const sfile *s, const char *yaml, int openclip, const char *tp, int sdxl,
                       cd_clip_config *c, int *stored) {
  memset(c, 0, sizeof *c);
  const cd_tensor_info *te, *pe, *fc;
  char k[160];
  if (openclip) {
    if (sf_need(s, &te, 2, tp, "model.token_embedding.weight") ||
        sf_need(s, &pe, 2, tp, "model.positional_embedding") ||
        sf_need(s, &fc, 2, tp, "model.transformer.resblocks.0.mlp.c_fc.weight"))
      return -1;
    snprintf(k, sizeof k, "%smodel.transformer.resblocks.", tp);
    *stored = sf_max_index(s, k) + 1;
    /* SD 2.x conditions on the penultimate block ("layer: penultimate" in its yaml) */
    char layer[32] = "penultimate";
    if (!sdxl) yaml_get(yaml, "cond_stage_config", "layer", layer, sizeof layer);
    c->layers = sdxl || !strcmp(layer, "last") ? *stored : *stored - 1;
    c->quick_gelu = 0;
    c->pad_id = 0;
    if (sdxl) {
      const cd_tensor_info *pr;
      if (sf_need(s, &pr, 2, tp, "model.text_projection")) return -1;
      if (pr->shape[0] != te->shape[1])
        return cd_set_error("%s: %smodel.text_projection must be [%lld, proj]", s->path, tp,
                            (long long)te->shape[1]);
      c->proj = (int)pr->shape[1];
    }
  } else {
    const char *pre = sf_find(s, tp, "transformer.text_model.embeddings.token_embedding.weight")
                          ? "transformer.text_model." : "transformer.";
    snprintf(k, sizeof k, "%s%sencoder.layers.", tp, pre);
    if (sf_need(s, &te, 2, tp, "%sembeddings.token_embedding.weight", pre) ||
        sf_need(s, &pe, 2, tp, "%sembeddings.position_embedding.weight", pre) ||
        sf_need(s, &fc, 2, tp, "%sencoder.layers.0.mlp.fc1.weight", pre))
      return -1;
    *stored = c->layers = sf_max_index(s, k) + 1;
    c->quick_gelu = 1;
    c->pad_id = 49407;
  }
  c->vocab = (int)te->shape[0];
  c->width = (int)te->shape[1];
  c->max_pos = (int)pe->shape[0];
  c->mlp = (int)fc->shape[0];
  if (pe->shape[1] != c->width || fc->shape[1] != c->width)
    return cd_set_error("%s: text encoder widths disagree (token embedding %d, position embedding %lld, "
                        "MLP input %lld)", s->path, c->width, (long long)pe->shape[1], (long long)fc->shape[1]);
  if (c->layers < 1) return cd_set_error("%s: text encoder has no usable layers", s->path);
  /* heads: not stored anywhere in LDM files; CLIP/OpenCLIP text towers use width/64 */
  int h = 0;
  if (!yaml_int(yaml, "cond_stage_config", "heads", &h)) yaml_int(yaml, "cond_stage_config", "num_heads", &h);
  if (h <= 0) h = yaml_heads_phrase(yaml, "cond_stage_config");
  if (h <= 0) {
    if (c->width % 64) {
      cd_warn("%s: text encoder width %d is not a multiple of 64 and no heads are given in a .yaml; "
              "using 1 head", s->path, c->width);
      h = 1;
    } else {
      h = c->width / 64;
    }
  }
  if (c->width % h) return cd_set_error("%s: text width %d is not divisible by %d heads", s->path, c->width, h);
  c->heads = h;
  return 0;
}

static const char *const SCHEDULE_BUFFERS[] = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "model_ema.decay",
    "model_ema.num_updates"};

static int is_schedule_buffer(const char *k) {
  for (size_t i = 0; i < sizeof SCHEDULE_BUFFERS / sizeof *SCHEDULE_BUFFERS; i++)
    if (!strcmp(k, SCHEDULE_BUFFERS[i])) return 1;
  return 0;
}

/* maps and stores every key of one component (keys root+pre*) */
static int load_component_with(const sfile *s, const char *pre, const cd_keymap *km, cd_weights *w,
                               char dtype[16], dtally *tally) {
  size_t rl = strlen(s->root), pl = strlen(pre);
  int count = 0;
  char full[256];
  snprintf(full, sizeof full, "%s%s", s->root, pre);
  reserve_for(w, s->f, full);
  for (int i = 0; i < cd_tf_count(s->f); i++) {
    const cd_tensor_info *t = cd_tf_at(s->f, i);
    if (strncmp(t->name, s->root, rl) || strncmp(t->name + rl, pre, pl)) continue;
    const char *key = t->name + rl + pl;
    cd_km_result r;
    char sh[96];
    switch (cd_keymap_map(km, key, &r)) {
    case CD_KM_UNKNOWN:
      return cd_set_error("%s: unexpected key %s (not part of a Stable Diffusion 1.x/2.x %s of "
                          "this layout)", s->path, t->name, pre);
    case CD_KM_IGNORE:
      continue;
    case CD_KM_COPY:
      if (t->ndim > 4) {
        shape_str(t->shape, t->ndim, sh, sizeof sh);
        return cd_set_error("%s: %s has shape %s", s->path, t->name, sh);
      }
      if (put_f32(w, s->f, t, r.dst[0], t->ndim, t->shape, tally)) return -1;
      break;
    case CD_KM_SQUEEZE: {
      int ok = (t->ndim == 4 && t->shape[2] == 1 && t->shape[3] == 1) || t->ndim == 2;
      if (!ok) {
        shape_str(t->shape, t->ndim, sh, sizeof sh);
        return cd_set_error("%s: %s has shape %s, expected a 1x1 convolution [C, C, 1, 1]", s->path,
                            t->name, sh);
      }
      if (put_f32(w, s->f, t, r.dst[0], 2, t->shape, tally)) return -1;
      break;
    }
    case CD_KM_SPLIT3: {
      /* [3d, d] weight or [3d] bias -> three [d, d] / [d] */
      int okw = t->ndim == 2 && t->shape[0] == 3 * t->shape[1];
      int okb = t->ndim == 1 && t->shape[0] % 3 == 0;
      if (!(okw || okb) || !is_float(t->dtype)) {
        shape_str(t->shape, t->ndim, sh, sizeof sh);
        return cd_set_error("%s: %s has shape %s, expected [3d, d] or [3d] (q, k, v stacked)", s->path,
                            t->name, sh);
      }
      int64_t n = cd_tensor_numel(t), part = n / 3;
      float *all = scratch_f32(tally, n);
      if (cd_tf_read_f32(s->f, t, all)) return -1;
      release_pages(s->f, t);
      int64_t ne[2] = {t->shape[0] / 3, t->ndim == 2 ? t->shape[1] : 0};
      for (int q = 0; q < 3; q++) {
        if (cd_weights_get(w, r.dst[q])) return cd_set_error("%s: two keys map to the weight %s", s->path, r.dst[q]);
        if (store_values(w, r.dst[q], t->ndim, ne, storage_type(t->dtype, t->ndim, tally), all + q * part)) return -1;
      }
      tally->n[t->dtype]++;
      break;
    }
    case CD_KM_TRANSPOSE: {
      if (t->ndim != 2 || !is_float(t->dtype)) {
        shape_str(t->shape, t->ndim, sh, sizeof sh);
        return cd_set_error("%s: %s has shape %s, expected a 2-D float matrix", s->path, t->name, sh);
      }
      if (cd_weights_get(w, r.dst[0])) return cd_set_error("%s: two keys map to the weight %s", s->path, r.dst[0]);
      const int64_t a = t->shape[0], b = t->shape[1], ab = a * b > 0 ? a * b : 1;
      float *in = scratch_f32(tally, ab);
      if (cd_tf_read_f32(s->f, t, in)) return -1;
      release_pages(s->f, t);
      float *d = cd_malloc((size_t)ab * sizeof(float));
      for (int64_t i = 0; i < a; i++)
        for (int64_t j = 0; j < b; j++) d[j * a + i] = in[i * b + j];
      int rc = store_values(w, r.dst[0], 2, (int64_t[]){b, a}, storage_type(t->dtype, 2, tally), d);
      free(d);
      if (rc) return -1;
      tally->n[t->dtype]++;
      break;
    }
    }
    count++;
  }
  cd_weights_seal(w);
  dtally_label(tally, dtype);
  if (!count) return cd_set_error("%s: no %s* weights", s->path, pre);
  return 0;
}

static int load_component(const sfile *s, const char *pre, const cd_keymap *km, cd_weights *w,
                          char dtype[16], const cd_load_opts *o) {
  dtally tally = {{0}, want_type(o), NULL, 0};
  int rc = load_component_with(s, pre, km, w, dtype, &tally);
  free(tally.scratch);
  return rc;
}

/* the yaml beside a checkpoint: same name with .yaml; *out NULL if none or unreadable */
static void read_yaml_beside(const char *path, char **out) {
  size_t n = strlen(path);
  const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
  if (!dot || (slash && dot < slash)) dot = path + n;
  size_t cap = (size_t)(dot - path) + 6;
  char *y = cd_malloc(cap);
  snprintf(y, cap, "%.*s.yaml", (int)(dot - path), path);
  size_t len;
  *out = NULL;
  if (cd_file_exists(y)) {
    if (cd_read_file(y, out, &len)) {
      cd_warn("%s (ignored)", cd_last_error());
      *out = NULL;
    } else {
      cd_log("using %s", y);
    }
  }
  free(y);
}

static int load_single(const char *path, const cd_load_opts *o, cd_sd_model *m, char **yaml_out) {
  cd_tensor_file *f = NULL;
  char *yaml = NULL;
  cd_keymap km = {0};
  int rc = -1;
  if (cd_tensor_file_open(path, &f)) {
    cd_prefix_error("cannot read checkpoint %s", path);
    return -1;
  }
  snprintf(m->layout, sizeof m->layout, "%s",
           cd_ends_with(path, ".safetensors") ? "single-file safetensors" : "single-file ckpt");
  sfile s = {f, path, ""};
  /* root: whatever precedes the UNet prefix (e.g. "state_dict." of nested checkpoints) */
  int have_unet = 0, have_vae = 0, oc = 0, hf = 0, unknown = 0, xl = 0;
  const char *first_unknown = NULL;
  for (int i = 0; i < cd_tf_count(f) && !have_unet; i++) {
    const char *k = cd_tf_at(f, i)->name, *p = strstr(k, UP);
    if (p && (p == k || p[-1] == '.') && (size_t)(p - k) < sizeof s.root) {
      snprintf(s.root, sizeof s.root, "%.*s", (int)(p - k), k);
      have_unet = 1;
    }
  }
  size_t rl = strlen(s.root);
  for (int i = 0; i < cd_tf_count(f); i++) {
    const char *full = cd_tf_at(f, i)->name;
    if (strncmp(full, s.root, rl)) { unknown++; if (!first_unknown) first_unknown = full; continue; }
    const char *k = full + rl;
    /* SDXL (SGM): CLIP ViT-L in HF layout and OpenCLIP ViT-bigG */
    if (starts_with(k, XP0 "transformer.")) { hf = xl = 1; continue; }
    if (starts_with(k, XP1 "model.")) { oc = xl = 1; continue; }
    if (starts_with(k, "conditioner.")) {
      cd_set_error("%s: unexpected conditioner key %s (SDXL has conditioner.embedders.0.transformer.* "
                   "and conditioner.embedders.1.model.*)", path, full);
      goto done;
    }
    if (starts_with(k, UP)) continue;
    if (starts_with(k, VP)) { have_vae = 1; continue; }
    if (starts_with(k, TP "model.")) { oc = 1; continue; }
    if (starts_with(k, TP "transformer.")) { hf = 1; continue; }
    if (is_schedule_buffer(k) || starts_with(k, "model_ema.")) continue;
    if (starts_with(k, TP)) {
      cd_set_error("%s: unexpected text-encoder key %s (expected cond_stage_model.transformer.* "
                   "or cond_stage_model.model.*)", path, full);
      goto done;
    }
    unknown++;
    if (!first_unknown) first_unknown = full;
  }
  if (!have_unet) {
    cd_set_error("%s does not look like a Stable Diffusion checkpoint (no model.diffusion_model.* keys)", path);
    goto done;
  }
  if (unknown) cd_warn("%s: ignoring %d keys outside the model (first: %s)", path, unknown, first_unknown);
  if (xl && (!oc || !hf) && !o->no_text) {
    cd_set_error("%s: SDXL needs both text encoders (%s*)", path, oc ? XP0 "transformer." : XP1 "model.");
    goto done;
  }
  if (oc && hf && !xl) {
    cd_set_error("%s: both OpenCLIP (cond_stage_model.model.*) and CLIP (cond_stage_model.transformer.*) "
                 "text-encoder keys", path);
    goto done;
  }
  if (!o->no_text && !oc && !hf) {
    cd_set_error("%s: no text encoder (cond_stage_model.*) keys", path);
    goto done;
  }
  if (!o->no_vae && !have_vae) {
    cd_set_error("%s: no VAE (first_stage_model.*) keys", path);
    goto done;
  }
  read_yaml_beside(path, &yaml);
  m->family = xl ? CD_FAMILY_SDXL : oc ? CD_FAMILY_SD2 : CD_FAMILY_SD1;

  if (!oc && !hf) { /* text encoder absent and not asked for: guess from the projections */
    const cd_tensor_info *p = sf_find(&s, UP, "input_blocks.1.1.proj_in.weight");
    m->family = p && p->ndim == 2 ? CD_FAMILY_SD2 : CD_FAMILY_SD1;
  }
  if (sf_find(&s, UP, "label_emb.0.0.weight")) { /* SGM's text_time conditioning: SDXL */
    if (sf_max_index(&s, TP "model.transformer.resblocks.") >= 0 ||
        sf_max_index(&s, TP "transformer.text_model.encoder.layers.") >= 0 ||
        sf_max_index(&s, TP "transformer.encoder.layers.") >= 0) {
      cd_set_error("%s: " UP "label_emb.* beside a cond_stage_model.* text encoder (an unCLIP or class-conditioned "
                   "SD 2.x model) is not supported; SDXL files have conditioner.embedders.*", path);
      goto done;
    }
    m->family = CD_FAMILY_SDXL;
  }
  m->force_zeros_empty = m->family == CD_FAMILY_SDXL; /* as diffusers' SDXL pipelines made from a single file */
  if (detect_unet(&s, yaml, m->family, &m->unet.cfg)) goto done;
  if (have_vae && !o->no_vae && detect_vae(&s, yaml, &m->vae.cfg)) goto done;
  double sfv;
  if (m->family == CD_FAMILY_SDXL && !yaml_double(yaml, NULL, "scale_factor", &sfv))
    m->vae.cfg.scaling_factor = 0.13025f; /* SDXL's VAE (sd_xl_base.yaml scale_factor) */
  int stored = 0, stored2 = 0;
  if (xl) {
    if (detect_clip(&s, yaml, 0, XP0, 1, &m->clip.cfg, &stored) ||
        detect_clip(&s, yaml, 1, XP1, 1, &m->clip2.cfg, &stored2))
      goto done;
  } else if ((oc || hf) && detect_clip(&s, yaml, oc, TP, 0, &m->clip.cfg, &stored)) {
    goto done;
  }
  if (!oc && !hf) m->clip.cfg.pad_id = m->family == CD_FAMILY_SD2 ? 0 : 49407;

  /* scheduler: SD defaults, betas and parameterization from the yaml */
  cd_sched_config_default(&m->sched);
  double v;
  int ts;
  if (yaml_double(yaml, NULL, "linear_start", &v)) m->sched.beta_start = v;
  if (yaml_double(yaml, NULL, "linear_end", &v)) m->sched.beta_end = v;
  if (yaml_int(yaml, NULL, "timesteps", &ts) && ts >= 2) m->sched.num_train_timesteps = ts;
  char par[32];
  if (yaml_get(yaml, NULL, "parameterization", par, sizeof par)) {
    if (!strcmp(par, "v")) m->sched.pred = CD_PRED_V;
    else if (!strcmp(par, "eps")) m->sched.pred = CD_PRED_EPS;
    else { cd_set_error("%s .yaml: parameterization \"%s\" is not supported (eps or v)", path, par); goto done; }
  } else if (m->family == CD_FAMILY_SD2 && !o->prediction) {
    cd_warn("%s: SD 2.x checkpoint without a .yaml: assuming epsilon prediction (pass the "
            "prediction type \"v\" for 768-v models)", path);
  }
  /* default resolution: the model-level image_size of the yaml (the first one: LDM's
   * unet_config image_size is a stale 32 in the official SD configs), else 96
   * latents (768 px) for SD 2.x v-prediction models and 64 (512 px) otherwise;
   * --prediction is applied later, so a v model without a yaml is adjusted in cd_sd_load */
  if (!yaml_int(yaml, NULL, "image_size", &m->unet.cfg.sample_size) || m->unet.cfg.sample_size <= 0)
    m->unet.cfg.sample_size = m->family == CD_FAMILY_SDXL                            ? 128 /* 1024 px */
                              : m->family == CD_FAMILY_SD2 && m->sched.pred == CD_PRED_V ? 96
                                                                                         : 64;
  /* SDXL base's scheduler_config.json: Euler discrete, leading spacing, steps_offset 1 */
  if (m->family == CD_FAMILY_SDXL) m->sched.spacing = CD_SPACING_LEADING;

  cd_weights **ws[4] = {&m->clip.w, &m->unet.w, &m->vae.w, &m->clip2.w};
  const char *const pre[4] = {xl ? XP0 : TP, UP, VP, XP1};
  for (int c = 0; c < 4; c++) {
    if ((c == C_TEXT && (o->no_text || (!oc && !hf))) || (c == C_UNET && o->no_unet) ||
        (c == C_VAE && (o->no_vae || !have_vae)) || (c == C_TEXT2 && (o->no_text || !xl)))
      continue;
    int e = c == C_TEXT ? cd_keymap_clip(&km, &m->clip.cfg, oc && !xl, stored)
            : c == C_TEXT2 ? cd_keymap_clip(&km, &m->clip2.cfg, 1, stored2)
            : c == C_UNET ? cd_keymap_unet(&km, &m->unet.cfg)
                          : cd_keymap_vae(&km, &m->vae.cfg);
    if (e) goto done;
    *ws[c] = cd_weights_new();
    e = load_component(&s, pre[c], &km, *ws[c], m->dtype[c], o);
    cd_keymap_free(&km);
    if (e) goto done;
  }
  rc = 0;
done:
  cd_keymap_free(&km);
  cd_tensor_file_close(f);
  if (rc == 0 && yaml_out) *yaml_out = yaml;
  else free(yaml);
  return rc;
}

/* ------------------------------------------------------------ tokenizer */

/* SDXL's second tokenizer: a tokenizer_2/ folder (in the diffusers folder, or beside a
 * single file) with its own config (pad_token "!", id 0); otherwise the first
 * tokenizer's vocabulary padded with 0 as SGM's OpenCLIP tokenizer pads. */
static int load_tokenizer_2(const char *path, int folder, const char *src1, cd_sd_model *m) {
  char *dir = NULL;
  if (folder) {
    dir = cd_path_join(path, "tokenizer_2");
  } else {
    char *base = cd_strdup(path);
    char *sl = strrchr(base, '/');
    if (sl) *sl = 0;
    else snprintf(base, strlen(base) + 1, ".");
    dir = cd_path_join(base, "tokenizer_2");
    free(base);
  }
  int own = cd_is_dir(dir);
  const char *src = own ? dir : src1;
  int rc = cd_tokenizer_load(src, &m->tok2);
  if (!rc) {
    char *cfg = own ? cd_path_join(dir, "tokenizer_config.json") : NULL;
    char *map = own ? cd_path_join(dir, "special_tokens_map.json") : NULL;
    if (own && (cd_file_exists(cfg) || cd_file_exists(map)))
      rc = cd_tokenizer_configure_from_dir(m->tok2, dir);
    else
      cd_tokenizer_set_pad(m->tok2, 0);
    free(cfg);
    free(map);
  }
  if (rc) cd_prefix_error("tokenizer_2 %s", src);
  free(dir);
  return rc;
}

static int load_tokenizer(const char *path, int folder, const cd_load_opts *o, cd_sd_model *m) {
  const char *src = o->vocab ? o->vocab : NULL;
  const char *env = getenv("CDIFF_VOCAB");
  char *beside = NULL;
  if (!src && folder) {
    beside = cd_path_join(path, "tokenizer");
    if (cd_is_dir(beside)) src = beside;
  }
  if (!src && env && *env) src = env;
  if (!src && !folder) {
    /* a tokenizer/ folder or OpenAI's merges file next to the checkpoint */
    char *dir = cd_strdup(path);
    char *sl = strrchr(dir, '/');
    if (sl) *sl = 0;
    else snprintf(dir, strlen(dir) + 1, ".");
    static const char *const cand[] = {"tokenizer", "bpe_simple_vocab_16e6.txt.gz",
                                       "bpe_simple_vocab_16e6.txt"};
    for (size_t i = 0; i < 3 && !src; i++) {
      char *p = cd_path_join(dir, cand[i]);
      if (cd_file_exists(p)) { src = beside = p; break; }
      free(p);
    }
    free(dir);
  }
  if (!src) {
    cd_log("no tokenizer vocabulary found for %s (pass --vocab)", path);
    free(beside);
    return 0;
  }
  int rc = cd_tokenizer_load(src, &m->tok);
  if (!rc) {
    /* a HF tokenizer folder states its pad token; otherwise the family's */
    char *cfg = cd_is_dir(src) ? cd_path_join(src, "tokenizer_config.json") : NULL;
    char *map = cd_is_dir(src) ? cd_path_join(src, "special_tokens_map.json") : NULL;
    if (cfg && (cd_file_exists(cfg) || cd_file_exists(map)))
      rc = cd_tokenizer_configure_from_dir(m->tok, src);
    else
      cd_tokenizer_set_pad(m->tok, m->family == CD_FAMILY_SD2 ? 0 : 49407);
    free(cfg);
    free(map);
  }
  if (rc) cd_prefix_error("tokenizer %s", src);
  if (!rc && m->family == CD_FAMILY_SDXL) rc = load_tokenizer_2(path, folder, src, m);
  free(beside);
  return rc;
}

/* ------------------------------------------------------------ hash */

typedef struct {
  const char *comp;
  const cd_weight *w;
  uint8_t d[32];
} hitem;

static int hitem_cmp(const void *a, const void *b) {
  const hitem *x = a, *y = b;
  int c = strcmp(x->comp, y->comp);
  return c ? c : strcmp(x->w->name, y->w->name);
}

/* The hash covers the text encoder and the UNet, what a delta depends on, so
 * that it does not change with the components a command loads (merge skips
 * the VAE). */
static void compute_hash(cd_sd_model *m) {
  const char *names[3] = {"text_encoder", "unet", "text_encoder_2"};
  cd_weights *ws[3] = {m->clip.w, m->unet.w, m->clip2.w};
  int n = 0;
  for (int c = 0; c < 3; c++) n += ws[c] ? cd_weights_count(ws[c]) : 0;
  hitem *it = cd_calloc((size_t)(n ? n : 1), sizeof *it);
  int k = 0;
  for (int c = 0; c < 3; c++)
    for (int i = 0; ws[c] && i < cd_weights_count(ws[c]); i++) {
      it[k].comp = names[c];
      it[k++].w = cd_weights_at(ws[c], i);
    }
  qsort(it, (size_t)n, sizeof *it, hitem_cmp);
#pragma omp parallel for schedule(dynamic)
  for (int i = 0; i < n; i++) {
    int64_t ne = 1;
    for (int d = 0; d < it[i].w->ndim; d++) ne *= it[i].w->ne[d];
    uint64_t v[4];
    if (it[i].w->has_digest) { /* taken at load, before narrowing */
      memcpy(v, it[i].w->digest, sizeof v);
    } else if (it[i].w->type == CD_TYPE_F32) {
      v[0] = cd_hash64(it[i].w->data, (size_t)ne * sizeof(float), v + 1);
    } else { /* 16-bit without a load digest: hash the widened values */
      float *tmp = cd_malloc((size_t)(ne ? ne : 1) * sizeof(float));
      for (int64_t k = 0; k < ne; k++)
        tmp[k] = it[i].w->type == CD_TYPE_F16 ? cd_f16_to_f32(it[i].w->h16[k]) : cd_bf16_to_f32(it[i].w->h16[k]);
      v[0] = cd_hash64(tmp, (size_t)ne * sizeof(float), v + 1);
      free(tmp);
    }
    memcpy(it[i].d, v, sizeof v); /* digest, lanes 0-2 */
  }
  cd_sha256_ctx ctx;
  cd_sha256_init(&ctx);
  for (int i = 0; i < n; i++) {
    char sh[128];
    size_t p = (size_t)snprintf(sh, sizeof sh, "(");
    for (int d = 0; d < it[i].w->ndim; d++)
      p += (size_t)snprintf(sh + p, sizeof sh - p, "%s%lld", d ? ", " : "", (long long)it[i].w->ne[d]);
    snprintf(sh + p, sizeof sh - p, ")");
    cd_sha256_update(&ctx, it[i].comp, strlen(it[i].comp));
    cd_sha256_update(&ctx, ".", 1);
    cd_sha256_update(&ctx, it[i].w->name, strlen(it[i].w->name) + 1);
    cd_sha256_update(&ctx, sh, strlen(sh) + 1);
    cd_sha256_update(&ctx, it[i].d, 32);
  }
  uint8_t dg[32];
  char hex[65];
  cd_sha256_final(&ctx, dg);
  cd_sha256_hex(dg, hex);
  snprintf(m->hash, sizeof m->hash, "%.16s", hex);
  free(it);
}

/* ------------------------------------------------------------ entry points */

int cd_sd_load(const char *path, const cd_load_opts *opts, cd_sd_model **out) {
  *out = NULL;
  cd_load_opts none = {0};
  const cd_load_opts *o = opts ? opts : &none;
  if (!path || !*path) return cd_set_error("no model path given");
  cd_type wt;
  if (o->weights_dtype && cd_type_parse(o->weights_dtype, &wt))
    return cd_set_error("--weights-dtype must be f32, f16 or bf16 (got '%s')", o->weights_dtype);
  cd_sd_model *m = cd_calloc(1, sizeof *m);
  snprintf(m->path, sizeof m->path, "%s", path);
  for (int c = 0; c < 4; c++) snprintf(m->dtype[c], sizeof m->dtype[c], "none");
  int folder = cd_is_dir(path);
  int rc;
  if (folder) {
    rc = load_folder(path, o, m);
  } else if (!cd_file_exists(path)) {
    rc = cd_set_error("model %s: no such file or directory", path);
  } else {
    rc = load_single(path, o, m, NULL);
  }
  if (!rc && o->prediction) { /* an explicit choice wins over configs */
    if (!strcmp(o->prediction, "eps")) m->sched.pred = CD_PRED_EPS;
    else if (cd_pred_parse(o->prediction, &m->sched.pred))
      rc = cd_prefix_error("prediction type (eps or v)");
    if (!rc && !folder && m->family == CD_FAMILY_SD2 && m->sched.pred == CD_PRED_V && m->unet.cfg.sample_size == 64)
      m->unet.cfg.sample_size = 96; /* SD 2.x 768-v single file without a yaml */
  }
  if (!rc) rc = load_tokenizer(path, folder, o, m);
  if (!rc) {
    if (m->tok) m->clip.cfg.pad_id = cd_tokenizer_pad(m->tok);
    if (m->tok2) m->clip2.cfg.pad_id = cd_tokenizer_pad(m->tok2);
    compute_hash(m);
    cd_log("loaded %s (%s, %s): hash %s\n", path, cd_family_name(m->family), m->layout, m->hash);
    *out = m;
    return 0;
  }
  cd_sd_free(m);
  return -1;
}

void cd_sd_free(cd_sd_model *m) {
  if (!m) return;
  cd_weights_free(m->clip.w);
  cd_weights_free(m->clip2.w);
  cd_weights_free(m->unet.w);
  cd_weights_free(m->vae.w);
  cd_weights_free(m->unet_orig);
  cd_tokenizer_free(m->tok);
  cd_tokenizer_free(m->tok2);
  free(m);
}

const char *cd_family_name(cd_family f) {
  return f == CD_FAMILY_SDXL ? "SDXL" : f == CD_FAMILY_SD2 ? "SD 2.x" : "SD 1.x";
}
