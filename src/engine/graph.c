/* graph.c - graph construction, shape inference, memory planning, execution.
 *
 * Timeline used by the planner: forward step i runs node i; backward step
 * 2N-1-i runs node i's backward (with activation checkpointing, a segment's
 * recomputed forwards are inserted before its backward steps: g->sched). Inputs and outputs live over the whole
 * timeline: inputs are written once and read by many runs (a sampler sets the
 * text context once for all its steps). Every buffer (value, aux, gradient) gets an
 * interval [first, last] of steps on this timeline and the planner packs the
 * intervals into one arena so that buffers whose intervals do not overlap
 * share memory. Views (reshape) alias their root's value and gradient.
 */
#include "graph.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ops.h"
#include "wstore.h"
#include "core/common.h"


struct cd_graph {
  cd_node **nodes;
  int n, cap;
  char err[512]; /* first build error; reported by cd_graph_plan */
  const cd_backend *be;
  cd_kernel_ctx ctx;
  void *arena;
  size_t arena_bytes, naive_bytes, scratch_bytes;
  int planned, training, ctx_ready;
  cd_node *loss;
  int *zero_start; /* per backward step: index into zero_list */
  int T;           /* steps of the timeline: N forward, then the backward schedule */
  int *sched;      /* step s >= N: node id << 1 | 1 for its backward, | 0 for a recomputed forward */
  int nrecompute;  /* recomputed forward kernels per backward (checkpointing) */
  int cur_seg, nseg; /* checkpoint segment of the nodes being built (0: none), segments so far */
  cd_node **zero_list;
  int profile;        /* CDIFF_PROFILE set: time per op, printed by cd_graph_free */
  double prof_t[2][CD_OP_COUNT];
  long prof_n[2][CD_OP_COUNT];
  struct cd_wstore **stores; /* weight stores its parameters come from: synced before each forward */
  int nstores;
  struct cd_wstore *own;     /* the graph's own parameters (cd_param) */
  cd_node **params;          /* parameter nodes, whose value pointers follow their store entries */
  int nparams, params_cap;
};

static const char *type_names[] = {"f32", "f16", "bf16", "i32"};
size_t cd_type_size(cd_type t) { return t == CD_TYPE_F16 || t == CD_TYPE_BF16 ? 2 : 4; }
const char *cd_type_name(cd_type t) { return t >= CD_TYPE_F32 && t <= CD_TYPE_I32 ? type_names[t] : "?"; }
int cd_type_parse(const char *s, cd_type *out) {
  for (int t = CD_TYPE_F32; t <= CD_TYPE_BF16; t++)
    if (s && !strcmp(s, type_names[t])) {
      *out = (cd_type)t;
      return 0;
    }
  return -1;
}

int64_t cd_numel(int ndim, const int64_t *ne) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= ne[i];
  return n;
}

cd_graph *cd_graph_new_on(const cd_backend *be) {
  cd_graph *g = cd_calloc(1, sizeof *g);
  g->be = be;
  g->ctx.be = be;
  g->profile = getenv("CDIFF_PROFILE") != NULL;
  return g;
}
static const cd_backend *default_be;
const cd_backend *cd_backend_default(void) { return default_be ? default_be : cd_backend_cpu(); }
void cd_backend_set_default(const cd_backend *be) { default_be = be; }
cd_graph *cd_graph_new(void) { return cd_graph_new_on(cd_backend_default()); }

const cd_backend *cd_graph_backend(const cd_graph *g) { return g->be; }
const cd_kernel_ctx *cd_graph_ctx(const cd_graph *g) { return &g->ctx; }

static void use_store(cd_graph *g, struct cd_wstore *s) {
  for (int i = 0; i < g->nstores; i++)
    if (g->stores[i] == s) return;
  g->stores = cd_realloc(g->stores, (g->nstores + 1) * sizeof *g->stores);
  g->stores[g->nstores++] = s;
}

/* Syncs the stores (uploads what changed) and points every parameter at its
 * entry's backend copy, which moves when a weight outgrew its place; views of
 * a parameter follow. A weight whose type or shape changed since the graph was
 * built is an error: the graph must be built again. */
static int bind_params(cd_graph *g) {
  for (int i = 0; i < g->nstores; i++)
    if (cd_wstore_sync(g->stores[i]) < 0) return -1;
  int moved = 0;
  for (int i = 0; i < g->nparams; i++) {
    cd_node *x = g->params[i];
    if (!cd_wstore_matches(x->wstore, x->widx, x))
      return cd_set_error("graph: weight %s changed type or shape since the graph was built (build it again)", x->name);
    float *p = (float *)((char *)cd_wstore_ptr(x->wstore, x->widx) + (size_t)x->woff * cd_type_size(x->type));
    if (p != x->data) x->data = p, moved = 1;
  }
  if (moved)
    for (int i = 0; i < g->n; i++) {
      cd_node *x = g->nodes[i];
      if (cd_op_has(x->op, CD_OPF_ALIAS) && x->src[0]) x->data = x->src[0]->data; /* in order: chains resolve */
    }
  return 0;
}

/* CDIFF_PROFILE: seconds per op kind, forward and backward, over the graph's
 * life, as the backend's timer measured them */
static void print_profile(const cd_graph *g) {
  double total = 0;
  for (int d = 0; d < 2; d++)
    for (int o = 0; o < CD_OP_COUNT; o++) total += g->prof_t[d][o];
  if (total <= 0) return;
  fprintf(stderr, "profile (%d nodes, %.3f s):\n", g->n, total);
  for (int d = 0; d < 2; d++)
    for (int o = 0; o < CD_OP_COUNT; o++)
      if (g->prof_n[d][o])
        fprintf(stderr, "  %-16s %-8s %8.3f s %5.1f%%  (%ld calls)\n", cd_op_name((cd_op)o), d ? "backward" : "forward",
                g->prof_t[d][o], 100 * g->prof_t[d][o] / total, g->prof_n[d][o]);
}

void cd_graph_free(cd_graph *g) {
  if (!g) return;
  if (g->profile) print_profile(g);
  for (int i = 0; i < g->n; i++) {
    cd_node *x = g->nodes[i];
    free(x);
  }
  free(g->nodes);
  if (g->arena) g->be->free(g->arena);
  if (g->ctx_ready) g->be->ctx_free(&g->ctx);
  free(g->zero_start);
  free(g->zero_list);
  free(g->sched);
  free(g->stores);
  free(g->params);
  cd_wstore_free(g->own);
  free(g);
}

