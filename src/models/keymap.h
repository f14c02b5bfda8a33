/* keymap.h - original (CompVis/LDM, OpenCLIP) checkpoint key names -> diffusers names.
 *
 * A keymap is a table of module-prefix rules generated from a detected
 * configuration (levels, layers per block, text layers), so one function per
 * component covers every size:
 *
 *   cd_keymap km;
 *   cd_keymap_unet(&km, &unet_cfg);   // keys relative to "model.diffusion_model."
 *   cd_km_result r;
 *   cd_keymap_map(&km, "input_blocks.1.0.in_layers.0.weight", &r);
 *   // r.op == CD_KM_COPY, r.dst[0] == "down_blocks.0.resnets.0.norm1.weight"
 *   cd_keymap_free(&km);
 *
 * Each rule maps a module prefix ("input_blocks.4.0.") to a diffusers prefix
 * ("down_blocks.1.resnets.0.") and names a sub-table for the module's own
 * parameters (ResNet in_layers.0 -> norm1, ...). Keys no rule explains are
 * CD_KM_UNKNOWN: the loader reports them.
 */
#ifndef CD_KEYMAP_H
#define CD_KEYMAP_H

#include "models/clip.h"
#include "models/unet.h"
#include "models/vae.h"

#define CD_KM_NAME 192

typedef enum {
  CD_KM_UNKNOWN = 0, /* no rule: an unexpected key */
  CD_KM_COPY,        /* same values and shape, new name dst[0] */
  CD_KM_SQUEEZE,     /* 1x1 conv [C, C', 1, 1] -> linear [C, C'] (VAE mid attention) */
  CD_KM_SPLIT3,      /* [3d, ...] -> three [d, ...] along dim 0: dst[0..2] = q, k, v */
  CD_KM_TRANSPOSE,   /* [a, b] -> [b, a]: OpenCLIP's text_projection (x @ P) as a Linear weight */
  CD_KM_IGNORE       /* known but unused (position_ids, text_projection, last OpenCLIP block) */
} cd_km_op;

typedef struct {
  cd_km_op op;
  int n; /* names in dst: 1, or 3 for CD_KM_SPLIT3 */
  char dst[3][CD_KM_NAME];
} cd_km_result;

typedef struct {
  char src[96];  /* module prefix ending in '.', or an exact key (exact = 1) */
  char dst[128]; /* diffusers prefix / exact name */
  int sub;       /* sub-table of the module's parameters (keymap.c) */
  int exact;
} cd_km_rule;

typedef struct {
  cd_km_rule *r;
  int n, cap;
} cd_keymap;

/* UNet: keys relative to "model.diffusion_model." (input_blocks, middle_block,
 * output_blocks, time_embed, out; SGM's label_emb.0.{0,2} when add_time_dim > 0).
 * Uses nlevels, layers_per_block, down_attn, up_attn, mid_attn, depth, mid_depth. */
int cd_keymap_unet(cd_keymap *km, const cd_unet_config *c);
/* VAE: keys relative to "first_stage_model." (encoder.down.i.block.j, decoder.up.i
 * numbered in reverse of diffusers, mid.block_1/2, mid.attn_1, quant convs). */
int cd_keymap_vae(cd_keymap *km, const cd_vae_config *c);
/* Text encoder: keys relative to "cond_stage_model." (SDXL: "conditioner.embedders.N.").
 * openclip = 0: Hugging Face CLIP names under "transformer.text_model." (or "transformer."
 * of old checkpoints); openclip = 1: OpenCLIP names under "model.", of which blocks
 * 0..c->layers-1 are used and blocks c->layers..stored_blocks-1 ignored (the SD 2.x
 * penultimate rule). With c->proj > 0 (SDXL's second encoder) model.text_projection
 * becomes text_projection.weight, transposed; otherwise it is ignored. */
int cd_keymap_clip(cd_keymap *km, const cd_clip_config *c, int openclip, int stored_blocks);
void cd_keymap_free(cd_keymap *km);

/* Maps one key; returns r->op (CD_KM_UNKNOWN when no rule matches). */
cd_km_op cd_keymap_map(const cd_keymap *km, const char *key, cd_km_result *r);

#endif
