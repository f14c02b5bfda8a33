/* delta.h - a Custom Diffusion delta: the fine-tuned cross-attention weights
 * and the embeddings of the modifier tokens, in three on-disk layouts.
 *
 * cdiff's own (one file, DIR/cdiff_delta.safetensors or any .safetensors with
 * __metadata__ format=cdiff-delta):
 *   "<unet param>"            full fine-tuned weight, e.g.
 *                             down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight
 *   "<unet param>.lr_us"/".lr_vt"  low-rank form: W = W0 + lr_us · lr_vt (cdiff compress)
 *   "modifier_tokens"         [E, d] embeddings of the added tokens
 *   "modifier_tokens_2"       [E, d2] SDXL: their rows in text_encoder_2's table
 *   metadata: format, version, family (sd1|sd2|sdxl), context_dim, text_width, text_width_2,
 *             tokens and initializers (JSON lists), train, base_hash,
 *             lowrank (0|1), ratio, args (JSON of the training arguments)
 * diffusers' (DIR/pytorch_custom_diffusion_weights.safetensors or .bin):
 *   "<layer>.processor.to_k_custom_diffusion.weight" (to_v, to_q, to_out_custom_diffusion.0.{weight,bias})
 *   plus DIR/<newN>.safetensors (or .bin) = {"<newN>": [d]} (Textual Inversion's format too);
 *   SDXL: {"clip_l": [1, d], "clip_g": [1, d2]} (the two-encoder embedding layout SDXL
 *   embedding files use, one row per encoder; the layer names are SDXL's, every transformer block's attn2)
 *   A token-only delta (--train token) writes only the token files; a full
 *   fine-tune (--train full) writes DIR/unet/diffusion_pytorch_model.safetensors
 *   (every UNet weight, diffusers' keys) instead of the Custom Diffusion file.
 * the original repository's delta.ckpt:
 *   {'state_dict': {'model.diffusion_model.<...>.attn2.to_k.weight': ..., 'embed': [E, d]}}
 * and its diffusers-based scripts' delta.bin (SD and SDXL; compress.py's low-rank form too):
 *   {'unet': {'<diffusers param>': W | {'u': U, 'v': V}}, 'modifier_token': {'<tok>': row | [row, row_2]}}
 */
#ifndef CD_DELTA_H
#define CD_DELTA_H

#include "models/sd_model.h"
#include "models/weights.h"

#define CD_DELTA_FILE "cdiff_delta.safetensors"
#define CD_DIFFUSERS_DELTA_FILE "pytorch_custom_diffusion_weights.safetensors"
#define CD_DELTA_MAX_TOKENS 16

typedef struct cd_delta {
  cd_weights *w;   /* UNet parameter name -> weight (full, or .lr_us/.lr_vt factors) */
  int ntok;
  char tok[CD_DELTA_MAX_TOKENS][32];
  char init[CD_DELTA_MAX_TOKENS][32];
  float *embeds;   /* [ntok, d] */
  int d;           /* text-encoder width of the embeddings */
  float *embeds2;  /* SDXL: [ntok, d2], the same tokens' rows in text_encoder_2; NULL otherwise */
  int d2;
  int ctx;         /* context width of the K/V weights (0 unknown) */
  int family;      /* CD_FAMILY_SD1/SD2/SDXL, 0 unknown */
  char base_hash[17];
  char train[32];  /* "crossattn_kv" | "crossattn" | "token" | "full" (what trained) */
  char *args;      /* JSON text of the training arguments, or NULL */
  int lowrank;
  double ratio;
  char layout[32]; /* "cdiff", "diffusers", "original" */
} cd_delta;

cd_delta *cd_delta_new(void);
void cd_delta_free(cd_delta *d);
/* Reads any of the three layouts from a folder or a file. */
int cd_delta_load(const char *path, const cd_sd_model *m, cd_delta **out);
/* Checks the delta against the model (family, widths, shapes) and turns low-rank factors into full weights. */
int cd_delta_resolve(cd_delta *d, const cd_sd_model *m);
/* Applies a resolved delta: K/V weights become W0 + sum of (W_delta - W0) over the deltas applied so far
 * (one delta: exactly its weights), tokens are added to the tokenizer and the embedding table
 * (SDXL: to both tokenizers and both tables). */
int cd_delta_apply(cd_sd_model *m, const cd_delta *d);
int cd_delta_apply_path(cd_sd_model *m, const char *path);
/* Warns (stderr) when the delta records the hash of the model it was trained
 * on and m is another model: the delta still applies if the shapes fit, but
 * the result is not what was trained. Returns 1 when it warned. */
int cd_delta_check_base(const cd_delta *d, const cd_sd_model *m, const char *what);
/* Writes DIR/cdiff_delta.safetensors and, unless low-rank, diffusers' files as
 * a set: all of them in full under temporary names first, then renamed with
 * the primary cdiff_delta.safetensors last (so an earlier delta in DIR stays
 * whole for its readers until the new one is complete); then removes what the
 * earlier delta left that disagrees with this one (the other layouts, token
 * files of other tokens), and temporary files of killed saves. */
int cd_delta_save(const char *dir, const cd_delta *d);
/* Writes only cdiff's own file, at path (atomic). */
int cd_delta_write_cdiff(const char *path, const cd_delta *d);
/* 1 if dir holds a delta file of any layout. */
int cd_delta_dir_has_delta(const char *dir);
/* Removes every delta file of any layout from dir (token files included). */
int cd_delta_remove(const char *dir);
/* File size of what cd_delta_save would write for the cdiff file, in bytes. */
size_t cd_delta_bytes(const cd_delta *d);

#endif
