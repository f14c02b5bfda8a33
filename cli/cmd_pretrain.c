/* cmd_pretrain.c - cdiff pretrain: trains the world model from scratch
 * (src/pretrain/pretrain.h does the work; docs/world.md documents the run). */
#include <stdio.h>
#include <stdlib.h>

#include "args.h"
#include "cli_device.h"
#include "commands.h"
#include "core/common.h"
#include "pretrain/pretrain.h"

/* "a,b,c" into n positive ints; 0 ok */
static int parse_ints(const char *s, int *out, int n) {
  for (int i = 0; i < n; i++) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || v <= 0 || v > 1 << 16 || (i < n - 1 ? *end != ',' : *end != 0)) return -1;
    out[i] = (int)v;
    s = end + 1;
  }
  return 0;
}

int cmd_pretrain(int argc, char **argv) {
  const char *device = NULL, *vae_ch = NULL, *unet_ch = NULL;
  cd_pretrain_opts o;
  cd_pretrain_opts_default(&o);
    cli_opt opts[] = {
      {"--out", CLI_STR, &o.out, "DIR", "output folder: the model (diffusers layout), state and log (required)", NULL, CLI_REQUIRED},
      {"--seed", CLI_U64, &o.seed, "N", "seed of the initial weights and of every draw (default 1)"},
      {"--vae-steps", CLI_INT, &o.vae_steps, "N", "autoencoder steps (default 1500)", NULL, CLI_MIN(0)},
      {"--unet-steps", CLI_INT, &o.unet_steps, "N", "UNet + text encoder steps (default 5300)", NULL, CLI_MIN(0)},
      {"--vae-batch", CLI_INT, &o.vae_batch, "N", "images per autoencoder step (default 8)", NULL, CLI_MIN(1)},
      {"--batch", CLI_INT, &o.unet_batch, "N", "images per UNet step (default 32)", NULL, CLI_MIN(1)},
      {"--vae-lr", CLI_FLOAT, &o.vae_lr, "X", "autoencoder peak learning rate (default 1e-3)", NULL, CLI_ABOVE(0)},
      {"--lr", CLI_FLOAT, &o.unet_lr, "X", "UNet + text encoder peak learning rate (default 1e-3)", NULL, CLI_ABOVE(0)},
      {"--vae-sprites", CLI_FLOAT, &o.vae_sprites, "P", "fraction of autoencoder images whose objects are generic sprites (cdiff world --mode sprites; default 0)", NULL, CLI_RANGE(0, 1)},
      {"--unet-sprites", CLI_FLOAT, &o.unet_sprites, "P", "fraction of UNet images whose objects are generic sprites captioned \"toy\", so that \"toy\" is a broad class as in real data (default 0)", NULL, CLI_RANGE(0, 1)},
      {"--kl-weight", CLI_FLOAT, &o.kl_weight, "X", "weight of the KL term per image (default 1e-4)", NULL, CLI_MIN(0)},
      {"--uncond-prob", CLI_FLOAT, &o.uncond_prob, "P", "probability of an empty caption (default 0.1)", NULL, CLI_RANGE(0, 1)},
      {"--offset-noise", CLI_FLOAT, &o.offset_noise, "X", "std of a per-channel constant added to the UNet phase's noise (default 0)", NULL, CLI_RANGE(0, 1)},
      {"--object-weight", CLI_FLOAT, &o.object_weight, "X", "UNet loss weight 1 + X on the latent cells an object touches, so shapes are not drowned by backgrounds (default 0)", NULL, CLI_RANGE(0, 100)},
      {"--checkpoint-every", CLI_INT, &o.checkpoint_every, "N", "write OUT/pretrain_state.safetensors every N steps (default 100)"},
      {"--resume", CLI_FLAG, &o.resume, "", "continue from OUT/pretrain_state.safetensors (with the losses it was started with)"},
      {"--init", CLI_STR, &o.init, "DIR", "start from this world model (e.g. models/cdiff-world): VAE kept, UNet + text encoder phase only"},
      {"--decoder-only", CLI_FLAG, &o.decoder_only, "", "with --init: first fine-tune the VAE decoder alone for --vae-steps (encoder and latent space kept)"},
      {"--vae-tune", CLI_FLAG, &o.vae_tune, "", "with --init: first fine-tune the whole VAE (encoder too) for --vae-steps, keeping its scaling factor; the UNet phase then follows the new latents"},
      {"--ema", CLI_FLOAT, &o.ema, "D", "keep an EMA of the UNet + text encoder weights with decay D (e.g. 0.999) and write it as the model (default 0: off)"},
      {"--vae-channels", CLI_STR, &vae_ch, "A,B,C,D", "VAE block_out_channels, multiples of 8 (default: those of --init or of the resumed state, else 16,32,32,64)"},
      {"--unet-channels", CLI_STR, &unet_ch, "A,B", "UNet block_out_channels, multiples of 16 (default: those of --init or of the resumed state, else 48,96)"},
      {"--unet-layers", CLI_INT, &o.unet_layers, "N", "UNet resnets per level (default: that of --init or of the resumed state, else 1); more than --init has grows it by blocks that start as the identity"},
      CLI_DEVICE_OPT(&device),
      {"--fp32", CLI_FLAG, &o.f32, "", "write the model in fp32 (default fp16)"},
      {"--stop-after", CLI_INT, &o.stop_after, "N", "stop (as if interrupted, state saved) after N steps of this run"},
      {0}};
  static const cli_cmd cmd = {"pretrain", "--out DIR [--seed N] [--vae-steps N] [--unet-steps N] [--resume] [flags]"};
  int pr = cli_parse(argc, argv, opts, &cmd, NULL);
  if (pr != CLI_GO) return pr;
  if (vae_ch && parse_ints(vae_ch, o.vae_channels, 4))
    return cli_error(opts, &cmd, "--vae-channels", "%s: expected four positive integers, A,B,C,D", vae_ch);
  if (unet_ch && parse_ints(unet_ch, o.unet_channels, 2))
    return cli_error(opts, &cmd, "--unet-channels", "%s: expected two positive integers, A,B", unet_ch);
  if ((pr = cli_device(opts, &cmd, device)) != CLI_GO) return pr;
  o.quiet = getenv("CDIFF_QUIET") != NULL;
  if (cd_pretrain_run(&o)) {
    fprintf(stderr, "cdiff pretrain: %s\n", cd_last_error());
    return 1;
  }
  return 0;
}
