/* pretrain.h - `cdiff pretrain`: trains the world model (world_model.h) from
 * scratch on the synthetic world (src/world), every parameter of every
 * component, with the same engine that fine-tunes.
 *
 * Phase 1, the VAE as an autoencoder: images rendered from the pretraining
 * distribution, z = mean + exp(logvar/2) eps from the encoder's moments,
 *   loss = mean((decode(z) - image)^2) + kl_weight * KL(q(z|x) || N(0,1)) / (3 H W)
 * (KL summed over an image's latent elements, both terms averaged over the
 * batch). The encoder and decoder are two graphs: the decoder's input z is a
 * trainable leaf, so backward yields dL/dz, which is carried through the
 * reparameterisation and the KL term on the host and fed back into the
 * encoder as the seed of its backward (loss_enc = sum(moments * dL/dmoments)).
 * At the end the VAE's scaling_factor is set to 1 / std of the latents of a
 * fixed set of images, as SD's 0.18215 was chosen.
 *
 * Phase 2, the UNet and text encoder jointly, the DDPM epsilon objective on
 * scaled VAE posterior samples (the VAE frozen), t uniform in [0, 1000), the
 * caption replaced by "" with probability uncond_prob (for classifier-free
 * guidance).
 *
 * Both phases: AdamW (no weight decay), gradients clipped to total norm 1,
 * learning rate warmed up linearly over the first 5% of steps, then cosine to
 * 10%. Every random draw of step s comes from an RNG seeded by (seed, phase, s),
 * so a run resumed from OUT/pretrain_state.safetensors continues bit for bit.
 *
 * Continuing (--init DIR): all three components and the VAE's scaling factor
 * start from a world model written earlier (a shipped model folder); the VAE
 * phase is skipped and phase 2 runs with its own schedule and seed; with
 * --decoder-only phase 1 first fine-tunes the VAE's decoder alone, on
 * posterior samples of the frozen encoder (as SD's ft-MSE VAE was made), so
 * the latent space, its scaling factor and the UNet that knows it stay valid. EMA
 * (--ema D): an exponential moving average of the phase-2 parameters,
 *   ema = d_n ema + (1 - d_n) w   after every update, d_n = min(D, (1+n)/(10+n)),
 * kept in the state file; the model written into OUT holds the averaged
 * weights (sampling from an average of the last few thousand steps gives
 * sharper, less noisy samples than the last step's weights).
 *
 * OUT receives the model as a diffusers folder (at the end of each phase),
 * the state file (every checkpoint_every steps), and pretrain_log.jsonl with
 * one line per step: {"phase": "vae"|"unet", "step": s, "loss": x, "lr": y}.
 */
#ifndef CD_PRETRAIN_H
#define CD_PRETRAIN_H

#include <stdint.h>

typedef struct {
  const char *out;      /* output folder (required) */
  uint64_t seed;        /* default 1 */
  int vae_steps, unet_steps;
  int vae_batch, unet_batch;
  float vae_lr, unet_lr;
  float kl_weight;      /* default 1e-4 */
  float uncond_prob;    /* default 0.1 */
  float offset_noise;   /* std of a per-image, per-channel constant added to the noise (default 0) */
  float object_weight;  /* UNet loss weight 1 + X on latent cells an object touches (default 0: plain MSE) */
  int checkpoint_every; /* default 100; 0: only at phase ends */
  int resume;           /* continue from OUT/pretrain_state.safetensors */
  int f32;              /* write the model in fp32 (default fp16) */
  int quiet;
  int stop_after;       /* tests: stop (as if interrupted) after this many steps of the run, 0 = off */
  int scale_images;     /* images whose latent spread sets scaling_factor (default 256) */
  const char *init;     /* start from this world-model folder, skipping the VAE phase (NULL: from scratch) */
  int decoder_only;     /* with init: phase 1 trains only the VAE decoder (encoder, latents, scaling factor kept) */
  float ema;            /* EMA decay of the phase-2 parameters, 0 = off; the written model is the average */
  int vae_tune;         /* with init: phase 1 fine-tunes the whole VAE (encoder too), keeping the init's scaling factor */
  float vae_sprites;    /* fraction of autoencoder images with generic sprites for objects (default 0) */
  float unet_sprites;   /* fraction of UNet images with generic sprites for objects, captioned "toy" (default 0) */
  int vae_channels[4];  /* VAE block_out_channels (0s: the init's or the resumed state's, else 16,32,32,64) */
  int unet_channels[2]; /* UNet block_out_channels (0s: the init's or the resumed state's, else 48,96) */
  int unet_layers;      /* UNet layers_per_block (0: the init's or the resumed state's, else 1); more than init's grows it by identity blocks */
} cd_pretrain_opts;

void cd_pretrain_opts_default(cd_pretrain_opts *o);
int cd_pretrain_run(const cd_pretrain_opts *o);

#define CD_PRETRAIN_STATE "pretrain_state.safetensors"
#define CD_PRETRAIN_LOG "pretrain_log.jsonl"

#endif
