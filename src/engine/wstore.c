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
  size_t bytes;       /* current size of the values */
  size_t off, cap;    /* place in the block (cap 0: none, added after commit) */
  void *own;          /* its own backend allocation once it outgrew its place */
  size_t own_cap;
  const void *host;
  uint64_t version;   /* of the values */
  uint64_t on_device; /* version the backend copy holds */
  int host_stale;     /* the backend copy is newer than host (optimizer) */
} wentry;

struct cd_wstore {
  const cd_backend *be;
  cd_kernel_ctx ctx;
  int ctx_ready, committed, unique;
  wentry *e;
  int n, cap;
  void *block;
  size_t total;
};

static cd_wstore *store_new(const cd_backend *be, int unique) {
  cd_wstore *s = cd_calloc(1, sizeof *s);
  s->be = be;
  s->ctx.be = be;
  s->unique = unique;
  return s;
}
cd_wstore *cd_wstore_new(const cd_backend *be) { return store_new(be, 1); }
/* a graph's own parameters (cd_param): names need not be unique */
cd_wstore *cd_wstore_new_private(const cd_backend *be) { return store_new(be, 0); }

void cd_wstore_free(cd_wstore *s) {
  if (!s) return;
  for (int i = 0; i < s->n; i++) {
    free(s->e[i].name);
    if (s->e[i].own) s->be->free(s->e[i].own);
  }
  free(s->e);
  if (s->block) s->be->free(s->block);
  if (s->ctx_ready) s->be->ctx_free(&s->ctx);
  free(s);
}

static size_t align64(size_t b) { return (b + 63) & ~(size_t)63; }

static int check_shape(const char *name, cd_type t, int ndim, const int64_t *ne, const void *host) {
  if (ndim < 0 || ndim > CD_MAX_DIMS || !host) return cd_set_error("weight store: %s: bad shape or no values", name);
  if (t != CD_TYPE_F32 && t != CD_TYPE_F16 && t != CD_TYPE_BF16 && t != CD_TYPE_I32)
    return cd_set_error("weight store: %s: unknown storage type %d", name, (int)t);
  for (int d = 0; d < ndim; d++)
    if (ne[d] < 0) return cd_set_error("weight store: %s: negative dimension", name);
  return 0;
}

static void set_shape(wentry *w, cd_type t, int ndim, const int64_t *ne, const void *host) {
  w->type = t;
  w->ndim = ndim;
  for (int d = 0; d < CD_MAX_DIMS; d++) w->ne[d] = d < ndim ? ne[d] : 1;
  w->bytes = (size_t)cd_numel(ndim, ne) * cd_type_size(t);
  w->host = host;
}

int cd_wstore_add(cd_wstore *s, const char *name, cd_type t, int ndim, const int64_t *ne, const void *host) {
  if (check_shape(name, t, ndim, ne, host)) return -1;
  if (s->unique && cd_wstore_find(s, name) >= 0) return cd_set_error("weight store: %s registered twice", name);
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 64;
    s->e = cd_realloc(s->e, s->cap * sizeof *s->e);
  }
  wentry *w = &s->e[s->n];
  memset(w, 0, sizeof *w);
  w->name = cd_strdup(name);
  set_shape(w, t, ndim, ne, host);
  w->version = 1; /* on_device 0: uploaded by commit, or by the next sync once committed */
  return s->n++;
}

int cd_wstore_find(const cd_wstore *s, const char *name) {
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->e[i].name, name)) return i;
  return -1;
}
int cd_wstore_count(const cd_wstore *s) { return s->n; }
const char *cd_wstore_name(const cd_wstore *s, int i) { return i >= 0 && i < s->n ? s->e[i].name : NULL; }
const cd_backend *cd_wstore_backend(const cd_wstore *s) { return s->be; }

size_t cd_wstore_bytes(const cd_wstore *s) {
  size_t b = s->block ? s->total : 0;
  for (int i = 0; i < s->n; i++) b += s->e[i].own ? s->e[i].own_cap : 0;
  return b;
}

void *cd_wstore_ptr(const cd_wstore *s, int i) {
  if (i < 0 || i >= s->n) return NULL;
  const wentry *w = &s->e[i];
  if (s->be->host_memory) return (void *)w->host;
  if (w->own) return w->own;
  return s->block && w->cap ? (char *)s->block + w->off : NULL;
}

static int part_fits(const wentry *w, int64_t off, int ndim, const int64_t *ne) {
  if (w->ndim != ndim || off < 0) return 0;
  for (int d = 1; d < ndim; d++)
    if (w->ne[d] != ne[d]) return 0;
  return off + cd_numel(ndim, ne) <= cd_numel(w->ndim, w->ne);
}

int cd_wstore_matches(const cd_wstore *s, int i, const cd_node *n) {
  if (i < 0 || i >= s->n) return 0;
  const wentry *w = &s->e[i];
  if (w->type != n->type) return 0;
  if (n->wpart) return part_fits(w, n->woff, n->ndim, n->ne);
  if (w->ndim != n->ndim) return 0;
  for (int d = 0; d < w->ndim; d++)
    if (w->ne[d] != n->ne[d]) return 0;
  return 1;
}

