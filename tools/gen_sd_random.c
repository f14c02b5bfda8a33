/* gen_sd_random.c - writes a randomly initialised Stable Diffusion checkpoint
 * with the real SD 1.5 (or SD 2.x) shapes, so that cdiff can be run, tested and
 * benchmarked at full size without downloading a model.
 *
 *   build/tools/gen_sd_random --out /tmp/sd15-random            (diffusers folder, fp16)
 *   build/tools/gen_sd_random --single-file /tmp/sd15-random.safetensors
 *   flags: --out DIR  --single-file FILE  --dtype f16|f32  --seed N  --family sd1|sd2|sdxl
 *          --tiny (small shapes of the same structure, for quick checks)
 *          --count (print the exact parameter counts per component, write nothing)
 *
 * Shapes (sd1): UNet 859.5M parameters (block_out 320/640/1280/1280, 8 heads,
 * context 768, 2 layers per block, cross-attention at the first three levels,
 * 32 groups); VAE 83.7M (128/256/512/512); CLIP ViT-L/14 text tower 123.1M
 * (width 768, 12 layers, 12 heads, MLP 3072, quick_gelu, 77 positions, vocab
 * 49408). sd2: heads of width 64 (5/10/20/20), context 1024, linear transformer
 * projections, OpenCLIP-H text tower (width 1024, 23 layers used of 24 stored,
 * 16 heads, MLP 4096, gelu), v-prediction.
 * sdxl: SDXL base 1.0. UNet 2,567,463,684 parameters (block_out 320/640/1280,
 * DownBlock2D then cross-attention at levels 1 and 2 with transformer depth 2
 * and 10, 10 in the mid block, heads of width 64, linear projections, context
 * 2048, text_time added conditioning: pooled 1280 + 6 time ids x 256 = 2816 ->
 * add_embedding 1280); VAE 83.7M (scaling factor 0.13025); CLIP ViT-L text
 * tower 123.1M (all 12 layers stored) and OpenCLIP ViT-bigG 694.7M including
 * its 1280x1280 text_projection (width 1280, 32 layers, 20 heads, MLP 5120,
 * gelu). Folder: text_encoder/ and text_encoder_2/; single file: SGM layout
 * (conditioner.embedders.0.transformer.*, conditioner.embedders.1.model.*
 * with text_projection stored [width, proj], model.diffusion_model.* with
 * label_emb.0.{0,2}, first_stage_model.*). --tiny sdxl: 3 levels 32/64/64,
 * depth 1/1/2 and 2 in the mid block, encoders of width 64 and 128.
 *
 * Values: weights N(0,1)/sqrt(fan_in), norm scales 1 + 0.1 N(0,1), biases 0.1 N(0,1), token
 * embeddings N(0, 0.02^2), position embeddings N(0, 0.01^2). Activations stay
 * O(1) through every layer (normalisations before every conv/linear), so
 * benchmarks never meet NaNs or denormals. Each tensor's values depend only on
 * the seed and its diffusers name, so the folder and the single file written
 * with the same seed are the same model (cd_sd_load gives both the same hash).
 *
 * The folder has no tokenizer/ (the CLIP vocabulary is not redistributed here):
 * cd_sd_load then leaves m->tok NULL; pass --vocab (or CDIFF_VOCAB) to the cdiff
 * commands that need text. Benchmarks and training with given token ids don't.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "models/keymap.h"
#include "models/sd_model.h"

enum { C_TEXT, C_UNET, C_VAE, C_TEXT2, NCOMP };
enum { I_NORMAL, I_ONE, I_ZERO, I_EMB_TOK, I_EMB_POS };

/* One stored tensor. Its values are the concatenation (along dim 0) of nd parts
 * generated from the seed and dname[k]: nd = 3 only for OpenCLIP's stacked q/k/v. */
typedef struct {
  int comp;
  char dname[3][160]; /* diffusers names ("" when the tensor is not in that layout) */
  int nd;
  char lname[192];    /* full LDM name ("" when the tensor is only in the diffusers layout) */
  int in_diff;
  int init;
  int64_t fan_in;
  int ndim, lndim;    /* diffusers and LDM shapes (differ for the VAE 1x1-conv attention) */
  int64_t ne[4], lne[4];
  int transpose;      /* the LDM tensor is the transpose of the 2-D diffusers one (SGM's text_projection) */
} spec;

typedef struct {
  spec *v;
  int n, cap;
} specs;

typedef struct {
  int family;     /* 1, 2 or 3 (SDXL) */
  int tiny;
  cd_unet_config unet;
  cd_vae_config vae;
  cd_clip_config clip;
  int clip_stored; /* text blocks in the LDM file (SD2: one more than used) */
  cd_clip_config clip2; /* SDXL's second text encoder (OpenCLIP, with a projection) */
  int proj2;            /* its text_projection width (the pooled text_embeds) */
} gen_config;

static spec *add(specs *S, int comp, const char *dn, const char *ln, int init, int64_t fan_in, int ndim,
                 const int64_t *ne) {
  if (S->n == S->cap) {
    S->cap = S->cap ? 2 * S->cap : 1024;
    S->v = cd_realloc(S->v, (size_t)S->cap * sizeof *S->v);
  }
  spec *s = &S->v[S->n++];
  memset(s, 0, sizeof *s);
  s->comp = comp;
  s->nd = 1;
  s->in_diff = dn != NULL;
  snprintf(s->dname[0], sizeof s->dname[0], "%s", dn ? dn : ln);
  snprintf(s->lname, sizeof s->lname, "%s", ln ? ln : "");
  s->init = init;
  s->fan_in = fan_in;
  s->ndim = s->lndim = ndim;
  for (int d = 0; d < 4; d++) s->ne[d] = s->lne[d] = d < ndim ? ne[d] : 1;
  return s;
}

/* the tensor dp.sfx / lp.sfx: dp/lp are diffusers / LDM module prefixes without
 * the trailing dot (NULL: not in that layout) */
static spec *add_sfx(specs *S, int comp, const char *dp, const char *lp, const char *sfx, int init, int64_t fan_in,
                     int ndim, const int64_t *ne) {
  char dn[192], ln[192];
  snprintf(dn, sizeof dn, "%s.%s", dp ? dp : "", sfx);
  snprintf(ln, sizeof ln, "%s.%s", lp ? lp : "", sfx);
  return add(S, comp, dp ? dn : NULL, lp ? ln : NULL, init, fan_in, ndim, ne);
}

/* weight (+ bias) of a linear [out, in] or conv [out, in, k, k] (k = 0: linear) */
static void layer(specs *S, int comp, const char *dp, const char *lp, int64_t out, int64_t in, int k, int bias) {
  int64_t ne[4] = {out, in, k, k};
  add_sfx(S, comp, dp, lp, "weight", I_NORMAL, in * (k ? k * k : 1), k ? 4 : 2, ne);
  if (bias) add_sfx(S, comp, dp, lp, "bias", I_ZERO, 1, 1, ne);
}

