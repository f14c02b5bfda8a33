/* sdxl_cond.c - see sdxl_cond.h */
#include "sdxl_cond.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "diffusion/pipeline.h"
#include "models/prompt.h"

int cd_sdxl_time_ids(const cd_sdxl_micro *mc, int width, int height, float out[6]) {
  cd_sdxl_micro z = {0};
  if (!mc) mc = &z;
  if (mc->orig_w < 0 || mc->orig_h < 0) return cd_set_error("--original-size must be positive (got %d,%d)", mc->orig_w, mc->orig_h);
  if (mc->target_w < 0 || mc->target_h < 0) return cd_set_error("--target-size must be positive (got %d,%d)", mc->target_w, mc->target_h);
  if (mc->crop_top < 0 || mc->crop_left < 0) return cd_set_error("--crop must not be negative (got %d,%d)", mc->crop_top, mc->crop_left);
  out[0] = (float)(mc->orig_h ? mc->orig_h : height);
  out[1] = (float)(mc->orig_w ? mc->orig_w : width);
  out[2] = (float)mc->crop_top;
  out[3] = (float)mc->crop_left;
  out[4] = (float)(mc->target_h ? mc->target_h : height);
  out[5] = (float)(mc->target_w ? mc->target_w : width);
  return 0;
}

int cd_sd_context_dim(const cd_sd_model *m) {
  return m->family == CD_FAMILY_SDXL ? m->clip.cfg.width + m->clip2.cfg.width : m->clip.cfg.width;
}

/* one tokenizer's chunks of one prompt */
typedef struct {
  int *ids;
  float *w;
  int n;
} chunks;

static int id_check(const cd_clip *c, const int *ids, const char *prompt, const char *which) {
  for (int j = 0; j < CD_TOK_MAX_LEN; j++)
    if (ids[j] >= c->cfg.vocab)
      return cd_set_error("prompt \"%s\" uses token id %d but %s has %d rows (load the delta that defines it)", prompt,
                          ids[j], which, c->cfg.vocab);
  return 0;
}

/* Both encoders on K rows of ids: h1 [K, 77, d1], h2 [K, 77, d2] (penultimate states), pl [K, proj]. */
static int run_encoders(cd_sd_model *m, const int32_t *i1, const int32_t *i2, int K, float *h1, float *h2, float *pl) {
  const int64_t L = CD_TOK_MAX_LEN;
  float *sel = cd_malloc(sizeof(float) * (size_t)K * L);
  int *tmp = cd_malloc(sizeof(int) * (size_t)K * L);
  for (int64_t j = 0; j < K * L; j++) tmp[j] = i2[j];
  cd_clip_pool_select(&m->clip2.cfg, tmp, K, (int)L, sel);
  free(tmp);
  cd_graph *g = cd_graph_new();
  cd_node *n1 = cd_input_typed(g, "ids", CD_TYPE_I32, 2, (int64_t[]){K, L});
  cd_node *n2 = cd_input_typed(g, "ids_2", CD_TYPE_I32, 2, (int64_t[]){K, L});
  cd_node *ns = cd_input(g, "pooled_position", 3, (int64_t[]){K, 1, L});
  cd_weights_clear_used(m->clip.w);
  cd_weights_clear_used(m->clip2.w);
  cd_node *pool = NULL;
  cd_node *y1 = cd_clip_build_sdxl(g, &m->clip, n1, NULL, NULL, NULL);
  cd_node *y2 = cd_clip_build_sdxl(g, &m->clip2, n2, NULL, ns, &pool);
  cd_graph_output(g, y1);
  cd_graph_output(g, y2);
  cd_graph_output(g, pool);
  int rc = cd_graph_plan(g, NULL) || cd_weights_check_unused(m->clip.w, "text encoder", m->path) ||
                   cd_weights_check_unused(m->clip2.w, "text_encoder_2", m->path) || cd_graph_set_input_i32(g, n1, i1) ||
                   cd_graph_set_input_i32(g, n2, i2) || cd_graph_set_input(g, ns, sel) || cd_graph_forward(g) ||
                   cd_graph_get(g, y1, h1) || cd_graph_get(g, y2, h2) || cd_graph_get(g, pool, pl)
               ? -1
               : 0;
  free(sel);
  cd_graph_free(g);
  return rc;
}

