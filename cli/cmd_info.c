/* cmd_info.c - cdiff info PATH and cdiff tokenize. */
#include <stdio.h>
#include <stdlib.h>

#include "args.h"
#include "commands.h"
#include "core/common.h"
#include "models/sd_info.h"
#include "models/sd_model.h"
#include "models/tokenizer.h"

static const cli_cmd info_spec = {"info", "PATH"};

int cmd_info(int argc, char **argv) {
  const char *path = NULL, *prediction = NULL, *vocab = NULL, *weights_dtype = NULL;
  cli_opt opts[] = {{"--prediction", CLI_STR, &prediction, "eps|v", "override the prediction type"},
                    {"--weights-dtype", CLI_STR, &weights_dtype, "f32|f16|bf16", "report resident bytes as sample/train would hold them"},
                    {"--vocab", CLI_STR, &vocab, "PATH", "CLIP vocabulary for single-file checkpoints"},
                    {0}};
  int r = cli_parse(argc, argv, opts, &info_spec, &path);
  if (r != CLI_GO) return r;
  if (!path) return cli_error(opts, &info_spec, NULL, "needs a PATH");
  cd_load_opts lo = {.prediction = prediction, .vocab = vocab, .weights_dtype = weights_dtype};
  cd_sd_model *m;
  if (cd_sd_load(path, &lo, &m)) {
    fprintf(stderr, "cdiff info: %s\n", cd_last_error());
    return 1;
  }
  int rc = cd_sd_info(m, stdout) ? 1 : 0;
  cd_sd_free(m);
  return rc;
}

static const cli_cmd tokenize_spec = {"tokenize", "(--model PATH | --vocab PATH) TEXT"};

int cmd_tokenize(int argc, char **argv) {
  const char *model = NULL, *vocab = NULL, *text = NULL;
  int padded = 0;
  cli_multi added = {0};
  cli_opt opts[] = {{"--model", CLI_STR, &model, "PATH", "take the tokenizer of this model", "-m"},
                    {"--vocab", CLI_STR, &vocab, "PATH", "tokenizer folder (vocab.json+merges.txt) or bpe_simple_vocab_16e6.txt.gz"},
                    {"--add-token", CLI_MULTI, &added, "T", "register an added token such as <new1> (repeatable)"},
                    {"--padded", CLI_FLAG, &padded, "", "print the 77 padded ids with start/end tokens"},
                    {0}};
  int r = cli_parse(argc, argv, opts, &tokenize_spec, &text);
  if (r != CLI_GO) return r;
  if (!model && !vocab) return cli_error(opts, &tokenize_spec, "--model", "or --vocab is required");
  if (!text) return cli_error(opts, &tokenize_spec, NULL, "needs the TEXT to tokenize");
  cd_tokenizer *t = NULL;
  cd_sd_model *m = NULL;
  if (model) {
    cd_load_opts lo = {.vocab = vocab, .no_unet = 1, .no_vae = 1, .no_text = 1};
    if (cd_sd_load(model, &lo, &m)) {
      fprintf(stderr, "cdiff tokenize: %s\n", cd_last_error());
      return 1;
    }
    if (!m->tok) {
      fprintf(stderr, "cdiff tokenize: %s has no tokenizer: pass --vocab\n", model);
      cd_sd_free(m);
      return 1;
    }
    t = m->tok;
  } else if (cd_tokenizer_load(vocab, &t)) {
    fprintf(stderr, "cdiff tokenize: %s\n", cd_last_error());
    return 1;
  }
  int rc = 0;
  for (int i = 0; i < added.n; i++)
    if (cd_tokenizer_add_token(t, added.v[i]) < 0) {
      fprintf(stderr, "cdiff tokenize: --add-token %s: %s\n", added.v[i], cd_last_error());
      rc = 1;
      goto done;
    }
  if (padded) {
    int ids[77], tr = 0;
    if (cd_tokenize_padded(t, text, ids, &tr)) { rc = 1; goto done; }
    if (tr) cd_warn("text longer than 75 tokens was truncated");
    for (int i = 0; i < 77; i++) printf(i ? " %d" : "%d", ids[i]);
  } else {
    int n = 0, total = 0, *ids = cd_malloc(4096 * sizeof(int));
    if (cd_tokenize(t, text, ids, 4096, &n, &total)) { free(ids); rc = 1; goto done; }
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    free(ids);
  }
  printf("\n");
done:
  if (rc) fprintf(stderr, "cdiff tokenize: %s\n", cd_last_error());
  if (m) cd_sd_free(m);
  else cd_tokenizer_free(t);
  return rc;
}
