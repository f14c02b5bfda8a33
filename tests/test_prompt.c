/* test_prompt.c - prompt weighting and long prompts: the parser against
 * hand-computed fragments and weights (A1111's parse_prompt_attention rules),
 * token weights and 75-token chunks on the CLIP vocabulary, the emphasis
 * rescale, and the encoder path of the pipeline on tiny-sd1. */
#include <unistd.h>

#include "diffusion/pipeline.h"
#include "io/fsutil.h"
#include "models/prompt.h"
#include "test.h"

typedef struct {
  const char *text;
  double w;
} frag;

/* parses p and compares with want[0..n) (NULL text = BREAK); weights to 1e-12 */
static int parse_is(const char *p, const frag *want, int n, char *why, size_t cap) {
  cd_prompt_frag *f;
  int k;
  if (cd_prompt_parse(p, &f, &k)) { snprintf(why, cap, "\"%s\": %s", p, cd_last_error()); return 0; }
  int ok = k == n;
  for (int i = 0; ok && i < n; i++) {
    ok = (want[i].text == NULL) == (f[i].text == NULL) && (!want[i].text || !strcmp(want[i].text, f[i].text)) &&
         (!want[i].text || fabs(f[i].weight - want[i].w) < 1e-12);
    if (!ok) snprintf(why, cap, "\"%s\": fragment %d is \"%s\" x %.12g, expected \"%s\" x %.12g", p, i,
                      f[i].text ? f[i].text : "BREAK", f[i].weight, want[i].text ? want[i].text : "BREAK", want[i].w);
  }
  if (k != n) snprintf(why, cap, "\"%s\": %d fragments, expected %d (first \"%s\")", p, k, n, k ? (f[0].text ? f[0].text : "BREAK") : "");
  cd_prompt_frags_free(f, k);
  return ok;
}

#define PARSE_IS(p, ...) do { const frag w_[] = {__VA_ARGS__}; char why_[512] = ""; \
    CHECKF(parse_is(p, w_, (int)(sizeof w_ / sizeof *w_), why_, sizeof why_), "%s", why_); } while (0)

TEST(parser_weights) {
  const double up = 1.1, dn = 1 / 1.1;
  PARSE_IS("a photo of a cat", {"a photo of a cat", 1});
  PARSE_IS("", {"", 1});
  PARSE_IS("a (red) car", {"a ", 1}, {"red", up}, {" car", 1});
  PARSE_IS("((red))", {"red", up * up});
  PARSE_IS("[red]", {"red", dn});
  PARSE_IS("[[red]]", {"red", dn * dn});
  PARSE_IS("(red:1.3) car", {"red", 1.3}, {" car", 1});
  PARSE_IS("(red: 1.3 )", {"red", 1.3});
  PARSE_IS("((red:1.5))", {"red", 1.5 * up});
  PARSE_IS("[(red:1.5)]", {"red", 1.5 * dn});
  PARSE_IS("(a (b:2) c)", {"a ", up}, {"b", 2 * up}, {" c", up});
  PARSE_IS("(a [b] c:0.5)", {"a ", 0.5}, {"b", 0.5 * dn}, {" c", 0.5});
  PARSE_IS("(red:-0.5)", {"red", -0.5});
  PARSE_IS("(red:.5)", {"red", 0.5});
  /* escapes are literal characters with the enclosing weight */
  PARSE_IS("\\(red\\)", {"(red)", 1});
  PARSE_IS("(a \\) b)", {"a ) b", up});
  PARSE_IS("\\[x\\] \\\\", {"[x] \\", 1});
  /* unclosed brackets weigh up to the end; stray closers and colons are text */
  PARSE_IS("a (b c", {"a ", 1}, {"b c", up});
  PARSE_IS("a [b (c", {"a ", 1}, {"b ", dn}, {"c", dn * up});
  PARSE_IS("a) b] c", {"a) b] c", 1});
  PARSE_IS("time: 5 o'clock", {"time: 5 o'clock", 1});
  PARSE_IS("a:1.2) b", {"a:1.2) b", 1});
  PARSE_IS("(b:)", {"b:", up});
  /* equal weights merge; a weight of exactly 1 merges with its neighbours */
  PARSE_IS("a (b:1) c", {"a b c", 1});
  PARSE_IS("(a)(b)", {"ab", up});
  /* BREAK (a whole word) splits, swallowing the spaces around it */
  PARSE_IS("a BREAK b", {"a", 1}, {NULL, 0}, {"b", 1});
  PARSE_IS("BREAKFAST at noon", {"BREAKFAST at noon", 1});
  PARSE_IS("(<new1> toy:1.2) on a beach", {"<new1> toy", 1.2}, {" on a beach", 1});
  /* errors name the weight */
  cd_prompt_frag *f;
  int n;
  CHECK(cd_prompt_parse("(a:1.2.3)", &f, &n) == -1 && strstr(cd_last_error(), "1.2.3"));
  char deep[600];
  memset(deep, '(', 300);
  strcpy(deep + 300, "x");
  CHECK(cd_prompt_parse(deep, &f, &n) == -1 && strstr(cd_last_error(), "nested"));
}

