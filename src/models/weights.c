/* weights.c - name -> tensor store (f32, f16 or bf16) with an open-addressing hash index. */
#include "weights.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/common.h"
#include "engine/wstore.h"

#define MAX_STORES 4 /* backends one collection is used on at once */

struct cd_weights {
  cd_weight *v;
  int n, cap;
  int *idx; /* hash slots: index into v, -1 empty */
  int nslots;
  cd_wstore *st[MAX_STORES]; /* one per backend a graph used them on; entry i is weight i */
  int nst;
  char *block; /* the loader's host block (cd_weights_reserve): mapped, cap bytes, used so far */
  size_t block_cap, block_used;
};

static int in_block(const cd_weights *w, const void *p) {
  return w && w->block && (const char *)p >= w->block && (const char *)p < w->block + w->block_cap;
}
/* frees values unless they live in the block (which is unmapped as a whole) */
static void release(const cd_weights *w, void *p) {
  if (!in_block(w, p)) free(p);
}

static void *host_of(const cd_weight *x) { return x->type == CD_TYPE_F32 ? (void *)x->data : (void *)x->h16; }

/* A backend copy newer than the host values (an optimizer step) is
 * downloaded, and the other stores take the new values at their next sync. */
static void pull(const cd_weight *cx) {
  cd_weight *x = (cd_weight *)cx; /* the values stay the same: they only become current */
  cd_weights *w = x->owner;
  for (int k = 0; w && k < w->nst; k++) {
    if (!cd_wstore_host_stale(w->st[k], x->index)) continue;
    if (cd_wstore_download(w->st[k], x->index, host_of(x))) {
      cd_warn("%s", cd_last_error());
      continue;
    }
    for (int j = 0; j < w->nst; j++)
      if (j != k) cd_wstore_touch(w->st[j], x->index, NULL);
  }
}

int cd_weight_changed(cd_weight *x) {
  cd_weights *w = x->owner;
  for (int k = 0; w && k < w->nst; k++)
    if (cd_wstore_set(w->st[k], x->index, x->type, x->ndim, x->ne, host_of(x))) return -1;
  return 0;
}

void *cd_weight_host(const cd_weight *x) {
  pull(x);
  return host_of(x);
}

cd_wstore *cd_weights_store(cd_weights *w, const cd_backend *be) {
  for (int k = 0; k < w->nst; k++)
    if (cd_wstore_backend(w->st[k]) == be) return w->st[k];
  if (w->nst == MAX_STORES) {
    cd_set_error("weights used on more than %d backends", MAX_STORES);
    return NULL;
  }
  for (int i = 0; i < w->n; i++) pull(&w->v[i]); /* the host values are what the new store copies */
  cd_wstore *s = cd_wstore_new(be);
  for (int i = 0; i < w->n; i++) {
    const cd_weight *x = &w->v[i];
    if (cd_wstore_add(s, x->name, x->type, x->ndim, x->ne, host_of(x)) != i) {
      cd_wstore_free(s);
      return NULL;
    }
  }
  if (cd_wstore_commit(s)) {
    cd_wstore_free(s);
    return NULL;
  }
  w->st[w->nst++] = s;
  return s;
}

cd_weights *cd_weights_new(void) { return cd_calloc(1, sizeof(cd_weights)); }

void cd_weights_free(cd_weights *w) {
  if (!w) return;
  for (int k = 0; k < w->nst; k++) cd_wstore_free(w->st[k]);
  for (int i = 0; i < w->n; i++) {
    free(w->v[i].name);
    release(w, w->v[i].data);
    release(w, w->v[i].h16);
  }
  if (w->block) munmap(w->block, w->block_cap);
  free(w->v);
  free(w->idx);
  free(w);
}

static void rehash(cd_weights *w) {
  w->nslots = w->nslots ? w->nslots * 2 : 1024;
  free(w->idx);
  w->idx = cd_malloc(w->nslots * sizeof(int));
  for (int i = 0; i < w->nslots; i++) w->idx[i] = -1;
  for (int i = 0; i < w->n; i++) {
    uint64_t h = cd_fnv1a(w->v[i].name, strlen(w->v[i].name)) & (w->nslots - 1);
    while (w->idx[h] >= 0) h = (h + 1) & (w->nslots - 1);
    w->idx[h] = i;
  }
}

static int find(const cd_weights *w, const char *name) {
  if (!w->nslots) return -1;
  uint64_t h = cd_fnv1a(name, strlen(name)) & (w->nslots - 1);
  while (w->idx[h] >= 0) {
    if (!strcmp(w->v[w->idx[h]].name, name)) return w->idx[h];
    h = (h + 1) & (w->nslots - 1);
  }
  return -1;
}

int cd_weights_put(cd_weights *w, const char *name, int ndim, const int64_t *ne, float *data) {
  return cd_weights_put_typed(w, name, ndim, ne, CD_TYPE_F32, data);
}

