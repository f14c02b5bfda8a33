/* blocks.h - the building blocks the UNet and the VAE share, one place per piece of math.
 *
 * Every builder takes the prefix of its module's weights (diffusers module
 * paths, e.g. "down_blocks.0.resnets.1") and asks for "<prefix>.<key>" by the
 * checkpoint's own key names, so a missing or mis-shaped weight is reported
 * by its key (cd_w). Shapes: images are NCHW [B, C, H, W], token sequences
 * [B, N, C].
 *
 *   ResnetBlock2D        cd_blk_resnet            (time embedding in the UNet only)
 *   Attention            cd_blk_attention         (self or cross, any heads)
 *   VAE mid attention    cd_blk_spatial_attention (GroupNorm + single-head self-attention, residual)
 *   BasicTransformerBlock cd_blk_transformer_block
 *   Transformer2DModel   cd_blk_transformer2d     (depth blocks: SD 1/2 use 1, SDXL up to 10)
 */
#ifndef CD_BLOCKS_H
#define CD_BLOCKS_H

#include "engine/graph.h"
#include "models/weights.h"

/* What every builder needs: the graph, the weights, and the GroupNorm groups (32 in SD). */
typedef struct {
  cd_graph *g;
  cd_weights *w;
  int norm_groups;
} cd_blk;

/* How one attention layer trains (all zero: frozen, inference). */
typedef struct {
  int train_kv;    /* to_k, to_v trainable (Custom Diffusion) */
  int train_qo;    /* to_q, to_out.0 trainable as well */
  int detach_rows; /* when training: rows of k and v (the context's first tokens) without gradient */
} cd_blk_attn_train;

/* GroupNorm "<p>.<n>.{weight,bias}" over x [B, C, H, W] (or [B, C, ...]). */
cd_node *cd_blk_group_norm(const cd_blk *b, cd_node *x, float eps, const char *p, const char *n);
/* LayerNorm "<p>.<n>.{weight,bias}" over the last dimension, eps 1e-5 (the transformers'). */
cd_node *cd_blk_layer_norm(const cd_blk *b, cd_node *x, const char *p, const char *n);
/* Conv "<p>.{weight [cout, cin, k, k], bias [cout]}" of x [B, cin, H, W]. */
cd_node *cd_blk_conv(const cd_blk *b, cd_node *x, int64_t cout, int k, int stride, int pad, const char *p);
/* Linear "<p>.{weight [cout, cin], bias [cout]}" of x [..., cin]. */
cd_node *cd_blk_linear(const cd_blk *b, cd_node *x, int64_t cout, const char *p);

/* [B, C, H, W] -> [B, HW, C] and back (to_image: the H and W to restore). */
cd_node *cd_blk_to_tokens(cd_graph *g, cd_node *x);
cd_node *cd_blk_to_image(cd_graph *g, cd_node *x, int64_t H, int64_t W);

/* ResnetBlock2D "<p>": x [B, cin, H, W] -> [B, cout, H, W]
 *   h = conv1(silu(norm1(x)))                       3x3, [cout, cin, 3, 3]
 *   h += time_emb_proj(temb_act)[:, :, None, None]  only when temb_act [B, tdim] is given (UNet)
 *   h = conv2(silu(norm2(h)))                       3x3, [cout, cout, 3, 3]
 *   out = shortcut(x) + h                           conv_shortcut 1x1 when cin != cout
 * temb_act is silu(time embedding), computed once per graph by the caller. */
cd_node *cd_blk_resnet(const cd_blk *b, cd_node *x, cd_node *temb_act, int64_t cout, float eps, const char *p);

/* Attention "<p>" (diffusers' Attention): x [B, N, C], ctx [B, M, Cc] (ctx = x: self-attention)
 *   q = to_q(x) [C, C], k = to_k(ctx) [C, Cc], v = to_v(ctx) [C, Cc]  (biases only when qkv_bias)
 *   out = to_out.0(softmax(q k^T / sqrt(C / heads)) v)  [C, C] + bias      -> [B, N, C]
 * train: NULL or how the layer trains (cross-attention in Custom Diffusion). */
cd_node *cd_blk_attention(const cd_blk *b, cd_node *x, cd_node *ctx, int heads, int qkv_bias, const cd_blk_attn_train *train,
                          const char *p);

/* The VAE's mid-block attention "<p>": x [B, C, H, W] ->
 *   x + to_image(attention(to_tokens(group_norm(x))))  one head, q/k/v with biases */
cd_node *cd_blk_spatial_attention(const cd_blk *b, cd_node *x, float eps, const char *p);

/* BasicTransformerBlock "<p>": x [B, N, C], ctx [B, M, Cc] ->
 *   x += attn1(norm1(x))            self-attention
 *   x += attn2(norm2(x), ctx)       cross-attention (trains as attn2_train says)
 *   x += ff.net.2(geglu(ff.net.0.proj(norm3(x))))   [8C, C] then [C, 4C] */
cd_node *cd_blk_transformer_block(const cd_blk *b, cd_node *x, cd_node *ctx, int heads, const cd_blk_attn_train *attn2_train,
                                  const char *p);

/* Transformer2DModel "<p>": x [B, C, H, W], ctx [B, M, Cc] -> [B, C, H, W]
 *   h = norm(x)  (GroupNorm eps 1e-6)
 *   h = proj_in(h): 1x1 conv in NCHW, or (linear_proj, SD2/SDXL) a linear on [B, HW, C]
 *   h = transformer_blocks.0 .. transformer_blocks.<depth-1>(h, ctx)
 *   out = proj_out(h) (as proj_in) + x */
cd_node *cd_blk_transformer2d(const cd_blk *b, cd_node *x, cd_node *ctx, int heads, int depth, int linear_proj,
                              const cd_blk_attn_train *attn2_train, const char *p);

#endif