/* hand-computed emphasis: z *= w per token, then rescaled to the old mean */
TEST(emphasis_rule) {
  float z[3 * 2] = {1, 2, 3, 4, -1, 3}, w[3] = {1, 2, 0.5f};
  /* before: sum 12, mean 2; weighted: 1 2 6 8 -0.5 1.5 -> sum 18; k = 12/18 */
  double want[6] = {1, 2, 6, 8, -0.5, 1.5};
  cd_prompt_emphasis(z, w, 3, 2);
  for (int i = 0; i < 6; i++) CHECKF(fabs(z[i] - want[i] * 12.0 / 18.0) < 1e-6, "z[%d] = %g", i, z[i]);
  float y[4] = {0.1f, -7, 3.3f, 1e-3f}, y0[4], ones[2] = {1, 1};
  memcpy(y0, y, sizeof y);
  cd_prompt_emphasis(y, ones, 2, 2);
  CHECK(!memcmp(y, y0, sizeof y)); /* weight 1 everywhere: bit-exact no-op */
}

static cd_tokenizer *load_tok(void) {
  char p[1024];
  if (test_golden_path(p, sizeof p, "tiny-sd1/tokenizer")) return NULL;
  cd_tokenizer *t = NULL;
  if (cd_tokenizer_load(p, &t)) return NULL;
  return t;
}