int cd_weights_put_typed(cd_weights *w, const char *name, int ndim, const int64_t *ne, cd_type type, void *data) {
  if (ndim < 0 || ndim > 4) {
    release(w, data);
    return cd_set_error("weight %s: %d dimensions (at most 4 supported)", name, ndim);
  }
  if (type != CD_TYPE_F32 && type != CD_TYPE_F16 && type != CD_TYPE_BF16) {
    release(w, data);
    return cd_set_error("weight %s: storage type %s is not a float type", name, cd_type_name(type));
  }
  int i = find(w, name);
  if (i >= 0) { /* replace */
    release(w, w->v[i].data);
    release(w, w->v[i].h16);
    w->v[i].data = NULL;
    w->v[i].h16 = NULL;
    w->v[i].has_digest = 0;
  } else {
    if (w->n == w->cap) {
      w->cap = w->cap ? 2 * w->cap : 256;
      w->v = cd_realloc(w->v, w->cap * sizeof *w->v);
    }
    i = w->n++;
    memset(&w->v[i], 0, sizeof w->v[i]);
    w->v[i].name = cd_strdup(name);
    if (2 * w->n > w->nslots) rehash(w);
    else {
      uint64_t h = cd_fnv1a(name, strlen(name)) & (w->nslots - 1);
      while (w->idx[h] >= 0) h = (h + 1) & (w->nslots - 1);
      w->idx[h] = i;
    }
  }
  cd_weight *x = &w->v[i];
  const int added = !x->owner;
  x->owner = w;
  x->index = i;
  x->ndim = ndim;
  for (int d = 0; d < 4; d++) x->ne[d] = d < ndim ? ne[d] : 1;
  x->type = type;
  if (type == CD_TYPE_F32) x->data = data;
  else x->h16 = data;
  if (!added) return cd_weight_changed(x);
  for (int k = 0; k < w->nst; k++) /* a weight new to stores made already */
    if (cd_wstore_add(w->st[k], name, type, ndim, x->ne, host_of(x)) != i) return -1;
  return 0;
}

float *cd_weight_f32(cd_weight *x) {
  pull(x);
  if (x->type == CD_TYPE_F32) return x->data;
  int64_t n = cd_numel(x->ndim, x->ne);
  float *d = cd_malloc((size_t)(n ? n : 1) * sizeof(float));
  for (int64_t k = 0; k < n; k++) d[k] = x->type == CD_TYPE_F16 ? cd_f16_to_f32(x->h16[k]) : cd_bf16_to_f32(x->h16[k]);
  release(x->owner, x->h16);
  x->h16 = NULL;
  x->data = d;
  x->type = CD_TYPE_F32;
  if (cd_weight_changed(x)) cd_warn("%s", cd_last_error()); /* only fails for an unknown type */
  return d;
}

static void narrow_into(const float *f, int64_t n, cd_type type, uint16_t *h) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t k = 0; k < n; k++) h[k] = type == CD_TYPE_F16 ? cd_f32_to_f16(f[k]) : cd_f32_to_bf16(f[k]);
}

int cd_weights_reserve(cd_weights *w, size_t bytes) {
  if (w->block || !bytes) return 0;
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return 0; /* not fatal: the weights get allocations of their own */
  w->block = p;
  w->block_cap = bytes;
  w->block_used = 0;
  return 0;
}

void *cd_weights_alloc(cd_weights *w, size_t bytes) {
  const size_t off = (w->block_used + 63) & ~(size_t)63;
  if (w->block && off + bytes <= w->block_cap) {
    w->block_used = off + bytes;
    return w->block + off;
  }
  return cd_malloc(bytes ? bytes : 1);
}

void cd_weights_seal(cd_weights *w) {
  if (!w->block) return;
  const size_t pg = (size_t)sysconf(_SC_PAGESIZE), keep = (w->block_used + pg - 1) / pg * pg;
  if (keep < w->block_cap && !munmap(w->block + keep, w->block_cap - keep)) w->block_cap = keep;
  if (!keep) { /* nothing was put there */
    munmap(w->block, w->block_cap);
    w->block = NULL;
    w->block_cap = 0;
  }
}

size_t cd_weights_block_bytes(const cd_weights *w) { return w->block ? w->block_used : 0; }

int cd_weights_put_f32_as(cd_weights *w, const char *name, int ndim, const int64_t *ne, cd_type type, const float *src) {
  const int64_t n = cd_numel(ndim, ne);
  if (type == CD_TYPE_F32 || ndim < 2) {
    float *d = cd_weights_alloc(w, (size_t)n * sizeof(float));
    memcpy(d, src, (size_t)n * sizeof(float));
    return cd_weights_put(w, name, ndim, ne, d);
  }
  uint16_t *h = cd_weights_alloc(w, (size_t)n * sizeof(uint16_t));
  narrow_into(src, n, type, h);
  return cd_weights_put_typed(w, name, ndim, ne, type, h);
}

void cd_weight_narrow(cd_weight *x, cd_type type) {
  if (type == CD_TYPE_F32 || type == x->type || x->ndim < 2) return;
  float *f = cd_weight_f32(x);
  int64_t n = cd_numel(x->ndim, x->ne);
  uint16_t *h = cd_malloc((size_t)(n ? n : 1) * sizeof(uint16_t));
  narrow_into(f, n, type, h);
  release(x->owner, f);
  x->data = NULL;
  x->h16 = h;
  x->type = type;
  if (cd_weight_changed(x)) cd_warn("%s", cd_last_error());
}

