/* unet.h - UNet2DConditionModel as Stable Diffusion 1.x/2.x use it.
 *
 * Weight names are diffusers' (conv_in, time_embedding.linear_{1,2},
 * down_blocks.i.{resnets.j,attentions.j,downsamplers.0.conv}, mid_block.*,
 * up_blocks.i.{resnets.j,attentions.j,upsamplers.0.conv}, conv_norm_out,
 * conv_out). The original (LDM) layout is mapped to these by the loader.
 *
 * Down level i has layers_per_block ResNets (each followed by a
 * Transformer2DModel when the level has cross-attention) and a stride-2
 * downsampler except at the last level. The mid block is ResNet, transformer,
 * ResNet. Up level i (i = 0 is the lowest resolution) has layers_per_block+1
 * ResNets fed with concat([h, skip]) and an upsampler except at the last.
 */
#ifndef CD_UNET_H
#define CD_UNET_H

#include "engine/graph.h"
#include "models/weights.h"

#define CD_UNET_MAX_LEVELS 6

typedef struct {
  int in_channels, out_channels;
  int nlevels;
  int block_out[CD_UNET_MAX_LEVELS];
  int down_attn[CD_UNET_MAX_LEVELS]; /* 1 if down level i is CrossAttnDownBlock2D */
  int up_attn[CD_UNET_MAX_LEVELS];   /* 1 if up level i (0 = lowest res) is CrossAttnUpBlock2D */
  int heads[CD_UNET_MAX_LEVELS];     /* heads per down level (mid uses the last, up reversed) */
  int layers_per_block;
  int context_dim;
  int linear_proj;   /* use_linear_projection (SD2) */
  int norm_groups;
  float norm_eps;    /* ResNet GroupNorm eps; transformer GroupNorm uses 1e-6 */
  int flip_sin_to_cos;
  float freq_shift;
  int mid_attn;      /* mid block has a transformer (UNetMidBlock2DCrossAttn) */
  int sample_size;   /* latent size the model was trained at (64: 512 px; 96: 768 px); default resolution */
} cd_unet_config;

/* What a training graph needs from the UNet builder. */
enum { CD_TRAIN_NONE = 0, CD_TRAIN_KV = 1, CD_TRAIN_CROSSATTN = 2 };

typedef struct {
  cd_unet_config cfg;
  cd_weights *w;
} cd_unet;

/* How one graph uses the UNet; NULL = inference. */
typedef struct {
  int train;          /* CD_TRAIN_*: marks attn2 weights trainable and detaches the start token's k/v */
  int detach_rows;    /* rows of k/v detached in attn2 when training (1: the start token) */
} cd_unet_mode;

/* x [B, in, h, w], t [B] (float timesteps), ctx [B, T, context_dim] -> [B, out, h, w].
 * Intermediate results are named for tests: "time_proj", "time_embedding", "conv_in",
 * "down_blocks.i", "mid_block", "up_blocks.i", "conv_norm_out". */
cd_node *cd_unet_build(cd_graph *g, cd_unet *m, const cd_unet_mode *mode, cd_node *x, cd_node *t, cd_node *ctx);

/* Names of the cross-attention layers in diffusers order (down, mid, up):
 * "down_blocks.0.attentions.0.transformer_blocks.0.attn2", ... Returns count. */
int cd_unet_attn2_layers(const cd_unet_config *c, char names[][96], int cap);

#endif
