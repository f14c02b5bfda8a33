/* adam.h - AdamW over every weight a training graph uses, for training from
 * scratch (pretraining, the judge): clip to total norm 1, then AdamW with
 * beta 0.9/0.999, eps 1e-8, no weight decay. Parameters are named
 * "<component>/<weight name>" so their moments can be saved and restored. */
#ifndef CD_PRETRAIN_ADAM_H
#define CD_PRETRAIN_ADAM_H

#include <stdint.h>

#include "models/weights.h"

typedef struct {
  char *name;
  float *data, *grad, *m, *v;
  int64_t n;
} cd_adam_param;

typedef struct {
  cd_adam_param *p;
  int n;
  int step;
} cd_adam;

/* Forgets the weights' graph nodes (before building a new graph). */
void cd_adam_clear_nodes(cd_weights *w);
/* Marks every weight of w that the graph being built uses trainable (before planning). */
void cd_adam_mark_trainable(cd_weights *w);
/* After planning: every used weight of w becomes a parameter with zero moments. */
void cd_adam_add(cd_adam *a, cd_weights *w, const char *component);
/* One update at learning rate lr; *gnorm gets the gradient norm before clipping.
 * A non-finite gradient is an error naming the step (parameters untouched). */
int cd_adam_step(cd_adam *a, double lr, double *gnorm);
void cd_adam_free(cd_adam *a);

/* Linear warm-up over the first 5% of total steps, then cosine from base to base/10. */
double cd_adam_lr(double base, int step, int total);

#endif
