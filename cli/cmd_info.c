/* cmd_info.c - cdiff info PATH (a checkpoint, a delta or an image's parameters) and cdiff tokenize. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "core/common.h"
#include "custom/delta.h"
#include "io/fsutil.h"
#include "io/image.h"
#include "io/tensor_file.h"
#include "models/sd_info.h"
#include "models/sd_model.h"
#include "models/tokenizer.h"

static const char *const DELTA_FILES[] = {CD_DELTA_FILE, CD_DIFFUSERS_DELTA_FILE, "pytorch_custom_diffusion_weights.bin", "delta.ckpt"};
#define NDELTA_FILES (sizeof DELTA_FILES / sizeof DELTA_FILES[0])

/* 1 if path is a Custom Diffusion delta (folder or file, any layout) rather than a model */
static int is_delta(const char *path) {
  if (cd_is_dir(path)) {
    char *p = cd_path_join(path, "model_index.json");
    int model = cd_file_exists(p), delta = 0;
    free(p);
    for (size_t i = 0; !model && !delta && i < NDELTA_FILES; i++) {
      p = cd_path_join(path, DELTA_FILES[i]);
      delta = cd_file_exists(p);
      free(p);
    }
    return delta;
  }
  const char *b = strrchr(path, '/');
  b = b ? b + 1 : path;
  for (size_t i = 0; i < NDELTA_FILES; i++)
    if (!strcmp(b, DELTA_FILES[i])) return 1;
  if (!cd_ends_with(path, ".safetensors")) return 0;
  cd_tensor_file *f;
  if (cd_safetensors_open(path, &f)) {
    cd_clear_error(); /* not readable as a delta: the model loader will say why */
    return 0;
  }
  const char *fmt = cd_tf_meta(f, "format");
  int r = fmt && !strcmp(fmt, "cdiff-delta");
  for (int i = 0; !r && i < cd_tf_count(f); i++) r = strstr(cd_tf_at(f, i)->name, "custom_diffusion") != NULL;
  cd_tensor_file_close(f);
  return r;
}

/* "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight[.lr_us]" -> length of the layer prefix (up to ".attn2") */
static size_t layer_len(const char *name) {
  const char *a = strstr(name, ".attn2");
  return a ? (size_t)(a - name) + 6 : strlen(name);
}

static int print_delta(const char *path, const char *model, const char *vocab) {
  cd_sd_model *m = NULL;
  if (model) {
    cd_load_opts lo = {.vocab = vocab, .no_vae = 1};
    if (cd_sd_load(model, &lo, &m)) {
      fprintf(stderr, "cdiff info: --model %s: %s\n", model, cd_last_error());
      return 1;
    }
  }
  cd_delta *d = NULL;
  if (cd_delta_load(path, m, &d)) {
    fprintf(stderr, "cdiff info: %s\n", cd_last_error());
    cd_sd_free(m);
    return 1;
  }
  printf("delta        %s (%s layout)\n", path, d->layout);
  printf("family       %s\n", d->family == CD_FAMILY_SD2 ? "SD 2.x" : d->family == CD_FAMILY_SD1 ? "SD 1.x" : "not recorded");
  printf("base hash    %s\n", d->base_hash[0] ? d->base_hash : "not recorded");
  if (m)
    printf("base model   %s, hash %s: %s\n", model, m->hash,
           !d->base_hash[0] ? "the delta does not record its base" : strcmp(m->hash, d->base_hash) ? "DIFFERS from the delta's base" : "matches");
  printf("trained      %s\n", d->train[0] ? d->train : "not recorded");
  printf("tokens       %d", d->ntok);
  for (int i = 0; i < d->ntok; i++) printf("%s%s%s%s%s", i ? ", " : ": ", d->tok[i], d->init[i][0] ? " (from " : "", d->init[i], d->init[i][0] ? ")" : "");
  printf("%s\n", d->ntok ? (d->d ? "" : "") : "");
  if (d->ntok) printf("embedding    %d wide\n", d->d);
  /* weights: layers, parameters, and the rank of each low-rank one */
  int nw = cd_weights_count(d->w), nlayers = 0, nlow = 0, rmin = 0, rmax = 0, nfull = 0;
  int64_t params = 0;
  const char *prev = NULL;
  for (int i = 0; i < nw; i++) {
    const cd_weight *x = cd_weights_at(d->w, i);
    int64_t k = 1;
    for (int j = 0; j < x->ndim; j++) k *= x->ne[j];
    params += k;
    if (!prev || layer_len(prev) != layer_len(x->name) || strncmp(prev, x->name, layer_len(x->name))) nlayers++;
    prev = x->name;
    if (cd_ends_with(x->name, ".lr_us") && x->ndim == 2) {
      int r = (int)x->ne[1];
      rmin = nlow ? CD_MIN(rmin, r) : r;
      rmax = nlow ? CD_MAX(rmax, r) : r;
      nlow++;
    } else if (!cd_ends_with(x->name, ".lr_vt")) {
      nfull++;
    }
  }
  if (!strcmp(d->train, "full")) /* a full fine-tune holds the whole UNet, not layers of cross-attention */
    printf("layers       the whole UNet, %d weights, %lld parameters\n", nfull + nlow, (long long)params);
  else
    printf("layers       %d cross-attention layers, %d weights, %lld parameters\n", nlayers, nfull + nlow, (long long)params);
  if (d->lowrank || nlow) {
    printf("low-rank     %d weights as factors, rank %d..%d; %d full", nlow, rmin, rmax, nfull);
    if (d->ratio > 0) printf("; ratio %g", d->ratio);
    printf("\n");
  }
  if (d->args) printf("arguments    %s\n", d->args);
  cd_delta_free(d);
  cd_sd_free(m);
  return ferror(stdout) ? 1 : 0;
}

