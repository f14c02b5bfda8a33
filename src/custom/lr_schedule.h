/* lr_schedule.h - learning-rate schedules of diffusers' get_scheduler
 * (diffusers/optimization.py), which train_custom_diffusion.py uses through
 * --lr_scheduler and --lr_warmup_steps.
 *
 * The learning rate of optimizer step s (0-based: the first update is s = 0,
 * as LambdaLR evaluates lr_lambda(0) before the first scheduler.step()) is
 * base * f(s), with W warmup steps and T training steps:
 *   constant              f = 1 (diffusers ignores the warmup here)
 *   constant_with_warmup  f = s < W ? s / max(1, W) : 1
 *   linear                f = s < W ? s / max(1, W) : max(0, (T - s) / max(1, T - W))
 *   cosine                f = s < W ? s / max(1, W) :
 *                             max(0, (1 + cos(pi * 2 * 0.5 * p)) / 2),  p = (s - W) / max(1, T - W)
 * (num_cycles 0.5: half a cosine wave, from 1 at the end of the warmup to 0 at T). */
#ifndef CD_LR_SCHEDULE_H
#define CD_LR_SCHEDULE_H

typedef enum { CD_LR_CONSTANT, CD_LR_CONSTANT_WARMUP, CD_LR_LINEAR, CD_LR_COSINE } cd_lr_kind;

/* "constant" | "constant_with_warmup" | "linear" | "cosine"; -1 with a message otherwise. */
int cd_lr_parse(const char *name, cd_lr_kind *kind);
const char *cd_lr_name(cd_lr_kind kind);
/* f(s) above, in double precision. */
double cd_lr_factor(cd_lr_kind kind, int warmup, int total, int step);

#endif
