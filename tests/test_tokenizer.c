/* test_tokenizer.c - CLIP BPE tokenizer against ../shared/golden/tokenizer.json (63 cases from
 * OpenAI's simple_tokenizer.py), with both vocabulary layouts, SD 1.x / SD 2.x padding and the
 * Hugging Face SD 2.x "!" rule. */
#include <cjson/cJSON.h>
#include <unistd.h>

#include "io/fsutil.h"
#include "models/tokenizer.h"
#include "test.h"

static cJSON *load_json(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = cd_malloc((size_t)n + 1);
  size_t got = fread(buf, 1, (size_t)n, f);
  fclose(f);
  buf[got] = 0;
  cJSON *js = cJSON_ParseWithLength(buf, got);
  free(buf);
  return js;
}

/* array of ints -> v (cap entries); returns count or -1 */
static int json_ints(const cJSON *a, int *v, int cap) {
  if (!cJSON_IsArray(a)) return -1;
  int n = 0;
  for (const cJSON *it = a->child; it; it = it->next) {
    if (!cJSON_IsNumber(it) || n >= cap) return -1;
    v[n++] = it->valueint;
  }
  return n;
}

/* loads a tokenizer with <new1>, <new2> added; NULL + test_msg on failure */
static cd_tokenizer *open_tok(const char *path) {
  cd_tokenizer *t = NULL;
  if (cd_tokenizer_load(path, &t)) {
    snprintf(test_msg, sizeof test_msg, "load %s: %s", path, cd_last_error());
    return NULL;
  }
  if (cd_tokenizer_add_token(t, "<new1>") != 49408 || cd_tokenizer_add_token(t, "<new2>") != 49409) {
    snprintf(test_msg, sizeof test_msg, "add_token: %s", cd_last_error());
    cd_tokenizer_free(t);
    return NULL;
  }
  return t;
}

/* which: "sd1" (pad 49407), "sd2" (pad 0, OpenCLIP), "sd2_hf" (t configured from the folder) */
static int check_cases(cd_tokenizer *t, const char *which, const char *layout) {
  char path[1024];
  if (test_golden_need(path, sizeof path, "tokenizer.json")) return -1; /* callers made sure it can be there */
  cJSON *js = load_json(path);
  if (!js) { snprintf(test_msg, sizeof test_msg, "cannot parse %.900s", path); return -1; }
  const cJSON *cases = cJSON_GetObjectItemCaseSensitive(js, "cases");
  char key[64];
  snprintf(key, sizeof key, "input_ids_%s", which);
  int n_cases = 0, rc = 0;
  for (const cJSON *c = cases ? cases->child : NULL; c && !rc; c = c->next, n_cases++) {
    const char *text = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "text"));
    int ref[256], ref_pad[77], got[256], got_pad[77], n, total, trunc;
    int nref = json_ints(cJSON_GetObjectItemCaseSensitive(c, "ids"), ref, 256);
    int npad = json_ints(cJSON_GetObjectItemCaseSensitive(c, key), ref_pad, 77);
    const cJSON *jt = cJSON_GetObjectItemCaseSensitive(c, "truncated");
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(c, "tokens");
    if (!text || nref < 0 || npad != 77 || !cJSON_IsBool(jt)) {
      snprintf(test_msg, sizeof test_msg, "case %d: malformed golden entry", n_cases);
      rc = -1;
      break;
    }
    if (cd_tokenize(t, text, got, 256, &n, &total) || n != total) {
      snprintf(test_msg, sizeof test_msg, "case %d: tokenize failed: %s", n_cases, cd_last_error());
      rc = -1;
      break;
    }
    /* raw ids are layout- and pad-independent except for the HF "!" rule */
    if (strcmp(which, "sd2_hf")) {
      int ok = n == nref;
      for (int i = 0; ok && i < n; i++) ok = got[i] == ref[i];
      if (!ok) {
        int k = 0;
        while (k < n && k < nref && got[k] == ref[k]) k++;
        snprintf(test_msg, sizeof test_msg, "[%s] case %d '%.60s': %d ids vs %d, first difference at %d (%d vs %d)",
                 layout, n_cases, text, n, nref, k, k < n ? got[k] : -1, k < nref ? ref[k] : -1);
        rc = -1;
        break;
      }
      int i = 0;
      for (const cJSON *s = tokens ? tokens->child : NULL; s && i < n; s = s->next, i++) {
        const char *str = cd_tokenizer_token_str(t, got[i]);
        if (!str || !cJSON_IsString(s) || strcmp(str, s->valuestring)) {
          snprintf(test_msg, sizeof test_msg, "[%s] case %d: token %d is '%s', expected '%s'", layout,
                   n_cases, i, str ? str : "(null)", cJSON_IsString(s) ? s->valuestring : "?");
          rc = -1;
          break;
        }
      }
      if (rc) break;
    }
    if (cd_tokenize_padded(t, text, got_pad, &trunc)) {
      snprintf(test_msg, sizeof test_msg, "case %d: tokenize_padded: %s", n_cases, cd_last_error());
      rc = -1;
      break;
    }
    for (int i = 0; i < 77; i++)
      if (got_pad[i] != ref_pad[i]) {
        snprintf(test_msg, sizeof test_msg, "[%s %s] case %d '%.60s': position %d is %d, expected %d",
                 layout, which, n_cases, text, i, got_pad[i], ref_pad[i]);
        rc = -1;
        break;
      }
    if (!rc && trunc != cJSON_IsTrue(jt)) {
      snprintf(test_msg, sizeof test_msg, "case %d: truncated %d, expected %d", n_cases, trunc, cJSON_IsTrue(jt));
      rc = -1;
    }
  }
  if (!rc && n_cases != 63) {
    snprintf(test_msg, sizeof test_msg, "expected 63 cases, found %d", n_cases);
    rc = -1;
  }
  cJSON_Delete(js);
  return rc;
}

