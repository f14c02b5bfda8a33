/* keymap.c - original LDM / OpenCLIP key names -> diffusers names, from rule tables
 * generated for the detected configuration (see keymap.h). */
#include "keymap.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

/* ---- sub-tables: the parameters inside one module ----
 * A row whose src ends in '.' matches "src" + "weight"/"bias"; otherwise it is an exact key. */
typedef struct {
  const char *src, *dst;
  cd_km_op op;
} sub_row;

enum {
  SUB_LEAF,       /* the module itself is a conv/linear/norm: weight, bias */
  SUB_UNET_RES,   /* openaimodel ResBlock -> diffusers ResnetBlock2D */
  SUB_VAE_RES,    /* LDM ResnetBlock -> ResnetBlock2D */
  SUB_XFORMER,    /* SpatialTransformer -> Transformer2DModel (same names): norm, proj_in/out */
  SUB_XBLOCK,     /* its transformer_blocks.N (one rule per block: any depth) */
  SUB_VAE_ATTN,   /* AttnBlock (1x1 convs) -> Attention (linears) */
  SUB_HF_LAYER,   /* CLIPEncoderLayer: same names */
  SUB_OC_BLOCK,   /* OpenCLIP ResidualAttentionBlock -> CLIPEncoderLayer */
  SUB_IGNORE_ALL, /* every key below the prefix is known and unused */
  SUB_TRANSPOSE,  /* an exact key whose [a, b] value is stored transposed */
  SUB_COUNT
};

static const sub_row leaf_rows[] = {{"", "", CD_KM_COPY}};
static const sub_row unet_res_rows[] = {
    {"in_layers.0.", "norm1.", CD_KM_COPY},     {"in_layers.2.", "conv1.", CD_KM_COPY},
    {"emb_layers.1.", "time_emb_proj.", CD_KM_COPY}, {"out_layers.0.", "norm2.", CD_KM_COPY},
    {"out_layers.3.", "conv2.", CD_KM_COPY},    {"skip_connection.", "conv_shortcut.", CD_KM_COPY},
};
static const sub_row vae_res_rows[] = {
    {"norm1.", "norm1.", CD_KM_COPY}, {"conv1.", "conv1.", CD_KM_COPY},
    {"norm2.", "norm2.", CD_KM_COPY}, {"conv2.", "conv2.", CD_KM_COPY},
    {"nin_shortcut.", "conv_shortcut.", CD_KM_COPY},
};
static const sub_row xformer_rows[] = {
    {"norm.", "norm.", CD_KM_COPY},
    {"proj_in.", "proj_in.", CD_KM_COPY},
    {"proj_out.", "proj_out.", CD_KM_COPY},
};
/* one BasicTransformerBlock (transformer_blocks.N.): same names in both layouts */
static const sub_row xblock_rows[] = {
    {"norm1.", "norm1.", CD_KM_COPY},
    {"norm2.", "norm2.", CD_KM_COPY},
    {"norm3.", "norm3.", CD_KM_COPY},
    {"attn1.to_q.", "attn1.to_q.", CD_KM_COPY},
    {"attn1.to_k.", "attn1.to_k.", CD_KM_COPY},
    {"attn1.to_v.", "attn1.to_v.", CD_KM_COPY},
    {"attn1.to_out.0.", "attn1.to_out.0.", CD_KM_COPY},
    {"attn2.to_q.", "attn2.to_q.", CD_KM_COPY},
    {"attn2.to_k.", "attn2.to_k.", CD_KM_COPY},
    {"attn2.to_v.", "attn2.to_v.", CD_KM_COPY},
    {"attn2.to_out.0.", "attn2.to_out.0.", CD_KM_COPY},
    {"ff.net.0.proj.", "ff.net.0.proj.", CD_KM_COPY},
    {"ff.net.2.", "ff.net.2.", CD_KM_COPY},
};
static const sub_row vae_attn_rows[] = {
    {"norm.", "group_norm.", CD_KM_COPY}, {"q.", "to_q.", CD_KM_SQUEEZE},
    {"k.", "to_k.", CD_KM_SQUEEZE},       {"v.", "to_v.", CD_KM_SQUEEZE},
    {"proj_out.", "to_out.0.", CD_KM_SQUEEZE},
};
static const sub_row hf_layer_rows[] = {
    {"layer_norm1.", "layer_norm1.", CD_KM_COPY},
    {"layer_norm2.", "layer_norm2.", CD_KM_COPY},
    {"self_attn.q_proj.", "self_attn.q_proj.", CD_KM_COPY},
    {"self_attn.k_proj.", "self_attn.k_proj.", CD_KM_COPY},
    {"self_attn.v_proj.", "self_attn.v_proj.", CD_KM_COPY},
    {"self_attn.out_proj.", "self_attn.out_proj.", CD_KM_COPY},
    {"mlp.fc1.", "mlp.fc1.", CD_KM_COPY},
    {"mlp.fc2.", "mlp.fc2.", CD_KM_COPY},
};
/* in_proj_{weight,bias} are [q; k; v] stacked along dim 0 */
static const sub_row oc_block_rows[] = {
    {"ln_1.", "layer_norm1.", CD_KM_COPY},
    {"ln_2.", "layer_norm2.", CD_KM_COPY},
    {"attn.out_proj.", "self_attn.out_proj.", CD_KM_COPY},
    {"mlp.c_fc.", "mlp.fc1.", CD_KM_COPY},
    {"mlp.c_proj.", "mlp.fc2.", CD_KM_COPY},
    {"attn.in_proj_weight", "weight", CD_KM_SPLIT3},
    {"attn.in_proj_bias", "bias", CD_KM_SPLIT3},
};