void cd_weight_row_f32(const cd_weight *x, int64_t r, float *dst) {
  pull(x);
  const int64_t D = x->ndim > 1 ? x->ne[1] : 1;
  for (int64_t k = 0; k < D; k++)
    dst[k] = x->type == CD_TYPE_F32 ? x->data[r * D + k] : x->type == CD_TYPE_F16 ? cd_f16_to_f32(x->h16[r * D + k]) : cd_bf16_to_f32(x->h16[r * D + k]);
}

size_t cd_weight_bytes(const cd_weight *x) { return (size_t)cd_numel(x->ndim, x->ne) * cd_type_size(x->type); }
size_t cd_weights_bytes(const cd_weights *w) {
  size_t s = 0;
  for (int i = 0; w && i < w->n; i++) s += cd_weight_bytes(&w->v[i]);
  return s;
}

cd_weight *cd_weights_get(const cd_weights *w, const char *name) {
  int i = find(w, name);
  return i >= 0 ? &w->v[i] : NULL;
}
int cd_weights_count(const cd_weights *w) { return w->n; }
cd_weight *cd_weights_at(const cd_weights *w, int i) { return i >= 0 && i < w->n ? &w->v[i] : NULL; }
int64_t cd_weights_numel(const cd_weights *w) {
  int64_t s = 0;
  for (int i = 0; i < w->n; i++) s += cd_numel(w->v[i].ndim, w->v[i].ne);
  return s;
}
void cd_weights_clear_used(cd_weights *w) {
  for (int i = 0; i < w->n; i++) w->v[i].used = 0;
}

int cd_weights_check_unused(const cd_weights *w, const char *component, const char *path) {
  int n = 0;
  const char *first = NULL;
  for (int i = 0; i < w->n; i++)
    if (!w->v[i].used) {
      if (!first) first = w->v[i].name;
      n++;
    }
  if (!n) return 0;
  return cd_set_error("%s: unknown %s weight '%s'%s (not part of the detected architecture)", path, component, first,
                      n > 1 ? " and others" : "");
}

static cd_node *wparam(cd_graph *g, cd_weights *w, int ndim, const int64_t *ne, int optional, const char *fmt, va_list ap) {
  char name[256];
  vsnprintf(name, sizeof name, fmt, ap);
  cd_weight *x = cd_weights_get(w, name);
  if (!x) return optional ? NULL : cd_graph_fail(g, "missing weight '%s'", name);
  if (ndim) {
    int ok = x->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = x->ne[d] == ne[d];
    if (!ok) {
      char a[96] = "", b[96] = "";
      int ka = 0, kb = 0;
      for (int d = 0; d < x->ndim; d++) ka += snprintf(a + ka, sizeof a - ka, d ? ",%ld" : "%ld", (long)x->ne[d]);
      for (int d = 0; d < ndim; d++) kb += snprintf(b + kb, sizeof b - kb, d ? ",%ld" : "%ld", (long)ne[d]);
      return cd_graph_fail(g, "weight '%s' has shape [%s], expected [%s]", name, a, b);
    }
  }
  x->used = 1;
  cd_wstore *st = cd_weights_store(w, cd_graph_backend(g));
  if (!st) return cd_graph_fail(g, "weight '%s': %s", name, cd_last_error());
  x->node = cd_wstore_param(g, st, x->index);
  return x->node;
}

cd_node *cd_w_rows(cd_graph *g, cd_weights *w, int64_t r0, int64_t r1, const char *name) {
  cd_weight *x = cd_weights_get(w, name);
  if (!x) return cd_graph_fail(g, "missing weight '%s'", name);
  if (x->ndim != 2 || r0 < 0 || r1 <= r0 || r1 > x->ne[0])
    return cd_graph_fail(g, "weight '%s': rows [%ld, %ld) of a %d-D weight with %ld rows", name, (long)r0, (long)r1, x->ndim, (long)x->ne[0]);
  x->used = 1;
  const int64_t off = r0 * x->ne[1];
  char nm[300];
  snprintf(nm, sizeof nm, "%s[%ld:%ld]", name, (long)r0, (long)r1);
  cd_wstore *st = cd_weights_store(w, cd_graph_backend(g));
  if (!st) return cd_graph_fail(g, "weight '%s': %s", name, cd_last_error());
  return cd_wstore_param_part(g, st, x->index, off, 2, (int64_t[]){r1 - r0, x->ne[1]}, nm);
}

cd_node *cd_w(cd_graph *g, cd_weights *w, int ndim, const int64_t *ne, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cd_node *n = wparam(g, w, ndim, ne, 0, fmt, ap);
  va_end(ap);
  return n;
}
cd_node *cd_w_opt(cd_graph *g, cd_weights *w, int ndim, const int64_t *ne, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cd_node *n = wparam(g, w, ndim, ne, 1, fmt, ap);
  va_end(ap);
  return n;
}
