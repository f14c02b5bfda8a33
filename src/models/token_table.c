/* token_table.c - one way to add tokens to a model (see token_table.h). */
#include "token_table.h"

#include <string.h>

#include "core/common.h"

/* Everything that can fail for encoder k, checked before anything changes: *V the table's rows. */
static int check_encoder(cd_sd_model *m, int k, int n, const char *const *tokens, const int *init_id, const float *rows,
                         int64_t *V) {
  cd_clip *c = cd_sd_text(m, k);
  cd_tokenizer *tok = cd_sd_tok(m, k);
  const char *what = k ? "text_encoder_2" : "the text encoder";
  cd_weight *e = c->w ? cd_weights_get(c->w, CD_TOKEN_TABLE) : NULL;
  if (!e || e->ndim != 2) return cd_set_error("%s: %s has no token embedding (%s)", m->path, what, CD_TOKEN_TABLE);
  *V = e->ne[0];
  if (*V != c->cfg.vocab)
    return cd_set_error("%s: token embedding of %s has %ld rows, its config %d", m->path, what, (long)*V, c->cfg.vocab);
  if (tok) {
    if (!tokens) return cd_set_error("adding %d tokens: no token strings given", n);
    if (cd_tokenizer_vocab_size(tok) != *V)
      return cd_set_error("%s: tokenizer%s has %d tokens but %s %ld rows", m->path, k ? "_2" : "", cd_tokenizer_vocab_size(tok),
                          what, (long)*V);
    for (int i = 0; i < n; i++) {
      if (!tokens[i] || !*tokens[i]) return cd_set_error("adding tokens: token %d is empty", i + 1);
      if (cd_tokenizer_lookup(tok, tokens[i]) >= 0)
        return cd_set_error("token %s is already defined (by the vocabulary or an earlier delta): choose another string", tokens[i]);
      for (int j = 0; j < i; j++)
        if (!strcmp(tokens[i], tokens[j])) return cd_set_error("token %s is given twice", tokens[i]);
    }
  }
  if (!rows)
    for (int i = 0; i < n; i++)
      if (!init_id || init_id[i] < 0 || init_id[i] >= *V)
        return cd_set_error("initializer token id %d of token %d is not a row of %s's table [0, %ld)", init_id ? init_id[i] : -1,
                            i + 1, what, (long)*V);
  return 0;
}

static int grow(cd_sd_model *m, int k, int n, const char *const *tokens, const int *init_id, const float *rows, int *ids) {
  cd_clip *c = cd_sd_text(m, k);
  cd_tokenizer *tok = cd_sd_tok(m, k);
  cd_weight *e = cd_weights_get(c->w, CD_TOKEN_TABLE);
  const int64_t V = e->ne[0], D = e->ne[1];
  float *t = cd_malloc((size_t)(V + n) * D * sizeof(float));
  if (e->type == CD_TYPE_F32) memcpy(t, cd_weight_host(e), (size_t)V * D * sizeof(float)); /* current: after training in a backend too */
  else
    for (int64_t r = 0; r < V; r++) cd_weight_row_f32(e, r, t + r * D);
  for (int i = 0; i < n; i++) {
    float *dst = t + (V + i) * D;
    if (rows) memcpy(dst, rows + (size_t)i * D, (size_t)D * sizeof(float));
    else memcpy(dst, t + (int64_t)init_id[i] * D, (size_t)D * sizeof(float));
  }
  if (cd_weights_put(c->w, CD_TOKEN_TABLE, 2, (int64_t[]){V + n, D}, t)) return -1;
  c->cfg.vocab = (int)(V + n);
  for (int i = 0; i < n; i++) {
    int id = tok ? cd_tokenizer_add_token(tok, tokens[i]) : (int)(V + i);
    if (id != V + i) /* cannot happen after the checks: the tokenizer's ids follow its size */
      return cd_set_error("token %s got id %d, expected %ld", tokens[i], id, (long)(V + i));
    if (ids && k == 0) ids[i] = id;
  }
  return 0;
}

int cd_sd_add_tokens_rows(cd_sd_model *m, int n, const char *const *tokens, const int *init_id,
                          const float *const *rows, int *ids) {
  if (n <= 0) return 0;
  const int nt = cd_sd_ntext(m);
  int64_t V[CD_SD_MAX_TEXT];
  for (int k = 0; k < nt; k++)
    if (check_encoder(m, k, n, tokens, init_id, rows ? rows[k] : NULL, &V[k])) return -1;
  /* the ids are shared by both tokenizers: the model is useless if they would differ */
  if (nt > 1 && V[1] != V[0])
    return cd_set_error("%s: the two token tables have %ld and %ld rows: a token would get two ids", m->path, (long)V[0],
                        (long)V[1]);
  for (int k = 0; k < nt; k++)
    if (grow(m, k, n, tokens, init_id, rows ? rows[k] : NULL, ids)) return -1;
  return 0;
}

int cd_sd_add_tokens(cd_sd_model *m, int n, const char *const *tokens, const int *init_id, const float *rows, int *ids) {
  if (rows && cd_sd_ntext(m) > 1)
    return cd_set_error("%s: SDXL tokens need rows for both text encoders (cd_sd_add_tokens_rows)", m->path);
  const float *r[CD_SD_MAX_TEXT] = {rows, NULL};
  return cd_sd_add_tokens_rows(m, n, tokens, init_id, rows ? r : NULL, ids);
}