static void norm(specs *S, int comp, const char *dp, const char *lp, int64_t C) {
  add_sfx(S, comp, dp, lp, "weight", I_ONE, 1, 1, (int64_t[]){C});
  add_sfx(S, comp, dp, lp, "bias", I_ZERO, 1, 1, (int64_t[]){C});
}

/* "a" "." "b": module path helper */
static const char *cat(char *buf, size_t cap, const char *a, const char *b) {
  snprintf(buf, cap, "%s.%s", a, b);
  return buf;
}
#define D(x) cat(db, sizeof db, dp, x)
#define L(x) cat(lb, sizeof lb, lp, x)

/* ------------------------------------------------------------------ UNet */

static void unet_resnet(specs *S, const char *dp, const char *lp, int64_t cin, int64_t cout, int64_t tdim) {
  char db[192], lb[192];
  norm(S, C_UNET, D("norm1"), L("in_layers.0"), cin);
  layer(S, C_UNET, D("conv1"), L("in_layers.2"), cout, cin, 3, 1);
  layer(S, C_UNET, D("time_emb_proj"), L("emb_layers.1"), cout, tdim, 0, 1);
  norm(S, C_UNET, D("norm2"), L("out_layers.0"), cout);
  layer(S, C_UNET, D("conv2"), L("out_layers.3"), cout, cout, 3, 1);
  if (cin != cout) layer(S, C_UNET, D("conv_shortcut"), L("skip_connection"), cout, cin, 1, 1);
}

/* Transformer2DModel with depth BasicTransformerBlocks; the LDM names are the same */
static void unet_transformer(specs *S, const char *dp, const char *lp, int64_t C, int64_t ctx, int linear, int depth) {
  char db[192], lb[192], n[64];
  norm(S, C_UNET, D("norm"), L("norm"), C);
  layer(S, C_UNET, D("proj_in"), L("proj_in"), C, C, linear ? 0 : 1, 1);
  for (int b = 0; b < depth; b++) {
    static const char *const sub[] = {"norm1", "norm2", "norm3"};
    for (int i = 0; i < 3; i++) {
      snprintf(n, sizeof n, "transformer_blocks.%d.%s", b, sub[i]);
      norm(S, C_UNET, D(n), L(n), C);
    }
    for (int a = 1; a <= 2; a++) {
      int64_t kin = a == 1 ? C : ctx;
      static const char *const p[] = {"to_q", "to_k", "to_v", "to_out.0"};
      for (int i = 0; i < 4; i++) {
        snprintf(n, sizeof n, "transformer_blocks.%d.attn%d.%s", b, a, p[i]);
        layer(S, C_UNET, D(n), L(n), C, i == 1 || i == 2 ? kin : C, 0, i == 3);
      }
    }
    snprintf(n, sizeof n, "transformer_blocks.%d.ff.net.0.proj", b);
    layer(S, C_UNET, D(n), L(n), 8 * C, C, 0, 1);
    snprintf(n, sizeof n, "transformer_blocks.%d.ff.net.2", b);
    layer(S, C_UNET, D(n), L(n), C, 4 * C, 0, 1);
  }
  layer(S, C_UNET, D("proj_out"), L("proj_out"), C, C, linear ? 0 : 1, 1);
}

#define UP "model.diffusion_model."

static void unet_specs(specs *S, const cd_unet_config *c) {
  const int n = c->nlevels, lay = c->layers_per_block;
  const int64_t C0 = c->block_out[0], tdim = 4 * C0;
  char dp[128], lp[128];
  layer(S, C_UNET, "conv_in", UP "input_blocks.0.0", C0, c->in_channels, 3, 1);
  layer(S, C_UNET, "time_embedding.linear_1", UP "time_embed.0", tdim, C0, 0, 1);
  layer(S, C_UNET, "time_embedding.linear_2", UP "time_embed.2", tdim, tdim, 0, 1);
  if (c->add_time_dim > 0) { /* SDXL's text_time conditioning; SGM's label_emb.0 */
    layer(S, C_UNET, "add_embedding.linear_1", UP "label_emb.0.0", tdim, cd_unet_add_in_dim(c), 0, 1);
    layer(S, C_UNET, "add_embedding.linear_2", UP "label_emb.0.2", tdim, tdim, 0, 1);
  }
  int64_t skip[64], ch = C0;
  int ns = 0;
  skip[ns++] = ch;
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < lay; j++) {
      int k = 1 + i * (lay + 1) + j;
      snprintf(dp, sizeof dp, "down_blocks.%d.resnets.%d", i, j);
      snprintf(lp, sizeof lp, UP "input_blocks.%d.0", k);
      unet_resnet(S, dp, lp, ch, c->block_out[i], tdim);
      ch = c->block_out[i];
      if (c->down_attn[i]) {
        snprintf(dp, sizeof dp, "down_blocks.%d.attentions.%d", i, j);
        snprintf(lp, sizeof lp, UP "input_blocks.%d.1", k);
        unet_transformer(S, dp, lp, ch, c->context_dim, c->linear_proj, cd_unet_depth(c, i));
      }
      skip[ns++] = ch;
    }
    if (i < n - 1) {
      snprintf(dp, sizeof dp, "down_blocks.%d.downsamplers.0.conv", i);
      snprintf(lp, sizeof lp, UP "input_blocks.%d.0.op", (i + 1) * (lay + 1));
      layer(S, C_UNET, dp, lp, ch, ch, 3, 1);
      skip[ns++] = ch;
    }
  }
  unet_resnet(S, "mid_block.resnets.0", UP "middle_block.0", ch, ch, tdim);
  unet_transformer(S, "mid_block.attentions.0", UP "middle_block.1", ch, c->context_dim, c->linear_proj,
                   cd_unet_mid_depth(c));
  unet_resnet(S, "mid_block.resnets.1", UP "middle_block.2", ch, ch, tdim);
  for (int i = 0; i < n; i++) {
    int lvl = n - 1 - i;
    for (int j = 0; j <= lay; j++) {
      int k = i * (lay + 1) + j;
      int64_t cin = ch + skip[--ns];
      snprintf(dp, sizeof dp, "up_blocks.%d.resnets.%d", i, j);
      snprintf(lp, sizeof lp, UP "output_blocks.%d.0", k);
      unet_resnet(S, dp, lp, cin, c->block_out[lvl], tdim);
      ch = c->block_out[lvl];
      if (c->up_attn[i]) {
        snprintf(dp, sizeof dp, "up_blocks.%d.attentions.%d", i, j);
        snprintf(lp, sizeof lp, UP "output_blocks.%d.1", k);
        unet_transformer(S, dp, lp, ch, c->context_dim, c->linear_proj, cd_unet_depth(c, lvl));
      }
    }
    if (i < n - 1) {
      snprintf(dp, sizeof dp, "up_blocks.%d.upsamplers.0.conv", i);
      snprintf(lp, sizeof lp, UP "output_blocks.%d.%d.conv", i * (lay + 1) + lay, c->up_attn[i] ? 2 : 1);
      layer(S, C_UNET, dp, lp, ch, ch, 3, 1);
    }
  }
  norm(S, C_UNET, "conv_norm_out", UP "out.0", C0);
  layer(S, C_UNET, "conv_out", UP "out.2", c->out_channels, C0, 3, 1);
}

