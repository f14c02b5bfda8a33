/* test_concept.c - the CI concept-learning test (issue 10): a shortened
 * `make demo` on the shipped world model (models/cdiff-world, nothing from
 * ../shared) that asserts the concept is learned. The shipped judge
 * (models/world-judge.safetensors) reads the images of `cdiff eval` before
 * (base model) and after fine-tuning; the after row's image-alignment must
 * beat the before row's by MARGIN.
 *
 * The concept is the held-out zigzag pattern <new2>, trained with
 * `--train crossattn` (docs/results.md: it is the concept and mode the world
 * model learns well beyond chance; its toys are not learned yet, because the
 * model draws objects as blobs). The procedure is the one documented in
 * docs/results.md ("The CI concept test"): 6 rendered instance images, 16
 * generated class images, 300 steps at lr 1e-3, then the 20 prompts of
 * eval/prompts_pattern.txt x 4 seeds, DDIM 25 steps, guidance 5. It runs
 * every cdiff command of its own build, so the sanitized pass checks the
 * same pipeline for memory errors (with fewer steps and prompts there: see
 * SANITIZED below). */
#include <unistd.h>

#include "eval/score.h"
#include "io/fsutil.h"
#include "test.h"

#define SHIPPED "models/cdiff-world"
#define JUDGE "models/world-judge.safetensors"
#define PROMPTS "eval/prompts_pattern.txt"

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

/* Images per row: 20 prompts x 4 seeds. */
#define NPROMPTS 20
#define NSEEDS 4
#define NIMG (NPROMPTS * NSEEDS)

/* The margin. If fine-tuning taught nothing, the two rows would be two
 * samples of one rate p, and their difference in hits / NIMG exceeds
 * cd_binom_margin(NIMG, p, alpha) with probability at most alpha (one-sided,
 * normal approximation with a continuity correction; its largest value is at
 * p = 0.5, which the test uses). For NIMG = 80 and alpha = 1e-3 that is 0.257
 * (checked below, so that a change of NIMG cannot leave the margin behind):
 * the test asks for 0.30, so a model that did not learn the concept passes it
 * by chance less than once in a thousand runs. (The rows share prompts and
 * seeds, so an unchanged model would give exactly the same images and a
 * difference of 0: the independent-samples bound is the conservative one.)
 * Measured on the shipped model (the fourth: the grown UNet of the fifth
 * session) with training seeds 1-5 (CDIFF_CONCEPT_SEED, docs/results.md):
 * before 0.100, after 0.812-0.912, differences 0.71-0.81, so the test passes
 * with room. With 150 steps that model gave 0.26-0.78 (the third model
 * 0.51-0.70): its stronger prior needs the longer fine-tuning. */
#define MARGIN 0.30
#define ALPHA 1e-3

/* the last row of dir/results.tsv with this label: image-alignment, images */
static int read_row(const char *dir, const char *label, double *ia, int *nimg) {
  char path[1024], *txt;
  size_t n;
  snprintf(path, sizeof path, "%s/results.tsv", dir);
  if (cd_read_file(path, &txt, &n)) return -1;
  int found = 0;
  for (char *p = txt; p && *p;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = 0;
    char lab[64];
    double a, t;
    int ni, nt;
    if (sscanf(p, "%63s %lf %lf %d %d", lab, &a, &t, &ni, &nt) == 5 && !strcmp(lab, label)) {
      *ia = a;
      *nimg = ni;
      found = 1;
    }
    p = nl ? nl + 1 : NULL;
  }
  free(txt);
  return found ? 0 : cd_set_error("%s: no row %s", path, label);
}

/* runs one shell command, failing the test with its output's tail */
#define SH(...) do { char cmd_[4096], out_[8192]; snprintf(cmd_, sizeof cmd_, __VA_ARGS__); \
    int rc_ = test_run_cmd(cmd_, out_, sizeof out_); size_t l_ = strlen(out_); \
    if (rc_) FAILF("exit %d: %.300s\n%s", rc_, cmd_, out_ + (l_ > 1500 ? l_ - 1500 : 0)); } while (0)

TEST(margin_is_justified) {
  /* the fixed margin is at least the binomial bound for this many images */
  double m = cd_binom_margin(NIMG, 0.5, ALPHA);
  CHECKF(m <= MARGIN, "cd_binom_margin(%d, 0.5, %g) = %.3f > MARGIN %.2f", NIMG, ALPHA, m, MARGIN);
}

