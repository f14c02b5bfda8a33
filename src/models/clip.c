/* clip.c - CLIP text encoder forward graph (see clip.h for the math). */
#include "clip.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/common.h"

#define P "text_model."

int cd_clip_set_skip(cd_clip *m, int clip_skip) {
  if (clip_skip < 1 || clip_skip > m->cfg.layers)
    return cd_set_error("--clip-skip %d out of range [1, %d] (1 = the text encoder's default output layer)", clip_skip,
                        m->cfg.layers);
  m->cfg.skip = clip_skip - 1;
  return 0;
}

/* The weights of the layers clip skip leaves out are known, not unknown keys. */
static void mark_skipped_layers(cd_weights *w, int from, int to) {
  for (int i = 0; i < cd_weights_count(w); i++) {
    cd_weight *x = cd_weights_at(w, i);
    for (int l = from; l < to; l++) {
      char p[64];
      int n = snprintf(p, sizeof p, P "encoder.layers.%d.", l);
      if (!strncmp(x->name, p, (size_t)n)) x->used = 1;
    }
  }
}

/* The embeddings and layers [0, run): x after layer run-1 (hidden[i] as cd_clip_build). */
static cd_node *encoder(cd_graph *g, cd_clip *m, cd_node *ids, cd_node *extra, int run, cd_node **hidden) {
  const cd_clip_config *c = &m->cfg;
  cd_weights *w = m->w;
  const int64_t d = c->width, T = ids->ne[1];
  if (ids->ndim != 2 || T > c->max_pos) return cd_graph_fail(g, "clip: ids must be [B, <=%d]", c->max_pos);
  /* x = token_embedding[ids] + position_embedding[:T]            [B, T, d] */
  /* extra: the table's last E rows as their own node (the tokens a graph trains); the embedding reads ids >= vocab - E from it */
  const int64_t E = extra ? extra->ne[0] : 0;
  if (extra && (extra->ndim != 2 || extra->ne[1] != d || E >= c->vocab))
    return cd_graph_fail(g, "clip: extra token rows must be [E < %d, %ld]", c->vocab, (long)d);
  cd_node *tok = extra ? cd_w_rows(g, w, 0, c->vocab - E, P "embeddings.token_embedding.weight")
                       : cd_w(g, w, CD_SHAPE(c->vocab, d), P "embeddings.token_embedding.weight");
  cd_node *pos = cd_w(g, w, CD_SHAPE(c->max_pos, d), P "embeddings.position_embedding.weight");
  if (T != c->max_pos) return cd_graph_fail(g, "clip: sequence length %ld, model has %d positions", (long)T, c->max_pos);
  cd_node *x = cd_add(g, cd_embedding(g, ids, tok, extra), pos);
  if (hidden) hidden[0] = x;
  const int64_t hd = d / c->heads;
  mark_skipped_layers(w, run, c->layers);
  for (int l = 0; l < run; l++) {
    char p[96];
    snprintf(p, sizeof p, P "encoder.layers.%d.", l);
    /* x += out_proj(attention(q, k, v)) over LN1(x), causal */
    cd_node *h = cd_layer_norm(g, x, cd_w(g, w, CD_SHAPE(d), "%slayer_norm1.weight", p),
                               cd_w(g, w, CD_SHAPE(d), "%slayer_norm1.bias", p), 1e-5f);
    cd_node *q = cd_linear(g, h, cd_w(g, w, CD_SHAPE(d, d), "%sself_attn.q_proj.weight", p),
                           cd_w(g, w, CD_SHAPE(d), "%sself_attn.q_proj.bias", p));
    cd_node *k = cd_linear(g, h, cd_w(g, w, CD_SHAPE(d, d), "%sself_attn.k_proj.weight", p),
                           cd_w(g, w, CD_SHAPE(d), "%sself_attn.k_proj.bias", p));
    cd_node *v = cd_linear(g, h, cd_w(g, w, CD_SHAPE(d, d), "%sself_attn.v_proj.weight", p),
                           cd_w(g, w, CD_SHAPE(d), "%sself_attn.v_proj.bias", p));
    cd_node *a = cd_attention(g, q, k, v, c->heads, 1, 1.0f / sqrtf((float)hd));
    a = cd_linear(g, a, cd_w(g, w, CD_SHAPE(d, d), "%sself_attn.out_proj.weight", p),
                  cd_w(g, w, CD_SHAPE(d), "%sself_attn.out_proj.bias", p));
    x = cd_add(g, x, a);
    /* x += fc2(act(fc1(LN2(x)))) */
    h = cd_layer_norm(g, x, cd_w(g, w, CD_SHAPE(d), "%slayer_norm2.weight", p),
                      cd_w(g, w, CD_SHAPE(d), "%slayer_norm2.bias", p), 1e-5f);
    h = cd_linear(g, h, cd_w(g, w, CD_SHAPE(c->mlp, d), "%smlp.fc1.weight", p),
                  cd_w(g, w, CD_SHAPE(c->mlp), "%smlp.fc1.bias", p));
    h = c->quick_gelu ? cd_quick_gelu(g, h) : cd_gelu(g, h);
    h = cd_linear(g, h, cd_w(g, w, CD_SHAPE(d, c->mlp), "%smlp.fc2.weight", p),
                  cd_w(g, w, CD_SHAPE(d), "%smlp.fc2.bias", p));
    x = cd_add(g, x, h);
    if (hidden) hidden[l + 1] = x;
  }
  return x;
}

