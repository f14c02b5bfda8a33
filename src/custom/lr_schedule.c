/* lr_schedule.c - diffusers' learning-rate schedules (see lr_schedule.h). */
#include "custom/lr_schedule.h"

#include <math.h>
#include <string.h>

#include "core/common.h"

static const char *const names[] = {"constant", "constant_with_warmup", "linear", "cosine"};

int cd_lr_parse(const char *name, cd_lr_kind *kind) {
  for (int i = 0; i < 4; i++)
    if (name && !strcmp(name, names[i])) {
      *kind = (cd_lr_kind)i;
      return 0;
    }
  return cd_set_error("--lr_scheduler must be constant, constant_with_warmup, linear or cosine (got '%s')", name ? name : "");
}

const char *cd_lr_name(cd_lr_kind kind) { return kind >= 0 && kind <= CD_LR_COSINE ? names[kind] : "?"; }

double cd_lr_factor(cd_lr_kind kind, int warmup, int total, int step) {
  if (kind == CD_LR_CONSTANT) return 1.0;
  if (step < warmup) return (double)step / (double)CD_MAX(1, warmup);
  if (kind == CD_LR_CONSTANT_WARMUP) return 1.0;
  const double rest = (double)CD_MAX(1, total - warmup);
  if (kind == CD_LR_LINEAR) return CD_MAX(0.0, (double)(total - step) / rest);
  const double p = (double)(step - warmup) / rest;
  return CD_MAX(0.0, 0.5 * (1.0 + cos(M_PI * 2.0 * 0.5 * p)));
}
