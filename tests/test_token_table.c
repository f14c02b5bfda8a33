/* Adding tokens to a model (models/token_table.h): the tokenizer and the
 * token table grow together, new rows are their initializers' (or given)
 * rows, failures change nothing, and the text encoder reads the new rows,
 * whole or split into frozen and trainable parts (the training graph's way). */
#include <string.h>

#include "core/common.h"
#include "diffusion/pipeline.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "test.h"

static int load(const char *name, const char *dtype, cd_sd_model **m) {
  char mp[1024];
  int g = test_golden_need(mp, sizeof mp, name);
  if (g) return g;
  cd_load_opts lo = {.weights_dtype = dtype};
  if (cd_sd_load(mp, &lo, m)) {
    snprintf(test_msg, sizeof test_msg, "%s: %s", name, cd_last_error());
    return -1;
  }
  if (!(*m)->tok) {
    snprintf(test_msg, sizeof test_msg, "%s: no tokenizer vocabulary", name);
    return -1;
  }
  return 0;
}

static float *table_copy(const cd_sd_model *m, int64_t *rows) {
  cd_weight *e = cd_weights_get(m->clip.w, CD_TOKEN_TABLE);
  float *t = cd_malloc((size_t)e->ne[0] * e->ne[1] * sizeof(float));
  for (int64_t r = 0; r < e->ne[0]; r++) cd_weight_row_f32(e, r, t + r * e->ne[1]);
  *rows = e->ne[0];
  return t;
}

/* the table, the tokenizer and the config all still have V rows/tokens and the same values */
static int unchanged(const cd_sd_model *m, const float *before, int64_t V) {
  int64_t n;
  float *now = table_copy(m, &n);
  int ok = n == V && m->clip.cfg.vocab == V && cd_tokenizer_vocab_size(m->tok) == V &&
           !memcmp(now, before, (size_t)V * m->clip.cfg.width * sizeof(float));
  free(now);
  return ok;
}

/* rows from initializers, on a 16-bit table too (widened exactly) */
static void from_initializers(const char *dtype) {
  cd_sd_model *m = NULL;
  int r = load("tiny-sd1", dtype, &m);
  if (r) { cd_sd_free(m); GOLDEN_STATUS(r); }
  const int64_t D = m->clip.cfg.width;
  int64_t V;
  float *before = table_copy(m, &V);
  int ids[2] = {-1, -1}, pid[CD_TOK_MAX_LEN];
  int rc = cd_sd_add_tokens(m, 2, (const char *[]){"<new1>", "<new2>"}, (int[]){42170, 320}, NULL, ids);
  int64_t V2 = 0;
  float *after = rc ? NULL : table_copy(m, &V2);
  cd_weight *e = cd_weights_get(m->clip.w, CD_TOKEN_TABLE);
  int ok_ids = !rc && ids[0] == V && ids[1] == V + 1 && cd_tokenizer_lookup(m->tok, "<new1>") == V &&
               cd_tokenizer_lookup(m->tok, "<new2>") == V + 1 && cd_tokenizer_vocab_size(m->tok) == V + 2;
  int ok_rows = after && V2 == V + 2 && m->clip.cfg.vocab == V + 2 && e->type == CD_TYPE_F32 &&
                !memcmp(after, before, (size_t)V * D * sizeof(float)) &&
                !memcmp(after + V * D, before + (int64_t)42170 * D, (size_t)D * sizeof(float)) &&
                !memcmp(after + (V + 1) * D, before + (int64_t)320 * D, (size_t)D * sizeof(float));
  int ok_prompt = !rc && !cd_prompt_ids(m, "a photo of <new2> cat", pid);
  int found = 0;
  for (int k = 0; ok_prompt && k < CD_TOK_MAX_LEN; k++) found |= pid[k] == V + 1;
  free(before);
  free(after);
  cd_sd_free(m);
  CHECK_OK(rc);
  CHECKF(ok_ids, "ids %d %d, expected %ld %ld", ids[0], ids[1], (long)V, (long)V + 1);
  CHECK(ok_rows);
  CHECK(ok_prompt && found);
}

TEST(rows_from_initializers_f32) { from_initializers(NULL); }
TEST(rows_from_initializers_f16_table) { from_initializers("f16"); }

TEST(given_rows_and_no_tokenizer) {
  cd_sd_model *m = NULL;
  int r = load("tiny-sd1", NULL, &m);
  if (r) { cd_sd_free(m); GOLDEN_STATUS(r); }
  const int64_t D = m->clip.cfg.width, V = m->clip.cfg.vocab;
  float *rows = cd_malloc(2 * D * sizeof(float));
  test_fill_uniform(rows, 2 * D, -1, 1, 7);
  int ids[2];
  int rc = cd_sd_add_tokens(m, 1, (const char *[]){"<new1>"}, NULL, rows, ids);
  cd_weight *e = cd_weights_get(m->clip.w, CD_TOKEN_TABLE);
  int ok1 = !rc && ids[0] == V && e->ne[0] == V + 1 && !memcmp(e->data + V * D, rows, D * sizeof(float));
  /* a model without a tokenizer (ids fed directly) gets the rows only */
  cd_tokenizer_free(m->tok);
  m->tok = NULL;
  int rc2 = rc ? -1 : cd_sd_add_tokens(m, 1, NULL, NULL, rows + D, ids + 1);
  e = cd_weights_get(m->clip.w, CD_TOKEN_TABLE);
  int ok2 = !rc2 && ids[1] == V + 1 && e->ne[0] == V + 2 && m->clip.cfg.vocab == V + 2 &&
            !memcmp(e->data + (V + 1) * D, rows + D, D * sizeof(float));
  free(rows);
  cd_sd_free(m);
  CHECK_OK(rc);
  CHECK(ok1);
  CHECK_OK(rc2);
  CHECK(ok2);
}

