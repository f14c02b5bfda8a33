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

cd_node *cd_clip_build(cd_graph *g, cd_clip *m, cd_node *ids, cd_node *extra, cd_node **hidden) {
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
  const int run = c->layers - c->skip;
  if (c->skip < 0 || run < 1) return cd_graph_fail(g, "clip: clip skip %d leaves no layer of %d", c->skip + 1, c->layers);
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
  x = cd_layer_norm(g, x, cd_w(g, w, CD_SHAPE(d), P "final_layer_norm.weight"),
                    cd_w(g, w, CD_SHAPE(d), P "final_layer_norm.bias"), 1e-5f);
  cd_node_set_name(x, "text.last_hidden_state");
  return x;
}
