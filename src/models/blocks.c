/* blocks.c - ResNet, attention and transformer blocks shared by the UNet and the VAE (see blocks.h). */
#include "blocks.h"

#include <math.h>
#include <stdio.h>

/* "<p>.<n>" into q; prefixes are module paths, far shorter than the buffers */
#define SUB(q, p, n) (snprintf(q, sizeof q, "%s.%s", p, n), q)

cd_node *cd_blk_group_norm(const cd_blk *b, cd_node *x, float eps, const char *p, const char *n) {
  int64_t C = x->ne[1];
  return cd_group_norm(b->g, x, cd_w(b->g, b->w, CD_SHAPE(C), "%s.%s.weight", p, n), cd_w(b->g, b->w, CD_SHAPE(C), "%s.%s.bias", p, n),
                       b->norm_groups, eps);
}

cd_node *cd_blk_layer_norm(const cd_blk *b, cd_node *x, const char *p, const char *n) {
  int64_t C = x->ne[x->ndim - 1];
  return cd_layer_norm(b->g, x, cd_w(b->g, b->w, CD_SHAPE(C), "%s.%s.weight", p, n), cd_w(b->g, b->w, CD_SHAPE(C), "%s.%s.bias", p, n),
                       1e-5f);
}

cd_node *cd_blk_conv(const cd_blk *b, cd_node *x, int64_t cout, int k, int stride, int pad, const char *p) {
  int64_t cin = x->ne[1];
  return cd_conv2d(b->g, x, cd_w(b->g, b->w, CD_SHAPE(cout, cin, k, k), "%s.weight", p), cd_w(b->g, b->w, CD_SHAPE(cout), "%s.bias", p),
                   stride, pad);
}

cd_node *cd_blk_linear(const cd_blk *b, cd_node *x, int64_t cout, const char *p) {
  int64_t cin = x->ne[x->ndim - 1];
  return cd_linear(b->g, x, cd_w(b->g, b->w, CD_SHAPE(cout, cin), "%s.weight", p), cd_w(b->g, b->w, CD_SHAPE(cout), "%s.bias", p));
}

cd_node *cd_blk_to_tokens(cd_graph *g, cd_node *x) {
  int64_t B = x->ne[0], C = x->ne[1], HW = x->ne[2] * x->ne[3];
  return cd_permute(g, cd_view(g, x, 3, (int64_t[]){B, C, HW}), 0, 2, 1, 3);
}

cd_node *cd_blk_to_image(cd_graph *g, cd_node *x, int64_t H, int64_t W) {
  int64_t B = x->ne[0], C = x->ne[2];
  return cd_view(g, cd_permute(g, x, 0, 2, 1, 3), 4, (int64_t[]){B, C, H, W});
}

cd_node *cd_blk_resnet(const cd_blk *b, cd_node *x, cd_node *temb_act, int64_t cout, float eps, const char *p) {
  cd_graph *g = b->g;
  char q[256];
  int64_t B = x->ne[0];
  cd_graph_checkpoint_begin(g); /* one checkpoint segment (graph.h): kept is its input */
  cd_node *h = cd_silu(g, cd_blk_group_norm(b, x, eps, p, "norm1"));
  h = cd_blk_conv(b, h, cout, 3, 1, 1, SUB(q, p, "conv1"));
  if (temb_act) /* the time embedding enters as a per-channel shift: [B, cout] -> [B, cout, 1, 1] */
    h = cd_add(g, h, cd_view(g, cd_blk_linear(b, temb_act, cout, SUB(q, p, "time_emb_proj")), 4, (int64_t[]){B, cout, 1, 1}));
  h = cd_silu(g, cd_blk_group_norm(b, h, eps, p, "norm2"));
  h = cd_blk_conv(b, h, cout, 3, 1, 1, SUB(q, p, "conv2"));
  cd_node *skip = x;
  if (x->ne[1] != cout) skip = cd_blk_conv(b, x, cout, 1, 1, 0, SUB(q, p, "conv_shortcut"));
  h = cd_add(g, skip, h);
  cd_graph_checkpoint_end(g);
  return h;
}

