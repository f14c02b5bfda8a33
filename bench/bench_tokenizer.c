/* bench_tokenizer.c - how long loading a CLIP vocabulary and tokenizing take
 * (tests only check that they work; timing lives here).
 *
 *   bench_tokenizer [VOCAB] [--reps N]
 *
 * VOCAB: a tokenizer/ folder (vocab.json + merges.txt) or
 * bpe_simple_vocab_16e6.txt.gz; default $CDIFF_VOCAB, else
 * ../shared/golden/bpe_simple_vocab_16e6.txt.gz. Without one it says so and
 * exits 0 when none was named (make bench), 2 when the named one is missing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "io/fsutil.h"
#include "models/tokenizer.h"

int main(int argc, char **argv) {
  const char *path = NULL;
  int reps = 5;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (argv[i][0] == '-') {
      fprintf(stderr, "usage: bench_tokenizer [VOCAB] [--reps N]\n");
      return !strcmp(argv[i], "-h") || !strcmp(argv[i], "--help") ? 0 : 2;
    } else path = argv[i];
  }
  int given = path != NULL;
  if (!path) path = getenv("CDIFF_VOCAB") && *getenv("CDIFF_VOCAB") ? getenv("CDIFF_VOCAB") : "../shared/golden/bpe_simple_vocab_16e6.txt.gz";
  if (reps < 1 || reps > 1000) {
    fprintf(stderr, "bench_tokenizer: --reps must be 1..1000\n");
    return 2;
  }
  if (!cd_file_exists(path)) {
    fprintf(stderr, "bench_tokenizer: vocabulary %s not found (pass a tokenizer/ folder or bpe_simple_vocab_16e6.txt.gz)\n", path);
    return given ? 2 : 0;
  }
  double best_load = 1e30;
  cd_tokenizer *t = NULL;
  for (int r = 0; r < reps; r++) {
    double t0 = cd_time();
    cd_tokenizer *u = NULL;
    if (cd_tokenizer_load(path, &u)) {
      fprintf(stderr, "bench_tokenizer: %s\n", cd_last_error());
      cd_tokenizer_free(t);
      return 1;
    }
    double dt = cd_time() - t0;
    if (dt < best_load) best_load = dt;
    cd_tokenizer_free(t);
    t = u;
  }
  /* a caption-like prompt, tokenized many times (the BPE cache is per call) */
  const char *text = "a photo of an astronaut riding a horse on mars, highly detailed, 4k";
  int ids[CD_TOK_MAX_LEN], n = 2000;
  double t0 = cd_time();
  for (int i = 0; i < n; i++)
    if (cd_tokenize_padded(t, text, ids, NULL)) {
      fprintf(stderr, "bench_tokenizer: %s\n", cd_last_error());
      cd_tokenizer_free(t);
      return 1;
    }
  double per = (cd_time() - t0) / n;
  cd_tokenizer_free(t);
  printf("bench_tokenizer: %s\n  load (best of %d): %.1f ms\n  tokenize one prompt: %.1f us\n", path, reps,
         best_load * 1e3, per * 1e6);
  return 0;
}
