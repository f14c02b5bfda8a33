/* world_model.c - shapes, initialisation and diffusers-folder writing of the
 * world model (see world_model.h). The tensor names mirror the builders in
 * src/models/{unet,vae,clip}.c; cd_wm_init checks that each component's
 * graph builds from them with no weight missing or left over. */
#include "pretrain/world_model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "world/vocab.h"
#include "world/world.h"

void cd_wm_config_default(cd_wm_config *c, int vocab) {
  memset(c, 0, sizeof *c);
  cd_clip_config *t = &c->clip;
  t->vocab = vocab;
  t->width = 64;
  t->layers = 2;
  t->heads = 2;
  t->mlp = 256;
  t->max_pos = 77;
  t->quick_gelu = 1;
  t->pad_id = vocab - 1;
  cd_unet_config *u = &c->unet;
  u->in_channels = u->out_channels = 4;
  u->nlevels = 2;
  u->block_out[0] = 48;
  u->block_out[1] = 96;
  for (int i = 0; i < 2; i++) {
    u->down_attn[i] = u->up_attn[i] = 1;
    u->heads[i] = 4;
  }
  u->layers_per_block = 1;
  u->context_dim = t->width;
  u->norm_groups = 16;
  u->norm_eps = 1e-5f;
  u->flip_sin_to_cos = 1;
  u->mid_attn = 1;
  u->sample_size = CD_WORLD_RES / 8;
  cd_vae_config *v = &c->vae;
  v->in_channels = v->out_channels = 3;
  v->latent_channels = 4;
  v->nlevels = 4;
  static const int vb[4] = {16, 32, 32, 64};
  for (int i = 0; i < 4; i++) v->block_out[i] = vb[i];
  v->layers_per_block = 1;
  v->norm_groups = 8;
  v->scaling_factor = 1.0f; /* set from the trained encoder's latent spread (pretrain.c) */
}

/* ------------------------------------------------------------ initialisation */

enum { I_FAN, I_ONE, I_ZERO, I_TOK, I_POS };

typedef struct {
  cd_weights *w;
  uint64_t seed;
  int err;
} initr;

static uint64_t name_seed(uint64_t seed, const char *name) {
  uint64_t h = cd_fnv1a(name, strlen(name));
  return h ^ (seed * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL);
}

