/* optim.c - AdamW, global-norm clipping and the finite check over a training
 * graph's parameters, as backend operations (see optim.h for the math). */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "core/common.h"
#include "wstore.h"

typedef struct {
  cd_node *p;
  float *m, *v; /* backend memory, n floats each */
  float *acc;   /* gradient accumulator (cd_optim_accumulate), made on first use */
} slot;

struct cd_optim {
  cd_graph *g;
  const cd_backend *be;
  const cd_kernel_ctx *ctx;
  slot *s;
  int n, cap;
  int steps;
};

cd_optim *cd_optim_new(cd_graph *g) {
  cd_optim *o = cd_calloc(1, sizeof *o);
  o->g = g;
  o->be = cd_graph_backend(g);
  o->ctx = cd_graph_ctx(g);
  return o;
}

void cd_optim_free(cd_optim *o) {
  if (!o) return;
  for (int i = 0; i < o->n; i++) {
    o->be->free(o->s[i].m);
    o->be->free(o->s[i].v);
    if (o->s[i].acc) o->be->free(o->s[i].acc);
  }
  free(o->s);
  free(o);
}

int cd_optim_add(cd_optim *o, cd_node *p) {
  if (!p || p->op != CD_OP_NONE || !(p->flags & CD_FLAG_TRAINABLE))
    return cd_set_error("optimizer: %s is not a trainable parameter", p ? p->name : "(null)");
  if (!p->data || !p->grad || !p->wstore)
    return cd_set_error("optimizer: %s has no value or gradient (plan the graph for training first)", p->name);
  if (o->n == o->cap) {
    o->cap = o->cap ? 2 * o->cap : 64;
    o->s = cd_realloc(o->s, o->cap * sizeof *o->s);
  }
  size_t bytes = cd_nbytes(p);
  slot *s = &o->s[o->n++];
  s->p = p;
  s->acc = NULL;
  s->m = o->be->alloc(bytes ? bytes : 64);
  s->v = o->be->alloc(bytes ? bytes : 64);
  o->be->zero(o->ctx, s->m, bytes);
  o->be->zero(o->ctx, s->v, bytes);
  return 0;
}

int cd_optim_count(const cd_optim *o) { return o->n; }
cd_node *cd_optim_param(const cd_optim *o, int i) { return i >= 0 && i < o->n ? o->s[i].p : NULL; }
int cd_optim_steps(const cd_optim *o) { return o->steps; }
void cd_optim_set_steps(cd_optim *o, int steps) { o->steps = steps; }

int cd_optim_accumulate(cd_optim *o, int k, int K) {
  if (K < 1 || k < 0 || k >= K) return cd_set_error("gradient accumulation: micro-batch %d of %d", k, K);
  if (K == 1) return 0;
  for (int i = 0; i < o->n; i++) {
    slot *s = &o->s[i];
    if (!s->acc && !(s->acc = o->be->alloc(cd_nbytes(s->p) ? cd_nbytes(s->p) : 64)))
      return cd_set_error("optimizer: out of backend memory for the gradient accumulator of %s", s->p->name);
    o->be->accumulate(o->ctx, s->acc, s->p->grad, s->p->n, k, K);
  }
  return 0;
}

double cd_optim_grad_norm(cd_optim *o) {
  double total = 0;
  for (int i = 0; i < o->n; i++) o->be->sumsq(o->ctx, o->s[i].p->grad, o->s[i].p->n, &total);
  return sqrt(total);
}

int cd_optim_adamw_step(cd_optim *o, const cd_adamw_opts *hp, cd_optim_report *r) {
  double total = cd_optim_grad_norm(o);
  double coef = 1;
  if (hp->max_grad_norm > 0) {
    coef = hp->max_grad_norm / (total + 1e-6);
    if (coef > 1) coef = 1;
  }
  if (r) *r = (cd_optim_report){.grad_norm = total, .clip_coef = coef};
  if (!isfinite(total)) return cd_set_error("the gradient is not finite at step %d", o->steps + 1);
  o->steps++;
  const double lr = hp->lr, b1 = hp->beta1, b2 = hp->beta2;
  const double bc1 = 1 - pow(b1, o->steps), bc2 = 1 - pow(b2, o->steps);
  const cd_adamw_args a = {.coef = coef, .b1 = b1, .b2 = b2, .eps = hp->eps, .decay = 1 - lr * hp->weight_decay,
                           .step_size = lr / bc1, .sbc2 = sqrt(bc2)};
  int64_t bad = 0;
  for (int i = 0; i < o->n; i++) {
    slot *s = &o->s[i];
    o->be->adamw(o->ctx, &a, s->p->data, s->p->grad, s->m, s->v, s->p->n);
    bad += o->be->nonfinite(o->ctx, s->p->data, s->p->n);
    cd_wstore_touch_backend(s->p->wstore, s->p->widx); /* the master weights are the store's copy */
  }
  if (r) r->nonfinite = bad;
  return 0;
}

static float *state(const cd_optim *o, int i, cd_optim_what what) {
  const slot *s = &o->s[i];
  switch (what) {
  case CD_OPTIM_VALUE: return s->p->data;
  case CD_OPTIM_GRAD: return s->p->grad;
  case CD_OPTIM_M: return s->m;
  case CD_OPTIM_V: return s->v;
  }
  return NULL;
}

int cd_optim_read(const cd_optim *o, int i, cd_optim_what what, float *host) {
  float *src = i >= 0 && i < o->n ? state(o, i, what) : NULL;
  if (!src) return cd_set_error("optimizer: no state %d of parameter %d", (int)what, i);
  o->be->download(o->ctx, host, src, cd_nbytes(o->s[i].p));
  return 0;
}

int cd_optim_write(cd_optim *o, int i, cd_optim_what what, const float *host) {
  float *dst = i >= 0 && i < o->n ? state(o, i, what) : NULL;
  if (!dst) return cd_set_error("optimizer: no state %d of parameter %d", (int)what, i);
  o->be->upload(o->ctx, dst, host, cd_nbytes(o->s[i].p));
  if (what == CD_OPTIM_VALUE) cd_wstore_touch_backend(o->s[i].p->wstore, o->s[i].p->widx);
  return 0;
}

int64_t cd_optim_numel(const cd_optim *o) {
  int64_t n = 0;
  for (int i = 0; i < o->n; i++) n += o->s[i].p->n;
  return n;
}

float *cd_optim_grad_buffer(const cd_optim *o, int i) { return i >= 0 && i < o->n ? o->s[i].p->grad : NULL; }
const char *cd_optim_backend_name(const cd_optim *o) { return o->be ? o->be->name : ""; }
void *cd_optim_stream(const cd_optim *o) { return o->ctx ? o->ctx->stream : NULL; }

int cd_optim_grads_get(const cd_optim *o, float *bucket) {
  for (int i = 0; i < o->n; i++) {
    if (!o->s[i].p->grad) return cd_set_error("optimizer: parameter %s has no gradient buffer", o->s[i].p->name);
    o->be->download(o->ctx, bucket, o->s[i].p->grad, cd_nbytes(o->s[i].p));
    bucket += o->s[i].p->n;
  }
  return 0;
}

int cd_optim_grads_set(cd_optim *o, const float *bucket) {
  for (int i = 0; i < o->n; i++) {
    if (!o->s[i].p->grad) return cd_set_error("optimizer: parameter %s has no gradient buffer", o->s[i].p->name);
    o->be->upload(o->ctx, o->s[i].p->grad, bucket, cd_nbytes(o->s[i].p));
    bucket += o->s[i].p->n;
  }
  return 0;
}