static const struct {
  const sub_row *rows;
  int n;
} subs[SUB_COUNT] = {
    [SUB_LEAF] = {leaf_rows, 1},
    [SUB_UNET_RES] = {unet_res_rows, sizeof unet_res_rows / sizeof *unet_res_rows},
    [SUB_VAE_RES] = {vae_res_rows, sizeof vae_res_rows / sizeof *vae_res_rows},
    [SUB_XFORMER] = {xformer_rows, sizeof xformer_rows / sizeof *xformer_rows},
    [SUB_XBLOCK] = {xblock_rows, sizeof xblock_rows / sizeof *xblock_rows},
    [SUB_VAE_ATTN] = {vae_attn_rows, sizeof vae_attn_rows / sizeof *vae_attn_rows},
    [SUB_HF_LAYER] = {hf_layer_rows, sizeof hf_layer_rows / sizeof *hf_layer_rows},
    [SUB_OC_BLOCK] = {oc_block_rows, sizeof oc_block_rows / sizeof *oc_block_rows},
    [SUB_IGNORE_ALL] = {NULL, 0},
    [SUB_TRANSPOSE] = {NULL, 0},
};

/* ---- rule tables ---- */

static void add_rule(cd_keymap *km, int sub, int exact, const char *dst, const char *fmt, ...)
    CD_PRINTF(5, 6);
static void add_rule(cd_keymap *km, int sub, int exact, const char *dst, const char *fmt, ...) {
  if (km->n == km->cap) {
    km->cap = km->cap ? 2 * km->cap : 64;
    km->r = cd_realloc(km->r, (size_t)km->cap * sizeof *km->r);
  }
  cd_km_rule *r = &km->r[km->n++];
  memset(r, 0, sizeof *r);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->src, sizeof r->src, fmt, ap);
  va_end(ap);
  snprintf(r->dst, sizeof r->dst, "%s", dst);
  r->sub = sub;
  r->exact = exact;
}

void cd_keymap_free(cd_keymap *km) {
  if (!km) return;
  free(km->r);
  km->r = NULL;
  km->n = km->cap = 0;
}

/* a SpatialTransformer at LDM prefix src ("input_blocks.4.1.") -> diffusers dst, with depth blocks */
static void add_transformer(cd_keymap *km, const char *dst, const char *src, int depth) {
  char d[128];
  add_rule(km, SUB_XFORMER, 0, dst, "%s", src);
  for (int b = 0; b < depth; b++) {
    snprintf(d, sizeof d, "%stransformer_blocks.%d.", dst, b);
    add_rule(km, SUB_XBLOCK, 0, d, "%stransformer_blocks.%d.", src, b);
  }
}