/* the backend place for w's current values: its slot, or an allocation of its own */
static void *place(cd_wstore *s, wentry *w) {
  if (w->bytes <= w->cap) {
    if (w->own) s->be->free(w->own);
    w->own = NULL;
    w->own_cap = 0;
    return (char *)s->block + w->off;
  }
  if (w->own && w->own_cap >= w->bytes) return w->own;
  if (w->own) s->be->free(w->own);
  w->own_cap = align64(w->bytes ? w->bytes : 1);
  if (!(w->own = s->be->alloc(w->own_cap))) {
    w->own_cap = 0;
    cd_set_error("weight store: out of %s memory for %s (%zu bytes)", s->be->name, w->name, w->bytes);
    return NULL;
  }
  return w->own;
}

int cd_wstore_commit(cd_wstore *s) {
  if (s->committed) return 0;
  if (!s->ctx_ready) {
    if (s->be->ctx_init(&s->ctx)) return -1;
    s->ctx_ready = 1;
  }
  if (s->be->host_memory) { /* the host values are the backend's */
    for (int i = 0; i < s->n; i++) s->e[i].on_device = s->e[i].version;
    s->committed = 1;
    return 0;
  }
  size_t total = 0;
  for (int i = 0; i < s->n; i++) {
    s->e[i].off = total;
    s->e[i].cap = s->e[i].bytes;
    total += align64(s->e[i].bytes); /* every weight 64-byte aligned */
  }
  s->total = total;
  if (!(s->block = s->be->alloc(total ? total : 64))) return cd_set_error("weight store: out of %s memory (%zu bytes)", s->be->name, total);
  /* one copy per run of weights whose host values sit at the same relative
   * offsets as in the block (the whole component when it was loaded into one
   * host block): no staging copy on the host */
  for (int i = 0; i < s->n;) {
    int j = i + 1;
    const char *h0 = s->e[i].host;
    while (j < s->n && (const char *)s->e[j].host == h0 + (s->e[j].off - s->e[i].off)) j++;
    const size_t len = s->e[j - 1].off + s->e[j - 1].bytes - s->e[i].off;
    if (len) s->be->upload(&s->ctx, (char *)s->block + s->e[i].off, h0, len);
    for (int k = i; k < j; k++) s->e[k].on_device = s->e[k].version;
    i = j;
  }
  s->committed = 1;
  return 0;
}

void cd_wstore_touch(cd_wstore *s, int i, const void *host) {
  if (i < 0 || i >= s->n) return;
  if (host) s->e[i].host = host;
  s->e[i].version++;
  s->e[i].host_stale = 0;
}

int cd_wstore_set(cd_wstore *s, int i, cd_type t, int ndim, const int64_t *ne, const void *host) {
  if (i < 0 || i >= s->n) return cd_set_error("weight store: no weight %d", i);
  if (check_shape(s->e[i].name, t, ndim, ne, host)) return -1;
  set_shape(&s->e[i], t, ndim, ne, host);
  s->e[i].version++;
  s->e[i].host_stale = 0;
  return 0;
}

void cd_wstore_touch_backend(cd_wstore *s, int i) {
  if (i < 0 || i >= s->n) return;
  s->e[i].on_device = ++s->e[i].version;
  s->e[i].host_stale = !s->be->host_memory;
}

int cd_wstore_host_stale(const cd_wstore *s, int i) { return i >= 0 && i < s->n && s->e[i].host_stale; }
uint64_t cd_wstore_version(const cd_wstore *s, int i) { return i >= 0 && i < s->n ? s->e[i].version : 0; }

int cd_wstore_download(cd_wstore *s, int i, void *host) {
  void *p = s->committed ? cd_wstore_ptr(s, i) : NULL;
  if (!p) return cd_set_error("weight store: no committed weight %d", i);
  if (p != host) s->be->download(&s->ctx, host, p, s->e[i].bytes);
  if (host == s->e[i].host) s->e[i].host_stale = 0; /* the registered host values are current again */
  return 0;
}

int cd_wstore_sync(cd_wstore *s) {
  if (!s->committed && cd_wstore_commit(s)) return -1;
  int n = 0;
  for (int i = 0; i < s->n; i++) {
    wentry *w = &s->e[i];
    if (w->on_device == w->version) continue;
    if (!s->be->host_memory) {
      void *dst = place(s, w);
      if (!dst) return -1;
      if (w->bytes) s->be->upload(&s->ctx, dst, w->host, w->bytes);
      n++;
    }
    w->on_device = w->version;
  }
  return n;
}

cd_node *cd_wstore_param(cd_graph *g, cd_wstore *s, int i) {
  if (i < 0 || i >= s->n) return cd_graph_fail(g, "weight store: no weight %d", i);
  const wentry *w = &s->e[i];
  if (cd_graph_backend(g) != s->be) return cd_graph_fail(g, "weight store: %s lives on another backend", w->name);
  return cd_graph_param_from(g, w->name, w->type, w->ndim, w->ne, s, i, 0, 0);
}

cd_node *cd_wstore_param_part(cd_graph *g, cd_wstore *s, int i, int64_t off, int ndim, const int64_t *ne, const char *name) {
  if (i < 0 || i >= s->n) return cd_graph_fail(g, "weight store: no weight %d", i);
  const wentry *w = &s->e[i];
  if (cd_graph_backend(g) != s->be) return cd_graph_fail(g, "weight store: %s lives on another backend", w->name);
  if (!part_fits(w, off, ndim, ne)) return cd_graph_fail(g, "weight store: %s: part from element %ld outside the weight", name, (long)off);
  return cd_graph_param_from(g, name, w->type, ndim, ne, s, i, 1, off);
}