void cd_graph_checkpoint_begin(cd_graph *g) { g->cur_seg = ++g->nseg; }
void cd_graph_checkpoint_end(cd_graph *g) { g->cur_seg = 0; }
int cd_graph_recomputed(const cd_graph *g) { return g->nrecompute; }

void cd_node_set_name(cd_node *n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(n->name, sizeof n->name, fmt, ap);
  va_end(ap);
}

static cd_node *new_node(cd_graph *g, cd_op op, int ndim, const int64_t *ne) {
  cd_node *x = cd_calloc(1, sizeof *x);
  x->op = op;
  x->ndim = ndim;
  for (int i = 0; i < ndim; i++) x->ne[i] = ne[i];
  x->n = cd_numel(ndim, ne);
  x->id = g->n;
  x->seg = g->cur_seg;
  x->data_off = x->grad_off = x->aux_off = x->scratch_off[0] = x->scratch_off[1] = -1;
  if (g->n == g->cap) {
    g->cap = g->cap ? 2 * g->cap : 256;
    g->nodes = cd_realloc(g->nodes, g->cap * sizeof *g->nodes);
  }
  g->nodes[g->n++] = x;
  g->planned = 0;
  return x;
}

/* A build error (a shape mismatch: a model bug or a checkpoint that slipped
 * through validation) is recorded, and a placeholder keeps the build going so
 * that cd_graph_plan can report it instead of crashing. */
cd_node *cd_graph_fail(cd_graph *g, const char *fmt, ...) {
  if (!g->err[0]) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err, sizeof g->err, fmt, ap);
    va_end(ap);
  }
  int64_t one = 1;
  return new_node(g, CD_OP_NONE, 1, &one);
}

/* cd_graph_fail for the builders below: "graph: OP: ..." (fmt a literal) */
#define BUILD_ERR(g, op, fmt, ...) cd_graph_fail(g, "graph: %s: " fmt, op, __VA_ARGS__)

static void shape_str(const cd_node *x, char *buf, size_t cap) {
  int k = snprintf(buf, cap, "%s[", x->name[0] ? x->name : "?");
  for (int i = 0; i < x->ndim && k < (int)cap; i++) k += snprintf(buf + k, cap - k, i ? ",%ld" : "%ld", (long)x->ne[i]);
  if (k < (int)cap) snprintf(buf + k, cap - k, "]");
}
#define SHAPE_ERR(g, opname, why, a, b) do { char s1_[128], s2_[128]; shape_str(a, s1_, sizeof s1_); \
    shape_str(b, s2_, sizeof s2_); return BUILD_ERR(g, opname, "%s: %s vs %s", why, s1_, s2_); } while (0)

/* Sources an op reads in a storage type other than f32 (graph.h, cd_type). */
static int takes_type(cd_op op, int slot, cd_type t) {
  if (t == CD_TYPE_F32 || op == CD_OP_VIEW) return 1;
  if (t == CD_TYPE_F16 || t == CD_TYPE_BF16) return (op == CD_OP_LINEAR || op == CD_OP_CONV2D || op == CD_OP_EMBEDDING) && slot == 1;
  return op == CD_OP_EMBEDDING && slot == 0; /* i32 ids */
}

/* Sets x's sources; one the op cannot read in its storage type is replaced by
 * a CAST to f32, placed just before x (x is the newest node). */
static void set_src(cd_graph *g, cd_node *x, int nsrc, cd_node *a, cd_node *b, cd_node *c, cd_node *d) {
  x->nsrc = nsrc;
  x->src[0] = a; x->src[1] = b; x->src[2] = c; x->src[3] = d;
  for (int s = 0; s < nsrc; s++) {
    cd_node *v = x->src[s];
    if (!v || takes_type(x->op, s, v->type)) continue;
    cd_node *k = new_node(g, CD_OP_CAST, v->ndim, v->ne);
    k->nsrc = 1;
    k->src[0] = v;
    snprintf(k->name, sizeof k->name, "%.90s.f32", v->name);
    g->nodes[g->n - 2] = k; /* swap: the cast runs first */
    g->nodes[g->n - 1] = x;
    k->id = g->n - 2;
    x->id = g->n - 1;
    x->src[s] = k;
  }
  if (x->op == CD_OP_VIEW) x->type = a->type;
}

cd_node *cd_input(cd_graph *g, const char *name, int ndim, const int64_t *ne) {
  cd_node *x = new_node(g, CD_OP_NONE, ndim, ne);
  x->flags = CD_FLAG_INPUT;
  snprintf(x->name, sizeof x->name, "%s", name);
  return x;
}

cd_node *cd_param(cd_graph *g, const char *name, float *data, int ndim, const int64_t *ne) {
  return cd_param_typed(g, name, data, CD_TYPE_F32, ndim, ne);
}

cd_node *cd_graph_param_from(cd_graph *g, const char *name, cd_type type, int ndim, const int64_t *ne, struct cd_wstore *s,
                             int i, int part, int64_t off) {
  cd_node *x = new_node(g, CD_OP_NONE, ndim, ne);
  x->flags = CD_FLAG_PARAM;
  x->type = type;
  x->wstore = s;
  x->widx = i;
  x->woff = off;
  x->wpart = part;
  x->data = cd_wstore_ptr(s, i) ? (float *)((char *)cd_wstore_ptr(s, i) + (size_t)off * cd_type_size(type)) : NULL;
  snprintf(x->name, sizeof x->name, "%s", name);
  use_store(g, s);
  if (g->nparams == g->params_cap) {
    g->params_cap = g->params_cap ? 2 * g->params_cap : 256;
    g->params = cd_realloc(g->params, (size_t)g->params_cap * sizeof *g->params);
  }
  g->params[g->nparams++] = x;
  return x;
}

cd_node *cd_param_typed(cd_graph *g, const char *name, void *data, cd_type type, int ndim, const int64_t *ne) {
  if (!g->own) g->own = cd_wstore_new_private(g->be);
  int i = cd_wstore_add(g->own, name, type, ndim, ne, data);
  if (i < 0) return cd_graph_fail(g, "parameter %s: %s", name, cd_last_error());
  return cd_graph_param_from(g, name, type, ndim, ne, g->own, i, 0, 0);
}