int cd_keymap_unet(cd_keymap *km, const cd_unet_config *c) {
  memset(km, 0, sizeof *km);
  int n = c->nlevels, L = c->layers_per_block;
  if (n < 1 || n > CD_UNET_MAX_LEVELS || L < 1)
    return cd_set_error("UNet key map: bad config (%d levels, %d layers per block)", n, L);
  char d[128];
  add_rule(km, SUB_LEAF, 0, "time_embedding.linear_1.", "time_embed.0.");
  add_rule(km, SUB_LEAF, 0, "time_embedding.linear_2.", "time_embed.2.");
  add_rule(km, SUB_LEAF, 0, "conv_in.", "input_blocks.0.0.");
  add_rule(km, SUB_LEAF, 0, "conv_norm_out.", "out.0.");
  add_rule(km, SUB_LEAF, 0, "conv_out.", "out.2.");
  if (c->add_time_dim > 0) { /* SGM's label_emb.0 = Sequential(Linear, SiLU, Linear) */
    add_rule(km, SUB_LEAF, 0, "add_embedding.linear_1.", "label_emb.0.0.");
    add_rule(km, SUB_LEAF, 0, "add_embedding.linear_2.", "label_emb.0.2.");
  }
  char s[64];
  /* input_blocks.0 is conv_in; then per level L (resnet [+ transformer]) blocks and a downsampler */
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < L; j++) {
      int k = 1 + i * (L + 1) + j;
      snprintf(d, sizeof d, "down_blocks.%d.resnets.%d.", i, j);
      add_rule(km, SUB_UNET_RES, 0, d, "input_blocks.%d.0.", k);
      if (c->down_attn[i]) {
        snprintf(d, sizeof d, "down_blocks.%d.attentions.%d.", i, j);
        snprintf(s, sizeof s, "input_blocks.%d.1.", k);
        add_transformer(km, d, s, cd_unet_depth(c, i));
      }
    }
    if (i < n - 1) {
      snprintf(d, sizeof d, "down_blocks.%d.downsamplers.0.conv.", i);
      add_rule(km, SUB_LEAF, 0, d, "input_blocks.%d.0.op.", (i + 1) * (L + 1));
    }
  }
  add_rule(km, SUB_UNET_RES, 0, "mid_block.resnets.0.", "middle_block.0.");
  if (c->mid_attn) {
    add_transformer(km, "mid_block.attentions.0.", "middle_block.1.", cd_unet_mid_depth(c));
    add_rule(km, SUB_UNET_RES, 0, "mid_block.resnets.1.", "middle_block.2.");
  } else {
    add_rule(km, SUB_UNET_RES, 0, "mid_block.resnets.1.", "middle_block.1.");
  }
  /* output_blocks: per up level (0 = lowest resolution) L+1 blocks of resnet [+ transformer]
   * [+ upsampler on the last one] */
  for (int u = 0; u < n; u++) {
    for (int j = 0; j <= L; j++) {
      int k = u * (L + 1) + j;
      snprintf(d, sizeof d, "up_blocks.%d.resnets.%d.", u, j);
      add_rule(km, SUB_UNET_RES, 0, d, "output_blocks.%d.0.", k);
      if (c->up_attn[u]) {
        snprintf(d, sizeof d, "up_blocks.%d.attentions.%d.", u, j);
        snprintf(s, sizeof s, "output_blocks.%d.1.", k);
        add_transformer(km, d, s, cd_unet_depth(c, n - 1 - u));
      }
      if (u < n - 1 && j == L) {
        snprintf(d, sizeof d, "up_blocks.%d.upsamplers.0.conv.", u);
        add_rule(km, SUB_LEAF, 0, d, "output_blocks.%d.%d.conv.", k, c->up_attn[u] ? 2 : 1);
      }
    }
  }
  return 0;
}

