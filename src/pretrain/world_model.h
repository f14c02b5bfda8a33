/* world_model.h - the shapes, random initialisation and on-disk layout of
 * cdiff's own small text-to-image model (the "world model", trained on the
 * synthetic world of src/world by `cdiff pretrain`).
 *
 * It is an ordinary SD 1.x pipeline, only small: CLIP-style text encoder
 * (quick_gelu, causal), UNet2DConditionModel with cross-attention, AutoencoderKL
 * with 8x down-sampling (64x64 images, 4x8x8 latents), the world's BPE
 * tokenizer and a scaled-linear DDPM schedule, written as a diffusers folder
 * that cd_sd_load() reads like any other model.
 *
 * Initial values depend only on the seed and each tensor's name: convolution
 * and linear weights N(0, 1/fan_in), norm scales 1, biases 0, the residual
 * branches' last layers (ResNet conv2, transformer proj_out, attention to_out,
 * feed-forward net.2, UNet conv_out) zero as in LDM, token embeddings
 * N(0, 0.02^2), position embeddings N(0, 0.01^2).
 */
#ifndef CD_WORLD_MODEL_H
#define CD_WORLD_MODEL_H

#include <stdint.h>

#include "models/sd_model.h"

typedef struct {
  cd_unet_config unet;
  cd_vae_config vae;
  cd_clip_config clip;
} cd_wm_config;

/* The shipped model's shapes for a vocabulary of `vocab` entries. */
void cd_wm_config_default(cd_wm_config *c, int vocab);

/* Fills m (zeroed by the caller) with configs and freshly initialised weights
 * for all three components, the SD scheduler defaults and family SD 1.x. */
int cd_wm_init(const cd_wm_config *c, uint64_t seed, cd_sd_model *m);

/* Writes m as a diffusers folder: model_index.json, {unet,vae,text_encoder}/
 * config.json + safetensors (fp16 when f16, else fp32), scheduler/ and the
 * world tokenizer/. Files are written atomically, model_index.json last. */
int cd_wm_write(const cd_sd_model *m, const char *dir, int f16);

#endif