/* ------------------------------------------------------------------ VAE */

#define VP "first_stage_model."

static void vae_resnet(specs *S, const char *dp, const char *lp, int64_t cin, int64_t cout) {
  char db[192], lb[192];
  norm(S, C_VAE, D("norm1"), L("norm1"), cin);
  layer(S, C_VAE, D("conv1"), L("conv1"), cout, cin, 3, 1);
  norm(S, C_VAE, D("norm2"), L("norm2"), cout);
  layer(S, C_VAE, D("conv2"), L("conv2"), cout, cout, 3, 1);
  if (cin != cout) layer(S, C_VAE, D("conv_shortcut"), L("nin_shortcut"), cout, cin, 1, 1);
}

/* mid block of the encoder or decoder; the attention is linear in diffusers, 1x1 conv in LDM */
static void vae_mid(specs *S, const char *part, int64_t C) {
  char dp[128], lp[128], db[192], lb[192];
  snprintf(dp, sizeof dp, "%s.mid_block.resnets.0", part);
  snprintf(lp, sizeof lp, VP "%s.mid.block_1", part);
  vae_resnet(S, dp, lp, C, C);
  snprintf(dp, sizeof dp, "%s.mid_block.attentions.0", part);
  snprintf(lp, sizeof lp, VP "%s.mid.attn_1", part);
  norm(S, C_VAE, D("group_norm"), L("norm"), C);
  static const char *const dn[] = {"to_q", "to_k", "to_v", "to_out.0"}, *const ln[] = {"q", "k", "v", "proj_out"};
  for (int i = 0; i < 4; i++) {
    layer(S, C_VAE, D(dn[i]), L(ln[i]), C, C, 0, 1);
    spec *w = &S->v[S->n - 2]; /* the weight: [C, C, 1, 1] in LDM files */
    w->lndim = 4;
  }
  snprintf(dp, sizeof dp, "%s.mid_block.resnets.1", part);
  snprintf(lp, sizeof lp, VP "%s.mid.block_2", part);
  vae_resnet(S, dp, lp, C, C);
}

static void vae_specs(specs *S, const cd_vae_config *c) {
  const int n = c->nlevels, lay = c->layers_per_block;
  char dp[128], lp[128];
  int64_t ch = c->block_out[0];
  layer(S, C_VAE, "encoder.conv_in", VP "encoder.conv_in", ch, c->in_channels, 3, 1);
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < lay; j++) {
      snprintf(dp, sizeof dp, "encoder.down_blocks.%d.resnets.%d", i, j);
      snprintf(lp, sizeof lp, VP "encoder.down.%d.block.%d", i, j);
      vae_resnet(S, dp, lp, ch, c->block_out[i]);
      ch = c->block_out[i];
    }
    if (i < n - 1) {
      snprintf(dp, sizeof dp, "encoder.down_blocks.%d.downsamplers.0.conv", i);
      snprintf(lp, sizeof lp, VP "encoder.down.%d.downsample.conv", i);
      layer(S, C_VAE, dp, lp, ch, ch, 3, 1);
    }
  }
  vae_mid(S, "encoder", ch);
  norm(S, C_VAE, "encoder.conv_norm_out", VP "encoder.norm_out", ch);
  const int64_t z = c->latent_channels;
  layer(S, C_VAE, "encoder.conv_out", VP "encoder.conv_out", 2 * z, ch, 3, 1);
  layer(S, C_VAE, "quant_conv", VP "quant_conv", 2 * z, 2 * z, 1, 1);
  layer(S, C_VAE, "post_quant_conv", VP "post_quant_conv", z, z, 1, 1);
  ch = c->block_out[n - 1];
  layer(S, C_VAE, "decoder.conv_in", VP "decoder.conv_in", ch, z, 3, 1);
  vae_mid(S, "decoder", ch);
  for (int i = 0; i < n; i++) {
    int lvl = n - 1 - i; /* LDM numbers the decoder's up levels the other way */
    for (int j = 0; j <= lay; j++) {
      snprintf(dp, sizeof dp, "decoder.up_blocks.%d.resnets.%d", i, j);
      snprintf(lp, sizeof lp, VP "decoder.up.%d.block.%d", lvl, j);
      vae_resnet(S, dp, lp, ch, c->block_out[lvl]);
      ch = c->block_out[lvl];
    }
    if (i < n - 1) {
      snprintf(dp, sizeof dp, "decoder.up_blocks.%d.upsamplers.0.conv", i);
      snprintf(lp, sizeof lp, VP "decoder.up.%d.upsample.conv", lvl);
      layer(S, C_VAE, dp, lp, ch, ch, 3, 1);
    }
  }
  norm(S, C_VAE, "decoder.conv_norm_out", VP "decoder.norm_out", ch);
  layer(S, C_VAE, "decoder.conv_out", VP "decoder.conv_out", c->out_channels, ch, 3, 1);
}

/* ------------------------------------------------------------------ text encoder */

/* tp: the LDM prefix of the tower ("cond_stage_model.model.", SGM's "conditioner.embedders.1.model.", ...);
 * proj > 0: a CLIPTextModelWithProjection (SDXL's second encoder) with text_projection [proj, width],
 * stored transposed as <tp>text_projection in the LDM layout */
