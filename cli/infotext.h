/* infotext.h - the "parameters" text that AUTOMATIC1111's web UI writes into
 * its images, and that A1111, ComfyUI and stable-diffusion.cpp read back:
 *
 *   PROMPT
 *   Negative prompt: NEGATIVE            (only when there is one)
 *   Steps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: H, Model: M, ...
 *
 * A value that holds ',', ':' or a newline is written as a JSON string, as A1111 does. */
#ifndef CD_CLI_INFOTEXT_H
#define CD_CLI_INFOTEXT_H

#include <stddef.h>

#include "core/common.h"

typedef struct {
  char *s;
  size_t n, cap;
  int fields;
} cli_infotext;

void cli_infotext_init(cli_infotext *t, const char *prompt, const char *negative);
/* appends ", KEY: VALUE" (the first field starts a new line) */
void cli_infotext_add(cli_infotext *t, const char *key, const char *fmt, ...) CD_PRINTF(3, 4);
void cli_infotext_free(cli_infotext *t);

/* A1111's display name of a cdiff sampler ("euler_a" -> "Euler a"); unknown names pass through. */
const char *cli_a1111_sampler(const char *cdiff_name);

#endif
