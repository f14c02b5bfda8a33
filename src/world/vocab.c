/* vocab.c - learns the world vocabulary's merges and writes it (see vocab.h). */
#include "world/vocab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "io/fsutil.h"
#include "world/world.h"

#define MAXSYM 64 /* symbols of one word */

typedef struct {
  int n;
  char *sym[MAXSYM]; /* owned strings; the last one ends in "</w>" */
} word;

/* CLIP's bytes_to_unicode: printable bytes map to themselves, the others to 256+k */
static int byte_cp(int b, int *order_pos) {
  int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
  (void)order_pos;
  if (printable) return b;
  int k = 0;
  for (int i = 0; i < b; i++) {
    int p = (i >= '!' && i <= '~') || (i >= 0xa1 && i <= 0xac) || i >= 0xae;
    k += !p;
  }
  return 256 + k;
}

static int utf8(int cp, char *s) {
  if (cp < 0x80) { s[0] = (char)cp; s[1] = 0; return 1; }
  s[0] = (char)(0xc0 | (cp >> 6));
  s[1] = (char)(0x80 | (cp & 0x3f));
  s[2] = 0;
  return 2;
}

/* JSON string body: only '"' and '\\' need escaping (no control characters occur) */
static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

static int write_mem(const char *dir, const char *name, char *buf, size_t n) {
  char *p = cd_path_join(dir, name);
  int rc = cd_write_file_atomic(p, buf, n);
  if (rc) cd_prefix_error("vocabulary");
  free(p);
  free(buf);
  return rc;
}

int cd_world_vocab_write(const char *dir, int *vocab_size) {
  static const char *const init_tokens[] = {"ktn", "pll", "ucd", NULL};
  const char *const *gw = cd_world_words();
  int nw = 0;
  while (gw[nw]) nw++;
  int total = nw + 3;
  word *w = cd_calloc((size_t)total, sizeof *w);
  for (int i = 0; i < total; i++) {
    const char *s = i < nw ? gw[i] : init_tokens[i - nw];
    size_t L = strlen(s);
    if (L == 0 || L >= MAXSYM) { free(w); return cd_set_error("vocabulary: bad grammar word '%s'", s); }
    for (size_t k = 0; k < L; k++) {
      char b[8];
      b[0] = s[k];
      b[1] = 0;
      if (k + 1 == L) strcat(b, "</w>");
      w[i].sym[w[i].n++] = cd_strdup(b);
    }
  }
  /* merges: the most frequent adjacent pair (each word counts once), ties to the smallest pair */
  char **ma = NULL, **mb = NULL;
  int nm = 0, cap = 0;
  for (;;) {
    const char *ba = NULL, *bb = NULL;
    int best = 0;
    for (int i = 0; i < total; i++)
      for (int k = 0; k + 1 < w[i].n; k++) {
        const char *a = w[i].sym[k], *b = w[i].sym[k + 1];
        int cnt = 0;
        for (int j = 0; j < total; j++)
          for (int q = 0; q + 1 < w[j].n; q++) cnt += !strcmp(w[j].sym[q], a) && !strcmp(w[j].sym[q + 1], b);
        int c1 = ba ? strcmp(a, ba) : 0, better = cnt > best || (cnt == best && ba && (c1 < 0 || (c1 == 0 && strcmp(b, bb) < 0)));
        if (better) { best = cnt; ba = a; bb = b; }
      }
    if (!ba) break;
    if (nm == cap) {
      cap = cap ? 2 * cap : 256;
      ma = cd_realloc(ma, cap * sizeof *ma);
      mb = cd_realloc(mb, cap * sizeof *mb);
    }
    ma[nm] = cd_strdup(ba);
    mb[nm] = cd_strdup(bb);
    char *ab = cd_malloc(strlen(ba) + strlen(bb) + 1);
    strcpy(ab, ma[nm]);
    strcat(ab, mb[nm]);
    for (int i = 0; i < total; i++)
      for (int k = 0; k + 1 < w[i].n; k++)
        if (!strcmp(w[i].sym[k], ma[nm]) && !strcmp(w[i].sym[k + 1], mb[nm])) {
          free(w[i].sym[k]);
          free(w[i].sym[k + 1]);
          w[i].sym[k] = cd_strdup(ab);
          memmove(&w[i].sym[k + 1], &w[i].sym[k + 2], (size_t)(w[i].n - k - 2) * sizeof(char *));
          w[i].n--;
        }
    free(ab);
    nm++;
  }
  for (int i = 0; i < total; i++)
    for (int k = 0; k < w[i].n; k++) free(w[i].sym[k]);
  free(w);

  /* vocab.json in id order: bytes in CLIP order, bytes + </w>, merges, specials */
  int order[256], no = 0;
  for (int pass = 0; pass < 2; pass++)
    for (int b = 0; b < 256; b++) {
      int printable = byte_cp(b, NULL) == b;
      if (printable == !pass) order[no++] = b;
    }
  char *vb = NULL, *mbuf = NULL;
  size_t vn = 0, mn = 0;
  FILE *vf = open_memstream(&vb, &vn), *mf = open_memstream(&mbuf, &mn);
  int id = 0;
  fputc('{', vf);
  for (int end = 0; end < 2; end++)
    for (int i = 0; i < 256; i++) {
      char s[16];
      utf8(byte_cp(order[i], NULL), s);
      if (end) strcat(s, "</w>");
      fprintf(vf, "%s", id ? ", " : "");
      json_str(vf, s);
      fprintf(vf, ": %d", id++);
    }
  fprintf(mf, "#version: 0.2\n");
  for (int i = 0; i < nm; i++) {
    fprintf(vf, ", ");
    char *ab = cd_malloc(strlen(ma[i]) + strlen(mb[i]) + 1);
    strcpy(ab, ma[i]);
    strcat(ab, mb[i]);
    json_str(vf, ab);
    fprintf(vf, ": %d", id++);
    fprintf(mf, "%s %s\n", ma[i], mb[i]);
    free(ab);
    free(ma[i]);
    free(mb[i]);
  }
  free(ma);
  free(mb);
  fprintf(vf, ", \"<|startoftext|>\": %d, \"<|endoftext|>\": %d}\n", id, id + 1);
  id += 2;
  fclose(vf);
  fclose(mf);
  int rc = write_mem(dir, "vocab.json", vb, vn);
  if (!rc) rc = write_mem(dir, "merges.txt", mbuf, mn);
  else free(mbuf);
  static const char cfg[] =
      "{\n  \"add_prefix_space\": false,\n  \"bos_token\": \"<|startoftext|>\",\n  \"do_lower_case\": true,\n"
      "  \"eos_token\": \"<|endoftext|>\",\n  \"errors\": \"replace\",\n  \"model_max_length\": 77,\n"
      "  \"pad_token\": \"<|endoftext|>\",\n  \"tokenizer_class\": \"CLIPTokenizer\",\n"
      "  \"unk_token\": \"<|endoftext|>\"\n}\n";
  static const char map[] = "{\n  \"bos_token\": \"<|startoftext|>\",\n  \"eos_token\": \"<|endoftext|>\",\n"
                            "  \"pad_token\": \"<|endoftext|>\",\n  \"unk_token\": \"<|endoftext|>\"\n}\n";
  if (!rc) rc = write_mem(dir, "tokenizer_config.json", cd_strdup(cfg), sizeof cfg - 1);
  if (!rc) rc = write_mem(dir, "special_tokens_map.json", cd_strdup(map), sizeof map - 1);
  if (!rc && vocab_size) *vocab_size = id;
  return rc;
}