static void clip_specs(specs *S, int comp, const cd_clip_config *c, int openclip, int stored, const char *tp, int proj) {
  const int64_t d = c->width;
  char dp[128], lp[128], db[192], lb[192];
  snprintf(lp, sizeof lp, "%s%s", tp, openclip ? "token_embedding.weight" : "embeddings.token_embedding.weight");
  add(S, comp, "text_model.embeddings.token_embedding.weight", lp, I_EMB_TOK, 1, 2, (int64_t[]){c->vocab, d});
  snprintf(lp, sizeof lp, "%s%s", tp, openclip ? "positional_embedding" : "embeddings.position_embedding.weight");
  add(S, comp, "text_model.embeddings.position_embedding.weight", lp, I_EMB_POS, 1, 2, (int64_t[]){c->max_pos, d});
  for (int l = 0; l < stored; l++) {
    int used = l < c->layers;
    snprintf(dp, sizeof dp, "text_model.encoder.layers.%d", l);
    if (!openclip) {
      snprintf(lp, sizeof lp, "%sencoder.layers.%d", tp, l);
      norm(S, comp, D("layer_norm1"), L("layer_norm1"), d);
      static const char *const p[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"};
      for (int i = 0; i < 4; i++) layer(S, comp, D(p[i]), L(p[i]), d, d, 0, 1);
      norm(S, comp, D("layer_norm2"), L("layer_norm2"), d);
      layer(S, comp, D("mlp.fc1"), L("mlp.fc1"), c->mlp, d, 0, 1);
      layer(S, comp, D("mlp.fc2"), L("mlp.fc2"), d, c->mlp, 0, 1);
      continue;
    }
    /* OpenCLIP block: q/k/v stacked in in_proj; the blocks past c->layers exist
     * only in the LDM file (SD 2.x conditions on the penultimate block) */
    snprintf(lp, sizeof lp, "%stransformer.resblocks.%d", tp, l);
    if (!used) { /* LDM only: named, and seeded, by its LDM name */
      norm(S, comp, NULL, L("ln_1"), d);
      norm(S, comp, NULL, L("ln_2"), d);
      layer(S, comp, NULL, L("attn.out_proj"), d, d, 0, 1);
      layer(S, comp, NULL, L("mlp.c_fc"), c->mlp, d, 0, 1);
      layer(S, comp, NULL, L("mlp.c_proj"), d, c->mlp, 0, 1);
      add_sfx(S, comp, NULL, lp, "attn.in_proj_weight", I_NORMAL, d, 2, (int64_t[]){3 * d, d});
      add_sfx(S, comp, NULL, lp, "attn.in_proj_bias", I_ZERO, 1, 1, (int64_t[]){3 * d});
      continue;
    }
    norm(S, comp, D("layer_norm1"), L("ln_1"), d);
    static const char *const qkv[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
    for (int wb = 0; wb < 2; wb++) {
      for (int i = 0; i < 3; i++) { /* diffusers only */
        if (wb) add_sfx(S, comp, D(qkv[i]), NULL, "bias", I_ZERO, 1, 1, (int64_t[]){d});
        else add_sfx(S, comp, D(qkv[i]), NULL, "weight", I_NORMAL, d, 2, (int64_t[]){d, d});
      }
      spec *s = wb ? add_sfx(S, comp, NULL, lp, "attn.in_proj_bias", I_ZERO, 1, 1, (int64_t[]){3 * d})
                   : add_sfx(S, comp, NULL, lp, "attn.in_proj_weight", I_NORMAL, d, 2, (int64_t[]){3 * d, d});
      s->nd = 3; /* LDM only, values of the three diffusers tensors stacked */
      for (int i = 0; i < 3; i++) snprintf(s->dname[i], sizeof s->dname[i], "%s.%s.%s", dp, qkv[i], wb ? "bias" : "weight");
    }
    layer(S, comp, D("self_attn.out_proj"), L("attn.out_proj"), d, d, 0, 1);
    norm(S, comp, D("layer_norm2"), L("ln_2"), d);
    layer(S, comp, D("mlp.fc1"), L("mlp.c_fc"), c->mlp, d, 0, 1);
    layer(S, comp, D("mlp.fc2"), L("mlp.c_proj"), d, c->mlp, 0, 1);
  }
  snprintf(lp, sizeof lp, "%s%s", tp, openclip ? "ln_final" : "final_layer_norm");
  norm(S, comp, "text_model.final_layer_norm", lp, d);
  if (proj > 0) {
    snprintf(lp, sizeof lp, "%stext_projection", tp);
    spec *p = add(S, comp, "text_projection.weight", lp, I_NORMAL, d, 2, (int64_t[]){proj, d});
    p->transpose = 1;
    p->lne[0] = d;
    p->lne[1] = proj;
  }
}

/* ------------------------------------------------------------------ configs */

/* SDXL base 1.0 (diffusers' stabilityai/stable-diffusion-xl-base-1.0 configs), or a tiny one
 * of the same topology: 3 levels, no cross-attention at the first, depth 2 at the lowest */
static void sdxl_config(gen_config *g, int tiny) {
  cd_unet_config *u = &g->unet;
  u->nlevels = 3;
  static const int full[3] = {320, 640, 1280}, small[3] = {32, 64, 64}, dfull[3] = {1, 2, 10}, dsmall[3] = {1, 1, 2};
  for (int i = 0; i < 3; i++) {
    u->block_out[i] = tiny ? small[i] : full[i];
    u->down_attn[i] = i > 0;
    u->up_attn[i] = i < 2;
    u->heads[i] = u->block_out[i] / (tiny ? 16 : 64);
    u->depth[i] = tiny ? dsmall[i] : dfull[i];
  }
  for (int i = 3; i < CD_UNET_MAX_LEVELS; i++) u->block_out[i] = u->down_attn[i] = u->up_attn[i] = u->heads[i] = u->depth[i] = 0;
  u->mid_depth = u->depth[2];
  u->layers_per_block = 2;
  u->linear_proj = 1;
  cd_clip_config *c = &g->clip, *c2 = &g->clip2;
  /* CLIP ViT-L, every layer stored (SDXL takes the penultimate hidden states) */
  c->width = tiny ? 64 : 768;
  c->layers = tiny ? 2 : 12;
  c->heads = tiny ? 1 : 12;
  c->mlp = tiny ? 128 : 3072;
  c->quick_gelu = 1;
  c->pad_id = 49407;
  g->clip_stored = c->layers;
  /* OpenCLIP ViT-bigG with its projection */
  *c2 = *c;
  c2->width = tiny ? 128 : 1280;
  c2->layers = tiny ? 3 : 32;
  c2->heads = tiny ? 2 : 20; /* width / 64, as the single-file loader assumes */
  c2->mlp = tiny ? 256 : 5120;
  c2->quick_gelu = 0;
  c2->pad_id = 0;
  g->proj2 = tiny ? 48 : 1280;
  u->context_dim = c->width + c2->width; /* 768 + 1280 = 2048 */
  u->add_time_dim = tiny ? 8 : 256;
  u->add_time_ids = CD_SDXL_TIME_IDS;
  u->add_text_dim = g->proj2;
  u->sample_size = tiny ? 16 : 128;
  g->vae.scaling_factor = 0.13025f;
}

static void make_config(gen_config *g, int family, int tiny) {
  memset(g, 0, sizeof *g);
  g->family = family;
  g->tiny = tiny;
  cd_unet_config *u = &g->unet;
  u->in_channels = u->out_channels = 4;
  u->nlevels = tiny ? 2 : 4;
  static const int full[4] = {320, 640, 1280, 1280}, small[2] = {32, 64};
  for (int i = 0; i < u->nlevels; i++) {
    u->block_out[i] = tiny ? small[i] : full[i];
    u->down_attn[i] = tiny ? 1 : i < 3;
    u->up_attn[i] = tiny ? 1 : i > 0;
    u->heads[i] = family == 2 ? u->block_out[i] / (tiny ? 16 : 64) : (tiny ? 2 : 8);
  }
  u->layers_per_block = tiny ? 1 : 2;
  u->context_dim = tiny ? 64 : family == 2 ? 1024 : 768;
  u->linear_proj = family == 2;
  u->norm_groups = 32;
  u->norm_eps = 1e-5f;
  u->flip_sin_to_cos = 1;
  u->mid_attn = 1;
  cd_vae_config *v = &g->vae;
  v->in_channels = v->out_channels = 3;
  v->latent_channels = 4;
  v->nlevels = tiny ? 2 : 4;
  static const int vfull[4] = {128, 256, 512, 512}, vsmall[2] = {32, 64};
  for (int i = 0; i < v->nlevels; i++) v->block_out[i] = tiny ? vsmall[i] : vfull[i];
  v->layers_per_block = tiny ? 1 : 2;
  v->norm_groups = 32;
  v->scaling_factor = 0.18215f;
  cd_clip_config *c = &g->clip;
  c->vocab = 49408;
  c->max_pos = 77;
  c->width = tiny ? 64 : family == 2 ? 1024 : 768;
  c->layers = tiny ? 2 : family == 2 ? 23 : 12;
  c->heads = tiny ? 1 : family == 2 ? 16 : 12; /* tiny: width/64 as the single-file loader assumes */
  c->mlp = tiny ? 128 : family == 2 ? 4096 : 3072;
  c->quick_gelu = family == 1;
  c->pad_id = family == 2 ? 0 : 49407;
  g->clip_stored = family == 2 ? c->layers + 1 : c->layers;
  if (family == 3) sdxl_config(g, tiny);
}

static void json_ints(FILE *f, const char *key, const int *v, int n, const char *end) {
  fprintf(f, "  \"%s\": [", key);
  for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? ", " : "", v[i]);
  fprintf(f, "]%s\n", end);
}

static void json_strs(FILE *f, const char *key, const char *const *v, int n, const char *end) {
  fprintf(f, "  \"%s\": [", key);
  for (int i = 0; i < n; i++) fprintf(f, "%s\"%s\"", i ? ", " : "", v[i]);
  fprintf(f, "]%s\n", end);
}

/* writes text produced by fn into path (atomically) */
static int write_text(const char *path, void (*fn)(FILE *, const gen_config *), const gen_config *g) {
  char *buf = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&buf, &n);
  if (!f) return cd_set_error("%s: cannot build the text in memory", path);
  fn(f, g);
  fclose(f);
  int rc = cd_write_file_atomic(path, buf, n);
  free(buf);
  return rc;
}

