/* unet.c - UNet2DConditionModel forward graph (see unet.h for the layout).
 *
 *   emb  = linear_2(silu(linear_1(timestep_embed(t))))          [B, 4*C0]
 *        (+ add_embedding(concat[text_embeds, timestep_embed(time_ids)]) with text_time)
 *   h    = conv_in(x); skips = [h]
 *   down: per level, layers x (ResNet [+ Transformer2D]) then a stride-2 conv
 *   mid:  ResNet, Transformer2D, ResNet
 *   up:   per level, layers+1 x (ResNet(concat[h, skips.pop()]) [+ Transformer2D])
 *         then nearest 2x (to the next skip's size: any latent size works) + conv
 *   out  = conv_out(silu(GN(h)))
 * The ResNet and transformer blocks are the shared builders of blocks.c.
 */
#include "unet.h"

#include "blocks.h"

#include <stdint.h>
#include <stdio.h>

typedef struct {
  cd_blk b;
  const cd_unet_config *c;
  cd_blk_attn_train attn2; /* how every cross-attention trains (inference: all zero) */
  cd_node *emb_act;        /* silu(emb), shared by every ResNet's time projection */
  cd_node *ctx;
} unet_ctx;

static cd_node *resnet(unet_ctx *u, cd_node *x, int64_t cout, const char *p) {
  return cd_blk_resnet(&u->b, x, u->emb_act, cout, u->c->norm_eps, p);
}

/* depth BasicTransformerBlocks per Transformer2DModel (SD 1.x/2.x: 1; SDXL 1/2/10, mid 10) */
static cd_node *transformer2d(unet_ctx *u, cd_node *x, int heads, int depth, const char *p) {
  return cd_blk_transformer2d(&u->b, x, u->ctx, heads, depth, u->c->linear_proj, &u->attn2, p);
}

int cd_unet_depth(const cd_unet_config *c, int level) {
  return level >= 0 && level < CD_UNET_MAX_LEVELS && c->depth[level] > 0 ? c->depth[level] : 1;
}

int cd_unet_mid_depth(const cd_unet_config *c) { return c->mid_depth > 0 ? c->mid_depth : 1; }

int cd_unet_add_in_dim(const cd_unet_config *c) {
  return c->add_time_dim > 0 ? c->add_text_dim + c->add_time_ids * c->add_time_dim : 0;
}

/* SDXL's text_time embedding: add_embedding(concat[text_embeds, add_time_proj(time_ids)]), [B, tdim].
 * The time ids are embedded as timesteps are (same flip and shift), each add_time_dim wide,
 * in their order, so the concat is [pooled | id0 | id1 | ...] (diffusers' get_aug_embed). */
static cd_node *add_embedding(unet_ctx *u, const cd_unet_added *a, int64_t B, int64_t tdim) {
  cd_graph *g = u->b.g;
  const cd_unet_config *c = u->c;
  const int64_t n = c->add_time_ids, D = c->add_time_dim, in = cd_unet_add_in_dim(c);
  if (!a || !a->text_embeds || !a->time_ids)
    return cd_graph_fail(g, "unet: this model has added conditioning (addition_embed_type text_time, SDXL): "
                            "text_embeds and time_ids are required");
  if (a->text_embeds->ndim != 2 || a->text_embeds->ne[0] != B || a->text_embeds->ne[1] != c->add_text_dim)
    return cd_graph_fail(g, "unet: text_embeds must be [%ld, %d]", (long)B, c->add_text_dim);
  if (a->time_ids->ndim != 2 || a->time_ids->ne[0] != B || a->time_ids->ne[1] != n)
    return cd_graph_fail(g, "unet: time_ids must be [%ld, %ld]", (long)B, (long)n);
  cd_node *te = cd_timestep_embed(g, cd_view(g, a->time_ids, 1, (int64_t[]){B * n}), (int)D, c->flip_sin_to_cos,
                                  c->freq_shift);
  te = cd_view(g, te, 2, (int64_t[]){B, n * D});
  cd_node_set_name(te, "add_time_proj");
  cd_node *h = cd_concat(g, a->text_embeds, te, 1);
  if (h->ne[1] != in) return cd_graph_fail(g, "unet: added conditioning width %ld, expected %ld", (long)h->ne[1], (long)in);
  h = cd_blk_linear(&u->b, h, tdim, "add_embedding.linear_1");
  h = cd_blk_linear(&u->b, cd_silu(g, h), tdim, "add_embedding.linear_2");
  cd_node_set_name(h, "add_embedding");
  return h;
}

