/* sd_info.h - a human-readable summary of a loaded Stable Diffusion model. */
#ifndef CD_SD_INFO_H
#define CD_SD_INFO_H

#include <stdint.h>
#include <stdio.h>

#include "models/sd_model.h"

/* Prints family, layout, prediction type, per-component parameter count and
 * stored dtype, UNet levels/channels/heads/context, VAE and text-encoder
 * shapes, tokenizer and hash. 0, or -1 on a write error. */
int cd_sd_info(const cd_sd_model *m, FILE *out);

/* Parameters of a component (0 when it was not loaded). */
int64_t cd_sd_params(const cd_weights *w);

#endif
