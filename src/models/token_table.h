/* token_table.h - adding tokens to a model: the tokenizer and the text encoder's token embedding together.
 *
 * Every caller that gives a model new tokens (a delta's <new1>, the trainer's
 * modifier tokens) goes through cd_sd_add_tokens, so the tokenizer's ids and
 * the rows of text_model.embeddings.token_embedding.weight never disagree:
 * token i of the call gets id V + i and row V + i, V being the table's rows
 * before the call. A model with two text encoders (SDXL) gets the tokens in
 * both tokenizers and both tables (text_encoder_2's row of token i from its
 * own initializer row, or from its own rows), as Custom Diffusion's SDXL
 * training adds a modifier token to both.
 */
#ifndef CD_TOKEN_TABLE_H
#define CD_TOKEN_TABLE_H

#include "models/sd_model.h"

#define CD_TOKEN_TABLE "text_model.embeddings.token_embedding.weight"

/* Adds n tokens. Row V + i of the table [V + n, d] is rows[i * d ...] when
 * rows is given, else a copy of row init_id[i] (the initializer token's
 * embedding, as Custom Diffusion starts a modifier token). The table becomes
 * f32 (training updates the new rows in place; a 16-bit table is widened).
 * tokens[i] are added to the tokenizer; a model without a tokenizer (tests
 * that feed ids) gets the rows only, and tokens may be NULL then. ids (may be
 * NULL) receives the n new ids. All or nothing: a token already defined or
 * repeated, an initializer id out of range, or a tokenizer that disagrees
 * with the table leaves the model unchanged. 0 or -1 + cd_last_error. */
int cd_sd_add_tokens(cd_sd_model *m, int n, const char *const *tokens, const int *init_id, const float *rows, int *ids);
/* The same with rows per text encoder: rows[k] (NULL: each token's init_id row of table k)
 * for encoder k < cd_sd_ntext(m). cd_sd_add_tokens(..., rows, ...) is this with rows[0] =
 * rows and, for SDXL, rows[1] = NULL only when rows is NULL (given rows must name both). */
int cd_sd_add_tokens_rows(cd_sd_model *m, int n, const char *const *tokens, const int *init_id,
                          const float *const *rows, int *ids);

#endif
