/* cmd_eval.c - cdiff eval: generations of a fixed prompt set, read by the
 * world judge (src/world/judge.h), scored as in the Custom Diffusion paper
 * (src/eval/score.h): image-alignment, the fraction of images for prompts
 * naming held-out concepts (<new1> toy, <new2> pattern, <new3> toy) that show
 * all of them; text-alignment, the fraction of the prompts' other attributes
 * the images show.
 * One row per run is appended to OUT/results.tsv (label, image-alignment,
 * text-alignment, images, attributes, kinds fraction, kinds: the named shapes
 * and toys among the attributes, -1 where none is asked; then each held-out
 * concept apart: the named concept toys shown and their number, the named
 * <new2> patterns shown and their number); OUT/LABEL.png is the grid (one row
 * of --n images per prompt); OUT/LABEL.tsv what the judge read in each image
 * (prompt number, image, seed, prompt, verdict as cdiff judge prints it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "core/common.h"
#include "custom/delta.h"
#include "diffusion/pipeline.h"
#include "io/fsutil.h"
#include "io/image.h"
#include "models/tokenizer.h"
#include "eval/score.h"
#include "world/judge.h"
#include "world/prompt.h"

#define R CD_WORLD_RES

/* The prompt the model is given: a modifier token that no loaded delta
 * defines ("<new2>" for the base model, or for a delta of another concept)
 * is left out with its space, so that the model sees the class word alone
 * ("photo of a toy"), as the paper's base-model row does; the judge still
 * expects the concept the full prompt names. Returns 1 if a token was cut. */
static int known_tokens_only(const cd_sd_model *m, const char *prompt, char *out, size_t cap) {
  size_t o = 0;
  int cut = 0;
  for (const char *p = prompt; *p && o + 1 < cap;) {
    const char *q = p + 4;
    if (!strncmp(p, "<new", 4)) {
      while (*q >= '0' && *q <= '9') q++;
      if (q > p + 4 && *q == '>') {
        char tok[32];
        snprintf(tok, sizeof tok, "%.*s", (int)(q - p + 1), p);
        if (cd_tokenizer_lookup(m->tok, tok) < 0) {
          p = q + 1;
          while (*p == ' ') p++;
          cut = 1;
          continue;
        }
      }
    }
    out[o++] = *p++;
  }
  out[o] = 0;
  return cut;
}

