/* vae.h - AutoencoderKL of Stable Diffusion (encoder, decoder, quant convs).
 *
 * Weight names are diffusers': encoder.{conv_in, down_blocks.i.resnets.j,
 * down_blocks.i.downsamplers.0.conv, mid_block.{resnets.0,attentions.0,resnets.1},
 * conv_norm_out, conv_out}, quant_conv, post_quant_conv, decoder.{conv_in,
 * mid_block.*, up_blocks.i.resnets.j (layers+1 each), up_blocks.i.upsamplers.0.conv,
 * conv_norm_out, conv_out}. Mid attention: group_norm, to_q, to_k, to_v, to_out.0
 * as linear [C, C] weights. All GroupNorm eps 1e-6.
 */
#ifndef CD_VAE_H
#define CD_VAE_H

#include "engine/graph.h"
#include "models/weights.h"

#define CD_VAE_MAX_LEVELS 6

typedef struct {
  int in_channels, out_channels, latent_channels;
  int nlevels;
  int block_out[CD_VAE_MAX_LEVELS];
  int layers_per_block;
  int norm_groups;
  float scaling_factor; /* 0.18215 */
} cd_vae_config;

typedef struct {
  cd_vae_config cfg;
  cd_weights *w;
} cd_vae;

/* img [B, 3, H, W] in [-1, 1] -> moments [B, 2*latent, H/8, W/8] (after quant_conv).
 * Named intermediates: "vae.enc.h" (before quant_conv). */
cd_node *cd_vae_encode_build(cd_graph *g, cd_vae *m, cd_node *img);
/* Latents from one image's encoder moments [2*per] (after quant_conv): the
 * posterior sample (mean + exp(logvar/2) * eps, logvar clamped to [-30, 20])
 * when eps [per] is given, else the mean; times scaling. z: [per]. */
void cd_vae_latent_sample(const float *moments, const float *eps, float scaling, int64_t per, float *z);

/* z [B, latent, h, w] (already divided by the scaling factor) -> image [B, 3, 8h, 8w].
 * Named intermediates: "vae.dec.post_quant_conv". */
cd_node *cd_vae_decode_build(cd_graph *g, cd_vae *m, cd_node *z);

#endif
