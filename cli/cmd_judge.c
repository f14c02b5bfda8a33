/* cmd_judge.c - cdiff judge: trains the world-attribute classifier
 * (src/world/judge.h) on rendered ground truth, or reads images with it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "core/common.h"
#include "io/image.h"
#include "models/sd_model.h"
#include "world/judge.h"

static void print_acc(const char *out, int n, const char *what, const cd_judge_accuracy *a) {
  printf("judge %s: on %d %s, kinds %.1f%%, object colours %.1f%%, background %.1f%%, pattern %.1f%% exactly right; "
         "%.1f%% of the objects' kinds seen; robot toy seen in %.1f%% of the images with one, %.1f%% of those without; "
         "duck toy %.1f%% and %.1f%%\n",
         out, n, what, 100 * a->kinds, 100 * a->colours, 100 * a->bg, 100 * a->pattern, 100 * a->kind_recall, 100 * a->robot_hit,
         100 * a->robot_false, 100 * a->duck_hit, 100 * a->duck_false);
}

/* judge j's accuracy on n fresh renders, and through m's autoencoder when m,
 * printed under name; 0 ok */
static int report(cd_judge *j, cd_sd_model *m, int n, uint64_t seed, const char *name) {
  cd_judge_accuracy acc, av;
  if (cd_judge_test(j, n, seed + 1000003, &acc) || (m && cd_judge_test_vae(j, n, seed + 2000003, &m->vae, &av))) return -1;
  print_acc(name, n, "fresh images", &acc);
  if (m) print_acc(name, n, "fresh images through the autoencoder", &av);
  return 0;
}