static cd_node *final_norm(cd_graph *g, cd_clip *m, cd_node *x) {
  const int64_t d = m->cfg.width;
  return cd_layer_norm(g, x, cd_w(g, m->w, CD_SHAPE(d), P "final_layer_norm.weight"),
                       cd_w(g, m->w, CD_SHAPE(d), P "final_layer_norm.bias"), 1e-5f);
}

cd_node *cd_clip_build(cd_graph *g, cd_clip *m, cd_node *ids, cd_node *extra, cd_node **hidden) {
  const cd_clip_config *c = &m->cfg;
  const int run = c->layers - c->skip;
  if (c->skip < 0 || run < 1) return cd_graph_fail(g, "clip: clip skip %d leaves no layer of %d", c->skip + 1, c->layers);
  cd_node *x = final_norm(g, m, encoder(g, m, ids, extra, run, hidden));
  cd_node_set_name(x, "text.last_hidden_state");
  return x;
}

/* Marks the final LayerNorm and the projection known when no graph reads them. */
static void mark_used(cd_weights *w, const char *name) {
  cd_weight *x = cd_weights_get(w, name);
  if (x) x->used = 1;
}

cd_node *cd_clip_build_sdxl(cd_graph *g, cd_clip *m, cd_node *ids, cd_node *extra, cd_node *sel,
                            cd_node **pooled) {
  const cd_clip_config *c = &m->cfg;
  const int64_t d = c->width, B = ids->ne[0];
  /* hidden_states[-2-skip] is the output of layer L-1-skip */
  const int out = c->layers - 1 - c->skip;
  if (c->skip < 0 || out < 0)
    return cd_graph_fail(g, "clip: clip skip %d leaves no penultimate layer of %d", c->skip + 1, c->layers);
  if (pooled && (c->proj < 1 || !sel))
    return cd_graph_fail(g, "clip: a pooled output needs a text_projection and a pooled position");
  cd_node *hs[CD_CLIP_MAX_LAYERS + 1];
  if (c->layers > CD_CLIP_MAX_LAYERS) return cd_graph_fail(g, "clip: %d layers (at most %d)", c->layers, CD_CLIP_MAX_LAYERS);
  cd_node *last = encoder(g, m, ids, extra, pooled ? c->layers : out, hs);
  cd_node *ctx = hs[out];
  cd_node_set_name(ctx, "text.penultimate_hidden_state");
  if (!pooled) {
    mark_used(m->w, P "final_layer_norm.weight");
    mark_used(m->w, P "final_layer_norm.bias");
    mark_used(m->w, "text_projection.weight");
    return ctx;
  }
  if (sel->ndim != 3 || sel->ne[0] != B || sel->ne[1] != 1 || sel->ne[2] != ids->ne[1])
    return cd_graph_fail(g, "clip: pooled position must be [B, 1, T]");
  /* the LayerNorm is per row, so gathering the pooled row first gives the same values */
  cd_node *p = final_norm(g, m, cd_bmm(g, sel, last, 0, 0)); /* [B, 1, d] */
  p = cd_view(g, p, CD_SHAPE(B, d));
  *pooled = cd_linear(g, p, cd_w(g, m->w, CD_SHAPE(c->proj, d), "text_projection.weight"), NULL);
  cd_node_set_name(*pooled, "text.text_embeds");
  return ctx;
}

void cd_clip_pool_select(const cd_clip_config *c, const int *ids, int B, int T, float *sel) {
  for (int b = 0; b < B; b++) {
    const int *r = ids + (size_t)b * T;
    int at = -1;
    for (int t = 0; t < T; t++) {
      if (c->pool_id ? r[t] == c->pool_id : (at < 0 || r[t] > r[at])) at = t;
      if (c->pool_id && at >= 0) break;
    }
    if (at < 0) at = T - 1;
    for (int t = 0; t < T; t++) sel[(size_t)b * T + t] = t == at ? 1.0f : 0.0f;
  }
}
