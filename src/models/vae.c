/* vae.c - AutoencoderKL encoder and decoder graphs (see vae.h).
 *
 * encoder: conv_in -> per level: layers x ResNet, then (not last) pad (0,1,0,1)
 *          + 3x3 stride-2 conv -> mid (ResNet, attention, ResNet) -> GN, SiLU,
 *          conv_out -> quant_conv                         => moments [B, 2z, H/8, W/8]
 * decoder: post_quant_conv -> conv_in -> mid -> per level (reversed channels):
 *          layers+1 x ResNet, then (not last) nearest 2x + conv -> GN, SiLU, conv_out
 * All GroupNorms eps 1e-6; ResNets have no time embedding. The ResNet and
 * attention blocks are the shared builders of blocks.c.
 */
#include "vae.h"

#include "blocks.h"

#include <math.h>
#include <stdio.h>

static cd_node *gn(cd_graph *g, cd_vae *m, cd_node *x, const char *p, const char *n) {
  const cd_blk b = {g, m->w, m->cfg.norm_groups};
  return cd_blk_group_norm(&b, x, 1e-6f, p, n);
}

static cd_node *conv(cd_graph *g, cd_vae *m, cd_node *x, int64_t cout, int k, int stride, int pad, const char *p) {
  const cd_blk b = {g, m->w, m->cfg.norm_groups};
  return cd_blk_conv(&b, x, cout, k, stride, pad, p);
}

static cd_node *resnet(cd_graph *g, cd_vae *m, cd_node *x, int64_t cout, const char *p) {
  const cd_blk b = {g, m->w, m->cfg.norm_groups};
  return cd_blk_resnet(&b, x, NULL, cout, 1e-6f, p);
}

static cd_node *mid(cd_graph *g, cd_vae *m, cd_node *h, const char *p) {
  const cd_blk b = {g, m->w, m->cfg.norm_groups};
  char q[128];
  int64_t C = h->ne[1];
  snprintf(q, sizeof q, "%s.mid_block.resnets.0", p);
  h = cd_blk_resnet(&b, h, NULL, C, 1e-6f, q);
  snprintf(q, sizeof q, "%s.mid_block.attentions.0", p);
  h = cd_blk_spatial_attention(&b, h, 1e-6f, q);
  snprintf(q, sizeof q, "%s.mid_block.resnets.1", p);
  return cd_blk_resnet(&b, h, NULL, C, 1e-6f, q);
}

cd_node *cd_vae_encode_build(cd_graph *g, cd_vae *m, cd_node *img) {
  const cd_vae_config *c = &m->cfg;
  const int L = c->nlevels;
  char p[128];
  if (img->ndim != 4 || img->ne[1] != c->in_channels) return cd_graph_fail(g, "vae: image must be [B,%d,H,W]", c->in_channels);
  if ((img->ne[2] | img->ne[3]) & ((1 << (L - 1)) - 1))
    return cd_graph_fail(g, "vae: image size %ldx%ld is not a multiple of %d", (long)img->ne[2], (long)img->ne[3], 1 << (L - 1));
  cd_node *h = conv(g, m, img, c->block_out[0], 3, 1, 1, "encoder.conv_in");
  for (int i = 0; i < L; i++) {
    for (int j = 0; j < c->layers_per_block; j++) {
      snprintf(p, sizeof p, "encoder.down_blocks.%d.resnets.%d", i, j);
      h = resnet(g, m, h, c->block_out[i], p);
    }
    if (i < L - 1) { /* VAE downsampling: pad right/bottom by one, 3x3 stride 2, no padding */
      snprintf(p, sizeof p, "encoder.down_blocks.%d.downsamplers.0.conv", i);
      h = conv(g, m, cd_pad2d(g, h, 0, 1, 0, 1), h->ne[1], 3, 2, 0, p);
    }
  }
  h = mid(g, m, h, "encoder");
  h = cd_silu(g, gn(g, m, h, "encoder", "conv_norm_out"));
  h = conv(g, m, h, 2 * c->latent_channels, 3, 1, 1, "encoder.conv_out");
  cd_node_set_name(h, "vae.enc.h");
  h = conv(g, m, h, 2 * c->latent_channels, 1, 1, 0, "quant_conv");
  cd_node_set_name(h, "vae.enc.moments");
  return h;
}

cd_node *cd_vae_decode_build(cd_graph *g, cd_vae *m, cd_node *z) {
  const cd_vae_config *c = &m->cfg;
  const int L = c->nlevels;
  char p[128];
  if (z->ndim != 4 || z->ne[1] != c->latent_channels) return cd_graph_fail(g, "vae: latents must be [B,%d,h,w]", c->latent_channels);
  cd_node *h = conv(g, m, z, c->latent_channels, 1, 1, 0, "post_quant_conv");
  cd_node_set_name(h, "vae.dec.post_quant_conv");
  h = conv(g, m, h, c->block_out[L - 1], 3, 1, 1, "decoder.conv_in");
  h = mid(g, m, h, "decoder");
  for (int i = 0; i < L; i++) {
    for (int j = 0; j <= c->layers_per_block; j++) {
      snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, j);
      h = resnet(g, m, h, c->block_out[L - 1 - i], p);
    }
    if (i < L - 1) {
      snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0.conv", i);
      h = conv(g, m, cd_upsample2x(g, h), h->ne[1], 3, 1, 1, p);
    }
  }
  h = cd_silu(g, gn(g, m, h, "decoder", "conv_norm_out"));
  h = conv(g, m, h, c->out_channels, 3, 1, 1, "decoder.conv_out");
  cd_node_set_name(h, "vae.dec.out");
  return h;
}

void cd_vae_latent_sample(const float *moments, const float *eps, float scaling, int64_t per, float *z) {
  for (int64_t k = 0; k < per; k++) {
    double v = moments[k];
    if (eps) {
      double lv = moments[per + k];
      lv = lv < -30 ? -30 : lv > 20 ? 20 : lv;
      v += exp(0.5 * lv) * eps[k];
    }
    z[k] = (float)(v * scaling);
  }
}