static void put(initr *I, int init, int ndim, const int64_t *ne, const char *fmt, ...) CD_PRINTF(5, 6);
static void put(initr *I, int init, int ndim, const int64_t *ne, const char *fmt, ...) {
  char name[192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  int64_t n = cd_numel(ndim, ne), fan = 1;
  for (int d = 1; d < ndim; d++) fan *= ne[d];
  float *x = cd_malloc((size_t)n * sizeof(float));
  cd_rng r;
  cd_rng_seed(&r, name_seed(I->seed, name));
  if (init == I_ONE || init == I_ZERO) {
    for (int64_t i = 0; i < n; i++) x[i] = init == I_ONE ? 1.0f : 0.0f;
  } else {
    cd_rng_fill_normal(&r, x, (size_t)n);
    float s = init == I_TOK ? 0.02f : init == I_POS ? 0.01f : (float)(1.0 / sqrt((double)fan));
    for (int64_t i = 0; i < n; i++) x[i] *= s;
  }
  if (!I->err && cd_weights_put(I->w, name, ndim, ne, x)) I->err = -1;
}

/* conv [out, in, k, k] or linear (k = 0) [out, in], with a bias unless nobias */
static void layer(initr *I, const char *p, int64_t out, int64_t in, int k, int bias, int zero) {
  if (k) put(I, zero ? I_ZERO : I_FAN, 4, (int64_t[]){out, in, k, k}, "%s.weight", p);
  else put(I, zero ? I_ZERO : I_FAN, 2, (int64_t[]){out, in}, "%s.weight", p);
  if (bias) put(I, I_ZERO, 1, (int64_t[]){out}, "%s.bias", p);
}

static void norm(initr *I, const char *p, int64_t C) {
  put(I, I_ONE, 1, (int64_t[]){C}, "%s.weight", p);
  put(I, I_ZERO, 1, (int64_t[]){C}, "%s.bias", p);
}

#define SUB(buf, ...) (snprintf(buf, sizeof buf, __VA_ARGS__), buf)

static void resnet(initr *I, const char *p, int64_t cin, int64_t cout, int64_t tdim) {
  char b[192];
  norm(I, SUB(b, "%s.norm1", p), cin);
  layer(I, SUB(b, "%s.conv1", p), cout, cin, 3, 1, 0);
  if (tdim) layer(I, SUB(b, "%s.time_emb_proj", p), cout, tdim, 0, 1, 0);
  norm(I, SUB(b, "%s.norm2", p), cout);
  layer(I, SUB(b, "%s.conv2", p), cout, cout, 3, 1, 1);
  if (cin != cout) layer(I, SUB(b, "%s.conv_shortcut", p), cout, cin, 1, 1, 0);
}

static void transformer(initr *I, const char *p, int64_t C, int64_t ctx) {
  char b[192];
  norm(I, SUB(b, "%s.norm", p), C);
  layer(I, SUB(b, "%s.proj_in", p), C, C, 1, 1, 0);
  for (int i = 1; i <= 3; i++) norm(I, SUB(b, "%s.transformer_blocks.0.norm%d", p, i), C);
  for (int a = 1; a <= 2; a++) {
    int64_t kin = a == 1 ? C : ctx;
    layer(I, SUB(b, "%s.transformer_blocks.0.attn%d.to_q", p, a), C, C, 0, 0, 0);
    layer(I, SUB(b, "%s.transformer_blocks.0.attn%d.to_k", p, a), C, kin, 0, 0, 0);
    layer(I, SUB(b, "%s.transformer_blocks.0.attn%d.to_v", p, a), C, kin, 0, 0, 0);
    layer(I, SUB(b, "%s.transformer_blocks.0.attn%d.to_out.0", p, a), C, C, 0, 1, 1);
  }
  layer(I, SUB(b, "%s.transformer_blocks.0.ff.net.0.proj", p), 8 * C, C, 0, 1, 0);
  layer(I, SUB(b, "%s.transformer_blocks.0.ff.net.2", p), C, 4 * C, 0, 1, 1);
  layer(I, SUB(b, "%s.proj_out", p), C, C, 1, 1, 1);
}

static void unet_init(initr *I, const cd_unet_config *c) {
  const int L = c->nlevels;
  const int64_t C0 = c->block_out[0], tdim = 4 * C0;
  char p[128];
  layer(I, "conv_in", C0, c->in_channels, 3, 1, 0);
  layer(I, "time_embedding.linear_1", tdim, C0, 0, 1, 0);
  layer(I, "time_embedding.linear_2", tdim, tdim, 0, 1, 0);
  int64_t skip[64], ch = C0;
  int ns = 0;
  skip[ns++] = ch;
  for (int i = 0; i < L; i++) {
    for (int j = 0; j < c->layers_per_block; j++) {
      resnet(I, SUB(p, "down_blocks.%d.resnets.%d", i, j), ch, c->block_out[i], tdim);
      ch = c->block_out[i];
      if (c->down_attn[i]) transformer(I, SUB(p, "down_blocks.%d.attentions.%d", i, j), ch, c->context_dim);
      skip[ns++] = ch;
    }
    if (i < L - 1) {
      layer(I, SUB(p, "down_blocks.%d.downsamplers.0.conv", i), ch, ch, 3, 1, 0);
      skip[ns++] = ch;
    }
  }
  resnet(I, "mid_block.resnets.0", ch, ch, tdim);
  transformer(I, "mid_block.attentions.0", ch, c->context_dim);
  resnet(I, "mid_block.resnets.1", ch, ch, tdim);
  for (int i = 0; i < L; i++) {
    int lvl = L - 1 - i;
    for (int j = 0; j <= c->layers_per_block; j++) {
      resnet(I, SUB(p, "up_blocks.%d.resnets.%d", i, j), ch + skip[--ns], c->block_out[lvl], tdim);
      ch = c->block_out[lvl];
      if (c->up_attn[i]) transformer(I, SUB(p, "up_blocks.%d.attentions.%d", i, j), ch, c->context_dim);
    }
    if (i < L - 1) layer(I, SUB(p, "up_blocks.%d.upsamplers.0.conv", i), ch, ch, 3, 1, 0);
  }
  norm(I, "conv_norm_out", C0);
  layer(I, "conv_out", c->out_channels, C0, 3, 1, 1);
}

static void vae_mid(initr *I, const char *part, int64_t C) {
  char p[128], b[192];
  resnet(I, SUB(p, "%s.mid_block.resnets.0", part), C, C, 0);
  SUB(p, "%s.mid_block.attentions.0", part);
  norm(I, SUB(b, "%s.group_norm", p), C);
  layer(I, SUB(b, "%s.to_q", p), C, C, 0, 1, 0);
  layer(I, SUB(b, "%s.to_k", p), C, C, 0, 1, 0);
  layer(I, SUB(b, "%s.to_v", p), C, C, 0, 1, 0);
  layer(I, SUB(b, "%s.to_out.0", p), C, C, 0, 1, 1);
  resnet(I, SUB(p, "%s.mid_block.resnets.1", part), C, C, 0);
}

static void vae_init(initr *I, const cd_vae_config *c) {
  const int L = c->nlevels;
  char p[128];
  int64_t ch = c->block_out[0];
  layer(I, "encoder.conv_in", ch, c->in_channels, 3, 1, 0);
  for (int i = 0; i < L; i++) {
    for (int j = 0; j < c->layers_per_block; j++) {
      resnet(I, SUB(p, "encoder.down_blocks.%d.resnets.%d", i, j), ch, c->block_out[i], 0);
      ch = c->block_out[i];
    }
    if (i < L - 1) layer(I, SUB(p, "encoder.down_blocks.%d.downsamplers.0.conv", i), ch, ch, 3, 1, 0);
  }
  vae_mid(I, "encoder", ch);
  norm(I, "encoder.conv_norm_out", ch);
  const int64_t z = c->latent_channels;
  layer(I, "encoder.conv_out", 2 * z, ch, 3, 1, 0);
  layer(I, "quant_conv", 2 * z, 2 * z, 1, 1, 0);
  layer(I, "post_quant_conv", z, z, 1, 1, 0);
  ch = c->block_out[L - 1];
  layer(I, "decoder.conv_in", ch, z, 3, 1, 0);
  vae_mid(I, "decoder", ch);
  for (int i = 0; i < L; i++) {
    int lvl = L - 1 - i;
    for (int j = 0; j <= c->layers_per_block; j++) {
      resnet(I, SUB(p, "decoder.up_blocks.%d.resnets.%d", i, j), ch, c->block_out[lvl], 0);
      ch = c->block_out[lvl];
    }
    if (i < L - 1) layer(I, SUB(p, "decoder.up_blocks.%d.upsamplers.0.conv", i), ch, ch, 3, 1, 0);
  }
  norm(I, "decoder.conv_norm_out", ch);
  layer(I, "decoder.conv_out", c->out_channels, ch, 3, 1, 0);
}

static void clip_init(initr *I, const cd_clip_config *c) {
  const int64_t d = c->width;
  char p[128], b[192];
  put(I, I_TOK, 2, (int64_t[]){c->vocab, d}, "text_model.embeddings.token_embedding.weight");
  put(I, I_POS, 2, (int64_t[]){c->max_pos, d}, "text_model.embeddings.position_embedding.weight");
  for (int l = 0; l < c->layers; l++) {
    SUB(p, "text_model.encoder.layers.%d", l);
    norm(I, SUB(b, "%s.layer_norm1", p), d);
    layer(I, SUB(b, "%s.self_attn.q_proj", p), d, d, 0, 1, 0);
    layer(I, SUB(b, "%s.self_attn.k_proj", p), d, d, 0, 1, 0);
    layer(I, SUB(b, "%s.self_attn.v_proj", p), d, d, 0, 1, 0);
    layer(I, SUB(b, "%s.self_attn.out_proj", p), d, d, 0, 1, 1);
    norm(I, SUB(b, "%s.layer_norm2", p), d);
    layer(I, SUB(b, "%s.mlp.fc1", p), c->mlp, d, 0, 1, 0);
    layer(I, SUB(b, "%s.mlp.fc2", p), d, c->mlp, 0, 1, 1);
  }
  norm(I, "text_model.final_layer_norm", d);
}

/* Every weight is asked for by the component's graph, and no weight is missing. */
static int check_builds(cd_sd_model *m) {
  cd_graph *g = cd_graph_new();
  cd_weights *ws[3] = {m->clip.w, m->unet.w, m->vae.w};
  for (int c = 0; c < 3; c++) cd_weights_clear_used(ws[c]);
  cd_node *ids = cd_input_typed(g, "ids", CD_TYPE_I32, 2, (int64_t[]){1, m->clip.cfg.max_pos});
  cd_node *ctx = cd_clip_build(g, &m->clip, ids, NULL, NULL);
  int64_t h = m->unet.cfg.sample_size;
  cd_node *x = cd_input(g, "x", 4, (int64_t[]){1, m->unet.cfg.in_channels, h, h});
  cd_node *t = cd_input(g, "t", 1, (int64_t[]){1});
  cd_graph_output(g, cd_unet_build(g, &m->unet, NULL, x, t, ctx));
  cd_node *img = cd_input(g, "img", 4, (int64_t[]){1, 3, 8 * h, 8 * h});
  cd_graph_output(g, cd_vae_encode_build(g, &m->vae, img));
  cd_node *z = cd_input(g, "z", 4, (int64_t[]){1, m->vae.cfg.latent_channels, h, h});
  cd_graph_output(g, cd_vae_decode_build(g, &m->vae, z));
  int rc = cd_graph_plan(g, NULL);
  static const char *const names[3] = {"text encoder", "unet", "vae"};
  for (int c = 0; c < 3 && !rc; c++) rc = cd_weights_check_unused(ws[c], names[c], "world model");
  cd_graph_free(g);
  return rc ? cd_prefix_error("internal: world model initialisation") : 0;
}

int cd_wm_init(const cd_wm_config *c, uint64_t seed, cd_sd_model *m) {
  m->family = CD_FAMILY_SD1;
  snprintf(m->layout, sizeof m->layout, "diffusers");
  m->clip.cfg = c->clip;
  m->unet.cfg = c->unet;
  m->vae.cfg = c->vae;
  cd_sched_config_default(&m->sched);
  m->clip.w = cd_weights_new();
  m->unet.w = cd_weights_new();
  m->vae.w = cd_weights_new();
  initr I = {m->clip.w, seed, 0};
  clip_init(&I, &c->clip);
  I.w = m->unet.w;
  unet_init(&I, &c->unet);
  I.w = m->vae.w;
  vae_init(&I, &c->vae);
  if (I.err) return cd_prefix_error("world model initialisation");
  return check_builds(m);
}

/* ------------------------------------------------------------ writing */

static int write_text(const char *dir, const char *name, const char *fmt, ...) CD_PRINTF(3, 4);
static int write_text(const char *dir, const char *name, const char *fmt, ...) {
  char *buf = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&buf, &n);
  if (!f) return cd_set_error("%s/%s: cannot build the text in memory", dir, name);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fclose(f);
  char *p = cd_path_join(dir, name);
  int rc = cd_write_file_atomic(p, buf, n);
  free(p);
  free(buf);
  return rc;
}