TEST(pattern_is_learned) {
  /* CDIFF_CONCEPT_MODEL=DIR measures another world model (a pretraining run's
   * checkpoint) with the same procedure; the suite tests the shipped one */
  const char *me = getenv("CDIFF_CONCEPT_MODEL"), *model = me && *me ? me : SHIPPED;
  char mi[2048];
  snprintf(mi, sizeof mi, "%s/model_index.json", model);
  if (!cd_file_exists(mi) || !cd_file_exists(JUDGE))
    FAILF("%s or %s is missing: the shipped model and judge are part of the repository", model, JUDGE);
  const char *bin = test_cdiff_bin(), *dir = test_tmpdir("concept");
  CHECK_OK(cd_mkdir_p(dir));
  /* the sanitized pass checks the pipeline (every command, real data), not
   * the statistics: it is ~10x slower, so it trains and samples less */
  const int steps = SANITIZED ? 10 : 300, nprompts = SANITIZED ? 2 : NPROMPTS, nseeds = SANITIZED ? 1 : NSEEDS;
  const int ncls = SANITIZED ? 2 : 16;
  /* the training seed (and the class images' seeds): 1; CDIFF_CONCEPT_SEED=K
   * reruns the test with another, as docs/results.md measured it */
  const char *se = getenv("CDIFF_CONCEPT_SEED");
  const long seed = se && *se ? strtol(se, NULL, 10) : 1;
  /* the prompts: the first nprompts of the evaluation's pattern prompts */
  char *txt;
  size_t n;
  CHECK_OK(cd_read_file(PROMPTS, &txt, &n));
  char pp[1024];
  snprintf(pp, sizeof pp, "%s/prompts.txt", dir);
  FILE *f = fopen(pp, "w");
  int k = 0;
  for (char *p = txt; f && p && *p && k < nprompts;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = 0;
    if (*p && *p != '#') fprintf(f, "%s\n", p), k++;
    p = nl ? nl + 1 : NULL;
  }
  free(txt);
  CHECK(f && !fclose(f));
  CHECKF(k == nprompts, "%s has %d prompts, the test needs %d", PROMPTS, k, nprompts);
  /* the six instance images of the held-out pattern (never in pretraining) */
  SH("CDIFF_QUIET=1 '%s' world --mode pattern --n 6 --seed 1 --pattern-word '<new2>' --out '%s/img' 2>&1", bin, dir);
  SH("CDIFF_QUIET=1 '%s' train --model '%s' --images '%s/img' --prompt 'photo of a <new2> pattern' --class-prompt pattern"
     " --modifier-token '<new2>' --initializer-token pll --num-class-images %d --class-steps 10 --resolution 64 --steps %d"
     " --lr 1e-3 --no-scale-lr --checkpoint-every 0 --seed %ld --train crossattn --out '%s/delta' 2>&1",
     bin, model, dir, ncls, steps, seed, dir);
  SH("CDIFF_QUIET=1 '%s' eval --model '%s' --judge " JUDGE " --prompts '%s' --n %d --label before --out '%s/ev' 2>&1", bin, model,
     pp, nseeds, dir);
  SH("CDIFF_QUIET=1 '%s' eval --model '%s' --judge " JUDGE " --prompts '%s' --n %d --delta '%s/delta' --label after"
     " --out '%s/ev' 2>&1", bin, model, pp, nseeds, dir, dir);
  char ev[1024];
  snprintf(ev, sizeof ev, "%s/ev", dir);
  double before, after;
  int nb, na;
  CHECK_OK(read_row(ev, "before", &before, &nb));
  CHECK_OK(read_row(ev, "after", &after, &na));
  /* every image shows the concept's prompt: all of them count */
  CHECKF(nb == nprompts * nseeds && na == nb, "rows of %d and %d images, expected %d", nb, na, nprompts * nseeds);
  /* OUT/after.tsv: one line per image, the judge's reading; the zigzag backgrounds it lists are the
   * image-alignment of these prompts (each asks for the pattern, nothing else held out) */
  char tp[1024], *tsv;
  size_t tn;
  snprintf(tp, sizeof tp, "%s/after.tsv", ev);
  CHECK_OK(cd_read_file(tp, &tsv, &tn));
  int lines = 0, zig = 0;
  for (char *p = tsv; p && *p;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = 0;
    lines++;
    size_t L = strlen(p);
    zig += L > 7 && !strcmp(p + L - 7, " zigzag") && strstr(p, "| background ");
    p = nl ? nl + 1 : NULL;
  }
  free(tsv);
  CHECKF(lines == na && zig == (int)(after * na + 0.5), "%s: %d lines, %d zigzag backgrounds; expected %d and %.0f", tp,
         lines, zig, na, after * na);
  printf("# %s: image-alignment of <new2>, training seed %ld: before %.3f, after %.3f (%d images each), difference %.3f, margin %.2f%s\n",
         model, seed, before, after, na, after - before, MARGIN, SANITIZED ? " (sanitized: not asserted)" : "");
  if (!SANITIZED) CHECKF(after - before >= MARGIN, "image-alignment %.3f before, %.3f after: the difference %.3f is below %.2f",
                         before, after, after - before, MARGIN);
}

int main(void) {
  RUN(margin_is_justified);
  RUN(pattern_is_learned);
  test_tmp_cleanup();
  return test_summary();
}
