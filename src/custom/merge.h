/* merge.h - Custom Diffusion's closed-form merge of concepts trained apart
 * (cdiff merge): one delta per concept in, one delta out whose K/V weights
 * satisfy every concept's constraints exactly while changing the outputs on
 * generic captions as little as possible (see merge_solve.h and docs/merge.md).
 *
 * Features (one row per token, width d = context dim) come from the text
 * encoder's final-LayerNorm output: for each prompt, rows 1 .. EOS inclusive
 * (no SOS, no padding); a prompt whose first three tokens are "photo", "of",
 * "a" drops those rows too. Concept i's constraint prompts are
 * "<new_i> {category}" and "photo of a <new_i> {category}" ("painting in the
 * style of <new_i> {category}" when the category contains "art"). A delta of
 * several tokens takes "cat1,cat2,...", one category per token in its order
 * (each token's two prompts); with one category only its first token's.
 *
 * For each attn2 to_k / to_v weight, with W0 the base and W_i concept i's:
 *   C = [C_1; …; C_n] (duplicate rows removed), V = [C_1 W_1ᵀ; …; C_n W_nᵀ]
 *   Ŵ = cd_merge_solve(W0, C, V, C_reg, ridge)
 * Other weights of "crossattn" deltas (to_q, to_out) have no closed form: the
 * merge takes their average W0 + mean_i(W_i − W0) (a delta lacking the weight
 * counts with W_i = W0) and warns.
 */
#ifndef CD_MERGE_H
#define CD_MERGE_H

#include <stdio.h>

#include "custom/delta.h"
#include "custom/merge_solve.h"
#include "models/sd_model.h"

#define CD_MERGE_REG_COUNT 200   /* regularisation captions used by default (as the original) */
#define CD_MERGE_WARN_RCOND 1e-4 /* below it (without --ridge) the merge warns: see docs/merge.md */
#define CD_MERGE_DEDUP_TOL 1e-6  /* relative distance under which two constraint rows are one */
#define CD_MERGE_REG_FILE "reg_captions.txt"

/* ---- features ---- */

/* Feature rows of n prompts with m's text encoder (tokens the prompts use
 * must exist in m->tok and the embedding table). Returns *F [rows, d]
 * (malloc'ed, float64) and *rows; per_prompt[n] (may be NULL) gets each
 * prompt's row count. Prompts are encoded in small batches. */
int cd_merge_features(cd_sd_model *m, const char *const *prompts, int n, double **F, int *rows, int *per_prompt);

/* The same with pad more rows per prompt: the first pad padding rows after the
 * end token (fewer where the 77 positions end). The UNet attends to every one
 * of the 77 rows, and a causal text encoder's padding rows see the whole
 * prompt, the new token included: docs/merge.md ("Padding rows"). */
int cd_merge_features_pad(cd_sd_model *m, const char *const *prompts, int n, int pad, double **F, int *rows,
                          int *per_prompt);

/* The two constraint prompts of a concept; tok NULL or "" gives
 * "{category}" and "photo of a {category}". -1 if they do not fit cap. */
int cd_merge_concept_prompts(const char *tok, const char *category, char out[2][512]);

/* ---- one matrix ---- */

/* Builds C = [C_1; …; C_n] [m, d] and V = [C_1 W_1ᵀ; …] [m, rows], removes
 * duplicate rows of C (with their V rows; CD_MERGE_DEDUP_TOL), and solves.
 * W0, W[i], W_hat: [rows, d]; Ci[i]: [mi[i], d]; Creg [r, d]; all float64.
 * *m_used (may be NULL) = constraint rows after removing duplicates. */
int cd_merge_matrix(const double *W0, const double *const *W, int n, int rows, int d, const double *const *Ci,
                    const int *mi, const double *Creg, int r, double ridge, double *W_hat, cd_merge_report *rep,
                    int *m_used);

/* ---- whole deltas ---- */

typedef struct {
  const char *const *reg; /* regularisation captions (required, nreg >= 1) */
  int nreg;
  double ridge;           /* 0: exact solve; see merge_solve.h for its meaning */
  int pad_rows;           /* padding rows after the end token kept in every prompt's features (0: the paper's) */
  FILE *log;              /* token table and per-matrix report; NULL: silent */
} cd_merge_opts;

typedef struct {
  char name[192];
  int rows, d, m;              /* m: constraint rows after removing duplicates */
  cd_merge_report rep;         /* float64 solution */
  double rel_residual_stored;  /* the same residual with Ŵ rounded to float32 (what is saved) */
} cd_merge_layer;

typedef struct {
  cd_merge_layer *layers; /* K/V matrices merged by the formula */
  int nlayers;
  int naveraged;          /* other weights, averaged */
  int m_total;            /* constraint rows before removing duplicates */
  int reg_rows;           /* rows of C_reg */
  double max_rel_residual, max_rel_residual_stored;
} cd_merge_info;

void cd_merge_info_free(cd_merge_info *info);

/* Merges n deltas (any layout, low-rank ones included) trained on m's base
 * model. m must be freshly loaded (no deltas applied): the renumbered tokens
 * <new1>, <new2>, … (argument order, then each delta's own order) are added
 * to m's tokenizer and text encoder, and m's UNet stays the base. deltas[i]
 * are resolved in place. *out: a full-weight delta (cd_delta_save it).
 * info (may be NULL) receives the per-matrix report (cd_merge_info_free). */
int cd_merge_deltas(cd_sd_model *m, cd_delta *const *deltas, const char *const *categories, int n,
                    const cd_merge_opts *o, cd_delta **out, cd_merge_info *info);

/* ---- regularisation captions ---- */

/* Reads up to max (0: all) non-empty lines, trimmed, from a text file.
 * *lines (array and strings malloc'ed; free with cd_merge_free_lines). */
int cd_merge_read_lines(const char *path, int max, char ***lines, int *n);
void cd_merge_free_lines(char **lines, int n);
/* The default caption file: $CDIFF_DATA/reg_captions.txt ($CDIFF_DATA may
 * also name the file itself), else ../data/reg_captions.txt next to the
 * running binary (/proc/self/exe), i.e. the repository's data/ for
 * build/cdiff. -1 with an error telling to pass --reg-prompts otherwise. */
int cd_merge_default_reg_file(char *out, size_t cap);

#endif