int cd_sdxl_encode(cd_sd_model *m, const char *const *prompts, int n, const unsigned char *zero, float **ctx,
                   int *T, float *pooled) {
  *ctx = NULL;
  *T = 0;
  if (m->family != CD_FAMILY_SDXL || !m->clip2.w) return cd_set_error("%s: not an SDXL model with two text encoders", m->path);
  if (!m->tok || !m->tok2)
    return cd_set_error("no tokenizer vocabulary for %s: pass --vocab (a tokenizer/ folder or bpe_simple_vocab_16e6.txt.gz)", m->path);
  const int d1 = m->clip.cfg.width, d2 = m->clip2.cfg.width, D = d1 + d2, P = m->clip2.cfg.proj;
  const int64_t L = CD_TOK_MAX_LEN;
  chunks *ch = cd_calloc((size_t)2 * (n > 0 ? n : 1), sizeof *ch), empty[2] = {{0}};
  int *nc = cd_calloc((size_t)(n > 0 ? n : 1), sizeof(int));
  int rc = -1, K = 0, C = 1, need_empty = 0;
  int32_t *i1 = NULL, *i2 = NULL;
  float *h1 = NULL, *h2 = NULL, *pl = NULL;
  cd_tokenizer *tk[2] = {m->tok, m->tok2};
  for (int t = 0; t < 2; t++)
    if (cd_prompt_chunks(tk[t], "", &empty[t].ids, &empty[t].w, &empty[t].n)) goto done;
  for (int i = 0; i < n; i++) {
    if (zero && zero[i]) continue;
    const char *p = prompts[i] ? prompts[i] : "";
    if (cd_prompt_check_tokens(m, p)) goto done;
    for (int t = 0; t < 2; t++)
      if (cd_prompt_chunks(tk[t], p, &ch[2 * i + t].ids, &ch[2 * i + t].w, &ch[2 * i + t].n)) goto done;
    nc[i] = CD_MAX(ch[2 * i].n, ch[2 * i + 1].n);
    if (nc[i] > 1) cd_log("prompt of %d chunks (more than 75 tokens): \"%.60s...\"\n", nc[i], p);
    K += nc[i];
    C = CD_MAX(C, nc[i]);
  }
  for (int i = 0; i < n; i++)
    if (!(zero && zero[i]) && nc[i] < C) need_empty = 1;
  const int empty_row = need_empty ? K++ : -1;
  const int64_t chunk = L * D;
  float *o = cd_calloc((size_t)(n > 0 ? n : 1) * C * chunk, sizeof(float));
  memset(pooled, 0, sizeof(float) * (size_t)n * P);
  *ctx = o;
  *T = (int)(L * C);
  if (K == 0) { rc = 0; goto done; } /* every prompt zeroed */
  /* the rows: each prompt's chunks in order (a tokenizer with fewer chunks gives ""), then "" */
  i1 = cd_malloc((size_t)K * L * sizeof(int32_t));
  i2 = cd_malloc((size_t)K * L * sizeof(int32_t));
  int r = 0;
  for (int i = 0; i < n; i++) {
    if (zero && zero[i]) continue;
    const char *p = prompts[i] ? prompts[i] : "";
    for (int c = 0; c < nc[i]; c++, r++) {
      const chunks *a = c < ch[2 * i].n ? &ch[2 * i] : &empty[0], *b = c < ch[2 * i + 1].n ? &ch[2 * i + 1] : &empty[1];
      const int *x1 = a->ids + (a == &empty[0] ? 0 : c * L), *x2 = b->ids + (b == &empty[1] ? 0 : c * L);
      if (id_check(&m->clip, x1, p, "the text encoder") || id_check(&m->clip2, x2, p, "text_encoder_2")) goto done;
      for (int j = 0; j < L; j++) i1[r * L + j] = x1[j], i2[r * L + j] = x2[j];
    }
  }
  if (empty_row >= 0)
    for (int j = 0; j < L; j++) i1[empty_row * L + j] = empty[0].ids[j], i2[empty_row * L + j] = empty[1].ids[j];
  h1 = cd_malloc(sizeof(float) * (size_t)K * L * d1);
  h2 = cd_malloc(sizeof(float) * (size_t)K * L * d2);
  pl = cd_malloc(sizeof(float) * (size_t)K * P);
  if (run_encoders(m, i1, i2, K, h1, h2, pl)) goto done;
  /* assemble [77, d1 | d2] per chunk; emphasis on the concatenated rows (A1111 weighs SDXL's
   * whole cond) with the first tokenizer's weights */
  float wone[CD_TOK_MAX_LEN];
  for (int j = 0; j < L; j++) wone[j] = 1.0f;
  r = 0;
  for (int i = 0; i < n; i++) {
    if (zero && zero[i]) continue;
    memcpy(pooled + (size_t)i * P, pl + (size_t)r * P, sizeof(float) * P);
    for (int c = 0; c < C; c++) {
      int row = c < nc[i] ? r + c : empty_row;
      float *dst = o + ((int64_t)i * C + c) * chunk;
      for (int j = 0; j < L; j++) {
        memcpy(dst + j * D, h1 + ((int64_t)row * L + j) * d1, sizeof(float) * d1);
        memcpy(dst + j * D + d1, h2 + ((int64_t)row * L + j) * d2, sizeof(float) * d2);
      }
      if (c < nc[i]) cd_prompt_emphasis(dst, c < ch[2 * i].n ? ch[2 * i].w + c * L : wone, (int)L, D);
    }
    r += nc[i];
  }
  rc = 0;
done:
  if (rc) {
    free(*ctx);
    *ctx = NULL;
    *T = 0;
  }
  for (int i = 0; i < 2 * n; i++) free(ch[i].ids), free(ch[i].w);
  for (int t = 0; t < 2; t++) free(empty[t].ids), free(empty[t].w);
  free(ch);
  free(nc);
  free(i1);
  free(i2);
  free(h1);
  free(h2);
  free(pl);
  return rc;
}

