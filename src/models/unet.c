/* unet.c - UNet2DConditionModel forward graph (see unet.h for the layout).
 *
 *   emb  = linear_2(silu(linear_1(timestep_embed(t))))          [B, 4*C0]
 *   h    = conv_in(x); skips = [h]
 *   down: per level, layers x (ResNet [+ Transformer2D]) then a stride-2 conv
 *   mid:  ResNet, Transformer2D, ResNet
 *   up:   per level, layers+1 x (ResNet(concat[h, skips.pop()]) [+ Transformer2D])
 *         then nearest 2x (to the next skip's size: any latent size works) + conv
 *   out  = conv_out(silu(GN(h)))
 */
#include "unet.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
  cd_graph *g;
  cd_unet *m;
  cd_unet_mode mode; /* inference: all zero */
  cd_node *emb_act; /* silu(emb), shared by every ResNet's time projection */
  cd_node *ctx;
} unet_ctx;

/* ResNet block: GN -> SiLU -> conv1 -> + proj(silu(emb)) -> GN -> SiLU -> conv2, + shortcut(x) */
static cd_node *resnet(unet_ctx *u, cd_node *x, int64_t cout, const char *p) {
  cd_graph *g = u->g;
  cd_weights *w = u->m->w;
  const cd_unet_config *c = &u->m->cfg;
  int64_t cin = x->ne[1], B = x->ne[0], tdim = u->emb_act->ne[1];
  cd_node *h = cd_group_norm(g, x, cd_w(g, w, CD_SHAPE(cin), "%s.norm1.weight", p),
                             cd_w(g, w, CD_SHAPE(cin), "%s.norm1.bias", p), c->norm_groups, c->norm_eps);
  h = cd_conv2d(g, cd_silu(g, h), cd_w(g, w, CD_SHAPE(cout, cin, 3, 3), "%s.conv1.weight", p),
                cd_w(g, w, CD_SHAPE(cout), "%s.conv1.bias", p), 1, 1);
  cd_node *t = cd_linear(g, u->emb_act, cd_w(g, w, CD_SHAPE(cout, tdim), "%s.time_emb_proj.weight", p),
                         cd_w(g, w, CD_SHAPE(cout), "%s.time_emb_proj.bias", p));
  h = cd_add(g, h, cd_view(g, t, 4, (int64_t[]){B, cout, 1, 1}));
  h = cd_group_norm(g, h, cd_w(g, w, CD_SHAPE(cout), "%s.norm2.weight", p),
                    cd_w(g, w, CD_SHAPE(cout), "%s.norm2.bias", p), c->norm_groups, c->norm_eps);
  h = cd_conv2d(g, cd_silu(g, h), cd_w(g, w, CD_SHAPE(cout, cout, 3, 3), "%s.conv2.weight", p),
                cd_w(g, w, CD_SHAPE(cout), "%s.conv2.bias", p), 1, 1);
  cd_node *skip = x;
  if (cin != cout)
    skip = cd_conv2d(g, x, cd_w(g, w, CD_SHAPE(cout, cin, 1, 1), "%s.conv_shortcut.weight", p),
                     cd_w(g, w, CD_SHAPE(cout), "%s.conv_shortcut.bias", p), 1, 0);
  return cd_add(g, skip, h);
}

/* Attention of diffusers' Attention module: q/k/v without bias, to_out.0 with bias.
 * attn2 (cross-attention) reads k/v from the text context; when training Custom
 * Diffusion, its weights train and the start token's k/v rows are detached. */
static cd_node *attention(unet_ctx *u, cd_node *x, cd_node *ctx, int heads, const char *p, int cross) {
  cd_graph *g = u->g;
  cd_weights *w = u->m->w;
  int64_t C = x->ne[2], Cc = ctx->ne[2];
  cd_node *wq = cd_w(g, w, CD_SHAPE(C, C), "%s.to_q.weight", p);
  cd_node *wk = cd_w(g, w, CD_SHAPE(C, Cc), "%s.to_k.weight", p);
  cd_node *wv = cd_w(g, w, CD_SHAPE(C, Cc), "%s.to_v.weight", p);
  cd_node *wo = cd_w(g, w, CD_SHAPE(C, C), "%s.to_out.0.weight", p);
  cd_node *bo = cd_w(g, w, CD_SHAPE(C), "%s.to_out.0.bias", p);
  int train = cross ? u->mode.train : CD_TRAIN_NONE;
  if (train >= CD_TRAIN_KV) {
    cd_set_trainable(wk);
    cd_set_trainable(wv);
  }
  if (train >= CD_TRAIN_CROSSATTN) {
    cd_set_trainable(wq);
    cd_set_trainable(wo);
    cd_set_trainable(bo);
  }
  cd_node *q = cd_linear(g, x, wq, NULL);
  cd_node *k = cd_linear(g, ctx, wk, NULL);
  cd_node *v = cd_linear(g, ctx, wv, NULL);
  if (train && u->mode.detach_rows > 0) {
    k = cd_detach_rows(g, k, u->mode.detach_rows);
    v = cd_detach_rows(g, v, u->mode.detach_rows);
  }
  cd_node *a = cd_attention(g, q, k, v, heads, 0, 1.0f / sqrtf((float)(C / heads)));
  return cd_linear(g, a, wo, bo);
}