/* every text chunk of a PNG: "key: value"; the A1111 parameters as they are */
static int print_png(const char *path) {
  char keys[4096];
  int n = cd_png_text_keys(path, keys, sizeof keys);
  if (n < 0) {
    fprintf(stderr, "cdiff info: %s\n", cd_last_error());
    return 1;
  }
  cd_image im;
  if (cd_image_load(path, &im)) {
    fprintf(stderr, "cdiff info: %s\n", cd_last_error());
    return 1;
  }
  printf("image        %s: PNG, %dx%d, %d text chunk(s)\n", path, im.w, im.h, n);
  cd_image_free(&im);
  size_t cap = 1 << 20;
  char *v = cd_malloc(cap);
  int rc = 0;
  for (const char *k = keys; *k; k += strlen(k) + 1) {
    if (cd_png_read_text(path, k, v, cap)) {
      fprintf(stderr, "cdiff info: %s\n", cd_last_error());
      rc = 1;
      break;
    }
    printf(strchr(v, '\n') ? "%s:\n%s\n" : "%-12s %s\n", k, v);
  }
  free(v);
  return rc;
}

static int is_png(const char *path) {
  FILE *f = fopen(path, "rb");
  unsigned char m[8] = {0};
  size_t k = f ? fread(m, 1, 8, f) : 0;
  if (f) fclose(f);
  return k == 8 && !memcmp(m, "\x89PNG\r\n\x1a\n", 8);
}

static const cli_cmd info_spec = {"info", "PATH   (a checkpoint, a delta folder or file, or a PNG)"};

int cmd_info(int argc, char **argv) {
  const char *path = NULL, *prediction = NULL, *vocab = NULL, *weights_dtype = NULL, *model = NULL;
  cli_opt opts[] = {{"--prediction", CLI_STR, &prediction, "eps|v", "override the prediction type", NULL, CLI_CHOICES("eps|v|epsilon|v_prediction")},
                    {"--weights-dtype", CLI_STR, &weights_dtype, "f32|f16|bf16", "report resident bytes as sample/train would hold them", NULL, CLI_CHOICES("f32|f16|bf16")},
                    {"--vocab", CLI_STR, &vocab, "PATH", "CLIP vocabulary for single-file checkpoints"},
                    {"--model", CLI_STR, &model, "PATH", "delta: the base model, to check its hash (and to read a delta.ckpt)", "-m"},
                    {0}};
  int r = cli_parse(argc, argv, opts, &info_spec, &path);
  if (r != CLI_GO) return r;
  if (!path) return cli_error(opts, &info_spec, NULL, "needs a PATH");
  if (is_png(path)) return print_png(path);
  if (is_delta(path)) return print_delta(path, model, vocab);
  if (model) cli_warn_unused(opts, "--model", "unless PATH is a delta");
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
    int ids[CD_TOK_MAX_LEN], tr = 0;
    if (cd_tokenize_padded(t, text, ids, &tr)) { rc = 1; goto done; }
    if (tr) cd_warn("text longer than 75 tokens was truncated");
    for (int i = 0; i < CD_TOK_MAX_LEN; i++) printf(i ? " %d" : "%d", ids[i]);
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