int cd_graph_touch_param(cd_graph *g, cd_node *p) {
  if (!p || !(p->flags & CD_FLAG_PARAM) || p->wstore != g->own || !g->own)
    return cd_set_error("graph: '%s' is not a parameter of this graph made by cd_param", p ? p->name : "(null)");
  cd_wstore_touch(g->own, p->widx, NULL);
  return 0;
}

cd_node *cd_input_typed(cd_graph *g, const char *name, cd_type type, int ndim, const int64_t *ne) {
  cd_node *x = cd_input(g, name, ndim, ne);
  x->type = type;
  return x;
}

void cd_set_trainable(cd_node *p) {
  if (p->flags & CD_FLAG_PARAM) p->flags |= CD_FLAG_TRAINABLE;
}
void cd_graph_output(cd_graph *g, cd_node *n) {
  n->flags |= CD_FLAG_OUTPUT;
  g->planned = 0;
}

cd_node *cd_view(cd_graph *g, cd_node *x, int ndim, const int64_t *ne) {
  if (cd_numel(ndim, ne) != x->n) return BUILD_ERR(g, "view", "element count changes (%ld -> %ld) for %s", (long)x->n, (long)cd_numel(ndim, ne), x->name);
  cd_node *y = new_node(g, CD_OP_VIEW, ndim, ne);
  set_src(g, y, 1, x, NULL, NULL, NULL);
  return y;
}

cd_node *cd_conv2d(cd_graph *g, cd_node *x, cd_node *w, cd_node *b, int stride, int pad) {
  if (x->ndim != 4 || w->ndim != 4 || w->ne[1] != x->ne[1]) SHAPE_ERR(g, "conv2d", "input channels", x, w);
  if (b && (b->ndim != 1 || b->ne[0] != w->ne[0])) SHAPE_ERR(g, "conv2d", "bias", b, w);
  if (stride < 1 || pad < 0 || x->ne[2] + 2 * pad < w->ne[2] || x->ne[3] + 2 * pad < w->ne[3])
    SHAPE_ERR(g, "conv2d", "kernel larger than the padded input", x, w);
  int64_t ho = (x->ne[2] + 2 * pad - w->ne[2]) / stride + 1, wo = (x->ne[3] + 2 * pad - w->ne[3]) / stride + 1;
  int64_t ne[4] = {x->ne[0], w->ne[0], ho, wo};
  cd_node *y = new_node(g, CD_OP_CONV2D, 4, ne);
  set_src(g, y, 3, x, w, b, NULL);
  y->ip[0] = stride;
  y->ip[1] = pad;
  return y;
}

cd_node *cd_pad2d(cd_graph *g, cd_node *x, int l, int r, int t, int b) {
  if (x->ndim != 4 || l < 0 || r < 0 || t < 0 || b < 0) SHAPE_ERR(g, "pad2d", "needs NCHW and non-negative pads", x, x);
  int64_t ne[4] = {x->ne[0], x->ne[1], x->ne[2] + t + b, x->ne[3] + l + r};
  cd_node *y = new_node(g, CD_OP_PAD2D, 4, ne);
  set_src(g, y, 1, x, NULL, NULL, NULL);
  y->ip[0] = l; y->ip[1] = r; y->ip[2] = t; y->ip[3] = b;
  return y;
}

cd_node *cd_linear(cd_graph *g, cd_node *x, cd_node *w, cd_node *b) {
  if (w->ndim != 2 || x->ne[x->ndim - 1] != w->ne[1]) SHAPE_ERR(g, "linear", "in features", x, w);
  if (b && (b->ndim != 1 || b->ne[0] != w->ne[0])) SHAPE_ERR(g, "linear", "bias", b, w);
  int64_t ne[4];
  memcpy(ne, x->ne, sizeof ne);
  ne[x->ndim - 1] = w->ne[0];
  cd_node *y = new_node(g, CD_OP_LINEAR, x->ndim, ne);
  set_src(g, y, 3, x, w, b, NULL);
  return y;
}

cd_node *cd_bmm(cd_graph *g, cd_node *a, cd_node *b, int ta, int tb) {
  if (a->ndim != 3 || b->ndim != 3 || a->ne[0] != b->ne[0]) SHAPE_ERR(g, "bmm", "batch", a, b);
  int64_t M = ta ? a->ne[2] : a->ne[1], K = ta ? a->ne[1] : a->ne[2];
  int64_t K2 = tb ? b->ne[2] : b->ne[1], N = tb ? b->ne[1] : b->ne[2];
  if (K != K2) SHAPE_ERR(g, "bmm", "inner dimension", a, b);
  int64_t ne[3] = {a->ne[0], M, N};
  cd_node *y = new_node(g, CD_OP_BMM, 3, ne);
  set_src(g, y, 2, a, b, NULL, NULL);
  y->ip[0] = ta;
  y->ip[1] = tb;
  return y;
}

static cd_node *unary(cd_graph *g, cd_op op, cd_node *x) {
  cd_node *y = new_node(g, op, x->ndim, x->ne);
  set_src(g, y, 1, x, NULL, NULL, NULL);
  return y;
}

cd_node *cd_group_norm(cd_graph *g, cd_node *x, cd_node *gamma, cd_node *beta, int groups, float eps) {
  if (x->ndim < 2 || groups < 1 || x->ne[1] % groups) SHAPE_ERR(g, "group_norm", "channels not divisible by groups", x, x);
  if ((gamma && (gamma->ndim != 1 || gamma->ne[0] != x->ne[1])) || (beta && (beta->ndim != 1 || beta->ne[0] != x->ne[1])))
    SHAPE_ERR(g, "group_norm", "affine parameters", x, gamma ? gamma : beta);
  cd_node *y = unary(g, CD_OP_GROUP_NORM, x);
  set_src(g, y, 3, x, gamma, beta, NULL);
  y->ip[0] = groups;
  y->fp[0] = eps;
  return y;
}

cd_node *cd_layer_norm(cd_graph *g, cd_node *x, cd_node *gamma, cd_node *beta, float eps) {
  int64_t C = x->ne[x->ndim - 1];
  if ((gamma && (gamma->ndim != 1 || gamma->ne[0] != C)) || (beta && (beta->ndim != 1 || beta->ne[0] != C)))
    SHAPE_ERR(g, "layer_norm", "affine parameters", x, gamma ? gamma : beta);
  cd_node *y = unary(g, CD_OP_LAYER_NORM, x);
  set_src(g, y, 3, x, gamma, beta, NULL);
  y->fp[0] = eps;
  return y;
}

