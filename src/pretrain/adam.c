/* adam.c - AdamW over a model's weights (see adam.h). */
#include "pretrain/adam.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

void cd_adam_clear_nodes(cd_weights *w) {
  cd_weights_clear_used(w);
  for (int i = 0; i < cd_weights_count(w); i++) cd_weights_at(w, i)->node = NULL;
}

void cd_adam_mark_trainable(cd_weights *w) {
  for (int i = 0; i < cd_weights_count(w); i++) {
    cd_weight *x = cd_weights_at(w, i);
    if (x->node) cd_set_trainable(x->node);
  }
}

void cd_adam_add(cd_adam *a, cd_weights *w, const char *comp) {
  for (int i = 0; i < cd_weights_count(w); i++) {
    cd_weight *x = cd_weights_at(w, i);
    if (!x->node) continue;
    a->p = cd_realloc(a->p, (size_t)(a->n + 1) * sizeof *a->p);
    cd_adam_param *p = &a->p[a->n++];
    size_t L = strlen(comp) + strlen(x->name) + 2;
    p->name = cd_malloc(L);
    snprintf(p->name, L, "%s/%s", comp, x->name);
    p->data = x->data;
    p->grad = x->node->grad;
    p->n = x->node->n;
    p->m = cd_calloc((size_t)p->n, sizeof(float));
    p->v = cd_calloc((size_t)p->n, sizeof(float));
  }
}

int cd_adam_step(cd_adam *a, double lr, double *gnorm) {
  double total = 0;
  for (int i = 0; i < a->n; i++)
    for (int64_t k = 0; k < a->p[i].n; k++) total += (double)a->p[i].grad[k] * a->p[i].grad[k];
  total = sqrt(total);
  if (!isfinite(total)) return cd_set_error("the gradient is not finite at step %d", a->step + 1);
  if (gnorm) *gnorm = total;
  double coef = total > 1.0 ? 1.0 / (total + 1e-6) : 1.0;
  a->step++;
  const double b1 = 0.9, b2 = 0.999, bc1 = 1 - pow(b1, a->step), bc2 = sqrt(1 - pow(b2, a->step));
  for (int i = 0; i < a->n; i++) {
    cd_adam_param *p = &a->p[i];
    for (int64_t k = 0; k < p->n; k++) {
      double g = p->grad[k] * coef;
      double m = b1 * p->m[k] + (1 - b1) * g, v = b2 * p->v[k] + (1 - b2) * g * g;
      p->m[k] = (float)m;
      p->v[k] = (float)v;
      p->data[k] = (float)(p->data[k] - lr / bc1 * m / (sqrt(v) / bc2 + 1e-8));
    }
  }
  return 0;
}

void cd_adam_free(cd_adam *a) {
  for (int i = 0; i < a->n; i++) {
    free(a->p[i].name);
    free(a->p[i].m);
    free(a->p[i].v);
  }
  free(a->p);
  memset(a, 0, sizeof *a);
}

double cd_adam_lr(double base, int step, int total) {
  int warm = total / 20 > 1 ? total / 20 : 1;
  if (step < warm) return base * (step + 1) / warm;
  double p = (double)(step - warm) / (total - warm > 1 ? total - warm : 1);
  return base * (0.1 + 0.9 * 0.5 * (1 + cos(M_PI * p)));
}
