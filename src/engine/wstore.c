/* wstore.c - versioned weights in one backend allocation (wstore.h). */
#include "wstore.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "core/common.h"

typedef struct {
  char *name;
  cd_type type;
  int ndim;
  int64_t ne[CD_MAX_DIMS];
  size_t bytes, off;  /* in the backend block */
  const void *host;
  uint64_t version;   /* of the values */
  uint64_t on_device; /* version the backend copy holds */
} wentry;

struct cd_wstore {
  const cd_backend *be;
  cd_kernel_ctx ctx;
  int ctx_ready;
  wentry *e;
  int n, cap;
  void *block;
  size_t total;
};

cd_wstore *cd_wstore_new(const cd_backend *be) {
  cd_wstore *s = cd_calloc(1, sizeof *s);
  s->be = be;
  s->ctx.be = be;
  return s;
}

void cd_wstore_free(cd_wstore *s) {
  if (!s) return;
  for (int i = 0; i < s->n; i++) free(s->e[i].name);
  free(s->e);
  if (s->block) s->be->free(s->block);
  if (s->ctx_ready) s->be->ctx_free(&s->ctx);
  free(s);
}

int cd_wstore_add(cd_wstore *s, const char *name, cd_type t, int ndim, const int64_t *ne, const void *host) {
  if (s->block) return cd_set_error("weight store: %s added after commit", name);
  if (ndim < 0 || ndim > CD_MAX_DIMS || !host) return cd_set_error("weight store: %s: bad shape or no values", name);
  if (cd_wstore_find(s, name) >= 0) return cd_set_error("weight store: %s registered twice", name);
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 64;
    s->e = cd_realloc(s->e, s->cap * sizeof *s->e);
  }
  wentry *w = &s->e[s->n];
  memset(w, 0, sizeof *w);
  w->name = cd_strdup(name);
  w->type = t;
  w->ndim = ndim;
  for (int d = 0; d < ndim; d++) w->ne[d] = ne[d];
  w->bytes = (size_t)cd_numel(ndim, ne) * cd_type_size(t);
  w->host = host;
  w->version = 1;
  return s->n++;
}

int cd_wstore_find(const cd_wstore *s, const char *name) {
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->e[i].name, name)) return i;
  return -1;
}
int cd_wstore_count(const cd_wstore *s) { return s->n; }
size_t cd_wstore_bytes(const cd_wstore *s) { return s->total; }
void *cd_wstore_data(const cd_wstore *s, int i) { return i >= 0 && i < s->n && s->block ? (char *)s->block + s->e[i].off : NULL; }

int cd_wstore_commit(cd_wstore *s) {
  if (s->block) return 0;
  if (!s->ctx_ready) {
    if (s->be->ctx_init(&s->ctx)) return -1;
    s->ctx_ready = 1;
  }
  size_t total = 0;
  for (int i = 0; i < s->n; i++) {
    s->e[i].off = total;
    total += (s->e[i].bytes + 63) & ~(size_t)63; /* every weight 64-byte aligned */
  }
  s->total = total;
  if (!(s->block = s->be->alloc(total ? total : 64))) return cd_set_error("weight store: out of %s memory (%zu bytes)", s->be->name, total);
  /* one copy: the host values gathered into a contiguous staging buffer first */
  char *stage = cd_aligned_alloc(total ? total : 64);
  memset(stage, 0, total);
  for (int i = 0; i < s->n; i++) memcpy(stage + s->e[i].off, s->e[i].host, s->e[i].bytes);
  s->be->upload(&s->ctx, s->block, stage, total);
  cd_aligned_free(stage);
  for (int i = 0; i < s->n; i++) s->e[i].on_device = s->e[i].version;
  return 0;
}

void cd_wstore_touch(cd_wstore *s, int i, const void *host) {
  if (i < 0 || i >= s->n) return;
  if (host) s->e[i].host = host;
  s->e[i].version++;
}

void cd_wstore_touch_backend(cd_wstore *s, int i) {
  if (i < 0 || i >= s->n) return;
  s->e[i].on_device = ++s->e[i].version;
}

uint64_t cd_wstore_version(const cd_wstore *s, int i) { return i >= 0 && i < s->n ? s->e[i].version : 0; }

int cd_wstore_download(cd_wstore *s, int i, void *host) {
  if (i < 0 || i >= s->n || !s->block) return cd_set_error("weight store: no committed weight %d", i);
  s->be->download(&s->ctx, host, (char *)s->block + s->e[i].off, s->e[i].bytes);
  return 0;
}

int cd_wstore_sync(cd_wstore *s) {
  if (!s->block) return cd_set_error("weight store: sync before commit");
  int n = 0;
  for (int i = 0; i < s->n; i++) {
    wentry *w = &s->e[i];
    if (w->on_device == w->version) continue;
    s->be->upload(&s->ctx, (char *)s->block + w->off, w->host, w->bytes);
    w->on_device = w->version;
    n++;
  }
  return n;
}

cd_node *cd_wstore_param(cd_graph *g, cd_wstore *s, int i) {
  if (i < 0 || i >= s->n || !s->block) return cd_graph_fail(g, "weight store: no committed weight %d", i);
  if (cd_graph_backend(g) != s->be) return cd_graph_fail(g, "weight store: %s lives on another backend", s->e[i].name);
  const wentry *w = &s->e[i];
  cd_node *x = cd_param_typed(g, w->name, (char *)s->block + w->off, w->type, w->ndim, w->ne);
  cd_graph_use_store(g, s);
  return x;
}
