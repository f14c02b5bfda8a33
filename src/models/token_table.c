/* token_table.c - one way to add tokens to a model (see token_table.h). */
#include "token_table.h"

#include <string.h>

#include "core/common.h"

int cd_sd_add_tokens(cd_sd_model *m, int n, const char *const *tokens, const int *init_id, const float *rows, int *ids) {
  if (n <= 0) return 0;
  cd_weight *e = m->clip.w ? cd_weights_get(m->clip.w, CD_TOKEN_TABLE) : NULL;
  if (!e || e->ndim != 2) return cd_set_error("%s: the text encoder has no token embedding (%s)", m->path, CD_TOKEN_TABLE);
  const int64_t V = e->ne[0], D = e->ne[1];
  if (V != m->clip.cfg.vocab)
    return cd_set_error("%s: token embedding has %ld rows, the text encoder config %d", m->path, (long)V, m->clip.cfg.vocab);
  /* everything that can fail is checked before anything changes */
  if (m->tok) {
    if (!tokens) return cd_set_error("adding %d tokens: no token strings given", n);
    if (cd_tokenizer_vocab_size(m->tok) != V)
      return cd_set_error("%s: tokenizer has %d tokens but the text encoder %ld rows", m->path, cd_tokenizer_vocab_size(m->tok), (long)V);
    for (int i = 0; i < n; i++) {
      if (!tokens[i] || !*tokens[i]) return cd_set_error("adding tokens: token %d is empty", i + 1);
      if (cd_tokenizer_lookup(m->tok, tokens[i]) >= 0)
        return cd_set_error("token %s is already defined (by the vocabulary or an earlier delta): choose another string", tokens[i]);
      for (int j = 0; j < i; j++)
        if (!strcmp(tokens[i], tokens[j])) return cd_set_error("token %s is given twice", tokens[i]);
    }
  }
  if (!rows)
    for (int i = 0; i < n; i++)
      if (!init_id || init_id[i] < 0 || init_id[i] >= V)
        return cd_set_error("initializer token id %d of token %d is not a row of the table [0, %ld)", init_id ? init_id[i] : -1, i + 1, (long)V);

  float *t = cd_malloc((size_t)(V + n) * D * sizeof(float));
  if (e->type == CD_TYPE_F32) memcpy(t, e->data, (size_t)V * D * sizeof(float));
  else
    for (int64_t r = 0; r < V; r++) cd_weight_row_f32(e, r, t + r * D);
  for (int i = 0; i < n; i++) {
    float *dst = t + (V + i) * D;
    if (rows) memcpy(dst, rows + (size_t)i * D, (size_t)D * sizeof(float));
    else memcpy(dst, t + (int64_t)init_id[i] * D, (size_t)D * sizeof(float));
  }
  if (cd_weights_put(m->clip.w, CD_TOKEN_TABLE, 2, (int64_t[]){V + n, D}, t)) return -1;
  m->clip.cfg.vocab = (int)(V + n);
  for (int i = 0; i < n; i++) {
    int id = m->tok ? cd_tokenizer_add_token(m->tok, tokens[i]) : (int)(V + i);
    if (id != V + i) /* cannot happen after the checks above: the tokenizer's ids follow its size */
      return cd_set_error("token %s got id %d, expected %ld", tokens[i], id, (long)(V + i));
    if (ids) ids[i] = id;
  }
  return 0;
}