int cmd_judge(int argc, char **argv) {
  const char *judge = "models/world-judge.safetensors", *out = NULL, *vae_model = NULL, *init = NULL;
  int train = 0, test = 0, ntest = 1000, steps = 1500, batch = 32, vae_images = -1;
  float lr = 2e-3f;
  uint64_t seed = 1;
  cli_opt opts[] = {
      {"--train", CLI_FLAG, &train, "", "train a judge (new, or from --init) into --out"},
      {"--test", CLI_FLAG, &test, "", "measure --judge on fresh renders (--seed), and on them through --vae MODEL's autoencoder: how well an autoencoder keeps what the judge reads"},
      {"--test-images", CLI_INT, &ntest, "N", "--test: renders to read (default 1000)", NULL, CLI_RANGE(1, 100000)},
      {"--out", CLI_STR, &out, "FILE", "where --train writes the judge (.safetensors)"},
      {"--steps", CLI_INT, &steps, "N", "training steps (default 1500)", NULL, CLI_MIN(1)},
      {"--batch", CLI_INT, &batch, "N", "images per step (default 32)", NULL, CLI_MIN(1)},
      {"--lr", CLI_FLOAT, &lr, "X", "peak learning rate (default 2e-3)", NULL, CLI_ABOVE(0)},
      {"--seed", CLI_U64, &seed, "N", "seed of the weights and the images (default 1)"},
      {"--init", CLI_STR, &init, "FILE", "--train: start from this judge instead of new weights"},
      {"--vae", CLI_STR, &vae_model, "MODEL", "--train: pass some training images through this model's autoencoder, and report the accuracy on such images too; --test: measure through it"},
      {"--vae-images", CLI_INT, &vae_images, "N", "--train --vae: images per step passed through the autoencoder (default half the batch)"},
      {"--judge", CLI_STR, &judge, "FILE", "the judge that reads images (default models/world-judge.safetensors)"},
      {0}};
  /* images are the bare words */
  const char **pos = cd_calloc((size_t)argc + 1, sizeof *pos);
  char **rest = cd_calloc((size_t)argc + 1, sizeof *rest);
  int np = 0, rc = 2, nr = cli_split_words(argc, argv, opts, rest, pos, &np);
  static const cli_cmd cmd = {"judge", "--train --out FILE [--steps N] | --test [--vae MODEL] | [--judge FILE] IMAGE..."};
  int pr = cli_parse(nr, rest, opts, &cmd, NULL);
  if (pr != CLI_GO) { rc = pr; goto done; }
  if (train && test) { rc = cli_error(opts, &cmd, "--test", "and --train exclude each other"); goto done; }
  if (test) {
    cd_judge *j = NULL;
    cd_sd_model *m = NULL;
    cd_load_opts lo = {.no_unet = 1, .no_text = 1};
    rc = 1;
    if (cd_judge_load(judge, &j)) { fprintf(stderr, "cdiff judge: %s\n", cd_last_error()); goto done; }
    if (vae_model && cd_sd_load(vae_model, &lo, &m)) fprintf(stderr, "cdiff judge: --vae %s\n", cd_last_error());
    else if (report(j, m, ntest, seed, judge)) fprintf(stderr, "cdiff judge: %s\n", cd_last_error());
    else rc = 0;
    cd_sd_free(m);
    cd_judge_free(j);
    goto done;
  }
  if (train) {
    if (!out) { rc = cli_error(opts, &cmd, "--out", "is required with --train"); goto done; }
    cd_judge *j = NULL;
    cd_sd_model *m = NULL;
    cd_load_opts lo = {.no_unet = 1, .no_text = 1};
    rc = 1;
    if (init ? cd_judge_load(init, &j) : cd_judge_new(seed, &j)) { fprintf(stderr, "cdiff judge: %s\n", cd_last_error()); goto done; }
    if (vae_model && cd_sd_load(vae_model, &lo, &m)) {
      fprintf(stderr, "cdiff judge: --vae %s\n", cd_last_error());
      cd_judge_free(j);
      goto done;
    }
    cd_judge_train_opts to = {.steps = steps, .batch = batch, .lr = lr, .seed = seed, .quiet = getenv("CDIFF_QUIET") != NULL,
                              .vae = m ? &m->vae : NULL, .vae_images = vae_images >= 0 ? vae_images : batch / 2};
    if (cd_judge_train_ex(j, &to) || cd_judge_save(j, out) || report(j, m, 1000, seed, out))
      fprintf(stderr, "cdiff judge: %s\n", cd_last_error());
    else rc = 0;
    cd_sd_free(m);
    cd_judge_free(j);
    goto done;
  }
  if (!np) { fprintf(stderr, "cdiff judge: give images to read, or --train --out FILE\n"); goto done; }
  cd_judge *j;
  rc = 1;
  if (cd_judge_load(judge, &j)) { fprintf(stderr, "cdiff judge: %s\n", cd_last_error()); goto done; }
  for (int i = 0; i < np; i++) {
    cd_image im;
    float px[3 * CD_WORLD_RES * CD_WORLD_RES];
    if (cd_image_load(pos[i], &im)) { fprintf(stderr, "cdiff judge: %s\n", cd_last_error()); cd_judge_free(j); goto done; }
    if (im.w != CD_WORLD_RES || im.h != CD_WORLD_RES) {
      fprintf(stderr, "cdiff judge: %s is %dx%d, the judge reads %dx%d images\n", pos[i], im.w, im.h, CD_WORLD_RES, CD_WORLD_RES);
      cd_image_free(&im);
      cd_judge_free(j);
      goto done;
    }
    cd_image_to_chw(&im, px);
    cd_image_free(&im);
    cd_judge_verdict v;
    if (cd_judge_classify(j, px, 1, &v)) { fprintf(stderr, "cdiff judge: %s\n", cd_last_error()); cd_judge_free(j); goto done; }
    char line[512];
    cd_judge_verdict_format(&v, line, sizeof line);
    printf("%s: %s\n", pos[i], line);
  }
  cd_judge_free(j);
  rc = 0;
done:
  free(pos);
  free(rest);
  return rc;
}