static void model_index_json(FILE *f, const gen_config *g) {
  if (g->family == 3) {
    fprintf(f, "{\n  \"_class_name\": \"StableDiffusionXLPipeline\",\n  \"_diffusers_version\": \"0.21.0\",\n"
               "  \"force_zeros_for_empty_prompt\": true,\n  \"scheduler\": [\"diffusers\", \"EulerDiscreteScheduler\"],\n"
               "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
               "  \"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"],\n"
               "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
               "  \"tokenizer_2\": [\"transformers\", \"CLIPTokenizer\"],\n"
               "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
               "  \"vae\": [\"diffusers\", \"AutoencoderKL\"],\n"
               "  \"_cdiff_note\": \"random weights written by cdiff gen_sd_random (no tokenizer files)\"\n}\n");
    return;
  }
  fprintf(f, "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n  \"_diffusers_version\": \"0.21.0\",\n"
             "  \"feature_extractor\": [null, null],\n  \"requires_safety_checker\": false,\n"
             "  \"safety_checker\": [null, null],\n  \"scheduler\": [\"diffusers\", \"%s\"],\n"
             "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
             "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
             "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
             "  \"vae\": [\"diffusers\", \"AutoencoderKL\"],\n"
             "  \"_cdiff_note\": \"random weights written by cdiff gen_sd_random (no tokenizer files)\"\n}\n",
          g->family == 2 ? "DDIMScheduler" : "PNDMScheduler");
}

static void unet_json(FILE *f, const gen_config *g) {
  const cd_unet_config *u = &g->unet;
  const char *down[CD_UNET_MAX_LEVELS], *up[CD_UNET_MAX_LEVELS];
  for (int i = 0; i < u->nlevels; i++) {
    down[i] = u->down_attn[i] ? "CrossAttnDownBlock2D" : "DownBlock2D";
    up[i] = u->up_attn[i] ? "CrossAttnUpBlock2D" : "UpBlock2D";
  }
  fprintf(f, "{\n  \"_class_name\": \"UNet2DConditionModel\",\n  \"_diffusers_version\": \"0.21.0\",\n"
             "  \"act_fn\": \"silu\",\n");
  if (u->add_time_dim > 0) { /* SDXL */
    int d[CD_UNET_MAX_LEVELS];
    for (int i = 0; i < u->nlevels; i++) d[i] = cd_unet_depth(u, i);
    fprintf(f, "  \"addition_embed_type\": \"text_time\",\n  \"addition_time_embed_dim\": %d,\n"
               "  \"projection_class_embeddings_input_dim\": %d,\n",
            u->add_time_dim, cd_unet_add_in_dim(u));
    json_ints(f, "transformer_layers_per_block", d, u->nlevels, ",");
  }
  if (g->family >= 2) json_ints(f, "attention_head_dim", u->heads, u->nlevels, ",");
  else fprintf(f, "  \"attention_head_dim\": %d,\n", u->heads[0]);
  json_ints(f, "block_out_channels", u->block_out, u->nlevels, ",");
  fprintf(f, "  \"center_input_sample\": false,\n  \"cross_attention_dim\": %d,\n", u->context_dim);
  json_strs(f, "down_block_types", down, u->nlevels, ",");
  fprintf(f, "  \"downsample_padding\": 1,\n  \"flip_sin_to_cos\": true,\n  \"freq_shift\": 0,\n"
             "  \"in_channels\": %d,\n  \"layers_per_block\": %d,\n  \"mid_block_scale_factor\": 1,\n"
             "  \"norm_eps\": 1e-05,\n  \"norm_num_groups\": %d,\n  \"out_channels\": %d,\n"
             "  \"sample_size\": %d,\n",
          u->in_channels, u->layers_per_block, u->norm_groups, u->out_channels,
          g->family == 3 ? u->sample_size : g->family == 2 ? 96 : 64);
  json_strs(f, "up_block_types", up, u->nlevels, ",");
  fprintf(f, "  \"use_linear_projection\": %s\n}\n", u->linear_proj ? "true" : "false");
}

