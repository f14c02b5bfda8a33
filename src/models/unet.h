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
 *
 * A Transformer2DModel holds depth[i] BasicTransformerBlocks
 * (transformer_blocks.0 .. depth-1; transformer_layers_per_block: SDXL 1/2/10
 * and 10 in the mid block); up level i uses the depth of down level L-1-i.
 *
 * SDXL's "text_time" added conditioning (add_time_dim > 0): each of the
 * add_time_ids micro-conditioning numbers (time_ids: original size, crop
 * top-left, target size) gets the same sinusoidal embedding as the timestep,
 * add_time_dim wide; concat([text_embeds, those]) -> add_embedding.linear_1 ->
 * SiLU -> linear_2 is added to the timestep embedding before the ResNets read it.
 */
#ifndef CD_UNET_H
#define CD_UNET_H

#include "engine/graph.h"
#include "models/weights.h"

#define CD_UNET_MAX_LEVELS 6
/* SDXL's micro-conditioning: original height, width, crop top, left, target height, width */
#define CD_SDXL_TIME_IDS 6

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
  int depth[CD_UNET_MAX_LEVELS]; /* transformer blocks per Transformer2DModel of down level i (0 reads as 1) */
  int mid_depth;     /* transformer blocks in the mid block (0 reads as 1) */
  int add_time_dim;  /* addition_time_embed_dim (SDXL 256); 0: no added conditioning */
  int add_text_dim;  /* width of text_embeds, the pooled text embedding (SDXL 1280) */
  int add_time_ids;  /* numbers in time_ids (SDXL 6) */
} cd_unet_config;

/* transformer blocks of down level i / of the mid block (unset = 1) */
int cd_unet_depth(const cd_unet_config *c, int level);
int cd_unet_mid_depth(const cd_unet_config *c);
/* projection_class_embeddings_input_dim: add_text_dim + add_time_ids * add_time_dim (0 without) */
int cd_unet_add_in_dim(const cd_unet_config *c);

/* What a training graph needs from the UNet builder. */
/* NONE: the UNet is frozen (inference, or token-only training); KV: attn2 to_k/to_v;
 * CROSSATTN: all of attn2; FULL: attn2 here, and the trainer marks every other weight. */
enum { CD_TRAIN_NONE = 0, CD_TRAIN_KV = 1, CD_TRAIN_CROSSATTN = 2, CD_TRAIN_FULL = 3 };

typedef struct {
  cd_unet_config cfg;
  cd_weights *w;
} cd_unet;

/* How one graph uses the UNet; NULL = inference. */
typedef struct {
  int train;          /* CD_TRAIN_*: marks attn2 weights trainable and detaches the start token's k/v */
  int detach_rows;    /* rows of k/v detached in attn2 when training (1: the start token) */
} cd_unet_mode;

/* The added conditioning of a model with add_time_dim > 0 (SDXL), as diffusers'
 * added_cond_kwargs: text_embeds [B, add_text_dim] (the second text encoder's
 * pooled, projected output) and time_ids [B, add_time_ids] (float; SDXL:
 * original height, width, crop top, left, target height, width). */
typedef struct {
  cd_node *text_embeds;
  cd_node *time_ids;
} cd_unet_added;

/* x [B, in, h, w], t [B] (float timesteps), ctx [B, T, context_dim] -> [B, out, h, w].
 * added: NULL for models without added conditioning; required with it.
 * Intermediate results are named for tests: "time_proj", "time_embedding",
 * "add_time_proj", "add_embedding", "conv_in", "down_blocks.i", "mid_block",
 * "up_blocks.i", "conv_norm_out". */
cd_node *cd_unet_build_cond(cd_graph *g, cd_unet *m, const cd_unet_mode *mode, cd_node *x, cd_node *t, cd_node *ctx,
                            const cd_unet_added *added);
/* the same without added conditioning (SD 1.x/2.x) */
cd_node *cd_unet_build(cd_graph *g, cd_unet *m, const cd_unet_mode *mode, cd_node *x, cd_node *t, cd_node *ctx);

/* The pieces, for tests: one Transformer2DModel with depth blocks at weight prefix
 * `prefix` ("mid_block.attentions.0") on x [B, C, H, W] with context ctx; and the
 * text_time embedding [B, 4*block_out[0]] (add_embedding.*). */
cd_node *cd_unet_transformer(cd_graph *g, cd_unet *m, const cd_unet_mode *mode, cd_node *x, cd_node *ctx, int heads,
                             int depth, const char *prefix);
cd_node *cd_unet_add_embedding(cd_graph *g, cd_unet *m, const cd_unet_added *added, int64_t B);

/* Names of the cross-attention layers in diffusers order (down, mid, up; every
 * transformer block of a Transformer2DModel in turn):
 * "down_blocks.0.attentions.0.transformer_blocks.0.attn2", ... Returns count. */
int cd_unet_attn2_layers(const cd_unet_config *c, char names[][96], int cap);

#endif