int cd_keymap_vae(cd_keymap *km, const cd_vae_config *c) {
  memset(km, 0, sizeof *km);
  int n = c->nlevels, L = c->layers_per_block;
  if (n < 1 || n > CD_VAE_MAX_LEVELS || L < 1)
    return cd_set_error("VAE key map: bad config (%d levels, %d layers per block)", n, L);
  char d[128];
  add_rule(km, SUB_LEAF, 0, "quant_conv.", "quant_conv.");
  add_rule(km, SUB_LEAF, 0, "post_quant_conv.", "post_quant_conv.");
  static const char *const part[2] = {"encoder", "decoder"};
  for (int p = 0; p < 2; p++) {
    const char *s = part[p];
    snprintf(d, sizeof d, "%s.conv_in.", s);
    add_rule(km, SUB_LEAF, 0, d, "%s.conv_in.", s);
    snprintf(d, sizeof d, "%s.conv_out.", s);
    add_rule(km, SUB_LEAF, 0, d, "%s.conv_out.", s);
    snprintf(d, sizeof d, "%s.conv_norm_out.", s);
    add_rule(km, SUB_LEAF, 0, d, "%s.norm_out.", s);
    snprintf(d, sizeof d, "%s.mid_block.resnets.0.", s);
    add_rule(km, SUB_VAE_RES, 0, d, "%s.mid.block_1.", s);
    snprintf(d, sizeof d, "%s.mid_block.resnets.1.", s);
    add_rule(km, SUB_VAE_RES, 0, d, "%s.mid.block_2.", s);
    snprintf(d, sizeof d, "%s.mid_block.attentions.0.", s);
    add_rule(km, SUB_VAE_ATTN, 0, d, "%s.mid.attn_1.", s);
  }
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < L; j++) {
      snprintf(d, sizeof d, "encoder.down_blocks.%d.resnets.%d.", i, j);
      add_rule(km, SUB_VAE_RES, 0, d, "encoder.down.%d.block.%d.", i, j);
    }
    if (i < n - 1) {
      snprintf(d, sizeof d, "encoder.down_blocks.%d.downsamplers.0.conv.", i);
      add_rule(km, SUB_LEAF, 0, d, "encoder.down.%d.downsample.conv.", i);
    }
  }
  /* the LDM decoder numbers its up levels from the lowest resolution's opposite end */
  for (int u = 0; u < n; u++) {
    int o = n - 1 - u;
    for (int j = 0; j <= L; j++) {
      snprintf(d, sizeof d, "decoder.up_blocks.%d.resnets.%d.", u, j);
      add_rule(km, SUB_VAE_RES, 0, d, "decoder.up.%d.block.%d.", o, j);
    }
    if (u < n - 1) {
      snprintf(d, sizeof d, "decoder.up_blocks.%d.upsamplers.0.conv.", u);
      add_rule(km, SUB_LEAF, 0, d, "decoder.up.%d.upsample.conv.", o);
    }
  }
  return 0;
}

