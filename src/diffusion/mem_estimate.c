/* mem_estimate.c - sampling memory from the planner at small sizes (see
 * mem_estimate.h). */
#include "diffusion/mem_estimate.h"

#include <stdio.h>

#include "core/common.h"
#include "core/sysmem.h"
#include "engine/graph.h"
#include "models/unet.h"
#include "models/vae.h"

int cd_unet_arena_bytes(cd_sd_model *m, int B, int64_t h, int64_t w, double *bytes) {
  cd_graph *g = cd_graph_new();
  cd_node *x = cd_input(g, "x", 4, (int64_t[]){B, m->unet.cfg.in_channels, h, w});
  cd_node *t = cd_input(g, "t", 1, (int64_t[]){B});
  cd_node *c = cd_input(g, "ctx", 3, (int64_t[]){B, CD_TOK_MAX_LEN, m->unet.cfg.context_dim});
  cd_unet_added add = {NULL, NULL}; /* SDXL's added conditioning, when the model has it */
  if (m->unet.cfg.add_time_dim > 0) {
    add.text_embeds = cd_input(g, "text_embeds", 2, (int64_t[]){B, m->unet.cfg.add_text_dim});
    add.time_ids = cd_input(g, "time_ids", 2, (int64_t[]){B, m->unet.cfg.add_time_ids});
  }
  cd_weights_clear_used(m->unet.w);
  cd_graph_output(g, cd_unet_build_cond(g, &m->unet, NULL, x, t, c, &add));
  int rc = cd_graph_plan(g, NULL);
  *bytes = rc ? 0 : (double)cd_graph_arena_bytes(g);
  cd_graph_free(g);
  return rc ? cd_prefix_error("memory estimate (UNet)") : 0;
}

int cd_vae_arena_bytes(cd_sd_model *m, int dec, int64_t h, int64_t w, double *bytes) {
  cd_graph *g = cd_graph_new();
  cd_node *in = dec ? cd_input(g, "z", 4, (int64_t[]){1, m->vae.cfg.latent_channels, h, w})
                    : cd_input(g, "image", 4, (int64_t[]){1, 3, 8 * h, 8 * w});
  cd_graph_output(g, dec ? cd_vae_decode_build(g, &m->vae, in) : cd_vae_encode_build(g, &m->vae, in));
  int rc = cd_graph_plan(g, NULL);
  *bytes = rc ? 0 : (double)cd_graph_arena_bytes(g);
  cd_graph_free(g);
  return rc ? cd_prefix_error("memory estimate (VAE)") : 0;
}

int cd_sample_mem_plan(cd_sd_model *m, int n, int passes, int width, int height, int tile, int img2img, cd_mem_plan *p) {
  *p = (cd_mem_plan){0};
  if (n < 1 || passes < 1 || width < 1 || height < 1) return cd_set_error("memory estimate: invalid request");
  const int nl = m->unet.cfg.nlevels > 0 ? m->unet.cfg.nlevels : 1;
  /* two latent sizes the UNet accepts (2 and 4 size steps): at the very smallest
   * sizes the constant buffers still shape the packing */
  const int64_t s1 = (int64_t)2 << (nl - 1), s2 = 2 * s1;
  const double h = height / 8.0, w = width / 8.0, area = h * w, a1 = (double)(s1 * s1), a2 = (double)(s2 * s2);
  const int B = passes * n;
  /* planned for one image (every UNet buffer is per example) and scaled by n:
   * calibrating a large batch would itself reserve much address space */
  double u1, u2, v1, v2;
  if (cd_unet_arena_bytes(m, B / n, s1, s1, &u1) || cd_unet_arena_bytes(m, B / n, s2, s2, &u2)) return -1;
  p->unet = n * cd_mem_affine(a1, u1, a2, u2, area);
  /* the VAE is planned with latents a multiple of 8 as well (its own factor 8 on top) */
  const int64_t e1 = CD_MAX(s1, 8), e2 = 2 * e1;
  const double ea1 = (double)(e1 * e1), ea2 = (double)(e2 * e2);
  if (cd_vae_arena_bytes(m, 1, e1, e1, &v1) || cd_vae_arena_bytes(m, 1, e2, e2, &v2)) return -1;
  const double dec_area = tile > 0 ? CD_MIN(h, (double)tile) * CD_MIN(w, (double)tile) : area;
  p->vae = cd_mem_affine(ea1, v1, ea2, v2, dec_area);
  if (img2img) {
    if (cd_vae_arena_bytes(m, 0, e1, e1, &v1) || cd_vae_arena_bytes(m, 0, e2, e2, &v2)) return -1;
    p->encoder = cd_mem_affine(ea1, v1, ea2, v2, area);
  }
  const double lat = 4.0 * m->unet.cfg.in_channels * area * n; /* bytes of all latents */
  p->sampler = 8 * lat; /* multistep samplers keep a few latent-sized histories and noise */
  p->buffers = lat + 4.0 * B * CD_TOK_MAX_LEN * m->unet.cfg.context_dim + 4.0 * 3 * width * (double)height * (n + (img2img ? 1 : 0));
  const double a = p->unet + p->sampler + p->encoder;
  p->total = p->buffers + (a > p->vae ? a : p->vae);
  return 0;
}

int cd_sample_mem_check(cd_sd_model *m, int n, int passes, int width, int height, int tile, int img2img, const char *what) {
  cd_mem_plan p;
  if (cd_sample_mem_plan(m, n, passes, width, height, tile, img2img, &p)) return -1;
  char a[32], b[32], c[32], d[32], detail[256];
  snprintf(detail, sizeof detail, "UNet %s, VAE decoder %s, images and latents %s, sampler %s", cd_mem_fmt(p.unet, a, sizeof a),
           cd_mem_fmt(p.vae, b, sizeof b), cd_mem_fmt(p.buffers, c, sizeof c), cd_mem_fmt(p.sampler, d, sizeof d));
  return cd_mem_check(what, p.total, detail);
}