int cmd_eval(int argc, char **argv) {
  const char *model = NULL, *judge_path = "models/world-judge.safetensors", *prompts_path = NULL, *out = NULL;
  const char *label = "run", *new_toy = "<new1>", *new_pattern = "<new2>", *new_toy2 = "<new3>", *toy_kind = "robot", *toy2_kind = "duck",
             *pattern_kind = "zigzag";
  cli_multi deltas = {0};
  int n = 4, steps = 25;
  float cfg = 5.0f;
  uint64_t seed = 1000;
  cli_opt opts[] = {
      {"--model", CLI_STR, &model, "PATH", "the model (required)", NULL, CLI_REQUIRED},
      {"--delta", CLI_MULTI, &deltas, "DIR", "delta(s) to apply (repeatable)"},
      {"--judge", CLI_STR, &judge_path, "FILE", "the world judge (default models/world-judge.safetensors)"},
      {"--prompts", CLI_STR, &prompts_path, "FILE", "one world-grammar prompt per line (required)", NULL, CLI_REQUIRED},
      {"--n", CLI_INT, &n, "N", "images per prompt (default 4)", NULL, CLI_RANGE(1, 64)},
      {"--steps", CLI_INT, &steps, "N", "DDIM steps (default 25)", NULL, CLI_RANGE(1, 1000)},
      {"--cfg", CLI_FLOAT, &cfg, "X", "guidance scale (default 5)"},
      {"--seed", CLI_U64, &seed, "N", "seed of prompt i's image k: seed + 100 i + k (default 1000)"},
      {"--label", CLI_STR, &label, "NAME", "row name in OUT/results.tsv and grid file name (default run)"},
      {"--toy-word", CLI_STR, &new_toy, "T", "token standing for the held-out toy (default <new1>)"},
      {"--pattern-word", CLI_STR, &new_pattern, "T", "token standing for the held-out pattern (default <new2>)"},
      {"--toy2-word", CLI_STR, &new_toy2, "T", "token standing for the second toy (default <new3>): the held-out duck, or what --toy2-kind names"},
      {"--toy-kind", CLI_STR, &toy_kind, "K", "what the toy token must show: robot (default), or bear / car for the control run (a token taught a kind the base model draws)", NULL, CLI_CHOICES("robot|bear|car")},
      {"--toy2-kind", CLI_STR, &toy2_kind, "K", "what the second toy token must show: duck (default), or bear / car (a third concept the base model draws, as --toy-kind)", NULL, CLI_CHOICES("duck|bear|car")},
      {"--pattern-kind", CLI_STR, &pattern_kind, "P", "what the pattern word must show: zigzag (default), or striped / checkered / dotted: with --toy-word bear --pattern-word striped, the base model's own compositions of known words (the ceiling of a composition)", NULL, CLI_CHOICES("zigzag|striped|checkered|dotted")},
      {"--out", CLI_STR, &out, "DIR", "output folder (required)", NULL, CLI_REQUIRED},
      {0}};
  static const cli_cmd cmd = {"eval", "--model PATH [--delta DIR]... --prompts FILE --out DIR [--label NAME] [flags]"};
  int pr = cli_parse(argc, argv, opts, &cmd, NULL);
  if (pr != CLI_GO) return pr;
  /* the parser admits only the choices, each a world kind or pattern name */
  const int toy_kind_i = cd_world_kind_index(toy_kind), toy2_kind_i = cd_world_kind_index(toy2_kind);
  const int pattern_kind_i = cd_world_pattern_index(pattern_kind);
  char *txt;
  size_t len;
  if (cd_read_file(prompts_path, &txt, &len)) { fprintf(stderr, "cdiff eval: %s\n", cd_last_error()); return 1; }
  char *lines[256];
  int np = 0;
  for (char *p = strtok(txt, "\n"); p && np < 256; p = strtok(NULL, "\n"))
    if (*p && *p != '#') lines[np++] = p;
  if (!np) { fprintf(stderr, "cdiff eval: %s has no prompts\n", prompts_path); free(txt); return 2; }
  cd_sd_model *m = NULL;
  cd_judge *j = NULL;
  cd_load_opts lo = {0};
  int rc = 1;
  float *lat = cd_malloc((size_t)n * 4 * (R / 8) * (R / 8) * sizeof(float)), *img = cd_malloc((size_t)n * 3 * R * R * sizeof(float));
  cd_image grid = {0};
  char *per = NULL; /* OUT/LABEL.tsv: the judge's reading of each image, written at the end */
  size_t nper = 0;
  FILE *pf = NULL;
  if (cd_sd_load(model, &lo, &m) || cd_judge_load(judge_path, &j) || cd_mkdir_p(out)) goto fail;
  for (int i = 0; i < deltas.n; i++)
    if (cd_delta_apply_path(m, deltas.v[i])) goto fail;
  grid.w = n * R;
  grid.h = np * R;
  grid.c = 3;
  grid.px = cd_malloc((size_t)grid.w * grid.h * 3);
  cd_eval_score s = {0};
  int warned_cut = 0;
  if (!(pf = open_memstream(&per, &nper))) { cd_set_error("out of memory"); goto fail; }
  for (int p = 0; p < np; p++) {
    cd_gen_opts g;
    memset(&g, 0, sizeof g);
    char given[512];
    if (known_tokens_only(m, lines[p], given, sizeof given) && !warned_cut++)
      fprintf(stderr, "%s: modifier tokens that no --delta defines are left out of the prompts (\"%s\")\n", label, given);
    g.prompt = given;
    g.negative = "";
    g.s.kind = CD_SAMPLER_DDIM;
    g.s.steps = steps;
    g.s.seed = seed + 100 * (uint64_t)p;
    g.cfg = cfg;
    g.width = g.height = R;
    g.n = n;
    g.quiet = 1;
    if (cd_generate_latents(m, &g, lat) || cd_decode_latents(m, lat, n, R / 8, R / 8, 0, img)) goto fail;
    cd_judge_verdict v[64];
    if (cd_judge_classify(j, img, n, v)) goto fail;
    cd_world_expect e;
    const cd_world_names nm = {.toy = new_toy, .pattern = new_pattern, .toy2 = new_toy2, .toy_kind = toy_kind_i,
                              .toy2_kind = toy2_kind_i, .pattern_kind = pattern_kind_i};
    cd_world_parse_prompt_names(lines[p], &nm, &e);
    for (int k = 0; k < n; k++) {
      cd_eval_score_image(&e, &v[k], &s);
      char vs[512];
      cd_judge_verdict_format(&v[k], vs, sizeof vs);
      fprintf(pf, "%d\t%d\t%llu\t%s\t%s\n", p + 1, k + 1, (unsigned long long)(g.s.seed + (uint64_t)k), lines[p], vs);
      cd_image im;
      cd_chw_to_image(img + (int64_t)k * 3 * R * R, 3, R, R, &im);
      for (int y = 0; y < R; y++) memcpy(grid.px + ((size_t)(p * R + y) * grid.w + k * R) * 3, im.px + (size_t)y * R * 3, R * 3);
      cd_image_free(&im);
    }
    fprintf(stderr, "\r%s: prompt %d/%d", label, p + 1, np);
  }
  fprintf(stderr, "\n");
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.png", out, label);
  if (cd_image_save_png(path, &grid, NULL, 0)) goto fail;
  if (fclose(pf)) { pf = NULL; cd_set_error("out of memory"); goto fail; }
  pf = NULL;
  snprintf(path, sizeof path, "%s/%s.tsv", out, label);
  if (cd_write_file_atomic(path, per, nper)) goto fail;
  double ia = s.img_total ? s.img_hit / s.img_total : -1, ta = s.txt_total ? s.txt_hit / s.txt_total : -1;
  snprintf(path, sizeof path, "%s/results.tsv", out);
  FILE *f = fopen(path, "a");
  if (!f) { cd_set_error("%s: cannot append", path); goto fail; }
  double ka = s.kind_total ? s.kind_hit / s.kind_total : -1;
  double oa = s.toy_total ? s.toy_hit / s.toy_total : -1, pa = s.pat_total ? s.pat_hit / s.pat_total : -1;
  fprintf(f, "%s\t%.3f\t%.3f\t%d\t%d\t%.3f\t%d\t%.3f\t%d\t%.3f\t%d\n", label, ia, ta, (int)s.img_total, (int)s.txt_total,
          ka, (int)s.kind_total, oa, (int)s.toy_total, pa, (int)s.pat_total);
  if (fclose(f)) { cd_set_error("%s: write failed", path); goto fail; }
  char ias[16] = "  n/a", kas[16] = "  n/a"; /* no prompt named a concept / a kind */
  if (ia >= 0) snprintf(ias, sizeof ias, "%5.1f%%", 100 * ia);
  if (ka >= 0) snprintf(kas, sizeof kas, "%5.1f%%", 100 * ka);
  printf("%-28s image-alignment %s (%d images)  text-alignment %5.1f%% (%d attributes; kinds %s of %d)\n", label, ias,
         (int)s.img_total, 100 * ta, (int)s.txt_total, kas, (int)s.kind_total);
  if (s.toy_total && s.pat_total) /* a composition: which concept goes missing */
    printf("%-28s   the toy alone %5.1f%% of %d, the pattern alone %5.1f%% of %d\n", "", 100 * oa, (int)s.toy_total, 100 * pa,
           (int)s.pat_total);
  rc = 0;
fail:
  if (rc) fprintf(stderr, "cdiff eval: %s\n", cd_last_error());
  if (pf) fclose(pf);
  free(per);
  cd_image_free(&grid);
  free(lat);
  free(img);
  cd_judge_free(j);
  cd_sd_free(m);
  free(txt);
  return rc;
}