int cd_keymap_clip(cd_keymap *km, const cd_clip_config *c, int openclip, int stored_blocks) {
  memset(km, 0, sizeof *km);
  if (c->layers < 1 || (openclip && stored_blocks < c->layers))
    return cd_set_error("text encoder key map: bad config (%d layers, %d stored)", c->layers,
                        stored_blocks);
  char d[128];
  if (!openclip) {
    /* "transformer.text_model." (transformers >= 4.x) or "transformer." (older files) */
    static const char *const pre[2] = {"transformer.text_model.", "transformer."};
    for (int p = 0; p < 2; p++) {
      add_rule(km, SUB_LEAF, 0, "text_model.embeddings.token_embedding.",
               "%sembeddings.token_embedding.", pre[p]);
      add_rule(km, SUB_LEAF, 0, "text_model.embeddings.position_embedding.",
               "%sembeddings.position_embedding.", pre[p]);
      add_rule(km, SUB_IGNORE_ALL, 1, "", "%sembeddings.position_ids", pre[p]);
      add_rule(km, SUB_LEAF, 0, "text_model.final_layer_norm.", "%sfinal_layer_norm.", pre[p]);
      for (int l = 0; l < c->layers; l++) {
        snprintf(d, sizeof d, "text_model.encoder.layers.%d.", l);
        add_rule(km, SUB_HF_LAYER, 0, d, "%sencoder.layers.%d.", pre[p], l);
      }
    }
    return 0;
  }
  add_rule(km, SUB_LEAF, 0, "text_model.embeddings.token_embedding.", "model.token_embedding.");
  add_rule(km, SUB_LEAF, 1, "text_model.embeddings.position_embedding.weight",
           "model.positional_embedding");
  add_rule(km, SUB_LEAF, 0, "text_model.final_layer_norm.", "model.ln_final.");
  if (c->proj > 0)
    add_rule(km, SUB_TRANSPOSE, 1, "text_projection.weight", "model.text_projection");
  else
    add_rule(km, SUB_IGNORE_ALL, 1, "", "model.text_projection");
  add_rule(km, SUB_IGNORE_ALL, 1, "", "model.logit_scale");
  add_rule(km, SUB_IGNORE_ALL, 1, "", "model.attn_mask");
  for (int l = 0; l < stored_blocks; l++) {
    snprintf(d, sizeof d, "text_model.encoder.layers.%d.", l);
    add_rule(km, l < c->layers ? SUB_OC_BLOCK : SUB_IGNORE_ALL, 0, d,
             "model.transformer.resblocks.%d.", l);
  }
  return 0;
}

static int leaf_ok(const char *s) { return !strcmp(s, "weight") || !strcmp(s, "bias"); }

cd_km_op cd_keymap_map(const cd_keymap *km, const char *key, cd_km_result *r) {
  memset(r, 0, sizeof *r);
  /* the longest matching prefix rule wins (an exact rule is the longest possible) */
  const cd_km_rule *best = NULL;
  size_t best_len = 0;
  for (int i = 0; i < km->n; i++) {
    const cd_km_rule *u = &km->r[i];
    size_t len = strlen(u->src);
    if (u->exact) {
      if (!strcmp(key, u->src)) { best = u; break; }
    } else if (len > best_len && !strncmp(key, u->src, len)) {
      best = u;
      best_len = len;
    }
  }
  if (!best) return r->op = CD_KM_UNKNOWN;
  if (best->sub == SUB_IGNORE_ALL) return r->op = CD_KM_IGNORE;
  if (best->exact) {
    snprintf(r->dst[0], CD_KM_NAME, "%s", best->dst);
    r->n = 1;
    return r->op = best->sub == SUB_TRANSPOSE ? CD_KM_TRANSPOSE : CD_KM_COPY;
  }
  const char *rest = key + strlen(best->src);
  const sub_row *rows = subs[best->sub].rows;
  for (int i = 0; i < subs[best->sub].n; i++) {
    const sub_row *s = &rows[i];
    size_t len = strlen(s->src);
    int prefix = len == 0 || s->src[len - 1] == '.';
    if (prefix) {
      if (strncmp(rest, s->src, len) || !leaf_ok(rest + len)) continue;
      const char *leaf = rest + len;
      snprintf(r->dst[0], CD_KM_NAME, "%s%s%s", best->dst, s->dst, leaf);
      r->n = 1;
      /* only a 1x1 conv weight changes shape; its bias is copied */
      r->op = (s->op == CD_KM_SQUEEZE && !strcmp(leaf, "bias")) ? CD_KM_COPY : s->op;
      return r->op;
    }
    if (strcmp(rest, s->src)) continue;
    if (s->op == CD_KM_SPLIT3) {
      static const char qkv[3] = {'q', 'k', 'v'};
      for (int t = 0; t < 3; t++)
        snprintf(r->dst[t], CD_KM_NAME, "%sself_attn.%c_proj.%s", best->dst, qkv[t], s->dst);
      r->n = 3;
      return r->op = CD_KM_SPLIT3;
    }
    snprintf(r->dst[0], CD_KM_NAME, "%s%s", best->dst, s->dst);
    r->n = 1;
    return r->op = s->op;
  }
  return r->op = CD_KM_UNKNOWN;
}