TEST(failures_change_nothing) {
  cd_sd_model *m = NULL;
  int r = load("tiny-sd1", "f16", &m);
  if (r) { cd_sd_free(m); GOLDEN_STATUS(r); }
  int64_t V;
  float *before = table_copy(m, &V);
  char err[5][300];
  struct { int n; const char *t[2]; int init[2]; } bad[5] = {
      {1, {"ktn"}, {42170}},                     /* a vocabulary word */
      {2, {"<new1>", "<new1>"}, {42170, 320}},   /* given twice */
      {2, {"<new1>", "<new2>"}, {42170, -1}},    /* initializer out of range */
      {1, {"<new1>"}, {(int)V}},                 /* the row being added is no initializer */
      {1, {""}, {42170}},                        /* empty */
  };
  int fails = 0, same = 1;
  for (int i = 0; i < 5; i++) {
    int rc = cd_sd_add_tokens(m, bad[i].n, bad[i].t, bad[i].init, NULL, NULL);
    fails += rc != 0;
    snprintf(err[i], sizeof err[i], "%s", cd_last_error());
    same = same && unchanged(m, before, V) && cd_tokenizer_lookup(m->tok, "<new1>") < 0;
  }
  free(before);
  cd_sd_free(m);
  CHECKF(fails == 5, "%d of 5 bad calls failed", fails);
  CHECK(same);
  CHECKF(strstr(err[0], "ktn") && strstr(err[1], "twice") && strstr(err[2], "-1") && strstr(err[4], "empty"), "errors: '%s' '%s' '%s' '%s'",
         err[0], err[1], err[2], err[4]);
}

/* The text encoder over the grown table: the new token embeds as its initializer
 * does, and the training graph's split (frozen rows + the last rows as their
 * own node, cd_w_rows) gives the same output bit for bit. */
TEST(text_encoder_reads_new_rows) {
  cd_sd_model *m = NULL;
  int r = load("tiny-sd1", NULL, &m);
  if (r) { cd_sd_free(m); GOLDEN_STATUS(r); }
  int ids[2];
  int rc = cd_sd_add_tokens(m, 2, (const char *[]){"<new1>", "<new2>"}, (int[]){42170, 320}, NULL, ids);
  int p_new[CD_TOK_MAX_LEN], p_init[CD_TOK_MAX_LEN];
  if (!rc) rc = cd_prompt_ids(m, "photo of a <new2> cat", p_new) || cd_prompt_ids(m, "photo of a a cat", p_init);
  /* one prompt per forward, in a graph of each kind */
  const int64_t D = m->clip.cfg.width, n = CD_TOK_MAX_LEN * D;
  float *out[4];
  for (int k = 0; k < 4; k++) out[k] = cd_malloc(n * sizeof(float));
  for (int split = 0; split < 2 && !rc; split++) {
    cd_graph *g = cd_graph_new();
    cd_node *x = cd_input_typed(g, "ids", CD_TYPE_I32, 2, (int64_t[]){1, CD_TOK_MAX_LEN});
    cd_node *extra = split ? cd_w_rows(g, m->clip.w, m->clip.cfg.vocab - 2, m->clip.cfg.vocab, CD_TOKEN_TABLE) : NULL;
    cd_node *y = cd_clip_build(g, &m->clip, x, extra, NULL);
    cd_graph_output(g, y);
    rc = cd_graph_plan(g, NULL);
    for (int pr = 0; pr < 2 && !rc; pr++) {
      int32_t in[CD_TOK_MAX_LEN];
      for (int k = 0; k < CD_TOK_MAX_LEN; k++) in[k] = pr ? p_init[k] : p_new[k];
      rc = cd_graph_set_input_i32(g, x, in) || cd_graph_forward(g) || cd_graph_get(g, y, out[2 * split + pr]);
    }
    cd_graph_free(g);
  }
  /* "a" is token 320: the two prompts differ only in that id, with the same
   * row. Two float32 evaluations of the same values agree within the sum of
   * their errors, each within the golden README's 1e-4 of the exact result
   * (a thread split can change the reduction order); a wrong row moves every
   * later position by O(1). */
  const double tol = 2e-4;
  int same_tok = !rc && test_rel_err(out[1], out[0], n) <= tol && test_rel_err(out[3], out[2], n) <= tol;
  int same_split = !rc && test_rel_err(out[2], out[0], n) <= tol;
  int differs = 0;
  for (int k = 0; k < CD_TOK_MAX_LEN; k++) differs += p_new[k] != p_init[k];
  for (int k = 0; k < 4; k++) free(out[k]);
  cd_sd_free(m);
  CHECK_OK(rc);
  CHECKF(differs == 1, "prompts differ in %d ids", differs);
  CHECK(same_tok);
  CHECK(same_split);
}

int main(void) {
  test_pin_threads(); /* bit-for-bit comparisons of two runs (test.h) */
  RUN(rows_from_initializers_f32);
  RUN(rows_from_initializers_f16_table);
  RUN(given_rows_and_no_tokenizer);
  RUN(failures_change_nothing);
  RUN(text_encoder_reads_new_rows);
  return test_summary();
}