TEST(token_weights_and_chunks) {
  cd_tokenizer *t = load_tok();
  if (!t) SKIP("golden tokenizer not found");
  int *ids = NULL, nc = 0;
  float *w = NULL;
  /* plain prompts: exactly the ids of cd_tokenize_padded, weights 1 */
  const char *plain[] = {"a photo of an astronaut riding a horse on mars", "", "A  DOG,running!! 123", "time: 5 o'clock"};
  for (int i = 0; i < 4; i++) {
    int ref[77], tr = 0;
    CHECK_OK(cd_tokenize_padded(t, plain[i], ref, &tr));
    CHECK_OK(cd_prompt_chunks(t, plain[i], &ids, &w, &nc));
    int same = nc == 1 && !memcmp(ids, ref, sizeof ref);
    for (int k = 0; k < 77; k++) same &= w[k] == 1.0f;
    free(ids);
    free(w);
    CHECKF(same, "\"%s\": chunk differs from today's tokens", plain[i]);
  }
  /* "a (red:1.5) car": the tokens of "a red car", red weighs 1.5 */
  int ref[77];
  CHECK_OK(cd_tokenize_padded(t, "a red car", ref, NULL));
  CHECK_OK(cd_prompt_chunks(t, "a (red:1.5) car", &ids, &w, &nc));
  int ok = nc == 1 && !memcmp(ids, ref, sizeof ref) && w[0] == 1 && w[1] == 1 && w[2] == 1.5f && w[3] == 1 && w[4] == 1;
  free(ids);
  free(w);
  CHECK(ok);
  /* the modifier token is an added token of the tokenizer: weighting it works */
  int nid = cd_tokenizer_add_token(t, "<new1>");
  CHECK(nid == 49408);
  CHECK_OK(cd_prompt_chunks(t, "photo of a (<new1> toy:1.2)", &ids, &w, &nc));
  int pos = -1;
  for (int k = 0; k < 77; k++)
    if (ids[k] == nid) pos = k;
  ok = nc == 1 && pos == 4 && w[4] == 1.2f && w[5] == 1.2f && w[3] == 1.0f && ids[6] == cd_tokenizer_eos(t);
  free(ids);
  free(w);
  CHECKF(ok, "(<new1> toy:1.2): token at %d", pos);
  /* 80 single-token words: 75 + 5 in two chunks; weights carried across */
  char longp[1024] = "";
  for (int k = 0; k < 80; k++) strcat(longp, k == 77 ? "(cat:0.5) " : "cat ");
  CHECK_OK(cd_prompt_chunks(t, longp, &ids, &w, &nc));
  int cat = ids[1], sos = cd_tokenizer_sos(t), eos = cd_tokenizer_eos(t), pad = cd_tokenizer_pad(t);
  ok = nc == 2 && ids[0] == sos && ids[76] == eos && ids[77] == sos && ids[77 + 6] == eos && ids[77 + 7] == pad &&
       ids[75] == cat && ids[77 + 5] == cat && w[77 + 3] == 0.5f && w[77 + 2] == 1.0f;
  free(ids);
  free(w);
  CHECK(ok);
  /* exactly 75 tokens: one chunk; BREAK starts a new one */
  longp[0] = 0;
  for (int k = 0; k < 75; k++) strcat(longp, "cat ");
  CHECK_OK(cd_prompt_chunks(t, longp, &ids, &w, &nc));
  free(ids);
  free(w);
  CHECK(nc == 1);
  CHECK_OK(cd_prompt_chunks(t, "a cat BREAK a dog", &ids, &w, &nc));
  ok = nc == 2 && ids[3] == eos && ids[77 + 3] == eos && ids[78] == ids[1];
  free(ids);
  free(w);
  CHECK(ok);
  cd_tokenizer_free(t);
}

/* The pipeline's encoder: weighted = the plain encoding with the emphasis
 * rule applied (computed here in double); a long prompt's first chunk = the
 * (truncated) encoding of before; shorter prompts are padded with the
 * encoding of "". */