static cd_node *layer_norm(unet_ctx *u, cd_node *x, const char *p, const char *n) {
  int64_t C = x->ne[x->ndim - 1];
  return cd_layer_norm(u->g, x, cd_w(u->g, u->m->w, CD_SHAPE(C), "%s.%s.weight", p, n),
                       cd_w(u->g, u->m->w, CD_SHAPE(C), "%s.%s.bias", p, n), 1e-5f);
}

/* BasicTransformerBlock on [B, HW, C]: self-attention, cross-attention, GEGLU feed-forward */
static cd_node *transformer_block(unet_ctx *u, cd_node *x, int heads, const char *p) {
  cd_graph *g = u->g;
  cd_weights *w = u->m->w;
  int64_t C = x->ne[2];
  char q[160];
  snprintf(q, sizeof q, "%.150s.attn1", p);
  cd_node *h = layer_norm(u, x, p, "norm1");
  x = cd_add(g, x, attention(u, h, h, heads, q, 0));
  snprintf(q, sizeof q, "%.150s.attn2", p);
  x = cd_add(g, x, attention(u, layer_norm(u, x, p, "norm2"), u->ctx, heads, q, 1));
  h = layer_norm(u, x, p, "norm3");
  h = cd_linear(g, h, cd_w(g, w, CD_SHAPE(8 * C, C), "%s.ff.net.0.proj.weight", p),
                cd_w(g, w, CD_SHAPE(8 * C), "%s.ff.net.0.proj.bias", p));
  h = cd_geglu(g, h);
  h = cd_linear(g, h, cd_w(g, w, CD_SHAPE(C, 4 * C), "%s.ff.net.2.weight", p),
                cd_w(g, w, CD_SHAPE(C), "%s.ff.net.2.bias", p));
  return cd_add(g, x, h);
}

/* Transformer2DModel: GN(eps 1e-6) -> proj_in -> [B,HW,C] -> block -> proj_out -> + x.
 * SD1 projects with 1x1 convs in NCHW; SD2 (linear_proj) with linears on [B,HW,C]. */
static cd_node *transformer2d(unet_ctx *u, cd_node *x, int heads, const char *p) {
  cd_graph *g = u->g;
  cd_weights *w = u->m->w;
  const cd_unet_config *c = &u->m->cfg;
  int64_t B = x->ne[0], C = x->ne[1], H = x->ne[2], W = x->ne[3];
  cd_node *h = cd_group_norm(g, x, cd_w(g, w, CD_SHAPE(C), "%s.norm.weight", p),
                             cd_w(g, w, CD_SHAPE(C), "%s.norm.bias", p), c->norm_groups, 1e-6f);
  if (!c->linear_proj)
    h = cd_conv2d(g, h, cd_w(g, w, CD_SHAPE(C, C, 1, 1), "%s.proj_in.weight", p),
                  cd_w(g, w, CD_SHAPE(C), "%s.proj_in.bias", p), 1, 0);
  h = cd_permute(g, cd_view(g, h, 3, (int64_t[]){B, C, H * W}), 0, 2, 1, 3); /* [B, HW, C] */
  if (c->linear_proj)
    h = cd_linear(g, h, cd_w(g, w, CD_SHAPE(C, C), "%s.proj_in.weight", p), cd_w(g, w, CD_SHAPE(C), "%s.proj_in.bias", p));
  char q[160];
  snprintf(q, sizeof q, "%.130s.transformer_blocks.0", p);
  h = transformer_block(u, h, heads, q);
  if (c->linear_proj)
    h = cd_linear(g, h, cd_w(g, w, CD_SHAPE(C, C), "%s.proj_out.weight", p), cd_w(g, w, CD_SHAPE(C), "%s.proj_out.bias", p));
  h = cd_view(g, cd_permute(g, h, 0, 2, 1, 3), 4, (int64_t[]){B, C, H, W});
  if (!c->linear_proj)
    h = cd_conv2d(g, h, cd_w(g, w, CD_SHAPE(C, C, 1, 1), "%s.proj_out.weight", p),
                  cd_w(g, w, CD_SHAPE(C), "%s.proj_out.bias", p), 1, 0);
  return cd_add(g, h, x);
}

cd_node *cd_unet_build(cd_graph *g, cd_unet *m, const cd_unet_mode *mode, cd_node *x, cd_node *t, cd_node *ctx) {
  const cd_unet_config *c = &m->cfg;
  cd_weights *w = m->w;
  unet_ctx u = {g, m, {0}, NULL, ctx};
  if (mode) u.mode = *mode;
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
        h = transformer2d(&u, h, c->heads[i], p);
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
  if (c->mid_attn) h = transformer2d(&u, h, c->heads[L - 1], "mid_block.attentions.0");
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
        h = transformer2d(&u, h, c->heads[lvl], p);
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
      if (n < cap) snprintf(names[n++], 96, "down_blocks.%d.attentions.%d.transformer_blocks.0.attn2", i, j);
  if (c->mid_attn && n < cap) snprintf(names[n++], 96, "mid_block.attentions.0.transformer_blocks.0.attn2");
  for (int i = 0; i < c->nlevels; i++)
    for (int j = 0; j <= c->layers_per_block && c->up_attn[i]; j++)
      if (n < cap) snprintf(names[n++], 96, "up_blocks.%d.attentions.%d.transformer_blocks.0.attn2", i, j);
  return n;
}