cd_node *cd_silu(cd_graph *g, cd_node *x) { return unary(g, CD_OP_SILU, x); }
cd_node *cd_gelu(cd_graph *g, cd_node *x) { return unary(g, CD_OP_GELU, x); }
cd_node *cd_quick_gelu(cd_graph *g, cd_node *x) { return unary(g, CD_OP_QUICK_GELU, x); }

cd_node *cd_geglu(cd_graph *g, cd_node *x) {
  if (x->ne[x->ndim - 1] % 2) SHAPE_ERR(g, "geglu", "last dim must be even", x, x);
  int64_t ne[4];
  memcpy(ne, x->ne, sizeof ne);
  ne[x->ndim - 1] /= 2;
  cd_node *y = new_node(g, CD_OP_GEGLU, x->ndim, ne);
  set_src(g, y, 1, x, NULL, NULL, NULL);
  return y;
}

cd_node *cd_attention(cd_graph *g, cd_node *q, cd_node *k, cd_node *v, int heads, int causal, float scale) {
  if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || q->ne[0] != k->ne[0] || k->ne[0] != v->ne[0] ||
      q->ne[2] != k->ne[2] || k->ne[1] != v->ne[1] || heads < 1 || q->ne[2] % heads)
    SHAPE_ERR(g, "attention", "q/k shapes", q, k);
  if (v->ne[2] != q->ne[2]) SHAPE_ERR(g, "attention", "value width", q, v);
  if (causal && q->ne[1] != k->ne[1]) SHAPE_ERR(g, "attention", "causal needs Tq == Tk", q, k);
  cd_node *y = new_node(g, CD_OP_ATTENTION, 3, q->ne);
  set_src(g, y, 3, q, k, v, NULL);
  y->ip[0] = heads;
  y->ip[1] = causal;
  y->fp[0] = scale;
  return y;
}

cd_node *cd_upsample2x_to(cd_graph *g, cd_node *x, int64_t Ho, int64_t Wo) {
  if (x->ndim != 4) SHAPE_ERR(g, "upsample2x", "needs NCHW", x, x);
  if ((Ho != 2 * x->ne[2] && Ho != 2 * x->ne[2] - 1) || (Wo != 2 * x->ne[3] && Wo != 2 * x->ne[3] - 1) || Ho < 1 || Wo < 1)
    return BUILD_ERR(g, "upsample2x", "output %ldx%ld is not twice (or twice minus one) the input %ldx%ld", (long)Ho,
                     (long)Wo, (long)x->ne[2], (long)x->ne[3]);
  int64_t ne[4] = {x->ne[0], x->ne[1], Ho, Wo};
  cd_node *y = new_node(g, CD_OP_UPSAMPLE2X, 4, ne);
  set_src(g, y, 1, x, NULL, NULL, NULL);
  return y;
}

cd_node *cd_upsample2x(cd_graph *g, cd_node *x) {
  if (x->ndim != 4) SHAPE_ERR(g, "upsample2x", "needs NCHW", x, x);
  return cd_upsample2x_to(g, x, 2 * x->ne[2], 2 * x->ne[3]);
}

cd_node *cd_concat(cd_graph *g, cd_node *a, cd_node *b, int dim) {
  if (a->ndim != b->ndim || dim < 0 || dim >= a->ndim) SHAPE_ERR(g, "concat", "rank", a, b);
  for (int i = 0; i < a->ndim; i++)
    if (i != dim && a->ne[i] != b->ne[i]) SHAPE_ERR(g, "concat", "shapes differ outside the concat dim", a, b);
  int64_t ne[4];
  memcpy(ne, a->ne, sizeof ne);
  ne[dim] += b->ne[dim];
  cd_node *y = new_node(g, CD_OP_CONCAT, a->ndim, ne);
  set_src(g, y, 2, a, b, NULL, NULL);
  y->ip[0] = dim;
  return y;
}

static cd_node *broadcast_op(cd_graph *g, cd_op op, cd_node *a, cd_node *b) {
  if (b->ndim > a->ndim) SHAPE_ERR(g, cd_op_name(op), "b has more dims than a", a, b);
  for (int i = 0; i < b->ndim; i++) {
    int64_t da = a->ne[a->ndim - b->ndim + i], db = b->ne[i];
    if (db != da && db != 1) SHAPE_ERR(g, cd_op_name(op), "cannot broadcast", a, b);
  }
  cd_node *y = new_node(g, op, a->ndim, a->ne);
  set_src(g, y, 2, a, b, NULL, NULL);
  return y;
}
cd_node *cd_add(cd_graph *g, cd_node *a, cd_node *b) { return broadcast_op(g, CD_OP_ADD, a, b); }
cd_node *cd_mul(cd_graph *g, cd_node *a, cd_node *b) { return broadcast_op(g, CD_OP_MUL, a, b); }

cd_node *cd_scale(cd_graph *g, cd_node *x, float s) {
  cd_node *y = unary(g, CD_OP_SCALE, x);
  y->fp[0] = s;
  return y;
}

cd_node *cd_permute(cd_graph *g, cd_node *x, int p0, int p1, int p2, int p3) {
  int p[4] = {p0, p1, p2, p3}, seen[4] = {0};
  int64_t ne[4] = {1, 1, 1, 1};
  for (int i = 0; i < x->ndim; i++) {
    if (p[i] < 0 || p[i] >= x->ndim || seen[p[i]]++) return BUILD_ERR(g, "permute", "invalid permutation for %s", x->name);
    ne[i] = x->ne[p[i]];
  }
  cd_node *y = new_node(g, CD_OP_PERMUTE, x->ndim, ne);
  set_src(g, y, 1, x, NULL, NULL, NULL);
  for (int i = 0; i < 4; i++) y->ip[i] = i < x->ndim ? p[i] : i;
  return y;
}

cd_node *cd_timestep_embed(cd_graph *g, cd_node *t, int dim, int flip, float shift) {
  if (t->ndim != 1 || dim < 2 || dim % 2) SHAPE_ERR(g, "timestep_embed", "needs t[B] and an even dim", t, t);
  int64_t ne[2] = {t->ne[0], dim};
  cd_node *y = new_node(g, CD_OP_TIMESTEP_EMBED, 2, ne);
  set_src(g, y, 1, t, NULL, NULL, NULL);
  y->ip[0] = dim;
  y->ip[1] = flip;
  y->fp[0] = shift;
  return y;
}