TEST(encode_weighted_and_long) {
  char mp[1024];
  if (test_golden_path(mp, sizeof mp, "tiny-sd1")) SKIP("golden tiny-sd1 not found");
  cd_load_opts lo = {0};
  cd_sd_model *m = NULL;
  CHECK_OK(cd_sd_load(mp, &lo, &m));
  const int d = m->clip.cfg.width;
  float *plain = NULL, *wt = NULL, *lng = NULL;
  int T1 = 0, T2 = 0, T3 = 0;
  const char *p1[1] = {"photo of a red cat"}, *p2[1] = {"photo of a (red:1.4) cat"};
  char longp[1024] = "";
  for (int k = 0; k < 100; k++) strcat(longp, "cat ");
  const char *p3[2] = {longp, ""};
  int rc = cd_encode_prompts_weighted(m, p1, 1, &plain, &T1) || cd_encode_prompts_weighted(m, p2, 1, &wt, &T2) ||
           cd_encode_prompts_weighted(m, p3, 2, &lng, &T3);
  char why[256] = "";
  if (rc) snprintf(why, sizeof why, "%s", cd_last_error());
  if (!why[0] && (T1 != 77 || T2 != 77 || T3 != 154)) snprintf(why, sizeof why, "context lengths %d %d %d", T1, T2, T3);
  if (!why[0]) {
    /* "red" is token 4 ([SOS] photo of a red cat) */
    double before = 0, after = 0;
    for (int i = 0; i < 77 * d; i++) {
      before += plain[i];
      after += plain[i] * (i / d == 4 ? (double)1.4f : 1.0);
    }
    double err = 0;
    for (int i = 0; i < 77 * d; i++) {
      double want = plain[i] * (i / d == 4 ? (double)1.4f : 1.0) * before / after;
      err = fmax(err, fabs(wt[i] - want) / (fabs(want) + 1e-3));
    }
    if (err > 1e-5) snprintf(why, sizeof why, "weighted encoding off the rule by %.3g", err);
  }
  float *trunc = NULL, *empty = NULL;
  int Tt = 0, Te = 0;
  if (!why[0]) {
    const char *pt[1] = {longp}, *pe[1] = {""};
    /* today's encoding of the long prompt = its first 75 tokens */
    char first[1024] = "";
    for (int k = 0; k < 75; k++) strcat(first, "cat ");
    pt[0] = first;
    if (cd_encode_prompts_weighted(m, pt, 1, &trunc, &Tt) || cd_encode_prompts_weighted(m, pe, 1, &empty, &Te)) snprintf(why, sizeof why, "%s", cd_last_error());
  }
  /* same rows in batches of other sizes: equal up to the GEMM's blocking, 1e-6 */
  if (!why[0] && test_rel_err(lng, trunc, 77 * d) > 1e-6) snprintf(why, sizeof why, "long prompt: chunk 0 differs from its first 75 tokens");
  if (!why[0] && (test_rel_err(lng + 154 * d, empty, 77 * d) > 1e-6 || test_rel_err(lng + 231 * d, empty, 77 * d) > 1e-6))
    snprintf(why, sizeof why, "the short prompt is not padded with the encoding of \"\"");
  if (!why[0] && test_rel_err(lng + 77 * d, empty, 77 * d) < 1e-3) snprintf(why, sizeof why, "the long prompt's second chunk is empty");
  /* plain prompts: bit for bit the literal encoder of before (same batch) */
  if (!why[0]) {
    const char *pp[3] = {"", "photo of a cat", "a photo of an astronaut riding a horse on mars"};
    float *a = NULL, *b = cd_malloc(3 * 77 * (size_t)d * sizeof(float));
    int Ta = 0;
    if (cd_encode_prompts_weighted(m, pp, 3, &a, &Ta) || cd_encode_prompts(m, pp, 3, b)) snprintf(why, sizeof why, "%s", cd_last_error());
    else if (Ta != 77 || memcmp(a, b, 3 * 77 * (size_t)d * sizeof(float))) snprintf(why, sizeof why, "plain prompts do not encode exactly as before");
    free(a);
    free(b);
  }
  free(plain);
  free(wt);
  free(lng);
  free(trunc);
  free(empty);
  cd_sd_free(m);
  CHECKF(!why[0], "%s", why);
}

/* A prompt cut at 75 tokens is reported once, however often it is encoded
 * (every sample of a batch, every validation pass), and each distinct one is. */
TEST(long_prompt_warns_once) {
  char mp[1024];
  if (test_golden_path(mp, sizeof mp, "tiny-sd1")) SKIP("golden tiny-sd1 not found");
  cd_load_opts lo = {0};
  cd_sd_model *m = NULL;
  CHECK_OK(cd_sd_load(mp, &lo, &m));
  char cats[1024] = "", dogs[1024] = "";
  for (int k = 0; k < 80; k++) strcat(cats, "cat "), strcat(dogs, "dog ");
  const char *path = test_tmpdir("warn_once.txt");
  fflush(stderr);
  int saved = dup(2);
  FILE *fp = fopen(path, "w");
  int rc = -1;
  if (fp && saved >= 0) {
    dup2(fileno(fp), 2);
    int ids[CD_TOK_MAX_LEN];
    rc = 0;
    for (int i = 0; i < 3; i++) rc |= cd_prompt_ids(m, cats, ids);
    for (int i = 0; i < 2; i++) rc |= cd_prompt_ids(m, dogs, ids);
    rc |= cd_prompt_ids(m, "a short prompt", ids);
    fflush(stderr);
    dup2(saved, 2);
  }
  if (saved >= 0) close(saved);
  if (fp) fclose(fp);
  cd_sd_free(m);
  CHECK_OK(rc);
  char *txt = NULL;
  size_t n = 0;
  CHECK_OK(cd_read_file(path, &txt, &n));
  int warned = 0, cat = 0, dog = 0;
  for (const char *p = txt; (p = strstr(p, "warning: prompt longer than 75 tokens")) != NULL; p++) {
    warned++;
    cat += !strncmp(strchr(p, '"') + 1, "cat", 3);
    dog += !strncmp(strchr(p, '"') + 1, "dog", 3);
  }
  free(txt);
  CHECKF(warned == 2 && cat == 1 && dog == 1, "%d truncation warnings (%d cat, %d dog), want one each", warned, cat, dog);
}