static void unet_ctx_init(unet_ctx *u, cd_graph *g, cd_unet *m, const cd_unet_mode *mode, cd_node *ctx) {
  *u = (unet_ctx){{g, m->w, m->cfg.norm_groups}, &m->cfg, {0}, NULL, ctx};
  if (mode && mode->train) { /* Custom Diffusion trains attn2's k/v (and q/out); the start token's k/v rows stay fixed */
    u->attn2.train_kv = mode->train >= CD_TRAIN_KV;
    u->attn2.train_qo = mode->train >= CD_TRAIN_CROSSATTN;
    u->attn2.detach_rows = mode->detach_rows;
  }
}

cd_node *cd_unet_transformer(cd_graph *g, cd_unet *m, const cd_unet_mode *mode, cd_node *x, cd_node *ctx, int heads,
                             int depth, const char *prefix) {
  unet_ctx u;
  unet_ctx_init(&u, g, m, mode, ctx);
  if (depth < 1) return cd_graph_fail(g, "unet: transformer depth %d", depth);
  return transformer2d(&u, x, heads, depth, prefix);
}

cd_node *cd_unet_add_embedding(cd_graph *g, cd_unet *m, const cd_unet_added *added, int64_t B) {
  unet_ctx u;
  unet_ctx_init(&u, g, m, NULL, NULL);
  if (m->cfg.add_time_dim <= 0) return cd_graph_fail(g, "unet: the model has no added conditioning");
  return add_embedding(&u, added, B, 4 * (int64_t)m->cfg.block_out[0]);
}

cd_node *cd_unet_build(cd_graph *g, cd_unet *m, const cd_unet_mode *mode, cd_node *x, cd_node *t, cd_node *ctx) {
  return cd_unet_build_cond(g, m, mode, x, t, ctx, NULL);
}