static void run_layout(const char *rel, const char *layout) {
  char path[1024];
  GOLDEN_STATUS(test_golden_need(path, sizeof path, rel));
  cd_tokenizer *t = open_tok(path);
  if (!t) { test_failed_flag = 1; return; }
  int rc = cd_tokenizer_pad(t) != 49407;
  if (rc) snprintf(test_msg, sizeof test_msg, "default pad %d, expected 49407", cd_tokenizer_pad(t));
  if (!rc) rc = check_cases(t, "sd1", layout);
  if (!rc) { cd_tokenizer_set_pad(t, 0); rc = check_cases(t, "sd2", layout); }
  cd_tokenizer_free(t);
  if (rc) test_failed_flag = 1;
}

TEST(golden_hf_layout) {
  char path[1024];
  NEED_GOLDEN(path, "tokenizer.json");
  NEED_GOLDEN(path, "tiny-sd1/tokenizer/vocab.json");
  run_layout("tiny-sd1/tokenizer", "hf");
}

TEST(golden_openai_layout) {
  char path[1024];
  NEED_GOLDEN(path, "tokenizer.json");
  NEED_GOLDEN(path, "bpe_simple_vocab_16e6.txt.gz");
  run_layout("bpe_simple_vocab_16e6.txt.gz", "openai");
}

/* the diffusers folders: SD 1.x pads with <|endoftext|>, SD 2.x with "!" split out as id 0 */
TEST(golden_configure_from_dir) {
  char path[1024];
  NEED_GOLDEN(path, "tokenizer.json");
  NEED_GOLDEN(path, "tiny-sd2/tokenizer/tokenizer_config.json");
  *strrchr(path, '/') = 0;
  cd_tokenizer *t = open_tok(path);
  if (!t) { test_failed_flag = 1; return; }
  int rc = cd_tokenizer_configure_from_dir(t, path);
  if (rc) snprintf(test_msg, sizeof test_msg, "configure sd2: %s", cd_last_error());
  if (!rc && cd_tokenizer_pad(t) != 0) { snprintf(test_msg, sizeof test_msg, "sd2 pad %d", cd_tokenizer_pad(t)); rc = -1; }
  if (!rc) rc = check_cases(t, "sd2_hf", "hf");
  cd_tokenizer_free(t);
  if (rc) { test_failed_flag = 1; return; }

  NEED_GOLDEN(path, "tiny-sd1/tokenizer");
  t = open_tok(path);
  if (!t) { test_failed_flag = 1; return; }
  rc = cd_tokenizer_configure_from_dir(t, path);
  if (rc) snprintf(test_msg, sizeof test_msg, "configure sd1: %s", cd_last_error());
  if (!rc && cd_tokenizer_pad(t) != 49407) { snprintf(test_msg, sizeof test_msg, "sd1 pad %d", cd_tokenizer_pad(t)); rc = -1; }
  if (!rc) rc = check_cases(t, "sd1", "hf");
  cd_tokenizer_free(t);
  if (rc) test_failed_flag = 1;
}

