/* compress.c - low-rank (SVD) compression of a delta (see compress.h). */
#include "compress.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "custom/lowrank.h"


static float *copy_f32(const float *x, int64_t n) {
  float *y = cd_malloc(sizeof(float) * (n ? n : 1));
  memcpy(y, x, sizeof(float) * n);
  return y;
}

int cd_delta_compress(const cd_delta *d, const cd_sd_model *m, double ratio, int full_if_larger, cd_delta **out,
                      cd_compress_layer **layers, int *nlayers) {
  *out = NULL;
  if (layers) *layers = NULL;
  if (nlayers) *nlayers = 0;
  if (!(ratio > 0 && ratio <= 1)) return cd_set_error("compress: --ratio must be in (0, 1] (got %g)", ratio);
  int n = cd_weights_count(d->w);
  for (int i = 0; i < n; i++)
    if (cd_ends_with(cd_weights_at(d->w, i)->name, ".lr_us") || cd_ends_with(cd_weights_at(d->w, i)->name, ".lr_vt"))
      return cd_set_error("compress: the delta still holds low-rank factors (resolve it against the model first)");
  cd_delta *c = cd_delta_new();
  cd_compress_layer *L = cd_calloc(n ? n : 1, sizeof *L);
  /* everything but the weights carries over */
  c->ntok = d->ntok;
  memcpy(c->tok, d->tok, sizeof c->tok);
  memcpy(c->init, d->init, sizeof c->init);
  c->d = d->d;
  c->d2 = d->d2;
  if (d->ntok) c->embeds = copy_f32(d->embeds, (int64_t)d->ntok * d->d);
  if (d->ntok && d->embeds2) c->embeds2 = copy_f32(d->embeds2, (int64_t)d->ntok * d->d2);
  c->ctx = d->ctx;
  c->family = d->family ? d->family : (int)m->family;
  snprintf(c->base_hash, sizeof c->base_hash, "%s", d->base_hash[0] ? d->base_hash : m->hash);
  snprintf(c->train, sizeof c->train, "%s", d->train);
  if (d->args) c->args = cd_strdup(d->args);
  c->lowrank = 1;
  c->ratio = ratio;
  snprintf(c->layout, sizeof c->layout, "cdiff");

  for (int i = 0; i < n; i++) {
    cd_weight *x = cd_weights_at(d->w, i);
    int64_t ne = cd_numel(x->ndim, x->ne);
    const cd_weights *src = m->unet_orig && cd_weights_get(m->unet_orig, x->name) ? m->unet_orig : m->unet.w;
    cd_weight *b = cd_weights_get(src, x->name);
    if (!b || cd_numel(b->ndim, b->ne) != ne) {
      cd_set_error("compress: delta weight '%s' does not fit the UNet of %s", x->name, m->path);
      goto fail;
    }
    snprintf(L[i].name, sizeof L[i].name, "%s", x->name);
    L[i].rows = (int)x->ne[0];
    L[i].cols = x->ndim == 2 ? (int)x->ne[1] : 0;
    L[i].bytes_before = sizeof(float) * ne;
    if (x->ndim != 2) { /* biases: nothing to factor */
      L[i].rank = -1;
      L[i].bytes_after = L[i].bytes_before;
      if (cd_weights_put(c->w, x->name, x->ndim, x->ne, copy_f32(x->data, ne))) goto fail;
      continue;
    }
    int rows = L[i].rows, cols = L[i].cols, k = 0;
    float *dW = cd_malloc(sizeof(float) * ne), *Us = NULL, *Vt = NULL;
    const float *bv = cd_weight_f32(b);
    for (int64_t j = 0; j < ne; j++) dW[j] = x->data[j] - bv[j];
    double err = 0;
    int rc = cd_lowrank(dW, rows, cols, ratio, &k, &Us, &Vt, &err);
    free(dW);
    if (rc) {
      cd_prefix_error("compress: %s", x->name);
      goto fail;
    }
    if (full_if_larger && k > 0 && (int64_t)k * (rows + cols) >= (int64_t)rows * cols) {
      free(Us);
      free(Vt);
      L[i].rank = -1;
      L[i].bytes_after = L[i].bytes_before;
      if (cd_weights_put(c->w, x->name, 2, x->ne, copy_f32(x->data, ne))) goto fail;
      continue;
    }
    L[i].rank = k;
    L[i].rel_err = err;
    L[i].bytes_after = sizeof(float) * (size_t)k * (rows + cols);
    if (k == 0) continue; /* ΔW = 0: the base is what the weight resolves to */
    char nm[256];
    snprintf(nm, sizeof nm, "%s.lr_us", x->name);
    int bad = cd_weights_put(c->w, nm, 2, (int64_t[]){rows, k}, Us);
    snprintf(nm, sizeof nm, "%s.lr_vt", x->name);
    if (bad) {
      free(Vt);
      goto fail;
    }
    if (cd_weights_put(c->w, nm, 2, (int64_t[]){k, cols}, Vt)) goto fail;
  }
  *out = c;
  if (layers) *layers = L;
  else free(L);
  if (nlayers) *nlayers = n;
  return 0;
fail:
  free(L);
  cd_delta_free(c);
  return -1;
}