static char *ints(const int *v, int n, char *buf, size_t cap) {
  size_t k = 0;
  k += snprintf(buf + k, cap - k, "[");
  for (int i = 0; i < n; i++) k += snprintf(buf + k, cap - k, "%s%d", i ? ", " : "", v[i]);
  snprintf(buf + k, cap - k, "]");
  return buf;
}

static char *blocks(const int *attn, int n, const char *yes, const char *no, char *buf, size_t cap) {
  size_t k = 0;
  k += snprintf(buf + k, cap - k, "[");
  for (int i = 0; i < n; i++) k += snprintf(buf + k, cap - k, "%s\"%s\"", i ? ", " : "", !attn || attn[i] ? yes : no);
  snprintf(buf + k, cap - k, "]");
  return buf;
}

static int write_weights(const cd_weights *w, const char *path, int f16) {
  int n = cd_weights_count(w);
  cd_tensor_out *t = cd_calloc((size_t)n, sizeof *t);
  uint16_t **h = cd_calloc((size_t)n, sizeof *h);
  for (int i = 0; i < n; i++) {
    cd_weight *x = cd_weights_at(w, i);
    const float *v = cd_weight_f32(x);
    t[i].name = x->name;
    t[i].ndim = x->ndim;
    for (int d = 0; d < x->ndim; d++) t[i].shape[d] = x->ne[d];
    int64_t ne = cd_numel(x->ndim, x->ne);
    if (f16) {
      h[i] = cd_malloc((size_t)ne * sizeof(uint16_t));
      for (int64_t k = 0; k < ne; k++) h[i][k] = cd_f32_to_f16(v[k]);
      t[i].dtype = CD_DT_F16;
      t[i].data = h[i];
    } else {
      t[i].dtype = CD_DT_F32;
      t[i].data = v;
    }
  }
  const char *meta[] = {"format", "pt", "cdiff_generator", "cdiff pretrain (world model)"};
  int rc = cd_safetensors_write(path, t, n, meta, 2);
  for (int i = 0; i < n; i++) free(h[i]);
  free(h);
  free(t);
  return rc;
}