cd_node *cd_embedding(cd_graph *g, cd_node *ids, cd_node *table, cd_node *extra) {
  if (table->ndim != 2 || ids->ndim > 3) SHAPE_ERR(g, "embedding", "table must be [V,D], ids at most 3-D", ids, table);
  if (extra && (extra->ndim != 2 || extra->ne[1] != table->ne[1])) SHAPE_ERR(g, "embedding", "extra rows width", extra, table);
  int64_t ne[4];
  memcpy(ne, ids->ne, sizeof ne);
  ne[ids->ndim] = table->ne[1];
  cd_node *y = new_node(g, CD_OP_EMBEDDING, ids->ndim + 1, ne);
  set_src(g, y, 3, ids, table, extra, NULL);
  return y;
}

cd_node *cd_detach_rows(cd_graph *g, cd_node *x, int rows) {
  if (x->ndim != 3) SHAPE_ERR(g, "detach_rows", "needs [B,T,C]", x, x);
  cd_node *y = unary(g, CD_OP_DETACH_ROWS, x);
  y->ip[0] = rows;
  return y;
}

cd_node *cd_mse(cd_graph *g, cd_node *pred, cd_node *target, cd_node *mask) {
  if (pred->ndim != target->ndim || pred->n != target->n) SHAPE_ERR(g, "mse", "pred vs target", pred, target);
  for (int i = 0; i < pred->ndim; i++)
    if (pred->ne[i] != target->ne[i]) SHAPE_ERR(g, "mse", "pred vs target", pred, target);
  if (mask) {
    if (mask->ndim != pred->ndim || mask->ne[0] != pred->ne[0] || (pred->ndim > 1 && mask->ne[1] != 1))
      SHAPE_ERR(g, "mse", "mask must be [B,1,...]", mask, pred);
    for (int i = 2; i < pred->ndim; i++)
      if (mask->ne[i] != pred->ne[i]) SHAPE_ERR(g, "mse", "mask spatial dims", mask, pred);
  }
  int64_t one = 1;
  cd_node *y = new_node(g, CD_OP_MSE, 1, &one);
  set_src(g, y, 3, pred, target, mask, NULL);
  return y;
}

cd_node *cd_sum(cd_graph *g, cd_node *x) {
  int64_t one = 1;
  cd_node *y = new_node(g, CD_OP_SUM, 1, &one);
  set_src(g, y, 1, x, NULL, NULL, NULL);
  return y;
}

/* ---------------------------------------------------------------- planning */

/* a buffer's lifetime: [start, end], and [start2, end2] when it is computed
 * again in backward (checkpointing; start2 = -1 otherwise) */
typedef struct {
  int start, end, start2, end2;
  size_t size;
  int64_t *off;
} interval;

static int ranges_meet(int a0, int a1, int b0, int b1) { return a0 >= 0 && b0 >= 0 && a0 <= b1 && b0 <= a1; }
static int lives_meet(const interval *a, const interval *b) {
  return ranges_meet(a->start, a->end, b->start, b->end) || ranges_meet(a->start2, a->end2, b->start, b->end) ||
         ranges_meet(a->start, a->end, b->start2, b->end2) || ranges_meet(a->start2, a->end2, b->start2, b->end2);
}

