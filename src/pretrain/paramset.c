/* paramset.c - trainable weight sets for training from scratch (see paramset.h). */
#include "pretrain/paramset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

void cd_paramset_clear_nodes(cd_weights *w) {
  cd_weights_clear_used(w);
  for (int i = 0; i < cd_weights_count(w); i++) cd_weights_at(w, i)->node = NULL;
}

void cd_paramset_mark_trainable(cd_weights *w) {
  for (int i = 0; i < cd_weights_count(w); i++) {
    cd_weight *x = cd_weights_at(w, i);
    if (x->node) cd_set_trainable(x->node);
  }
}

void cd_paramset_init(cd_paramset *p, cd_graph *g) {
  memset(p, 0, sizeof *p);
  p->g = g;
  p->o = cd_optim_new(g);
}

int cd_paramset_add(cd_paramset *p, cd_weights *w, const char *comp, int (*keep)(const char *name)) {
  for (int i = 0; i < cd_weights_count(w); i++) {
    cd_weight *x = cd_weights_at(w, i);
    if (!x->node || (keep && !keep(x->name))) continue;
    if (cd_optim_add(p->o, x->node)) return -1;
    p->w = cd_realloc(p->w, (size_t)(p->n + 1) * sizeof *p->w);
    p->name = cd_realloc(p->name, (size_t)(p->n + 1) * sizeof *p->name);
    size_t L = strlen(comp) + strlen(x->name) + 2;
    p->name[p->n] = cd_malloc(L);
    snprintf(p->name[p->n], L, "%s/%s", comp, x->name);
    p->w[p->n++] = x;
  }
  return 0;
}

int cd_paramset_sync(cd_paramset *p) {
  for (int i = 0; i < p->n; i++) {
    float *dst = cd_weight_f32(p->w[i]);
    int64_t n = cd_numel(p->w[i]->ndim, p->w[i]->ne);
    float *tmp = cd_malloc((size_t)n * sizeof(float)); /* the backend may hold the values in the weight's own memory */
    int rc = cd_optim_read(p->o, i, CD_OPTIM_VALUE, tmp);
    if (!rc) memcpy(dst, tmp, (size_t)n * sizeof(float));
    free(tmp);
    if (rc) return -1;
  }
  return 0;
}

void cd_paramset_free(cd_paramset *p) {
  for (int i = 0; i < p->n; i++) free(p->name[i]);
  free(p->name);
  free(p->w);
  cd_optim_free(p->o);
  memset(p, 0, sizeof *p);
}

double cd_pretrain_lr(double base, int step, int total) {
  int warm = total / 20 > 1 ? total / 20 : 1;
  if (step < warm) return base * (step + 1) / warm;
  double f = (double)(step - warm) / (total - warm > 1 ? total - warm : 1);
  return base * (0.1 + 0.9 * 0.5 * (1 + cos(M_PI * f)));
}