static void vae_json(FILE *f, const gen_config *g) {
  const cd_vae_config *v = &g->vae;
  const char *down[CD_VAE_MAX_LEVELS], *up[CD_VAE_MAX_LEVELS];
  for (int i = 0; i < v->nlevels; i++) {
    down[i] = "DownEncoderBlock2D";
    up[i] = "UpDecoderBlock2D";
  }
  fprintf(f, "{\n  \"_class_name\": \"AutoencoderKL\",\n  \"_diffusers_version\": \"0.21.0\",\n"
             "  \"act_fn\": \"silu\",\n");
  json_ints(f, "block_out_channels", v->block_out, v->nlevels, ",");
  json_strs(f, "down_block_types", down, v->nlevels, ",");
  fprintf(f, "  \"in_channels\": %d,\n  \"latent_channels\": %d,\n  \"layers_per_block\": %d,\n"
             "  \"norm_num_groups\": %d,\n  \"out_channels\": %d,\n  \"sample_size\": %d,\n"
             "  \"scaling_factor\": %g,%s\n",
          v->in_channels, v->latent_channels, v->layers_per_block, v->norm_groups, v->out_channels,
          g->family == 3 ? 1024 : g->family == 2 ? 768 : 512, (double)v->scaling_factor,
          g->family == 3 ? "\n  \"force_upcast\": true," : "");
  json_strs(f, "up_block_types", up, v->nlevels, "");
  fprintf(f, "}\n");
}

static void clip_json(FILE *f, const gen_config *g, const cd_clip_config *c, int proj) {
  fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"attention_dropout\": 0.0,\n"
             "  \"bos_token_id\": 0,\n  \"eos_token_id\": 2,\n  \"hidden_act\": \"%s\",\n"
             "  \"hidden_size\": %d,\n  \"initializer_factor\": 1.0,\n  \"initializer_range\": 0.02,\n"
             "  \"intermediate_size\": %d,\n  \"layer_norm_eps\": 1e-05,\n"
             "  \"max_position_embeddings\": %d,\n  \"model_type\": \"clip_text_model\",\n"
             "  \"num_attention_heads\": %d,\n  \"num_hidden_layers\": %d,\n  \"pad_token_id\": 1,\n"
             "  \"projection_dim\": %d,\n  \"torch_dtype\": \"float32\",\n  \"vocab_size\": %d\n}\n",
          proj ? "CLIPTextModelWithProjection" : "CLIPTextModel",
          c->quick_gelu ? "quick_gelu" : "gelu", c->width, c->mlp, c->max_pos, c->heads, c->layers,
          proj ? proj : g->family == 2 ? 512 : 768, c->vocab);
}

static void text_json(FILE *f, const gen_config *g) { clip_json(f, g, &g->clip, 0); }
static void text2_json(FILE *f, const gen_config *g) { clip_json(f, g, &g->clip2, g->proj2); }

static void scheduler_json(FILE *f, const gen_config *g) {
  if (g->family == 3) /* SDXL: Euler, leading spacing, steps offset 1 */
    fprintf(f, "{\n  \"_class_name\": \"EulerDiscreteScheduler\",\n  \"_diffusers_version\": \"0.21.0\",\n"
               "  \"beta_end\": 0.012,\n  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n"
               "  \"interpolation_type\": \"linear\",\n  \"num_train_timesteps\": 1000,\n"
               "  \"prediction_type\": \"epsilon\",\n  \"sample_max_value\": 1.0,\n  \"set_alpha_to_one\": false,\n"
               "  \"skip_prk_steps\": true,\n  \"steps_offset\": 1,\n  \"timestep_spacing\": \"leading\",\n"
               "  \"trained_betas\": null,\n  \"use_karras_sigmas\": false\n}\n");
  else if (g->family == 2)
    fprintf(f, "{\n  \"_class_name\": \"DDIMScheduler\",\n  \"_diffusers_version\": \"0.21.0\",\n"
               "  \"beta_end\": 0.012,\n  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n"
               "  \"clip_sample\": false,\n  \"num_train_timesteps\": 1000,\n"
               "  \"prediction_type\": \"v_prediction\",\n  \"set_alpha_to_one\": false,\n"
               "  \"steps_offset\": 1\n}\n");
  else
    fprintf(f, "{\n  \"_class_name\": \"PNDMScheduler\",\n  \"_diffusers_version\": \"0.21.0\",\n"
               "  \"beta_end\": 0.012,\n  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n"
               "  \"num_train_timesteps\": 1000,\n  \"prediction_type\": \"epsilon\",\n"
               "  \"set_alpha_to_one\": false,\n  \"skip_prk_steps\": true,\n  \"steps_offset\": 1\n}\n");
}

/* the .yaml beside an SD 2.x single file: v-prediction and head width 64 */
static void ldm_yaml(FILE *f, const gen_config *g) {
  fprintf(f, "# written by cdiff gen_sd_random\nmodel:\n  params:\n    parameterization: \"%s\"\n"
             "    linear_start: 0.00085\n    linear_end: 0.0120\n    timesteps: 1000\n"
             "    unet_config:\n      params:\n        %s: %d\n"
             "    cond_stage_config:\n      params:\n        layer: \"penultimate\"  # %d heads\n",
          g->family == 2 ? "v" : "eps", g->family == 2 ? "num_head_channels" : "num_heads",
          g->family == 2 ? g->unet.block_out[0] / g->unet.heads[0] : g->unet.heads[0], g->clip.heads);
}

/* the .yaml beside an SDXL single file, in SGM's sd_xl_base.yaml terms: head width,
 * the size embedders' outdim, the VAE scale factor */
static void sgm_yaml(FILE *f, const gen_config *g) {
  fprintf(f, "# written by cdiff gen_sd_random\nmodel:\n  target: sgm.models.diffusion.DiffusionEngine\n"
             "  params:\n    scale_factor: %g\n    network_config:\n      params:\n"
             "        adm_in_channels: %d\n        num_head_channels: %d\n        context_dim: %d\n"
             "    conditioner_config:\n      params:\n        emb_models:\n"
             "          - input_key: original_size_as_tuple\n            params:\n              outdim: %d\n",
          (double)g->vae.scaling_factor, cd_unet_add_in_dim(&g->unet), g->unet.block_out[0] / g->unet.heads[0],
          g->unet.context_dim, g->unet.add_time_dim);
}

/* ------------------------------------------------------------------ values */