/* splits p at AND and compares with want[0..n) (text and weight) */
static int split_is(const char *p, const frag *want, int n, char *why, size_t cap) {
  cd_prompt_sub *s;
  int k;
  if (cd_prompt_split_and(p, &s, &k)) { snprintf(why, cap, "\"%s\": %s", p, cd_last_error()); return 0; }
  int ok = k == n;
  for (int i = 0; ok && i < n; i++) {
    ok = !strcmp(s[i].text, want[i].text) && fabs(s[i].weight - want[i].w) < 1e-6;
    if (!ok) snprintf(why, cap, "\"%s\": sub-prompt %d is \"%s\" x %g, expected \"%s\" x %g", p, i, s[i].text, s[i].weight, want[i].text, want[i].w);
  }
  if (k != n) snprintf(why, cap, "\"%s\": %d sub-prompts, expected %d", p, k, n);
  cd_prompt_subs_free(s, k);
  return ok;
}

#define SPLIT_IS(p, ...) do { const frag w_[] = {__VA_ARGS__}; char why_[512] = ""; \
    CHECKF(split_is(p, w_, (int)(sizeof w_ / sizeof *w_), why_, sizeof why_), "%s", why_); } while (0)

/* A1111's AND: sub-prompts at the word AND, each with an optional trailing
 * ":weight"; a prompt without AND is kept whole, its ":w" included. */
TEST(split_and) {
  SPLIT_IS("a photo of a cat", {"a photo of a cat", 1});
  SPLIT_IS("", {"", 1});
  SPLIT_IS(" a cat :0.5 ", {" a cat :0.5 ", 1}); /* no AND: taken literally */
  SPLIT_IS("a cat AND a dog", {"a cat", 1}, {"a dog", 1});
  SPLIT_IS("a cat :0.7 AND a dog : -0.25", {"a cat", 0.7}, {"a dog", -0.25});
  SPLIT_IS("a cat:.5 AND a dog:2.", {"a cat", 0.5}, {"a dog", 2});
  SPLIT_IS("a (red:1.2) cat AND dog", {"a (red:1.2) cat", 1}, {"dog", 1});
  SPLIT_IS("ANDROID and BRAND AND x", {"ANDROID and BRAND", 1}, {"x", 1}); /* only the word, only upper case */
  SPLIT_IS("cat,AND,dog", {"cat,", 1}, {",dog", 1});
  SPLIT_IS("a:1.2.3 AND b", {"a:1.2.3", 1}, {"b", 1}); /* not a number: kept as text */
  SPLIT_IS("a AND b AND c :3", {"a", 1}, {"b", 1}, {"c", 3});
  cd_prompt_sub *s = NULL;
  int k = 0;
  CHECK(cd_prompt_split_and("a cat AND", &s, &k) != 0);
  CHECKF(strstr(cd_last_error(), "sub-prompt 2 of 2") != NULL, "error: %s", cd_last_error());
  CHECK(cd_prompt_split_and("AND a cat", &s, &k) != 0);
  CHECK(cd_prompt_split_and("a AND :0.5", &s, &k) != 0);
  char many[256] = "x";
  for (int i = 0; i < CD_PROMPT_MAX_SUBS; i++) strcat(many, " AND x");
  CHECK(cd_prompt_split_and(many, &s, &k) != 0);
  CHECKF(strstr(cd_last_error(), "more than") != NULL, "error: %s", cd_last_error());
}