static int cmp_size_desc(const void *a, const void *b) {
  const interval *x = a, *y = b;
  if (x->size != y->size) return x->size < y->size ? 1 : -1;
  return x->start - y->start;
}
typedef struct {
  size_t lo, hi;
} span;
static int cmp_span(const void *a, const void *b) {
  const span *x = a, *y = b;
  return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Greedy best-fit by decreasing size: each buffer goes to the lowest offset
 * where it fits between the buffers already placed whose lifetimes overlap. */
static size_t pack(interval *iv, int n, int no_reuse) {
  size_t total = 0;
  qsort(iv, n, sizeof *iv, cmp_size_desc);
  span *busy = cd_malloc((n + 1) * sizeof *busy);
  for (int i = 0; i < n; i++) {
    if (no_reuse) {
      *iv[i].off = (int64_t)total;
      total += iv[i].size;
      continue;
    }
    int nb = 0;
    for (int j = 0; j < i; j++)
      if (lives_meet(&iv[j], &iv[i]))
        busy[nb++] = (span){(size_t)*iv[j].off, (size_t)*iv[j].off + iv[j].size};
    qsort(busy, nb, sizeof *busy, cmp_span);
    size_t pos = 0;
    for (int b = 0; b < nb; b++) {
      if (busy[b].lo >= pos + iv[i].size) break;
      if (busy[b].hi > pos) pos = busy[b].hi;
    }
    *iv[i].off = (int64_t)pos;
    if (pos + iv[i].size > total) total = pos + iv[i].size;
  }
  free(busy);
  return total;
}

static cd_node *root_of(cd_node *x) {
  while (cd_op_has(x->op, CD_OPF_ALIAS)) x = x->src[0];
  return x;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

static size_t grad_bytes(const cd_node *x) { return (size_t)x->n * sizeof(float); } /* gradients are f32 */

int cd_graph_plan(cd_graph *g, const cd_plan_opts *opts) {
  static const cd_plan_opts defaults = {0};
  if (!opts) opts = &defaults;
  if (g->err[0]) return cd_set_error("%s", g->err);
  cd_threads_init();
  /* a fresh context per plan: scratch sizes depend on what it holds (threads) */
  if (g->ctx_ready) g->be->ctx_free(&g->ctx);
  g->ctx_ready = 0;
  g->ctx = (cd_kernel_ctx){.be = g->be};
  if (g->be->ctx_init(&g->ctx)) return cd_prefix_error("graph: backend %s", g->be->name);
  g->ctx_ready = 1;
  int N = g->n;
  g->training = opts->training;
  g->loss = opts->loss;
  if (g->training && (!g->loss || g->loss->n != 1)) return cd_set_error("graph: training plan needs a scalar loss node");
  if (bind_params(g)) return -1; /* parameters' values: their stores' backend copies */

  for (int i = 0; i < N; i++)
    if ((g->nodes[i]->flags & CD_FLAG_TRAINABLE) && g->nodes[i]->type != CD_TYPE_F32)
      return cd_set_error("graph: trainable parameter %s is %s; gradients and AdamW need f32", g->nodes[i]->name,
                          cd_type_name(g->nodes[i]->type));

  /* 1. needs-grad forward, reaches-loss backward */
  for (int i = 0; i < N; i++) {
    cd_node *x = g->nodes[i];
    x->flags &= ~(CD_FLAG_NEEDS_GRAD | CD_FLAG_BWD);
    if (!g->training) continue;
    if (x->flags & CD_FLAG_TRAINABLE) x->flags |= CD_FLAG_NEEDS_GRAD;
    for (int s = 0; s < x->nsrc; s++)
      if (x->src[s] && (x->src[s]->flags & CD_FLAG_NEEDS_GRAD) && cd_op_has(x->op, CD_OPF_BWD)) x->flags |= CD_FLAG_NEEDS_GRAD;
  }
  if (g->training) {
    char *reach = cd_calloc(N, 1);
    reach[g->loss->id] = 1;
    for (int i = N - 1; i >= 0; i--) {
      cd_node *x = g->nodes[i];
      if (!reach[i] || !(x->flags & CD_FLAG_NEEDS_GRAD)) continue;
      x->flags |= CD_FLAG_BWD;
      for (int s = 0; s < x->nsrc; s++)
        if (x->src[s]) reach[x->src[s]->id] = 1;
    }
    free(reach);
  }

  /* 2. the timeline: forward step i runs node i; then the backward schedule,
   * node N-1's backward first. With checkpointing, a segment's recomputed
   * forwards run right before the backward of its last node. */
  const int ckpt = g->training && opts->checkpoint;
  char *keep = cd_calloc(N, 1), *rec = cd_calloc(N, 1);
  for (int i = 0; i < N; i++)
    if (g->nodes[i]->flags & (CD_FLAG_OUTPUT | CD_FLAG_INPUT)) keep[root_of(g->nodes[i])->id] = 1;
  if (g->training) keep[root_of(g->loss)->id] = 1;
  int *seg_first = cd_malloc(((size_t)g->nseg + 1) * sizeof(int));
  for (int i = N - 1; i >= 0; i--) seg_first[g->nodes[i]->seg] = i; /* segments are contiguous (built in order) */
  g->nrecompute = 0;
  if (ckpt) /* what a segment's backward reads, and what computing that again reads, within the segment */
    for (int i = N - 1; i >= 0; i--) {
      cd_node *x = g->nodes[i];
      if (!x->seg) continue;
      const int bwd = (x->flags & CD_FLAG_BWD) != 0;
      if (bwd && root_of(x)->seg == x->seg) rec[root_of(x)->id] = 1; /* its backward reads its value and aux */
      /* kept values need no second run; leaves and views run nothing */
      if (rec[i] && (keep[i] || !cd_op_has(x->op, CD_OPF_KERNEL) || cd_op_has(x->op, CD_OPF_ALIAS))) rec[i] = 0;
      g->nrecompute += rec[i];
      if (!rec[i] && !bwd) continue;
      for (int s = 0; s < x->nsrc; s++)
        if (x->src[s] && root_of(x->src[s])->seg == x->seg) rec[root_of(x->src[s])->id] = 1;
    }
  const int T = g->training ? 2 * N + g->nrecompute : N;
  int *rstep = cd_malloc(N * sizeof(int)), *bstep = cd_malloc(N * sizeof(int));
  free(g->sched);
  g->sched = cd_malloc((size_t)T * sizeof(int));
  g->T = T;
  for (int i = 0; i < N; i++) g->sched[i] = i << 1, rstep[i] = bstep[i] = -1;
  for (int i = N - 1, s = N; g->training && i >= 0; i--) {
    cd_node *x = g->nodes[i];
    if (ckpt && x->seg && (i == N - 1 || g->nodes[i + 1]->seg != x->seg))
      for (int j = seg_first[x->seg]; j <= i; j++)
        if (rec[j]) rstep[j] = s, g->sched[s++] = j << 1;
    bstep[i] = s;
    g->sched[s++] = i << 1 | 1;
  }
  free(seg_first);

  /* lifetimes: a value (and its aux) lives from its forward step to its last
   * read; a recomputed one a second time from its recompute step to its last
   * read after it (every read by another segment or outside comes before) */
  int *d_start = cd_malloc(N * sizeof(int)), *d_end = cd_malloc(N * sizeof(int)), *r_end = cd_malloc(N * sizeof(int));
  int *g_start = cd_malloc(N * sizeof(int)), *g_end = cd_malloc(N * sizeof(int));
  for (int i = 0; i < N; i++) {
    cd_node *x = g->nodes[i];
    d_start[i] = (x->flags & CD_FLAG_INPUT) ? 0 : i;
    d_end[i] = i;
    r_end[i] = rstep[i];
    g_start[i] = T; /* empty until a consumer accumulates into it */
    g_end[i] = bstep[i];
    x->last_use = i;
  }
#define READ_AT(r, t) do { const int r_ = (r), t_ = (t); \
    if (rec[r_] && t_ >= rstep[r_]) { if (t_ > r_end[r_]) r_end[r_] = t_; } else if (t_ > d_end[r_]) d_end[r_] = t_; } while (0)
  for (int i = 0; i < N; i++) {
    cd_node *x = g->nodes[i];
    for (int s = 0; s < x->nsrc; s++) {
      if (!x->src[s]) continue;
      cd_node *r = root_of(x->src[s]);
      int ri = r->id;
      READ_AT(ri, i);
      if (i > r->last_use) r->last_use = i;
      if (rec[i]) READ_AT(ri, rstep[i]);
      if (x->flags & CD_FLAG_BWD) { /* backward of x reads its sources and accumulates their grads */
        READ_AT(ri, bstep[i]);
        if ((r->flags & CD_FLAG_BWD) && bstep[i] < g_start[ri]) g_start[ri] = bstep[i];
      }
    }
    if (x->flags & CD_FLAG_BWD) READ_AT(root_of(x)->id, bstep[i]); /* its own backward reads its value and aux */
    if (x->flags & (CD_FLAG_OUTPUT | CD_FLAG_INPUT)) d_end[root_of(x)->id] = T - 1;
  }
#undef READ_AT
  if (g->training) {
    cd_node *lr = root_of(g->loss);
    d_end[lr->id] = T - 1;
    g_start[lr->id] = N;
    /* a trainable parameter's gradient lives over the whole backward (zeroed
     * at its start) and stays readable until the next forward */
    for (int i = 0; i < N; i++)
      if (g->nodes[i]->flags & CD_FLAG_TRAINABLE) g_start[i] = N, g_end[i] = T - 1;
  }

  /* 3. intervals */
  /* values, aux and gradients are packed; kernels run one at a time, so
   * their scratch shares one region after the packed buffers, as large as the
   * largest kernel's (packing one-step scratch among the values would save
   * little and make the arena less predictable from the shapes) */
  interval *iv = cd_malloc(3 * (size_t)N * sizeof *iv);
  int niv = 0;
  size_t naive = 0, scratch = 0;
  for (int i = 0; i < N; i++) {
    cd_node *x = g->nodes[i];
    x->data_off = x->grad_off = x->aux_off = -1;
    x->naux = cd_op_aux_floats(x);
    for (int b = 0; b < 2; b++) x->scratch_off[b] = -1, x->scratch_bytes[b] = 0;
    if (cd_op_has(x->op, CD_OPF_ALIAS)) continue;
    if (x->flags & CD_FLAG_PARAM) { /* the value is the caller's; a trainable one's gradient is ours */
      if ((x->flags & CD_FLAG_TRAINABLE) && g->training)
        iv[niv++] = (interval){g_start[i], g_end[i], -1, -1, align64(grad_bytes(x)), &x->grad_off};
      continue;
    }
    iv[niv++] = (interval){d_start[i], d_end[i], rstep[i], r_end[i], align64(cd_nbytes(x)), &x->data_off};
    if (x->naux) iv[niv++] = (interval){d_start[i], d_end[i], rstep[i], r_end[i], align64(x->naux * sizeof(float)), &x->aux_off};
    if ((x->flags & CD_FLAG_BWD) && g_start[i] <= g_end[i])
      iv[niv++] = (interval){g_start[i], g_end[i], -1, -1, align64(grad_bytes(x)), &x->grad_off};
    const cd_scratch_fn sf = cd_op_has(x->op, CD_OPF_KERNEL) && cd_op_has(x->op, CD_OPF_SCRATCH) ? g->be->scratch[x->op] : NULL;
    for (int b = 0; sf && b < 2; b++) {
      if (b && !(x->flags & CD_FLAG_BWD)) break;
      x->scratch_bytes[b] = sf(&g->ctx, x, b);
      if (x->scratch_bytes[b]) x->scratch_off[b] = 0; /* relative to the scratch region */
      scratch = CD_MAX(scratch, align64(x->scratch_bytes[b]));
    }
  }
  for (int i = 0; i < niv; i++) naive += iv[i].size;
  naive += scratch;
  size_t total = align64(pack(iv, niv, opts->no_reuse));
  free(iv);
  for (int i = 0; i < N; i++)
    for (int b = 0; b < 2; b++)
      if (g->nodes[i]->scratch_off[b] >= 0) g->nodes[i]->scratch_off[b] = (int64_t)total;

  if (g->arena) g->be->free(g->arena);
  g->arena = g->be->alloc(total + scratch ? total + scratch : 64);
  if (!g->arena) {
    free(d_start); free(d_end); free(g_start); free(g_end); free(r_end); free(rstep); free(bstep); free(keep); free(rec);
    return cd_set_error("graph: backend %s could not allocate %.1f MiB", g->be->name, (total + scratch) / 1048576.0);
  }
  g->arena_bytes = total;
  g->scratch_bytes = scratch;
  g->naive_bytes = naive;

  /* 4. pointers, zeroing schedule, persistent gradients */
  int *cnt = cd_calloc(T + 1, sizeof(int));
  for (int i = 0; i < N; i++) {
    cd_node *x = g->nodes[i];
    if (x->data_off >= 0) x->data = (float *)((char *)g->arena + x->data_off);
    x->aux = x->aux_off >= 0 ? (float *)((char *)g->arena + x->aux_off) : NULL;
    x->grad = x->grad_off >= 0 ? (float *)((char *)g->arena + x->grad_off) : NULL;
    if (x->grad) cnt[g_start[i]]++;
  }
  for (int i = 0; i < N; i++) { /* views alias their root */
    cd_node *x = g->nodes[i];
    if (!cd_op_has(x->op, CD_OPF_ALIAS)) continue;
    cd_node *r = root_of(x);
    x->data = r->data;
    x->grad = (x->flags & CD_FLAG_BWD) ? r->grad : NULL;
  }
  free(g->zero_start);
  free(g->zero_list);
  g->zero_start = cd_calloc(T + 2, sizeof(int));
  for (int s = 0; s <= T; s++) g->zero_start[s + 1] = g->zero_start[s] + cnt[s];
  g->zero_list = cd_malloc((g->zero_start[T + 1] + 1) * sizeof(cd_node *));
  memset(cnt, 0, (T + 1) * sizeof(int));
  for (int i = 0; i < N; i++) {
    cd_node *x = g->nodes[i];
    if (x->grad_off >= 0) g->zero_list[g->zero_start[g_start[i]] + cnt[g_start[i]]++] = x;
  }
  free(cnt);
  free(d_start); free(d_end); free(g_start); free(g_end); free(r_end); free(rstep); free(bstep); free(keep); free(rec);

  for (int i = 0; i < N; i++) {
    cd_node *x = g->nodes[i];
    if (!cd_op_has(x->op, CD_OPF_KERNEL)) continue;
    if (!g->be->forward[x->op]) return cd_set_error("graph: backend %s has no forward kernel for %s", g->be->name, cd_op_name(x->op));
    if ((x->flags & CD_FLAG_BWD) && !g->be->backward[x->op])
      return cd_set_error("graph: backend %s has no backward kernel for %s", g->be->name, cd_op_name(x->op));
  }
  g->planned = 1;
  return 0;
}

/* node x's forward (bwd = 0) or backward (bwd = 1) kernel, timed under CDIFF_PROFILE */
static void run_kernel(cd_graph *g, int bwd, cd_node *x) {
  const cd_kernel k = (bwd ? g->be->backward : g->be->forward)[x->op];
  g->ctx.scratch = x->scratch_off[bwd] >= 0 ? (char *)g->arena + x->scratch_off[bwd] : NULL;
  g->ctx.scratch_bytes = x->scratch_bytes[bwd];
  if (!g->profile) {
    k(&g->ctx, x);
    return;
  }
  g->be->timer_begin(&g->ctx);
  k(&g->ctx, x);
  g->be->timer_end(&g->ctx, &g->prof_t[bwd][x->op]);
  g->prof_n[bwd][x->op]++;
}

int cd_graph_forward(cd_graph *g) {
  if (!g->planned) return cd_set_error("graph: forward before cd_graph_plan");
  if (bind_params(g)) return -1; /* uploads weights whose host values changed since */
  for (int i = 0; i < g->n; i++) {
    cd_node *x = g->nodes[i];
    if (!cd_op_has(x->op, CD_OPF_KERNEL)) continue;
    run_kernel(g, 0, x);
  }
  if (g->profile) g->be->timer_flush(&g->ctx);
  if (g->be->finish && g->be->finish(&g->ctx)) return cd_prefix_error("graph: forward");
  return 0;
}

int cd_graph_backward(cd_graph *g) {
  if (!g->planned || !g->training) return cd_set_error("graph: backward needs a training plan");
  const int N = g->n;
  for (int s = N; s < g->T; s++) {
    for (int z = g->zero_start[s]; z < g->zero_start[s + 1]; z++) {
      cd_node *x = g->zero_list[z];
      g->be->zero(&g->ctx, x->grad, grad_bytes(x));
    }
    if (s == N) { /* the seed dL/dL = 1 */
      static const float one = 1.0f;
      cd_node *l = root_of(g->loss);
      if (l->grad) g->be->upload(&g->ctx, l->grad, &one, sizeof one);
    }
    const int bwd = g->sched[s] & 1;
    cd_node *x = g->nodes[g->sched[s] >> 1];
    if (!cd_op_has(x->op, CD_OPF_KERNEL) || (bwd && !(x->flags & CD_FLAG_BWD))) continue;
    run_kernel(g, bwd, x); /* a backward, or a checkpointed segment's forward run again */
  }
  if (g->profile) g->be->timer_flush(&g->ctx);
  if (g->be->finish && g->be->finish(&g->ctx)) return cd_prefix_error("graph: backward");
  return 0;
}

/* ------------------------------------------------------- host <-> backend */

/* root of a view chain: views share their root's buffers */
static const cd_node *croot(const cd_node *x) {
  while (cd_op_has(x->op, CD_OPF_ALIAS)) x = x->src[0];
  return x;
}

static int check_range(const cd_graph *g, const cd_node *n, int64_t off, int64_t count, const char *what) {
  if (!g->planned) return cd_set_error("graph: %s '%s' before cd_graph_plan", what, n->name);
  if (off < 0 || count < 0 || off + count > n->n)
    return cd_set_error("graph: %s '%s': elements [%ld, %ld) outside its %ld", what, n->name, (long)off, (long)(off + count),
                        (long)n->n);
  return 0;
}

/* elements [off, off+count) of input n from host values of type t (n's own) */
static int write_typed(cd_graph *g, cd_node *n, int64_t off, int64_t count, const void *host, cd_type t) {
  if (check_range(g, n, off, count, "write to")) return -1;
  if (!(croot(n)->flags & CD_FLAG_INPUT)) return cd_set_error("graph: '%s' is not an input (cd_input)", n->name);
  if (n->type != t) return cd_set_error("graph: input '%s' holds %s, not %s", n->name, cd_type_name(n->type), cd_type_name(t));
  const size_t es = cd_type_size(t);
  g->be->upload(&g->ctx, (char *)n->data + (size_t)off * es, host, (size_t)count * es);
  return 0;
}

int cd_graph_write(cd_graph *g, cd_node *n, int64_t off, int64_t count, const float *host) {
  return write_typed(g, n, off, count, host, CD_TYPE_F32);
}

int cd_graph_set_input(cd_graph *g, cd_node *n, const float *host) { return cd_graph_write(g, n, 0, n->n, host); }
int cd_graph_set_input_i32(cd_graph *g, cd_node *n, const int32_t *host) { return write_typed(g, n, 0, n->n, host, CD_TYPE_I32); }

int cd_graph_read(const cd_graph *g, const cd_node *n, int64_t off, int64_t count, float *host) {
  if (check_range(g, n, off, count, "read of")) return -1;
  const int kept = (croot(n)->flags & (CD_FLAG_INPUT | CD_FLAG_OUTPUT | CD_FLAG_PARAM)) || (n->flags & CD_FLAG_OUTPUT) ||
                   (g->training && croot(n) == croot(g->loss));
  if (!kept)
    return cd_set_error("graph: '%s' is not kept after a run (mark it with cd_graph_output)", n->name);
  if (n->type != CD_TYPE_F32) return cd_set_error("graph: '%s' holds %s, not f32", n->name, cd_type_name(n->type));
  g->be->download(&g->ctx, host, n->data + off, (size_t)count * sizeof(float));
  return 0;
}

int cd_graph_get(const cd_graph *g, const cd_node *n, float *host) { return cd_graph_read(g, n, 0, n->n, host); }

double cd_graph_get_scalar(const cd_graph *g, const cd_node *n) {
  float v;
  return cd_graph_read(g, n, 0, 1, &v) ? NAN : v;
}

int cd_graph_get_grad(const cd_graph *g, const cd_node *param, float *host) {
  if (!g->planned || !g->training) return cd_set_error("graph: gradient of '%s' needs a training plan", param->name);
  if (!(param->flags & CD_FLAG_TRAINABLE) || !param->grad)
    return cd_set_error("graph: '%s' is not a trainable parameter", param->name);
  g->be->download(&g->ctx, host, param->grad, grad_bytes(param));
  return 0;
}

size_t cd_graph_arena_bytes(const cd_graph *g) { return g->arena_bytes; }
size_t cd_graph_naive_bytes(const cd_graph *g) { return g->naive_bytes; }
size_t cd_graph_scratch_bytes(const cd_graph *g) { return g->scratch_bytes; }
int cd_graph_nnodes(const cd_graph *g) { return g->n; }
cd_node *cd_graph_node(const cd_graph *g, int i) { return i >= 0 && i < g->n ? g->nodes[i] : NULL; }
cd_node *cd_graph_find(const cd_graph *g, const char *name) {
  for (int i = 0; i < g->n; i++)
    if (!strcmp(g->nodes[i]->name, name)) return g->nodes[i];
  return NULL;
}
