/* cmd_merge.c - cdiff merge (closed-form multi-concept merge of deltas trained
 * apart) and cdiff compress (low-rank SVD compression of a delta). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "args.h"
#include "cli_device.h"
#include "commands.h"
#include "core/common.h"
#include "custom/compress.h"
#include "custom/delta.h"
#include "custom/merge.h"
#include "io/fsutil.h"
#include "io/writable.h"


static cd_sd_model *load_model(const char *cmd, const char *model, const char *vocab) {
  cd_load_opts lo = {.vocab = vocab, .no_vae = 1};
  cd_sd_model *m = NULL;
  if (cd_sd_load(model, &lo, &m)) {
    fprintf(stderr, "cdiff %s: --model %s: %s\n", cmd, model, cd_last_error());
    return NULL;
  }
  return m;
}

/* Refuses an --out that is an input (or the folder of an input file: the
 * result would overwrite or contradict it), exit 2, and a folder that already
 * holds a delta unless --overwrite, exit 1. 0 when out is fine. */
static int check_out(const char *cmd, const char *out, const char *const *in, int nin, int overwrite) {
  for (int i = 0; i < nin; i++) {
    char parent[PATH_MAX] = "";
    if (cd_is_file(in[i]) && realpath(in[i], parent)) {
      char *sl = strrchr(parent, '/');
      if (sl) *(sl == parent ? sl + 1 : sl) = 0;
    }
    if (cd_same_path(out, in[i]) || (*parent && cd_same_path(out, parent))) {
      fprintf(stderr, "cdiff %s: --out %s is the input %s or its folder: writing there would destroy it; choose another folder\n", cmd, out, in[i]);
      return 2;
    }
  }
  if (cd_file_exists(out) && !cd_is_dir(out)) {
    fprintf(stderr, "cdiff %s: --out %s exists and is not a folder\n", cmd, out);
    return 2;
  }
  if (!overwrite && cd_is_dir(out) && cd_delta_dir_has_delta(out)) {
    fprintf(stderr, "cdiff %s: --out %s already holds a delta: pass --overwrite to replace it, or choose another folder\n", cmd, out);
    return 1;
  }
  return 0;
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static const cli_cmd merge_spec = {"merge", "--model PATH --delta DIR:category [--delta DIR:category ...] --out DIR [flags]"};

int cmd_merge(int argc, char **argv) {
  const char *model = NULL, *out = NULL, *reg_file = NULL, *vocab = NULL;
  int reg_count = CD_MERGE_REG_COUNT, overwrite = 0, pad_rows = 0;
  float ridge = 0;
  cli_multi deltas = {0};
  const char *device = NULL;
  cli_opt opts[] = {
      {"--model", CLI_STR, &model, "PATH", "the base model all deltas were trained on (required)", "-m", CLI_REQUIRED},
      {"--delta", CLI_MULTI, &deltas, "DIR:CAT", "a concept's delta and its category, e.g. out/cat:cat; a jointly trained delta takes one per token, out/joint:toy,pattern (repeatable, >= 1)", NULL, CLI_REQUIRED},
      {"--reg-prompts", CLI_STR, &reg_file, "FILE", "regularisation captions, one a line (default data/reg_captions.txt)"},
      {"--reg-count", CLI_INT, &reg_count, "N", "use the first N captions (default 200)", NULL, CLI_MIN(1)},
      {"--ridge", CLI_FLOAT, &ridge, "X", "regularise the constraint system by X*mean(diag) (default 0: exact)", NULL, CLI_MIN(0)},
      {"--pad-rows", CLI_INT, &pad_rows, "N", "also constrain the first N padding rows after the end token (default 0, as the paper; docs/merge.md)", NULL, CLI_RANGE(0, 75)},
      {"--vocab", CLI_STR, &vocab, "PATH", "CLIP vocabulary for single-file checkpoints"},
      {"--out", CLI_STR, &out, "DIR", "output delta folder (required; never one of the inputs)", "-o --output", CLI_REQUIRED},
      CLI_DEVICE_OPT(&device),
      {"--overwrite", CLI_FLAG, &overwrite, "", "replace a delta already in --out"},
      {0}};
  int r = cli_parse(argc, argv, opts, &merge_spec, NULL);
  if (r != CLI_GO) return r;
  if ((r = cli_device(opts, &merge_spec, device)) != CLI_GO) return r;
  /* DIR:category, split at the last ':' (categories have none, paths rarely do) */
  char dirs[CLI_MAX_MULTI][1024];
  const char *cats[CLI_MAX_MULTI];
  for (int i = 0; i < deltas.n; i++) {
    const char *s = deltas.v[i], *c = strrchr(s, ':');
    if (!c || c == s || !c[1] || (size_t)(c - s) >= sizeof dirs[i]) {
      return cli_error(opts, &merge_spec, "--delta", "expects DIR:category (e.g. out/cat:cat), got '%s'", s);
    }
    snprintf(dirs[i], sizeof dirs[i], "%.*s", (int)(c - s), s);
    cats[i] = c + 1;
    if (!cd_file_exists(dirs[i])) { /* before the model is loaded */
      fprintf(stderr, "cdiff merge: --delta %s: no such file or folder\n", dirs[i]);
      return 1;
    }
  }
  const char *ins[CLI_MAX_MULTI];
  for (int i = 0; i < deltas.n; i++) ins[i] = dirs[i];
  int bad_out = check_out("merge", out, ins, deltas.n, overwrite);
  if (bad_out) return bad_out;
  if (cd_check_writable_dir("--out", out)) { /* before the model is loaded */
    fprintf(stderr, "cdiff merge: %s\n", cd_last_error());
    return 1;
  }
  char regp[2048];
  if (reg_file) snprintf(regp, sizeof regp, "%s", reg_file);
  else if (cd_merge_default_reg_file(regp, sizeof regp)) {
    fprintf(stderr, "cdiff merge: %s\n", cd_last_error());
    return 1;
  }
  char **reg = NULL;
  int nreg = 0;
  if (cd_merge_read_lines(regp, reg_count, &reg, &nreg)) {
    fprintf(stderr, "cdiff merge: --reg-prompts: %s\n", cd_last_error());
    return 1;
  }
  if (nreg < reg_count) fprintf(stderr, "note: %s has only %d captions (--reg-count %d)\n", regp, nreg, reg_count);

  int rc = 1;
  cd_delta *loaded[CLI_MAX_MULTI] = {0}, *res = NULL;
  cd_merge_info info = {0};
  cd_sd_model *m = load_model("merge", model, vocab);
  if (!m) goto done;
  for (int i = 0; i < deltas.n; i++)
    if (cd_delta_load(dirs[i], m, &loaded[i])) {
      fprintf(stderr, "cdiff merge: --delta %s: %s\n", dirs[i], cd_last_error());
      goto done;
    }
  cd_merge_opts mo = {.reg = (const char *const *)reg, .nreg = nreg, .ridge = ridge, .pad_rows = pad_rows, .log = stdout};
  fprintf(stdout, "merging %d concept(s) on %s, regularisation: %d captions from %s%s\n", deltas.n, model, nreg, regp,
          ridge > 0 ? " (ridge)" : "");
  if (cd_merge_deltas(m, loaded, cats, deltas.n, &mo, &res, &info)) {
    fprintf(stderr, "cdiff merge: %s\n", cd_last_error());
    goto done;
  }
  if (cd_delta_save(out, res)) {
    fprintf(stderr, "cdiff merge: --out %s: %s\n", out, cd_last_error());
    goto done;
  }
  if (info.max_rel_residual_stored > 1e-4)
    cd_warn("the merged weights meet the constraints only to %.2e (relative): the ridge or near-dependent prompts "
            "trade accuracy on the concepts for stability", info.max_rel_residual_stored);
  fprintf(stdout, "wrote %s/%s (%d tokens, %d weights)\n", out, CD_DELTA_FILE, res->ntok, cd_weights_count(res->w));
  rc = 0;
done:
  for (int i = 0; i < deltas.n; i++) cd_delta_free(loaded[i]);
  cd_delta_free(res);
  cd_merge_info_free(&info);
  cd_merge_free_lines(reg, nreg);
  cd_sd_free(m);
  return rc;
}

static const cli_cmd compress_spec = {"compress", "--model PATH --delta DIR --out DIR [--ratio R]"};

int cmd_compress(int argc, char **argv) {
  const char *model = NULL, *delta = NULL, *out = NULL, *vocab = NULL;
  float ratio = (float)CD_COMPRESS_RATIO;
  int keep_factors = 0, overwrite = 0;
  cli_opt opts[] = {
      {"--model", CLI_STR, &model, "PATH", "the base model the delta was trained on (required)", "-m", CLI_REQUIRED},
      {"--delta", CLI_STR, &delta, "DIR|FILE", "the delta to compress, any layout (required)", NULL, CLI_REQUIRED},
      {"--ratio", CLI_FLOAT, &ratio, "R", "keep the top singular values holding R of their sum, 0 < R <= 1 (default 0.6)", NULL, CLI_ABOVE(0), CLI_MAX(1)},
      {"--keep-factors", CLI_FLAG, &keep_factors, "", "store factors even where they are larger than the matrix"},
      {"--vocab", CLI_STR, &vocab, "PATH", "CLIP vocabulary for single-file checkpoints"},
      {"--out", CLI_STR, &out, "DIR", "output delta folder (required; not the input's folder)", "-o --output", CLI_REQUIRED},
      {"--overwrite", CLI_FLAG, &overwrite, "", "replace a delta already in --out"},
      {0}};
  int r = cli_parse(argc, argv, opts, &compress_spec, NULL);
  if (r != CLI_GO) return r;
  if (!cd_file_exists(delta)) { /* before the model is loaded */
    fprintf(stderr, "cdiff compress: --delta %s: no such file or folder\n", delta);
    return 1;
  }
  int bad_out = check_out("compress", out, &delta, 1, overwrite);
  if (bad_out) return bad_out;
  if (cd_check_writable_dir("--out", out)) { /* before the model is loaded */
    fprintf(stderr, "cdiff compress: %s\n", cd_last_error());
    return 1;
  }

  int rc = 1, nl = 0;
  cd_delta *d = NULL, *c = NULL;
  cd_compress_layer *L = NULL;
  cd_sd_model *m = load_model("compress", model, vocab);
  if (!m) goto done;
  if (cd_delta_load(delta, m, &d)) {
    fprintf(stderr, "cdiff compress: --delta %s: %s\n", delta, cd_last_error());
    goto done;
  }
  char what[1100];
  snprintf(what, sizeof what, "--delta %s", delta);
  cd_delta_check_base(d, m, what);
  size_t before = cd_delta_bytes(d);
  if (cd_delta_resolve(d, m)) {
    fprintf(stderr, "cdiff compress: --delta %s: %s\n", delta, cd_last_error());
    goto done;
  }
  if (cd_delta_compress(d, m, ratio, !keep_factors, &c, &L, &nl)) {
    fprintf(stderr, "cdiff compress: %s\n", cd_last_error());
    goto done;
  }
  printf("%-64s %-11s %5s %10s\n", "weight", "shape", "rank", "rel err");
  for (int i = 0; i < nl; i++) {
    char shape[32];
    if (L[i].cols) snprintf(shape, sizeof shape, "[%d,%d]", L[i].rows, L[i].cols);
    else snprintf(shape, sizeof shape, "[%d]", L[i].rows);
    if (L[i].rank < 0) printf("%-64s %-11s %5s %10s\n", L[i].name, shape, "full", "0");
    else printf("%-64s %-11s %5d %10.3e\n", L[i].name, shape, L[i].rank, L[i].rel_err);
  }
  if (cd_delta_save(out, c)) {
    fprintf(stderr, "cdiff compress: --out %s: %s\n", out, cd_last_error());
    goto done;
  }
  char path[2048];
  snprintf(path, sizeof path, "%s/%s", out, CD_DELTA_FILE);
  size_t after = cd_delta_bytes(c);
  printf("ratio %g: %zu -> %zu bytes of tensors (%.1f%%), %s is %ld bytes\n", (double)ratio, before, after,
         before ? 100.0 * (double)after / (double)before : 0.0, path, file_size(path));
  rc = 0;
done:
  free(L);
  cd_delta_free(c);
  cd_delta_free(d);
  cd_sd_free(m);
  return rc;
}
