/* train_mem.h - the memory a training run will need, estimated after the
 * model is loaded and before class images are generated or any step runs
 * (see diffusion/mem_estimate.h for the method: the planner's arenas at two
 * small resolutions, extended affinely in the image area). */
#ifndef CD_TRAIN_MEM_H
#define CD_TRAIN_MEM_H

#include "custom/train.h"

/* Bytes of a trainer with options o (its graphs' arenas, parameter
 * gradients, Adam moments, accumulators when grad_accum > 1, batch buffers),
 * planned at o->res exactly (for tests) or estimated. */
int cd_trainer_bytes(cd_sd_model *m, const cd_train_opts *o, int grad_accum, double *bytes);
int cd_train_mem_estimate(cd_sd_model *m, const cd_train_opts *o, int grad_accum, double *bytes);
/* The estimate, and whether it fits in what this process may still use (as
 * cd_mem_check counts it), without refusing. */
int cd_train_mem_fits(cd_sd_model *m, const cd_train_opts *o, int grad_accum, double *bytes, int *fits);
/* Refuses (error naming `what` and the limit) a run whose training, or class
 * image generation at o->res when gen_class, would not fit. */
int cd_train_mem_check(cd_sd_model *m, const cd_train_opts *o, int grad_accum, int gen_class, const char *what);
/* the same with the training estimate already made (cd_train_mem_fits) */
int cd_train_mem_check_bytes(cd_sd_model *m, const cd_train_opts *o, double train, int gen_class, const char *what);

#endif
