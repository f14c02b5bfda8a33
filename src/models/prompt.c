/* prompt.c - prompt weighting and chunking (see prompt.h). The parser follows
 * the alternatives of A1111's re_attention in their order at each position. */
#include "models/prompt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

typedef struct {
  cd_prompt_frag *v;
  int n, cap;
} frags;

static void push(frags *f, const char *s, size_t len, double w, int is_break) {
  if (f->n == f->cap) {
    f->cap = f->cap ? 2 * f->cap : 8;
    f->v = cd_realloc(f->v, (size_t)f->cap * sizeof *f->v);
  }
  char *t = NULL;
  if (!is_break) {
    t = cd_malloc(len + 1);
    memcpy(t, s, len);
    t[len] = 0;
  }
  f->v[f->n].text = t;
  f->v[f->n].weight = w;
  f->n++;
}

static void multiply_from(frags *f, int start, double m) {
  for (int i = start; i < f->n; i++)
    if (f->v[i].text) f->v[i].weight *= m;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
/* Python's \w on a str: letters, digits, underscore; bytes of multi-byte UTF-8 count as letters */
static int is_word(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c >= 0x80;
}

/* text run s[0..len): split at \s*\bBREAK\b\s* (re_break), BREAK markers between the parts */
static void push_text(frags *f, const char *s, size_t len) {
  size_t start = 0;
  for (size_t i = 0; i + 5 <= len; i++) {
    if (memcmp(s + i, "BREAK", 5)) continue;
    if ((i > 0 && is_word((unsigned char)s[i - 1])) || (i + 5 < len && is_word((unsigned char)s[i + 5]))) continue;
    size_t a = i, b = i + 5;
    while (a > start && is_space(s[a - 1])) a--;
    while (b < len && is_space(s[b])) b++;
    push(f, s + start, a - start, 1.0, 0);
    push(f, NULL, 0, -1.0, 1);
    start = b;
    i = b - 1;
  }
  push(f, s + start, len - start, 1.0, 0);
}

/* ":\s*([+-]?[.\d]+)\s*\)" at s: its length (0 if no match) and the number's span */
static size_t match_weight(const char *s, const char **num, size_t *numlen) {
  size_t i = 1;
  if (s[0] != ':') return 0;
  while (is_space(s[i])) i++;
  size_t a = i;
  if (s[i] == '+' || s[i] == '-') i++;
  size_t d = i;
  while (s[i] == '.' || (s[i] >= '0' && s[i] <= '9')) i++;
  if (i == d) return 0;
  size_t b = i;
  while (is_space(s[i])) i++;
  if (s[i] != ')') return 0;
  *num = s + a;
  *numlen = b - a;
  return i + 1;
}

void cd_prompt_frags_free(cd_prompt_frag *f, int n) {
  if (!f) return;
  for (int i = 0; i < n; i++) free(f[i].text);
  free(f);
}

int cd_prompt_parse(const char *prompt, cd_prompt_frag **out, int *n) {
  const char *s = prompt ? prompt : "";
  frags f = {0};
  int round[256], square[256], nr = 0, nsq = 0;
  size_t i = 0, len = strlen(s);
  while (i < len) {
    const char *num = NULL;
    size_t numlen = 0, m;
    char c = s[i];
    if (c == '\\') { /* \( \) \[ \] \\ -> the character; a lone backslash -> nothing */
      char nx = s[i + 1];
      if (nx == '(' || nx == ')' || nx == '[' || nx == ']' || nx == '\\') {
        push(&f, s + i + 1, 1, 1.0, 0);
        i += 2;
      } else {
        push(&f, "", 0, 1.0, 0);
        i += 1;
      }
    } else if (c == '(' || c == '[') {
      if ((c == '(' ? nr : nsq) == 256) {
        cd_prompt_frags_free(f.v, f.n);
        return cd_set_error("prompt \"%.80s\": brackets nested deeper than 256", s);
      }
      if (c == '(') round[nr++] = f.n;
      else square[nsq++] = f.n;
      i++;
    } else if ((m = match_weight(s + i, &num, &numlen)) > 0) {
      if (nr) {
        char buf[64], *end;
        snprintf(buf, sizeof buf, "%.*s", (int)CD_MIN(numlen, sizeof buf - 1), num);
        double w = strtod(buf, &end);
        if (*end || numlen >= sizeof buf) {
          cd_prompt_frags_free(f.v, f.n);
          return cd_set_error("prompt \"%.80s\": weight \"%.*s\" is not a number", s, (int)CD_MIN(numlen, 40), num);
        }
        multiply_from(&f, round[--nr], w);
      } else {
        push_text(&f, s + i, m);
      }
      i += m;
    } else if (c == ')' && nr) {
      multiply_from(&f, round[--nr], 1.1);
      i++;
    } else if (c == ']' && nsq) {
      multiply_from(&f, square[--nsq], 1 / 1.1);
      i++;
    } else if (c == ')' || c == ']' || c == ':') {
      push_text(&f, s + i, 1);
      i++;
    } else {
      size_t j = i;
      while (j < len && !strchr("\\()[]:", s[j])) j++;
      push_text(&f, s + i, j - i);
      i = j;
    }
  }
  for (int k = 0; k < nr; k++) multiply_from(&f, round[k], 1.1);
  for (int k = 0; k < nsq; k++) multiply_from(&f, square[k], 1 / 1.1);
  if (f.n == 0) push(&f, "", 0, 1.0, 0);
  /* merge runs of identical weights (never across a BREAK) */
  int w = 0;
  for (int k = 0; k < f.n; k++) {
    if (w > 0 && f.v[k].text && f.v[w - 1].text && f.v[k].weight == f.v[w - 1].weight) {
      size_t a = strlen(f.v[w - 1].text), b = strlen(f.v[k].text);
      f.v[w - 1].text = cd_realloc(f.v[w - 1].text, a + b + 1);
      memcpy(f.v[w - 1].text + a, f.v[k].text, b + 1);
      free(f.v[k].text);
    } else {
      f.v[w++] = f.v[k];
    }
  }
  *out = f.v;
  *n = w;
  return 0;
}

typedef struct {
  int *ids;
  float *w;
  int nchunks, cap, fill; /* fill: tokens in the open chunk */
} chunker;

static void close_chunk(chunker *c, const cd_tokenizer *t) {
  int *ids = c->ids + (size_t)c->nchunks * CD_TOK_MAX_LEN;
  float *w = c->w + (size_t)c->nchunks * CD_TOK_MAX_LEN;
  ids[c->fill + 1] = cd_tokenizer_eos(t);
  w[c->fill + 1] = 1.0f;
  for (int k = c->fill + 2; k < CD_TOK_MAX_LEN; k++) {
    ids[k] = cd_tokenizer_pad(t);
    w[k] = 1.0f;
  }
  c->nchunks++;
  c->fill = 0;
}

static void open_chunk(chunker *c, const cd_tokenizer *t) {
  if (c->nchunks == c->cap) {
    c->cap = c->cap ? 2 * c->cap : 2;
    c->ids = cd_realloc(c->ids, (size_t)c->cap * CD_TOK_MAX_LEN * sizeof(int));
    c->w = cd_realloc(c->w, (size_t)c->cap * CD_TOK_MAX_LEN * sizeof(float));
  }
  c->ids[(size_t)c->nchunks * CD_TOK_MAX_LEN] = cd_tokenizer_sos(t);
  c->w[(size_t)c->nchunks * CD_TOK_MAX_LEN] = 1.0f;
}

int cd_prompt_chunks(const cd_tokenizer *t, const char *prompt, int **ids_out, float **w_out, int *nchunks) {
  cd_prompt_frag *f;
  int nf;
  if (cd_prompt_parse(prompt, &f, &nf)) return -1;
  enum { PER = CD_TOK_MAX_LEN - 2 };
  chunker c = {0};
  open_chunk(&c, t);
  int rc = 0, *tok = NULL;
  for (int i = 0; i < nf && rc == 0; i++) {
    if (!f[i].text) { /* BREAK: end the chunk, even an empty one (as A1111) */
      close_chunk(&c, t);
      open_chunk(&c, t);
      continue;
    }
    int n = 0;
    if (cd_tokenize(t, f[i].text, NULL, 0, NULL, &n)) { rc = -1; break; }
    tok = cd_realloc(tok, (size_t)(n > 0 ? n : 1) * sizeof(int));
    if (cd_tokenize(t, f[i].text, tok, n, NULL, NULL)) { rc = -1; break; }
    for (int k = 0; k < n; k++) {
      if (c.fill == PER) { /* a full chunk ends when the next token comes */
        close_chunk(&c, t);
        open_chunk(&c, t);
      }
      size_t at = (size_t)c.nchunks * CD_TOK_MAX_LEN + 1 + c.fill++;
      c.ids[at] = tok[k];
      c.w[at] = (float)f[i].weight;
    }
  }
  free(tok);
  cd_prompt_frags_free(f, nf);
  if (rc) {
    free(c.ids);
    free(c.w);
    return -1;
  }
  if (c.fill > 0 || c.nchunks == 0) close_chunk(&c, t);
  *ids_out = c.ids;
  *w_out = c.w;
  *nchunks = c.nchunks;
  return 0;
}

void cd_prompt_emphasis(float *z, const float *w, int T, int d) {
  int plain = 1;
  for (int t = 0; t < T; t++) plain &= w[t] == 1.0f;
  if (plain) return; /* bit-exact no-op */
  double before = 0, after = 0;
  for (int t = 0; t < T; t++)
    for (int j = 0; j < d; j++) {
      before += z[(size_t)t * d + j];
      z[(size_t)t * d + j] *= w[t];
      after += z[(size_t)t * d + j];
    }
  if (after == 0) return; /* the rescale is undefined; keep the weighted values */
  double k = before / after;
  for (size_t i = 0; i < (size_t)T * d; i++) z[i] = (float)(z[i] * k);
}

void cd_prompt_subs_free(cd_prompt_sub *s, int n) {
  if (!s) return;
  for (int i = 0; i < n; i++) free(s[i].text);
  free(s);
}

/* s[0..len) ends in "\s*:\s*[-+]?(\d+\.?|\d*\.\d+)\s*": 1, *cut where the ':' run
 * begins and *w the number (A1111's re_weight) */
static int trailing_weight(const char *s, size_t len, size_t *cut, double *w) {
  size_t e = len;
  while (e > 0 && is_space(s[e - 1])) e--;
  size_t b = e, dots = 0, digits = 0;
  while (b > 0 && ((s[b - 1] >= '0' && s[b - 1] <= '9') || s[b - 1] == '.')) {
    if (s[b - 1] == '.') dots++;
    else digits++;
    b--;
  }
  if (!digits || dots > 1) return 0;
  size_t num = b;
  if (b > 0 && (s[b - 1] == '+' || s[b - 1] == '-')) num = --b;
  while (b > 0 && is_space(s[b - 1])) b--;
  if (b == 0 || s[b - 1] != ':') return 0;
  b--;
  char buf[64];
  size_t nl = e - num < sizeof buf - 1 ? e - num : sizeof buf - 1;
  memcpy(buf, s + num, nl);
  buf[nl] = 0;
  *w = strtod(buf, NULL);
  while (b > 0 && is_space(s[b - 1])) b--;
  *cut = b;
  return 1;
}

int cd_prompt_split_and(const char *prompt, cd_prompt_sub **out, int *n) {
  const char *s = prompt ? prompt : "";
  size_t len = strlen(s);
  size_t starts[CD_PROMPT_MAX_SUBS], ends[CD_PROMPT_MAX_SUBS];
  int k = 0;
  size_t start = 0;
  for (size_t i = 0; i + 3 <= len; i++) {
    if (memcmp(s + i, "AND", 3)) continue;
    if ((i > 0 && is_word((unsigned char)s[i - 1])) || (i + 3 < len && is_word((unsigned char)s[i + 3]))) continue;
    if (k == CD_PROMPT_MAX_SUBS - 1) return cd_set_error("prompt \"%s\": more than %d sub-prompts joined by AND", s, CD_PROMPT_MAX_SUBS);
    starts[k] = start;
    ends[k++] = i;
    start = i + 3;
    i += 2;
  }
  starts[k] = start;
  ends[k++] = len;
  cd_prompt_sub *v = cd_calloc((size_t)k, sizeof *v);
  for (int j = 0; j < k; j++) {
    const char *a = s + starts[j];
    size_t l = ends[j] - starts[j];
    double w = 1.0;
    if (k > 1) { /* a prompt without AND is taken whole */
      while (l > 0 && is_space(*a)) a++, l--;
      while (l > 0 && is_space(a[l - 1])) l--;
      size_t cut;
      if (trailing_weight(a, l, &cut, &w)) l = cut;
      if (l == 0) {
        cd_prompt_subs_free(v, k);
        return cd_set_error("prompt \"%s\": sub-prompt %d of %d (joined by AND) is empty", s, j + 1, k);
      }
      if (!(fabs(w) <= 1e6)) {
        cd_prompt_subs_free(v, k);
        return cd_set_error("prompt \"%s\": sub-prompt %d has weight %g", s, j + 1, w);
      }
    }
    v[j].text = cd_malloc(l + 1);
    memcpy(v[j].text, a, l);
    v[j].text[l] = 0;
    v[j].weight = (float)w;
  }
  *out = v;
  *n = k;
  return 0;
}
