/* paramset.h - every weight of one or more components as trainable
 * parameters of a training graph, for training from scratch (pretraining,
 * the judge): the engine's AdamW (engine/optim.h) over them, names
 * "<component>/<weight name>" for checkpoints, and the trained values copied
 * back into the weight stores. */
#ifndef CD_PRETRAIN_PARAMSET_H
#define CD_PRETRAIN_PARAMSET_H

#include "engine/optim.h"
#include "models/weights.h"

typedef struct {
  cd_graph *g;
  cd_optim *o;
  cd_weight **w; /* parameter i's weight */
  char **name;   /* "<component>/<weight name>" */
  int n;
} cd_paramset;

/* Before building a graph from w: forget the nodes of earlier graphs. */
void cd_paramset_clear_nodes(cd_weights *w);
/* After building, before planning: every weight of w the graph uses trains. */
void cd_paramset_mark_trainable(cd_weights *w);
/* After planning g for training: an optimizer over g (zero moments). */
void cd_paramset_init(cd_paramset *p, cd_graph *g);
/* adds the weights of w that g uses (and keep accepts, when not NULL), in store order; 0 or -1 */
int cd_paramset_add(cd_paramset *p, cd_weights *w, const char *component, int (*keep)(const char *name));
/* the parameters' current values into their weights (f32 on the host); 0 or -1 */
int cd_paramset_sync(cd_paramset *p);
void cd_paramset_free(cd_paramset *p);

/* Learning rate of step s (0-based) of total: linear warm-up over the first
 * 5% of the steps, then cosine from base down to base / 10. */
double cd_pretrain_lr(double base, int step, int total);

#endif