static uint64_t mix64(uint64_t z) { /* splitmix64 finaliser */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t name_seed(uint64_t seed, const char *name) {
  uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
  for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
  return mix64(h ^ mix64(seed));
}

enum { CHUNK = 1 << 16 };

/* n values of one diffusers tensor into x: independent of the thread count */
static void fill(const spec *s, const char *name, uint64_t seed, float *x, int64_t n) {
  /* norm scales 1 + 0.1 N(0,1) and biases 0.1 N(0,1), as the golden tiny models:
   * exact ones and zeros would make every LayerNorm output lie in a hyperplane
   * (features orthogonal to the all-ones vector), which real models do not */
  float offset = s->init == I_ONE ? 1.0f : 0.0f;
  float scale = s->init == I_ONE || s->init == I_ZERO ? 0.1f
                : s->init == I_EMB_TOK ? 0.02f : s->init == I_EMB_POS ? 0.01f : (float)(1.0 / sqrt((double)s->fan_in));
  uint64_t base = name_seed(seed, name);
  int64_t nchunk = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(dynamic)
  for (int64_t c = 0; c < nchunk; c++) {
    cd_rng r;
    cd_rng_seed(&r, mix64(base + (uint64_t)c * 0x9e3779b97f4a7c15ULL));
    int64_t lo = c * CHUNK, hi = CD_MIN(n, lo + CHUNK);
    cd_rng_fill_normal(&r, x + lo, (size_t)(hi - lo));
    for (int64_t i = lo; i < hi; i++) x[i] = offset + x[i] * scale;
  }
}

static int64_t spec_numel(const spec *s) { return cd_numel(s->ndim, s->ne); }

/* the stored bytes of s (f32 or f16) in one layout, malloc'd */
static void *make_values(const spec *s, uint64_t seed, cd_dtype dt, int ldm) {
  int64_t n = spec_numel(s), part = n / s->nd;
  float *x = cd_malloc((size_t)n * sizeof(float));
  for (int k = 0; k < s->nd; k++) fill(s, s->dname[k], seed, x + k * part, part);
  if (ldm && s->transpose) { /* [a, b] -> [b, a] */
    float *t = cd_malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < s->ne[0]; i++)
      for (int64_t j = 0; j < s->ne[1]; j++) t[j * s->ne[0] + i] = x[i * s->ne[1] + j];
    free(x);
    x = t;
  }
  if (dt == CD_DT_F32) return x;
  uint16_t *h = cd_malloc((size_t)n * sizeof(uint16_t));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) h[i] = cd_f32_to_f16(x[i]);
  free(x);
  return h;
}

/* writes the tensors of `comp` (or all when comp < 0) in one layout */
static int write_tensors(const char *path, const specs *S, int comp, int ldm, cd_dtype dt, uint64_t seed) {
  cd_tensor_out *t = cd_calloc((size_t)S->n, sizeof *t);
  void **bufs = cd_calloc((size_t)S->n, sizeof *bufs);
  int n = 0;
  int64_t params = 0;
  for (int i = 0; i < S->n; i++) {
    const spec *s = &S->v[i];
    if ((comp >= 0 && s->comp != comp) || (ldm ? !s->lname[0] : !s->in_diff)) continue;
    bufs[n] = make_values(s, seed, dt, ldm);
    t[n].name = ldm ? s->lname : s->dname[0];
    t[n].dtype = dt;
    t[n].ndim = ldm ? s->lndim : s->ndim;
    for (int d = 0; d < t[n].ndim; d++) t[n].shape[d] = ldm ? s->lne[d] : s->ne[d];
    t[n].data = bufs[n];
    params += spec_numel(s);
    n++;
  }
  char sd[32];
  snprintf(sd, sizeof sd, "%llu", (unsigned long long)seed);
  const char *meta[] = {"format", "pt", "cdiff_generator", "gen_sd_random (random weights)", "seed", sd};
  double t0 = cd_time();
  int rc = cd_safetensors_write(path, t, n, meta, 3);
  if (!rc)
    printf("  %-60s %4d tensors %8.1fM params (%.1fs)\n", path, n, params / 1e6, cd_time() - t0);
  for (int i = 0; i < n; i++) free(bufs[i]);
  free(bufs);
  free(t);
  return rc;
}

/* Every LDM name must map back to its diffusers name(s) through the loader's key maps. */
static int check_ldm_names(const specs *S, const gen_config *g) {
  cd_keymap km[NCOMP] = {{0}};
  int openclip = g->family == 2, xl = g->family == 3, rc = 0;
  if (cd_keymap_clip(&km[C_TEXT], &g->clip, openclip, g->clip_stored) || cd_keymap_unet(&km[C_UNET], &g->unet) ||
      cd_keymap_vae(&km[C_VAE], &g->vae) || (xl && cd_keymap_clip(&km[C_TEXT2], &g->clip2, 1, g->clip2.layers)))
    rc = -1;
  const char *const pre[NCOMP] = {xl ? "conditioner.embedders.0." : "cond_stage_model.", UP, VP,
                                  "conditioner.embedders.1."};
  for (int i = 0; i < S->n && !rc; i++) {
    const spec *s = &S->v[i];
    if (!s->lname[0] || s->transpose) continue; /* a transposed tensor: the loader's own rule, checked by loading */
    cd_km_result r;
    cd_km_op op = cd_keymap_map(&km[s->comp], s->lname + strlen(pre[s->comp]), &r);
    if (!s->in_diff && s->nd == 1) { /* blocks past the used ones */
      if (op != CD_KM_IGNORE) rc = cd_set_error("internal: %s should be ignored by the loader", s->lname);
      continue;
    }
    int ok = op != CD_KM_UNKNOWN && op != CD_KM_IGNORE && r.n == s->nd;
    for (int k = 0; ok && k < s->nd; k++) ok = !strcmp(r.dst[k], s->dname[k]);
    if (!ok) rc = cd_set_error("internal: LDM key %s maps to %s, expected %s", s->lname, r.n ? r.dst[0] : "(nothing)", s->dname[0]);
  }
  for (int c = 0; c < NCOMP; c++) cd_keymap_free(&km[c]);
  return rc;
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
  fprintf(stderr,
          "usage: gen_sd_random [--out DIR] [--single-file FILE.safetensors] [--dtype f16|f32]\n"
          "                     [--seed N] [--family sd1|sd2|sdxl] [--tiny] [--count]\n"
          "Writes a randomly initialised Stable Diffusion checkpoint with the real shapes\n"
          "(sd1: SD 1.5, 1.07B parameters; sd2: SD 2.x 768-v, 1.30B; sdxl: SDXL base 1.0, 3.47B)\n"
          "as a diffusers folder (--out, default /tmp/sd15-random, /tmp/sd2-random or\n"
          "/tmp/sdxl-random) and/or one LDM-layout file (SGM layout for sdxl).\n"
          "--count prints the exact parameter count of each component and writes nothing.\n"
          "f16 (default) takes 2 bytes per parameter on disk; cdiff computes in fp32.\n"
          "No tokenizer files are written: pass --vocab to cdiff commands that need text.\n");
}