int cd_wm_write(const cd_sd_model *m, const char *dir, int f16) {
  const cd_unet_config *u = &m->unet.cfg;
  const cd_vae_config *v = &m->vae.cfg;
  const cd_clip_config *c = &m->clip.cfg;
  char sub[3][4096], a[256], b[512], d[512];
  static const char *const comp[3] = {"text_encoder", "unet", "vae"};
  int rc = cd_mkdir_p(dir);
  for (int i = 0; i < 3 && !rc; i++) {
    snprintf(sub[i], sizeof sub[i], "%s/%s", dir, comp[i]);
    rc = cd_mkdir_p(sub[i]);
  }
  char tok[4096], sch[4096];
  snprintf(tok, sizeof tok, "%s/tokenizer", dir);
  snprintf(sch, sizeof sch, "%s/scheduler", dir);
  if (!rc) rc = cd_mkdir_p(tok);
  if (!rc) rc = cd_mkdir_p(sch);
  if (rc) return cd_prefix_error("writing the model to %s", dir);
  int V = 0;
  if (cd_world_vocab_write(tok, &V)) return -1;
  if (V != c->vocab) return cd_set_error("internal: world vocabulary has %d entries, text encoder %d", V, c->vocab);
  rc = write_text(sub[0], "config.json",
                  "{\n  \"architectures\": [\"CLIPTextModel\"],\n  \"attention_dropout\": 0.0,\n"
                  "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"hidden_act\": \"quick_gelu\",\n"
                  "  \"hidden_size\": %d,\n  \"initializer_factor\": 1.0,\n  \"initializer_range\": 0.02,\n"
                  "  \"intermediate_size\": %d,\n  \"layer_norm_eps\": 1e-05,\n  \"max_position_embeddings\": %d,\n"
                  "  \"model_type\": \"clip_text_model\",\n  \"num_attention_heads\": %d,\n  \"num_hidden_layers\": %d,\n"
                  "  \"pad_token_id\": %d,\n  \"projection_dim\": %d,\n  \"torch_dtype\": \"float32\",\n  \"vocab_size\": %d\n}\n",
                  c->vocab - 2, c->vocab - 1, c->width, c->mlp, c->max_pos, c->heads, c->layers, c->vocab - 1,
                  c->width, c->vocab);
  char up[512];
  ints(u->heads, u->nlevels, a, sizeof a);
  ints(u->block_out, u->nlevels, b, sizeof b);
  blocks(u->down_attn, u->nlevels, "CrossAttnDownBlock2D", "DownBlock2D", d, sizeof d);
  blocks(u->up_attn, u->nlevels, "CrossAttnUpBlock2D", "UpBlock2D", up, sizeof up);
  if (!rc)
    rc = write_text(sub[1], "config.json",
                    "{\n  \"_class_name\": \"UNet2DConditionModel\",\n  \"_diffusers_version\": \"0.21.0\",\n"
                    "  \"act_fn\": \"silu\",\n  \"attention_head_dim\": %s,\n  \"block_out_channels\": %s,\n"
                    "  \"center_input_sample\": false,\n  \"cross_attention_dim\": %d,\n  \"down_block_types\": %s,\n"
                    "  \"downsample_padding\": 1,\n  \"flip_sin_to_cos\": true,\n  \"freq_shift\": 0,\n"
                    "  \"in_channels\": %d,\n  \"layers_per_block\": %d,\n  \"mid_block_scale_factor\": 1,\n"
                    "  \"norm_eps\": 1e-05,\n  \"norm_num_groups\": %d,\n  \"out_channels\": %d,\n"
                    "  \"sample_size\": %d,\n  \"up_block_types\": %s,\n  \"use_linear_projection\": false\n}\n",
                    a, b, u->context_dim, d, u->in_channels, u->layers_per_block, u->norm_groups, u->out_channels,
                    u->sample_size, up);
  if (!rc) {
    char e[512], f[512];
    rc = write_text(sub[2], "config.json",
                    "{\n  \"_class_name\": \"AutoencoderKL\",\n  \"_diffusers_version\": \"0.21.0\",\n"
                    "  \"act_fn\": \"silu\",\n  \"block_out_channels\": %s,\n  \"down_block_types\": %s,\n"
                    "  \"in_channels\": %d,\n  \"latent_channels\": %d,\n  \"layers_per_block\": %d,\n"
                    "  \"norm_num_groups\": %d,\n  \"out_channels\": %d,\n  \"sample_size\": %d,\n"
                    "  \"scaling_factor\": %.9g,\n  \"up_block_types\": %s\n}\n",
                    ints(v->block_out, v->nlevels, a, sizeof a),
                    blocks(NULL, v->nlevels, "DownEncoderBlock2D", "", e, sizeof e), v->in_channels,
                    v->latent_channels, v->layers_per_block, v->norm_groups, v->out_channels, CD_WORLD_RES,
                    v->scaling_factor, blocks(NULL, v->nlevels, "UpDecoderBlock2D", "", f, sizeof f));
  }
  if (!rc)
    rc = write_text(sch, "scheduler_config.json",
                    "{\n  \"_class_name\": \"DDPMScheduler\",\n  \"_diffusers_version\": \"0.21.0\",\n"
                    "  \"beta_end\": 0.012,\n  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n"
                    "  \"clip_sample\": false,\n  \"num_train_timesteps\": 1000,\n  \"prediction_type\": \"epsilon\",\n"
                    "  \"set_alpha_to_one\": false,\n  \"steps_offset\": 1\n}\n");
  static const char *const file[3] = {"model.safetensors", "diffusion_pytorch_model.safetensors",
                                      "diffusion_pytorch_model.safetensors"};
  const cd_weights *ws[3] = {m->clip.w, m->unet.w, m->vae.w};
  for (int i = 0; i < 3 && !rc; i++) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", sub[i], file[i]);
    rc = write_weights(ws[i], p, f16);
  }
  if (!rc)
    rc = write_text(dir, "model_index.json",
                    "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n  \"_diffusers_version\": \"0.21.0\",\n"
                    "  \"feature_extractor\": [null, null],\n  \"requires_safety_checker\": false,\n"
                    "  \"safety_checker\": [null, null],\n  \"scheduler\": [\"diffusers\", \"DDPMScheduler\"],\n"
                    "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                    "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
                    "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                    "  \"vae\": [\"diffusers\", \"AutoencoderKL\"],\n"
                    "  \"_cdiff_note\": \"cdiff world model: trained by cdiff pretrain on the synthetic world (docs/world.md)\"\n}\n");
  return rc ? cd_prefix_error("writing the model to %s", dir) : 0;
}