/* The guidance sum on hand numbers: u + cfg * sum_j w_j (c_j - u). */
TEST(guidance_combine) {
  const float o[6] = {1, -2, /* uncond */ 3, 0, /* cond 1 */ -1, 4 /* cond 2 */};
  const float w[2] = {0.5f, 2.0f};
  float out[2];
  cd_guidance_combine(o, 2, w, 3.0f, 2, out);
  /* 1 + 3 (0.5 * 2 + 2 * -2) = -8;  -2 + 3 (0.5 * 2 + 2 * 6) = 37 */
  CHECKF(out[0] == -8.0f && out[1] == 37.0f, "got %g %g", out[0], out[1]);
  const float one = 1.0f;
  cd_guidance_combine(o, 1, &one, 7.5f, 2, out);
  CHECKF(out[0] == 1.0f + 7.5f * 2.0f && out[1] == -2.0f + 7.5f * 2.0f, "k = 1: got %g %g", out[0], out[1]);
}

/* The sampler with AND on the shipped world model: a prompt split into two
 * halves of itself (weights 0.5 + 0.5) gives the plain prompt's latents (up
 * to the GEMM's blocking over a larger batch); two different sub-prompts give
 * others; AND at guidance 1 still runs the uncond pass. */
TEST(sample_and) {
  cd_load_opts lo = {0};
  cd_sd_model *m = NULL;
  CHECK_OK(cd_sd_load("models/cdiff-world", &lo, &m));
  const char *p = "a red star on a blue background";
  char half[256];
  snprintf(half, sizeof half, "%s :0.5 AND %s :0.5", p, p);
  const char *prompts[4] = {p, half, "a red star AND a blue background", "a red star AND a blue background"};
  const float cfgs[4] = {5, 5, 5, 1};
  const int64_t per = 4 * 8 * 8;
  float *lat[4];
  char why[256] = "";
  for (int i = 0; i < 4; i++) {
    lat[i] = cd_malloc(2 * per * sizeof(float));
    cd_gen_opts o = {.prompt = prompts[i], .negative = "", .cfg = cfgs[i], .width = 64, .height = 64, .n = 2, .quiet = 1};
    o.s.kind = CD_SAMPLER_DDIM;
    o.s.steps = 4;
    o.s.seed = 7;
    if (!why[0] && cd_generate_latents(m, &o, lat[i])) snprintf(why, sizeof why, "\"%s\": %s", prompts[i], cd_last_error());
  }
  if (!why[0] && test_rel_err(lat[1], lat[0], 2 * per) > 1e-4)
    snprintf(why, sizeof why, "two halves of the prompt differ from it by %.3g", test_rel_err(lat[1], lat[0], 2 * per));
  if (!why[0] && test_rel_err(lat[2], lat[0], 2 * per) < 1e-2) snprintf(why, sizeof why, "\"A AND B\" gives the plain prompt's latents");
  if (!why[0] && test_rel_err(lat[3], lat[2], 2 * per) < 1e-2) snprintf(why, sizeof why, "AND ignores the guidance scale");
  for (int i = 0; i < 4; i++) free(lat[i]);
  cd_sd_free(m);
  CHECKF(!why[0], "%s", why);
}

int main(void) {
  test_pin_threads(); /* bit-for-bit comparisons of two runs (test.h) */
  RUN(parser_weights);
  RUN(emphasis_rule);
  RUN(token_weights_and_chunks);
  RUN(encode_weighted_and_long);
  RUN(long_prompt_warns_once);
  RUN(split_and);
  RUN(guidance_combine);
  RUN(sample_and);
  test_tmp_cleanup();
  return test_summary();
}