int cd_sdxl_encode_literal(cd_sd_model *m, const char *const *prompts, int n, float *ctx, float *pooled) {
  if (m->family != CD_FAMILY_SDXL || !m->clip2.w) return cd_set_error("%s: not an SDXL model with two text encoders", m->path);
  if (!m->tok || !m->tok2) return cd_set_error("no tokenizer vocabulary for %s: pass --vocab", m->path);
  const int d1 = m->clip.cfg.width, d2 = m->clip2.cfg.width, D = d1 + d2, P = m->clip2.cfg.proj;
  const int64_t L = CD_TOK_MAX_LEN;
  int32_t *i1 = cd_malloc(sizeof(int32_t) * (size_t)n * L), *i2 = cd_malloc(sizeof(int32_t) * (size_t)n * L);
  float *h1 = cd_malloc(sizeof(float) * (size_t)n * L * d1), *h2 = cd_malloc(sizeof(float) * (size_t)n * L * d2);
  float *pl = cd_malloc(sizeof(float) * (size_t)n * (P > 0 ? P : 1));
  int rc = -1;
  for (int i = 0; i < n; i++) {
    int t1[CD_TOK_MAX_LEN], t2[CD_TOK_MAX_LEN], tr = 0;
    const char *p = prompts[i] ? prompts[i] : "";
    if (cd_prompt_check_tokens(m, p) || cd_tokenize_padded(m->tok, p, t1, &tr) || cd_tokenize_padded(m->tok2, p, t2, NULL))
      goto done;
    if (tr) cd_warn_once("prompt longer than 75 tokens was truncated: \"%.60s...\"", p); /* once: callers repeat prompts */
    if (id_check(&m->clip, t1, p, "the text encoder") || id_check(&m->clip2, t2, p, "text_encoder_2")) goto done;
    for (int j = 0; j < L; j++) i1[i * L + j] = t1[j], i2[i * L + j] = t2[j];
  }
  if (run_encoders(m, i1, i2, n, h1, h2, pl)) goto done;
  for (int64_t r = 0; r < (int64_t)n * L; r++) {
    memcpy(ctx + r * D, h1 + r * d1, sizeof(float) * d1);
    memcpy(ctx + r * D + d1, h2 + r * d2, sizeof(float) * d2);
  }
  if (pooled) memcpy(pooled, pl, sizeof(float) * (size_t)n * P);
  rc = 0;
done:
  free(i1);
  free(i2);
  free(h1);
  free(h2);
  free(pl);
  return rc;
}