cd_node *cd_unet_build_cond(cd_graph *g, cd_unet *m, const cd_unet_mode *mode, cd_node *x, cd_node *t, cd_node *ctx,
                            const cd_unet_added *added) {
  const cd_unet_config *c = &m->cfg;
  cd_weights *w = m->w;
  unet_ctx u;
  unet_ctx_init(&u, g, m, mode, ctx);
  const int L = c->nlevels, C0 = c->block_out[0];
  char p[128];
  if (L < 1 || L > CD_UNET_MAX_LEVELS) return cd_graph_fail(g, "unet: %d levels", L);
  if (x->ndim != 4 || x->ne[1] != c->in_channels) return cd_graph_fail(g, "unet: input must be [B,%d,h,w]", c->in_channels);
  if (ctx->ndim != 3 || ctx->ne[2] != c->context_dim)
    return cd_graph_fail(g, "unet: context width %ld, model expects %d", (long)ctx->ne[2], c->context_dim);

  /* time embedding */
  cd_node *tp = cd_timestep_embed(g, t, C0, c->flip_sin_to_cos, c->freq_shift);
  cd_node_set_name(tp, "time_proj");
  cd_node *emb = cd_linear(g, tp, cd_w(g, w, CD_SHAPE(4 * C0, C0), "time_embedding.linear_1.weight"),
                           cd_w(g, w, CD_SHAPE(4 * C0), "time_embedding.linear_1.bias"));
  emb = cd_linear(g, cd_silu(g, emb), cd_w(g, w, CD_SHAPE(4 * C0, 4 * C0), "time_embedding.linear_2.weight"),
                  cd_w(g, w, CD_SHAPE(4 * C0), "time_embedding.linear_2.bias"));
  cd_node_set_name(emb, "time_embedding");
  if (c->add_time_dim > 0) emb = cd_add(g, emb, add_embedding(&u, added, x->ne[0], 4 * C0));
  else if (added && (added->text_embeds || added->time_ids))
    return cd_graph_fail(g, "unet: text_embeds/time_ids given, but this model has no added conditioning");
  u.emb_act = cd_silu(g, emb);

  cd_node *h = cd_conv2d(g, x, cd_w(g, w, CD_SHAPE(C0, c->in_channels, 3, 3), "conv_in.weight"),
                         cd_w(g, w, CD_SHAPE(C0), "conv_in.bias"), 1, 1);
  cd_node_set_name(h, "conv_in");
  cd_node *skips[64];
  int ns = 0;
  skips[ns++] = h;

  for (int i = 0; i < L; i++) {
    for (int j = 0; j < c->layers_per_block; j++) {
      snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
      h = resnet(&u, h, c->block_out[i], p);
      if (c->down_attn[i]) {
        snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
        h = transformer2d(&u, h, c->heads[i], cd_unet_depth(c, i), p);
      }
      if (ns < 64) skips[ns++] = h;
    }
    if (i < L - 1) {
      int64_t C = h->ne[1];
      h = cd_conv2d(g, h, cd_w(g, w, CD_SHAPE(C, C, 3, 3), "down_blocks.%d.downsamplers.0.conv.weight", i),
                    cd_w(g, w, CD_SHAPE(C), "down_blocks.%d.downsamplers.0.conv.bias", i), 2, 1);
      if (ns < 64) skips[ns++] = h;
    }
    cd_node_set_name(h, "down_blocks.%d", i);
  }

  h = resnet(&u, h, c->block_out[L - 1], "mid_block.resnets.0");
  if (c->mid_attn) h = transformer2d(&u, h, c->heads[L - 1], cd_unet_mid_depth(c), "mid_block.attentions.0");
  h = resnet(&u, h, c->block_out[L - 1], "mid_block.resnets.1");
  cd_node_set_name(h, "mid_block");

  for (int i = 0; i < L; i++) {
    int lvl = L - 1 - i; /* matching down level */
    for (int j = 0; j <= c->layers_per_block; j++) {
      if (ns == 0) return cd_graph_fail(g, "unet: skip connections exhausted");
      h = cd_concat(g, h, skips[--ns], 1);
      snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
      h = resnet(&u, h, c->block_out[lvl], p);
      if (c->up_attn[i]) {
        snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
        h = transformer2d(&u, h, c->heads[lvl], cd_unet_depth(c, lvl), p);
      }
    }
    if (i < L - 1) {
      /* sized to the next skip connection, as diffusers' upsample_size: a
       * stride-2 downsampling of an odd size rounded up */
      int64_t C = h->ne[1];
      if (ns == 0) return cd_graph_fail(g, "unet: skip connections exhausted");
      h = cd_conv2d(g, cd_upsample2x_to(g, h, skips[ns - 1]->ne[2], skips[ns - 1]->ne[3]), cd_w(g, w, CD_SHAPE(C, C, 3, 3), "up_blocks.%d.upsamplers.0.conv.weight", i),
                    cd_w(g, w, CD_SHAPE(C), "up_blocks.%d.upsamplers.0.conv.bias", i), 1, 1);
    }
    cd_node_set_name(h, "up_blocks.%d", i);
  }

  h = cd_group_norm(g, h, cd_w(g, w, CD_SHAPE(C0), "conv_norm_out.weight"), cd_w(g, w, CD_SHAPE(C0), "conv_norm_out.bias"),
                    c->norm_groups, c->norm_eps);
  cd_node_set_name(h, "conv_norm_out");
  h = cd_conv2d(g, cd_silu(g, h), cd_w(g, w, CD_SHAPE(c->out_channels, C0, 3, 3), "conv_out.weight"),
                cd_w(g, w, CD_SHAPE(c->out_channels), "conv_out.bias"), 1, 1);
  cd_node_set_name(h, "unet.out");
  return h;
}

int cd_unet_attn2_layers(const cd_unet_config *c, char names[][96], int cap) {
  int n = 0;
  for (int i = 0; i < c->nlevels; i++)
    for (int j = 0; j < c->layers_per_block && c->down_attn[i]; j++)
      for (int d = 0; d < cd_unet_depth(c, i); d++)
        if (n < cap) snprintf(names[n++], 96, "down_blocks.%d.attentions.%d.transformer_blocks.%d.attn2", i, j, d);
  for (int d = 0; c->mid_attn && d < cd_unet_mid_depth(c); d++)
    if (n < cap) snprintf(names[n++], 96, "mid_block.attentions.0.transformer_blocks.%d.attn2", d);
  for (int i = 0; i < c->nlevels; i++)
    for (int j = 0; j <= c->layers_per_block && c->up_attn[i]; j++)
      for (int d = 0; d < cd_unet_depth(c, c->nlevels - 1 - i); d++)
        if (n < cap) snprintf(names[n++], 96, "up_blocks.%d.attentions.%d.transformer_blocks.%d.attn2", i, j, d);
  return n;
}