TEST(lookup_and_added_tokens) {
  char path[1024];
  NEED_GOLDEN(path, "tiny-sd1/tokenizer");
  cd_tokenizer *t = NULL;
  CHECK_OK(cd_tokenizer_load(path, &t));
  int ok = cd_tokenizer_vocab_size(t) == 49408 && cd_tokenizer_lookup(t, "ktn") == 42170 &&
           cd_tokenizer_lookup(t, "pll") == 47629 && cd_tokenizer_lookup(t, "ucd") == 44746 &&
           cd_tokenizer_lookup(t, "cat</w>") >= 512 && cd_tokenizer_lookup(t, "<new1>") == -1 &&
           cd_tokenizer_sos(t) == 49406 && cd_tokenizer_eos(t) == 49407 &&
           !strcmp(cd_tokenizer_token_str(t, 42170), "ktn") && !cd_tokenizer_token_str(t, 49408);
  /* an added token that is not registered is plain text */
  int a[16], b[16], na, nb;
  ok = ok && !cd_tokenize(t, "<new1>", a, 16, &na, NULL) && na > 1;
  int id1 = cd_tokenizer_add_token(t, "<new1>");
  int dup = cd_tokenizer_add_token(t, "<new1>"), word = cd_tokenizer_add_token(t, "cat</w>");
  ok = ok && id1 == 49408 && dup == -1 && word == -1 && strstr(cd_last_error(), "cat</w>");
  ok = ok && cd_tokenizer_vocab_size(t) == 49409 && cd_tokenizer_lookup(t, "<new1>") == 49408 &&
       !strcmp(cd_tokenizer_token_str(t, 49408), "<new1>");
  /* longest match wins among overlapping added tokens */
  ok = ok && cd_tokenizer_add_token(t, "<new1>x") == 49409;
  ok = ok && !cd_tokenize(t, "a<new1>xb", a, 16, &na, NULL) && na == 3 && a[1] == 49409;
  /* small cap: n = cap, n_total = all */
  int total;
  ok = ok && !cd_tokenize(t, "a b c d e", a, 2, &na, &total) && na == 2 && total == 5;
  ok = ok && !cd_tokenize(t, "a b c d e", NULL, 0, &na, &total) && na == 0 && total == 5;
  ok = ok && !cd_tokenize(t, "a b c d e", b, 16, &nb, NULL) && nb == 5 && a[0] == b[0] && a[1] == b[1];
  cd_tokenizer_free(t);
  CHECK(ok);
}

/* properties beyond the goldens: Unicode lowercase, letters vs numbers, html entities */
static int same_ids(cd_tokenizer *t, const char *x, const char *y) {
  int a[64], b[64], na, nb;
  if (cd_tokenize(t, x, a, 64, &na, NULL) || cd_tokenize(t, y, b, 64, &nb, NULL)) return 0;
  return na == nb && !memcmp(a, b, (size_t)na * sizeof *a);
}
TEST(unicode_and_cleaning) {
  char path[1024];
  NEED_GOLDEN(path, "tiny-sd1/tokenizer");
  cd_tokenizer *t = NULL;
  CHECK_OK(cd_tokenizer_load(path, &t));
  static const char *pairs[][2] = {
      {"ÀÉÎÕÜ ÆØÞ", "àéîõü æøþ"},
      {"ΑΒΓΔ ΣΟΦΟΣ", "αβγδ σοφος"}, /* final sigma */
      {"ПРИВЕТ МИР", "привет мир"},
      {"ŁÓDŹ", "łódź"},
      {"a &amp; b &lt;3 &#65;&#x42;", "a & b <3 ab"},
      {"a&amp;amp;b", "a&b"}, /* unescaped twice */
      {"\t a \xc2\xa0\xe3\x80\x80 b \n", "a b"}};
  for (int i = 0; i < (int)(sizeof pairs / sizeof pairs[0]); i++)
    if (!same_ids(t, pairs[i][0], pairs[i][1])) {
      cd_tokenizer_free(t);
      FAILF("'%s' and '%s' tokenize differently", pairs[i][0], pairs[i][1]);
    }
  int ok = 1, a[64], na;
  /* letters stay together (one piece, one </w>), numbers (also ² and ٣) are single pieces */
  ok = ok && same_ids(t, "x\xc2\xb2\xd9\xa3", "x \xc2\xb2 \xd9\xa3") && same_ids(t, "\xc2\xb2\xc2\xb2", "\xc2\xb2 \xc2\xb2");
  ok = ok && !same_ids(t, "\xe7\x8c\xab\xe7\x8c\xab", "\xe7\x8c\xab \xe7\x8c\xab") && !same_ids(t, "éé", "é é");
  ok = ok && same_ids(t, "3 4", "34") && !same_ids(t, "ab", "a b");
  /* invalid UTF-8 must not crash and keeps its bytes */
  ok = ok && !cd_tokenize(t, "\xff\xfe\xc3 abc \xe2\x82", a, 64, &na, NULL) && na >= 3;
  cd_tokenizer_free(t);
  CHECK(ok);
}