int main(int argc, char **argv) {
  cd_env_tune(argc, argv);
  cd_threads_init();
  const char *out = NULL, *single = NULL;
  int family = 1, tiny = 0, count = 0;
  uint64_t seed = 0;
  cd_dtype dt = CD_DT_F16;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
    if (!strcmp(a, "--tiny")) { tiny = 1; continue; }
    if (!strcmp(a, "--count")) { count = 1; continue; }
    if (!v) { fprintf(stderr, "gen_sd_random: %s needs a value (or is unknown)\n", a); usage(); return 2; }
    i++;
    if (!strcmp(a, "--out")) out = v;
    else if (!strcmp(a, "--single-file")) single = v;
    else if (!strcmp(a, "--dtype")) {
      if (!strcmp(v, "f16") || !strcmp(v, "fp16") || !strcmp(v, "float16")) dt = CD_DT_F16;
      else if (!strcmp(v, "f32") || !strcmp(v, "fp32") || !strcmp(v, "float32")) dt = CD_DT_F32;
      else { fprintf(stderr, "gen_sd_random: --dtype %s: expected f16 or f32\n", v); return 2; }
    } else if (!strcmp(a, "--seed")) {
      char *end;
      unsigned long long s = strtoull(v, &end, 10);
      if (end == v || *end) { fprintf(stderr, "gen_sd_random: --seed %s: expected a non-negative integer\n", v); return 2; }
      seed = s;
    } else if (!strcmp(a, "--family")) {
      if (!strcmp(v, "sd1")) family = 1;
      else if (!strcmp(v, "sd2")) family = 2;
      else if (!strcmp(v, "sdxl")) family = 3;
      else { fprintf(stderr, "gen_sd_random: --family %s: expected sd1, sd2 or sdxl\n", v); return 2; }
    } else {
      fprintf(stderr, "gen_sd_random: unknown flag %s\n", a);
      usage();
      return 2;
    }
  }
  if (!out && !single) out = family == 3 ? "/tmp/sdxl-random" : family == 2 ? "/tmp/sd2-random" : "/tmp/sd15-random";
  if (single && (strlen(single) < 13 || strcmp(single + strlen(single) - 12, ".safetensors"))) {
    fprintf(stderr, "gen_sd_random: --single-file %s: the name must end in .safetensors\n", single);
    return 2;
  }

  gen_config g;
  make_config(&g, family, tiny);
  specs S = {0};
  if (family == 3) {
    clip_specs(&S, C_TEXT, &g.clip, 0, g.clip_stored, "conditioner.embedders.0.transformer.text_model.", 0);
    clip_specs(&S, C_TEXT2, &g.clip2, 1, g.clip2.layers, "conditioner.embedders.1.model.", g.proj2);
  } else {
    clip_specs(&S, C_TEXT, &g.clip, family == 2, g.clip_stored,
               family == 2 ? "cond_stage_model.model." : "cond_stage_model.transformer.text_model.", 0);
  }
  unet_specs(&S, &g.unet);
  vae_specs(&S, &g.vae);
  int64_t np[NCOMP] = {0};
  for (int i = 0; i < S.n; i++)
    if (S.v[i].in_diff) np[S.v[i].comp] += spec_numel(&S.v[i]);
  const char *fname = family == 3 ? "SDXL" : family == 2 ? "SD 2.x" : "SD 1.5";
  if (count) { /* exact counts, diffusers names (what cdiff info reports) */
    printf("%s%s parameters: unet %lld, vae %lld, text_encoder %lld", fname, tiny ? " (tiny)" : "",
           (long long)np[C_UNET], (long long)np[C_VAE], (long long)np[C_TEXT]);
    if (family == 3) printf(", text_encoder_2 %lld", (long long)np[C_TEXT2]);
    printf("\n");
    free(S.v);
    return 0;
  }
  printf("gen_sd_random: %s%s, seed %llu, %s; parameters: UNet %.1fM, VAE %.1fM, text %.1fM", fname,
         tiny ? " (tiny)" : "", (unsigned long long)seed, dt == CD_DT_F16 ? "float16" : "float32",
         np[C_UNET] / 1e6, np[C_VAE] / 1e6, np[C_TEXT] / 1e6);
  if (family == 3) printf(" + %.1fM", np[C_TEXT2] / 1e6);
  printf("\n");
  int rc = check_ldm_names(&S, &g);
  double t0 = cd_time();
  if (!rc && out) {
    static const char *const sub[NCOMP] = {"text_encoder", "unet", "vae", "text_encoder_2"};
    static const char *const file[NCOMP] = {"model.safetensors", "diffusion_pytorch_model.safetensors",
                                            "diffusion_pytorch_model.safetensors", "model.safetensors"};
    static void (*const cfg[NCOMP])(FILE *, const gen_config *) = {text_json, unet_json, vae_json, text2_json};
    char p[4096];
    rc = cd_mkdir_p(out);
    for (int c = 0; c < (family == 3 ? NCOMP : 3) && !rc; c++) {
      snprintf(p, sizeof p, "%s/%s", out, sub[c]);
      rc = cd_mkdir_p(p);
      snprintf(p, sizeof p, "%s/%s/config.json", out, sub[c]);
      if (!rc) rc = write_text(p, cfg[c], &g);
      snprintf(p, sizeof p, "%s/%s/%s", out, sub[c], file[c]);
      if (!rc) rc = write_tensors(p, &S, c, 0, dt, seed);
    }
    snprintf(p, sizeof p, "%s/scheduler", out);
    if (!rc) rc = cd_mkdir_p(p);
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", out);
    if (!rc) rc = write_text(p, scheduler_json, &g);
    snprintf(p, sizeof p, "%s/model_index.json", out); /* last: the folder is complete once it exists */
    if (!rc) rc = write_text(p, model_index_json, &g);
    if (!rc) printf("wrote diffusers folder %s\n", out);
  }
  if (!rc && single) {
    size_t n = strlen(single);
    rc = write_tensors(single, &S, -1, 1, dt, seed);
    if (!rc && (family == 2 || tiny)) { /* SD 2.x: v-prediction and head width need a .yaml */
      char *y = cd_malloc(n + 8);
      snprintf(y, n + 8, "%.*s.yaml", (int)(n - 12), single);
      rc = write_text(y, family == 3 ? sgm_yaml : ldm_yaml, &g);
      if (!rc) printf("wrote %s\n", y);
      free(y);
    }
    if (!rc) printf("wrote single file %s (original %s layout)\n", single, family == 3 ? "SGM" : "LDM");
  }
  free(S.v);
  if (rc) {
    fprintf(stderr, "gen_sd_random: %s\n", cd_last_error());
    return 1;
  }
  printf("done in %.1fs\n", cd_time() - t0);
  return 0;
}
