/* embed.c - TIMESTEP_EMBED, EMBEDDING and DETACH_ROWS on the CPU. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "core/common.h"
#include "engine/cpu/cpu.h"

/* ---- TIMESTEP_EMBED: t[B] -> [B, dim] sinusoidal embedding ----
 * half = dim / 2, freq_i = exp(-ln(10000) * i / (half - freq_shift)),
 * emb = [sin(t freq) | cos(t freq)], swapped to [cos | sin] when flip_sin_to_cos.
 * Every step is rounded to float32 in the order diffusers' get_timestep_embedding
 * computes it (it works in float32 even for float64 models), so we reproduce
 * its values to ~1 ulp. An odd dim gets a trailing zero column, as there. */
void cd_cpu_timestep_embed_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *t = n->src[0];
  const int64_t B = t->n, dim = n->ip[0], half = dim / 2;
  const int flip = n->ip[1];
  const float shift = n->fp[0];
  const float neg_log = (float)-log(10000.0);
  const float div = (float)half - shift;
  for (int64_t b = 0; b < B; b++) {
    float *y = n->data + b * dim;
    for (int64_t i = 0; i < half; i++) {
      const float ex = (neg_log * (float)i) / div;
      const float arg = t->data[b] * expf(ex);
      const float s = sinf(arg), c = cosf(arg);
      y[i] = flip ? c : s;
      y[half + i] = flip ? s : c;
    }
    if (dim % 2) y[dim - 1] = 0.0f;
  }
}

/* ---- EMBEDDING: ids[S] (i32, or floats holding integers), table[V, D] (f32, f16
 * or bf16: a row is widened as it is copied), extra[E, D]|NULL -> [S, D] ---- */

static cd_cpu_state *cpu_state(const cd_graph *g) {
  const cd_kernel_ctx *c = cd_graph_ctx(g);
  return c && c->be == cd_backend_cpu() ? c->state : NULL;
}
int cd_cpu_embedding_bad_ids(const cd_graph *g) {
  cd_cpu_state *s = cpu_state(g);
  return s ? atomic_load(&s->bad_ids) : 0;
}
void cd_cpu_embedding_reset_bad_ids(cd_graph *g) {
  cd_cpu_state *s = cpu_state(g);
  if (s) atomic_store(&s->bad_ids, 0);
}

/* id i of the ids node as a double (i32 ids are exact; float ids may not be integers) */
static double id_at(const cd_node *ids, int64_t i) {
  return ids->type == CD_TYPE_I32 ? (double)((const int32_t *)(const void *)ids->data)[i] : (double)ids->data[i];
}

/* Where id f reads: 0 = table, 1 = extra, with *row; -1 when f is not an integer in [0, V + E). */
static int embed_row(double f, const cd_node *table, const cd_node *extra, int64_t *row) {
  const int64_t V = table->ne[0], E = extra ? extra->ne[0] : 0;
  if (!(f >= 0.0 && f < (double)(V + E)) || f != floor(f)) return -1;
  const int64_t id = (int64_t)f;
  *row = id < V ? id : id - V;
  return id >= V;
}

void cd_cpu_embedding_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *ids = n->src[0], *table = n->src[1], *extra = n->src[2];
  const int64_t D = table->ne[1];
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if (n->n > 32768)
  for (int64_t i = 0; i < ids->n; i++) {
    int64_t row;
    int which = embed_row(id_at(ids, i), table, extra, &row);
    if (which >= 0) {
      const cd_node *src = which ? extra : table;
      cd_cpu_to_f32(src->data, src->type, row * D, D, n->data + i * D);
    } else {
      memset(n->data + i * D, 0, D * sizeof(float));
      bad++;
    }
  }
  if (bad) atomic_fetch_add(&((cd_cpu_state *)ctx->state)->bad_ids, bad);
}

void cd_cpu_embedding_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *ids = n->src[0], *table = n->src[1], *extra = n->src[2];
  float *gt = table->grad, *ge = extra ? extra->grad : NULL;
  if (!gt && !ge) return;
  const int64_t D = table->ne[1];
  /* serial: repeated ids add into the same row (a few hundred rows at most) */
  for (int64_t i = 0; i < ids->n; i++) {
    int64_t row;
    int which = embed_row(id_at(ids, i), table, extra, &row);
    if (which < 0) continue;
    float *g = which ? ge : gt;
    if (!g) continue;
    g += row * D;
    const float *dy = n->grad + i * D;
    for (int64_t j = 0; j < D; j++) g[j] += dy[j];
  }
}

/* ---- DETACH_ROWS: identity on [B, T, ...]; backward drops rows t < ip0 ---- */
void cd_cpu_detach_rows_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  if (n->data != n->src[0]->data) memcpy(n->data, n->src[0]->data, cd_nbytes(n));
}

void cd_cpu_detach_rows_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  float *dx = n->src[0]->grad;
  if (!dx || n->ndim < 2 || n->ne[0] <= 0 || n->ne[1] <= 0) return;
  const int64_t B = n->ne[0], T = n->ne[1], C = n->n / (B * T);
  const int64_t k = CD_MAX(0, CD_MIN((int64_t)n->ip[0], T));
  const float *dy = n->grad;
#pragma omp parallel for schedule(static) if (n->n > 32768)
  for (int64_t b = 0; b < B; b++)
    for (int64_t j = k * C; j < T * C; j++) dx[b * T * C + j] += dy[b * T * C + j];
}