TEST(errors) {
  cd_tokenizer *t = (cd_tokenizer *)1;
  CHECK(cd_tokenizer_load("/nonexistent/cdiff-vocab-dir", &t) == -1 && t == NULL);
  CHECK(strstr(cd_last_error(), "/nonexistent/cdiff-vocab-dir"));
  CHECK(cd_tokenizer_load("/tmp", &t) == -1 && strstr(cd_last_error(), "vocab.json"));

  char vocab[1024];
  NEED_GOLDEN(vocab, "vocab.json");
  char real[4096];
  CHECK(realpath(vocab, real));
  char dir[600];
  snprintf(dir, sizeof dir, "%s", test_tmpdir("merges"));
  CHECK_OK(cd_mkdir_p(dir));
  char p_vocab[1100], p_merges[1100], p_gz[1100];
  snprintf(p_vocab, sizeof p_vocab, "%s/vocab.json", dir);
  snprintf(p_merges, sizeof p_merges, "%s/merges.txt", dir);
  snprintf(p_gz, sizeof p_gz, "%s/bpe.txt.gz", dir);
  CHECK(!symlink(real, p_vocab));
  static const char *bad[] = {"#version: 0.2\ni n\nthisisnotamerge\n", /* one symbol */
                              "#version: 0.2\ni n\nq \xe2\x98\x83\n",   /* not in vocab */
                              "#version: 0.2\ni n\n\nt h\n",            /* hole */
                              "#version: 0.2\n"};                       /* empty */
  int fails = 0;
  for (int i = 0; i < 4; i++) {
    FILE *f = fopen(p_merges, "w");
    CHECK(f);
    fputs(bad[i], f);
    fclose(f);
    if (cd_tokenizer_load(dir, &t) == 0) { cd_tokenizer_free(t); fails++; }
    else if (!strstr(cd_last_error(), "merges.txt")) fails++;
  }
  /* the good pair of files loads */
  FILE *f = fopen(p_merges, "w");
  CHECK(f);
  fputs("#version: 0.2\ni n\nt h\n", f);
  fclose(f);
  int good = cd_tokenizer_load(dir, &t) == 0;
  if (good) cd_tokenizer_free(t);
  /* OpenAI layout: a short file, and a corrupt gzip stream */
  f = fopen(p_gz, "wb");
  CHECK(f);
  fputs("#version: 0.2\ni n\n", f);
  fclose(f);
  int short_err = cd_tokenizer_load(p_gz, &t) == -1 && strstr(cd_last_error(), "bpe.txt.gz");
  f = fopen(p_gz, "wb");
  CHECK(f);
  fwrite("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbagegarbage", 1, 24, f);
  fclose(f);
  int gz_err = cd_tokenizer_load(p_gz, &t) == -1;
  test_rmtree(dir);
  CHECKF(!fails, "%d corrupt merges files were accepted or gave an error not naming the file", fails);
  CHECKF(good, "minimal merges file: %s", cd_last_error());
  CHECK(short_err);
  CHECK(gz_err);
}

int main(void) {
  RUN(golden_hf_layout);
  RUN(golden_openai_layout);
  RUN(golden_configure_from_dir);
  RUN(lookup_and_added_tokens);
  RUN(unicode_and_cleaning);
  RUN(errors);
  test_tmp_cleanup();
  return test_summary();
}