cd_node *cd_blk_attention(const cd_blk *b, cd_node *x, cd_node *ctx, int heads, int qkv_bias, const cd_blk_attn_train *train,
                          const char *p) {
  cd_graph *g = b->g;
  cd_weights *w = b->w;
  int64_t C = x->ne[2], Cc = ctx->ne[2];
  cd_node *wq = cd_w(g, w, CD_SHAPE(C, C), "%s.to_q.weight", p);
  cd_node *wk = cd_w(g, w, CD_SHAPE(C, Cc), "%s.to_k.weight", p);
  cd_node *wv = cd_w(g, w, CD_SHAPE(C, Cc), "%s.to_v.weight", p);
  cd_node *bq = NULL, *bk = NULL, *bv = NULL;
  if (qkv_bias) {
    bq = cd_w(g, w, CD_SHAPE(C), "%s.to_q.bias", p);
    bk = cd_w(g, w, CD_SHAPE(C), "%s.to_k.bias", p);
    bv = cd_w(g, w, CD_SHAPE(C), "%s.to_v.bias", p);
  }
  cd_node *wo = cd_w(g, w, CD_SHAPE(C, C), "%s.to_out.0.weight", p);
  cd_node *bo = cd_w(g, w, CD_SHAPE(C), "%s.to_out.0.bias", p);
  const cd_blk_attn_train none = {0};
  if (!train) train = &none;
  if (train->train_kv) {
    cd_set_trainable(wk);
    cd_set_trainable(wv);
  }
  if (train->train_qo) {
    cd_set_trainable(wq);
    cd_set_trainable(wo);
    cd_set_trainable(bo);
  }
  cd_node *qn = cd_linear(g, x, wq, bq);
  cd_node *kn = cd_linear(g, ctx, wk, bk);
  cd_node *vn = cd_linear(g, ctx, wv, bv);
  if ((train->train_kv || train->train_qo) && train->detach_rows > 0) {
    kn = cd_detach_rows(g, kn, train->detach_rows);
    vn = cd_detach_rows(g, vn, train->detach_rows);
  }
  cd_node *a = cd_attention(g, qn, kn, vn, heads, 0, 1.0f / sqrtf((float)(C / heads)));
  return cd_linear(g, a, wo, bo);
}

cd_node *cd_blk_spatial_attention(const cd_blk *b, cd_node *x, float eps, const char *p) {
  cd_node *h = cd_blk_to_tokens(b->g, cd_blk_group_norm(b, x, eps, p, "group_norm")); /* [B, HW, C] */
  h = cd_blk_attention(b, h, h, 1, 1, NULL, p);
  return cd_add(b->g, cd_blk_to_image(b->g, h, x->ne[2], x->ne[3]), x);
}

cd_node *cd_blk_transformer_block(const cd_blk *b, cd_node *x, cd_node *ctx, int heads, const cd_blk_attn_train *attn2_train,
                                  const char *p) {
  cd_graph *g = b->g;
  int64_t C = x->ne[2];
  char q[256];
  cd_graph_checkpoint_begin(g); /* one checkpoint segment (graph.h) */
  cd_node *h = cd_blk_layer_norm(b, x, p, "norm1");
  x = cd_add(g, x, cd_blk_attention(b, h, h, heads, 0, NULL, SUB(q, p, "attn1")));
  x = cd_add(g, x, cd_blk_attention(b, cd_blk_layer_norm(b, x, p, "norm2"), ctx, heads, 0, attn2_train, SUB(q, p, "attn2")));
  h = cd_blk_layer_norm(b, x, p, "norm3");
  h = cd_geglu(g, cd_blk_linear(b, h, 8 * C, SUB(q, p, "ff.net.0.proj"))); /* [B, N, 8C] -> [B, N, 4C] */
  h = cd_blk_linear(b, h, C, SUB(q, p, "ff.net.2"));
  h = cd_add(g, x, h);
  cd_graph_checkpoint_end(g);
  return h;
}

cd_node *cd_blk_transformer2d(const cd_blk *b, cd_node *x, cd_node *ctx, int heads, int depth, int linear_proj,
                              const cd_blk_attn_train *attn2_train, const char *p) {
  cd_graph *g = b->g;
  int64_t C = x->ne[1], H = x->ne[2], W = x->ne[3];
  char q[256];
  cd_node *h = cd_blk_group_norm(b, x, 1e-6f, p, "norm");
  if (!linear_proj) h = cd_blk_conv(b, h, C, 1, 1, 0, SUB(q, p, "proj_in"));
  h = cd_blk_to_tokens(g, h); /* [B, HW, C] */
  if (linear_proj) h = cd_blk_linear(b, h, C, SUB(q, p, "proj_in"));
  for (int d = 0; d < depth; d++) {
    snprintf(q, sizeof q, "%s.transformer_blocks.%d", p, d);
    h = cd_blk_transformer_block(b, h, ctx, heads, attn2_train, q);
  }
  if (linear_proj) h = cd_blk_linear(b, h, C, SUB(q, p, "proj_out"));
  h = cd_blk_to_image(g, h, H, W);
  if (!linear_proj) h = cd_blk_conv(b, h, C, 1, 1, 0, SUB(q, p, "proj_out"));
  return cd_add(g, h, x);
}
